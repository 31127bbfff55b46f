//! The router's calls to the controller: route-table long-poll, activation, activity reports
//! and the app/model lookups that answer `/<app>/v1/models` while an app is cold.

use std::time::Duration;

use http::HeaderValue;
use sdplane_wire::admin::{ActivityReport, AppRoute, AppStatus, ModelFileList, RouteTable};
use serde::de::DeserializeOwned;

/// The controller holds a long-poll for about 25 s; the extra margin keeps a slow answer from
/// being mistaken for a dead controller.
const LONG_POLL_TIMEOUT: Duration = Duration::from_secs(40);
/// Every other controller call is a registry lookup or update that answers in milliseconds.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an error body to quote in a message.
const QUOTED_BODY_CHARS: usize = 300;

/// Why a controller call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControllerError {
    #[error("the controller is unreachable ({op}): {message}")]
    Unreachable { op: &'static str, message: String },
    #[error("the controller answered {status} to {op}: {message}")]
    Status {
        op: &'static str,
        status: u16,
        message: String,
    },
    #[error("the controller's answer to {op} could not be read: {message}")]
    Decode { op: &'static str, message: String },
    #[error("the controller knows no app named {app:?}")]
    NotFound { app: String },
}

impl ControllerError {
    /// Short stable name for JSON, metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "controller_unreachable",
            Self::Status { .. } => "controller_status",
            Self::Decode { .. } => "controller_decode",
            Self::NotFound { .. } => "unknown_app",
        }
    }
}

/// Cheap to clone; one connection pool for all controller calls.
#[derive(Clone)]
pub struct ControllerClient {
    http: reqwest::Client,
    base: reqwest::Url,
    authorization: Option<HeaderValue>,
}

impl ControllerClient {
    /// A client for the controller at `base` (`http://host:port`, path prefix allowed).
    pub fn new(base: reqwest::Url, authorization: Option<HeaderValue>) -> Self {
        Self {
            http: reqwest::Client::new(),
            base,
            authorization,
        }
    }

    /// `GET /internal/v1/routes?after=VERSION` (no `after` on the first poll, so the controller
    /// answers at once).
    pub async fn routes(&self, after: Option<u64>) -> Result<RouteTable, ControllerError> {
        let mut url = self.url("internal/v1/routes");
        if let Some(v) = after {
            url.query_pairs_mut().append_pair("after", &v.to_string());
        }
        let req = self.http.get(url).timeout(LONG_POLL_TIMEOUT);
        self.call("routes", req, None).await
    }

    /// `POST /internal/v1/apps/<app>/activate` (idempotent on the controller).
    pub async fn activate(&self, app: &str) -> Result<AppRoute, ControllerError> {
        let url = self.url(&format!("internal/v1/apps/{app}/activate"));
        self.call("activate", self.http.post(url).timeout(CALL_TIMEOUT), Some(app))
            .await
    }

    /// `POST /internal/v1/activity`.
    pub async fn report_activity(&self, report: &ActivityReport) -> Result<(), ControllerError> {
        let url = self.url("internal/v1/activity");
        let req = self.http.post(url).json(report).timeout(CALL_TIMEOUT);
        let response = self.send("activity", req).await?;
        check_status("activity", response, None).await.map(drop)
    }

    /// `GET /v1/apps/<app>` on the admin API.
    pub async fn app_status(&self, app: &str) -> Result<AppStatus, ControllerError> {
        let url = self.url(&format!("v1/apps/{app}"));
        self.call("app status", self.http.get(url).timeout(CALL_TIMEOUT), Some(app))
            .await
    }

    /// `GET /v1/models` on the admin API (model files with their detected family).
    pub async fn models(&self) -> Result<ModelFileList, ControllerError> {
        let url = self.url("v1/models");
        self.call("models", self.http.get(url).timeout(CALL_TIMEOUT), None)
            .await
    }

    fn url(&self, path: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        let joined = format!("{}/{path}", self.base.path().trim_end_matches('/'));
        url.set_path(&joined);
        url
    }

    async fn send(
        &self,
        op: &'static str,
        mut req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ControllerError> {
        if let Some(auth) = &self.authorization {
            req = req.header(http::header::AUTHORIZATION, auth.clone());
        }
        req.send().await.map_err(|e| ControllerError::Unreachable {
            op,
            message: crate::error::error_chain(&e),
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        op: &'static str,
        req: reqwest::RequestBuilder,
        app: Option<&str>,
    ) -> Result<T, ControllerError> {
        let response = check_status(op, self.send(op, req).await?, app).await?;
        let bytes = response.bytes().await.map_err(|e| ControllerError::Unreachable {
            op,
            message: crate::error::error_chain(&e),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ControllerError::Decode {
            op,
            message: e.to_string(),
        })
    }
}

/// Turn a non-2xx answer into an error quoting the controller's message.
async fn check_status(
    op: &'static str,
    response: reqwest::Response,
    app: Option<&str>,
) -> Result<reqwest::Response, ControllerError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    if status == http::StatusCode::NOT_FOUND
        && let Some(app) = app
    {
        return Err(ControllerError::NotFound { app: app.to_string() });
    }
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<sdplane_wire::ErrorBody>(&text)
        .map(|b| b.error.message)
        .unwrap_or_else(|_| text.chars().take(QUOTED_BODY_CHARS).collect());
    Err(ControllerError::Status {
        op,
        status: status.as_u16(),
        message,
    })
}
