//! An embedded Kubernetes API server for local use and end-to-end tests.
//!
//! It is held to the behaviour of the real API server as seen by real clients (kubectl,
//! kube-rs, Helm): [`LocalCluster::start`] serves the REST API over HTTPS (a fresh self-signed
//! CA, written into a kubeconfig) and plain HTTP on loopback, with discovery, OpenAPI for
//! custom resources, watches, patches, server-side apply, finalizers and garbage collection,
//! and CRD schema enforcement ([`schema`]). It depends on no other crate of this workspace.
//!
//! With [`Config::workloads`] (the default) it also runs what makes pods run: simulated
//! [`nodes`] with capacity, labels, taints and heartbeats; the default scheduler, the
//! Deployment, ReplicaSet, Job and endpoints controllers and a TCP proxy per Service
//! ([`workloads`]); and the process [`kubelet`], which runs every pod bound to a simulated node
//! as local processes and serves their logs through `pods/log` (its module docs list what it
//! does and how it differs from a real kubelet).
//! Pods on a simulated node are deleted gracefully: they keep their `deletionTimestamp` until
//! the kubelet has stopped their processes.

pub mod api;
pub mod binding;
pub mod crd;
pub mod defaults;
pub mod discovery;
pub mod gc;
pub mod kubelet;
pub mod managed;
pub mod nodes;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod request;
pub mod resources;
pub mod schema;
pub mod selector;
pub mod server;
pub mod status;
pub mod store;
pub mod table;
pub mod tls;
pub mod watch;
pub mod workloads;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::{Cluster, FieldValidation, WriteOptions};
pub use crate::kubelet::images::ImageMapping;
use crate::kubelet::process::ProcessTable;
pub use crate::nodes::{NodeConfig, NodeTaint};
use crate::server::{Settings, Shared};

/// Errors starting or stopping the cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("binding {address}: {source}")]
    Bind {
        /// The address tried.
        address: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Certificates could not be generated or loaded.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// A file in the data directory could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The saved state in the data directory is not readable.
    #[error("{path}: saved cluster state is not valid: {message}")]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The kube client could not be built from the written kubeconfig.
    #[error("building a client for the local cluster: {0}")]
    Client(String),
}

/// How to start a [`LocalCluster`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Directory for the kubeconfig (and the saved state when `persist` is set).
    pub data_dir: PathBuf,
    /// HTTPS port on 127.0.0.1; 0 picks a free one.
    pub https_port: u16,
    /// Plain HTTP port on 127.0.0.1; 0 picks a free one.
    pub http_port: u16,
    /// Save all objects to `data_dir/state.json` on shutdown and load them on start.
    pub persist: bool,
    /// How many changes watches can resume from before they get `410 Gone`.
    pub watch_history: usize,
    /// How often bookmarks are sent on watches that allow them.
    pub bookmark_interval: Duration,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Simulated nodes (default: `local-cpu` and `local-gpu`, see [`NodeConfig::defaults`]).
    pub nodes: Vec<NodeConfig>,
    /// Image -> executable mappings tried before the default `aigc-worker`/`aigc-operator` ones.
    pub images: Vec<ImageMapping>,
    /// Where the `aigc-worker` and `aigc-operator` binaries are (default: next to the running
    /// executable; from a test binary in `target/<profile>/deps`, its parent).
    pub binary_dir: Option<PathBuf>,
    /// Root of hostPath volumes: `/x/y` is `<root>/x/y` (created on demand); unset, hostPath
    /// volumes are the host's own paths.
    pub host_path_root: Option<PathBuf>,
    /// Run the nodes, the kubelet and the workload controllers inside the cluster.
    pub workloads: bool,
    /// The kubelet's first non-zero restart back-off (doubling up to 5 minutes).
    pub restart_backoff: Duration,
}

impl Config {
    /// In-memory defaults with ephemeral ports, the kubeconfig in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            https_port: 0,
            http_port: 0,
            persist: false,
            watch_history: 100_000,
            bookmark_interval: Duration::from_secs(15),
            max_body_bytes: 3 * 1024 * 1024,
            nodes: NodeConfig::defaults(),
            images: Vec::new(),
            binary_dir: None,
            host_path_root: None,
            workloads: true,
            restart_backoff: Duration::from_secs(10),
        }
    }
}

/// A running embedded API server (and, with [`Config::workloads`], its nodes and kubelet).
/// Dropping it without [`LocalCluster::shutdown`] stops the listeners and background tasks
/// and kills every container process, without saving state.
pub struct LocalCluster {
    processes: Arc<ProcessTable>,
    claims_dir: PathBuf,
    shared: Arc<Shared>,
    https_addr: SocketAddr,
    http_addr: SocketAddr,
    kubeconfig_path: PathBuf,
    client: kube::Client,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    state_path: Option<PathBuf>,
}

const STATE_FILE: &str = "state.json";
const KUBELET_DIR: &str = "kubelet";
const DEFAULT_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

async fn bind(port: u16) -> Result<TcpListener, Error> {
    let address = format!("127.0.0.1:{port}");
    TcpListener::bind(&address)
        .await
        .map_err(|source| Error::Bind { address, source })
}

fn write_file(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|source| Error::File {
        path: path.to_owned(),
        source,
    })
}

/// The kubeconfig for a server at `https_addr` trusting `ca_pem`.
fn kubeconfig(https_addr: SocketAddr, ca_pem: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "aigc-local", "cluster": {
            "server": format!("https://{https_addr}"),
            "certificate-authority-data": ca,
        }}],
        "users": [{"name": "aigc-local-admin", "user": {"token": "aigc-local-admin"}}],
        "contexts": [{"name": "aigc-local", "context": {
            "cluster": "aigc-local", "user": "aigc-local-admin", "namespace": "default"}}],
        "current-context": "aigc-local",
        "preferences": {},
    });
    serde_yaml::to_string(&doc).unwrap_or_default()
}

fn restore(cluster: &mut Cluster, path: &Path) -> Result<(), Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::File {
                path: path.to_owned(),
                source,
            });
        }
    };
    let invalid = |message: String| Error::State {
        path: path.to_owned(),
        message,
    };
    let saved: Vec<serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let mut objects = Vec::new();
    for entry in saved {
        let key = resources::ResourceKey {
            group: entry["group"].as_str().unwrap_or("").to_owned(),
            plural: entry["resource"].as_str().unwrap_or("").to_owned(),
        };
        let object = entry["object"].clone();
        if key.plural == "customresourcedefinitions" {
            cluster
                .registry
                .register_crd(&object)
                .map_err(|e| invalid(e.message))?;
        }
        objects.push((key, object));
    }
    cluster.store.restore(objects);
    Ok(())
}

/// The client the cluster's own controllers use: plain HTTP on loopback, no TLS to pay for.
fn internal_client(http_addr: SocketAddr) -> Result<kube::Client, Error> {
    let url = format!("http://{http_addr}")
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| Error::Client(e.to_string()))?;
    kube::Client::try_from(kube::Config::new(url)).map_err(|e| Error::Client(e.to_string()))
}

/// Where the kubelet keeps the persistent directories of claims: `<this>/<namespace>/<claim>`.
fn claims_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(KUBELET_DIR).join("claims")
}

/// Resolves once `stop` turns true or its sender is gone.
pub(crate) async fn until_stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The background tasks behind [`Config::workloads`]: node heartbeats and the kubelet.
fn workload_tasks(
    config: &Config,
    client: &kube::Client,
    processes: &Arc<ProcessTable>,
    stopped: &tokio::sync::watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let kubelet_dir = config.data_dir.join(KUBELET_DIR);
    let kubelet = Arc::new(kubelet::Context {
        client: client.clone(),
        nodes: config.nodes.clone(),
        images: kubelet::images::Images::new(
            config.images.clone(),
            config
                .binary_dir
                .clone()
                .unwrap_or_else(kubelet::images::default_binary_dir),
        ),
        dirs: kubelet::prepare::Dirs {
            pods: kubelet_dir.join("pods"),
            claims: claims_dir(&config.data_dir),
            host_path_root: config.host_path_root.clone(),
        },
        logs: kubelet::logs::LogDir::new(kubelet_dir.join("logs")),
        ips: kubelet::IpPool::default(),
        processes: processes.clone(),
        backoff_base: config.restart_backoff,
    });
    vec![
        tokio::spawn(nodes::run_heartbeats(
            client.clone(),
            config.nodes.clone(),
            stopped.clone(),
        )),
        tokio::spawn(kubelet::run(kubelet, stopped.clone())),
    ]
}

impl LocalCluster {
    /// Start serving: generate certificates, bind both listeners, write the kubeconfig and
    /// build a client.
    pub async fn start(config: Config) -> Result<Self, Error> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::File {
            path: config.data_dir.clone(),
            source,
        })?;
        // Before any TLS use: clients built below (the internal one included) need it.
        tls::install_default_crypto_provider();
        let certs = tls::ServingCerts::generate()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config()?);
        let https = bind(config.https_port).await?;
        let http = bind(config.http_port).await?;
        let https_addr = https.local_addr().map_err(|source| Error::Bind {
            address: "https listener".into(),
            source,
        })?;
        let http_addr = http.local_addr().map_err(|source| Error::Bind {
            address: "http listener".into(),
            source,
        })?;

        let mut cluster = Cluster::new(config.watch_history);
        let state_path = config.persist.then(|| config.data_dir.join(STATE_FILE));
        if let Some(path) = &state_path {
            restore(&mut cluster, path)?;
        }
        let system = WriteOptions {
            dry_run: false,
            field_manager: "aigc-local-cluster".into(),
            validation: FieldValidation::Strict,
            apply: false,
        };
        if let Some(namespaces) = cluster.registry.get("", "v1", "namespaces") {
            for name in DEFAULT_NAMESPACES {
                if cluster.get(&namespaces, "", name).is_err() {
                    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
                    cluster
                        .create(&namespaces, "", body, &system)
                        .map_err(|e| Error::Client(e.message))?;
                }
            }
        }
        let shared = Shared::new(
            cluster,
            Settings {
                max_body_bytes: config.max_body_bytes,
                bookmark_interval: config.bookmark_interval,
                advertised_address: https_addr.to_string(),
                pod_logs: kubelet::logs::LogDir::new(
                    config.data_dir.join(KUBELET_DIR).join("logs"),
                ),
            },
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut tasks = vec![
            tokio::spawn(server::serve(
                https,
                Some(acceptor),
                shared.clone(),
                stopped.clone(),
            )),
            tokio::spawn(server::serve(http, None, shared.clone(), stopped.clone())),
        ];
        if config.workloads {
            tasks.extend(workloads::spawn(internal_client(http_addr)?, &stopped));
        }

        let kubeconfig_path = config.data_dir.join("kubeconfig");
        write_file(&kubeconfig_path, &kubeconfig(https_addr, &certs.ca_pem))?;
        let kubeconfig = kube::config::Kubeconfig::read_from(&kubeconfig_path)
            .map_err(|e| Error::Client(e.to_string()))?;
        let client_config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|e| Error::Client(e.to_string()))?;
        let client =
            kube::Client::try_from(client_config).map_err(|e| Error::Client(e.to_string()))?;
        let processes = Arc::new(ProcessTable::default());
        if config.workloads {
            nodes::register(&client, &config.nodes).await?;
            tasks.extend(workload_tasks(&config, &client, &processes, &stopped));
        }
        Ok(Self {
            claims_dir: claims_dir(&config.data_dir),
            processes,
            shared,
            https_addr,
            http_addr,
            kubeconfig_path,
            client,
            stop,
            tasks,
            state_path,
        })
    }

    /// The host directory holding claim `namespace/claim` for the pods that mount it (it may not
    /// exist until a pod does, or until someone fills it).
    pub fn claim_dir(&self, namespace: &str, claim: &str) -> PathBuf {
        self.claims_dir.join(namespace).join(claim)
    }

    /// The kubeconfig file clients can use (HTTPS, trusting the cluster's CA).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// A kube client for the HTTPS endpoint.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// `https://127.0.0.1:PORT`.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.https_addr)
    }

    /// `http://127.0.0.1:PORT` (plain HTTP, loopback only).
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// End open watches with `410 Expired` and drop the change history (as after an API
    /// server restart), so watchers must re-list.
    pub fn expire_watches(&self) {
        self.shared.expire_watches();
    }

    /// Number of stored objects.
    pub fn object_count(&self) -> usize {
        self.shared.lock().store.len()
    }

    /// Number of container processes the kubelet is running.
    pub fn running_processes(&self) -> usize {
        self.processes.len()
    }

    /// Stop serving (and every workload task), stop every container process and, when persistence is on, save every
    /// object.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        self.processes.kill_all();
        if let Some(path) = &self.state_path {
            let saved: Vec<serde_json::Value> = self
                .shared
                .lock()
                .store
                .snapshot()
                .into_iter()
                .map(|(key, object)| json!({"group": key.group, "resource": key.plural, "object": *object}))
                .collect();
            write_file(path, &serde_json::Value::Array(saved).to_string())?;
        }
        Ok(())
    }
}

impl Drop for LocalCluster {
    /// Stop the listeners, workload tasks (Service proxies included) and container processes
    /// without saving.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.processes.kill_all();
    }
}
