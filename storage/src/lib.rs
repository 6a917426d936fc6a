//! Tier backends (S3, filesystem), manifests, checksums and transfers.
