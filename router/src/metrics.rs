//! The router's Prometheus metrics (`sdplane_router_*`), registered in the one registry the
//! process passes in. App labels are bounded: per-app children are made when an app enters the
//! route table and removed when it leaves; requests for unknown apps count under `app="unknown"`.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Label value for requests that name no deployed app (app names always start with `sd-`).
pub const UNKNOWN_APP: &str = "unknown";

/// Status classes as label values, indexed by `status / 100 - 1`.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Why an exchange with a replica failed (the `kind` label of upstream errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// No connection could be made (refused, unreachable).
    Connect = 0,
    /// The connection broke before a response arrived.
    Reset = 1,
    /// No response headers within `--upstream-timeout`.
    Timeout = 2,
    /// The response body broke off after the headers were sent.
    Body = 3,
}

/// Label values of [`UpstreamErrorKind`], in discriminant order.
const UPSTREAM_ERROR_KINDS: [&str; 4] = ["connect", "reset", "timeout", "body"];

/// Activation outcomes (the `outcome` label).
const ACTIVATION_OUTCOMES: [&str; 2] = ["ok", "error"];

/// Latency buckets in seconds: from a sub-millisecond proxied health check to a multi-minute
/// CPU generation (Prometheus' default buckets stop at 10 s, too short for SDXL).
const LATENCY_BUCKETS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Metric families of the router.
#[derive(Clone)]
pub struct Metrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGaugeVec,
    cold_hits: IntCounterVec,
    scaling_up: IntCounterVec,
    activations: IntCounterVec,
    upstream_errors: IntCounterVec,
    /// Version of the route table in use.
    pub route_table_version: IntGauge,
    /// Route tables received from the controller.
    pub route_table_updates: IntCounter,
    /// Deployed apps in the route table.
    pub apps: IntGauge,
    controller_errors: IntCounterVec,
}

/// Children of the per-app families, cached so the request path does no label lookup.
pub struct AppMetrics {
    requests: [IntCounter; 5],
    /// Time from request arrival to the end of the response body.
    pub duration: Histogram,
    /// Requests being handled (held cold requests included).
    pub in_flight: IntGauge,
    /// Generate requests that found no ready replica.
    pub cold_hits: IntCounter,
    /// 202 answers.
    pub scaling_up: IntCounter,
    upstream_errors: [IntCounter; 4],
}

impl AppMetrics {
    /// Count one answered request by status class.
    pub fn count_status(&self, status: http::StatusCode) {
        self.requests[class_index(status)].inc();
    }

    /// Count one failed exchange with a replica.
    pub fn count_upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].inc();
    }
}

fn class_index(status: http::StatusCode) -> usize {
    usize::from(status.as_u16() / 100).clamp(1, 5) - 1
}

impl Metrics {
    /// Create the families and register them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "sdplane_router_requests_total",
                "Requests answered, by app and status class.",
            ),
            &["app", "class"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "sdplane_router_request_duration_seconds",
                "Time from request arrival to the end of the response body, by app.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["app"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "sdplane_router_in_flight_requests",
                "Requests being handled, by app.",
            ),
            &["app"],
        )?;
        let cold_hits = IntCounterVec::new(
            Opts::new(
                "sdplane_router_cold_hits_total",
                "Generate requests that found no ready replica.",
            ),
            &["app"],
        )?;
        let scaling_up = IntCounterVec::new(
            Opts::new(
                "sdplane_router_scaling_up_responses_total",
                "202 answers while an app starts.",
            ),
            &["app"],
        )?;
        let activations = IntCounterVec::new(
            Opts::new(
                "sdplane_router_activations_total",
                "Activation calls made to the controller.",
            ),
            &["app", "outcome"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "sdplane_router_upstream_errors_total",
                "Failed replica exchanges, by cause.",
            ),
            &["app", "kind"],
        )?;
        let route_table_version = IntGauge::new(
            "sdplane_router_route_table_version",
            "Version of the route table in use.",
        )?;
        let route_table_updates = IntCounter::new(
            "sdplane_router_route_table_updates_total",
            "Route tables received from the controller.",
        )?;
        let apps = IntGauge::new("sdplane_router_apps", "Deployed apps in the route table.")?;
        let controller_errors = IntCounterVec::new(
            Opts::new(
                "sdplane_router_controller_errors_total",
                "Failed calls to the controller, by call.",
            ),
            &["op"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(cold_hits.clone()))?;
        registry.register(Box::new(scaling_up.clone()))?;
        registry.register(Box::new(activations.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(route_table_version.clone()))?;
        registry.register(Box::new(route_table_updates.clone()))?;
        registry.register(Box::new(apps.clone()))?;
        registry.register(Box::new(controller_errors.clone()))?;
        Ok(Self {
            requests,
            duration,
            in_flight,
            cold_hits,
            scaling_up,
            activations,
            upstream_errors,
            route_table_version,
            route_table_updates,
            apps,
            controller_errors,
        })
    }

    /// Children for one deployed app.
    pub fn for_app(&self, app: &str) -> AppMetrics {
        AppMetrics {
            requests: CLASSES.map(|class| self.requests.with_label_values(&[app, class])),
            duration: self.duration.with_label_values(&[app]),
            in_flight: self.in_flight.with_label_values(&[app]),
            cold_hits: self.cold_hits.with_label_values(&[app]),
            scaling_up: self.scaling_up.with_label_values(&[app]),
            upstream_errors: UPSTREAM_ERROR_KINDS
                .map(|kind| self.upstream_errors.with_label_values(&[app, kind])),
        }
    }

    /// Drop every series of an app that left the route table.
    pub fn forget_app(&self, app: &str) {
        // Errors only say a series never existed, which is fine.
        for class in CLASSES {
            let _ = self.requests.remove_label_values(&[app, class]);
        }
        for kind in UPSTREAM_ERROR_KINDS {
            let _ = self.upstream_errors.remove_label_values(&[app, kind]);
        }
        for outcome in ACTIVATION_OUTCOMES {
            let _ = self.activations.remove_label_values(&[app, outcome]);
        }
        let _ = self.duration.remove_label_values(&[app]);
        let _ = self.in_flight.remove_label_values(&[app]);
        let _ = self.cold_hits.remove_label_values(&[app]);
        let _ = self.scaling_up.remove_label_values(&[app]);
    }

    /// Count a request for an app that is not deployed.
    pub fn count_unknown_app(&self, status: http::StatusCode) {
        self.requests
            .with_label_values(&[UNKNOWN_APP, CLASSES[class_index(status)]])
            .inc();
    }

    /// Count one activation call.
    pub fn count_activation(&self, app: &str, ok: bool) {
        self.activations
            .with_label_values(&[app, ACTIVATION_OUTCOMES[usize::from(!ok)]])
            .inc();
    }

    /// Count one failed controller call (`op` is a fixed call name).
    pub fn count_controller_error(&self, op: &'static str) {
        self.controller_errors.with_label_values(&[op]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_fall_into_their_class_and_odd_ones_are_clamped() {
        let idx = |s: u16| class_index(http::StatusCode::from_u16(s).expect("valid status"));
        assert_eq!(
            [idx(101), idx(200), idx(302), idx(404), idx(503), idx(599)],
            [0, 1, 2, 3, 4, 4]
        );
    }

    #[test]
    fn forgotten_apps_leave_no_series_behind() {
        let registry = Registry::new();
        let metrics = Metrics::new(&registry).expect("register");
        let app = metrics.for_app("sd-a");
        app.count_status(http::StatusCode::OK);
        app.count_upstream_error(UpstreamErrorKind::Reset);
        let has_app = |r: &Registry| {
            r.gather().iter().any(|f| {
                f.get_metric()
                    .iter()
                    .any(|m| m.get_label().iter().any(|l| l.value() == "sd-a"))
            })
        };
        assert!(has_app(&registry));
        metrics.forget_app("sd-a");
        assert!(!has_app(&registry));
    }
}
