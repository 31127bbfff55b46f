//! The router alone, without the candle-heavy `sdplane` binary: for benchmarking the data plane
//! (`cargo build --release -p sdplane-router --example router_only`, then
//! `ROUTER_BIN=target/release/examples/router_only bash bench/router_overhead.sh`). By default it
//! logs and runs as `sdplane router` does (text logs on stderr, `RUST_LOG` or `info`, the
//! runtime `--threads` picks), so what it measures is what the binary ships.

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    router: sdplane_router::RouterArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The same subscriber as the `sdplane` binary's default (`src/logging.rs`).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))?;
    let runtime = cli.router.runtime()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            // Ctrl-C or SIGTERM ends the benchmark run; an error only means no signal handler.
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => None } } => {}
            }
            stop.cancel();
        });
        sdplane_router::run(cli.router, shutdown).await
    })
}
