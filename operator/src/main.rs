//! `aigc-operator`: the operator binary. `run` runs the controllers against a cluster,
//! `local up` runs the embedded cluster on this machine, `crds` and `rbac` print manifests.

use std::path::PathBuf;

use aigc_operator::config::{LogFormat, OperatorConfig, RunArgs};
use aigc_operator::controllers::ControllerConfig;
use aigc_operator::{local, process, rbac};
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Kubernetes operator for AI workloads: Datasets, Models, TrainingJobs, InferenceServices
/// and StorageTiers (aigc.dev/v1alpha1).
#[derive(Parser)]
#[command(name = "aigc-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers against the cluster of the current kubeconfig (or the in-cluster
    /// service account) until SIGTERM or Ctrl-C, serving /metrics, /healthz and /readyz.
    Run(RunArgs),
    /// Print the five CustomResourceDefinitions as multi-document YAML, ready for `kubectl apply -f -`.
    Crds {
        /// Write one file per CRD into this directory (e.g. charts/aigc-operator/crds) instead
        /// of printing.
        #[arg(long, value_name = "DIR")]
        write_dir: Option<PathBuf>,
    },
    /// Print the ClusterRole rules the operator needs, as YAML, derived from the code.
    Rbac {
        /// Print the leader-election Role rules (the operator's namespace) instead.
        #[arg(long, conflicts_with = "write_dir")]
        leader_election: bool,
        /// Write every rules file the chart embeds (operator ClusterRole and Role, and the
        /// roles aggregated into `view` and `edit`) into this directory (e.g.
        /// charts/aigc-operator/files) instead of printing.
        #[arg(long, value_name = "DIR")]
        write_dir: Option<PathBuf>,
    },
    /// Run everything on this machine.
    Local {
        #[command(subcommand)]
        command: LocalCommand,
    },
}

#[derive(Subcommand)]
enum LocalCommand {
    /// Start the embedded cluster with its simulated nodes, install the CRDs, run the
    /// controllers, apply the manifests (the quickstart by default) and show their progress,
    /// in the foreground until Ctrl-C, SIGTERM or `local down`.
    Up {
        /// Where the kubeconfig, the saved cluster state, volumes and tiers live.
        #[arg(long, value_name = "DIR", default_value = ".aigc")]
        data_dir: PathBuf,
        /// HTTPS port on 127.0.0.1 (0 picks a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Keep nothing between runs instead of saving objects to DIR/state.json.
        #[arg(long)]
        ephemeral: bool,
        /// Manifest folder or file to apply after the CRDs; repeat for more.
        #[arg(long, value_name = "DIR", default_value = "examples/quickstart")]
        manifests: Vec<PathBuf>,
        /// Apply no manifests: just the cluster, the CRDs and the controllers.
        #[arg(long, conflicts_with = "manifests")]
        no_manifests: bool,
        /// Do not run the controllers in this process (run `aigc-operator run` against
        /// DIR/kubeconfig instead).
        #[arg(long)]
        no_operator: bool,
        /// S3 endpoint for an `archive` StorageTier (credentials from AWS_ACCESS_KEY_ID and
        /// AWS_SECRET_ACCESS_KEY); without it every tier is on local disk.
        #[arg(long, value_name = "URL")]
        s3_endpoint: Option<String>,
        /// Bucket of the `archive` tier; it must exist.
        #[arg(
            long,
            value_name = "BUCKET",
            default_value = "aigc-archive",
            requires = "s3_endpoint"
        )]
        s3_bucket: String,
    },
    /// Stop the `local up` running with this data directory and wait for it to exit.
    Down {
        /// The data directory of the running `local up`.
        #[arg(long, value_name = "DIR", default_value = ".aigc")]
        data_dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // rustls is built with both ring (kube) and aws-lc-rs (the AWS SDK); the kube client needs
    // a process-wide choice. ring is deprecated only for lacking post-quantum key exchange.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Command::Run(args) => run(args).await?,
        Command::Crds { write_dir: None } => print!("{}", aigc_crds::all_crds_yaml()?),
        Command::Crds {
            write_dir: Some(dir),
        } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for crd in aigc_crds::all_crds() {
                let path = dir.join(aigc_crds::crd_file_name(&crd));
                std::fs::write(&path, aigc_crds::crd_yaml(&crd)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Command::Rbac {
            leader_election,
            write_dir: None,
        } => {
            let rules = if leader_election {
                rbac::leader_election_rules()
            } else {
                rbac::cluster_rules()
            };
            print!("{}", rbac::rules_yaml(&rules)?);
        }
        Command::Rbac {
            write_dir: Some(dir),
            ..
        } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, rules) in rbac::chart_rule_files() {
                let path = dir.join(name);
                std::fs::write(&path, rbac::rules_yaml(&rules)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Command::Local {
            command:
                LocalCommand::Up {
                    data_dir,
                    port,
                    ephemeral,
                    manifests,
                    no_manifests,
                    no_operator,
                    s3_endpoint,
                    s3_bucket,
                },
        } => {
            let s3 = match s3_endpoint {
                Some(endpoint) => Some(local::ArchiveTier {
                    endpoint,
                    bucket: s3_bucket,
                    access_key_id: std::env::var("AWS_ACCESS_KEY_ID")
                        .context("--s3-endpoint needs AWS_ACCESS_KEY_ID in the environment")?,
                    secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY")
                        .context("--s3-endpoint needs AWS_SECRET_ACCESS_KEY in the environment")?,
                }),
                None => None,
            };
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_env_filter(
                    aigc_operator::process::log_filter(
                        &std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
                    )
                    .unwrap_or_else(|_| EnvFilter::new("warn")),
                )
                .init();
            let options = local::UpOptions {
                data_dir,
                port,
                persist: !ephemeral,
                manifests: if no_manifests { Vec::new() } else { manifests },
                run_operator: !no_operator,
                controllers: ControllerConfig::default(),
                s3,
            };
            local::up(options, shutdown_signal()).await?;
        }
        Command::Local {
            command: LocalCommand::Down { data_dir },
        } => match local::down(&data_dir, std::time::Duration::from_secs(60)).await? {
            local::DownOutcome::Stopped(pid) => eprintln!("stopped local up (pid {pid})"),
            local::DownOutcome::NotRunning => {
                eprintln!("no local up is running in {}", data_dir.display())
            }
        },
    }
    Ok(())
}

/// `run`: check the configuration, then run the operator process until SIGTERM or Ctrl-C.
async fn run(args: RunArgs) -> anyhow::Result<()> {
    let filter = aigc_operator::process::log_filter(&args.log_level)
        .with_context(|| format!("--log-level (RUST_LOG) {:?}", args.log_level))?;
    match args.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    let config = OperatorConfig::from_args(&args)?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster")?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM; shutting down"),
        }
    };
    process::run(client, &args, config, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes at Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
