//! sdplane router: the data plane in front of the replicas. It routes `/<app>/v1/*` to ready
//! replicas from a route table long-polled from the controller, answers 202 (or holds the
//! request) while an app starts, and reports per-app activity back for the autoscaler.

pub mod activity;
pub mod app_health;
pub mod balance;
pub mod cold_start;
pub mod config;
pub mod controller_client;
pub mod error;
pub mod metrics;
pub mod proxy;
pub mod request_id;
pub mod route_sync;
pub mod routes;
pub mod server;
pub mod tracker;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use balance::Balance;
pub use config::{ProxyArgs, RouterArgs, RouterConfig};
pub use error::{Error, Result};

/// First word of the stdout line that announces the bound address.
pub const LISTENING_PREFIX: &str = "SDPLANE_LISTENING";

/// `sdplane router`: bind `--listen`, print `SDPLANE_LISTENING <addr>` on stdout, and serve until
/// `shutdown` is cancelled.
pub async fn run(args: RouterArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = RouterConfig::from_args(&args)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: args.listen,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| Error::Bind {
        addr: args.listen,
        source,
    })?;
    // The one stdout line, as the replica and `sdplane up` print it: `--listen 127.0.0.1:0` works.
    println!("{LISTENING_PREFIX} {bound}");
    serve(config, listener, shutdown).await?;
    Ok(())
}

/// Serve the data plane on `listener` with a registry of its own.
pub async fn serve(config: RouterConfig, listener: TcpListener, shutdown: CancellationToken) -> Result<()> {
    serve_with_registry(config, listener, Registry::new(), shutdown).await
}

/// Serve the data plane on `listener`, registering metrics in the process's `registry` (what
/// `/metrics` shows), until `shutdown` is cancelled; held requests are answered and in-flight
/// ones finish first.
pub async fn serve_with_registry(
    config: RouterConfig,
    listener: TcpListener,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<()> {
    let metrics =
        metrics::Metrics::new(&registry).map_err(|e| Error::Internal(format!("metrics registry: {e}")))?;
    let controller = controller_client::ControllerClient::new(
        config.controller_url.clone(),
        config.admin_authorization.clone(),
    );
    // Background tasks stop after the server has drained.
    let tasks = CancellationToken::new();
    let (routes, sync_task) = route_sync::spawn(controller.clone(), metrics.clone(), tasks.clone());
    let wake_reporter = Arc::new(Notify::new());
    let reporter = tokio::spawn(activity::report_loop(
        routes.subscribe(),
        controller.clone(),
        config.activity_interval,
        Arc::clone(&wake_reporter),
        metrics.clone(),
        tasks.clone(),
    ));
    let ctx = Arc::new(server::Ctx {
        proxy: proxy::Proxy::new(config.upstream_timeout),
        activations: cold_start::Activations::new(controller.clone(), metrics.clone()),
        config,
        routes,
        controller,
        metrics,
        registry,
        wake_reporter,
        shutdown: shutdown.clone(),
    });
    let local = listener.local_addr().ok();
    tracing::info!(listen = ?local, controller = %ctx.config.controller_url, "router serving");
    // Answers are small and written whole: send them at once, as nginx's `tcp_nodelay on` does.
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a client connection");
        }
    });
    let served = axum::serve(
        listener,
        server::router(ctx).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await;
    tasks.cancel();
    // Both tasks only end on cancellation; a join error means one panicked, already logged.
    let _ = sync_task.await;
    let _ = reporter.await;
    tracing::info!("router stopped");
    served.map_err(Error::Serve)
}
