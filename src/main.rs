//! `sdplane`: one binary, one subcommand per role. Each subcommand parses its config and calls
//! its crate's library `run()`; nothing else lives here.

mod logging;
mod models_cmd;
mod shutdown;
mod up;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sdplane",
    version,
    about = "Serve Stable Diffusion checkpoints: one app per model file, scaled to zero when idle."
)]
struct Cli {
    #[command(flatten)]
    log: logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Router + controller in one process, replicas as local child processes (the embedded default).
    Up(up::UpArgs),
    /// The data plane alone (as Kubernetes runs it).
    Router(sdplane_router::RouterArgs),
    /// The control plane alone (as Kubernetes runs it).
    Controller(sdplane_controller::ControllerArgs),
    /// Serve one model file over HTTP.
    Replica(sdplane_replica::server::ReplicaArgs),
    /// List model files with their detected architecture (what `deploy_sd.sh --list` shows), offline.
    Models(models_cmd::ModelsArgs),
    /// Run the pipeline in-process with no server and write a PNG.
    Generate(sdplane_replica::pipeline::generate_cli::GenerateArgs),
    /// Write a random-weight checkpoint in the real single-file layout of a family.
    MakeTestModel(sdplane_replica::test_model::MakeTestModelArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Replica(_) | Command::Generate(_)) {
        // Before any thread exists (see the function's docs).
        sdplane_replica::allocator::keep_freed_memory();
    }
    if let Err(e) = logging::init(&cli.log).and_then(|()| dispatch(cli.command)) {
        // One line for people and supervisors; details are already in the logs.
        eprintln!("sdplane: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Models(args) => models_cmd::run(args),
        Command::Generate(args) => sdplane_replica::pipeline::generate_cli::run(args),
        Command::MakeTestModel(args) => sdplane_replica::test_model::run(args),
        Command::Up(args) => serve(|t| up::run(args, t)),
        Command::Router(args) => {
            let runtime = args.runtime()?;
            runtime.block_on(async move { sdplane_router::run(args, shutdown::token()).await })
        }
        Command::Controller(args) => serve(|t| sdplane_controller::run(args, t)),
        Command::Replica(args) => serve(|t| sdplane_replica::server::run(args, t)),
    }
}

/// Run a long-lived role on a multi-threaded runtime until SIGINT/SIGTERM.
fn serve<F, Fut>(role: F) -> anyhow::Result<()>
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move { role(shutdown::token()).await })
}
