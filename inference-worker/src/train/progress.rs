//! Progress the operator can read while training runs, and the final result.
//!
//! **Status file** (`--status-file`): a JSON [`Status`] object, replaced atomically (write to a
//! temporary file, rename), so a reader never sees a torn file. It is rewritten at most once a
//! second while training, after every epoch and checkpoint, and once more at the end with the
//! final phase.
//!
//! **HTTP** (`--progress-listen ADDR`): `GET /progress` answers the same JSON [`Status`],
//! current to the last optimizer step, for as long as training runs.
//!
//! **Termination message** (`--termination-message-path`, Kubernetes' default
//! `/dev/termination-log`): the final [`Status`] as compact JSON (see [`crate::summary`]),
//! which the kubelet copies into the pod's `status.containerStatuses[].state.terminated.message`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::{Result, WorkerError, objects, summary};

pub use crate::summary::DEFAULT_TERMINATION_MESSAGE_PATH;
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

/// The latest status as JSON, shared with the `/progress` server.
type LiveStatus = Arc<Mutex<String>>;

/// Rewrites the status file (throttled) and the live status served at `/progress`.
pub(crate) struct StatusWriter {
    path: Option<PathBuf>,
    last: Option<Instant>,
    live: Option<LiveStatus>,
}

impl StatusWriter {
    pub fn new(path: Option<PathBuf>, server: Option<&ProgressServer>) -> Self {
        StatusWriter {
            path,
            last: None,
            live: server.map(|s| s.live.clone()),
        }
    }

    /// Write the file now when `force`, otherwise only if a second has passed since the last
    /// write. The live status is always updated.
    pub fn update(&mut self, status: &Status, force: bool) {
        if let Some(live) = &self.live {
            let json = serde_json::to_string(status).expect("status serialises");
            *live.lock().unwrap_or_else(|e| e.into_inner()) = json;
        }
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

/// Print the final result on stdout and write it to the termination-message path.
pub(crate) fn emit_final(path: &Path, status: &Status) {
    let value = serde_json::to_value(status).expect("status serialises");
    summary::emit(&summary::compact(&value, &[]), Some(path));
}

/// `GET /progress` on its own thread and runtime while training runs; stopped when dropped.
pub struct ProgressServer {
    live: LiveStatus,
    local_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProgressServer {
    /// Bind `addr` (so a bad address fails the run at once) and start serving.
    pub fn start(addr: SocketAddr) -> Result<Self> {
        let listen_error = |source| WorkerError::Listen {
            addr: addr.to_string(),
            source,
        };
        let listener = std::net::TcpListener::bind(addr).map_err(listen_error)?;
        listener.set_nonblocking(true).map_err(listen_error)?;
        let local_addr = listener.local_addr().map_err(listen_error)?;
        let live: LiveStatus = Arc::new(Mutex::new("{}".into()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| WorkerError::io("progress server runtime", e))?;
        let served = live.clone();
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::warn!(error = %e, "the progress server could not start");
                            return;
                        }
                    };
                    let app = axum::Router::new().route(
                        "/progress",
                        axum::routing::get(move || {
                            let body = served.lock().unwrap_or_else(|e| e.into_inner()).clone();
                            async move {
                                (
                                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                                    body,
                                )
                            }
                        }),
                    );
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })
            .map_err(|e| WorkerError::io("progress server thread", e))?;
        tracing::info!(addr = %local_addr, "serving GET /progress");
        Ok(ProgressServer {
            live,
            local_addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for ProgressServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
