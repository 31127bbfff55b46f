//! The seam between the controller and whatever runs replicas (STYLE.md: TGI's `Backend` trait
//! between the server and the work). The controller decides *how many* replicas each app should
//! have; a backend makes it so and reports what it sees. Two implementations: `local` (child
//! processes on this machine, the embedded default) and `kube` (one Deployment per app).
//!
//! Contract every backend keeps:
//! - `ensure` is idempotent and count-based: calling it twice with the same count starts nothing
//!   new, so many concurrent activations of one app start exactly one replica.
//! - `ensure` returns quickly: starting and draining happen in the background and show up in
//!   `observe`.
//! - Scale-down drains: the replica is first reported `Draining` (the controller drops it from
//!   the route table), then stopped once its in-flight requests reach 0 or a grace period passes.
//! - Repeated start failures are reported through `AppObservation::failure` (the controller turns
//!   that into the app's `failed` state); a new `AppDeployment::generation` clears them.

pub mod local;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::SystemTime;

/// A boxed future, so `Backend` stays object-safe (`Arc<dyn Backend>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything a backend needs to run an app's replicas.
#[derive(Debug, Clone, PartialEq)]
pub struct AppDeployment {
    /// App name (a DNS label, see `sdplane_wire::app_name`).
    pub name: String,
    /// Model file relative to the models directory, as the user gave it.
    pub model: String,
    /// Absolute, canonical path of the model file on the controller's machine.
    pub model_path: PathBuf,
    /// Bumped on every (re)deploy; a backend forgets past failures when it changes.
    pub generation: u64,
    /// Weight elements in the file (from header-only detection): the basis of memory estimates.
    pub parameters: u64,
}

impl AppDeployment {
    /// Memory one replica needs, in MiB, when weights are held with `bytes_per_parameter`
    /// (4 for f32 on CPU, 2 for f16 on GPU, as `replica/src/device.rs` chooses): the weights plus
    /// a quarter again and 512 MiB for activations and the VAE decode. A deliberate over-estimate,
    /// not a measurement: it only has to keep two models from being placed where one fits.
    pub fn memory_mb(&self, bytes_per_parameter: u64) -> u64 {
        let weights_mb = self.parameters.saturating_mul(bytes_per_parameter) / (1024 * 1024);
        weights_mb + weights_mb / 4 + 512
    }
}

/// Where one replica is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaPhase {
    /// Process/pod created; no health answer yet.
    Starting,
    /// Health says `loading` (progress known).
    Loading,
    /// Health says `ready`: routable.
    Ready,
    /// Being scaled down: no longer routable, stopped once idle.
    Draining,
    /// Health says `failed`, or the process exited; `reason` says why.
    Failed,
}

/// One replica as the backend sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaObservation {
    /// Backend-specific id (local: `pid-<pid>`; kube: the pod name).
    pub id: String,
    /// Base URL (`http://ip:port`) once known.
    pub endpoint: Option<String>,
    pub phase: ReplicaPhase,
    /// Load progress 0..=1 while loading, from the replica's health.
    pub progress: Option<f64>,
    pub reason: Option<String>,
    pub started_at: SystemTime,
    /// In-flight requests as the replica last reported them.
    pub in_flight: u32,
}

/// All replicas of one app, plus what the backend concluded about its starts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppObservation {
    pub replicas: Vec<ReplicaObservation>,
    /// Set when starting failed repeatedly (e.g. three times in a row): the reason, with the
    /// replica's last stderr lines where the backend has them. Cleared by a new generation.
    pub failure: Option<String>,
    /// Replica restarts after a crash or failed start since the backend started.
    pub restarts: u64,
    /// Why no replica could be started right now (e.g. not enough free memory), if any.
    pub waiting: Option<String>,
}

impl AppObservation {
    /// Replicas that serve requests.
    pub fn ready(&self) -> impl Iterator<Item = &ReplicaObservation> {
        self.replicas.iter().filter(|r| r.phase == ReplicaPhase::Ready)
    }

    /// Replicas that count towards the app's size (everything but draining ones).
    pub fn active(&self) -> impl Iterator<Item = &ReplicaObservation> {
        self.replicas.iter().filter(|r| r.phase != ReplicaPhase::Draining)
    }
}

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The app's replica does not fit in free GPU memory or the memory budget.
    #[error("app {app} needs about {needed_mb} MiB but only {free_mb} MiB is free")]
    NoCapacity {
        app: String,
        needed_mb: u64,
        free_mb: u64,
    },
    /// A process could not be spawned or signalled.
    #[error("process error: {0}")]
    Process(String),
    /// The backend's persisted state could not be read or written.
    #[error("backend state {path}: {message}")]
    State { path: PathBuf, message: String },
    /// The orchestrator (e.g. the Kubernetes API) refused or failed a call.
    #[error("orchestrator error: {0}")]
    Orchestrator(String),
}

impl BackendError {
    /// Short stable kind for JSON bodies, metric labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoCapacity { .. } => "no_capacity",
            Self::Process(_) => "process",
            Self::State { .. } => "backend_state",
            Self::Orchestrator(_) => "orchestrator",
        }
    }
}

/// What runs replicas. Object-safe: the controller holds an `Arc<dyn Backend>`.
pub trait Backend: Send + Sync + 'static {
    /// Short name for logs and `/metrics` (`local`, `kubernetes`).
    fn name(&self) -> &'static str;

    /// Start or drain replicas so that `app` has `replicas` non-draining ones. Idempotent.
    fn ensure<'a>(&'a self, app: &'a AppDeployment, replicas: u32)
    -> BoxFuture<'a, Result<(), BackendError>>;

    /// Every app the backend runs replicas for (apps with none may be absent).
    fn observe(&self) -> BoxFuture<'_, Result<BTreeMap<String, AppObservation>, BackendError>>;

    /// Stop every replica of `app` (after draining) and forget it.
    fn remove<'a>(&'a self, app: &'a str) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Notified when an observation changes (a replica became ready, crashed, stopped), so the
    /// controller can publish routes at once instead of at its next tick. `None`: poll only.
    fn changes(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }

    /// Stop every replica this process started, for a graceful shutdown of `sdplane up`.
    /// Backends whose replicas outlive the controller by design (Kubernetes) do nothing.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
