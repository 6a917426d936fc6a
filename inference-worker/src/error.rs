//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the worker outside a request's own validation
/// (which `api::ApiError` reports to the client).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model {path}: {reason}")]
    ModelFormat { path: PathBuf, reason: String },
    #[error("invalid model: {0}")]
    InvalidModel(String),
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("device: {0}")]
    Device(String),
    #[error("API key file {path}: {reason}")]
    ApiKeys { path: PathBuf, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the model worker stopped")]
    WorkerGone,
}

impl WorkerError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
