//! `aigc-worker`: the data-plane binary run in worker pods.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "aigc-worker", version, about = "aigc data-plane worker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Move a dataset or model between storage tiers, verifying every object.
    Transfer(aigc_worker::transfer::TransferArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    match Cli::parse().command {
        Command::Transfer(args) => runtime.block_on(aigc_worker::transfer::run(args))?,
    }
    Ok(())
}
