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
    /// Serve a model behind an OpenAI-compatible HTTP API.
    Serve(aigc_worker::serve::ServeArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .json()
        .init();
    match Cli::parse().command {
        Command::Serve(args) => aigc_worker::serve::run(args)?,
    }
    Ok(())
}
