//! One replica child process, treated as TGI's launcher treats shards: spawned with an explicit
//! environment in its own process group (a controller crash or a terminal's Ctrl-C does not reach
//! it, and a signal to the group reaches everything it started), its address learned from its
//! first stdout line (`SDPLANE_LISTENING <ip:port>`), its output forwarded into `tracing` with
//! the app name while the last stderr lines are kept for failure reasons, and stopped with
//! SIGTERM, a grace period, then SIGKILL.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// First stdout line of `sdplane replica`, followed by the address it listens on.
pub const LISTENING_PREFIX: &str = "SDPLANE_LISTENING ";

/// How many stderr lines are kept for a failure reason.
const STDERR_TAIL_LINES: usize = 20;

/// Variables passed through from the controller's environment; everything else is cleared so
/// that, e.g., the router's `SDPLANE_LISTEN` never reaches a replica.
const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "SDPLANE_LOG_FORMAT",
    "CUDA_HOME",
    "CUDA_PATH",
    "NVIDIA_DRIVER_CAPABILITIES",
    // Replica tuning, so `SDPLANE_MAX_QUEUE=4 sdplane up` reaches every replica it starts. Only
    // names no other role reads: the controller's own SDPLANE_MEMORY_BUDGET_MB means something
    // else (RAM for all replicas) and stays behind.
    "SDPLANE_MAX_QUEUE",
    "SDPLANE_MAX_CONCURRENCY",
    "SDPLANE_REQUEST_TIMEOUT",
    "SDPLANE_MAX_BODY_BYTES",
    "SDPLANE_DTYPE",
    "SDPLANE_SHUTDOWN_GRACE",
    "SDPLANE_FAILED_EXIT_GRACE",
];

/// What to run for one replica.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub app: String,
    /// The `sdplane` binary (normally `current_exe()`).
    pub binary: PathBuf,
    pub model_path: PathBuf,
    /// `CUDA_VISIBLE_DEVICES` for this replica; `None` on CPU-only machines.
    pub gpu: Option<u32>,
    /// How long the child may take to print its listening line.
    pub listen_timeout: Duration,
}

/// The last stderr lines of a replica, shared with the task that reads them.
#[derive(Debug, Clone, Default)]
pub struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    fn push(&self, line: String) {
        let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == STDERR_TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The kept lines joined with newlines (empty when the child wrote nothing).
    pub fn text(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }
}

/// A started replica that told us its address.
#[derive(Debug)]
pub struct Spawned {
    pub child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub stderr: StderrTail,
    /// The task reading stderr; it ends at EOF, after the child's last line.
    pub stderr_reader: JoinHandle<()>,
}

/// Longest wait, after the child exited, for its stderr reader to reach EOF (a grandchild that
/// inherited the pipe could hold it open forever).
const STDERR_DRAIN: Duration = Duration::from_secs(1);

/// Wait for the stderr reader to see EOF, so the tail holds the child's last words.
pub async fn drain_stderr(reader: &mut JoinHandle<()>) {
    let _ = tokio::time::timeout(STDERR_DRAIN, reader).await;
}

/// Why a replica did not get as far as listening.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start {binary}: {source}")]
    Spawn { binary: PathBuf, source: std::io::Error },
    #[error("replica exited ({status}) before listening{}", tail_suffix(.stderr))]
    ExitedEarly { status: String, stderr: String },
    #[error("replica printed no listening address within {0:?}")]
    Timeout(Duration),
    #[error("replica's first stdout line is not `{LISTENING_PREFIX}<ip:port>`: {0:?}")]
    BadListeningLine(String),
}

fn tail_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(":\n{stderr}")
    }
}

/// Spawn `binary replica --model FILE --listen 127.0.0.1:0` and wait for its address.
pub async fn spawn(spec: &SpawnSpec) -> Result<Spawned, SpawnError> {
    let mut cmd = Command::new(&spec.binary);
    cmd.arg("replica")
        .arg("--model")
        .arg(&spec.model_path)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: not killed with the controller, and killpg reaches its children.
        .process_group(0)
        .kill_on_drop(false);
    for key in INHERITED_ENV {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    // Replica stderr is kept as failure reasons: plain text, no colour escapes.
    cmd.env("NO_COLOR", "1");
    if let Some(gpu) = spec.gpu {
        // The one visible GPU is device 0 inside the replica.
        cmd.env("CUDA_VISIBLE_DEVICES", gpu.to_string())
            .arg("--device")
            .arg("cuda:0");
    }
    let mut child = cmd.spawn().map_err(|source| SpawnError::Spawn {
        binary: spec.binary.clone(),
        source,
    })?;
    let pid = child.id().unwrap_or_default();
    let stderr = StderrTail::default();
    let mut stderr_reader = match child.stderr.take() {
        Some(err) => tokio::spawn(forward_stderr(spec.app.clone(), pid, err, stderr.clone())),
        None => tokio::spawn(async {}),
    };
    let Some(out) = child.stdout.take() else {
        return Err(SpawnError::BadListeningLine("stdout not captured".into()));
    };
    let mut lines = BufReader::new(out).lines();
    let first = tokio::select! {
        line = tokio::time::timeout(spec.listen_timeout, lines.next_line()) => line,
        status = child.wait() => {
            let status = status.map(|s| describe_exit(&s)).unwrap_or_else(|e| e.to_string());
            drain_stderr(&mut stderr_reader).await;
            return Err(SpawnError::ExitedEarly { status, stderr: stderr.text() });
        }
    };
    let line = match first {
        Err(_) => {
            signal_group(pid, Signal::SIGKILL);
            let _ = child.wait().await;
            return Err(SpawnError::Timeout(spec.listen_timeout));
        }
        Ok(Ok(Some(line))) => line,
        Ok(_) => {
            let status = child
                .wait()
                .await
                .map(|s| describe_exit(&s))
                .unwrap_or_else(|e| e.to_string());
            drain_stderr(&mut stderr_reader).await;
            return Err(SpawnError::ExitedEarly {
                status,
                stderr: stderr.text(),
            });
        }
    };
    let addr = line
        .strip_prefix(LISTENING_PREFIX)
        .and_then(|a| a.trim().parse::<SocketAddr>().ok());
    let Some(addr) = addr else {
        signal_group(pid, Signal::SIGKILL);
        let _ = child.wait().await;
        return Err(SpawnError::BadListeningLine(line));
    };
    tokio::spawn(forward_stdout(spec.app.clone(), pid, lines));
    Ok(Spawned {
        child,
        pid,
        addr,
        stderr,
        stderr_reader,
    })
}

async fn forward_stderr(app: String, pid: u32, stream: impl AsyncRead + Unpin, tail: StderrTail) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "sdplane::replica", app = %app, pid, "{line}");
        tail.push(line);
    }
}

async fn forward_stdout(
    app: String,
    pid: u32,
    mut lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "sdplane::replica", app = %app, pid, "{line}");
    }
}

/// `exit status 1` / `killed by SIGKILL`, for reasons shown to users.
pub fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {sig}"),
        },
        (None, None) => status.to_string(),
    }
}

/// Send `signal` to the process group led by `pid` (each replica leads its own group).
pub fn signal_group(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    if raw <= 0 {
        return;
    }
    if let Err(e) = killpg(Pid::from_raw(raw), signal) {
        tracing::debug!(pid, %signal, error = %e, "signalling replica group failed");
    }
}

/// Whether a process with this pid exists (it may belong to someone else: callers check more).
pub fn is_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    raw > 0 && !matches!(kill(Pid::from_raw(raw), None), Err(nix::errno::Errno::ESRCH))
}

/// The command line of a running process (Linux `/proc`), to tell a persisted replica from an
/// unrelated process that reused its pid.
pub fn command_line(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Stop a child we spawned: SIGTERM to its group, `grace` to exit, then SIGKILL.
pub async fn stop_child(child: &mut Child, pid: u32, grace: Duration) -> String {
    signal_group(pid, Signal::SIGTERM);
    let status = tokio::select! {
        status = child.wait() => status,
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(pid, ?grace, "replica ignored SIGTERM; sending SIGKILL");
            signal_group(pid, Signal::SIGKILL);
            child.wait().await
        }
    };
    status
        .map(|s| describe_exit(&s))
        .unwrap_or_else(|e| e.to_string())
}

/// Stop an adopted replica (not our child, so no `wait()`): SIGTERM to its group, then check
/// every 100 ms until it is gone, SIGKILL after `grace`.
pub async fn stop_adopted(pid: u32, grace: Duration) {
    signal_group(pid, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while is_alive(pid) {
        if tokio::time::Instant::now() >= deadline {
            signal_group(pid, Signal::SIGKILL);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replica_tuning_variables_pass_through_but_the_controllers_own_budget_does_not() {
        for key in [
            "SDPLANE_MAX_QUEUE",
            "SDPLANE_MAX_CONCURRENCY",
            "SDPLANE_REQUEST_TIMEOUT",
        ] {
            assert!(super::INHERITED_ENV.contains(&key), "{key}");
        }
        for key in [
            "SDPLANE_MEMORY_BUDGET_MB",
            "SDPLANE_LISTEN",
            "SDPLANE_MODEL",
            "SDPLANE_ADMIN_TOKEN",
        ] {
            assert!(!super::INHERITED_ENV.contains(&key), "{key}");
        }
    }
}
