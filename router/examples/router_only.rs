//! The router alone, without the candle-heavy `sdplane` binary: for benchmarking the data plane
//! (`cargo run -p sdplane-router --example router_only -- --listen 127.0.0.1:8000 --controller-url ...`).

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    router: sdplane_router::RouterArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        // Ctrl-C ends the benchmark run; an error here only means no signal handler.
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    sdplane_router::run(cli.router, shutdown).await
}
