//! The data-plane worker run in `aigc-worker` pods: dataset governance (`prepare`) and training
//! (`train`), plus the model types a server loads (`models`).
//!
//! This crate moves and transforms data and weights; it never talks to the Kubernetes API.
//! Objects are read and written through [`objects`], the one place that knows where bytes live.

pub mod device;
pub mod models;
pub mod objects;
pub mod prepare;
pub mod rng;
pub mod train;

pub use device::{device_name, select_device};

/// Errors from the worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command-line value or configuration that cannot be used.
    #[error("{0}")]
    InvalidArgument(String),
    /// Input data that cannot be used, with what was wrong and where.
    #[error("{0}")]
    InvalidData(String),
    /// A stored model, dataset or checkpoint that does not match what it claims to be.
    #[error("{0}")]
    Corrupt(String),
    /// Reading or writing a file.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A manifest or key check from aigc-storage.
    #[error(transparent)]
    Storage(#[from] aigc_storage::Error),
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// Training stopped at SIGTERM after writing a checkpoint at this step.
    #[error("preempted by SIGTERM; checkpoint written at step {step}")]
    Preempted {
        /// Last completed optimizer step.
        step: u64,
    },
}

impl Error {
    /// An [`Error::Io`] with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
