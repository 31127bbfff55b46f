//! The data plane's HTTP surface: `/<app>/v1/*` dispatch (proxy, cold start, app health and
//! models), `/healthz` for the router itself and `/metrics`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use prometheus::{Encoder, Registry, TextEncoder};
use sdplane_wire::admin::AppState;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tracing::Instrument;

use crate::app_health;
use crate::balance;
use crate::cold_start::{self, Activations};
use crate::config::RouterConfig;
use crate::controller_client::ControllerClient;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::proxy::{self, Proxy};
use crate::request_id::CountingRequestIds;
use crate::route_sync::RouteHandle;
use crate::routes::{AppEntry, RouteSnapshot};
use crate::tracker::{RequestTracker, TrackedBody};

/// Everything a request handler needs; one per router, shared by `Arc`.
pub struct Ctx {
    pub config: RouterConfig,
    pub routes: RouteHandle,
    pub proxy: Proxy,
    pub activations: Activations,
    pub controller: ControllerClient,
    pub metrics: Metrics,
    pub registry: Registry,
    /// Wakes the activity reporter (a cold hit is reported at once).
    pub wake_reporter: Arc<Notify>,
    /// Ends held (`Prefer: wait`) requests early when the router stops.
    pub shutdown: CancellationToken,
}

/// Header telling a client how long its request waited for the app to start.
const COLD_START_HEADER: HeaderName = HeaderName::from_static("x-cold-start-seconds");
/// RFC 7240 §3: which preferences were honoured.
const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The axum app of the data plane.
pub fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/healthz", get(router_health))
        .route("/metrics", get(metrics))
        .fallback(entry)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(ctx)
        .layer(CatchPanicLayer::custom(|_| {
            Error::Internal("the request handler panicked".into()).into_response()
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, CountingRequestIds::new()))
}

/// What an `/<app>/v1/...` request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// `POST /v1/generate`: the one call that wakes a cold app.
    Generate,
    /// `GET /v1/health`: app state, never wakes.
    Health,
    /// `GET /v1/models`: what the app serves, never wakes.
    Models,
    /// Anything else: proxied when ready, never wakes.
    Other,
}

/// Split `/<app>/v1...` into the app name and the byte offset where the upstream path begins.
fn split_app_path(path: &str) -> Option<(&str, usize)> {
    let rest = path.strip_prefix('/')?;
    let (app, tail) = rest.split_once('/')?;
    if app.is_empty() || !(tail == "v1" || tail.starts_with("v1/")) {
        return None;
    }
    Some((app, 1 + app.len()))
}

fn classify_call(method: &Method, upstream_path: &str) -> Call {
    let path = upstream_path.trim_end_matches('/');
    let read = *method == Method::GET || *method == Method::HEAD;
    match path {
        "/v1/generate" if *method == Method::POST => Call::Generate,
        "/v1/health" if read => Call::Health,
        "/v1/models" if read => Call::Models,
        _ => Call::Other,
    }
}

async fn entry(State(ctx): State<Arc<Ctx>>, req: Request) -> Response {
    let path = req.uri().path();
    let Some((app, offset)) = split_app_path(path) else {
        let err = Error::NotFound {
            path: path.chars().take(200).collect(),
        };
        ctx.metrics.count_unknown_app(err.status());
        return err.into_response();
    };
    let snapshot = ctx.routes.current();
    if snapshot.version.is_none() {
        let err = Error::RoutesNotLoaded {
            retry_after_s: ctx.config.retry_after_min_s,
        };
        ctx.metrics.count_unknown_app(err.status());
        return err.into_response();
    }
    if snapshot.app(app).is_none() {
        let err = Error::UnknownApp {
            app: app.chars().take(100).collect(),
        };
        ctx.metrics.count_unknown_app(err.status());
        return err.into_response();
    }
    let app = app.to_string();
    let call = classify_call(req.method(), &path[offset..]);
    // Span fields are recorded at creation, so the id is borrowed, not copied.
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let span = tracing::info_span!("request", app = %app, request_id, method = %req.method(), ?call);
    handle_app(ctx, snapshot, app, offset, call, req)
        .instrument(span)
        .await
}

async fn handle_app(
    ctx: Arc<Ctx>,
    snapshot: Arc<RouteSnapshot>,
    app: String,
    offset: usize,
    call: Call,
    req: Request,
) -> Response {
    let Some(entry) = snapshot.app(&app) else {
        return Error::UnknownApp { app }.into_response();
    };
    let tracker = RequestTracker::start(
        Arc::clone(&entry.shared),
        !matches!(call, Call::Health | Call::Models),
    );
    match call {
        Call::Health => {
            let response = app_health::health(&ctx, &app, entry).await;
            tracker.respond(response.status());
            response
        }
        Call::Models if !entry.is_ready() => {
            let response = app_health::cold_models(&ctx, &app, entry).await;
            tracker.respond(response.status());
            response
        }
        _ if entry.is_ready() => forward(&ctx, entry, req, offset, tracker, None).await,
        _ if entry.route.state == AppState::Failed => fail(tracker, failed(&ctx, &app, entry)),
        Call::Generate => {
            drop(snapshot);
            cold_generate(&ctx, &app, req, offset, tracker).await
        }
        _ => {
            let body = cold_start::scaling_up_body(
                &app,
                &entry.route,
                entry.cold_since,
                Instant::now(),
                ctx.config.retry_after_min_s,
            );
            fail(
                tracker,
                Error::AppNotReady {
                    app: app.clone(),
                    retry_after_s: body.retry_after_seconds,
                },
            )
        }
    }
}

fn failed(ctx: &Ctx, app: &str, entry: &AppEntry) -> Error {
    Error::AppFailed {
        app: app.to_string(),
        reason: entry
            .route
            .reason
            .clone()
            .unwrap_or_else(|| "no reason given by the controller".into()),
        retry_after_s: ctx.config.retry_after_failed_s,
    }
}

/// Answer with `err`, counted on the request's app.
fn fail(tracker: RequestTracker, err: Error) -> Response {
    tracker.respond(err.status());
    tracing::debug!(kind = err.kind(), error = %err, "request refused");
    err.into_response()
}

/// A generate request for an app with no ready replica: activate once, then hold the request
/// (`Prefer: wait`) or answer 202.
async fn cold_generate(
    ctx: &Ctx,
    app: &str,
    req: Request,
    offset: usize,
    tracker: RequestTracker,
) -> Response {
    tracker.shared().metrics.cold_hits.inc();
    ctx.wake_reporter.notify_one();
    let snapshot = ctx.routes.current();
    let Some(entry) = snapshot.app(app) else {
        return fail(tracker, Error::UnknownApp { app: app.to_string() });
    };
    let mut route = entry.route.clone();
    let mut cold_since = entry.cold_since;
    drop(snapshot);
    if cold_start::needs_activation(route.state) {
        match ctx.activations.activate(app).await {
            Ok(r) => route = r,
            Err(e) => return fail(tracker, e.into()),
        }
    }
    if route.state == AppState::Failed {
        let reason = route
            .reason
            .clone()
            .unwrap_or_else(|| "no reason given by the controller".into());
        let retry_after_s = ctx.config.retry_after_failed_s;
        return fail(
            tracker,
            Error::AppFailed {
                app: app.to_string(),
                reason,
                retry_after_s,
            },
        );
    }
    let wait = cold_start::preferred_wait(req.headers(), ctx.config.max_wait);
    if let Some(wait) = wait {
        let held_from = Instant::now();
        let deadline = held_from + wait;
        let mut rx = ctx.routes.subscribe();
        loop {
            let snapshot = Arc::clone(&rx.borrow_and_update());
            match snapshot.app(app) {
                None => return fail(tracker, Error::UnknownApp { app: app.to_string() }),
                Some(e) if e.is_ready() => {
                    let waited = held_from.elapsed();
                    tracing::info!(
                        waited_s = waited.as_secs_f64(),
                        "app ready; forwarding held request"
                    );
                    let mut response = forward(ctx, e, req, offset, tracker, Some(waited)).await;
                    set_preference_applied(&mut response, wait);
                    return response;
                }
                Some(e) if e.route.state == AppState::Failed => return fail(tracker, failed(ctx, app, e)),
                // A table that still says scaled-to-zero lags the activation answer; keep that.
                Some(e) if e.route.state != AppState::ScaledToZero => {
                    route = e.route.clone();
                    cold_since = e.cold_since;
                }
                Some(_) => {}
            }
            drop(snapshot);
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { break },
                () = tokio::time::sleep_until(deadline) => break,
                () = ctx.shutdown.cancelled() => break,
            }
        }
    }
    let body = cold_start::scaling_up_body(
        app,
        &route,
        cold_since,
        Instant::now(),
        ctx.config.retry_after_min_s,
    );
    tracker.shared().metrics.scaling_up.inc();
    tracker.respond(StatusCode::ACCEPTED);
    tracing::debug!(retry_after_s = body.retry_after_seconds, status = %body.status, "answering 202");
    let mut response = (StatusCode::ACCEPTED, axum::Json(&body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(body.retry_after_seconds));
    if let Some(wait) = wait {
        set_preference_applied(&mut response, wait);
    }
    response
}

fn set_preference_applied(response: &mut Response, wait: Duration) {
    if let Ok(v) = HeaderValue::from_str(&format!("wait={}", wait.as_secs())) {
        response.headers_mut().insert(PREFERENCE_APPLIED, v);
    }
}

/// Proxy to a ready replica of `entry`. Idempotent reads that cannot connect are retried once
/// on another replica.
async fn forward(
    ctx: &Ctx,
    entry: &AppEntry,
    req: Request,
    offset: usize,
    mut tracker: RequestTracker,
    cold_start: Option<Duration>,
) -> Response {
    let app = entry.shared.name.as_str();
    let policy = ctx.config.balance;
    let Some(first) = balance::pick(policy, &entry.endpoints, &entry.shared.cursor, None) else {
        let retry_after_s = ctx.config.retry_after_min_s;
        return fail(
            tracker,
            Error::AppNotReady {
                app: app.to_string(),
                retry_after_s,
            },
        );
    };
    let peer: Option<IpAddr> = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let uri = req.uri().clone();
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let upstream_pq = pq.get(offset..).unwrap_or("/");
    let idempotent_read = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    // Only a bodiless read can be replayed; keep what is needed to rebuild it.
    let replay =
        (idempotent_read && entry.endpoints.len() > 1).then(|| (req.method().clone(), req.headers().clone()));
    tracker.set_endpoint(first.enter());
    let mut result = ctx.proxy.send(app, first, req, upstream_pq, peer).await;
    if let (Err(Error::UpstreamConnect { message, .. }), Some((method, headers))) = (&result, replay) {
        tracker
            .shared()
            .metrics
            .count_upstream_error(crate::metrics::UpstreamErrorKind::Connect);
        if let Some(second) = balance::pick(policy, &entry.endpoints, &entry.shared.cursor, Some(first)) {
            tracing::info!(endpoint = first.url(), %message, "connect failed; retrying the read on another replica");
            let mut retry = Request::new(Body::empty());
            *retry.method_mut() = method;
            *retry.headers_mut() = headers;
            tracker.set_endpoint(second.enter());
            result = ctx.proxy.send(app, second, retry, upstream_pq, peer).await;
        }
    }
    match result {
        Ok(response) => {
            tracker.respond(response.status());
            let (mut parts, body) = response.into_parts();
            if let Some(waited) = cold_start
                && let Ok(v) = HeaderValue::from_str(&format!("{:.3}", waited.as_secs_f64()))
            {
                parts.headers.insert(COLD_START_HEADER, v);
            }
            Response::from_parts(parts, Body::new(TrackedBody::new(body, tracker)))
        }
        Err(err) => {
            if let Some(kind) = proxy::upstream_kind(&err) {
                tracker.shared().metrics.count_upstream_error(kind);
            }
            tracing::warn!(kind = err.kind(), error = %err, "proxying failed");
            tracker.respond(err.status());
            err.into_response()
        }
    }
}

/// 405 for the router's own endpoints, in the JSON error shape.
async fn method_not_allowed(req: Request) -> Response {
    let body = sdplane_wire::ErrorBody::new(
        "method_not_allowed",
        format!("{} is not allowed on {}; use GET", req.method(), req.uri().path()),
    );
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

/// `GET /healthz`: the router itself. 503 until the first route table arrives.
async fn router_health(State(ctx): State<Arc<Ctx>>) -> Response {
    let snapshot = ctx.routes.current();
    let body = serde_json::json!({
        "status": if snapshot.version.is_some() { "ok" } else { "waiting_for_controller" },
        "route_table_version": snapshot.version,
        "apps": snapshot.len(),
    });
    let status = if snapshot.version.is_some() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// `GET /metrics`: the process registry in Prometheus text format.
async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response {
    let mut out = Vec::new();
    match TextEncoder::new().encode(&ctx.registry.gather(), &mut out) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], out).into_response(),
        Err(e) => Error::Internal(format!("cannot encode metrics: {e}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_paths_split_at_the_app_and_keep_the_rest() {
        assert_eq!(split_app_path("/sd-a/v1/generate"), Some(("sd-a", 5)));
        assert_eq!(split_app_path("/sd-a/v1"), Some(("sd-a", 5)));
        for bad in [
            "/",
            "/sd-a",
            "/sd-a/",
            "/sd-a/v2/generate",
            "//v1/x",
            "/sd-a/v1x",
            "/healthz",
        ] {
            assert_eq!(split_app_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_post_generate_is_a_waking_call() {
        assert_eq!(classify_call(&Method::POST, "/v1/generate"), Call::Generate);
        assert_eq!(classify_call(&Method::GET, "/v1/generate"), Call::Other);
        assert_eq!(classify_call(&Method::GET, "/v1/health"), Call::Health);
        assert_eq!(classify_call(&Method::HEAD, "/v1/models/"), Call::Models);
        assert_eq!(classify_call(&Method::POST, "/v1/models"), Call::Other);
    }
}
