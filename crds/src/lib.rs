//! The `aigc.dev/v1alpha1` API: the five custom resource types, their CRD manifests, and the
//! Condition type their statuses share.
//!
//! This crate holds types and schema only. It must not talk to a cluster or move data; the
//! operator, the worker and the storage crate build on it.

// `#[kube(printcolumn(...))]` repeats keys such as `type_ = "string"` across columns by design.
#![allow(clippy::duplicated_attributes)]

pub mod common;
pub mod condition;
pub mod dataset;
pub mod inference_service;
pub mod model;
pub mod storage_tier;
pub mod training_job;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use condition::{Condition, ConditionStatus};
pub use dataset::Dataset;
pub use inference_service::InferenceService;
pub use model::Model;
pub use storage_tier::StorageTier;
pub use training_job::TrainingJob;

/// The API group of every kind in this crate.
pub const GROUP: &str = "aigc.dev";
/// The API version of every kind in this crate.
pub const VERSION: &str = "v1alpha1";

/// Errors from this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A duration string that does not match `DURATION_PATTERN`.
    #[error(
        "invalid duration {0:?}: expected number-unit pairs with units ms, s, m, h, d (e.g. 90s, 36h, 7d, 1h30m)"
    )]
    InvalidDuration(String),
    /// A quantity string that is not a Kubernetes quantity, or too large to count.
    #[error(
        "invalid quantity {value:?}: {reason}; expected a number with an optional suffix m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei or an exponent (e.g. 500m, 4, 16Gi, 1.5T)"
    )]
    InvalidQuantity {
        /// The quantity as written.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A CRD that cannot be written as YAML.
    #[error("cannot serialise CRD {name} as YAML: {source}")]
    Yaml {
        /// Name of the CRD.
        name: String,
        /// The serialiser's error.
        source: serde_yaml::Error,
    },
}

/// The CRDs of all five kinds, in dependency order (tiers first, services last).
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        StorageTier::crd(),
        Dataset::crd(),
        Model::crd(),
        TrainingJob::crd(),
        InferenceService::crd(),
    ]
}

/// One CRD as a YAML document (without the `---` separator).
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, Error> {
    serde_yaml::to_string(crd).map_err(|source| Error::Yaml {
        name: crd.metadata.name.clone().unwrap_or_default(),
        source,
    })
}

/// All five CRDs as one multi-document YAML stream, as `aigc-operator crds` prints it.
pub fn all_crds_yaml() -> Result<String, Error> {
    let mut out = String::new();
    for crd in all_crds() {
        out.push_str("---\n");
        out.push_str(&crd_yaml(&crd)?);
    }
    Ok(out)
}

/// File name of a CRD in `charts/aigc-operator/crds/`, e.g. `datasets.aigc.dev.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}
