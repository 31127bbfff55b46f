//! The controller's error type: every admin/internal API failure, with a short static `kind()`
//! (JSON `type`, metric label, log field) and the one mapping from error to HTTP status.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use sdplane_wire::ErrorBody;

/// Result with the controller's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the controller can answer with besides success.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request body or a parameter is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// A model path points outside the models directory (`..`, absolute path, symlink).
    #[error("model path {path:?} leaves the models directory")]
    PathOutsideModels { path: String },
    #[error("no model file {path:?} in the models directory")]
    ModelNotFound { path: String },
    #[error("no app named {0:?}")]
    AppNotFound(String),
    /// Two different files map to one app name.
    #[error("app {app:?} already serves {existing:?}; {requested:?} maps to the same name — rename one file")]
    NameConflict {
        app: String,
        existing: String,
        requested: String,
    },
    /// The file is not a checkpoint sdplane can serve (the detection message says why).
    #[error("{message}")]
    UnsupportedModel { kind: &'static str, message: String },
    #[error("missing or wrong admin token (send `Authorization: Bearer <token>`)")]
    Unauthorized,
    /// The controller is stopping or its registry task is gone.
    #[error("the controller is shutting down")]
    Unavailable,
    /// The registry could not be persisted.
    #[error("{0}")]
    State(#[from] crate::state_file::StateFileError),
    #[error("backend error: {0}")]
    Backend(#[from] crate::backend::BackendError),
    /// A call to the Kubernetes API (SDApps in Kubernetes mode) failed or was refused.
    #[error("{0}")]
    Kube(#[from] crate::kube::Error),
    #[error("{0}")]
    Config(String),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

impl Error {
    /// Short stable kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "invalid_request",
            Self::PathOutsideModels { .. } => "path_outside_models",
            Self::ModelNotFound { .. } => "model_not_found",
            Self::AppNotFound(_) => "unknown_app",
            Self::NameConflict { .. } => "name_conflict",
            Self::UnsupportedModel { kind, .. } => kind,
            Self::Unauthorized => "unauthorized",
            Self::Unavailable => "unavailable",
            Self::State(_) => "state_file",
            Self::Backend(e) => e.kind(),
            Self::Kube(e) => e.kind(),
            Self::Config(_) => "config",
            Self::Bind { .. } => "bind",
            Self::Serve(_) => "serve",
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::PathOutsideModels { .. } => StatusCode::BAD_REQUEST,
            Self::ModelNotFound { .. } | Self::AppNotFound(_) => StatusCode::NOT_FOUND,
            Self::NameConflict { .. } => StatusCode::CONFLICT,
            Self::UnsupportedModel { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Kube(e) => kube_status(e),
            Self::State(_) | Self::Backend(_) | Self::Config(_) | Self::Bind { .. } | Self::Serve(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

/// Kubernetes errors as admin-API answers: the caller's mistakes are 4xx, the API server's
/// refusals 502 (it answered, with an error), an unreachable API server 503.
fn kube_status(e: &crate::kube::Error) -> StatusCode {
    use crate::kube::Error as K;
    match e {
        K::InvalidSpec(_) | K::InvalidName(_) => StatusCode::BAD_REQUEST,
        K::NotFound(_) | K::NoSdApp(_) => StatusCode::NOT_FOUND,
        K::AlreadyExists(_) => StatusCode::CONFLICT,
        K::NotLeader => StatusCode::SERVICE_UNAVAILABLE,
        K::Api(::kube::Error::Api(_)) | K::MissingField(_) => StatusCode::BAD_GATEWAY,
        K::Api(_) => StatusCode::SERVICE_UNAVAILABLE,
        K::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(kind = self.kind(), error = %self, "request failed");
        } else {
            tracing::info!(kind = self.kind(), error = %self, "request refused");
        }
        let mut response = (status, Json(ErrorBody::new(self.kind(), self.to_string()))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_error_maps_to_its_documented_status() {
        let cases = [
            (Error::BadRequest("x".into()), 400),
            (Error::PathOutsideModels { path: "../x".into() }, 400),
            (Error::ModelNotFound { path: "x".into() }, 404),
            (Error::AppNotFound("sd-x".into()), 404),
            (
                Error::NameConflict {
                    app: "a".into(),
                    existing: "a".into(),
                    requested: "b".into(),
                },
                409,
            ),
            (
                Error::UnsupportedModel {
                    kind: "corrupt_file",
                    message: "bad".into(),
                },
                422,
            ),
            (Error::Unauthorized, 401),
            (Error::Kube(crate::kube::Error::InvalidSpec("x".into())), 400),
            (Error::Kube(crate::kube::Error::NotFound("sd-x".into())), 404),
            (Error::Kube(crate::kube::Error::AlreadyExists("sd-x".into())), 409),
            (Error::Kube(crate::kube::Error::NotLeader), 503),
            (
                Error::Kube(crate::kube::Error::MissingField("metadata.name")),
                502,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(error.status().as_u16(), status, "{error}");
        }
    }

    #[test]
    fn a_name_conflict_names_both_files() {
        let e = Error::NameConflict {
            app: "sd-x".into(),
            existing: "a/x.safetensors".into(),
            requested: "b/x.safetensors".into(),
        };
        let text = e.to_string();
        assert!(
            text.contains("a/x.safetensors") && text.contains("b/x.safetensors"),
            "{text}"
        );
    }
}
