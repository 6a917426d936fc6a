//! The model side of the server: one thread owns the model and works through a bounded
//! queue. Generation decodes up to `max_batch` requests together within a key/value cache
//! budget, one sequence each (one at a time for models that keep one); embeddings gather
//! every waiting request into one batch up to `max_batch` inputs.
//! A request whose client went away is dropped from the work as soon as it is noticed.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::api::types::FinishReason;
use crate::error::WorkerError;
use crate::models::{Embedder, Predictor, SlotFeed, TextGenerator};
use crate::sampling::{Sampler, SamplingParams};
use crate::serve::metrics::{Metrics, Queue};

/// One generation request, already tokenized and validated.
pub struct GenerationJob {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub events: mpsc::UnboundedSender<GenerationEvent>,
    pub enqueued: Instant,
}

/// What the model thread reports about a generation job.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// New text, never a partial UTF-8 character or a partial stop string.
    Text(String),
    Finished {
        reason: FinishReason,
        completion_tokens: usize,
    },
    Failed(String),
}

/// One embedding request: tokenized inputs and where to send their vectors.
pub struct EmbeddingJob {
    pub inputs: Vec<Vec<u32>>,
    pub reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

/// One prediction request: its instances and where to send the predictions (or why the
/// model could not take them).
pub struct PredictionJob {
    pub instances: Vec<serde_json::Map<String, serde_json::Value>>,
    pub reply: oneshot::Sender<Result<Vec<serde_json::Value>, WorkerError>>,
}

/// The sending half of a model queue.
pub struct QueueHandle<J> {
    sender: mpsc::Sender<J>,
    capacity: usize,
    queue: Queue,
    metrics: Arc<Metrics>,
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum EnqueueError {
    Full { capacity: usize },
    Stopped,
}

impl<J> QueueHandle<J> {
    pub fn try_enqueue(&self, job: J) -> Result<(), EnqueueError> {
        self.metrics.enqueued(self.queue);
        self.sender.try_send(job).map_err(|e| {
            self.metrics.dequeued(self.queue);
            match e {
                mpsc::error::TrySendError::Full(_) => EnqueueError::Full {
                    capacity: self.capacity,
                },
                mpsc::error::TrySendError::Closed(_) => EnqueueError::Stopped,
            }
        })
    }
}

/// How many requests the generation thread decodes together.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most requests at once (`--max-batch`).
    pub max_requests: usize,
    /// Most bytes their key/value caches may reserve (`--kv-cache-mib`): each request
    /// reserves its prompt plus `max_tokens` positions.
    pub cache_bytes: usize,
}

/// Starts the thread that owns a generator. It decodes requests together, as many as
/// `batching` allows and the model holds ([`TextGenerator::sequences`]): each pass feeds the
/// prompts of newly admitted requests and the last token of every running one, so a request
/// waits for the model only until the next pass, not until the others finish.
pub fn spawn_generation(
    model: Box<dyn TextGenerator>,
    capacity: usize,
    batching: Batching,
    metrics: Arc<Metrics>,
) -> Result<QueueHandle<GenerationJob>, WorkerError> {
    let (sender, receiver) = mpsc::channel::<GenerationJob>(capacity);
    let thread_metrics = metrics.clone();
    std::thread::Builder::new()
        .name("generation".into())
        .spawn(move || generate(model, receiver, batching, &thread_metrics))
        .map_err(|e| WorkerError::io("generation thread", e))?;
    Ok(QueueHandle {
        sender,
        capacity,
        queue: Queue::Generation,
        metrics,
    })
}

/// The generation thread's loop, until the queue closes.
fn generate(
    mut model: Box<dyn TextGenerator>,
    mut receiver: mpsc::Receiver<GenerationJob>,
    batching: Batching,
    metrics: &Metrics,
) {
    let slots = model.sequences().min(batching.max_requests).max(1);
    let per_position = model.cache_bytes_per_position();
    let mut free: Vec<usize> = (0..slots).rev().collect();
    let mut running: Vec<Running> = Vec::new();
    // Cache bytes the running requests reserve.
    let mut reserved = 0;
    // The next request, taken from the queue but waiting for room in the cache budget.
    let mut next: Option<GenerationJob> = None;
    loop {
        // Admit waiting requests into free slots; wait only when nothing is running.
        while let Some(&slot) = free.last() {
            let job = match next.take() {
                Some(job) => job,
                None if running.is_empty() => match receiver.blocking_recv() {
                    Some(job) => job,
                    None => return,
                },
                None => match receiver.try_recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            if job.events.is_closed() {
                metrics.dequeued(Queue::Generation);
                continue;
            }
            if job.prompt.is_empty() {
                // The handlers refuse empty prompts; a job without one would never be fed.
                metrics.dequeued(Queue::Generation);
                let _ = job
                    .events
                    .send(GenerationEvent::Failed("the prompt is empty".into()));
                continue;
            }
            let need = (job.prompt.len() + job.max_tokens) * per_position;
            if !running.is_empty() && reserved + need > batching.cache_bytes {
                // It waits, still counted as queued, until running requests end.
                next = Some(job);
                break;
            }
            metrics.dequeued(Queue::Generation);
            metrics.add_tokens(job.prompt.len(), 0);
            reserved += need;
            free.pop();
            running.push(Running::new(job, slot, need));
        }
        let passes = run_pass(model.as_mut(), &running, metrics);
        let mut passes = passes.into_iter();
        running.retain_mut(|job| {
            let more = match passes.next() {
                // Not fed in this pass: its prompt waits for a later pass.
                Some(Pass::Waited) | None => Ok(true),
                Some(Pass::Fed { tokens, logits }) => {
                    job.fed(tokens, &logits, model.as_ref(), metrics)
                }
                Some(Pass::Failed(error)) => Err(error),
            };
            match more {
                Ok(true) => true,
                Ok(false) | Err(_) => {
                    if let Err(error) = more {
                        let _ = job.job.events.send(GenerationEvent::Failed(error));
                    }
                    model.release(job.slot);
                    free.push(job.slot);
                    reserved -= job.reserved;
                    false
                }
            }
        });
    }
}

/// What one pass did for one running request.
enum Pass {
    /// Nothing: its prompt waits for the next pass's budget.
    Waited,
    /// It fed `tokens` tokens; `logits` follow the last.
    Fed {
        tokens: usize,
        logits: Vec<f32>,
    },
    Failed(String),
}

/// One pass through the model: a token for each decoding request, and prompt tokens up to
/// [`PASS_PROMPT_TOKENS`]. One entry per running request, in order.
fn run_pass(model: &mut dyn TextGenerator, running: &[Running], metrics: &Metrics) -> Vec<Pass> {
    let mut budget = PASS_PROMPT_TOKENS;
    let planned: Vec<Option<SlotFeed<'_>>> =
        running.iter().map(|job| job.feed(&mut budget)).collect();
    let batch: Vec<SlotFeed<'_>> = planned.iter().flatten().copied().collect();
    metrics.observe_batch(batch.len());
    let mut results: Vec<Result<Vec<f32>, WorkerError>> = match model.feed(&batch) {
        Ok(logits) => logits.into_iter().map(Ok).collect(),
        // One bad entry must not fail the others: feed them one at a time (a failed feed
        // changes nothing, so this repeats no work).
        Err(_) if batch.len() > 1 => batch
            .iter()
            .map(|f| model.feed(std::slice::from_ref(f)).map(|mut l| l.remove(0)))
            .collect(),
        Err(error) => vec![Err(error)],
    }
    .into_iter()
    .rev()
    .collect();
    planned
        .iter()
        .map(|feed| match (feed, feed.and_then(|_| results.pop())) {
            (Some(feed), Some(Ok(logits))) => Pass::Fed {
                tokens: feed.tokens.len(),
                logits,
            },
            (Some(_), Some(Err(error))) => Pass::Failed(error.to_string()),
            (Some(_), None) => Pass::Failed("the model returned too few logits".into()),
            (None, _) => Pass::Waited,
        })
        .collect()
}

/// Most prompt tokens one pass feeds. A long prompt is fed over several passes, so the
/// requests already decoding get a token at least every pass of this many rows (about
/// 0.7 s for SmolLM2-135M on two cores) instead of waiting for the whole prompt.
pub const PASS_PROMPT_TOKENS: usize = 256;

/// A request being decoded in one of the model's sequence slots.
struct Running {
    job: GenerationJob,
    slot: usize,
    /// Cache bytes reserved for it.
    reserved: usize,
    /// Prompt tokens fed so far.
    prompt_fed: usize,
    sampler: Sampler,
    stream: TextStream,
    generated: Vec<u32>,
}

impl Running {
    fn new(mut job: GenerationJob, slot: usize, reserved: usize) -> Self {
        Self {
            reserved,
            sampler: Sampler::new(job.sampling.clone()),
            stream: TextStream::new(std::mem::take(&mut job.stop)),
            generated: Vec::new(),
            prompt_fed: 0,
            job,
            slot,
        }
    }

    /// What the next pass feeds: the prompt, in pieces of at most what is left of
    /// `budget` (nothing when none is left), then each sampled token.
    fn feed(&self, budget: &mut usize) -> Option<SlotFeed<'_>> {
        let prompt = &self.job.prompt;
        if self.prompt_fed < prompt.len() {
            let take = (prompt.len() - self.prompt_fed).min(*budget);
            if take == 0 {
                return None;
            }
            *budget -= take;
            return Some(SlotFeed {
                slot: self.slot,
                tokens: &prompt[self.prompt_fed..self.prompt_fed + take],
                start: self.prompt_fed,
            });
        }
        let last = self.generated.last()?;
        Some(SlotFeed {
            slot: self.slot,
            tokens: std::slice::from_ref(last),
            start: prompt.len() + self.generated.len() - 1,
        })
    }

    /// Takes the logits after a pass that fed `tokens` tokens of this request: the prompt
    /// goes on, or the next token is sampled ([`advance`](Self::advance)).
    fn fed(
        &mut self,
        tokens: usize,
        logits: &[f32],
        model: &dyn TextGenerator,
        metrics: &Metrics,
    ) -> Result<bool, String> {
        if self.prompt_fed < self.job.prompt.len() {
            self.prompt_fed += tokens;
            if self.prompt_fed < self.job.prompt.len() {
                return Ok(!self.job.events.is_closed());
            }
        }
        self.advance(model, logits, metrics)
    }

    /// Samples the next token from `logits` and sends what text it completes. `Ok(false)`
    /// when the request is over: finished, or its client went away.
    fn advance(
        &mut self,
        model: &dyn TextGenerator,
        logits: &[f32],
        metrics: &Metrics,
    ) -> Result<bool, String> {
        let events = &self.job.events;
        if events.is_closed() {
            // The client went away: nobody reads the rest.
            return Ok(false);
        }
        let token = self.sampler.next_token(logits);
        let reason = if model.tokenizer().stop_ids.contains(&token) {
            FinishReason::Stop
        } else {
            self.generated.push(token);
            metrics.add_tokens(0, 1);
            if self.generated.len() == 1 {
                metrics.observe_time_to_first_token(self.job.enqueued.elapsed());
            }
            let text = model
                .tokenizer()
                .decode(&self.generated)
                .map_err(|e| e.to_string())?;
            let (delta, stopped) = self.stream.advance(&text);
            if !delta.is_empty() {
                let _ = events.send(GenerationEvent::Text(delta));
            }
            if stopped {
                FinishReason::Stop
            } else if self.generated.len() >= self.job.max_tokens {
                let rest = self.stream.flush(&text);
                if !rest.is_empty() {
                    let _ = events.send(GenerationEvent::Text(rest));
                }
                FinishReason::Length
            } else {
                return Ok(true);
            }
        };
        let _ = events.send(GenerationEvent::Finished {
            reason,
            completion_tokens: self.generated.len(),
        });
        Ok(false)
    }
}

/// Turns the growing decoded text into deltas that are safe to send: text that could still
/// become a stop string, or an incomplete character, is held back.
struct TextStream {
    stop: Vec<String>,
    sent: usize,
}

impl TextStream {
    fn new(stop: Vec<String>) -> Self {
        Self { stop, sent: 0 }
    }

    /// The new text to send, and whether a stop string ended the output.
    fn advance(&mut self, text: &str) -> (String, bool) {
        let unsent = text.get(self.sent..).unwrap_or_default();
        if let Some(end) = self
            .stop
            .iter()
            .filter_map(|s| unsent.find(s.as_str()))
            .min()
        {
            let delta = unsent[..end].to_string();
            self.sent += end;
            return (delta, true);
        }
        // A trailing replacement character is an unfinished multi-byte character.
        let complete = text.strip_suffix('\u{FFFD}').unwrap_or(text);
        let mut safe = complete.len();
        for stop in &self.stop {
            for (i, _) in stop.char_indices().skip(1) {
                if complete.ends_with(&stop[..i]) {
                    safe = safe.min(complete.len() - i);
                }
            }
        }
        match text.get(self.sent..safe) {
            Some(delta) if !delta.is_empty() => {
                let delta = delta.to_string();
                self.sent = safe;
                (delta, false)
            }
            _ => (String::new(), false),
        }
    }

    /// Everything not yet sent (the output ended without a stop string).
    fn flush(&mut self, text: &str) -> String {
        let rest = text.get(self.sent..).unwrap_or_default().to_string();
        self.sent = text.len();
        rest
    }
}

/// Starts the thread that owns an embedder.
pub fn spawn_embedding(
    model: Arc<dyn Embedder>,
    capacity: usize,
    max_batch: usize,
    metrics: Arc<Metrics>,
) -> Result<QueueHandle<EmbeddingJob>, WorkerError> {
    let (sender, mut receiver) = mpsc::channel::<EmbeddingJob>(capacity);
    let thread_metrics = metrics.clone();
    std::thread::Builder::new()
        .name("embedding".into())
        .spawn(move || {
            while let Some(first) = receiver.blocking_recv() {
                thread_metrics.dequeued(Queue::Embedding);
                let mut jobs = vec![first];
                let mut inputs = jobs[0].inputs.len();
                while inputs < max_batch {
                    match receiver.try_recv() {
                        Ok(job) => {
                            thread_metrics.dequeued(Queue::Embedding);
                            inputs += job.inputs.len();
                            jobs.push(job);
                        }
                        Err(_) => break,
                    }
                }
                jobs.retain(|job| !job.reply.is_closed());
                if jobs.is_empty() {
                    continue;
                }
                let all: Vec<Vec<u32>> = jobs
                    .iter()
                    .flat_map(|job| job.inputs.iter().cloned())
                    .collect();
                thread_metrics.observe_batch(all.len());
                match model.embed(&all) {
                    Ok(vectors) => {
                        let mut vectors = vectors.into_iter();
                        for job in jobs {
                            let mine: Vec<Vec<f32>> =
                                vectors.by_ref().take(job.inputs.len()).collect();
                            let _ = job.reply.send(Ok(mine));
                        }
                    }
                    Err(error) => {
                        for job in jobs {
                            let _ = job.reply.send(Err(error.to_string()));
                        }
                    }
                }
            }
        })
        .map_err(|e| WorkerError::io("embedding thread", e))?;
    Ok(QueueHandle {
        sender,
        capacity,
        queue: Queue::Embedding,
        metrics,
    })
}

/// Starts the thread that owns a predictor; requests run one at a time (each is one batched
/// forward pass over its instances).
pub fn spawn_prediction(
    model: Arc<dyn Predictor>,
    capacity: usize,
    metrics: Arc<Metrics>,
) -> Result<QueueHandle<PredictionJob>, WorkerError> {
    let (sender, mut receiver) = mpsc::channel::<PredictionJob>(capacity);
    let thread_metrics = metrics.clone();
    std::thread::Builder::new()
        .name("prediction".into())
        .spawn(move || {
            while let Some(job) = receiver.blocking_recv() {
                thread_metrics.dequeued(Queue::Prediction);
                if job.reply.is_closed() {
                    continue;
                }
                thread_metrics.observe_batch(job.instances.len());
                let _ = job.reply.send(model.predict_json(&job.instances));
            }
        })
        .map_err(|e| WorkerError::io("prediction thread", e))?;
    Ok(QueueHandle {
        sender,
        capacity,
        queue: Queue::Prediction,
        metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stop: &[&str], steps: &[&str]) -> (String, bool) {
        let mut stream = TextStream::new(stop.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for text in steps {
            let (delta, stopped) = stream.advance(text);
            out.push_str(&delta);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&stream.flush(steps.last().unwrap()));
        (out, false)
    }

    #[test]
    fn stop_string_split_across_tokens_is_never_sent() {
        let mut stream = TextStream::new(vec!["END".into()]);
        assert_eq!(stream.advance("Paris E"), ("Paris ".to_string(), false));
        assert_eq!(stream.advance("Paris EN"), (String::new(), false));
        assert_eq!(stream.advance("Paris END."), (String::new(), true));
        assert_eq!(
            run(&["END"], &["Paris E", "Paris EN", "Paris END"]).0,
            "Paris "
        );
    }

    #[test]
    fn held_back_prefix_is_released_when_it_does_not_become_a_stop() {
        assert_eq!(
            run(&["END"], &["a E", "a Ex", "a Ex!"]),
            ("a Ex!".to_string(), false)
        );
    }

    #[test]
    fn incomplete_characters_wait_for_their_last_byte() {
        let mut stream = TextStream::new(vec![]);
        assert_eq!(stream.advance("caf\u{FFFD}"), ("caf".to_string(), false));
        assert_eq!(stream.advance("café"), ("é".to_string(), false));
    }
}
