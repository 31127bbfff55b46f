//! The real `sdplane router` binary on loopback: the `SDPLANE_LISTENING` line for
//! `--listen 127.0.0.1:0`, a route table from a stand-in controller, a request proxied to a
//! stand-in replica, SIGTERM → exit 0, and a clear refusal of a controller URL it cannot use.
//! The stand-ins are minimal HTTP/1.1 servers on std sockets (one answer per connection), so the
//! binary is exercised without the controller's or replica's own code. Deeper router behaviour
//! is tested in `router/tests/` against the library.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_sdplane");
/// Bound on every awaited event, so a broken build fails instead of hanging.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Serve every connection one `200` whose JSON body `answer` builds from the request line.
fn stand_in_server(answer: impl Fn(&str) -> String + Send + Sync + 'static) -> String {
    let answer = std::sync::Arc::new(answer);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind stand-in");
    let url = format!("http://{}", listener.local_addr().expect("bound address"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let answer = std::sync::Arc::clone(&answer);
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&seen);
                let request_line = text.lines().next().unwrap_or_default().to_string();
                let body = answer(&request_line);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream
                    .write_all(head.as_bytes())
                    .and_then(|()| stream.write_all(body.as_bytes()));
            });
        }
    });
    url
}

async fn spawn_router(controller_url: &str) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "router",
            "--listen",
            "127.0.0.1:0",
            "--controller-url",
            controller_url,
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sdplane router");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    tokio::time::timeout(EVENT_TIMEOUT, BufReader::new(stdout).read_line(&mut line))
        .await
        .expect("the router prints its address in time")
        .expect("read the first stdout line");
    let addr = line
        .trim()
        .strip_prefix("SDPLANE_LISTENING ")
        .unwrap_or_else(|| panic!("first line {line:?}"));
    (child, format!("http://{addr}"))
}

#[tokio::test]
async fn router_binary_proxies_to_a_ready_app_and_stops_on_sigterm() {
    let replica = stand_in_server(|line| serde_json::json!({ "replica_saw": line }).to_string());
    // The stand-in controller answers every call (the route poll, activity reports) with the
    // table; the router only needs a 2xx from the activity endpoint.
    let table = serde_json::json!({
        "version": 1,
        "apps": {"sd-a": {"state": "ready", "endpoints": [replica], "estimated_cold_start_seconds": 5.0,
                          "replicas_ready": 1, "replicas_total": 1}}
    })
    .to_string();
    let controller = stand_in_server(move |_| table.clone());
    let (mut child, base) = spawn_router(&controller).await;
    let http = reqwest::Client::new();

    tokio::time::timeout(EVENT_TIMEOUT, async {
        // The table arrives with the router's first poll; /healthz turns 200 when it has.
        loop {
            if let Ok(r) = http.get(format!("{base}/healthz")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the router loads the route table");

    let response = http
        .get(format!("{base}/sd-a/v1/models?verbose=1"))
        .send()
        .await
        .expect("proxied request");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-request-id").is_some());
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["replica_saw"], "GET /v1/models?verbose=1 HTTP/1.1");

    let unknown = http
        .get(format!("{base}/sd-b/v1/health"))
        .send()
        .await
        .expect("answer");
    assert_eq!(unknown.status(), 404);

    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let status = tokio::time::timeout(EVENT_TIMEOUT, child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn router_binary_refuses_a_controller_url_it_cannot_use() {
    let output = tokio::process::Command::new(BIN)
        .args([
            "router",
            "--listen",
            "127.0.0.1:0",
            "--controller-url",
            "https://controller:8001",
        ])
        .output()
        .await
        .expect("run sdplane router");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--controller-url") && stderr.contains("only http://"),
        "{stderr}"
    );
}
