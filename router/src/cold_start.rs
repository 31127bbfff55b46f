//! Cold starts: asking the controller to activate an app once however many requests hit it
//! (single-flight per app), the client's `Prefer: wait=N` (RFC 7240), and the 202 body with its
//! `Retry-After` computed from the app's learned cold-start estimate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use http::HeaderMap;
use sdplane_wire::admin::{AppRoute, AppState};
use sdplane_wire::api::ScalingUpBody;
use tokio::time::Instant;

use crate::controller_client::{ControllerClient, ControllerError};
use crate::metrics::Metrics;

/// An activation answer (ok or not) is reused this long, covering the moment between the
/// controller's answer and the route table showing the app as starting, so a burst of requests
/// makes one call, not one per request.
const ACTIVATION_REUSE: Duration = Duration::from_secs(2);
/// Longest `Retry-After` while starting: a client should look again at least this often.
const MAX_RETRY_AFTER_S: u64 = 30;

type ActivationFuture = Shared<BoxFuture<'static, Result<AppRoute, ControllerError>>>;

struct Activation {
    started: Instant,
    result: ActivationFuture,
}

/// Single-flight activation calls, one in flight per app at most.
pub struct Activations {
    client: ControllerClient,
    metrics: Metrics,
    calls: Mutex<HashMap<String, Activation>>,
}

impl Activations {
    /// Activations through `client`, counted in `metrics`.
    pub fn new(client: ControllerClient, metrics: Metrics) -> Self {
        Self {
            client,
            metrics,
            calls: Mutex::new(HashMap::new()),
        }
    }

    /// Ask the controller to start `app`, or join the call already made for it. The call runs
    /// in its own task, so a client that goes away does not cancel it for the others.
    pub async fn activate(&self, app: &str) -> Result<AppRoute, ControllerError> {
        let now = Instant::now();
        let shared = {
            // A poisoned lock only means another request panicked mid-insert; the map is
            // still a valid cache.
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            match calls.get(app) {
                Some(a) if a.result.peek().is_none() || now.duration_since(a.started) < ACTIVATION_REUSE => {
                    a.result.clone()
                }
                _ => {
                    calls.retain(|_, a| {
                        a.result.peek().is_none() || now.duration_since(a.started) < ACTIVATION_REUSE
                    });
                    let result = self.start_call(app);
                    calls.insert(
                        app.to_string(),
                        Activation {
                            started: now,
                            result: result.clone(),
                        },
                    );
                    result
                }
            }
        };
        shared.await
    }

    fn start_call(&self, app: &str) -> ActivationFuture {
        let client = self.client.clone();
        let metrics = self.metrics.clone();
        let name = app.to_string();
        let task = tokio::spawn(async move {
            let result = client.activate(&name).await;
            metrics.count_activation(&name, result.is_ok());
            match &result {
                Ok(route) => {
                    tracing::info!(app = %name, state = route.state.as_str(), "activation requested")
                }
                Err(e) => {
                    metrics.count_controller_error("activate");
                    tracing::warn!(app = %name, error = %e, kind = e.kind(), "activation failed");
                }
            }
            result
        });
        async move {
            task.await.unwrap_or_else(|e| {
                Err(ControllerError::Unreachable {
                    op: "activate",
                    message: format!("activation task ended: {e}"),
                })
            })
        }
        .boxed()
        .shared()
    }
}

/// Whether the controller must be asked to start an app in this state (it is not already
/// starting one, and a failed app waits for its redeploy).
pub fn needs_activation(state: AppState) -> bool {
    matches!(state, AppState::ScaledToZero | AppState::Ready)
}

/// The longest wait the client asked for with `Prefer: wait=N`, capped at `max`. Malformed
/// preferences are ignored, as RFC 7240 §2 asks.
pub fn preferred_wait(headers: &HeaderMap, max: Duration) -> Option<Duration> {
    headers
        .get_all(http::header::HeaderName::from_static("prefer"))
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|pref| {
            let pref = pref.split(';').next()?.trim();
            let (name, value) = pref.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            value.trim().trim_matches('"').parse::<u64>().ok()
        })
        .max()
        .map(|s| Duration::from_secs(s).min(max))
        .filter(|d| !d.is_zero())
}

/// The 202 body for an app that is not ready yet. `cold_since` is when this router saw the
/// start begin (`None`: it begins now).
pub fn scaling_up_body(
    app: &str,
    route: &AppRoute,
    cold_since: Option<Instant>,
    now: Instant,
    retry_after_min_s: u64,
) -> ScalingUpBody {
    let elapsed = cold_since.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
    let remaining = (route.estimated_cold_start_seconds - elapsed).max(0.0);
    // Polling at half the remaining estimate homes in on the ready moment without hammering;
    // past the estimate the minimum applies.
    let retry_after_seconds =
        ((remaining / 2.0).ceil() as u64).clamp(retry_after_min_s, MAX_RETRY_AFTER_S.max(retry_after_min_s));
    let loading = route.state == AppState::Loading;
    let progress = if loading { route.progress } else { None };
    let what = match (loading, progress) {
        (true, Some(p)) => format!("model is loading ({:.0}% done)", p * 100.0),
        (true, None) => "model is loading".to_string(),
        (false, _) if remaining > 0.0 => format!("app is starting (about {remaining:.0} s left)"),
        (false, _) => "app is starting (taking longer than usual)".to_string(),
    };
    ScalingUpBody {
        status: if loading { "loading" } else { "scaling_up" }.to_string(),
        app: app.to_string(),
        retry_after_seconds,
        estimated_ready_seconds: (remaining * 10.0).round() / 10.0,
        progress,
        message: format!(
            "{what}; retry after {retry_after_seconds} s, or send `Prefer: wait=<seconds>` to be held until ready"
        ),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn route(state: AppState, estimate: f64, progress: Option<f64>) -> AppRoute {
        AppRoute {
            state,
            endpoints: vec![],
            progress,
            reason: None,
            estimated_cold_start_seconds: estimate,
            replicas_ready: 0,
            replicas_total: 1,
        }
    }

    #[test]
    fn prefer_wait_is_parsed_among_other_preferences_and_capped() {
        let max = Duration::from_secs(120);
        let headers = |vals: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in vals {
                h.append("prefer", HeaderValue::from_static(v));
            }
            h
        };
        assert_eq!(
            preferred_wait(&headers(&["wait=10"]), max),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            preferred_wait(&headers(&["respond-async, Wait = 30"]), max),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            preferred_wait(&headers(&["handling=lenient", "wait=\"5\""]), max),
            Some(Duration::from_secs(5))
        );
        assert_eq!(preferred_wait(&headers(&["wait=999"]), max), Some(max));
        for ignored in [&["wait=soon"][..], &["wait=0"], &["respond-async"], &[]] {
            assert_eq!(preferred_wait(&headers(ignored), max), None, "{ignored:?}");
        }
    }

    #[test]
    fn estimate_counts_down_from_the_start_and_retry_after_follows_it() {
        let t0 = Instant::now();
        let r = route(AppState::Starting, 12.0, None);
        let fresh = scaling_up_body("sd-a", &r, None, t0, 2);
        assert_eq!(
            (
                fresh.status.as_str(),
                fresh.estimated_ready_seconds,
                fresh.retry_after_seconds
            ),
            ("scaling_up", 12.0, 6)
        );
        let later = scaling_up_body("sd-a", &r, Some(t0), t0 + Duration::from_secs(8), 2);
        assert_eq!(
            (later.estimated_ready_seconds, later.retry_after_seconds),
            (4.0, 2)
        );
        let overdue = scaling_up_body("sd-a", &r, Some(t0), t0 + Duration::from_secs(60), 2);
        assert_eq!(
            (overdue.estimated_ready_seconds, overdue.retry_after_seconds),
            (0.0, 2)
        );
        assert!(
            overdue.message.contains("longer than usual"),
            "{}",
            overdue.message
        );
        let slow = scaling_up_body("sd-a", &route(AppState::Starting, 600.0, None), None, t0, 2);
        assert_eq!(slow.retry_after_seconds, MAX_RETRY_AFTER_S);
    }

    #[test]
    fn loading_apps_report_progress_in_body_and_message() {
        let t0 = Instant::now();
        let body = scaling_up_body(
            "sd-a",
            &route(AppState::Loading, 10.0, Some(0.4)),
            Some(t0),
            t0,
            1,
        );
        assert_eq!(body.status, "loading");
        assert_eq!(body.progress, Some(0.4));
        assert!(body.message.contains("40%"), "{}", body.message);
    }

    #[test]
    fn only_idle_apps_need_an_activation_call() {
        assert!(needs_activation(AppState::ScaledToZero));
        assert!(
            needs_activation(AppState::Ready),
            "ready without endpoints: ask again"
        );
        assert!(!needs_activation(AppState::Starting));
        assert!(!needs_activation(AppState::Loading));
        assert!(!needs_activation(AppState::Failed));
    }
}
