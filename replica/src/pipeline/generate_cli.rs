//! `sdplane generate`: the pipeline in-process, no server.

/// `sdplane generate` configuration.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Model file.
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// Text prompt.
    #[arg(long)]
    pub prompt: String,
    /// Output PNG.
    #[arg(long)]
    pub out: std::path::PathBuf,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("`sdplane generate` is not built yet")
}
