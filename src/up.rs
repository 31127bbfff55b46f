//! `sdplane up`: router + controller in one process, replicas as local child processes.
//!
//! Prints `SDPLANE_LISTENING <addr>` (data plane) and `SDPLANE_ADMIN_LISTENING <addr>` (admin
//! API) on stdout once both sockets are bound, so scripts and tests can use port 0.
//!
//! Shutdown: on SIGINT/SIGTERM the router stops taking requests and finishes those in flight,
//! then the controller stops every replica (SIGTERM, grace, SIGKILL) and exits; the next start
//! finds no replica and starts them on demand. A crash or `kill -9` of this process instead
//! leaves the replicas running (each has its own process group); the next `sdplane up` with the
//! same state directory adopts them (pid and port are persisted) rather than starting twice.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// `sdplane up` configuration.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Address the data plane (router) listens on.
    #[arg(long, env = "SDPLANE_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub controller: sdplane_controller::ControllerArgs,
    #[command(flatten)]
    pub proxy: sdplane_router::ProxyArgs,
}

pub async fn run(mut args: UpArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    if !cfg!(feature = "cuda") && args.controller.replica_device == sdplane_controller::ReplicaDevice::Auto {
        // This build's replicas cannot use a GPU: placing them on one would only fail their loads.
        tracing::info!("built without the `cuda` feature: replicas run on CPU");
        args.controller.replica_device = sdplane_controller::ReplicaDevice::Cpu;
    }
    let controller_config = sdplane_controller::ControllerConfig::from_args(&args.controller)?;
    let admin = TcpListener::bind(args.controller.admin_listen)
        .await
        .with_context(|| format!("cannot bind the admin API to {}", args.controller.admin_listen))?;
    let data = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot bind the router to {}", args.listen))?;
    let admin_addr = admin.local_addr()?;
    let data_addr = data.local_addr()?;
    // The router reaches its controller in-process over loopback, whatever the bind address.
    let controller_url = format!("http://{}", reachable(admin_addr));
    let router_config = sdplane_router::RouterConfig::new(
        &controller_url,
        controller_config.admin_token.as_deref(),
        &args.proxy,
    )?;
    println!("SDPLANE_LISTENING {data_addr}");
    println!("SDPLANE_ADMIN_LISTENING {admin_addr}");
    tracing::info!(router = %data_addr, admin = %admin_addr, "sdplane up");

    // One metrics registry for the process: both endpoints' `/metrics` show all of it.
    let metrics = prometheus::Registry::new();
    // The controller outlives the router: replicas stop only after in-flight requests finish.
    let controller_stop = CancellationToken::new();
    let mut controller = tokio::spawn(sdplane_controller::serve(
        controller_config,
        admin,
        metrics.clone(),
        controller_stop.clone(),
    ));
    let mut router = tokio::spawn(sdplane_router::serve_with_registry(
        router_config,
        data,
        metrics,
        shutdown.clone(),
    ));
    tokio::select! {
        routed = &mut router => {
            controller_stop.cancel();
            let controlled = controller.await.context("controller task")?;
            routed.context("router task")??;
            controlled?;
        }
        controlled = &mut controller => {
            // The controller ended first (an error): take the router down too.
            shutdown.cancel();
            let routed = router.await.context("router task")?;
            controlled.context("controller task")??;
            routed?;
        }
    }
    Ok(())
}

/// An address this process can connect to for a socket bound to `addr`.
fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}
