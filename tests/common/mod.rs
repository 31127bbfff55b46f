//! Helpers for end-to-end tests over real processes: a tiny model, `sdplane up` as a child on
//! loopback ports it picks itself, and views of the replica processes it runs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sdplane")
}

/// Write a tiny random-weight SD1.5 checkpoint as `<dir>/<name>`.
pub async fn make_tiny_model(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let status = Command::new(bin())
        .args(["make-test-model", "--family", "sd15", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .await
        .expect("run make-test-model");
    assert!(status.success(), "make-test-model failed: {status}");
    out
}

/// A running `sdplane up`.
pub struct Up {
    child: Child,
    pub pid: u32,
    /// `http://127.0.0.1:PORT` of the router.
    pub router: String,
    /// `http://127.0.0.1:PORT` of the admin API.
    pub admin: String,
    pub log: PathBuf,
}

impl Up {
    /// Start `sdplane up` on ports of its own choosing and wait for both to be bound.
    pub async fn start(models: &Path, state: &Path, log: &Path, idle_timeout: &str) -> Up {
        Self::start_with(models, state, log, idle_timeout, &[]).await
    }

    /// `start` with extra command-line flags.
    pub async fn start_with(
        models: &Path,
        state: &Path,
        log: &Path,
        idle_timeout: &str,
        extra: &[&str],
    ) -> Up {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let mut child = Command::new(bin())
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--idle-timeout",
                idle_timeout,
            ])
            .arg("--models")
            .arg(models)
            .arg("--state-dir")
            .arg(state)
            // Short so retries in tests come quickly; the defaults are for people.
            .args(["--retry-after-min", "1s", "--activity-interval", "200ms"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("SDPLANE_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(false)
            .spawn()
            .expect("spawn sdplane up");
        let pid = child.id().expect("pid");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (mut router, mut admin) = (None, None);
        let read = async {
            while router.is_none() || admin.is_none() {
                let line = lines
                    .next_line()
                    .await
                    .expect("read stdout")
                    .expect("up exited before listening");
                if let Some(a) = line.strip_prefix("SDPLANE_LISTENING ") {
                    router = Some(format!("http://{a}"));
                } else if let Some(a) = line.strip_prefix("SDPLANE_ADMIN_LISTENING ") {
                    admin = Some(format!("http://{a}"));
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(60), read).await.is_err() {
            panic!(
                "sdplane up did not print its addresses; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Up {
            child,
            pid,
            router: router.expect("router address"),
            admin: admin.expect("admin address"),
            log: log.to_path_buf(),
        }
    }

    /// `kill -9`: no chance to stop replicas.
    pub async fn kill9(&mut self) {
        self.child.start_kill().expect("SIGKILL up");
        self.child.wait().await.expect("wait up");
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn stop(&mut self) {
        signal(self.pid, "-TERM");
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("up stops within 60 s of SIGTERM")
            .expect("wait up");
        assert!(
            status.success(),
            "up exited with {status}; log:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.pid, "-TERM");
        }
    }
}

/// Send a signal with `kill(1)` (the test crate links no signal library).
pub fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status();
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; `Z` is a zombie waiting to be reaped.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Pids of every live `sdplane replica` process serving `model`.
pub fn replica_pids(model: &Path) -> Vec<u32> {
    let model = model.canonicalize().unwrap_or_else(|_| model.to_path_buf());
    let needle = model.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "replica") && args.contains(&needle) && alive(pid) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// Kill every replica of `model` (cleanup after tests that leave orphans on purpose).
pub fn kill_replicas(model: &Path) {
    for pid in replica_pids(model) {
        signal(pid, "-KILL");
    }
}

/// Poll `check` every 100 ms until it yields a value, or panic after `timeout` naming `what`.
/// For states only observable by asking (a process gone, an app's state), not for events.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET url` as JSON.
pub async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    let response = http
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    response
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url} body: {e}"))
}

/// The app's state on the admin API.
pub async fn app_state(http: &reqwest::Client, up: &Up, app: &str) -> String {
    let status = get_json(http, &format!("{}/v1/apps/{app}", up.admin)).await;
    status["state"].as_str().unwrap_or_default().to_string()
}

/// A small, fast generate request for the tiny model.
pub fn tiny_request(steps: u32) -> serde_json::Value {
    serde_json::json!({"prompt": "a red fox in snow", "num_inference_steps": steps, "width": 64, "height": 64, "seed": 7})
}
