//! Storage for Datasets and Models: one object API over tier backends (S3, filesystem),
//! manifests with checksums, and transfers between tiers.
//!
//! This crate moves and verifies bytes; it never talks to the Kubernetes API.

pub mod manifest;

pub use manifest::{MANIFEST_KEY, Manifest, ManifestEntry};

/// Errors from this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An object key that could escape the tier root or prefix.
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The key given.
        key: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A manifest that does not parse or does not add up.
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
}
