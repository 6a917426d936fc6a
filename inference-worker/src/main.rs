//! `aigc-worker`: the data-plane binary run in worker pods. Each subcommand lives in the
//! `aigc_worker` library; this file only parses the command line.

use std::process::ExitCode;

use aigc_worker::{inspect, prepare, serve, train, transfer};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aigc-worker",
    version,
    about = "aigc-operator worker: serve models, prepare data, train models, move data between tiers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model behind an OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Validate, clean and publish a dataset with its manifest and statistics.
    Prepare(prepare::PrepareArgs),
    /// Train a model on a prepared dataset, with checkpoints and resume.
    Train(train::TrainArgs),
    /// Move a dataset or model between storage tiers, verifying every object.
    Transfer(transfer::TransferArgs),
    /// Verify a model against its manifest, parse its format and count its parameters.
    Inspect(inspect::InspectArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .json()
        .init();
    match Cli::parse().command {
        Command::Serve(args) => report("serve", serve::run(args)),
        Command::Prepare(args) => prepare::run_command(args),
        Command::Train(args) => train::run_command(args),
        Command::Transfer(args) => transfer::run_command(args),
        Command::Inspect(args) => inspect::run_command(args),
    }
}

/// Exit status of a subcommand: success, or its error on stderr and a failure status.
fn report(subcommand: &str, result: aigc_worker::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("aigc-worker {subcommand}: {error}");
            ExitCode::FAILURE
        }
    }
}
