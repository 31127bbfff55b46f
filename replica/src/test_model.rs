//! `sdplane make-test-model`: random weights in the real single-file layout of a family.

/// `sdplane make-test-model` configuration.
#[derive(Debug, clap::Args)]
pub struct MakeTestModelArgs {
    /// Family: sd15, sd21 or sdxl.
    #[arg(long)]
    pub family: String,
    /// Output `.safetensors` file.
    #[arg(long)]
    pub out: std::path::PathBuf,
}

pub fn run(args: MakeTestModelArgs) -> anyhow::Result<()> {
    let _ = args;
    anyhow::bail!("`sdplane make-test-model` is not built yet")
}
