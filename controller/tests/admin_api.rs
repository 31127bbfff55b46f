//! The controller's admin and internal API over real HTTP on loopback: status codes for every
//! kind of bad input, the token check, the route-table long-poll and `/metrics`. No replica is
//! ever started here (nothing is activated), so the local backend's binary is never run.

use std::time::{Duration, Instant};

use clap::Parser;
use sdplane_controller::{ControllerArgs, ControllerConfig};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ControllerArgs,
}

struct Controller {
    base: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<sdplane_controller::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Controller {
    async fn start(extra: &[&str]) -> Controller {
        let dir = tempfile::tempdir().expect("tempdir");
        let models = dir.path().join("models");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&models).expect("models");
        std::fs::create_dir_all(&outside).expect("outside");
        std::fs::write(models.join("garbage.safetensors"), b"not a checkpoint at all").expect("write");
        std::fs::write(outside.join("secret.safetensors"), b"x").expect("write");
        std::os::unix::fs::symlink(
            outside.join("secret.safetensors"),
            models.join("link.safetensors"),
        )
        .expect("symlink");
        let mut argv = vec![
            "test".to_string(),
            "--models".into(),
            models.display().to_string(),
            "--state-dir".into(),
            dir.path().join("state").display().to_string(),
            "--replica-binary".into(),
            "/nonexistent/sdplane".into(),
            "--routes-long-poll".into(),
            "300ms".into(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        let cli = Cli::try_parse_from(argv).expect("arguments");
        let config = ControllerConfig::from_args(&cli.args).expect("config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(sdplane_controller::serve(
            config,
            listener,
            prometheus::Registry::new(),
            shutdown.clone(),
        ));
        Controller {
            base,
            http: reqwest::Client::new(),
            shutdown,
            task,
            _dir: dir,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<&str>, token: Option<&str>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let response = req.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("join").expect("controller ends cleanly");
    }
}

fn error_type(body: &Value) -> &str {
    body["error"]["type"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn bad_deploy_requests_get_the_documented_status_and_a_json_error() {
    let c = Controller::start(&[]).await;
    let cases = [
        (
            json!({"model": "../outside/secret.safetensors"}).to_string(),
            400,
            "path_outside_models",
        ),
        (
            json!({"model": "link.safetensors"}).to_string(),
            400,
            "path_outside_models",
        ),
        (
            json!({"model": "/etc/passwd"}).to_string(),
            400,
            "path_outside_models",
        ),
        (
            json!({"model": "missing.safetensors"}).to_string(),
            404,
            "model_not_found",
        ),
        (
            json!({"model": "garbage.safetensors"}).to_string(),
            422,
            "corrupt_file",
        ),
        (
            json!({"model": "garbage.safetensors", "max_replicas": 0}).to_string(),
            400,
            "invalid_request",
        ),
        (
            json!({"model": "garbage.safetensors", "typo": 1}).to_string(),
            400,
            "invalid_request",
        ),
        ("{not json".to_string(), 400, "invalid_request"),
    ];
    for (body, status, kind) in cases {
        let (got, answer) = c.call("POST", "/v1/apps", Some(&body), None).await;
        assert_eq!(got, status, "{body} → {answer}");
        assert_eq!(answer["status"], "error", "{answer}");
        if status != 422 {
            assert_eq!(error_type(&answer), kind, "{body} → {answer}");
        }
        assert!(!answer["error"]["message"].as_str().unwrap_or_default().is_empty());
    }
    // The controller keeps serving after all of that.
    let (status, models) = c.call("GET", "/v1/models", None, None).await;
    assert_eq!(status, 200);
    let files: Vec<&str> = models["models"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["file"].as_str())
        .collect();
    assert_eq!(files, vec!["garbage.safetensors", "link.safetensors"]);
    assert!(
        models["models"][0]["error"].is_string(),
        "a corrupt file is listed with its error: {models}"
    );
    let (status, answer) = c.call("GET", "/v1/apps/sd-nope", None, None).await;
    assert_eq!((status, error_type(&answer)), (404, "unknown_app"));
    let (status, _) = c.call("DELETE", "/v1/apps/sd-nope", None, None).await;
    assert_eq!(status, 404);
    let (status, _) = c
        .call("POST", "/internal/v1/apps/sd-nope/activate", None, None)
        .await;
    assert_eq!(status, 404);
    let (status, apps) = c.call("GET", "/v1/apps", None, None).await;
    assert_eq!((status, apps["apps"].as_array().map(Vec::len)), (200, Some(0)));
    c.stop().await;
}

#[tokio::test]
async fn with_a_token_every_admin_and_internal_call_needs_it_but_metrics_do_not() {
    let c = Controller::start(&["--admin-token", "s3cret"]).await;
    for (method, path) in [
        ("GET", "/v1/apps"),
        ("GET", "/v1/models"),
        ("GET", "/internal/v1/routes"),
        ("POST", "/internal/v1/activity"),
    ] {
        let (status, body) = c.call(method, path, Some("{}"), None).await;
        assert_eq!(
            (status, error_type(&body)),
            (401, "unauthorized"),
            "{method} {path}"
        );
        let (status, _) = c.call(method, path, Some("{}"), Some("wrong")).await;
        assert_eq!(status, 401, "{method} {path} with a wrong token");
    }
    let (status, _) = c.call("GET", "/v1/apps", None, Some("s3cret")).await;
    assert_eq!(status, 200);
    let (status, text) = c.call("GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    assert!(
        text.as_str()
            .is_some_and(|t| t.contains("sdplane_controller_admin_requests_total{status=\"401\"}")),
        "{text}"
    );
    c.stop().await;
}

#[tokio::test]
async fn the_route_table_long_poll_answers_at_once_for_a_new_version_and_waits_otherwise() {
    let c = Controller::start(&[]).await;
    let (status, table) = c.call("GET", "/internal/v1/routes", None, None).await;
    assert_eq!(status, 200);
    let version = table["version"].as_u64().expect("version");
    let started = Instant::now();
    let (_, same) = c
        .call("GET", &format!("/internal/v1/routes?after={version}"), None, None)
        .await;
    let held = started.elapsed();
    assert_eq!(same["version"].as_u64(), Some(version));
    assert!(
        held >= Duration::from_millis(250),
        "held for the long-poll limit, not {held:?}"
    );
    let started = Instant::now();
    let (_, other) = c
        .call(
            "GET",
            &format!("/internal/v1/routes?after={}", version + 7),
            None,
            None,
        )
        .await;
    assert_eq!(other["version"].as_u64(), Some(version));
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "a stale version is answered at once"
    );
    let (status, _) = c.call("GET", "/internal/v1/routes?after=x", None, None).await;
    assert_eq!(status, 400);
    let report = json!({"apps": {"sd-unknown": {"in_flight": 1, "idle_seconds": 0.0}}}).to_string();
    let (status, _) = c.call("POST", "/internal/v1/activity", Some(&report), None).await;
    assert_eq!(status, 204, "reports about unknown apps are ignored");
    let (status, _) = c.call("POST", "/internal/v1/activity", Some("[1,2]"), None).await;
    assert_eq!(status, 400);
    c.stop().await;
}
