//! The loop between the registry and the backend: every tick (or at once when woken by an
//! activation, deploy or delete) ask the autoscaler's plan, make the backend match it, evict the
//! least recently used idle app when a start does not fit, remove replicas of deleted apps, and
//! hand the backend's observations back to the registry (which updates the route table).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, BackendError};
use crate::registry::Registry;

/// Run until `shutdown`.
pub async fn run(registry: Registry, backend: Arc<dyn Backend>, tick: Duration, shutdown: CancellationToken) {
    // Learn what already runs (adopted replicas) before the first plan, or a plan made without
    // it would see idle apps with no activity and drain the replicas just adopted.
    match backend.observe().await {
        Ok(observed) => {
            if let Err(e) = registry.observed(observed).await {
                tracing::warn!(error = %e, "cannot record the first observation");
            }
        }
        Err(e) => tracing::warn!(kind = e.kind(), error = %e, "first observation failed"),
    }
    let wake = registry.wake();
    // Backends without change notifications are polled at the tick only.
    let changed = backend
        .changes()
        .unwrap_or_else(|| Arc::new(tokio::sync::Notify::new()));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = interval.tick() => {}
            _ = wake.notified() => {}
            _ = changed.notified() => {}
        }
        if let Err(e) = pass(&registry, backend.as_ref()).await {
            tracing::warn!(kind = e.kind(), error = %e, "reconcile pass failed");
        }
    }
}

/// One pass: plan → ensure → observe.
async fn pass(registry: &Registry, backend: &dyn Backend) -> crate::error::Result<()> {
    let plan = registry.plan().await?;
    for (app, replicas) in &plan {
        match backend.ensure(app, *replicas).await {
            Ok(()) => {}
            Err(BackendError::NoCapacity {
                needed_mb, free_mb, ..
            }) => match registry.evict_for(app.name.clone()).await? {
                Some(victim) => {
                    tracing::info!(app = %app.name, %victim, needed_mb, free_mb, "making room");
                    if let Some((deployment, _)) = plan.iter().find(|(d, _)| d.name == victim) {
                        backend.ensure(deployment, 0).await?;
                    }
                }
                None => tracing::warn!(app = %app.name, needed_mb, free_mb, "no idle app to evict; waiting"),
            },
            Err(e) => {
                tracing::warn!(app = %app.name, kind = e.kind(), error = %e, "backend could not scale app")
            }
        }
    }
    let observed = backend.observe().await?;
    for orphan in registry.observed(observed).await? {
        tracing::info!(app = %orphan, "removing replicas of a deleted app");
        backend.remove(&orphan).await?;
    }
    Ok(())
}
