//! `aigc-operator`: the operator binary. `run` runs the controllers against the cluster of
//! the current kubeconfig; `crds` prints the CustomResourceDefinitions.

use std::path::PathBuf;

use aigc_operator::controllers::{self, Context, ControllerConfig};
use aigc_operator::rbac;
use aigc_operator::worker_pod::WorkerImages;
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
    /// service account) until SIGTERM or Ctrl-C. Today: the StorageTier and InferenceService
    /// controllers.
    Run {
        /// Image of CPU worker pods.
        #[arg(long, env = "AIGC_WORKER_IMAGE", default_value_t = WorkerImages::default().cpu)]
        worker_image: String,
        /// Image of GPU worker pods.
        #[arg(long, env = "AIGC_WORKER_GPU_IMAGE", default_value_t = WorkerImages::default().gpu)]
        worker_gpu_image: String,
    },
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run {
            worker_image,
            worker_gpu_image,
        } => {
            tracing_subscriber::fmt()
                .json()
                .with_env_filter(
                    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
                )
                .init();
            let client = kube::Client::try_default()
                .await
                .context("connecting to the cluster")?;
            let config = ControllerConfig {
                worker_images: WorkerImages {
                    cpu: worker_image,
                    gpu: worker_gpu_image,
                },
            };
            tracing::info!("starting controllers");
            controllers::run_all(Context::new(client, config)).await;
        }
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
    }
    Ok(())
}
