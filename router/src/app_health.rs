//! `GET /<app>/v1/health` and, while the app is cold, `GET /<app>/v1/models`: answered from the
//! route table, a replica and the controller's registry, and never waking the app.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use sdplane_wire::admin::AppState;
use sdplane_wire::api::ReplicaHealth;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::cold_start;
use crate::error::Error;
use crate::routes::AppEntry;
use crate::server::Ctx;

/// A replica's own health answers in milliseconds; a slow one is reported, not waited for.
const REPLICA_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /<app>/v1/health` on the router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppHealth {
    pub app: String,
    /// `scaled_to_zero`, `starting`, `loading`, `ready` or `failed`.
    pub status: AppState,
    /// Load progress 0..=1 while loading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    /// Why the app failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub replicas_ready: u32,
    pub replicas_total: u32,
    /// Seconds until ready by the app's cold-start estimate, while starting or loading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_ready_seconds: Option<f64>,
    /// What one ready replica says about itself (GPU, uptime, queue), when ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<ReplicaHealth>,
    /// Why `replica` is missing although the app is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_error: Option<String>,
    pub message: String,
}

/// `GET /<app>/v1/models` on the router while no replica is ready: what the controller knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColdModelInfo {
    pub app: String,
    pub status: AppState,
    /// Model file, relative to the models directory.
    pub file: String,
    /// File stem, as `model` in generate answers.
    pub model: String,
    pub family: Option<String>,
    pub family_label: Option<String>,
    pub dtype: Option<String>,
    pub parameters: Option<u64>,
    pub message: String,
}

/// Health of an app; 200 unless it failed (503).
pub async fn health(ctx: &Ctx, app: &str, entry: &AppEntry) -> Response {
    let route = &entry.route;
    let status = if entry.is_ready() {
        AppState::Ready
    } else {
        route.state
    };
    let mut body = AppHealth {
        app: app.to_string(),
        status,
        progress: route.progress,
        reason: route.reason.clone(),
        replicas_ready: route.replicas_ready,
        replicas_total: route.replicas_total,
        estimated_ready_seconds: None,
        replica: None,
        replica_error: None,
        message: String::new(),
    };
    let mut code = StatusCode::OK;
    body.message = match status {
        AppState::Ready => {
            match replica_health(ctx, app, entry).await {
                Ok(h) => body.replica = Some(h),
                Err(e) => body.replica_error = Some(e),
            }
            format!("ready; POST /{app}/v1/generate")
        }
        AppState::ScaledToZero => format!("scaled to zero; the next POST /{app}/v1/generate starts it"),
        AppState::Starting | AppState::Loading => {
            let estimate = cold_start::scaling_up_body(
                app,
                route,
                entry.cold_since,
                Instant::now(),
                ctx.config.retry_after_min_s,
            );
            body.estimated_ready_seconds = Some(estimate.estimated_ready_seconds);
            estimate.message
        }
        AppState::Failed => {
            code = StatusCode::SERVICE_UNAVAILABLE;
            "failed to start; redeploy the app after fixing the reason".to_string()
        }
    };
    (code, axum::Json(body)).into_response()
}

async fn replica_health(ctx: &Ctx, app: &str, entry: &AppEntry) -> Result<ReplicaHealth, String> {
    let endpoint = crate::balance::pick(ctx.config.balance, &entry.endpoints, &entry.shared.cursor, None)
        .ok_or_else(|| "no ready endpoint".to_string())?;
    let (status, bytes) = ctx
        .proxy
        .get_small(app, endpoint, "/v1/health", REPLICA_HEALTH_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "replica {} answered {status} to /v1/health",
            endpoint.url()
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("replica health unreadable: {e}"))
}

/// Model facts of a cold app, from the controller's registry and model list.
pub async fn cold_models(ctx: &Ctx, app: &str, entry: &AppEntry) -> Response {
    let status = match ctx.controller.app_status(app).await {
        Ok(s) => s,
        Err(e) => return Error::from(e).into_response(),
    };
    // The model list adds the detected family; without it the file alone still helps.
    let detected = match ctx.controller.models().await {
        Ok(list) => list.models.into_iter().find(|m| m.file == status.model),
        Err(e) => {
            tracing::debug!(error = %e, "model list unavailable; answering without the family");
            None
        }
    };
    let model = std::path::Path::new(&status.model)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(&status.model)
        .to_string();
    let body = ColdModelInfo {
        app: app.to_string(),
        status: entry.route.state,
        file: status.model.clone(),
        model,
        family: detected.as_ref().and_then(|d| d.family.clone()),
        family_label: detected.as_ref().and_then(|d| d.family_label.clone()),
        dtype: detected.as_ref().and_then(|d| d.dtype.clone()),
        parameters: detected.as_ref().and_then(|d| d.parameters),
        message: format!(
            "no replica is loaded, so defaults and limits are not shown; they appear here once \
             POST /{app}/v1/generate has started one"
        ),
    };
    axum::Json(body).into_response()
}
