//! Everything the replica's HTTP layer can answer with other than success, each with a short
//! static `kind()` (the JSON `type`, the log field) and one mapping to an HTTP status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sdplane_wire::ErrorBody;

use crate::engine::EngineError;

/// Why a replica request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A request field outside its allowed range; the message names the field and the range.
    #[error("invalid parameter `{field}`: {message}")]
    InvalidParameter { field: &'static str, message: String },
    /// The body is not JSON of the expected shape (syntax, unknown field, wrong type).
    #[error("{0}")]
    InvalidJson(String),
    /// The body is not declared as `application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body is over `--max-body-bytes`.
    #[error("{0}")]
    BodyTooLarge(String),
    /// The request would need more memory than this replica may use (decided before allocating).
    #[error(
        "request needs about {needed_mb} MB, more than the {budget_mb} MB this replica may use; lower width, height or num_images"
    )]
    TooLargeForMemory { needed_mb: u64, budget_mb: u64 },
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// The model is still loading.
    #[error("model is loading ({percent:.0}%); retry after {retry_after_secs} s")]
    Loading { percent: f64, retry_after_secs: u64 },
    /// The model failed to load; the process is about to exit.
    #[error("model failed to load: {0}")]
    LoadFailed(String),
    /// The waiting room is full.
    #[error("queue is full ({waiting} waiting); retry after {retry_after_secs} s")]
    QueueFull { waiting: usize, retry_after_secs: u64 },
    /// The replica is shutting down and takes no new work.
    #[error("replica is shutting down")]
    ShuttingDown,
    /// The request did not finish within `--request-timeout`; its work was cancelled.
    #[error("generation did not finish within {seconds:.1} s and was cancelled")]
    Timeout { seconds: f64 },
    /// The generator failed (a bug or a broken model file).
    #[error("model error: {0}")]
    Model(String),
    /// A handler panicked or a worker thread died.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServerError {
    /// Stable short name: JSON `error.type`, log field, metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidParameter { .. } => "invalid_parameter",
            Self::InvalidJson(_) => "invalid_json",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::TooLargeForMemory { .. } => "too_large_for_memory",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::Loading { .. } => "loading",
            Self::LoadFailed(_) => "load_failed",
            Self::QueueFull { .. } => "queue_full",
            Self::ShuttingDown => "shutting_down",
            Self::Timeout { .. } => "timeout",
            Self::Model(_) => "model_error",
            Self::Internal(_) => "internal",
        }
    }

    /// The one place errors become HTTP statuses. A request too large for memory is 422, not
    /// 413: the body itself is small and well-formed, what it asks for cannot be computed here.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidParameter { .. } | Self::InvalidJson(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooLargeForMemory { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Loading { .. } | Self::LoadFailed(_) | Self::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Model(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Seconds for a `Retry-After` header, where retrying later can succeed.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Loading { retry_after_secs, .. } | Self::QueueFull { retry_after_secs, .. } => {
                Some(*retry_after_secs)
            }
            _ => None,
        }
    }

    /// Map a generator failure. `TooLarge` from the engine is the same refusal as the server's own.
    pub fn from_engine(error: EngineError) -> Self {
        match error {
            EngineError::InvalidParameter { field, message } => Self::InvalidParameter { field, message },
            EngineError::TooLarge { needed_mb, budget_mb } => {
                Self::TooLargeForMemory { needed_mb, budget_mb }
            }
            // Only shutdown cancels work whose client still waits (deadline and disconnect are
            // answered before the worker notices).
            EngineError::Cancelled => Self::ShuttingDown,
            EngineError::Model(message) => Self::Model(message),
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = self.status();
        match status {
            StatusCode::INTERNAL_SERVER_ERROR => {
                tracing::error!(kind = self.kind(), error = %self, "request failed")
            }
            StatusCode::GATEWAY_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
                tracing::warn!(kind = self.kind(), error = %self, "request refused");
            }
            _ => tracing::debug!(kind = self.kind(), error = %self, "request refused"),
        }
        let retry_after = self.retry_after_secs();
        let body = ErrorBody::new(self.kind(), self.to_string());
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
