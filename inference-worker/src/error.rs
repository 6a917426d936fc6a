//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the worker outside a request's own validation
/// (which `api::ApiError` reports to the client).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Reading or writing a file, or starting a thread or runtime: what was being done and
    /// the underlying error.
    #[error("{}: {source}", path.display())]
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
    #[error("quantized CPU kernels: {0}")]
    Quant(#[from] aigc_quant::QuantError),
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
    /// A command-line value or configuration that cannot be used.
    #[error("{0}")]
    InvalidArgument(String),
    /// A command-line flag with a value that cannot be used.
    #[error("invalid {flag} {value:?}: {reason}")]
    InvalidFlag {
        /// The flag, e.g. `--storage-class`.
        flag: &'static str,
        /// The value given.
        value: String,
        /// What is accepted.
        reason: String,
    },
    /// Input data that cannot be used, with what was wrong and where.
    #[error("{0}")]
    InvalidData(String),
    /// A stored model, dataset or checkpoint that does not match what it claims to be.
    #[error("{0}")]
    Corrupt(String),
    /// A manifest or key check from aigc-storage.
    #[error(transparent)]
    Storage(#[from] aigc_storage::Error),
    /// One instance of a prediction request that the model cannot take: which instance (from
    /// 0), which input column, and what is wrong.
    #[error("instance {row}, column {column:?}: {reason}")]
    InvalidInstance {
        row: usize,
        column: String,
        reason: String,
    },
    /// Training stopped at SIGTERM after writing a checkpoint at this step.
    #[error("preempted by SIGTERM; checkpoint written at step {step}")]
    Preempted {
        /// Last completed optimizer step.
        step: u64,
    },
}

/// Result with this crate's [`WorkerError`].
pub type Result<T, E = WorkerError> = std::result::Result<T, E>;

impl WorkerError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
