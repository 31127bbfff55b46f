//! The controller's HTTP surface on `--admin-listen`: the admin API (`admin`, what
//! `deploy_sd.sh` speaks), the internal API for routers (`internal`), `/metrics`, and the layers
//! around them (token check, request ids, tracing, body limit, panic catching, status counting).

mod admin;
mod auth;
mod internal;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderName, StatusCode};
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::metrics::Metrics;
use crate::models::ModelsDir;
use crate::registry::Registry;
use crate::source::AppSource;

/// Admin bodies are small JSON documents; 1 MiB leaves room and refuses abuse with 413.
const BODY_LIMIT_BYTES: usize = 1024 * 1024;

/// What every handler can reach.
pub struct ApiState {
    pub registry: Registry,
    /// Where `POST`/`DELETE /v1/apps` declare apps (the registry, or SDApps).
    pub source: AppSource,
    pub models: ModelsDir,
    pub metrics: Metrics,
    pub prometheus: prometheus::Registry,
    /// Required bearer token, when configured.
    pub token: Option<String>,
    /// Longest a route-table long-poll is held.
    pub long_poll: Duration,
    /// Ends long-polls at shutdown so the server can drain.
    pub shutdown: CancellationToken,
}

/// The whole router.
pub fn router(state: Arc<ApiState>) -> Router {
    let x_request_id = HeaderName::from_static("x-request-id");
    let guarded = Router::new()
        .route("/v1/models", get(admin::list_models))
        .route("/v1/apps", get(admin::list_apps).post(admin::deploy))
        .route("/v1/apps/{name}", get(admin::get_app).delete(admin::delete_app))
        .route("/internal/v1/routes", get(internal::routes))
        .route("/internal/v1/apps/{name}/activate", post(internal::activate))
        .route("/internal/v1/activity", post(internal::activity))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_token));
    Router::new()
        .merge(guarded)
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), count_status))
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT_BYTES))
        .layer(CatchPanicLayer::new())
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            tracing::info_span!("admin", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        .with_state(state)
}

async fn not_found(req: Request) -> Response {
    let message = format!("no endpoint {} {}", req.method(), req.uri().path());
    (
        StatusCode::NOT_FOUND,
        axum::Json(sdplane_wire::ErrorBody::new("not_found", message)),
    )
        .into_response()
}

async fn count_status(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    state.metrics.admin_request(response.status().as_u16());
    response
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    use prometheus::Encoder;
    let encoder = prometheus::TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&state.prometheus.gather(), &mut body) {
        Ok(()) => (
            [(http::header::CONTENT_TYPE, encoder.format_type().to_string())],
            body,
        )
            .into_response(),
        Err(e) => crate::error::Error::Config(format!("metrics encoding: {e}")).into_response(),
    }
}
