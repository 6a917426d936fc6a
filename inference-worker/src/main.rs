//! `aigc-worker`: the data-plane binary run in worker pods. Each subcommand lives in the
//! `aigc_worker` library; this file only parses the command line.

use std::process::ExitCode;

use aigc_worker::{prepare, serve, train};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aigc-worker",
    version,
    about = "aigc-operator worker: serve models, prepare data, train models"
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
        Command::Serve(args) => match serve::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("aigc-worker serve: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Prepare(args) => prepare::run_command(args),
        Command::Train(args) => train::run_command(args),
    }
}
