//! `GET /v1/health` (200 only when ready, so it works as a readiness probe), `GET /v1/models`
//! and `GET /metrics`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sdplane_wire::ErrorBody;
use sdplane_wire::api::{GpuStatus, ModelInfo, ReplicaHealth, ReplicaState};

use super::error::ServerError;
use super::metrics;
use super::state::AppState;

/// Replica state: `loading` with progress and phase, `ready`, or `failed` with the reason.
#[utoipa::path(
    get,
    path = "/v1/health",
    responses(
        (status = 200, description = "Ready", body = ReplicaHealth),
        (status = 503, description = "Loading or failed (same body)", body = ReplicaHealth),
    )
)]
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let view = state.view();
    let gpu = state.usage.gpu().and_then(|g| g.sample()).map(|s| GpuStatus {
        name: s.name.unwrap_or_default(),
        memory_used_mb: s.memory_used_mb,
        memory_total_mb: s.memory_total_mb,
        utilization_percent: s.utilization_percent.unwrap_or(0.0),
    });
    let body = ReplicaHealth {
        status: view.state,
        progress: view.progress,
        phase: view.phase,
        reason: view.reason,
        model: state.model_stem.clone(),
        device: state.device.clone(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        load_seconds: view.load_seconds,
        queue_depth: u32::try_from(state.admission.waiting()).unwrap_or(u32::MAX),
        in_flight: u32::try_from(state.admission.running()).unwrap_or(u32::MAX),
        gpu,
    };
    let status = if view.state == ReplicaState::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// The model served, its detected family, defaults and limits.
#[utoipa::path(
    get,
    path = "/v1/models",
    responses(
        (status = 200, description = "The model", body = ModelInfo),
        (status = 503, description = "Not loaded yet, or failed", body = ErrorBody),
    )
)]
pub async fn models(State(state): State<Arc<AppState>>) -> Result<Json<ModelInfo>, ServerError> {
    Ok(Json(state.generator()?.model_info().clone()))
}

/// Prometheus text exposition.
#[utoipa::path(
    get,
    path = "/metrics",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String))
)]
pub async fn prometheus_metrics(State(state): State<Arc<AppState>>) -> Result<Response, ServerError> {
    let m = &state.metrics;
    m.queue_depth
        .set(i64::try_from(state.admission.waiting()).unwrap_or(i64::MAX));
    m.in_flight
        .set(i64::try_from(state.admission.running()).unwrap_or(i64::MAX));
    if let (Some(gauges), Some(sample)) = (&m.gpu, state.usage.gpu().and_then(|g| g.sample())) {
        const MIB: f64 = 1024.0 * 1024.0;
        gauges.memory_used_bytes.set(sample.memory_used_mb * MIB);
        gauges.memory_total_bytes.set(sample.memory_total_mb * MIB);
        if let Some(percent) = sample.utilization_percent {
            gauges.utilization_percent.set(percent);
        }
    }
    let text =
        metrics::encode(&state.registry).map_err(|e| ServerError::Internal(format!("metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response())
}
