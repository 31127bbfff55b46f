//! The axum router: routes, JSON 404/405 fallbacks, body limit, request ids, per-request
//! tracing span and panic → JSON 500.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Request, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use super::error::ServerError;
use super::state::AppState;
use super::{generate, health, openapi};

/// Every route with its layers.
pub fn router(state: Arc<AppState>, max_body_bytes: usize, app: String) -> Router {
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    Router::new()
        .route("/v1/generate", post(generate::generate))
        .route("/v1/health", get(health::health))
        .route("/v1/models", get(health::models))
        .route("/metrics", get(health::prometheus_metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TraceLayer::new_for_http()
            // Errors are logged once, by `ServerError`, at a level that fits (503 while loading is not one).
            .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG))
            .make_span_with(move |request: &Request<Body>| {
            let id = request
                .extensions()
                .get::<RequestId>()
                .and_then(|id| id.header_value().to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", app = %app, request_id = %id, method = %request.method(), uri = %request.uri())
        }))
        // Outermost: an incoming x-request-id is kept, else a UUID is made; echoed on the answer.
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

async fn not_found(uri: Uri) -> ServerError {
    ServerError::NotFound(uri.path().to_string())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ServerError {
    ServerError::MethodNotAllowed(format!("{method} {}", uri.path()))
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a handler panicked".into());
    ServerError::Internal(message).into_response()
}
