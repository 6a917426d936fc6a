//! `aigc-operator`: the operator binary. `run` runs the controllers against a cluster,
//! `local up` runs the embedded cluster on this machine, `crds` and `rbac` print manifests.

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
    /// service account) until SIGTERM or Ctrl-C. Today: the StorageTier, InferenceService,
    /// Dataset and Model controllers and the tier policy.
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
    /// Run everything on this machine.
    Local {
        #[command(subcommand)]
        command: LocalCommand,
    },
}

#[derive(Subcommand)]
enum LocalCommand {
    /// Start the embedded cluster in the foreground (Ctrl-C or SIGTERM stops it), write
    /// DIR/kubeconfig once it answers, and install the CRDs.
    Up {
        /// Where the kubeconfig and the saved cluster state live.
        #[arg(long, value_name = "DIR", default_value = ".aigc")]
        data_dir: PathBuf,
        /// HTTPS port on 127.0.0.1 (0 picks a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Keep nothing between runs instead of saving objects to DIR/state.json.
        #[arg(long)]
        ephemeral: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // rustls is built with both ring (kube) and aws-lc-rs (the AWS SDK); the kube client needs
    // a process-wide choice. ring is deprecated only for lacking post-quantum key exchange.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
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
                ..ControllerConfig::default()
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
        Command::Local {
            command:
                LocalCommand::Up {
                    data_dir,
                    port,
                    ephemeral,
                },
        } => local_up(data_dir, port, !ephemeral).await?,
    }
    Ok(())
}

/// `local up`: serve until Ctrl-C or SIGTERM, then stop cleanly (saving state if asked).
async fn local_up(data_dir: PathBuf, port: u16, persist: bool) -> anyhow::Result<()> {
    {
        let mut config = aigc_local_cluster::Config::new(&data_dir);
        config.https_port = port;
        config.persist = persist;
        let cluster = aigc_local_cluster::LocalCluster::start(config)
            .await
            .with_context(|| format!("starting the local cluster in {}", data_dir.display()))?;
        let client = cluster.client();
        client
            .apiserver_version()
            .await
            .context("the local cluster does not answer")?;
        install_crds(client).await?;
        eprintln!(
            "local cluster ready at {} (plain HTTP: {}); kubeconfig: {}",
            cluster.https_url(),
            cluster.http_url(),
            cluster.kubeconfig_path().display()
        );
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("installing the SIGTERM handler")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
            _ = terminate.recv() => {}
        }
        eprintln!("stopping the local cluster");
        cluster
            .shutdown()
            .await
            .context("stopping the local cluster")
    }
}

/// Server-side apply the five CRDs, so a restart with saved state updates them in place.
async fn install_crds(client: kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, Patch, PatchParams};
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let params = PatchParams::apply("aigc-operator").force();
    for crd in aigc_crds::all_crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("installing CRD {name}"))?;
    }
    Ok(())
}
