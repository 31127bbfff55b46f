//! sdplane controller: the desired state. An app registry persisted in a state directory, the
//! autoscaler (idle → zero, load → out), backends that run replicas, and the admin + internal API.
//!
//! - `config`: command line and the validated configuration.
//! - `registry`: apps, their load and status, the route table (one task, a cloneable handle).
//! - `autoscaler`: the pure decision "how many replicas should this app have".
//! - `reconcile`: the loop that applies decisions through a `backend` and reports back.
//! - `backend`: the `Backend` trait; `backend::local` (child processes) and `kube`.
//! - `source`: where apps are declared per mode (the registry, or SDApps in Kubernetes mode).
//! - `api`: HTTP handlers; `models`: the models directory; `metrics`; `cold_start`; `error`.

pub mod api;
pub mod autoscaler;
pub mod backend;
pub mod cold_start;
pub mod config;
pub mod error;
pub mod kube;
pub mod metrics;
pub mod models;
pub mod reconcile;
pub mod registry;
pub mod source;
mod state_file;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{ControllerArgs, ControllerConfig, ReplicaDevice};
pub use error::{Error, Result};
pub use source::AppSource;

use crate::backend::local::LocalBackend;
use crate::kube::BackendKind;
use crate::kube::sync::SdAppSync;
use crate::registry::Registry;
use crate::registry::state::{Policy, RegistryState};
use crate::registry::store::Store;

/// `sdplane controller`: bind `--admin-listen` and serve until `shutdown` is cancelled.
pub async fn run(args: ControllerArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = ControllerConfig::from_args(&args)?;
    let listener = TcpListener::bind(args.admin_listen)
        .await
        .map_err(|source| Error::Bind {
            addr: args.admin_listen,
            source,
        })?;
    serve(config, listener, prometheus::Registry::new(), shutdown).await?;
    Ok(())
}

/// Serve the admin and internal API on `listener` with metrics in `prometheus`, running the
/// registry, the reconcile loop and the configured backend, until `shutdown` is cancelled.
/// Local replicas are stopped on the way out; a crash instead leaves them running for the next
/// start to adopt.
pub async fn serve(
    config: ControllerConfig,
    listener: TcpListener,
    prometheus: prometheus::Registry,
    shutdown: CancellationToken,
) -> Result<()> {
    // Background work stops after the HTTP server has drained.
    let tasks = CancellationToken::new();
    let source = match config.backend {
        BackendKind::Local => AppSource::Local(Arc::new(LocalBackend::start(config.local.clone()).await?)),
        BackendKind::Kubernetes => AppSource::Kubernetes(
            kube::start(&config.kube, tasks.clone())
                .await
                .map_err(|e| Error::Config(format!("kubernetes backend: {e}")))?,
        ),
    };
    serve_with(config, listener, prometheus, source, tasks, shutdown).await
}

/// [`serve`] with a backend already started (tests build a Kubernetes one over a mock API
/// server). `tasks` is cancelled once the HTTP server has drained; the backend's background
/// work should stop with it. In Kubernetes mode the registry mirrors the SDApps, and the
/// reconcile loop starts only after the first mirror, so it never acts on a registry that has
/// not yet seen the cluster's apps.
pub async fn serve_with(
    config: ControllerConfig,
    listener: TcpListener,
    prometheus: prometheus::Registry,
    source: AppSource,
    tasks: CancellationToken,
    shutdown: CancellationToken,
) -> Result<()> {
    let metrics = metrics::Metrics::new(&prometheus).map_err(|e| Error::Config(format!("metrics: {e}")))?;
    let store = Store::new(&config.state_dir);
    let file = store.load()?;
    tracing::info!(
        state_dir = %config.state_dir.display(),
        apps = file.apps.len(),
        models = %config.models.root().display(),
        "controller starting"
    );
    let policy = Policy {
        idle_timeout: config.idle_timeout,
        target_concurrency: config.target_concurrency,
        scale_down_window: config.scale_down_window,
    };
    let registry = Registry::spawn(RegistryState::new(policy, file), store, metrics.clone());
    let backend = source.backend();
    tracing::info!(backend = backend.name(), "backend ready");
    let reconcile = reconcile::run(
        registry.clone(),
        backend.clone(),
        config.reconcile_interval,
        tasks.clone(),
    );
    let reconciler = match &source {
        AppSource::Local(_) => tokio::spawn(reconcile),
        AppSource::Kubernetes(kube) => {
            let sync =
                SdAppSync::new(kube.clone(), registry.clone(), config.models.root().to_path_buf()).await?;
            let (synced, first) = tokio::sync::oneshot::channel();
            tokio::spawn(sync.run(synced, tasks.clone()));
            let tasks = tasks.clone();
            tokio::spawn(async move {
                tokio::select! {
                    first = first => if first.is_ok() { reconcile.await },
                    () = tasks.cancelled() => {}
                }
            })
        }
    };
    let state = Arc::new(api::ApiState {
        registry,
        source,
        models: config.models.clone(),
        metrics,
        prometheus,
        token: config.admin_token.clone(),
        long_poll: config.long_poll,
        shutdown: shutdown.clone(),
    });
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, "admin API listening");
    let served = axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    tasks.cancel();
    let _ = reconciler.await;
    backend.shutdown().await;
    served.map_err(Error::Serve)
}
