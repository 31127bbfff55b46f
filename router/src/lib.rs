//! sdplane router: the data plane in front of the replicas.

use tokio_util::sync::CancellationToken;

/// `sdplane router` configuration.
#[derive(Debug, clap::Args)]
pub struct RouterArgs {
    /// Address the data plane listens on.
    #[arg(long, env = "SDPLANE_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: std::net::SocketAddr,
    /// Controller's internal API.
    #[arg(long, env = "SDPLANE_CONTROLLER_URL", default_value = "http://127.0.0.1:8001")]
    pub controller_url: String,
}

/// Serve until `shutdown` is cancelled.
pub async fn run(args: RouterArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _ = (args, shutdown);
    anyhow::bail!("`sdplane router` is not built yet")
}
