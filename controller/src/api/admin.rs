//! The admin API (`deploy_sd.sh` and people): model files, and apps deployed from them.
//! `POST /v1/apps` answers 201 for a new app and 200 when the same file was already deployed
//! (the spec is updated and a failed state cleared). In Kubernetes mode both write `SDApp`
//! objects (see `crate::source`).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use http::StatusCode;
use sdplane_wire::admin::{AppList, AppSpec, AppStatus, ModelFileList};
use serde::Serialize;

use super::ApiState;
use crate::error::{Error, Result};

/// Upper bound on `max_replicas`: more than any one machine or sane namespace runs per model,
/// low enough that a typo (`max_replicas: 10000`) is refused instead of attempted.
const MAX_REPLICAS_LIMIT: u32 = 64;

pub async fn list_models(State(state): State<Arc<ApiState>>) -> Result<Json<ModelFileList>> {
    let deployed = state.registry.model_apps().await?;
    let models = state.models.clone();
    // Reads every file's header: off the async threads.
    let list = tokio::task::spawn_blocking(move || models.list(&deployed))
        .await
        .map_err(|e| Error::Config(format!("model listing task failed: {e}")))?;
    Ok(Json(list))
}

pub async fn list_apps(State(state): State<Arc<ApiState>>) -> Result<Json<AppList>> {
    Ok(Json(AppList {
        apps: state.registry.list().await?,
    }))
}

#[tracing::instrument(skip_all, fields(app))]
pub async fn deploy(
    State(state): State<Arc<ApiState>>,
    body: Bytes,
) -> Result<(StatusCode, Json<AppStatus>)> {
    let spec: AppSpec =
        serde_json::from_slice(&body).map_err(|e| Error::BadRequest(format!("invalid app spec: {e}")))?;
    validate(&spec)?;
    let models = state.models.clone();
    let requested = spec.model.clone();
    let resolved = tokio::task::spawn_blocking(move || models.prepare(&requested))
        .await
        .map_err(|e| Error::Config(format!("model inspection task failed: {e}")))??;
    tracing::Span::current().record("app", resolved.app.as_str());
    let (status, created) = state
        .source
        .deploy(&state.registry, state.models.root(), resolved, spec)
        .await?;
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(status),
    ))
}

/// Spec values the registry cannot act on, refused with the field named.
fn validate(spec: &AppSpec) -> Result<()> {
    let bad = |field: &str, why: String| Err(Error::BadRequest(format!("invalid `{field}`: {why}")));
    if spec.max_replicas == 0 || spec.max_replicas > MAX_REPLICAS_LIMIT {
        return bad(
            "max_replicas",
            format!("must be 1..={MAX_REPLICAS_LIMIT}, got {}", spec.max_replicas),
        );
    }
    if spec.min_replicas > spec.max_replicas {
        return bad(
            "min_replicas",
            format!(
                "{} is above max_replicas {}",
                spec.min_replicas, spec.max_replicas
            ),
        );
    }
    if spec.idle_timeout_s == Some(0) {
        return bad("idle_timeout_s", "must be at least 1 second".into());
    }
    if spec.target_concurrency == Some(0) {
        return bad("target_concurrency", "must be at least 1".into());
    }
    Ok(())
}

pub async fn get_app(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<Json<AppStatus>> {
    Ok(Json(state.registry.status(name).await?))
}

/// `DELETE /v1/apps/<name>` answer.
#[derive(Debug, Serialize)]
pub struct Deleted {
    status: &'static str,
    app: String,
}

pub async fn delete_app(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<Json<Deleted>> {
    state.source.delete(&state.registry, name.clone()).await?;
    Ok(Json(Deleted {
        status: "deleted",
        app: name,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AppSpec {
        AppSpec {
            model: "x.safetensors".into(),
            min_replicas: 0,
            max_replicas: 1,
            idle_timeout_s: None,
            target_concurrency: None,
        }
    }

    #[test]
    fn spec_values_out_of_range_are_refused_naming_the_field() {
        let cases = [
            (
                AppSpec {
                    max_replicas: 0,
                    ..spec()
                },
                "max_replicas",
            ),
            (
                AppSpec {
                    max_replicas: 65,
                    ..spec()
                },
                "max_replicas",
            ),
            (
                AppSpec {
                    min_replicas: 2,
                    ..spec()
                },
                "min_replicas",
            ),
            (
                AppSpec {
                    idle_timeout_s: Some(0),
                    ..spec()
                },
                "idle_timeout_s",
            ),
            (
                AppSpec {
                    target_concurrency: Some(0),
                    ..spec()
                },
                "target_concurrency",
            ),
        ];
        for (spec, field) in cases {
            let err = validate(&spec).expect_err(field);
            assert!(err.to_string().contains(field), "{err}");
            assert_eq!(err.status().as_u16(), 400);
        }
        assert!(validate(&spec()).is_ok());
    }
}
