//! The control-plane contract: the controller's admin API (what `deploy_sd.sh` speaks) and
//! the internal API between router and controller (route table, activation, activity).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// State of an app as users see it on `/<app>/v1/health` and `GET /v1/apps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AppState {
    /// No replica; the next generate request starts one.
    ScaledToZero,
    /// A replica process/pod is being started.
    Starting,
    /// A replica is up and loading weights (progress known).
    Loading,
    /// At least one replica serves requests.
    Ready,
    /// Starting failed repeatedly; `reason` says why. Requests get 503 until redeployed.
    Failed,
}

impl AppState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScaledToZero => "scaled_to_zero",
            Self::Starting => "starting",
            Self::Loading => "loading",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }
}

/// `POST /v1/apps` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// Model file, relative to the models directory.
    pub model: String,
    #[serde(default)]
    pub min_replicas: u32,
    #[serde(default = "default_max_replicas")]
    pub max_replicas: u32,
    /// Seconds without requests before scaling to zero; the controller default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
    /// In-flight requests per replica before scaling out; the controller default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_concurrency: Option<u32>,
}

fn default_max_replicas() -> u32 {
    1
}

/// One app as the controller reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppStatus {
    pub name: String,
    pub model: String,
    pub spec: AppSpec,
    pub state: AppState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Load progress of the most advanced loading replica, 0..=1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    pub replicas_desired: u32,
    pub replicas_ready: u32,
    pub replicas_total: u32,
    /// Path on the router: `/<app>/v1/generate`.
    pub url_path: String,
    /// Seconds since the last request reached this app, when one has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_seconds: Option<f64>,
    pub idle_timeout_s: u64,
    /// Learned from this app's past cold starts (a default before the first).
    pub estimated_cold_start_seconds: f64,
    pub cold_starts: u64,
}

/// `GET /v1/apps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppList {
    pub apps: Vec<AppStatus>,
}

/// One model file under the models directory (`GET /v1/models`, `sdplane models`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelFileEntry {
    /// Path relative to the models directory.
    pub file: String,
    pub size_bytes: u64,
    /// The app name this file deploys as.
    pub app_name: String,
    /// Detection summary, or `null` with `error` set when the file cannot be read as a model.
    pub family: Option<String>,
    pub family_label: Option<String>,
    pub dtype: Option<String>,
    pub parameters: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether an app is deployed from this file, and its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_state: Option<AppState>,
}

/// `GET /v1/models` on the controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelFileList {
    pub models_dir: String,
    pub models: Vec<ModelFileEntry>,
}

/// What the router needs to route one app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppRoute {
    pub state: AppState,
    /// Base URLs (`http://127.0.0.1:PORT`) of ready replicas.
    pub endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub estimated_cold_start_seconds: f64,
    pub replicas_ready: u32,
    pub replicas_total: u32,
}

/// `GET /internal/v1/routes?after=VERSION`: long-polled by the router; answers when the table's
/// version differs from `after` (or after a timeout with the same table).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RouteTable {
    pub version: u64,
    pub apps: BTreeMap<String, AppRoute>,
}

/// `POST /internal/v1/activity`: the router's per-app load, sent every few hundred ms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ActivityReport {
    pub apps: BTreeMap<String, AppActivity>,
}

/// Load on one app as the router sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppActivity {
    pub in_flight: u32,
    /// Seconds since the last request for this app arrived or finished (0 while in flight).
    pub idle_seconds: f64,
}
