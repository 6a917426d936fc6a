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
}
