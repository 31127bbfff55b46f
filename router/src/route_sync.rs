//! The one task that owns the route table: it long-polls the controller, builds each new
//! snapshot and publishes it through a `watch` channel. When the controller is away it retries
//! with capped exponential backoff and the router keeps serving the last table.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::controller_client::ControllerClient;
use crate::metrics::Metrics;
use crate::routes::{RouteSnapshot, next_snapshot};

/// First retry delay after a failed poll; doubled per failure up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// A restarted controller is picked up within this long.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// An unchanged table answered faster than this means the controller is not holding the poll;
/// pause before asking again instead of spinning.
const MIN_UNCHANGED_POLL: Duration = Duration::from_secs(1);

/// Cheap cloneable read access to the current route table.
#[derive(Clone)]
pub struct RouteHandle {
    rx: watch::Receiver<Arc<RouteSnapshot>>,
}

impl RouteHandle {
    /// The table in use now (one `Arc` clone).
    pub fn current(&self) -> Arc<RouteSnapshot> {
        Arc::clone(&self.rx.borrow())
    }

    /// A receiver that wakes on every new table.
    pub fn subscribe(&self) -> watch::Receiver<Arc<RouteSnapshot>> {
        self.rx.clone()
    }
}

/// Start the route-table task; it ends when `shutdown` is cancelled.
pub fn spawn(
    client: ControllerClient,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> (RouteHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Arc::new(RouteSnapshot::default()));
    let task = tokio::spawn(sync_loop(tx, client, metrics, shutdown));
    (RouteHandle { rx }, task)
}

async fn sync_loop(
    tx: watch::Sender<Arc<RouteSnapshot>>,
    client: ControllerClient,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u32;
    loop {
        let after = tx.borrow().version;
        let asked = Instant::now();
        let answer = tokio::select! {
            () = shutdown.cancelled() => return,
            answer = client.routes(after) => answer,
        };
        let pause = match answer {
            Ok(table) => {
                if failures > 0 {
                    tracing::info!(failures, "controller reachable again; route table in sync");
                }
                failures = 0;
                backoff = MIN_BACKOFF;
                if Some(table.version) == after {
                    (asked.elapsed() < MIN_UNCHANGED_POLL).then_some(MIN_UNCHANGED_POLL)
                } else {
                    publish(&tx, table, &metrics);
                    None
                }
            }
            Err(e) => {
                metrics.count_controller_error("routes");
                failures += 1;
                // The first failure of an outage is worth a warning; the rest would be noise.
                if failures == 1 {
                    tracing::warn!(error = %e, kind = e.kind(), "route table poll failed; serving the last table");
                } else {
                    tracing::debug!(error = %e, failures, "route table poll failed again");
                }
                let pause = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                Some(pause)
            }
        };
        if let Some(pause) = pause {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

fn publish(
    tx: &watch::Sender<Arc<RouteSnapshot>>,
    table: sdplane_wire::admin::RouteTable,
    metrics: &Metrics,
) {
    let version = table.version;
    let (snapshot, removed) = next_snapshot(&tx.borrow(), table, Instant::now(), metrics);
    for app in &removed {
        metrics.forget_app(app);
    }
    metrics
        .route_table_version
        .set(i64::try_from(version).unwrap_or(i64::MAX));
    metrics.route_table_updates.inc();
    metrics
        .apps
        .set(i64::try_from(snapshot.len()).unwrap_or(i64::MAX));
    tracing::debug!(
        version,
        apps = snapshot.len(),
        removed = removed.len(),
        "route table updated"
    );
    tx.send_replace(Arc::new(snapshot));
}
