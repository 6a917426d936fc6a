//! `aigc-operator local up` and `local down`: the embedded cluster, the CRDs, the controllers
//! in-process and a folder of manifests, on this machine, with progress a person can follow.

pub mod manifests;
pub mod progress;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aigc_crds::dataset::Dataset;
use aigc_crds::inference_service::InferenceService;
use aigc_crds::model::Model;
use aigc_crds::storage_tier::StorageTier;
use aigc_crds::training_job::TrainingJob;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use crate::Error;
use crate::controllers::{self, Context, ControllerConfig, FIELD_MANAGER};

/// File in the data directory holding the pid of the running `local up`.
pub const PID_FILE: &str = "local.pid";
/// Name of the worker binary `local up` expects next to its own.
pub const WORKER_BINARY: &str = "aigc-worker";

/// What `local up` runs.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// Kubeconfig, saved state, volumes and tier directories live here.
    pub data_dir: PathBuf,
    /// HTTPS port on 127.0.0.1 (0 picks a free one).
    pub port: u16,
    /// Save the cluster's objects between runs.
    pub persist: bool,
    /// Manifest folders or files applied in order after the CRDs.
    pub manifests: Vec<PathBuf>,
    /// Run the controllers in this process (off when a separate `aigc-operator run` manages
    /// the cluster).
    pub run_operator: bool,
    /// Settings of the in-process controllers.
    pub controllers: ControllerConfig,
    /// An S3 endpoint for the `archive` tier; none leaves the quickstart on local disk.
    pub s3: Option<ArchiveTier>,
}

/// The S3 `archive` StorageTier `local up` adds when given an endpoint. Its `Debug` output
/// leaves the secret key out.
#[derive(Clone, PartialEq, Eq)]
pub struct ArchiveTier {
    /// Endpoint URL, e.g. `http://127.0.0.1:9000`.
    pub endpoint: String,
    /// Bucket that holds the tier (it must exist).
    pub bucket: String,
    /// Access key id (from `AWS_ACCESS_KEY_ID`).
    pub access_key_id: String,
    /// Secret access key (from `AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key: String,
}

impl std::fmt::Debug for ArchiveTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveTier")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Name of the Secret holding the archive tier's credentials (namespace `default`).
pub const ARCHIVE_SECRET: &str = "aigc-archive-credentials";

impl ArchiveTier {
    /// The Secret with the credentials and the StorageTier `archive` (class `archive`, objects
    /// stored as GLACIER, restored on read), as documents to apply.
    pub fn documents(&self) -> Vec<manifests::Document> {
        let file = PathBuf::from("--s3-endpoint");
        let secret = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": ARCHIVE_SECRET, "namespace": "default"},
            "type": "Opaque",
            "stringData": {
                "AWS_ACCESS_KEY_ID": self.access_key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            },
        });
        let tier = serde_json::json!({
            "apiVersion": "aigc.dev/v1alpha1",
            "kind": "StorageTier",
            "metadata": {"name": "archive"},
            "spec": {
                "class": "archive",
                "backend": {"s3": {
                    "endpoint": self.endpoint,
                    "region": "us-east-1",
                    "bucket": self.bucket,
                    "forcePathStyle": true,
                    "storageClass": "GLACIER",
                    "credentialsSecretRef": {"name": ARCHIVE_SECRET, "namespace": "default"},
                }},
                "costPerGiBMonth": 0.004,
            },
        });
        [secret, tier]
            .into_iter()
            .map(|object| manifests::Document {
                file: file.clone(),
                object,
            })
            .collect()
    }
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the kubelet looks for `aigc-worker`: beside the running binary.
pub fn binary_dir() -> PathBuf {
    aigc_local_cluster::kubelet::images::default_binary_dir()
}

/// Check what `local up` needs before starting anything: the worker binary beside this one and
/// the Python packages the manifests seed from. Each missing piece names the command that
/// provides it.
pub fn check_prerequisites(documents: &[manifests::Document]) -> Result<(), Error> {
    let worker = binary_dir().join(WORKER_BINARY);
    if !worker.is_file() && documents.is_empty() {
        // Nothing to run yet; pods applied later wait with ErrImagePull until it exists.
        eprintln!(
            "warning: {} is missing, so worker pods cannot start; build it with \
             `cargo build --release -p aigc-worker`",
            worker.display()
        );
    } else if !worker.is_file() {
        return Err(Error::Prerequisite {
            what: format!("the worker binary {}", worker.display()),
            fix: "cargo build --release -p aigc-worker (scripts/local-up.sh builds both binaries)"
                .into(),
        });
    }
    for seed in manifests::seeds(documents)? {
        for source in &seed.sources {
            match source {
                manifests::SeedSource::Python(module) => {
                    manifests::python_package_dir(module)?;
                }
                manifests::SeedSource::Dir(dir) if !dir.is_dir() => {
                    return Err(Error::Prerequisite {
                        what: format!("the folder {} seeding claim {}", dir.display(), seed.claim),
                        fix: "run local up from the repository root, or pass --manifests".into(),
                    });
                }
                manifests::SeedSource::Dir(_) => {}
            }
        }
    }
    Ok(())
}

fn process_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

fn read_pid(data_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(data_dir.join(PID_FILE))
        .ok()
        .and_then(|text| text.trim().parse().ok())
}

/// Marks the data directory as in use by this process until dropped.
struct PidFile(PathBuf);

impl PidFile {
    fn claim(data_dir: &Path) -> Result<PidFile, Error> {
        if let Some(pid) = read_pid(data_dir).filter(|pid| process_alive(*pid)) {
            return Err(Error::Prerequisite {
                what: format!(
                    "{} for this run (local up pid {pid} is using it)",
                    data_dir.display()
                ),
                fix: format!(
                    "aigc-operator local down --data-dir {}, or pick another --data-dir",
                    data_dir.display()
                ),
            });
        }
        let path = data_dir.join(PID_FILE);
        std::fs::write(&path, std::process::id().to_string()).map_err(|e| io(&path, e))?;
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Server-side apply the five CRDs, so a restart with saved state updates them in place.
pub async fn install_crds(client: &Client) -> Result<(), Error> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in aigc_crds::all_crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .map_err(|source| Error::Kube {
                action: format!("installing CRD {name}"),
                source,
            })?;
    }
    Ok(())
}

async fn list_all<K>(client: &Client) -> Result<Vec<K>, Error>
where
    K: Resource + Clone + std::fmt::Debug + DeserializeOwned,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    api.list(&ListParams::default())
        .await
        .map(|list| list.items)
        .map_err(|source| Error::Kube {
            action: format!("listing {}", K::plural(&K::DynamicType::default())),
            source,
        })
}

/// The aigc resources of the cluster now.
pub async fn snapshot(client: &Client) -> Result<progress::Snapshot, Error> {
    Ok(progress::Snapshot {
        tiers: list_all::<StorageTier>(client).await?,
        datasets: list_all::<Dataset>(client).await?,
        training_jobs: list_all::<TrainingJob>(client).await?,
        models: list_all::<Model>(client).await?,
        services: list_all::<InferenceService>(client).await?,
    })
}

/// Run the local cluster until `stop` completes: start it, install the CRDs, start the
/// controllers, apply the manifests (filling seeded claims), and show progress; then stop
/// everything and save state.
pub async fn up(options: UpOptions, stop: impl Future<Output = ()>) -> Result<(), Error> {
    let mut documents = Vec::new();
    if let Some(archive) = &options.s3 {
        documents.extend(archive.documents());
    }
    for path in &options.manifests {
        documents.extend(manifests::load(path)?);
    }
    check_prerequisites(&documents)?;
    std::fs::create_dir_all(&options.data_dir).map_err(|e| io(&options.data_dir, e))?;
    let _pid = PidFile::claim(&options.data_dir)?;

    let mut config = aigc_local_cluster::Config::new(&options.data_dir);
    config.https_port = options.port;
    config.persist = options.persist;
    // hostPath volumes (the quickstart's tiers) live under the data directory, not in /.
    config.host_path_root = Some(host_root(&options.data_dir));
    let cluster = aigc_local_cluster::LocalCluster::start(config)
        .await
        .map_err(Error::LocalCluster)?;
    let client = cluster.client();
    let outcome = run(&options, &cluster, &client, &documents, stop).await;
    let stopped = cluster.shutdown().await.map_err(Error::LocalCluster);
    outcome.and(stopped)
}

async fn run(
    options: &UpOptions,
    cluster: &aigc_local_cluster::LocalCluster,
    client: &Client,
    documents: &[manifests::Document],
    stop: impl Future<Output = ()>,
) -> Result<(), Error> {
    install_crds(client).await?;
    let mut display = progress::Display::new();
    display.println(&format!(
        "local cluster ready at {}; kubeconfig: {}",
        cluster.https_url(),
        cluster.kubeconfig_path().display()
    ));
    let operator = options.run_operator.then(|| {
        let mut config = options.controllers.clone();
        config.local_root = Some(host_root(&options.data_dir));
        let context = Context::new(client.clone(), config);
        tokio::spawn(controllers::run_all(context))
    });
    let seeds = manifests::seeds(documents)?;
    for document in documents {
        manifests::apply(client, std::slice::from_ref(document), FIELD_MANAGER).await?;
        let claim = document.object["metadata"]["name"].as_str().unwrap_or("");
        for seed in seeds
            .iter()
            .filter(|s| document.object["kind"] == "PersistentVolumeClaim" && s.claim == claim)
        {
            let dir = cluster.claim_dir(&seed.namespace, &seed.claim);
            let copied = manifests::fill(seed, &dir)?;
            if copied > 0 {
                display.println(&format!(
                    "filled claim {}/{} with {copied} bytes",
                    seed.namespace, seed.claim
                ));
            }
        }
    }
    if !documents.is_empty() {
        display.println(&format!("applied {} manifests", documents.len()));
    }

    tokio::pin!(stop);
    let mut announced = false;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = ticker.tick() => {}
        }
        let snapshot = match snapshot(client).await {
            Ok(snapshot) => snapshot,
            Err(error) => {
                display.println(&format!("reading status: {error}"));
                continue;
            }
        };
        let lines = progress::lines(&snapshot);
        display.update(&lines);
        if !announced && (documents.is_empty() || progress::all_done(&lines)) {
            announced = true;
            display.println(&summary(cluster, &snapshot));
        }
    }
    if let Some(operator) = operator {
        operator.abort();
    }
    display.println("stopping the local cluster");
    Ok(())
}

fn summary(cluster: &aigc_local_cluster::LocalCluster, snapshot: &progress::Snapshot) -> String {
    let kubeconfig = cluster.kubeconfig_path().display().to_string();
    let mut text =
        format!("\nEverything is up. Try:\n  export KUBECONFIG={kubeconfig}\n  kubectl get aigc\n");
    for example in progress::curl_examples(snapshot) {
        text.push_str(&format!("  {example}\n"));
    }
    text.push_str(
        "Stop with Ctrl-C or `aigc-operator local down`; state stays for the next `local up`.",
    );
    text
}

/// Where hostPath volumes of the local cluster live: `/x/y` is `<this>/x/y`. The in-process
/// controllers see filesystem tiers under the same root.
pub fn host_root(data_dir: &Path) -> PathBuf {
    data_dir.join("host")
}

/// What `local down` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownOutcome {
    /// The running `local up` (this pid) stopped.
    Stopped(i32),
    /// Nothing was running in the data directory.
    NotRunning,
}

/// Stop the `local up` using `data_dir`: SIGTERM, then wait up to `timeout` for it to exit.
pub async fn down(data_dir: &Path, timeout: Duration) -> Result<DownOutcome, Error> {
    let Some(pid) = read_pid(data_dir).filter(|pid| process_alive(*pid)) else {
        return Ok(DownOutcome::NotRunning);
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .map_err(|e| io(&data_dir.join(PID_FILE), std::io::Error::from(e)))?;
    let deadline = tokio::time::Instant::now() + timeout;
    while process_alive(pid) {
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Prerequisite {
                what: format!("local up (pid {pid}) to stop within {}s", timeout.as_secs()),
                fix: format!("kill {pid}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(DownOutcome::Stopped(pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_tier_passes_the_storage_tier_schema() {
        let archive = ArchiveTier {
            endpoint: "http://127.0.0.1:9000".into(),
            bucket: "aigc-archive".into(),
            access_key_id: "id".into(),
            secret_access_key: "key".into(),
        };
        let documents = archive.documents();
        assert_eq!(documents[0].describe(), "Secret/aigc-archive-credentials");
        let tier: StorageTier = serde_json::from_value(documents[1].object.clone()).unwrap();
        assert_eq!(tier.spec.class, aigc_crds::storage_tier::TierClass::Archive);
    }
}
