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
}
