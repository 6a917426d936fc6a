//! `aigc-worker`: the data-plane binary run in worker pods. One module per subcommand;
//! `main.rs` only parses the command line and dispatches.

pub mod transfer;

/// Errors from the worker's subcommands.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A storage operation failed.
    #[error(transparent)]
    Storage(#[from] aigc_storage::Error),
    /// A command-line value that cannot be used.
    #[error("invalid {flag} {value:?}: {reason}")]
    InvalidArgument {
        /// The flag, e.g. `--storage-class`.
        flag: &'static str,
        /// The value given.
        value: String,
        /// What is accepted.
        reason: String,
    },
}
