//! `sdplane models`: the offline listing of a models folder (what `deploy_sd.sh --list` shows).

/// `sdplane models` configuration.
#[derive(Debug, clap::Args)]
pub struct ModelsArgs {
    /// Folder of `.safetensors` model files.
    #[arg(long, env = "SDPLANE_MODELS", default_value = "models")]
    pub models: std::path::PathBuf,
}

pub fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("`sdplane models` is not built yet")
}
