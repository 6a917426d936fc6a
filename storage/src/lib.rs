//! Storage for Datasets and Models: one object API over tier backends (S3, filesystem),
//! manifests with checksums, and transfers between tiers.
//!
//! This crate moves and verifies bytes; it never talks to the Kubernetes API.

pub mod bandwidth;
pub mod fs;
pub mod location;
pub mod manifest;
pub mod migration;
pub mod s3;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod tier;
pub mod verify;

pub use aigc_crds as crds;
pub use location::Location;
pub use manifest::{MANIFEST_KEY, Manifest, ManifestEntry, check_key};
pub use migration::{MigrationPlan, MigrationReport, Progress, plan_migration};
pub use s3::{S3Config, S3Credentials, S3Tier, Usage};
pub use tier::{ObjectMeta, ObjectReader, RestoreState, Tier};

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
    /// A tier URI that cannot be used.
    #[error(
        "invalid tier URI {uri:?}: {reason}; accepted: file:///absolute/dir or s3://bucket/prefix"
    )]
    InvalidUri {
        /// The URI given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A path that resolves outside the tier's root directory (for example through a symlink).
    #[error(
        "{path} resolves outside the tier root {root}; filesystem tiers only read and write below their root"
    )]
    OutsideRoot {
        /// The offending path.
        path: String,
        /// The tier root.
        root: String,
    },
    /// No object under this key.
    #[error("object {key:?} does not exist in {tier}")]
    NotFound {
        /// The tier, as a URI.
        tier: String,
        /// The key.
        key: String,
    },
    /// The tier's bucket or root directory does not exist.
    #[error("{tier} does not exist: {detail}")]
    TierNotFound {
        /// The tier, as a URI.
        tier: String,
        /// What the backend said.
        detail: String,
    },
    /// The backend refused the credentials or the request.
    #[error(
        "access to {tier} was denied ({code}): {detail}; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the tier's credentials Secret"
    )]
    AccessDenied {
        /// The tier, as a URI.
        tier: String,
        /// The backend's error code.
        code: String,
        /// The backend's message.
        detail: String,
    },
    /// An archived object that must be restored before it can be read.
    #[error(
        "object {key:?} in {tier} is in archive class {storage_class} and is restoring ({state}); read it again once the restore completes"
    )]
    Restoring {
        /// The tier, as a URI.
        tier: String,
        /// The key.
        key: String,
        /// Its storage class.
        storage_class: String,
        /// Whether this call requested the restore or one was already in progress.
        state: RestoreState,
    },
    /// A backend that could not be reached at all: no answer, so nothing about the bucket or
    /// the credentials is known yet.
    #[error("cannot reach {endpoint}: {detail}")]
    Unreachable {
        /// The endpoint URL.
        endpoint: String,
        /// Why the request got no answer.
        detail: String,
    },
    /// An I/O error on a filesystem tier.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Any other S3 error.
    #[error("S3 {op} on {tier} failed: {detail}")]
    S3 {
        /// The S3 operation.
        op: &'static str,
        /// The tier and key, as a URI.
        tier: String,
        /// What the backend said.
        detail: String,
    },
    /// An object whose bytes do not match its manifest entry.
    #[error(
        "object {key:?} in {tier} does not match the manifest: expected {expected_size} bytes with sha256 {expected_sha256}, found {actual_size} bytes with sha256 {actual_sha256}"
    )]
    Mismatch {
        /// The tier, as a URI.
        tier: String,
        /// The key.
        key: String,
        /// Size in the manifest.
        expected_size: u64,
        /// Digest in the manifest.
        expected_sha256: String,
        /// Size found.
        actual_size: u64,
        /// Digest found.
        actual_sha256: String,
    },
    /// A migration that cannot be planned or did not finish.
    #[error("migration from {from} to {to}: {reason}")]
    Migration {
        /// Source tier URI.
        from: String,
        /// Destination tier URI.
        to: String,
        /// What went wrong.
        reason: String,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
