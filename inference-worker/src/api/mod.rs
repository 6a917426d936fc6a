//! The OpenAI-compatible HTTP API: routes, auth and metrics middleware, and the shared
//! state handlers read. Model work happens in `serve::engine`; this module only parses,
//! validates, queues and formats.

pub mod auth;
pub mod error;
mod handlers;
pub mod types;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::api::auth::ApiKeys;
use crate::api::error::ApiError;
use crate::models::{Embedder, Predictor};
use crate::serve::engine::{EmbeddingJob, GenerationJob, PredictionJob, QueueHandle};
use crate::serve::metrics::Metrics;
use crate::tokenizer::{ChatTemplate, TextTokenizer};

/// Routes that answer without an API key: probes and scraping.
const OPEN_ROUTES: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// What the handlers share.
pub struct AppState {
    /// The name clients put in `model`.
    pub model_id: String,
    pub device: String,
    /// Unix seconds at start, reported as the model's `created`.
    pub created: u64,
    pub metrics: Arc<Metrics>,
    pub api_keys: Option<ApiKeys>,
    pub max_body_bytes: usize,
    /// Set once the model has loaded; until then model routes answer 503.
    pub model: OnceLock<ServedModel>,
}

/// The loaded model as the HTTP side sees it: how to validate and queue work for it.
pub enum ServedModel {
    Generation {
        architecture: &'static str,
        format: &'static str,
        tokenizer: Box<TextTokenizer>,
        template: ChatTemplate,
        context_length: usize,
        queue: QueueHandle<GenerationJob>,
    },
    Embedding {
        architecture: &'static str,
        format: &'static str,
        embedder: Arc<dyn Embedder>,
        queue: QueueHandle<EmbeddingJob>,
    },
    /// A tabular (or text) classifier or regressor behind `/v1/predict`.
    Prediction {
        architecture: &'static str,
        format: &'static str,
        predictor: Arc<dyn Predictor>,
        queue: QueueHandle<PredictionJob>,
        /// The base model of a fine-tuned text classifier, which serves embeddings too.
        embeddings: Option<(Arc<dyn Embedder>, QueueHandle<EmbeddingJob>)>,
    },
}

impl ServedModel {
    /// The embedder and its queue, when the model serves `/v1/embeddings`.
    fn embeddings(&self) -> Option<(&Arc<dyn Embedder>, &QueueHandle<EmbeddingJob>)> {
        match self {
            Self::Embedding {
                embedder, queue, ..
            } => Some((embedder, queue)),
            Self::Prediction {
                embeddings: Some((embedder, queue)),
                ..
            } => Some((embedder, queue)),
            _ => None,
        }
    }

    fn architecture(&self) -> &'static str {
        match self {
            Self::Generation { architecture, .. }
            | Self::Embedding { architecture, .. }
            | Self::Prediction { architecture, .. } => architecture,
        }
    }

    fn format(&self) -> &'static str {
        match self {
            Self::Generation { format, .. }
            | Self::Embedding { format, .. }
            | Self::Prediction { format, .. } => format,
        }
    }
}

/// The router with every route and middleware.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/models", get(handlers::list_models))
        .route(
            "/v1/models/{id}",
            get(handlers::get_model).post(handlers::predict_named),
        )
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/embeddings", post(handlers::embeddings))
        .route("/v1/predict", post(handlers::predict))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_request,
        ))
        .with_state(state)
}

async fn require_api_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(keys) = &state.api_keys
        && !OPEN_ROUTES.contains(&request.uri().path())
        && !keys.accepts(
            request
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        )
    {
        return ApiError::unauthorized().into_response();
    }
    next.run(request).await
}

async fn record_request(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let route = route_label(request.uri().path());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .observe_request(route, response.status().as_u16(), started.elapsed());
    response
}

/// The route a path belongs to, for metric labels (bounded, unlike raw paths).
fn route_label(path: &str) -> &'static str {
    const ROUTES: &[&str] = &[
        "/v1/models",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/predict",
        "/healthz",
        "/readyz",
        "/metrics",
    ];
    if let Some(route) = ROUTES.iter().find(|r| **r == path) {
        return route;
    }
    if path.starts_with("/v1/models/") {
        return "/v1/models/{id}";
    }
    "unmatched"
}
