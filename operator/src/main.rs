//! `aigc-operator`: the operator binary. Subcommands print the CRDs and run the embedded local
//! cluster; the controllers and the scheduler join here as they land.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

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
    /// Print the five CustomResourceDefinitions as multi-document YAML, ready for `kubectl apply -f -`.
    Crds {
        /// Write one file per CRD into this directory (e.g. charts/aigc-operator/crds) instead
        /// of printing.
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

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
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
        Command::Local {
            command:
                LocalCommand::Up {
                    data_dir,
                    port,
                    ephemeral,
                },
        } => local_up(data_dir, port, !ephemeral)?,
    }
    Ok(())
}

/// `local up`: serve until Ctrl-C or SIGTERM, then stop cleanly (saving state if asked).
fn local_up(data_dir: PathBuf, port: u16, persist: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
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
    })
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
