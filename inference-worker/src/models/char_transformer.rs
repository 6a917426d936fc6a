//! A small decoder-only character-level transformer (GPT-style: learned token and position
//! embeddings, pre-norm blocks of causal multi-head self-attention and a ReLU MLP).
//!
//! ReLU rather than GELU in the block MLP: on candle's CPU backend the tanh-based GELU and its
//! gradient cost over ten times more per element than ReLU and dominated the training step,
//! while a character model of this size learns equally well with either.
//!
//! The vocabulary is the set of characters seen in training, stored in the config.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::mlp::architecture_name;
use super::{
    ArchitectureConfig, Builder, Dense, Init, ParamSource, Params, TextGenerator, read_model,
};
use crate::rng::Rng;
use crate::tokenizer::{ChatTemplate, TextTokenizer};
use crate::{Result, WorkerError};

/// Configuration of a character transformer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CharTransformerConfig {
    /// The characters the model knows, in token-id order.
    pub vocab: Vec<char>,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of transformer blocks.
    pub layers: usize,
    /// Attention heads per block; divides `d_model`.
    pub heads: usize,
    /// Longest context, in characters.
    pub block_size: usize,
}

impl CharTransformerConfig {
    fn check(&self) -> Result<()> {
        if self.vocab.is_empty() || self.d_model == 0 || self.layers == 0 || self.block_size == 0 {
            return Err(WorkerError::InvalidArgument(
                "a char-transformer needs a vocabulary, d_model, layers and block_size above 0"
                    .into(),
            ));
        }
        if self.heads == 0 || !self.d_model.is_multiple_of(self.heads) {
            return Err(WorkerError::InvalidArgument(format!(
                "heads {} must be positive and divide d_model {}",
                self.heads, self.d_model
            )));
        }
        Ok(())
    }

    /// Token ids of `text`; an error names the first character not in the vocabulary.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .map(|c| {
                self.vocab
                    .iter()
                    .position(|&v| v == c)
                    .map(|i| i as u32)
                    .ok_or_else(|| {
                        WorkerError::InvalidArgument(format!(
                            "character {c:?} is not in the model's vocabulary"
                        ))
                    })
            })
            .collect()
    }
}

#[derive(Debug)]
struct Block {
    ln1: (Tensor, Tensor),
    qkv: Dense,
    proj: Dense,
    ln2: (Tensor, Tensor),
    fc1: Dense,
    fc2: Dense,
}

/// A character transformer with its configuration.
#[derive(Debug)]
pub struct CharTransformer {
    config: CharTransformerConfig,
    params: Params,
    tok_emb: Tensor,
    pos_emb: Tensor,
    blocks: Vec<Block>,
    ln_f: (Tensor, Tensor),
    head: Dense,
    device: Device,
}

const INIT_STD: f64 = 0.02;
/// Layer-norm epsilon (also the hand-written training step's).
pub(crate) const LN_EPS: f32 = 1e-5;

impl CharTransformer {
    /// A freshly initialised model, drawn from `rng`.
    pub fn new(config: CharTransformerConfig, rng: &mut Rng, device: &Device) -> Result<Self> {
        Self::build(config, ParamSource::Init(rng), device)
    }

    /// Load a trained model directory (checked against its manifest).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let (config, mut tensors) = read_model(dir, device)?;
        match config.model {
            ArchitectureConfig::CharTransformer(c) => {
                Self::build(c, ParamSource::Loaded(&mut tensors), device)
            }
            other => Err(WorkerError::InvalidArgument(format!(
                "{} holds a {} model, not a char-transformer",
                dir.display(),
                architecture_name(&other)
            ))),
        }
    }

    fn build(
        config: CharTransformerConfig,
        source: ParamSource<'_>,
        device: &Device,
    ) -> Result<Self> {
        config.check()?;
        let (v, d, t) = (config.vocab.len(), config.d_model, config.block_size);
        let mut b = Builder::new(source, device);
        let tok_emb = b.param("tok_emb", (v, d), Init::Normal(INIT_STD))?;
        let pos_emb = b.param("pos_emb", (t, d), Init::Normal(INIT_STD))?;
        let norm = |b: &mut Builder<'_>, name: &str| -> Result<(Tensor, Tensor)> {
            Ok((
                b.param(&format!("{name}.weight"), d, Init::Const(1.0))?,
                b.param(&format!("{name}.bias"), d, Init::Const(0.0))?,
            ))
        };
        let mut blocks = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let p = format!("blocks.{i}");
            blocks.push(Block {
                ln1: norm(&mut b, &format!("{p}.ln1"))?,
                qkv: b.dense(&format!("{p}.qkv"), (d, 3 * d), true, Some(INIT_STD))?,
                proj: b.dense(&format!("{p}.proj"), (d, d), true, Some(INIT_STD))?,
                ln2: norm(&mut b, &format!("{p}.ln2"))?,
                fc1: b.dense(&format!("{p}.fc1"), (d, 4 * d), true, Some(INIT_STD))?,
                fc2: b.dense(&format!("{p}.fc2"), (4 * d, d), true, Some(INIT_STD))?,
            });
        }
        let ln_f = norm(&mut b, "ln_f")?;
        let head = b.dense("head", (d, v), false, Some(INIT_STD))?;
        let device = b.device().clone();
        Ok(CharTransformer {
            config,
            params: b.finish(),
            tok_emb,
            pos_emb,
            blocks,
            ln_f,
            head,
            device,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CharTransformerConfig {
        &self.config
    }

    /// The trainable parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Logits of shape `(batch, time, vocab)` for token ids of shape `(batch, time)`,
    /// `time <= block_size`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (batch, time) = ids.dims2()?;
        if time > self.config.block_size || time == 0 {
            return Err(WorkerError::InvalidArgument(format!(
                "context of {time} characters; this model takes 1 to {}",
                self.config.block_size
            )));
        }
        let d = self.config.d_model;
        let tok = self
            .tok_emb
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((batch, time, d))?;
        let pos = self.pos_emb.narrow(0, 0, time)?;
        let mut x = tok.broadcast_add(&pos)?;
        let mask = causal_mask(time, &self.device)?;
        for block in &self.blocks {
            let h = layer_norm(&x, &block.ln1)?;
            x = (x + self.attention(&h, block, &mask)?)?;
            let h = layer_norm(&x, &block.ln2)?;
            let h = block.fc2.forward(&block.fc1.forward(&h)?.relu()?)?;
            x = (x + h)?;
        }
        self.head.forward(&layer_norm(&x, &self.ln_f)?)
    }

    fn attention(&self, x: &Tensor, block: &Block, mask: &Tensor) -> Result<Tensor> {
        let (batch, time, d) = x.dims3()?;
        let heads = self.config.heads;
        let hd = d / heads;
        let qkv = block.qkv.forward(x)?.reshape((batch, time, 3, heads, hd))?;
        let part = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(2, i, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (hd as f64).sqrt()))?;
        let weights = super::ops::softmax_last_dim(&scores.broadcast_add(mask)?)?;
        let y = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch, time, d))?;
        block.proj.forward(&y)
    }

    /// Continue `prompt` by `max_new` characters. `temperature` 0 picks the most likely
    /// character; above 0 samples from the softened distribution with a seeded generator.
    pub fn generate(
        &self,
        prompt: &str,
        max_new: usize,
        temperature: f64,
        seed: u64,
    ) -> Result<String> {
        let mut ids = self.config.encode(prompt)?;
        if ids.is_empty() {
            return Err(WorkerError::InvalidArgument(
                "the prompt is empty; give at least one character".into(),
            ));
        }
        let mut rng = Rng::new(seed);
        let mut out = String::new();
        for _ in 0..max_new {
            let start = ids.len().saturating_sub(self.config.block_size);
            let context = Tensor::from_slice(&ids[start..], (1, ids.len() - start), &self.device)?;
            let logits = self.forward(&context)?;
            let last: Vec<f32> = logits.squeeze(0)?.get(ids.len() - start - 1)?.to_vec1()?;
            let next = if temperature <= 0.0 {
                super::mlp::argmax(&last)
            } else {
                sample(&last, temperature, &mut rng)
            };
            ids.push(next as u32);
            out.push(self.config.vocab[next]);
        }
        Ok(out)
    }
}

/// Longest sequence (prompt plus output) served. Attention covers the last `block_size`
/// characters; longer sequences slide that window, so this bound only keeps requests finite.
pub const MAX_SERVED_SEQUENCE: usize = 4096;

/// A char-transformer behind the server's [`TextGenerator`] interface: it keeps the sequence
/// so far (the model has no KV cache) and runs the model over its last `block_size`
/// characters for each new character.
pub struct CharGenerator {
    model: CharTransformer,
    tokenizer: TextTokenizer,
    sequence: Vec<u32>,
}

impl CharGenerator {
    pub fn new(model: CharTransformer) -> Self {
        let tokenizer = TextTokenizer::from_chars(model.config.vocab.clone());
        Self {
            model,
            tokenizer,
            sequence: Vec::new(),
        }
    }
}

impl TextGenerator for CharGenerator {
    fn context_length(&self) -> usize {
        MAX_SERVED_SEQUENCE
    }

    fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    fn chat_template(&self) -> ChatTemplate {
        ChatTemplate::Plain
    }

    fn reset(&mut self) {
        self.sequence.clear();
    }

    fn next_logits(&mut self, tokens: &[u32], start: usize) -> Result<Vec<f32>> {
        self.sequence.truncate(start);
        self.sequence.extend_from_slice(tokens);
        let window = &self.sequence[self
            .sequence
            .len()
            .saturating_sub(self.model.config.block_size)..];
        if window.is_empty() {
            return Err(WorkerError::InvalidArgument(
                "the prompt is empty; give at least one character".into(),
            ));
        }
        let ids = Tensor::from_slice(window, (1, window.len()), &self.model.device)?;
        let logits = self.model.forward(&ids)?;
        Ok(logits.squeeze(0)?.get(window.len() - 1)?.to_vec1()?)
    }
}

fn sample(logits: &[f32], temperature: f64, rng: &mut Rng) -> usize {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / temperature).exp())
        .collect();
    let mut r = rng.next_f64() * weights.iter().sum::<f64>();
    for (i, w) in weights.iter().enumerate() {
        r -= w;
        if r < 0.0 {
            return i;
        }
    }
    weights.len() - 1
}

/// 0 on and below the diagonal, a large negative number above it.
fn causal_mask(time: usize, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..time)
        .flat_map(|i| (0..time).map(move |j| if j <= i { 0.0 } else { -1e9 }))
        .collect();
    Ok(Tensor::from_vec(values, (time, time), device)?)
}

/// Layer normalisation over the last dimension, written with differentiable primitives.
fn layer_norm(x: &Tensor, (weight, bias): &(Tensor, Tensor)) -> Result<Tensor> {
    Ok(candle_nn::ops::layer_norm_slow(x, weight, bias, LN_EPS)?)
}
