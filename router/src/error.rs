//! The router's error type: one enum, a short static `kind()` (JSON `type`, metric label, log
//! field) and one mapping to HTTP status, so every failure answers the same JSON shape.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use sdplane_wire::ErrorBody;

use crate::controller_client::ControllerError;

/// `Result` with the router's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the router.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error(
        "no app named {app:?} is deployed; list deployed apps with `./deploy_sd.sh --list` \
         or `GET /v1/apps` on the controller"
    )]
    UnknownApp { app: String },
    #[error("no such path {path:?}; apps are served under /<app>/v1/generate|health|models")]
    NotFound { path: String },
    #[error("the router has not received its route table from the controller yet; retry shortly")]
    RoutesNotLoaded { retry_after_s: u64 },
    #[error("app {app} failed to start: {reason}")]
    AppFailed {
        app: String,
        reason: String,
        retry_after_s: u64,
    },
    #[error("app {app} has no ready replica; POST /{app}/v1/generate starts it")]
    AppNotReady { app: String, retry_after_s: u64 },
    #[error(transparent)]
    Controller(#[from] ControllerError),
    #[error("cannot connect to a replica of {app}: {message}")]
    UpstreamConnect { app: String, message: String },
    #[error("the replica of {app} closed the connection before answering (it may have crashed): {message}")]
    UpstreamReset { app: String, message: String },
    #[error("the replica of {app} did not answer within {}", humantime::format_duration(*.after))]
    UpstreamTimeout { app: String, after: std::time::Duration },
    #[error("the request body could not be read from the client: {0}")]
    ClientBody(String),
    #[error("internal error (a bug in the router): {0}")]
    Internal(String),
}

impl Error {
    /// Short stable name: JSON `error.type`, metric label, log field.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Config(_) => "invalid_config",
            Self::Bind { .. } => "bind",
            Self::Serve(_) => "serve",
            Self::UnknownApp { .. } => "unknown_app",
            Self::NotFound { .. } => "not_found",
            Self::RoutesNotLoaded { .. } => "routes_not_loaded",
            Self::AppFailed { .. } => "app_failed",
            Self::AppNotReady { .. } => "app_not_ready",
            Self::Controller(e) => e.kind(),
            Self::UpstreamConnect { .. } => "upstream_connect",
            Self::UpstreamReset { .. } => "upstream_reset",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::ClientBody(_) => "client_body",
            Self::Internal(_) => "internal",
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Config(_) | Self::Bind { .. } | Self::Serve(_) | Self::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::UnknownApp { .. } | Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::RoutesNotLoaded { .. } | Self::AppFailed { .. } | Self::AppNotReady { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Controller(ControllerError::NotFound { .. }) => StatusCode::NOT_FOUND,
            // The controller is the router's upstream for activation: unreachable or confused
            // means the router cannot do its job right now, not that the request was bad.
            Self::Controller(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamConnect { .. } | Self::UpstreamReset { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::ClientBody(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Seconds for a `Retry-After` header, where waiting helps.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            Self::RoutesNotLoaded { retry_after_s }
            | Self::AppFailed { retry_after_s, .. }
            | Self::AppNotReady { retry_after_s, .. } => Some(*retry_after_s),
            Self::Controller(ControllerError::NotFound { .. }) => None,
            Self::Controller(_) => Some(CONTROLLER_RETRY_AFTER_S),
            _ => None,
        }
    }
}

/// `Retry-After` while the controller cannot be reached: its restart under Kubernetes or a
/// supervisor takes seconds, not minutes.
const CONTROLLER_RETRY_AFTER_S: u64 = 5;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody::new(self.kind(), self.to_string());
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after_s() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

/// An error with its whole `source()` chain: HTTP clients' top-level messages hide the cause
/// ("error sending request", "connection error"), which is what logs and error bodies need.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_class_maps_to_its_status_and_retry_after() {
        let app = || "sd-x".to_string();
        let cases = [
            (Error::UnknownApp { app: app() }, 404, None),
            (
                Error::AppFailed {
                    app: app(),
                    reason: "oom".into(),
                    retry_after_s: 30,
                },
                503,
                Some(30),
            ),
            (
                Error::UpstreamConnect {
                    app: app(),
                    message: "refused".into(),
                },
                502,
                None,
            ),
            (
                Error::UpstreamReset {
                    app: app(),
                    message: "eof".into(),
                },
                502,
                None,
            ),
            (
                Error::UpstreamTimeout {
                    app: app(),
                    after: std::time::Duration::from_secs(3),
                },
                504,
                None,
            ),
            (
                Error::Controller(ControllerError::NotFound { app: app() }),
                404,
                None,
            ),
            (
                Error::Controller(ControllerError::Unreachable {
                    op: "activate",
                    message: "refused".into(),
                }),
                503,
                Some(5),
            ),
        ];
        for (err, status, retry) in cases {
            assert_eq!(err.status().as_u16(), status, "{err}");
            assert_eq!(err.retry_after_s(), retry, "{err}");
        }
    }
}
