//! The operator crate's error type.

/// Errors from the operator library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("{action}: {source}")]
    Kube {
        /// What the operator was doing, e.g. `applying Deployment chat`.
        action: String,
        /// The client's error.
        source: kube::Error,
    },
    /// An object without `metadata.name` where one is required.
    #[error("object has no metadata.name")]
    MissingName,
    /// A namespaced object without `metadata.namespace`.
    #[error("namespaced object has no metadata.namespace")]
    MissingNamespace,
    /// A Dataset or Model whose status names no tier yet.
    #[error("{kind} {name} is not placed on a StorageTier yet")]
    NotPlaced {
        /// `Dataset` or `Model`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A StorageTier named by a resource that does not exist.
    #[error("StorageTier {0:?} does not exist")]
    TierNotFound(String),
    /// A resource quantity in a workload, node or queue that cannot be used as written.
    #[error("{field}: {source}")]
    Quantity {
        /// Where the quantity came from, e.g. `queues[gpu-team].quota.gpu`.
        field: String,
        /// Why it was rejected.
        source: aigc_crds::Error,
    },
    /// A quantity that parses but does not fit the resource, e.g. half a GPU.
    #[error("{field}: {value:?} {problem}")]
    QuantityOutOfRange {
        /// Where the quantity came from.
        field: String,
        /// The quantity as written.
        value: String,
        /// What is accepted instead.
        problem: &'static str,
    },
    /// A Kubernetes object field with a value this operator does not know.
    #[error("{field}: unknown value {value:?}; accepted: {accepted}")]
    UnknownValue {
        /// Where the value came from.
        field: String,
        /// The value as written.
        value: String,
        /// The accepted values.
        accepted: &'static str,
    },
    /// The scheduler section of the operator configuration is inconsistent.
    #[error("scheduler configuration: {0}")]
    SchedulerConfig(String),
    /// A value the operator writes could not be serialised.
    #[error("{what}: cannot serialise: {message}")]
    Serialize {
        /// What the operator was doing.
        what: String,
        /// The serialiser's message.
        message: String,
    },
    /// A workload that cannot be run as specified; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// A resource cannot be deleted yet because its data is moving between tiers.
    #[error(
        "{kind} {name} is moving between tiers (Job {job}); deletion waits until the move finishes"
    )]
    MoveInProgress {
        /// `Dataset` or `Model`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The move Job.
        job: String,
    },
    /// The operator configuration file cannot be read as YAML.
    #[error("scheduler configuration is not valid YAML: {0}")]
    ConfigYaml(#[from] serde_yaml::Error),
    /// The operator's configuration (file or flags) has a value that cannot be used.
    #[error("{file}: {field}: {message}")]
    Config {
        /// The config file, or `flags`.
        file: String,
        /// The offending field, e.g. `scheduler.queues[0].quota.gpu`.
        field: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The metrics and probes address cannot be listened on.
    #[error("listening on {addr} for /metrics, /healthz and /readyz: {source}")]
    Listen {
        /// The address of `--metrics-addr`.
        addr: std::net::SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// Serving /metrics, /healthz and /readyz failed.
    #[error("serving /metrics, /healthz and /readyz: {0}")]
    Serve(std::io::Error),
    /// A manifest file `local up` cannot apply as written.
    #[error("{path}: {message}")]
    Manifest {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, naming the document.
        message: String,
    },
    /// A file or folder that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Something `local up` needs is missing; `fix` is the command that provides it.
    #[error("missing {what}; fix: {fix}")]
    Prerequisite {
        /// What is missing.
        what: String,
        /// The command or step that provides it.
        fix: String,
    },
    /// The embedded cluster failed to start or stop.
    #[error("local cluster: {0}")]
    LocalCluster(#[from] aigc_local_cluster::Error),
}
