//! The controller's Prometheus metrics (`sdplane_controller_*`), registered in the one registry
//! the process passes in (STYLE.md: never a global recorder). Labels are bounded: app names
//! (one per deployed model file), scale direction, HTTP status code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Cold-start buckets in seconds: from a tiny test model (well under a second) to a full SDXL
/// load from a cold disk (minutes).
const COLD_START_BUCKETS: &[f64] = &[0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];

/// Handles to every controller metric; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    replicas_desired: IntGaugeVec,
    replicas_ready: IntGaugeVec,
    cold_starts: IntCounterVec,
    cold_start_seconds: HistogramVec,
    scale_events: IntCounterVec,
    replica_restarts: IntCounterVec,
    app_failures: IntCounterVec,
    admin_requests: IntCounterVec,
    route_table_version: IntGauge,
    apps: IntGauge,
    restarts_seen: Arc<Mutex<HashMap<String, u64>>>,
}

impl Metrics {
    /// Register every metric in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            replicas_desired: IntGaugeVec::new(
                Opts::new(
                    "sdplane_controller_replicas_desired",
                    "Replicas the autoscaler wants per app",
                ),
                &["app"],
            )?,
            replicas_ready: IntGaugeVec::new(
                Opts::new("sdplane_controller_replicas_ready", "Ready replicas per app"),
                &["app"],
            )?,
            cold_starts: IntCounterVec::new(
                Opts::new(
                    "sdplane_controller_cold_starts_total",
                    "Cold starts completed (activation to first ready)",
                ),
                &["app"],
            )?,
            cold_start_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "sdplane_controller_cold_start_seconds",
                    "Activation to first ready replica",
                )
                .buckets(COLD_START_BUCKETS.to_vec()),
                &["app"],
            )?,
            scale_events: IntCounterVec::new(
                Opts::new(
                    "sdplane_controller_scale_events_total",
                    "Changes of desired replicas by direction",
                ),
                &["app", "direction"],
            )?,
            replica_restarts: IntCounterVec::new(
                Opts::new(
                    "sdplane_controller_replica_restarts_total",
                    "Replicas restarted after a crash or failed start",
                ),
                &["app"],
            )?,
            app_failures: IntCounterVec::new(
                Opts::new(
                    "sdplane_controller_app_failures_total",
                    "Apps marked failed after repeated start failures",
                ),
                &["app"],
            )?,
            admin_requests: IntCounterVec::new(
                Opts::new(
                    "sdplane_controller_admin_requests_total",
                    "Admin and internal API requests by status",
                ),
                &["status"],
            )?,
            route_table_version: IntGauge::new(
                "sdplane_controller_route_table_version",
                "Version of the route table served to routers",
            )?,
            apps: IntGauge::new("sdplane_controller_apps", "Deployed apps")?,
            restarts_seen: Arc::default(),
        };
        registry.register(Box::new(m.replicas_desired.clone()))?;
        registry.register(Box::new(m.replicas_ready.clone()))?;
        registry.register(Box::new(m.cold_starts.clone()))?;
        registry.register(Box::new(m.cold_start_seconds.clone()))?;
        registry.register(Box::new(m.scale_events.clone()))?;
        registry.register(Box::new(m.replica_restarts.clone()))?;
        registry.register(Box::new(m.app_failures.clone()))?;
        registry.register(Box::new(m.admin_requests.clone()))?;
        registry.register(Box::new(m.route_table_version.clone()))?;
        registry.register(Box::new(m.apps.clone()))?;
        Ok(m)
    }

    pub fn cold_start(&self, app: &str, seconds: f64) {
        self.cold_starts.with_label_values(&[app]).inc();
        self.cold_start_seconds.with_label_values(&[app]).observe(seconds);
    }

    pub fn scale(&self, app: &str, from: u32, to: u32) {
        let direction = if to > from { "up" } else { "down" };
        self.scale_events.with_label_values(&[app, direction]).inc();
    }

    pub fn app_failed(&self, app: &str) {
        self.app_failures.with_label_values(&[app]).inc();
    }

    /// Replica counts per app; gauges of deleted apps are dropped.
    pub fn replicas(&self, counts: &[(String, u32, u32)]) {
        self.replicas_desired.reset();
        self.replicas_ready.reset();
        for (app, desired, ready) in counts {
            self.replicas_desired
                .with_label_values(&[app])
                .set(i64::from(*desired));
            self.replicas_ready
                .with_label_values(&[app])
                .set(i64::from(*ready));
        }
        self.apps.set(i64::try_from(counts.len()).unwrap_or(i64::MAX));
    }

    /// The backend's cumulative restart counts; the counter grows by what is new.
    pub fn restarts(&self, totals: &[(String, u64)]) {
        let mut seen = self.restarts_seen.lock().unwrap_or_else(|p| p.into_inner());
        for (app, total) in totals {
            let before = seen.insert(app.clone(), *total).unwrap_or(0);
            if *total > before {
                self.replica_restarts
                    .with_label_values(&[app])
                    .inc_by(total - before);
            }
        }
    }

    pub fn admin_request(&self, status: u16) {
        self.admin_requests
            .with_label_values(&[&status.to_string()])
            .inc();
    }

    pub fn route_table(&self, version: u64) {
        self.route_table_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }
}
