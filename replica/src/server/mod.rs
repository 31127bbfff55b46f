//! The replica's HTTP server: `/v1/generate`, `/v1/health`, `/v1/models`, `/metrics`.

use tokio_util::sync::CancellationToken;

/// `sdplane replica` configuration.
#[derive(Debug, clap::Args)]
pub struct ReplicaArgs {
    /// Model file to serve.
    #[arg(long, env = "SDPLANE_MODEL")]
    pub model: std::path::PathBuf,
    /// Address to listen on.
    #[arg(long, env = "SDPLANE_LISTEN", default_value = "127.0.0.1:9000")]
    pub listen: std::net::SocketAddr,
}

/// Serve until `shutdown` is cancelled.
pub async fn run(args: ReplicaArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _ = (args, shutdown);
    anyhow::bail!("`sdplane replica` is not built yet")
}
