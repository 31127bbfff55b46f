//! The real `sdplane replica` binary on loopback with a tiny random-weight checkpoint from
//! `sdplane make-test-model`: start-up line, health loading → ready, every endpoint, every
//! error status, compute metrics, `/metrics` through `promtool check metrics`, an OpenAPI fuzz
//! run with schemathesis, and SIGTERM → exit 0.
//!
//! The port: each replica gets `--listen 127.0.0.1:0` and the test reads the first stdout line,
//! `SDPLANE_LISTENING <addr>` (the contract documented in `replica/src/server/mod.rs`).
//!
//! External tools are optional locally and installed in CI: `promtool` (Debian package
//! `prometheus`) and `schemathesis` (`pip install schemathesis`). A test that needs one and
//! does not find it on PATH says so and passes without that check. The fuzz run is, against a
//! replica started with `--memory-budget-mb 1`:
//! `schemathesis run http://127.0.0.1:PORT/openapi.json --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance --max-examples 30 --workers 1 --seed 1 --generation-database none`

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_sdplane");

/// A tiny SD1.5-layout checkpoint, made once per test.
fn tiny_model(dir: &Path) -> PathBuf {
    let path = dir.join("tiny-sd15.safetensors");
    let status = Command::new(BIN)
        .args(["make-test-model", "--family", "sd15", "--out"])
        .arg(&path)
        .status()
        .expect("run make-test-model");
    assert!(status.success(), "make-test-model failed");
    path
}

struct ReplicaProcess {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl ReplicaProcess {
    fn spawn(model: &Path, flags: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .arg("replica")
            .arg("--model")
            .arg(model)
            .args(["--listen", "127.0.0.1:0"])
            .args(flags)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sdplane replica");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the first stdout line");
        let addr = line
            .trim()
            .strip_prefix("SDPLANE_LISTENING ")
            .unwrap_or_else(|| panic!("first line {line:?}"));
        Self {
            child,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET /v1/models` as JSON.
    async fn models(&self) -> Value {
        self.http
            .get(self.url("/v1/models"))
            .send()
            .await
            .expect("GET /v1/models")
            .json()
            .await
            .expect("models JSON")
    }

    async fn health(&self) -> (u16, Value) {
        let r = self
            .http
            .get(self.url("/v1/health"))
            .send()
            .await
            .expect("GET health");
        (r.status().as_u16(), r.json().await.expect("health JSON"))
    }

    /// Poll health as a readiness probe does; returns every state seen.
    async fn wait_ready(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for _ in 0..3000 {
            let (status, body) = self.health().await;
            let state = body["status"].as_str().unwrap_or("?").to_string();
            assert_eq!(status == 200, state == "ready", "{body}");
            assert_ne!(state, "failed", "{body}");
            if seen.last() != Some(&state) {
                seen.push(state.clone());
            }
            if state == "ready" {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("not ready after 60 s; states seen {seen:?}");
    }

    /// A `'static` future, so it can be spawned while the test goes on.
    fn post(&self, body: Value) -> impl Future<Output = reqwest::Response> + Send + 'static {
        let request = self.http.post(self.url("/v1/generate")).json(&body);
        async move { request.send().await.expect("POST generate") }
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success());
        self.child.wait().expect("wait for the replica")
    }
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        // Only reached when a test failed before `terminate`.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn error_of(response: reqwest::Response) -> (u16, String, String, Option<String>) {
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["status"], "error", "{body}");
    let kind = body["error"]["type"].as_str().unwrap_or_default().to_string();
    (
        status,
        kind,
        body["error"]["message"].as_str().unwrap_or_default().to_string(),
        retry,
    )
}

fn on_path(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[tokio::test]
async fn replica_binary_serves_a_tiny_model_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_model(dir.path());
    let replica = ReplicaProcess::spawn(&model, &["--max-body-bytes", "65536"]);

    let states = replica.wait_ready().await;
    assert_eq!(
        states.first().map(String::as_str),
        Some("loading"),
        "binds before loading: {states:?}"
    );
    assert_eq!(states.last().map(String::as_str), Some("ready"));
    let (_, health) = replica.health().await;
    assert!(health["load_seconds"].as_f64().expect("load seconds") > 0.0);
    assert_eq!(health["gpu"], Value::Null);

    let models = replica.models().await;
    assert_eq!(models["model"], "tiny-sd15");
    let min_side = models["limits"]["min_side"].as_u64().expect("min_side");

    // Base64 answer with everything used and plausible compute metrics.
    let response = replica
        .post(json!({"prompt": "a lighthouse", "num_inference_steps": 3, "width": min_side, "height": min_side}))
        .await;
    assert_eq!(response.status(), 200);
    for h in ["x-queue-time", "x-inference-time", "x-total-time", "x-request-id"] {
        assert!(response.headers().contains_key(h), "missing {h}");
    }
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "success");
    assert!(
        body["image"]
            .as_str()
            .expect("image")
            .starts_with("data:image/png;base64,")
    );
    assert!(body["parameters"]["seed"].as_u64().is_some());
    assert_eq!(body["parameters"]["num_inference_steps"], 3);
    let m = &body["compute_metrics"];
    assert!(m["replica_cpu_percent"].as_f64().expect("cpu") > 0.0, "{m}");
    assert!(m["replica_memory_mb"].as_f64().expect("rss") > 0.0, "{m}");
    assert!(m["replica_num_cpus"].as_u64().expect("cpus") >= 1);
    assert_eq!(m["denoising_steps"], 3);
    for gpu in [
        "replica_gpu_memory_allocated_mb",
        "replica_gpu_memory_reserved_mb",
        "replica_gpu_memory_total_mb",
        "replica_gpu_utilization_percent",
        "replica_gpu_energy_joules",
    ] {
        assert_eq!(m[gpu], Value::Null, "{gpu} without a GPU");
    }

    // Raw PNG answer.
    let png = replica
        .post(json!({"prompt": "x", "num_inference_steps": 1, "seed": 3, "format": "png", "width": min_side, "height": min_side}))
        .await;
    assert_eq!(png.status(), 200);
    assert_eq!(png.headers()["content-type"], "image/png");
    assert_eq!(png.headers()["x-seed"], "3");
    assert!(png.bytes().await.expect("body").starts_with(b"\x89PNG\r\n\x1a\n"));

    // Each error status, as JSON.
    let (status, kind, message, _) = error_of(replica.post(json!({"prompt": "x", "width": 63})).await).await;
    assert_eq!((status, kind.as_str()), (400, "invalid_parameter"));
    assert!(
        message.contains("width") && message.contains("multiple of 8"),
        "{message}"
    );
    let (status, _, message, _) = error_of(replica.post(json!({"prompt": "x", "steps": 3})).await).await;
    assert!(status == 400 && message.contains("steps"), "{message}");
    let (status, kind, _, _) = error_of(replica.post(json!({"prompt": "x".repeat(70_000)})).await).await;
    assert_eq!((status, kind.as_str()), (413, "body_too_large"));
    let text = replica
        .http
        .post(replica.url("/v1/generate"))
        .body("prompt=x")
        .send()
        .await
        .expect("POST");
    assert_eq!(error_of(text).await.0, 415);
    let missing = replica.http.get(replica.url("/nope")).send().await.expect("GET");
    assert_eq!(error_of(missing).await.0, 404);
    let wrong_method = replica
        .http
        .delete(replica.url("/v1/health"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(error_of(wrong_method).await.0, 405);

    // /metrics: names present and the exposition valid per promtool.
    let metrics = replica
        .http
        .get(replica.url("/metrics"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    for name in [
        "sdplane_replica_requests_total{status=\"200\"} 2",
        "sdplane_replica_generation_seconds_count 2",
        "sdplane_replica_queue_seconds_bucket",
        "sdplane_replica_denoising_steps_total",
        "sdplane_replica_model_load_seconds",
    ] {
        assert!(metrics.contains(name), "missing {name}");
    }
    assert!(
        !metrics.contains("sdplane_replica_gpu"),
        "no GPU gauges without a GPU"
    );
    if on_path("promtool") {
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool");
        std::io::Write::write_all(&mut check.stdin.take().expect("stdin"), metrics.as_bytes())
            .expect("feed promtool");
        let out = check.wait_with_output().expect("promtool output");
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("SKIPPED promtool check: `promtool` not on PATH (apt-get install -y prometheus)");
    }

    let status = replica.terminate();
    assert!(status.success(), "SIGTERM must exit 0, got {status}");
}

#[tokio::test]
async fn replica_binary_answers_429_when_the_queue_is_full_and_504_past_the_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_model(dir.path());
    let replica = ReplicaProcess::spawn(&model, &["--max-queue", "1", "--max-concurrency", "1"]);
    replica.wait_ready().await;
    let models = replica.models().await;
    // The most steps this model accepts, at its smallest size: seconds of work on a tiny model,
    // enough to keep the worker busy while the other requests arrive.
    let side = models["limits"]["min_side"].clone();
    let slow = json!({"prompt": "x", "num_inference_steps": models["limits"]["max_steps"], "width": side, "height": side});
    let requests: Vec<_> = (0..4).map(|_| tokio::spawn(replica.post(slow.clone()))).collect();
    let mut statuses = Vec::new();
    let mut retry_afters = Vec::new();
    for r in requests {
        let response = r.await.expect("task");
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            let (_, kind, _, retry) = error_of(response).await;
            assert_eq!(kind, "queue_full");
            retry_afters.push(
                retry
                    .expect("Retry-After on 429")
                    .parse::<u64>()
                    .expect("seconds"),
            );
        }
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        2,
        "one running + one queued succeed: {statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 2, "{statuses:?}");
    assert!(retry_afters.iter().all(|&s| s >= 1));
    assert!(replica.terminate().success());

    let hurried = ReplicaProcess::spawn(&model, &["--request-timeout", "500ms"]);
    hurried.wait_ready().await;
    let (status, kind, _, _) = error_of(hurried.post(slow).await).await;
    assert_eq!((status, kind.as_str()), (504, "timeout"));
    // The worker was cancelled between steps, not left running to the end.
    let max_steps = models["limits"]["max_steps"].as_u64().expect("max_steps");
    let mut idle = false;
    for _ in 0..500 {
        if hurried.health().await.1["in_flight"] == 0 {
            idle = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(idle, "the cancelled generation still runs");
    let metrics = hurried
        .http
        .get(hurried.url("/metrics"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    let steps: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sdplane_replica_denoising_steps_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("steps counter");
    assert!(
        steps < max_steps,
        "ran {steps} of {max_steps} steps after the deadline"
    );
    assert!(hurried.terminate().success());
}

#[tokio::test]
async fn replica_binary_survives_an_openapi_fuzz_run_without_server_errors() {
    if !on_path("schemathesis") {
        eprintln!("SKIPPED schemathesis run: `schemathesis` not on PATH (pip install schemathesis)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny_model(dir.path());
    // A 1 MB memory budget answers every valid generation 422 before any work: the fuzzer
    // exercises parsing, validation and every other endpoint in seconds instead of running
    // hundreds of CPU generations (the 200 answers are checked in the tests above).
    let replica = ReplicaProcess::spawn(&model, &["--memory-budget-mb", "1"]);
    replica.wait_ready().await;
    let out = tokio::task::spawn_blocking({
        let schema = replica.url("/openapi.json");
        let report = dir.path().join("schemathesis");
        move || {
            Command::new("schemathesis")
                .args(["run", &schema, "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
                .args(["--max-examples", "30", "--workers", "1", "--seed", "1", "--no-color", "--generation-database", "none"])
                .arg("--report-dir")
                .arg(report)
                .output()
                .expect("run schemathesis")
        }
    })
    .await
    .expect("join");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{log}");
    assert!(replica.terminate().success());
}

/// `img` as the base64 PNG a client sends.
fn png_base64(img: image::RgbImage) -> String {
    use base64::Engine as _;
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut png, image::ImageFormat::Png)
        .expect("encode png");
    base64::engine::general_purpose::STANDARD.encode(png.into_inner())
}

#[tokio::test]
async fn replica_binary_inpaints_with_a_mask_and_refuses_masks_for_other_models() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inpaint_model = dir.path().join("tiny-sd15-inpainting.safetensors");
    let status = Command::new(BIN)
        .args(["make-test-model", "--family", "sd15", "--inpaint", "--out"])
        .arg(&inpaint_model)
        .status()
        .expect("run make-test-model");
    assert!(status.success(), "make-test-model --inpaint failed");
    let replica = ReplicaProcess::spawn(&inpaint_model, &[]);
    replica.wait_ready().await;
    let models = replica.models().await;
    assert_eq!(models["inpainting"], true, "{models}");
    assert!(
        models["family_label"]
            .as_str()
            .expect("label")
            .contains("inpainting"),
        "{models}"
    );
    let side = models["limits"]["min_side"].as_u64().expect("min_side") as u32;

    // Left half kept, right half repainted.
    let source = image::RgbImage::from_fn(side, side, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 90]));
    let mask = image::RgbImage::from_fn(side, side, |x, _| {
        image::Rgb(if x >= side / 2 { [255; 3] } else { [0; 3] })
    });
    let request = json!({
        "prompt": "a red door",
        "num_inference_steps": 2,
        "width": side,
        "height": side,
        "seed": 3,
        "init_image": png_base64(source),
        "mask_image": png_base64(mask),
    });
    let response = replica.post(request.clone()).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["parameters"]["strength"], 1.0,
        "inpainting defaults to full strength: {body}"
    );
    assert!(
        body["image"]
            .as_str()
            .expect("image")
            .starts_with("data:image/png;base64,")
    );
    assert_eq!(body["compute_metrics"]["denoising_steps"], 2);
    // A mask without the picture to paint into is the client's mistake.
    let mut no_source = request.clone();
    no_source.as_object_mut().expect("object").remove("init_image");
    let (status, kind, message, _) = error_of(replica.post(no_source).await).await;
    assert_eq!((status, kind.as_str()), (400, "invalid_parameter"), "{message}");
    assert!(message.contains("init_image"), "{message}");
    assert_eq!(replica.terminate().code(), Some(0));

    // The same request to a model that does not inpaint names the field.
    let base = ReplicaProcess::spawn(&tiny_model(dir.path()), &[]);
    base.wait_ready().await;
    let (status, kind, message, _) = error_of(base.post(request).await).await;
    assert_eq!((status, kind.as_str()), (400, "invalid_parameter"), "{message}");
    assert!(
        message.contains("mask_image") && message.contains("inpainting"),
        "{message}"
    );
    assert_eq!(base.terminate().code(), Some(0));
}
