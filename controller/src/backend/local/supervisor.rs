//! One task per replica: start (or adopt) it, poll its health into the backend's state, notice
//! its exit at once (`Child::wait()` in `select!`), and on a stop request drain it (in-flight
//! requests finish first, up to a grace) before SIGTERM → grace → SIGKILL.

use std::sync::Arc;

use sdplane_wire::api::{ReplicaHealth, ReplicaState};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use super::process::{self, SpawnSpec, StderrTail};
use super::{Ended, Inner};

/// Health polls in a row that may fail before a ready replica counts as hung (with a 2 s timeout
/// each this tolerates several seconds of a starved event loop before a restart).
const MAX_HEALTH_ERRORS: u32 = 20;

/// How a supervisor gets its replica.
pub(crate) enum Launch {
    Spawn(SpawnSpec),
    /// A replica a previous controller started; not our child, so its exit is polled.
    Adopt {
        pid: u32,
        endpoint: String,
    },
}

enum Proc {
    Child {
        child: Box<Child>,
        stderr: StderrTail,
        reader: tokio::task::JoinHandle<()>,
    },
    Adopted,
}

impl Proc {
    /// Resolves when the process exits, with how it exited.
    async fn exited(&mut self, pid: u32, poll: std::time::Duration) -> String {
        match self {
            Self::Child { child, .. } => match child.wait().await {
                Ok(status) => process::describe_exit(&status),
                Err(e) => format!("wait failed: {e}"),
            },
            Self::Adopted => {
                while process::is_alive(pid) {
                    tokio::time::sleep(poll).await;
                }
                "exited".to_string()
            }
        }
    }

    /// The last stderr lines, once the reader has caught up with an exited child.
    async fn stderr(&mut self) -> String {
        match self {
            Self::Child { stderr, reader, .. } => {
                process::drain_stderr(reader).await;
                stderr.text()
            }
            Self::Adopted => String::new(),
        }
    }

    async fn stop(&mut self, pid: u32, grace: std::time::Duration) {
        match self {
            Self::Child { child, .. } => {
                let how = process::stop_child(child, pid, grace).await;
                tracing::debug!(pid, %how, "replica stopped");
            }
            Self::Adopted => process::stop_adopted(pid, grace).await,
        }
    }
}

fn with_tail(reason: String, stderr: &str) -> String {
    if stderr.is_empty() {
        reason
    } else {
        format!("{reason}; last stderr lines:\n{stderr}")
    }
}

/// Run one replica until it is stopped or ends.
#[tracing::instrument(skip_all, fields(app = %app, seq))]
pub(crate) async fn supervise(
    inner: Arc<Inner>,
    app: String,
    seq: u64,
    launch: Launch,
    stop: CancellationToken,
) {
    let (mut proc, pid, endpoint) = match launch {
        Launch::Spawn(spec) => match process::spawn(&spec).await {
            Ok(spawned) => {
                let endpoint = format!("http://{}", spawned.addr);
                tracing::info!(pid = spawned.pid, %endpoint, "replica listening");
                let proc = Proc::Child {
                    child: Box::new(spawned.child),
                    stderr: spawned.stderr,
                    reader: spawned.stderr_reader,
                };
                (proc, spawned.pid, endpoint)
            }
            Err(e) => {
                inner.ended(
                    &app,
                    seq,
                    Ended::Unexpected {
                        reason: e.to_string(),
                    },
                );
                return;
            }
        },
        Launch::Adopt { pid, endpoint } => (Proc::Adopted, pid, endpoint),
    };
    inner.set_started(&app, seq, pid, endpoint.clone());
    let health_url = format!("{endpoint}/v1/health");
    let interval = inner.config.health_interval;
    let mut errors = 0u32;
    let unexpected = loop {
        let poll = async {
            tokio::time::sleep(interval).await;
            fetch_health(&inner.http, &health_url).await
        };
        tokio::select! {
            how = proc.exited(pid, interval) => {
                break Some(with_tail(format!("replica {how}"), &proc.stderr().await));
            }
            _ = stop.cancelled() => break None,
            health = poll => match health {
                Ok(h) => {
                    errors = 0;
                    inner.set_health(&app, seq, &h);
                    if h.status == ReplicaState::Failed {
                        let reason = h.reason.unwrap_or_else(|| "replica reported a failed load".into());
                        proc.stop(pid, inner.config.stop_grace).await;
                        break Some(with_tail(reason, &proc.stderr().await));
                    }
                }
                Err(e) => {
                    errors += 1;
                    tracing::debug!(error = %e, errors, "health poll failed");
                    if errors >= MAX_HEALTH_ERRORS {
                        proc.stop(pid, inner.config.stop_grace).await;
                        let tail = proc.stderr().await;
                        break Some(with_tail(format!("health endpoint unresponsive: {e}"), &tail));
                    }
                }
            },
        }
    };
    if let Some(reason) = unexpected {
        inner.ended(&app, seq, Ended::Unexpected { reason });
        return;
    }
    if inner.should_drain() {
        tokio::select! {
            _ = drain(&inner, &health_url) => {}
            how = proc.exited(pid, interval) => tracing::info!(%how, "replica exited while draining"),
        }
    }
    proc.stop(pid, inner.config.stop_grace).await;
    tracing::info!(pid, "replica stopped");
    inner.ended(&app, seq, Ended::Stopped);
}

/// Wait for routers to stop sending to this replica, then for its in-flight and queued requests
/// to reach zero, at most `drain_grace` in all.
async fn drain(inner: &Inner, health_url: &str) {
    let deadline = tokio::time::Instant::now() + inner.config.drain_grace;
    tokio::time::sleep(inner.config.route_propagation).await;
    loop {
        match fetch_health(&inner.http, health_url).await {
            Ok(h) if h.in_flight == 0 && h.queue_depth == 0 => return,
            Ok(h) => tracing::debug!(in_flight = h.in_flight, queue = h.queue_depth, "draining"),
            // Nothing answers: nothing is in flight either.
            Err(_) => return,
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(grace = ?inner.config.drain_grace, "drain grace over; stopping with requests in flight");
            return;
        }
        tokio::time::sleep(inner.config.health_interval).await;
    }
}

async fn fetch_health(http: &reqwest::Client, url: &str) -> Result<ReplicaHealth, reqwest::Error> {
    // Any status: a failed replica answers its health with a non-2xx code and a body.
    http.get(url).send().await?.json::<ReplicaHealth>().await
}
