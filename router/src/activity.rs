//! Per-app load as the router sees it (requests in flight, time of last activity) and the task
//! that reports it to the controller every interval, and at once when a cold app is hit, so the
//! autoscaler can keep busy apps up and scale idle ones to zero.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use sdplane_wire::admin::{ActivityReport, AppActivity};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::controller_client::ControllerClient;
use crate::metrics::Metrics;
use crate::routes::RouteSnapshot;

/// In-flight count and last activity of one app; lock-free, touched on every request.
#[derive(Debug)]
pub struct ActivityState {
    origin: Instant,
    in_flight: AtomicU32,
    /// Nanoseconds from `origin` to the last activity, plus one; 0 means never.
    last: AtomicU64,
}

impl ActivityState {
    /// A state with no activity yet; `origin` is any instant not after the first activity.
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            in_flight: AtomicU32::new(0),
            last: AtomicU64::new(0),
        }
    }

    /// A request arrived.
    pub fn begin(&self, now: Instant) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch(now);
    }

    /// A request begun with [`begin`](Self::begin) finished.
    pub fn end(&self, now: Instant) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.touch(now);
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn touch(&self, now: Instant) {
        let ns = u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX - 1);
        self.last.fetch_max(ns + 1, Ordering::Relaxed);
    }

    /// What to report, or `None` when no request has reached the app through this router.
    pub fn report(&self, now: Instant) -> Option<AppActivity> {
        let last = self.last.load(Ordering::Relaxed);
        if last == 0 {
            return None;
        }
        let in_flight = self.in_flight();
        let last_at = self.origin + Duration::from_nanos(last - 1);
        let idle_seconds = if in_flight > 0 {
            0.0
        } else {
            now.saturating_duration_since(last_at).as_secs_f64()
        };
        Some(AppActivity {
            in_flight,
            idle_seconds,
        })
    }
}

/// The report for every app of `snapshot` that has seen a request.
pub fn build_report(snapshot: &RouteSnapshot, now: Instant) -> ActivityReport {
    let apps = snapshot
        .apps()
        .filter_map(|entry| {
            entry
                .shared
                .activity
                .report(now)
                .map(|a| (entry.shared.name.clone(), a))
        })
        .collect();
    ActivityReport { apps }
}

/// Report activity every `interval` and whenever `wake` is notified, until `shutdown`.
pub async fn report_loop(
    routes: watch::Receiver<Arc<RouteSnapshot>>,
    client: ControllerClient,
    interval: Duration,
    wake: Arc<Notify>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
            () = wake.notified() => {}
        }
        let report = build_report(&routes.borrow(), Instant::now());
        if report.apps.is_empty() {
            continue;
        }
        match client.report_activity(&report).await {
            Ok(()) => failing = false,
            Err(e) => {
                metrics.count_controller_error("activity");
                // Warn once per outage, not once per second.
                if !failing {
                    tracing::warn!(error = %e, kind = e.kind(), "cannot report activity to the controller");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_time_counts_from_the_end_of_the_last_request() {
        let t0 = Instant::now();
        let state = ActivityState::new(t0);
        assert_eq!(state.report(t0), None, "untouched apps are not reported");
        state.begin(t0);
        tokio::time::advance(Duration::from_secs(4)).await;
        let during = state.report(Instant::now()).expect("touched");
        assert_eq!((during.in_flight, during.idle_seconds), (1, 0.0));
        state.end(Instant::now());
        tokio::time::advance(Duration::from_secs(300)).await;
        let after = state.report(Instant::now()).expect("touched");
        assert_eq!(after.in_flight, 0);
        assert!(
            (after.idle_seconds - 300.0).abs() < 1e-6,
            "{}",
            after.idle_seconds
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_finishing_request_never_moves_last_activity_backwards() {
        let t0 = Instant::now();
        let state = ActivityState::new(t0);
        state.begin(t0 + Duration::from_secs(10));
        state.end(t0 + Duration::from_secs(5));
        let r = state.report(t0 + Duration::from_secs(12)).expect("touched");
        assert!((r.idle_seconds - 2.0).abs() < 1e-6);
    }
}
