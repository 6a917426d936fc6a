//! `aigc-worker serve`: loads a model and serves the OpenAI-compatible API. This module
//! owns the process lifecycle (flags, listener, TLS, model loading, shutdown); requests are
//! handled in `api`, model work in `engine`.

pub mod engine;
pub mod metrics;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::auth::ApiKeys;
use crate::api::{AppState, ServedModel, router};
use crate::device::{self, DevicePreference};
use crate::error::WorkerError;
use crate::models::{self, Capability};
use crate::serve::metrics::Metrics;

/// Flags of `aigc-worker serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The model: a GGUF file, or a directory with config.json, *.safetensors and
    /// tokenizer.json, or a model written by `aigc-worker train` (format and architecture
    /// are detected from the files); a path, `file:///abs/path` or `s3://bucket/prefix`
    /// (downloaded to the cache directory first, see `objects::cache_dir`).
    #[arg(long)]
    pub model: PathBuf,
    /// The name clients send as `model`; defaults to the file or directory name.
    #[arg(long)]
    pub model_name: Option<String>,
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// File with one accepted API key per line; without it no key is required.
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// PEM certificate chain; serves HTTPS together with --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Most inputs in one embedding forward batch, and most requests decoded together.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_batch: u32,
    /// Most memory, in MiB, the key/value caches of requests decoded together may reserve
    /// (each reserves its prompt plus `max_tokens` positions); a request that would pass it
    /// waits for others to finish, and one request always runs.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub kv_cache_mib: u32,
    /// Most requests waiting for the model; more are refused with 429.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_queue: u32,
    /// Compute threads for the model (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DevicePreference,
    /// Largest accepted request body in bytes; larger bodies get 413.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
}

impl ServeArgs {
    /// Arguments with every default, serving `model`.
    pub fn for_model(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            model_name: None,
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            api_key_file: None,
            tls_cert: None,
            tls_key: None,
            max_batch: 64,
            kv_cache_mib: 512,
            max_queue: 64,
            threads: None,
            device: DevicePreference::Auto,
            max_body_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Runs the server until SIGINT or SIGTERM. Blocking: it builds its own runtime after
/// fixing the compute thread count, which must happen before any pool starts.
pub fn run(args: ServeArgs) -> Result<(), WorkerError> {
    if let Some(threads) = args.threads {
        // SAFETY: no other thread exists yet; candle's CPU kernels read this variable.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| WorkerError::io("tokio runtime", e))?;
    runtime.block_on(async {
        let server = Server::start(args).await?;
        tracing::info!(addr = %server.local_addr(), "listening");
        tokio::select! {
            loaded = server.wait_ready() => loaded?,
            () = shutdown_signal() => return Ok(()),
        }
        tracing::info!("model loaded");
        shutdown_signal().await;
        tracing::info!("shutting down");
        Ok(())
    })
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// The load state of the model, watched by [`Server::wait_ready`].
#[derive(Debug, Clone)]
enum Load {
    Loading,
    Ready,
    Failed(String),
}

/// A running server: the listener answers at once (`/healthz`), the model loads in the
/// background (`/readyz` turns 200 when it has). Dropping it stops the server.
pub struct Server {
    local_addr: SocketAddr,
    tls: bool,
    load: watch::Receiver<Load>,
    state: Arc<AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    /// Checks the flags, binds the listener and starts loading the model.
    pub async fn start(args: ServeArgs) -> Result<Self, WorkerError> {
        let api_keys = args
            .api_key_file
            .as_deref()
            .map(ApiKeys::from_file)
            .transpose()?;
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
            (None, None) => None,
            _ => {
                return Err(WorkerError::Tls(
                    "--tls-cert and --tls-key must be given together".into(),
                ));
            }
        };
        let device = device::select(args.device)?;
        let model_id = match &args.model_name {
            Some(name) => name.clone(),
            None => default_model_name(&args.model),
        };
        let device_name = device::name(&device);
        let metrics = Arc::new(Metrics::new(&model_id, &device_name));
        let state = Arc::new(AppState {
            model_id,
            device: device_name,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            metrics: metrics.clone(),
            api_keys,
            max_body_bytes: args.max_body_bytes,
            model: OnceLock::new(),
        });

        let listener =
            TcpListener::bind(args.listen)
                .await
                .map_err(|source| WorkerError::Listen {
                    addr: args.listen.to_string(),
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| WorkerError::Listen {
                addr: args.listen.to_string(),
                source,
            })?;
        let serves_tls = tls.is_some();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(state.clone());
        let shutdown = async move {
            let _ = stopped.await;
        };
        match tls {
            Some(config) => {
                let listener = tls::TlsListener::new(listener, config).map_err(|source| {
                    WorkerError::Listen {
                        addr: args.listen.to_string(),
                        source,
                    }
                })?;
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown)
                        .await;
                });
            }
            None => {
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown)
                        .await;
                });
            }
        }

        let (loaded, load) = watch::channel(Load::Loading);
        let loading_state = state.clone();
        tokio::task::spawn_blocking(move || {
            let outcome = load_model(&args, &device, &metrics).map(|model| {
                // Only this task sets the model, so the cell is empty here.
                let _ = loading_state.model.set(model);
            });
            let _ = loaded.send(match outcome {
                Ok(()) => Load::Ready,
                Err(error) => Load::Failed(error.to_string()),
            });
        });
        Ok(Self {
            local_addr,
            tls: serves_tls,
            load,
            state,
            stop: Some(stop),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://` or `https://` and the bound address.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr)
    }

    /// The name clients use as `model`.
    pub fn model_id(&self) -> &str {
        &self.state.model_id
    }

    /// Waits until the model has loaded, or returns why it did not.
    pub async fn wait_ready(&self) -> Result<(), WorkerError> {
        let mut load = self.load.clone();
        let state = load
            .wait_for(|l| !matches!(l, Load::Loading))
            .await
            .map_err(|_| WorkerError::WorkerGone)?
            .clone();
        match state {
            Load::Failed(reason) => Err(WorkerError::InvalidModel(reason)),
            _ => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn load_model(
    args: &ServeArgs,
    device: &candle_core::Device,
    metrics: &Arc<Metrics>,
) -> Result<ServedModel, WorkerError> {
    let path = crate::objects::local_copy(&args.model.to_string_lossy())?;
    let loaded = models::load(&path, device)?;
    let format = loaded.format.name();
    let capacity = args.max_queue as usize;
    Ok(match loaded.capability {
        Capability::Generation(generator) => {
            let tokenizer = Box::new(generator.tokenizer().clone());
            let template = generator.chat_template();
            let context_length = generator.context_length();
            ServedModel::Generation {
                architecture: loaded.architecture,
                format,
                tokenizer,
                template,
                context_length,
                queue: engine::spawn_generation(
                    generator,
                    capacity,
                    engine::Batching {
                        max_requests: args.max_batch as usize,
                        cache_bytes: args.kv_cache_mib as usize * (1 << 20),
                    },
                    metrics.clone(),
                )?,
            }
        }
        Capability::Embedding(embedder) => ServedModel::Embedding {
            architecture: loaded.architecture,
            format,
            queue: engine::spawn_embedding(
                embedder.clone(),
                capacity,
                args.max_batch as usize,
                metrics.clone(),
            )?,
            embedder,
        },
        Capability::Prediction(predictor) => ServedModel::Prediction {
            architecture: loaded.architecture,
            format,
            queue: engine::spawn_prediction(predictor.clone(), capacity, metrics.clone())?,
            embeddings: match predictor.embedder() {
                Some(embedder) => Some((
                    embedder.clone(),
                    engine::spawn_embedding(
                        embedder,
                        capacity,
                        args.max_batch as usize,
                        metrics.clone(),
                    )?,
                )),
                None => None,
            },
            predictor,
        },
    })
}

/// The model's file or directory name without a `.gguf` / `.safetensors` extension.
fn default_model_name(path: &Path) -> String {
    let path = if path.extension().is_some_and(|e| e == "safetensors") {
        path.parent().unwrap_or(path)
    } else {
        path
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    name.strip_suffix(".gguf")
        .map(str::to_string)
        .unwrap_or(name)
}
