//! The replica's HTTP server: `/v1/generate`, `/v1/health`, `/v1/models`, `/metrics`,
//! `/openapi.json`.
//!
//! Start-up contract with supervisors (the controller's local backend reads this): the replica
//! binds its listener before loading anything and prints exactly one line on **stdout**,
//! `SDPLANE_LISTENING <ip:port>` (the bound address, so `--listen 127.0.0.1:0` works), as its
//! first stdout line; logs go to stderr. Health then answers 503 `loading` (with progress and
//! phase) until the weights are loaded and a warm-up generation has run, then 200 `ready`. If
//! the load fails, health answers 503 `failed` with the reason for `--failed-exit-grace`, then
//! the process exits non-zero. On SIGINT/SIGTERM it stops accepting, lets in-flight work finish
//! for `--shutdown-grace`, cancels what is left, and exits 0.
//!
//! Modules: `validate` + `init_image` (request → parameters), `admission` (queue, 429),
//! `generate` (the handler and its worker), `health` (health, models, metrics), `loader`
//! (load + warm-up), `usage` + `gpu` (compute metrics), `metrics` (Prometheus), `openapi`,
//! `routes` (router and layers), `state`, `error`.

mod admission;
mod error;
mod generate;
pub(crate) mod gpu;
mod health;
mod init_image;
mod loader;
mod metrics;
mod openapi;
mod routes;
mod state;
mod usage;
mod validate;

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use error::ServerError;
pub use loader::Loader;
pub use openapi::ApiDoc;
pub use validate::{MAX_GUIDANCE_SCALE, SIDE_MULTIPLE};

use crate::device::{DTypeChoice, DeviceChoice};

/// The first stdout line of a replica: this prefix, a space, the bound `ip:port`.
pub const LISTENING_PREFIX: &str = "SDPLANE_LISTENING";

/// `sdplane replica` configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplicaArgs {
    /// Model file to serve (`.safetensors`, single-file layout).
    #[arg(long, env = "SDPLANE_MODEL")]
    pub model: std::path::PathBuf,
    /// Address to listen on; port 0 picks a free one (printed as `SDPLANE_LISTENING <addr>`).
    #[arg(long, env = "SDPLANE_LISTEN", default_value = "127.0.0.1:9000")]
    pub listen: std::net::SocketAddr,
    /// Device to run on: cpu or cuda:N.
    #[arg(long, env = "SDPLANE_DEVICE", default_value = "cpu")]
    pub device: DeviceChoice,
    /// Weight precision; defaults to f32 on CPU, f16 on GPU.
    #[arg(long, env = "SDPLANE_DTYPE", value_enum)]
    pub dtype: Option<DTypeChoice>,
    /// Requests that may wait for a worker; more are answered 429 with Retry-After.
    #[arg(long, env = "SDPLANE_MAX_QUEUE", default_value_t = 16)]
    pub max_queue: usize,
    /// Generations run at once (one uses every CPU core, or most of a GPU).
    #[arg(long, env = "SDPLANE_MAX_CONCURRENCY", default_value_t = 1)]
    pub max_concurrency: usize,
    /// Deadline per request, queue wait included; past it the answer is 504 and the work stops.
    #[arg(long, env = "SDPLANE_REQUEST_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Largest request body in bytes (init images are base64 inside it); larger is 413.
    #[arg(long, env = "SDPLANE_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Memory one request may need beyond the weights, in MB; larger requests are answered 422.
    /// Default: what is free after loading (GPU memory on a GPU, host memory on CPU).
    #[arg(long, env = "SDPLANE_MEMORY_BUDGET_MB")]
    pub memory_budget_mb: Option<u64>,
    /// How long a failed load stays visible on /v1/health before the process exits non-zero.
    #[arg(long, env = "SDPLANE_FAILED_EXIT_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub failed_exit_grace: Duration,
    /// How long in-flight work may finish after SIGTERM before it is cancelled (below
    /// Kubernetes' default 30 s terminationGracePeriodSeconds).
    #[arg(long, env = "SDPLANE_SHUTDOWN_GRACE", default_value = "25s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

/// Serve until `shutdown` is cancelled (exit 0) or the model fails to load (error).
pub async fn run(args: ReplicaArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("cannot read the bound address")?;
    announce(addr)?;
    let loader = candle_loader(args.model.clone(), args.device, args.dtype);
    serve(listener, args, loader, shutdown).await
}

/// Print the start-up line supervisors wait for, and flush it now (stdout may be a pipe).
fn announce(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{LISTENING_PREFIX} {addr}")
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")?;
    tracing::info!(%addr, "listening");
    Ok(())
}

/// The production loader: the candle pipeline.
fn candle_loader(model: std::path::PathBuf, device: DeviceChoice, dtype: Option<DTypeChoice>) -> Loader {
    Box::new(move |progress| {
        crate::pipeline::CandleGenerator::load(&model, device, dtype, progress)
            .map(|generator| Arc::new(generator) as Arc<dyn crate::engine::Generator>)
    })
}

/// Serve on `listener` with the model `loader` builds. Public so tests can drive the server
/// with their own `Generator`; `sdplane replica` goes through `run`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    args: ReplicaArgs,
    loader: Loader,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    check_args(&args)?;
    let app_name = sdplane_wire::app_name_for_file(&args.model);
    let span = tracing::info_span!("replica", app = %app_name);
    serve_in_span(listener, args, app_name, loader, shutdown)
        .instrument(span)
        .await
}

async fn serve_in_span(
    listener: tokio::net::TcpListener,
    args: ReplicaArgs,
    app_name: String,
    loader: Loader,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let gpu = gpu::GpuProbe::open(args.device);
    let replica_metrics = metrics::ReplicaMetrics::register(&registry, gpu.is_some())?;
    let model_stem = args
        .model
        .file_stem()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let state = Arc::new(state::AppState::new(
        admission::Admission::new(args.max_concurrency, args.max_queue),
        registry,
        replica_metrics,
        usage::UsageProbe::new(gpu),
        model_stem,
        args.device.to_string(),
        args.request_timeout,
    ));
    let app = routes::router(Arc::clone(&state), args.max_body_bytes, app_name);
    let loaded = loader::spawn(Arc::clone(&state), loader, args.memory_budget_mb)
        .context("cannot start the loader thread")?;

    // `stop` ends the server: on the shutdown signal, or after a failed load's grace.
    let stop = CancellationToken::new();
    let failure = Arc::new(std::sync::Mutex::new(None::<String>));
    tokio::spawn(
        watch_load(
            loaded,
            args.failed_exit_grace,
            shutdown.clone(),
            stop.clone(),
            Arc::clone(&failure),
        )
        .in_current_span(),
    );
    tokio::spawn({
        let (shutdown, stop, state) = (shutdown.clone(), stop.clone(), Arc::clone(&state));
        async move {
            tokio::select! {
                () = shutdown.cancelled() => tracing::info!("shutting down: no new requests"),
                () = stop.cancelled() => {}
            }
            state.admission.close();
            stop.cancel();
        }
        .in_current_span()
    });

    let server = axum::serve(listener, app)
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result.context("server failed")?,
        () = stop.cancelled() => {
            if tokio::time::timeout(args.shutdown_grace, &mut server).await.is_err() {
                tracing::warn!(grace = ?args.shutdown_grace, "in-flight work did not finish in time; cancelling it");
                state.work.cancel();
                // Cancelled work stops at its next step; its handlers then answer and close.
                if tokio::time::timeout(args.shutdown_grace, &mut server).await.is_err() {
                    tracing::error!("connections still open after cancelling; exiting anyway");
                }
            }
        }
    }
    let failed = failure
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    match failed {
        Some(reason) => anyhow::bail!("model failed to load: {reason}"),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// Refuse settings that would make every request fail.
fn check_args(args: &ReplicaArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.max_concurrency >= 1, "--max-concurrency must be at least 1");
    anyhow::ensure!(
        !args.request_timeout.is_zero(),
        "--request-timeout must be above 0"
    );
    anyhow::ensure!(
        args.max_body_bytes >= 1024,
        "--max-body-bytes must be at least 1024"
    );
    Ok(())
}

/// On a failed load: keep answering `failed` for `grace` (so a supervisor can read why), then stop.
async fn watch_load(
    loaded: tokio::sync::oneshot::Receiver<Result<(), String>>,
    grace: Duration,
    shutdown: CancellationToken,
    stop: CancellationToken,
    failure: Arc<std::sync::Mutex<Option<String>>>,
) {
    let reason = tokio::select! {
        result = loaded => match result {
            Ok(Ok(())) => return,
            Ok(Err(reason)) => reason,
            Err(_) => "the loader thread panicked".to_string(),
        },
        () = shutdown.cancelled() => return,
    };
    tracing::error!(%reason, grace = ?grace, "model failed to load; exiting after the grace period");
    *failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
    tokio::select! {
        () = tokio::time::sleep(grace) => {}
        () = shutdown.cancelled() => {}
    }
    stop.cancel();
}
