//! Progress the operator can read while training runs, and the final result.
//!
//! **Status file** (`--status-file`): a JSON [`Status`] object, replaced atomically (write to a
//! temporary file, rename), so a reader never sees a torn file. It is rewritten at most once a
//! second while training, after every epoch and checkpoint, and once more at the end with the
//! final phase.
//!
//! **Termination message** (`--termination-message-path`, Kubernetes' default
//! `/dev/termination-log`): the final [`Status`] as JSON, which the kubelet copies into the
//! pod's `status.containerStatuses[].state.terminated.message`. At the default path it is
//! written only when the file already exists (i.e. inside a container), so running the worker
//! on a workstation does not create files under `/dev`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::objects;

/// Kubernetes' default termination-message path.
pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Phase of a training run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Phase {
    /// Loading data and building the model.
    Starting,
    /// Taking optimizer steps.
    Running,
    /// Finished; the model is published.
    Succeeded,
    /// Stopped at SIGTERM after a checkpoint; resume to continue.
    Preempted,
    /// Stopped by an error; nothing is published.
    Failed,
}

/// The status file's content and the final result.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Where the run is.
    pub phase: Phase,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// `mlp` or `char-transformer`.
    pub architecture: String,
    /// Completed epochs.
    pub epoch: usize,
    /// Epochs requested.
    pub epochs: usize,
    /// Optimizer steps completed.
    pub step: u64,
    /// Optimizer steps of the whole run.
    pub total_steps: u64,
    /// `step / totalSteps`.
    pub progress: f64,
    /// Mean training loss of the last completed epoch (or of the current one so far).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    /// Validation loss after the last completed epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// `accuracy`, `rmse` or `perplexity`.
    pub metric_name: String,
    /// The metric on the validation split after the last completed epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<f64>,
    /// Validation loss of the unigram baseline (char-transformer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_val_loss: Option<f64>,
    /// Step of the checkpoint this run resumed from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_from_step: Option<u64>,
    /// Step of the latest checkpoint written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_step: Option<u64>,
    /// Where the model was published (on success).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `sha256:` digest of the published model's manifest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// What went wrong (on failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Rewrites the status file, throttled.
pub(crate) struct StatusWriter {
    path: Option<PathBuf>,
    last: Option<Instant>,
}

impl StatusWriter {
    pub fn new(path: Option<PathBuf>) -> Self {
        StatusWriter { path, last: None }
    }

    /// Write now when `force`, otherwise only if a second has passed since the last write.
    pub fn update(&mut self, status: &Status, force: bool) {
        let Some(path) = &self.path else { return };
        if !force && self.last.is_some_and(|t| t.elapsed() < MIN_INTERVAL) {
            return;
        }
        self.last = Some(Instant::now());
        let json = serde_json::to_vec_pretty(status).expect("status serialises");
        if let Err(e) = objects::write_atomic(path, &json) {
            tracing::warn!(error = %e, "could not write the status file");
        }
    }
}

/// Write the final result to the termination-message path (see the module docs).
pub(crate) fn write_termination_message(path: &Path, status: &Status) {
    if path == Path::new(DEFAULT_TERMINATION_MESSAGE_PATH) && !path.exists() {
        tracing::debug!("no {DEFAULT_TERMINATION_MESSAGE_PATH}; not running in a container");
        return;
    }
    let json = serde_json::to_vec(status).expect("status serialises");
    if let Err(e) = std::fs::write(path, json) {
        tracing::warn!(error = %e, path = %path.display(), "could not write the termination message");
    }
}
