//! `sdplane up`: router + controller in one process, replicas as local children.

use tokio_util::sync::CancellationToken;

/// `sdplane up` configuration.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Folder of `.safetensors` model files.
    #[arg(long, env = "SDPLANE_MODELS", default_value = "models")]
    pub models: std::path::PathBuf,
}

pub async fn run(args: UpArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _ = (args, shutdown);
    anyhow::bail!("`sdplane up` is not built yet")
}
