//! End to end on one machine, with real processes over loopback: `sdplane up` (router +
//! controller) starting `sdplane replica` children for a tiny random-weight SD1.5 checkpoint,
//! `deploy_sd.sh` as a client, and a real Prometheus server scraping all three roles.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Up, alive, app_state, get_json, kill_replicas, replica_pids, tiny_request, wait_for};
use serde_json::Value;

const APP: &str = "sd-tiny";
/// Generous bounds: the tiny model loads in about a second, but CI machines are shared.
const READY_WITHIN: Duration = Duration::from_secs(120);

struct World {
    _dir: tempfile::TempDir,
    models: std::path::PathBuf,
    state: std::path::PathBuf,
    model: std::path::PathBuf,
    log: std::path::PathBuf,
    http: reqwest::Client,
}

impl World {
    async fn new() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let models = dir.path().join("models");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&models).expect("models dir");
        let model = common::make_tiny_model(&models, "tiny.safetensors").await;
        let log = dir.path().join("up.log");
        World {
            models,
            state,
            model,
            log,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    async fn up(&self, idle: &str) -> Up {
        Up::start(&self.models, &self.state, &self.log, idle).await
    }
}

impl Drop for World {
    fn drop(&mut self) {
        kill_replicas(&self.model);
    }
}

/// Run `deploy_sd.sh` against `up`, returning (exit code, stdout, stderr).
async fn deploy_sd(up: &Up, args: &[&str]) -> (i32, String, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy_sd.sh");
    let out = tokio::process::Command::new(script)
        .args(args)
        .env("SDPLANE_URL", &up.admin)
        .env("SDPLANE_ROUTER_URL", &up.router)
        .env_remove("SDPLANE_ADMIN_TOKEN")
        .output()
        .await
        .expect("run deploy_sd.sh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn generate(http: &reqwest::Client, up: &Up, body: &Value, wait: Option<u64>) -> reqwest::Response {
    let mut req = http.post(format!("{}/{APP}/v1/generate", up.router)).json(body);
    if let Some(s) = wait {
        req = req.header("Prefer", format!("wait={s}"));
    }
    req.send().await.expect("generate request")
}

async fn wait_ready(w: &World, up: &Up) {
    wait_for("the app to be ready", READY_WITHIN, || async {
        (app_state(&w.http, up, APP).await == "ready").then_some(())
    })
    .await;
}

async fn wait_scaled_to_zero(w: &World, up: &Up) {
    wait_for("the app to scale to zero", Duration::from_secs(60), || async {
        (app_state(&w.http, up, APP).await == "scaled_to_zero" && replica_pids(&w.model).is_empty())
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployed_model_answers_202_then_200_scales_to_zero_and_wakes_once_for_concurrent_requests() {
    let w = World::new().await;
    let mut up = w.up("3s").await;

    // deploy_sd.sh --list shows the file with its detected family, not yet deployed.
    let (code, out, err) = deploy_sd(&up, &["--list"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("tiny.safetensors") && out.contains("SD 1.x") && out.contains("not deployed"),
        "{out}"
    );

    // Deploy prints the app's URL; a second deploy of the same file is idempotent.
    let (code, out, err) = deploy_sd(&up, &["tiny.safetensors"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("{}/{APP}/v1/generate", up.router)), "{out}");
    let (code, out, _) = deploy_sd(&up, &["tiny.safetensors"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("already deployed"), "{out}");
    let (code, _, err) = deploy_sd(&up, &["../outside.safetensors"]).await;
    assert_eq!(code, 3, "a refused path exits 3");
    assert!(err.contains("leaves the models directory"), "{err}");
    let (code, out, _) = deploy_sd(&up, &["--list"]).await;
    assert_eq!(code, 0);
    assert!(out.contains(APP) && out.contains("scaled_to_zero"), "{out}");

    // First request on a cold app: 202 with Retry-After and the scaling-up body.
    let response = generate(&w.http, &up, &tiny_request(2), None).await;
    assert_eq!(response.status().as_u16(), 202);
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("numeric Retry-After");
    assert!(retry_after >= 1);
    let body: Value = response.json().await.expect("202 body");
    assert_eq!(body["status"], "scaling_up");
    assert_eq!(body["app"], APP);

    // The retry once ready gets the image and compute metrics.
    wait_ready(&w, &up).await;
    let response = generate(&w.http, &up, &tiny_request(2), None).await;
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("200 body");
    assert_eq!(body["status"], "success");
    assert!(
        body["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("data:image/png;base64,"))
    );
    assert!(
        body["compute_metrics"]["query_duration_seconds"]
            .as_f64()
            .is_some_and(|s| s > 0.0),
        "{body}"
    );
    let pids = replica_pids(&w.model);
    assert_eq!(pids.len(), 1, "one replica runs: {pids:?}");
    let first_pid = pids[0];

    // Idle past 3 s: the replica process is gone and health says so without waking the app.
    wait_scaled_to_zero(&w, &up).await;
    assert!(!alive(first_pid));
    let health = get_json(&w.http, &format!("{}/{APP}/v1/health", up.router)).await;
    assert_eq!(health["status"], "scaled_to_zero", "{health}");
    let status = get_json(&w.http, &format!("{}/v1/apps/{APP}", up.admin)).await;
    assert_eq!(
        status["replicas_desired"], 0,
        "a GET must not wake the app: {status}"
    );
    assert!(replica_pids(&w.model).is_empty());

    // `Prefer: wait=60` from zero: held until ready, then a straight 200.
    let response = generate(&w.http, &up, &tiny_request(2), Some(60)).await;
    assert_eq!(response.status().as_u16(), 200);

    // Concurrent requests during one cold start start exactly one replica.
    wait_scaled_to_zero(&w, &up).await;
    let before = get_json(&w.http, &format!("{}/v1/apps/{APP}", up.admin)).await["cold_starts"]
        .as_u64()
        .expect("count");
    let requests = (0..6).map(|_| {
        let req = w
            .http
            .post(format!("{}/{APP}/v1/generate", up.router))
            .header("Prefer", "wait=90");
        async move {
            req.json(&tiny_request(1))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    });
    let statuses: Vec<u16> = futures_join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let after = get_json(&w.http, &format!("{}/v1/apps/{APP}", up.admin)).await["cold_starts"]
        .as_u64()
        .expect("count");
    assert_eq!(after, before + 1, "one cold start for six concurrent requests");
    assert_eq!(replica_pids(&w.model).len(), 1, "exactly one replica was started");

    let (code, out, _) = deploy_sd(&up, &["--status"]).await;
    assert_eq!(code, 0);
    assert!(out.contains(APP), "{out}");

    // Deleting the app stops its replica; deleting it again is a clear error.
    let (code, out, err) = deploy_sd(&up, &["--delete", APP]).await;
    assert_eq!(code, 0, "{out}{err}");
    wait_for(
        "the deleted app's replica to stop",
        Duration::from_secs(60),
        || async { replica_pids(&w.model).is_empty().then_some(()) },
    )
    .await;
    let (code, _, err) = deploy_sd(&up, &["--delete", APP]).await;
    assert_eq!(code, 3);
    assert!(err.contains("no app named"), "{err}");
    up.stop().await;
}

/// Await every future (the test crate carries no `futures` dependency).
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("request task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_replica_gives_a_clear_5xx_and_a_restarted_controller_adopts_the_running_replica() {
    let w = World::new().await;
    let mut up = w.up("300s").await;
    let (code, out, err) = deploy_sd(&up, &["tiny.safetensors", "--wait", "--timeout", "120"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("100%"), "the progress bar reaches 100%: {err}");
    let pid = *replica_pids(&w.model).first().expect("a replica after --wait");

    // A long request in flight, then kill -9 of its replica: the client gets a clear 5xx.
    let http = w.http.clone();
    let url = format!("{}/{APP}/v1/generate", up.router);
    // 50 steps (the replica's limit) at 128×128: seconds of work, plenty to be in flight.
    let slow = serde_json::json!({"prompt": "slow", "num_inference_steps": 50, "width": 128, "height": 128});
    let long = tokio::spawn(async move { http.post(url).json(&slow).send().await });
    let endpoint = replica_endpoint(&w.state, pid);
    wait_for(
        "the request to reach the replica",
        Duration::from_secs(30),
        || async {
            let health = get_json(&w.http, &format!("{endpoint}/v1/health")).await;
            (health["in_flight"].as_u64().unwrap_or(0) + health["queue_depth"].as_u64().unwrap_or(0) > 0)
                .then_some(())
        },
    )
    .await;
    common::signal(pid, "-KILL");
    let response = long.await.expect("task").expect("the router answers");
    let status = response.status().as_u16();
    assert!(
        (500..600).contains(&status),
        "a killed replica is a 5xx, got {status}"
    );
    let body: Value = response.json().await.expect("JSON error body");
    assert_eq!(body["status"], "error", "{body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );

    // The app recovers: the crash is noticed, a new replica starts, requests succeed again.
    let survivor = wait_for(
        "a new replica to replace the killed one",
        READY_WITHIN,
        || async {
            let pids = replica_pids(&w.model);
            let replaced = pids.len() == 1 && pids[0] != pid && app_state(&w.http, &up, APP).await == "ready";
            replaced.then(|| pids[0])
        },
    )
    .await;
    let response = generate(&w.http, &up, &tiny_request(2), Some(90)).await;
    assert_eq!(response.status().as_u16(), 200);
    let restarts = reqwest_text(&w.http, &format!("{}/metrics", up.admin)).await;
    assert!(
        restarts.contains("sdplane_controller_replica_restarts_total{app=\"sd-tiny\"} 1"),
        "{restarts}"
    );

    // kill -9 of `up`: the replica keeps running; the next `up` keeps the app and adopts it.
    up.kill9().await;
    assert!(alive(survivor), "replicas outlive a crashed controller");
    let up = w.up("300s").await;
    let apps = get_json(&w.http, &format!("{}/v1/apps", up.admin)).await;
    assert_eq!(
        apps["apps"][0]["name"], APP,
        "the app survived the restart: {apps}"
    );
    wait_ready(&w, &up).await;
    assert_eq!(
        replica_pids(&w.model),
        vec![survivor],
        "adopted, not restarted or duplicated"
    );
    // Held briefly only in case this router has not yet received the table the admin API shows.
    let response = generate(&w.http, &up, &tiny_request(2), Some(30)).await;
    assert_eq!(response.status().as_u16(), 200, "served by the adopted replica");
    assert_eq!(replica_pids(&w.model), vec![survivor]);
    assert!(up.log_text().contains("adopting running replica"));

    prometheus_sees_the_generate_counter(&w, &up, &replica_endpoint(&w.state, survivor)).await;
}

async fn reqwest_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url)
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("body")
}

/// The replica's base URL from the controller's persisted records.
fn replica_endpoint(state: &Path, pid: u32) -> String {
    let text = std::fs::read_to_string(state.join("local-replicas.json")).expect("replica records");
    let records: Value = serde_json::from_str(&text).expect("records JSON");
    records["replicas"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["pid"].as_u64() == Some(u64::from(pid))))
        .and_then(|r| r["endpoint"].as_str())
        .unwrap_or_else(|| panic!("no record for pid {pid}: {text}"))
        .to_string()
}

/// A real Prometheus scrapes router, controller and replica; PromQL sees the generate counter.
async fn prometheus_sees_the_generate_counter(w: &World, up: &Up, replica: &str) {
    let Some(prometheus) = which("prometheus") else {
        eprintln!("\n!!!!!!!! SKIPPED: no `prometheus` binary (apt-get install -y prometheus) !!!!!!!!\n");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let target = |url: &str| url.trim_start_matches("http://").to_string();
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: router\n    static_configs: [{{targets: ['{}']}}]\n  - job_name: controller\n    static_configs: [{{targets: ['{}']}}]\n  - job_name: replica\n    static_configs: [{{targets: ['{}']}}]\n",
        target(&up.router),
        target(&up.admin),
        target(replica)
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).expect("config");
    let mut child = tokio::process::Command::new(prometheus)
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");
    let api = format!("http://127.0.0.1:{port}/api/v1/query");
    for (query, why) in [
        (
            "sum(sdplane_replica_requests_total)",
            "the replica's generate counter",
        ),
        (
            "sum(sdplane_router_requests_total)",
            "the router's request counter",
        ),
        ("sum(sdplane_controller_apps)", "the controller's app gauge"),
    ] {
        let value = wait_for(why, Duration::from_secs(60), || async {
            let url = reqwest::Url::parse_with_params(&api, &[("query", query)]).ok()?;
            let answer: Value = w.http.get(url).send().await.ok()?.json().await.ok()?;
            let value = answer["data"]["result"][0]["value"][1]
                .as_str()?
                .parse::<f64>()
                .ok()?;
            (value >= 1.0).then_some(value)
        })
        .await;
        assert!(value >= 1.0, "{query} = {value}");
    }
    let _ = child.kill().await;
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_start_failures_mark_the_app_failed_with_the_replica_stderr_until_redeployed() {
    let w = World::new().await;
    // A "replica" that fails the way a real one does on a bad load: a reason on stderr, exit 1.
    let script = w.state.parent().expect("tempdir").join("failing-replica.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'loading unet: simulated out of memory' >&2\nexit 1\n",
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let script = script.to_string_lossy().into_owned();
    let up = Up::start_with(
        &w.models,
        &w.state,
        &w.log,
        "300s",
        &["--replica-binary", &script],
    )
    .await;
    let (code, out, err) = deploy_sd(&up, &["tiny.safetensors"]).await;
    assert_eq!(code, 0, "{out}{err}");

    let response = generate(&w.http, &up, &tiny_request(2), None).await;
    assert_eq!(response.status().as_u16(), 202);
    // Three failed starts with 1 s and 2 s of backoff between them, then `failed`.
    let reason = wait_for("the app to be marked failed", Duration::from_secs(60), || async {
        let status = get_json(&w.http, &format!("{}/v1/apps/{APP}", up.admin)).await;
        (status["state"] == "failed").then(|| status["reason"].as_str().unwrap_or_default().to_string())
    })
    .await;
    assert!(
        reason.contains("3 times") && reason.contains("simulated out of memory"),
        "{reason}"
    );

    // Requests now get a 503 naming the reason instead of an endless 202.
    let response = wait_for("the router to answer 503", Duration::from_secs(30), || async {
        let r = generate(&w.http, &up, &tiny_request(2), None).await;
        (r.status().as_u16() == 503).then_some(r)
    })
    .await;
    let body: Value = response.json().await.expect("503 body");
    assert!(body.to_string().contains("simulated out of memory"), "{body}");
    let (code, out, _) = deploy_sd(&up, &["--status"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("failed") && out.contains("simulated out of memory"),
        "{out}"
    );

    // Redeploying clears the failed state (the next request tries again).
    let (code, _, _) = deploy_sd(&up, &["tiny.safetensors"]).await;
    assert_eq!(code, 0);
    assert_ne!(app_state(&w.http, &up, APP).await, "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_memory_is_short_the_least_recently_used_idle_app_is_scaled_to_zero_first() {
    let w = World::new().await;
    let other = w.models.join("tiny2.safetensors");
    std::fs::copy(&w.model, &other).expect("second model");
    // Each tiny replica is estimated at about 530 MiB (weights + a quarter + 512 MiB working
    // memory, `AppDeployment::memory_mb`): a 800 MiB budget holds one, not two.
    let mut up = Up::start_with(
        &w.models,
        &w.state,
        &w.log,
        "300s",
        &["--memory-budget-mb", "800"],
    )
    .await;
    for file in ["tiny.safetensors", "tiny2.safetensors"] {
        let (code, out, err) = deploy_sd(&up, &[file]).await;
        assert_eq!(code, 0, "{out}{err}");
    }
    let response = generate(&w.http, &up, &tiny_request(2), Some(90)).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(replica_pids(&w.model).len(), 1);

    let second = w
        .http
        .post(format!("{}/sd-tiny2/v1/generate", up.router))
        .header("Prefer", "wait=90");
    let response = second
        .json(&tiny_request(2))
        .send()
        .await
        .expect("generate on the second app");
    assert_eq!(
        response.status().as_u16(),
        200,
        "the second app started after the first made room"
    );
    assert_eq!(replica_pids(&other).len(), 1);
    wait_for("the first app to be evicted", Duration::from_secs(30), || async {
        (app_state(&w.http, &up, APP).await == "scaled_to_zero" && replica_pids(&w.model).is_empty())
            .then_some(())
    })
    .await;
    assert!(up.log_text().contains("evicting least recently used idle app"));

    // SIGTERM to `up` stops the replicas it runs before it exits.
    up.stop().await;
    assert!(
        replica_pids(&other).is_empty(),
        "a graceful stop of up stops its replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_diffusers_folder_is_listed_as_one_model_deployed_by_name_and_generates_through_the_router() {
    let w = World::new().await;
    let folder = w.models.join("my-model");
    let status = tokio::process::Command::new(common::bin())
        .args([
            "make-test-model",
            "--family",
            "sd15",
            "--layout",
            "diffusers",
            "--out",
        ])
        .arg(&folder)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .expect("run make-test-model");
    assert!(
        status.success(),
        "make-test-model --layout diffusers failed: {status}"
    );
    let mut up = w.up("30s").await;

    let (code, out, err) = deploy_sd(&up, &["--list"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let row = out.lines().find(|l| l.contains("my-model")).unwrap_or_default();
    assert!(row.contains("SD 1.x") && row.contains("not deployed"), "{out}");
    assert!(!out.contains("my-model/unet"), "the folder is one model: {out}");

    let (code, out, err) = deploy_sd(&up, &["my-model"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("{}/sd-my-model/v1/generate", up.router)),
        "{out}"
    );
    let response = w
        .http
        .post(format!("{}/sd-my-model/v1/generate", up.router))
        .header("Prefer", "wait=120")
        .json(&tiny_request(2))
        .send()
        .await
        .expect("generate");
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("200 body");
    assert_eq!(body["status"], "success", "{body}");
    let (code, _, err) = deploy_sd(&up, &["--delete", "sd-my-model"]).await;
    assert_eq!(code, 0, "{err}");
    wait_for(
        "the folder app's replica to stop",
        Duration::from_secs(60),
        || async { replica_pids(&folder).is_empty().then_some(()) },
    )
    .await;
    up.stop().await;
}
