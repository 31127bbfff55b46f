//! sdplane controller: app registry, autoscaler, backends and the admin API.

use tokio_util::sync::CancellationToken;

/// `sdplane controller` configuration.
#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    /// Folder of `.safetensors` model files.
    #[arg(long, env = "SDPLANE_MODELS", default_value = "models")]
    pub models: std::path::PathBuf,
    /// Admin + internal API address.
    #[arg(long, env = "SDPLANE_ADMIN_LISTEN", default_value = "127.0.0.1:8001")]
    pub admin_listen: std::net::SocketAddr,
}

/// Serve until `shutdown` is cancelled.
pub async fn run(args: ControllerArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _ = (args, shutdown);
    anyhow::bail!("`sdplane controller` is not built yet")
}
