//! A llama-family decoder on the CPU over quantized GGUF weights, computing what llama.cpp
//! computes: RMS norm (sum of squares in f64), interleaved rotary embeddings, grouped-query
//! attention with a KV cache, a SiLU-gated feed-forward block, and the output projection of
//! the last position only. Every linear layer is a [`QMatrix`] product.

use rayon::prelude::*;

use crate::QuantError;
use crate::formats::WeightFormat;
use crate::kernels::Isa;
use crate::matmul::{Activations, QMatrix};

/// Hyper-parameters, from the GGUF metadata (`llama.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub layers: usize,
    pub embedding: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub feed_forward: usize,
    pub rope_base: f32,
    pub rope_dimensions: usize,
    pub rms_epsilon: f32,
    /// Positions the model may attend over (prompt plus output).
    pub context_length: usize,
}

impl LlamaConfig {
    fn head_dim(&self) -> usize {
        self.embedding / self.heads
    }

    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim()
    }

    fn validate(&self) -> Result<(), QuantError> {
        let head_dim = self.embedding / self.heads.max(1);
        let ok = self.layers > 0
            && self.heads > 0
            && self.kv_heads > 0
            && self.embedding.is_multiple_of(self.heads)
            && self.heads.is_multiple_of(self.kv_heads)
            && self.rope_dimensions.is_multiple_of(2)
            && self.rope_dimensions <= head_dim
            && self.context_length > 0;
        if ok {
            Ok(())
        } else {
            Err(QuantError::Model(format!(
                "inconsistent hyper-parameters {self:?}: heads must divide the embedding, kv heads the heads, and the rope dimensions must be even and at most the head size"
            )))
        }
    }
}

/// A tensor's element type as stored in the GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorFormat {
    F32,
    Quantized(WeightFormat),
    /// Any other type, by its GGUF name; models using it are not supported here.
    Other(String),
}

/// One tensor's raw bytes. `dims` are row-major (`[rows, cols]` for a matrix: one row per
/// output, as GGUF stores linear layers).
#[derive(Debug, Clone)]
pub struct RawTensor {
    pub format: TensorFormat,
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

struct Layer {
    attn_norm: Vec<f32>,
    q: QMatrix,
    k: QMatrix,
    v: QMatrix,
    o: QMatrix,
    ffn_norm: Vec<f32>,
    gate: QMatrix,
    up: QMatrix,
    down: QMatrix,
}

/// Keys and values of the positions seen so far, `[position][kv_heads * head_dim]`.
#[derive(Default)]
struct KvCache {
    k: Vec<f32>,
    v: Vec<f32>,
}

/// One sequence's state: every layer's keys and values at the positions fed so far. A
/// model decodes any number of sequences, together or one at a time ([`Llama::forward_many`]).
#[derive(Default)]
pub struct Sequence {
    cache: Vec<KvCache>,
    /// Positions in the cache.
    len: usize,
}

impl Sequence {
    /// Positions fed so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Tokens for one sequence in a [`Llama::forward_many`] pass: they go at positions
/// `start..start + tokens.len()`, `start` at most the positions already fed (the positions
/// from `start` on are replaced).
pub struct Feed<'a> {
    pub sequence: &'a mut Sequence,
    pub tokens: &'a [u32],
    pub start: usize,
}

/// The model, and the state of the sequence that [`Llama::forward`] decodes.
pub struct Llama {
    config: LlamaConfig,
    isa: Isa,
    embedding: QMatrix,
    /// `None`: the output projection is the embedding matrix (tied weights).
    output: Option<QMatrix>,
    norm: Vec<f32>,
    layers: Vec<Layer>,
    sequence: Sequence,
}

impl Llama {
    /// Builds the model from the GGUF tensors `tensor(name)` returns (`Ok(None)` when the
    /// file has no such tensor). Linear layers must be `Q4_1` or `Q8_0`, norms `F32`.
    pub fn load(
        config: LlamaConfig,
        mut tensor: impl FnMut(&str) -> Result<Option<RawTensor>, QuantError>,
    ) -> Result<Self, QuantError> {
        config.validate()?;
        let mut get = |name: &str| {
            tensor(name)?.ok_or_else(|| QuantError::Model(format!("missing tensor `{name}`")))
        };
        let e = config.embedding;
        let kv = config.kv_width();
        let ff = config.feed_forward;
        let embedding = matrix("token_embd.weight", get("token_embd.weight")?, None, e)?;
        let vocabulary = embedding.rows();
        let output = match tensor("output.weight")? {
            Some(raw) => Some(matrix("output.weight", raw, Some(vocabulary), e)?),
            None => None,
        };
        let mut get = |name: &str| {
            tensor(name)?.ok_or_else(|| QuantError::Model(format!("missing tensor `{name}`")))
        };
        let norm = vector("output_norm.weight", get("output_norm.weight")?, e)?;
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let mut m = |suffix: &str, rows: usize, cols: usize| {
                let name = format!("blk.{i}.{suffix}.weight");
                let raw = get(&name)?;
                matrix(&name, raw, Some(rows), cols)
            };
            let q = m("attn_q", e, e)?;
            let k = m("attn_k", kv, e)?;
            let v = m("attn_v", kv, e)?;
            let o = m("attn_output", e, e)?;
            let gate = m("ffn_gate", ff, e)?;
            let up = m("ffn_up", ff, e)?;
            let down = m("ffn_down", e, ff)?;
            let attn_norm = format!("blk.{i}.attn_norm.weight");
            let ffn_norm = format!("blk.{i}.ffn_norm.weight");
            layers.push(Layer {
                attn_norm: vector(&attn_norm, get(&attn_norm)?, e)?,
                ffn_norm: vector(&ffn_norm, get(&ffn_norm)?, e)?,
                q,
                k,
                v,
                o,
                gate,
                up,
                down,
            });
        }
        // The feed-forward gate is the commonest shape of matrix in the model.
        let isa = kernels_for(&layers[0].gate, std::env::var_os("AIGC_QUANT_ISA"))?;
        Ok(Self {
            config,
            isa,
            embedding,
            output,
            norm,
            layers,
            sequence: Sequence::default(),
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The instruction set the matrix products use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Uses the kernels of `isa` (one of [`Isa::available`]) from now on.
    pub fn set_isa(&mut self, isa: Isa) -> Result<(), QuantError> {
        if !Isa::available().contains(&isa) {
            return Err(QuantError::Unsupported(format!(
                "{} kernels on this CPU",
                isa.name()
            )));
        }
        self.isa = isa;
        Ok(())
    }

    pub fn vocabulary(&self) -> usize {
        self.embedding.rows()
    }

    /// Bytes a [`Sequence`] holds per position fed: every layer's key and value (f32).
    pub fn cache_bytes_per_position(&self) -> usize {
        self.config.layers * 2 * self.config.kv_width() * std::mem::size_of::<f32>()
    }

    /// Forgets the sequence.
    pub fn reset(&mut self) {
        self.sequence = Sequence::default();
    }

    /// Feeds `tokens` at positions `start..start + tokens.len()` and returns the logits of
    /// the token after the last one. `start` may be at most the number of positions already
    /// fed; positions from `start` on are replaced.
    pub fn forward(&mut self, tokens: &[u32], start: usize) -> Result<Vec<f32>, QuantError> {
        let mut sequence = std::mem::take(&mut self.sequence);
        let logits = self.forward_many(&mut [Feed {
            sequence: &mut sequence,
            tokens,
            start,
        }]);
        self.sequence = sequence;
        Ok(logits?.swap_remove(0))
    }

    /// Feeds several sequences in one pass, one row per token: each matrix is read once for
    /// all of them (a decode step of many sequences costs little more than one), while
    /// attention runs over each sequence's own positions. Returns the logits after each
    /// feed's last token; every row is computed exactly as a pass of its own would. Nothing
    /// changes when a feed is invalid.
    pub fn forward_many(&self, feeds: &mut [Feed<'_>]) -> Result<Vec<Vec<f32>>, QuantError> {
        if rayon::current_thread_index().is_some() {
            return self.forward_here(feeds);
        }
        // Run the whole pass on one of rayon's threads, the caller sleeping meanwhile:
        // otherwise the caller's serial parts (norms, attention, quantizing) compete for the
        // cores with pool threads that spin between the parallel matmuls.
        rayon::scope(|_| self.forward_here(feeds))
    }

    fn check(&self, feed: &Feed<'_>) -> Result<(), QuantError> {
        let (tokens, start) = (feed.tokens, feed.start);
        if tokens.is_empty() {
            return Err(QuantError::Model("forward needs at least one token".into()));
        }
        if start > feed.sequence.len {
            return Err(QuantError::Model(format!(
                "start position {start} is past the {} positions fed so far",
                feed.sequence.len
            )));
        }
        let context = self.config.context_length;
        if start + tokens.len() > context {
            return Err(QuantError::Model(format!(
                "positions {start}..{} exceed the context length {context}",
                start + tokens.len(),
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.vocabulary()) {
            return Err(QuantError::Model(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.vocabulary()
            )));
        }
        Ok(())
    }

    fn forward_here(&self, feeds: &mut [Feed<'_>]) -> Result<Vec<Vec<f32>>, QuantError> {
        let c = &self.config;
        let (e, kv, hd) = (c.embedding, c.kv_width(), c.head_dim());
        if feeds.is_empty() {
            return Ok(Vec::new());
        }
        for feed in feeds.iter() {
            self.check(feed)?;
        }
        // Each row's feed and position.
        let rows: Vec<(usize, usize)> = feeds
            .iter()
            .enumerate()
            .flat_map(|(f, feed)| (feed.start..feed.start + feed.tokens.len()).map(move |p| (f, p)))
            .collect();
        let n = rows.len();
        let mut x = vec![0f32; n * e];
        let tokens = feeds.iter().flat_map(|feed| feed.tokens);
        for (row, &t) in x.chunks_exact_mut(e).zip(tokens) {
            self.embedding.dequantize_row(t as usize, row)?;
        }
        for feed in feeds.iter_mut() {
            feed.sequence.cache.resize_with(c.layers, KvCache::default);
        }
        let rope = RopeTable::new(c, rows.iter().map(|&(_, p)| p));
        let mut h = vec![0f32; n * e];
        let mut acts = Activations::default();
        let mut q = vec![0f32; n * e];
        let mut k = vec![0f32; n * kv];
        let mut v = vec![0f32; n * kv];
        let mut attn = vec![0f32; n * e];
        let mut proj = vec![0f32; n * e];
        let mut gate = vec![0f32; n * c.feed_forward];
        let mut up = vec![0f32; n * c.feed_forward];
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, c.rms_epsilon, &mut h);
            acts.quantize(&h, e)?;
            QMatrix::matmul_quantized_many(
                &mut [(&layer.q, &mut q), (&layer.k, &mut k), (&layer.v, &mut v)],
                &acts,
                self.isa,
            )?;
            rope.apply(&mut q, hd);
            rope.apply(&mut k, hd);
            let mut first = 0;
            for feed in feeds.iter_mut() {
                let rows = first..first + feed.tokens.len();
                let cache = &mut feed.sequence.cache[l];
                cache.k.truncate(feed.start * kv);
                cache.v.truncate(feed.start * kv);
                cache
                    .k
                    .extend_from_slice(&k[rows.start * kv..rows.end * kv]);
                cache
                    .v
                    .extend_from_slice(&v[rows.start * kv..rows.end * kv]);
                first = rows.end;
            }
            let caches: Vec<&KvCache> = feeds.iter().map(|f| &f.sequence.cache[l]).collect();
            attention(c, &caches, &rows, &q, &mut attn);
            acts.quantize(&attn, e)?;
            layer.o.matmul_quantized(&acts, &mut proj, self.isa)?;
            add(&mut x, &proj);
            rms_norm(&x, &layer.ffn_norm, c.rms_epsilon, &mut h);
            acts.quantize(&h, e)?;
            QMatrix::matmul_quantized_many(
                &mut [(&layer.gate, &mut gate), (&layer.up, &mut up)],
                &acts,
                self.isa,
            )?;
            rows_in_parallel(&mut gate, &up, c.feed_forward, |g, u| {
                for (g, u) in g.iter_mut().zip(u) {
                    *g = *g / (1.0 + (-*g).exp()) * u;
                }
            });
            acts.quantize(&gate, c.feed_forward)?;
            layer.down.matmul_quantized(&acts, &mut proj, self.isa)?;
            add(&mut x, &proj);
        }
        // The last row of each feed, normed and projected onto the vocabulary together.
        let mut last = Vec::with_capacity(feeds.len() * e);
        let mut end = 0;
        for feed in feeds.iter_mut() {
            end += feed.tokens.len();
            last.extend_from_slice(&x[(end - 1) * e..end * e]);
            feed.sequence.len = feed.start + feed.tokens.len();
        }
        let mut normed = vec![0f32; last.len()];
        rms_norm(&last, &self.norm, c.rms_epsilon, &mut normed);
        let output = self.output.as_ref().unwrap_or(&self.embedding);
        let mut logits = vec![0f32; feeds.len() * output.rows()];
        acts.quantize(&normed, e)?;
        output.matmul_quantized(&acts, &mut logits, self.isa)?;
        Ok(logits
            .chunks_exact(output.rows())
            .map(<[f32]>::to_vec)
            .collect())
    }
}

/// The kernels `chosen` names (`AIGC_QUANT_ISA`, for benchmarks and comparisons), else the
/// ones that multiply `typical` fastest on this CPU.
fn kernels_for(typical: &QMatrix, chosen: Option<std::ffi::OsString>) -> Result<Isa, QuantError> {
    let Some(name) = chosen else {
        return Ok(typical.fastest_isa());
    };
    let available = Isa::available();
    let name = name.to_string_lossy();
    available
        .iter()
        .find(|isa| isa.name() == name)
        .copied()
        .ok_or_else(|| {
            let names: Vec<&str> = available.iter().map(|isa| isa.name()).collect();
            QuantError::Unsupported(format!(
                "AIGC_QUANT_ISA={name}: this CPU runs {}",
                names.join(", ")
            ))
        })
}

fn matrix(
    name: &str,
    raw: RawTensor,
    rows: Option<usize>,
    cols: usize,
) -> Result<QMatrix, QuantError> {
    let TensorFormat::Quantized(format) = raw.format else {
        return Err(QuantError::Unsupported(format!(
            "tensor `{name}` is {:?}; the CPU kernels take Q4_1 and Q8_0",
            raw.format
        )));
    };
    match raw.dims[..] {
        [r, k] if k == cols && rows.is_none_or(|rows| rows == r) => {
            QMatrix::new(format, r, k, raw.data)
                .map_err(|e| QuantError::Model(format!("tensor `{name}`: {e}")))
        }
        _ => Err(QuantError::Model(format!(
            "tensor `{name}` has shape {:?}, expected [{}, {cols}]",
            raw.dims,
            rows.map_or("rows".to_string(), |r| r.to_string())
        ))),
    }
}

fn vector(name: &str, raw: RawTensor, len: usize) -> Result<Vec<f32>, QuantError> {
    if raw.format != TensorFormat::F32 || raw.dims != [len] || raw.data.len() != 4 * len {
        return Err(QuantError::Model(format!(
            "tensor `{name}` is {:?} {:?}, expected F32 [{len}]",
            raw.format, raw.dims
        )));
    }
    Ok(raw
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// `out = x / rms(x) * weight`, row by row, the mean of squares summed in f64 as llama.cpp
/// does.
fn rms_norm(x: &[f32], weight: &[f32], epsilon: f32, out: &mut [f32]) {
    let e = weight.len();
    rows_in_parallel(out, x, e, |out, row| {
        let sum: f64 = row.iter().map(|&v| f64::from(v * v)).sum();
        let mean = (sum / e as f64) as f32;
        let scale = 1.0 / (mean + epsilon).sqrt();
        for ((o, &v), &w) in out.iter_mut().zip(row).zip(weight) {
            *o = v * scale * w;
        }
    });
}

/// `f(x row, y row)` for every row of `width` values, spread over the threads when there
/// are several rows (a prompt); one row (a decode step) is too little work to hand off.
fn rows_in_parallel(x: &mut [f32], y: &[f32], width: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) {
    if x.len() > width && rayon::current_num_threads() > 1 {
        x.par_chunks_exact_mut(width)
            .zip(y.par_chunks_exact(width))
            .for_each(|(x, y)| f(x, y));
    } else {
        x.chunks_exact_mut(width)
            .zip(y.chunks_exact(width))
            .for_each(|(x, y)| f(x, y));
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// cos and sin of every rotated pair at each new position (llama.cpp's incremental
/// `theta *= base^(-2/d)`), shared by all layers and heads.
struct RopeTable {
    /// `[position][pair] -> (cos, sin)`.
    values: Vec<(f32, f32)>,
    pairs: usize,
}

impl RopeTable {
    /// The angles at each of `positions`, one row each.
    fn new(config: &LlamaConfig, positions: impl Iterator<Item = usize>) -> Self {
        let pairs = config.rope_dimensions / 2;
        let scale = config.rope_base.powf(-2.0 / config.rope_dimensions as f32);
        let mut values = Vec::new();
        for p in positions {
            let mut theta = p as f32;
            for _ in 0..pairs {
                values.push((theta.cos(), theta.sin()));
                theta *= scale;
            }
        }
        Self { values, pairs }
    }

    /// Rotates the consecutive pairs `(x[2i], x[2i + 1])` of every head of every row.
    fn apply(&self, x: &mut [f32], head_dim: usize) {
        let rows = self.values.len() / self.pairs.max(1);
        let width = x.len() / rows.max(1);
        for (row, angles) in x
            .chunks_exact_mut(width)
            .zip(self.values.chunks_exact(self.pairs))
        {
            for head in row.chunks_exact_mut(head_dim) {
                for (pair, &(cos, sin)) in head.chunks_exact_mut(2).zip(angles) {
                    let (x0, x1) = (pair[0], pair[1]);
                    pair[0] = x0 * cos - x1 * sin;
                    pair[1] = x0 * sin + x1 * cos;
                }
            }
        }
    }
}

/// Causal grouped-query attention of the rows of `q`, each over the positions of its own
/// sequence up to its own (`rows[i]` is row `i`'s index into `caches` and position), into
/// `out` (`[rows][heads * head_dim]`). Every (row, head) is a task of its own, so that a
/// decode step's single row spreads over the threads too.
fn attention(
    config: &LlamaConfig,
    caches: &[&KvCache],
    rows: &[(usize, usize)],
    q: &[f32],
    out: &mut [f32],
) {
    let (e, hd, kv) = (config.embedding, config.head_dim(), config.kv_width());
    let group = config.heads / config.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let one_head = |task: usize, oh: &mut [f32]| {
        let (t, head) = (task / config.heads, task % config.heads);
        let (sequence, position) = rows[t];
        let cache = caches[sequence];
        let visible = position + 1;
        let kv_offset = head / group * hd;
        let qh = &q[t * e + head * hd..t * e + (head + 1) * hd];
        let mut scores = vec![0f32; visible];
        let mut max = f32::NEG_INFINITY;
        for (j, s) in scores.iter_mut().enumerate() {
            let kj = &cache.k[j * kv + kv_offset..j * kv + kv_offset + hd];
            *s = dot(qh, kj) * scale;
            max = max.max(*s);
        }
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        oh.fill(0.0);
        for (j, &s) in scores.iter().enumerate() {
            let vj = &cache.v[j * kv + kv_offset..j * kv + kv_offset + hd];
            let w = s / sum;
            for (o, &v) in oh.iter_mut().zip(vj) {
                *o += w * v;
            }
        }
    };
    out.par_chunks_exact_mut(hd)
        .enumerate()
        .for_each(|(task, oh)| one_head(task, oh));
}

/// A dot product with 8 independent sums, so it vectorizes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.chunks_exact(8).zip(b.chunks_exact(8));
    for (x, y) in chunks {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = a
        .chunks_exact(8)
        .remainder()
        .iter()
        .zip(b.chunks_exact(8).remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_are_the_fastest_unless_named() {
        let matrix = QMatrix::new(WeightFormat::Q8_0, 64, 64, vec![0; 64 * 2 * 34]).unwrap();
        let fastest = kernels_for(&matrix, None).unwrap();
        assert!(Isa::available().contains(&fastest));
        assert!(fastest != Isa::Scalar || Isa::available() == [Isa::Scalar]);
        let named = kernels_for(&matrix, Some("scalar".into())).unwrap();
        assert_eq!(named, Isa::Scalar);
        let error = kernels_for(&matrix, Some("sse9".into()))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("AIGC_QUANT_ISA=sse9") && error.contains("scalar"),
            "{error}"
        );
    }
}
