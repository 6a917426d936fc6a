//! The BERT encoder forward on the CPU, written out by hand for sentence embeddings.
//!
//! candle's BERT runs each layer as a dozen tensor operations over a padded batch; on the CPU
//! its time went to padding, copies between operations, the exact GELU through a scalar
//! `erf`, and thread hand-offs around each small operation. Here the inputs of a batch are
//! laid end to end without padding (each attends only to itself), every dense layer is one
//! matrix product split in one band of rows per thread with its bias, residual or GELU
//! applied to the band right after, and attention runs per input in parallel. GELU and
//! softmax use the arithmetic-only `exp`/`erf` of [`super::cpu`], so their loops vectorise.
//! A test holds its vectors within 1e-5 of candle's and of sentence-transformers'.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use candle_transformers::models::bert::{Config, HiddenAct, PositionEmbeddingType};
use rayon::prelude::*;

use super::cpu::{Activation, View, Weight, layer_norm, linear, matmul, softmax_rows};
use super::read_safetensors_header;
use crate::error::WorkerError;

/// Tokens run through the encoder together; bounds the activations at about
/// `BATCH_TOKENS * intermediate_size * 4` bytes (12 MiB for MiniLM).
const BATCH_TOKENS: usize = 2048;

struct Layer {
    /// Query, key and value weights stacked: `3 * hidden` rows of `hidden`.
    qkv_w: Weight,
    qkv_b: Vec<f32>,
    out_w: Weight,
    out_b: Vec<f32>,
    ln1: (Vec<f32>, Vec<f32>),
    inter_w: Weight,
    inter_b: Vec<f32>,
    down_w: Weight,
    down_b: Vec<f32>,
    ln2: (Vec<f32>, Vec<f32>),
}

/// A BERT encoder's weights as plain vectors, the dense layers' packed for the AVX-512 kernel
/// where it runs.
pub(crate) struct BertCpu {
    hidden: usize,
    heads: usize,
    intermediate: usize,
    max_positions: usize,
    eps: f32,
    word: Vec<f32>,
    position: Vec<f32>,
    /// Token type 0's embedding (sentence embeddings use no other).
    token_type: Vec<f32>,
    embedding_ln: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
}

impl BertCpu {
    /// Whether this forward computes what candle's `BertModel` would for `config`.
    pub fn supports(config: &Config) -> bool {
        matches!(config.hidden_act, HiddenAct::Gelu)
            && matches!(
                config.position_embedding_type,
                PositionEmbeddingType::Absolute
            )
            && config.num_attention_heads > 0
            && config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
            && config.type_vocab_size > 0
    }

    /// Reads the weights from the `.safetensors` files (the names of Hugging Face's BERT
    /// checkpoints, with or without a `bert.` prefix), one tensor at a time straight into
    /// its vector: mapping the files as well would hold every weight twice at the peak.
    pub fn load(files: &[PathBuf], config: &Config) -> Result<Self, WorkerError> {
        let weights = Weights::open(files)?;
        let prefix = if weights.has("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let h = config.hidden_size;
        let get = |shape: &[usize], name: &str| weights.read(&format!("{prefix}{name}"), shape);
        let norm = |prefix: &str| -> Result<(Vec<f32>, Vec<f32>), WorkerError> {
            Ok((
                get(&[h], &format!("{prefix}.LayerNorm.weight"))?,
                get(&[h], &format!("{prefix}.LayerNorm.bias"))?,
            ))
        };
        let mut token_type = get(
            &[config.type_vocab_size, h],
            "embeddings.token_type_embeddings.weight",
        )?;
        token_type.truncate(h);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let mut qkv_w = Vec::with_capacity(3 * h * h);
            let mut qkv_b = Vec::with_capacity(3 * h);
            for part in ["query", "key", "value"] {
                qkv_w.extend(get(&[h, h], &format!("{p}.attention.self.{part}.weight"))?);
                qkv_b.extend(get(&[h], &format!("{p}.attention.self.{part}.bias"))?);
            }
            let inter = config.intermediate_size;
            layers.push(Layer {
                qkv_w: Weight::new(qkv_w, 3 * h, h),
                qkv_b,
                out_w: Weight::new(
                    get(&[h, h], &format!("{p}.attention.output.dense.weight"))?,
                    h,
                    h,
                ),
                out_b: get(&[h], &format!("{p}.attention.output.dense.bias"))?,
                ln1: norm(&format!("{p}.attention.output"))?,
                inter_w: Weight::new(
                    get(&[inter, h], &format!("{p}.intermediate.dense.weight"))?,
                    inter,
                    h,
                ),
                inter_b: get(&[inter], &format!("{p}.intermediate.dense.bias"))?,
                down_w: Weight::new(
                    get(&[h, inter], &format!("{p}.output.dense.weight"))?,
                    h,
                    inter,
                ),
                down_b: get(&[h], &format!("{p}.output.dense.bias"))?,
                ln2: norm(&format!("{p}.output"))?,
            });
        }
        Ok(BertCpu {
            hidden: h,
            heads: config.num_attention_heads,
            intermediate: config.intermediate_size,
            max_positions: config.max_position_embeddings,
            eps: config.layer_norm_eps as f32,
            word: get(&[config.vocab_size, h], "embeddings.word_embeddings.weight")?,
            position: get(
                &[config.max_position_embeddings, h],
                "embeddings.position_embeddings.weight",
            )?,
            token_type,
            embedding_ln: norm("embeddings")?,
            layers,
        })
    }

    /// One mean-pooled, L2-normalised vector per input.
    pub fn embed(&self, inputs: &[&Vec<u32>]) -> Result<Vec<Vec<f32>>, WorkerError> {
        let vocab = self.word.len() / self.hidden;
        for input in inputs {
            if input.is_empty() || input.len() > self.max_positions {
                return Err(WorkerError::InvalidArgument(format!(
                    "an input of {} tokens; this model takes 1 to {}",
                    input.len(),
                    self.max_positions
                )));
            }
            if let Some(bad) = input.iter().find(|&&id| id as usize >= vocab) {
                return Err(WorkerError::InvalidArgument(format!(
                    "token id {bad} is outside the vocabulary of {vocab}"
                )));
            }
        }
        let mut vectors = Vec::with_capacity(inputs.len());
        let mut start = 0;
        while start < inputs.len() {
            let mut end = start + 1;
            let mut tokens = inputs[start].len();
            while end < inputs.len() && tokens + inputs[end].len() <= BATCH_TOKENS {
                tokens += inputs[end].len();
                end += 1;
            }
            vectors.extend(self.embed_batch(&inputs[start..end]));
            start = end;
        }
        Ok(vectors)
    }

    /// The encoder over inputs laid end to end, then pooling.
    fn embed_batch(&self, inputs: &[&Vec<u32>]) -> Vec<Vec<f32>> {
        let (h, eps) = (self.hidden, self.eps);
        let lens: Vec<usize> = inputs.iter().map(|i| i.len()).collect();
        let m: usize = lens.iter().sum();
        let mut x = vec![0.0f32; m * h];
        let mut row = 0;
        for input in inputs {
            for (p, &id) in input.iter().enumerate() {
                let out = &mut x[row * h..(row + 1) * h];
                let word = &self.word[id as usize * h..][..h];
                let pos = &self.position[p * h..][..h];
                for (((o, w), q), t) in out.iter_mut().zip(word).zip(pos).zip(&self.token_type) {
                    *o = w + q + t;
                }
                row += 1;
            }
        }
        let mut stats = vec![(0.0f32, 0.0f32); m];
        let mut normed = vec![0.0f32; m * h];
        let ln = |x: &[f32],
                  out: &mut [f32],
                  stats: &mut [(f32, f32)],
                  (w, b): &(Vec<f32>, Vec<f32>)| {
            layer_norm(x, out, stats, (w, b), h, eps)
        };
        ln(&x, &mut normed, &mut stats, &self.embedding_ln);
        std::mem::swap(&mut x, &mut normed);
        let mut qkv = vec![0.0f32; m * 3 * h];
        let mut context = vec![0.0f32; m * h];
        let mut mid = vec![0.0f32; m * h];
        let mut inter = vec![0.0f32; m * self.intermediate];
        for layer in &self.layers {
            linear(
                &mut qkv,
                &x,
                &layer.qkv_w,
                Some(&layer.qkv_b),
                None,
                Activation::None,
                m,
                h,
                3 * h,
            );
            self.attention(&qkv, &mut context, &lens);
            linear(
                &mut mid,
                &context,
                &layer.out_w,
                Some(&layer.out_b),
                Some(&x),
                Activation::None,
                m,
                h,
                h,
            );
            ln(&mid, &mut x, &mut stats, &layer.ln1);
            linear(
                &mut inter,
                &x,
                &layer.inter_w,
                Some(&layer.inter_b),
                None,
                Activation::Gelu,
                m,
                h,
                self.intermediate,
            );
            linear(
                &mut mid,
                &inter,
                &layer.down_w,
                Some(&layer.down_b),
                Some(&x),
                Activation::None,
                m,
                self.intermediate,
                h,
            );
            ln(&mid, &mut x, &mut stats, &layer.ln2);
        }
        // Mean over each input's tokens, then L2 normalisation (as sentence-transformers).
        let mut vectors = Vec::with_capacity(inputs.len());
        let mut row = 0;
        for &len in &lens {
            let mut mean = vec![0.0f32; h];
            for r in row..row + len {
                for (a, v) in mean.iter_mut().zip(&x[r * h..(r + 1) * h]) {
                    *a += v;
                }
            }
            for a in &mut mean {
                *a /= len as f32;
            }
            let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            for a in &mut mean {
                *a /= norm;
            }
            vectors.push(mean);
            row += len;
        }
        vectors
    }

    /// Self-attention of each input over its own tokens: per head, scores, softmax and the
    /// weighted values, with one parallel task per input.
    fn attention(&self, qkv: &[f32], context: &mut [f32], lens: &[usize]) {
        let h = self.hidden;
        let hd = h / self.heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut pieces = Vec::with_capacity(lens.len());
        let (mut rest, mut row) = (context, 0);
        for &len in lens {
            let (piece, next) = rest.split_at_mut(len * h);
            pieces.push((piece, row, len));
            rest = next;
            row += len;
        }
        pieces.into_par_iter().for_each(|(out, row, len)| {
            let qkv = &qkv[row * 3 * h..(row + len) * 3 * h];
            let mut scores = vec![0.0f32; len * len];
            let head = View::rows(len, hd, 3 * h);
            let square = View::rows(len, len, len);
            for k in 0..self.heads {
                let (q, key, v) = (&qkv[k * hd..], &qkv[h + k * hd..], &qkv[2 * h + k * hd..]);
                matmul(
                    (&mut scores, square),
                    (q, head),
                    (key, head.t()),
                    scale,
                    false,
                );
                softmax_rows(&mut scores, len, false);
                matmul(
                    (&mut out[k * hd..], View::rows(len, hd, h)),
                    (&scores, square),
                    (v, head),
                    1.0,
                    false,
                );
            }
        });
    }
}

/// Tensors of `.safetensors` files, read one at a time.
struct Weights {
    index: HashMap<String, Located>,
    files: Vec<(PathBuf, File)>,
}

/// Where a tensor's bytes are.
struct Located {
    /// Index into `Weights::files`.
    file: usize,
    dtype: String,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    range: (u64, u64),
}

#[derive(serde::Deserialize)]
struct TensorEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

impl Weights {
    fn open(paths: &[PathBuf]) -> Result<Self, WorkerError> {
        let mut index = HashMap::new();
        let mut files = Vec::with_capacity(paths.len());
        for (i, path) in paths.iter().enumerate() {
            let corrupt = |reason: String| WorkerError::ModelFormat {
                path: path.clone(),
                reason,
            };
            let header = read_safetensors_header(path)?;
            for (name, value) in header.tensors {
                let entry: TensorEntry = serde_json::from_value(value)
                    .map_err(|e| corrupt(format!("safetensors entry {name:?}: {e}")))?;
                let (start, end) = entry.data_offsets;
                if start > end || end > header.data_bytes {
                    return Err(corrupt(format!(
                        "tensor {name:?} lies outside the file ({start}..{end})"
                    )));
                }
                let located = Located {
                    file: i,
                    dtype: entry.dtype,
                    shape: entry.shape,
                    range: (header.data_start + start, header.data_start + end),
                };
                index.insert(name, located);
            }
            files.push((path.clone(), header.file));
        }
        Ok(Weights { index, files })
    }

    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The tensor `name` as f32 values; its shape must be `shape`.
    fn read(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, WorkerError> {
        let Some(Located {
            file,
            dtype,
            shape: dims,
            range: (start, end),
        }) = self.index.get(name)
        else {
            return Err(WorkerError::Corrupt(format!(
                "the weights have no tensor {name:?}"
            )));
        };
        let (path, file) = &self.files[*file];
        let mut file: &File = file;
        let corrupt = |reason: String| WorkerError::ModelFormat {
            path: path.clone(),
            reason,
        };
        if dims.as_slice() != shape {
            return Err(corrupt(format!(
                "tensor {name:?} has shape {dims:?}; the config implies {shape:?}"
            )));
        }
        let count: usize = shape.iter().product();
        let width = match dtype.as_str() {
            "F32" => 4,
            "F16" | "BF16" => 2,
            other => {
                return Err(corrupt(format!(
                    "tensor {name:?} is {other}; accepted: F32, F16, BF16"
                )));
            }
        };
        if end - start != (count * width) as u64 {
            return Err(corrupt(format!(
                "tensor {name:?} has {} bytes for {count} {dtype} values",
                end - start
            )));
        }
        let mut bytes = vec![0u8; count * width];
        file.seek(SeekFrom::Start(*start))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| WorkerError::io(path.as_path(), e))?;
        Ok(match dtype.as_str() {
            "F32" => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            "F16" => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        })
    }
}
