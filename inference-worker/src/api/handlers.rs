//! Route handlers: parse and validate, queue the work, shape the reply.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::api::error::ApiError;
use crate::api::types::{
    ChatRequest, CompletionRequest, EmbeddingRequest, EncodingFormat, FinishReason,
    GenerationSettings, PredictRequest, Usage, parse_generation_request, parse_json,
};
use crate::api::{AppState, ServedModel};
use crate::serve::engine::{
    EmbeddingJob, EnqueueError, GenerationEvent, GenerationJob, PredictionJob,
};

/// Most inputs one embeddings request may carry (as OpenAI).
const MAX_EMBEDDING_INPUTS: usize = 2048;
/// Most instances one prediction request may carry.
const MAX_PREDICT_INSTANCES: usize = 10_000;

type AppStateRef = State<Arc<AppState>>;

pub(super) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub(super) async fn readyz(State(state): AppStateRef) -> Response {
    match state.model.get() {
        Some(_) => Json(json!({ "status": "ready", "model": state.model_id })).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "loading", "model": state.model_id })),
        )
            .into_response(),
    }
}

pub(super) async fn metrics(State(state): AppStateRef) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

pub(super) async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

fn model_object(state: &AppState, model: &ServedModel) -> Value {
    let mut object = json!({
        "id": state.model_id,
        "object": "model",
        "created": state.created,
        "owned_by": "aigc-worker",
        "architecture": model.architecture(),
        "format": model.format(),
        "device": state.device,
        "capability": match model {
            ServedModel::Generation { .. } => "text-generation",
            ServedModel::Embedding { .. } => "embeddings",
            ServedModel::Prediction { .. } => "prediction",
        },
    });
    if let ServedModel::Prediction { predictor, .. } = model {
        object["inputs"] = json!(predictor.inputs());
        object["target"] = json!(predictor.target());
    }
    object
}

/// What a model serves, for errors that send a request to the wrong route.
fn serves(model: &ServedModel) -> &'static str {
    match model {
        ServedModel::Generation { .. } => "text generation (/v1/completions, /v1/chat/completions)",
        ServedModel::Embedding { .. } => "embeddings (/v1/embeddings)",
        ServedModel::Prediction {
            embeddings: Some(_),
            ..
        } => "predictions (/v1/predict) and embeddings (/v1/embeddings)",
        ServedModel::Prediction { .. } => "predictions (/v1/predict)",
    }
}

pub(super) async fn list_models(State(state): AppStateRef) -> Result<Json<Value>, ApiError> {
    let model = state.model.get().ok_or_else(ApiError::not_ready)?;
    Ok(Json(json!({
        "object": "list",
        "data": [model_object(&state, model)],
    })))
}

pub(super) async fn get_model(
    State(state): AppStateRef,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let model = served(&state, &id)?;
    Ok(Json(model_object(&state, model)))
}

fn served<'a>(state: &'a AppState, requested: &str) -> Result<&'a ServedModel, ApiError> {
    let model = state.model.get().ok_or_else(ApiError::not_ready)?;
    if requested != state.model_id {
        return Err(ApiError::unknown_model(requested, &state.model_id));
    }
    Ok(model)
}

async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        if inner.is::<http_body_util::LengthLimitError>() {
            ApiError::body_too_large(limit)
        } else {
            ApiError::malformed_json(format!("reading the body failed: {inner}"))
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completion,
}

pub(super) async fn chat_completions(
    State(state): AppStateRef,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(&headers, body, state.max_body_bytes).await?;
    let (request, generation): (ChatRequest, _) = parse_generation_request(&body)?;
    let model = served(&state, &request.model)?;
    let ServedModel::Generation {
        tokenizer,
        template,
        context_length,
        ..
    } = model
    else {
        return Err(ApiError::wrong_endpoint(&request.model, serves(model)));
    };
    let settings = generation.validate(*context_length)?;
    let prompt = template.render(&request.chat_messages()?);
    let ids = tokenizer
        .encode(&prompt)
        .map_err(|e| prompt_error("messages", e))?;
    generate(&state, Endpoint::Chat, &request.model, ids, settings).await
}

pub(super) async fn completions(
    State(state): AppStateRef,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(&headers, body, state.max_body_bytes).await?;
    let (request, generation): (CompletionRequest, _) = parse_generation_request(&body)?;
    let model = served(&state, &request.model)?;
    let ServedModel::Generation {
        tokenizer,
        context_length,
        ..
    } = model
    else {
        return Err(ApiError::wrong_endpoint(&request.model, serves(model)));
    };
    let settings = generation.validate(*context_length)?;
    let ids = tokenizer
        .encode(request.single_prompt()?)
        .map_err(|e| prompt_error("prompt", e))?;
    if ids.is_empty() {
        return Err(ApiError::out_of_range(
            "prompt",
            "`prompt` is empty; give at least one token of text".into(),
        ));
    }
    generate(&state, Endpoint::Completion, &request.model, ids, settings).await
}

/// Queues a generation and answers with one JSON body or an SSE stream.
async fn generate(
    state: &AppState,
    endpoint: Endpoint,
    model_id: &str,
    prompt: Vec<u32>,
    settings: GenerationSettings,
) -> Result<Response, ApiError> {
    let Some(ServedModel::Generation {
        context_length,
        queue,
        ..
    }) = state.model.get()
    else {
        return Err(ApiError::not_ready());
    };
    let context_length = *context_length;
    let prompt_tokens = prompt.len();
    if prompt_tokens >= context_length {
        return Err(ApiError::context_length_exceeded(
            "messages",
            format!(
                "the prompt has {prompt_tokens} tokens; the context length is {context_length}, which leaves no room for output"
            ),
        ));
    }
    let room = context_length - prompt_tokens;
    let max_tokens = match settings.max_tokens {
        None => room,
        Some(n) if n <= room => n,
        Some(n) => {
            return Err(ApiError::context_length_exceeded(
                "max_tokens",
                format!(
                    "the prompt has {prompt_tokens} tokens and `max_tokens` is {n}; together they exceed the context length {context_length} (at most {room} for this prompt)"
                ),
            ));
        }
    };
    let (events, receiver) = mpsc::unbounded_channel();
    let job = GenerationJob {
        prompt,
        max_tokens,
        sampling: settings.sampling.clone(),
        stop: settings.stop.clone(),
        events,
        enqueued: Instant::now(),
    };
    match queue.try_enqueue(job) {
        Ok(()) => {}
        Err(EnqueueError::Full { capacity }) => {
            return Err(ApiError::queue_full("generation", capacity));
        }
        Err(EnqueueError::Stopped) => return Err(ApiError::internal("the model thread stopped")),
    }
    let reply = Reply {
        endpoint,
        id: response_id(endpoint),
        model: model_id.to_string(),
        created: unix_now(),
        prompt_tokens,
    };
    if settings.stream {
        Ok(stream_reply(reply, receiver, settings.include_usage))
    } else {
        whole_reply(reply, receiver).await
    }
}

/// What every chunk or body of one reply repeats.
struct Reply {
    endpoint: Endpoint,
    id: String,
    model: String,
    created: u64,
    prompt_tokens: usize,
}

impl Reply {
    fn usage(&self, completion_tokens: usize) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: Some(completion_tokens),
            total_tokens: self.prompt_tokens + completion_tokens,
        }
    }

    fn body(&self, text: &str, reason: FinishReason, completion_tokens: usize) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": { "role": "assistant", "content": text },
                "finish_reason": reason,
                "logprobs": null,
            }),
            Endpoint::Completion => json!({
                "index": 0,
                "text": text,
                "finish_reason": reason,
                "logprobs": null,
            }),
        };
        json!({
            "id": self.id,
            "object": match self.endpoint {
                Endpoint::Chat => "chat.completion",
                Endpoint::Completion => "text_completion",
            },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(completion_tokens),
        })
    }

    /// One streamed chunk: `delta` is the chat delta or the completion text.
    fn chunk(&self, delta: Value, reason: Option<FinishReason>) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                json!({ "index": 0, "delta": delta, "finish_reason": reason, "logprobs": null })
            }
            Endpoint::Completion => {
                json!({ "index": 0, "text": delta, "finish_reason": reason, "logprobs": null })
            }
        };
        self.envelope(vec![choice])
    }

    fn envelope(&self, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": match self.endpoint {
                Endpoint::Chat => "chat.completion.chunk",
                Endpoint::Completion => "text_completion",
            },
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    fn text_delta(&self, text: String) -> Value {
        match self.endpoint {
            Endpoint::Chat => self.chunk(json!({ "content": text }), None),
            Endpoint::Completion => self.chunk(Value::String(text), None),
        }
    }

    fn final_delta(&self, reason: FinishReason) -> Value {
        match self.endpoint {
            Endpoint::Chat => self.chunk(json!({}), Some(reason)),
            Endpoint::Completion => self.chunk(Value::String(String::new()), Some(reason)),
        }
    }
}

async fn whole_reply(
    reply: Reply,
    mut receiver: mpsc::UnboundedReceiver<GenerationEvent>,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    loop {
        match receiver.recv().await {
            Some(GenerationEvent::Text(delta)) => text.push_str(&delta),
            Some(GenerationEvent::Finished {
                reason,
                completion_tokens,
            }) => {
                return Ok(Json(reply.body(&text, reason, completion_tokens)).into_response());
            }
            Some(GenerationEvent::Failed(error)) => return Err(ApiError::internal(error)),
            None => return Err(ApiError::internal("the model thread stopped")),
        }
    }
}

/// Where an SSE reply is.
struct StreamState {
    reply: Reply,
    receiver: mpsc::UnboundedReceiver<GenerationEvent>,
    include_usage: bool,
    started: bool,
    done: bool,
}

fn data(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

fn stream_reply(
    reply: Reply,
    receiver: mpsc::UnboundedReceiver<GenerationEvent>,
    include_usage: bool,
) -> Response {
    let state = StreamState {
        reply,
        receiver,
        include_usage,
        started: false,
        done: false,
    };
    // Dropping this stream (the client went away) drops `receiver`, which the model
    // thread notices and stops generating.
    let events = futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let mut out = Vec::new();
        if !s.started {
            s.started = true;
            if s.reply.endpoint == Endpoint::Chat {
                out.push(data(
                    &s.reply
                        .chunk(json!({ "role": "assistant", "content": "" }), None),
                ));
                return Some((out, s));
            }
        }
        match s.receiver.recv().await {
            Some(GenerationEvent::Text(text)) => out.push(data(&s.reply.text_delta(text))),
            Some(GenerationEvent::Finished {
                reason,
                completion_tokens,
            }) => {
                s.done = true;
                out.push(data(&s.reply.final_delta(reason)));
                if s.include_usage {
                    let mut usage = s.reply.envelope(Vec::new());
                    usage["usage"] = json!(s.reply.usage(completion_tokens));
                    out.push(data(&usage));
                }
                out.push(Event::default().data("[DONE]"));
            }
            Some(GenerationEvent::Failed(error)) => {
                s.done = true;
                let error = ApiError::internal(error);
                out.push(data(&json!({ "error": {
                    "message": error.message, "type": error.kind, "param": null, "code": error.code,
                } })));
                out.push(Event::default().data("[DONE]"));
            }
            None => {
                s.done = true;
                out.push(Event::default().data("[DONE]"));
            }
        }
        Some((out, s))
    })
    .flat_map(|events| futures::stream::iter(events.into_iter().map(Ok::<_, Infallible>)));
    Sse::new(events).into_response()
}

pub(super) async fn embeddings(
    State(state): AppStateRef,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(&headers, body, state.max_body_bytes).await?;
    let request: EmbeddingRequest = parse_json(&body)?;
    let model = served(&state, &request.model)?;
    let Some((embedder, queue)) = model.embeddings() else {
        return Err(ApiError::wrong_endpoint(&request.model, serves(model)));
    };
    if let Some(dimensions) = request.dimensions
        && dimensions != embedder.dimensions() as i64
    {
        return Err(ApiError::out_of_range(
            "dimensions",
            format!(
                "`dimensions` is {dimensions}; this model gives {} dimensions only",
                embedder.dimensions()
            ),
        ));
    }
    let texts = request.input.into_vec();
    if texts.is_empty() || texts.len() > MAX_EMBEDDING_INPUTS {
        return Err(ApiError::out_of_range(
            "input",
            format!(
                "`input` has {} strings; accepted: 1 to {MAX_EMBEDDING_INPUTS}",
                texts.len()
            ),
        ));
    }
    let max_tokens = embedder.max_tokens();
    let mut inputs = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let ids = embedder.tokenize(text).map_err(ApiError::internal)?;
        if ids.len() > max_tokens {
            return Err(ApiError::context_length_exceeded(
                "input",
                format!(
                    "`input[{i}]` has {} tokens; this model accepts at most {max_tokens}",
                    ids.len()
                ),
            ));
        }
        inputs.push(ids);
    }
    let prompt_tokens: usize = inputs.iter().map(Vec::len).sum();
    let (reply, answer) = oneshot::channel();
    match queue.try_enqueue(EmbeddingJob { inputs, reply }) {
        Ok(()) => {}
        Err(EnqueueError::Full { capacity }) => {
            return Err(ApiError::queue_full("embedding", capacity));
        }
        Err(EnqueueError::Stopped) => return Err(ApiError::internal("the model thread stopped")),
    }
    let vectors = answer
        .await
        .map_err(|_| ApiError::internal("the model thread stopped"))?
        .map_err(ApiError::internal)?;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = match request.encoding_format {
                EncodingFormat::Float => json!(vector),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    let usage = Usage {
        prompt_tokens,
        completion_tokens: None,
        total_tokens: prompt_tokens,
    };
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": usage,
    }))
    .into_response())
}

/// A prompt the tokenizer refuses: text a character vocabulary does not cover is the client's
/// mistake (422 naming `param`); anything else is the server's.
fn prompt_error(param: &str, error: crate::WorkerError) -> ApiError {
    match error {
        crate::WorkerError::InvalidArgument(message) => {
            ApiError::out_of_range(param, format!("`{param}`: {message}"))
        }
        other => ApiError::internal(other),
    }
}

pub(super) async fn predict(
    State(state): AppStateRef,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_body(&headers, body, state.max_body_bytes).await?;
    let request: PredictRequest = parse_json(&body)?;
    let name = request.model.clone();
    run_prediction(&state, name.as_deref(), request).await
}

/// KServe's v1 route, `POST /v1/models/{name}:predict`.
pub(super) async fn predict_named(
    State(state): AppStateRef,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(name) = id.strip_suffix(":predict") else {
        return Err(ApiError::method_not_allowed());
    };
    let body = read_body(&headers, body, state.max_body_bytes).await?;
    let request: PredictRequest = parse_json(&body)?;
    run_prediction(&state, Some(name), request).await
}

async fn run_prediction(
    state: &AppState,
    name: Option<&str>,
    request: PredictRequest,
) -> Result<Response, ApiError> {
    let model = match name {
        Some(name) => served(state, name)?,
        None => state.model.get().ok_or_else(ApiError::not_ready)?,
    };
    let ServedModel::Prediction { queue, .. } = model else {
        return Err(ApiError::wrong_endpoint(&state.model_id, serves(model)));
    };
    let count = request.instances.len();
    if count == 0 || count > MAX_PREDICT_INSTANCES {
        return Err(ApiError::out_of_range(
            "instances",
            format!("`instances` has {count} objects; accepted: 1 to {MAX_PREDICT_INSTANCES}"),
        ));
    }
    let (reply, answer) = oneshot::channel();
    match queue.try_enqueue(PredictionJob {
        instances: request.instances,
        reply,
    }) {
        Ok(()) => {}
        Err(EnqueueError::Full { capacity }) => {
            return Err(ApiError::queue_full("prediction", capacity));
        }
        Err(EnqueueError::Stopped) => return Err(ApiError::internal("the model thread stopped")),
    }
    let predictions = answer
        .await
        .map_err(|_| ApiError::internal("the model thread stopped"))?
        .map_err(|e| match e {
            crate::WorkerError::InvalidInstance {
                row,
                column,
                reason,
            } => ApiError::invalid_field(format!("instances[{row}].{column}"), reason),
            other => ApiError::internal(other),
        })?;
    Ok(Json(json!({ "predictions": predictions, "model": state.model_id })).into_response())
}

fn response_id(endpoint: Endpoint) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completion => "cmpl",
    };
    format!(
        "{prefix}-{:x}{:06x}",
        unix_now(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
