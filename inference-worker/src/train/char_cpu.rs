//! The char-transformer's training step on the CPU, written out by hand: forward pass, loss
//! and backward pass over preallocated buffers, matrix products through `gemm`.
//!
//! Why not candle's autograd: the model is small (d_model 64 by default), so a step is a few
//! hundred small tensor operations, and candle's cost per operation (a fresh buffer, strided
//! index arithmetic, a backward graph node, unfused softmax and layer-norm gradients) was
//! most of the step: it trained at about a quarter of PyTorch's speed. Here each layer is a
//! handful of matrix products plus fused row loops (layer norm, causal attention, ReLU,
//! softmax cross-entropy) that touch each activation once or twice.
//!
//! The maths is the model's [`CharTransformer::forward`] followed by candle's cross-entropy
//! (mean over positions); a unit test checks the loss and every gradient against candle's
//! autograd. The result is bitwise reproducible for a given thread count: rows are split in
//! one band per thread, matrix products do not split their inner dimension, and every
//! reduction over rows (bias and layer-norm gradients, embeddings, the loss) runs in row
//! order.
//!
//! Parameters stay in the model's candle `Var`s, which checkpoints, evaluation and publishing
//! read: a step copies them in (a few hundred KiB), and hands the gradients back as tensors
//! for the optimizer.

use std::ops::Range;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::models::char_transformer::LN_EPS;
use crate::models::cpu::{
    Activation, View, band, lane_sum, layer_norm, linear, matmul, softmax_rows, with_simd,
};
use crate::models::{CharTransformer, CharTransformerConfig};
use crate::{Result, WorkerError};

/// Where one block's parameters sit in the flat parameter buffer.
struct BlockParams {
    ln1_w: Range<usize>,
    ln1_b: Range<usize>,
    qkv_w: Range<usize>,
    qkv_b: Range<usize>,
    proj_w: Range<usize>,
    proj_b: Range<usize>,
    ln2_w: Range<usize>,
    ln2_b: Range<usize>,
    fc1_w: Range<usize>,
    fc1_b: Range<usize>,
    fc2_w: Range<usize>,
    fc2_b: Range<usize>,
}

/// What the forward pass keeps of one block for the backward pass.
struct BlockActs {
    /// The block's input (the residual stream).
    input: Vec<f32>,
    ln1: Vec<f32>,
    ln1_stats: Vec<(f32, f32)>,
    qkv: Vec<f32>,
    /// Attention weights, `(batch, heads, time, time)`, zero above the diagonal.
    att: Vec<f32>,
    /// Attention output before the projection.
    att_out: Vec<f32>,
    /// The residual stream after attention.
    mid: Vec<f32>,
    ln2: Vec<f32>,
    ln2_stats: Vec<(f32, f32)>,
    /// ReLU of the first MLP layer.
    hidden: Vec<f32>,
}

/// One training step's worth of buffers and the parameter layout.
pub struct CharTrainer {
    config: CharTransformerConfig,
    /// Every parameter, in the order of the model's `Params`.
    params: Vec<f32>,
    grads: Vec<f32>,
    /// Range and shape of each parameter, in `Params` order.
    slots: Vec<(Range<usize>, Vec<usize>)>,
    tok_emb: Range<usize>,
    pos_emb: Range<usize>,
    blocks: Vec<BlockParams>,
    lnf_w: Range<usize>,
    lnf_b: Range<usize>,
    head_w: Range<usize>,
    // Activations, sized for the last (batch, time).
    shape: (usize, usize),
    acts: Vec<BlockActs>,
    last: Vec<f32>,
    lnf: Vec<f32>,
    lnf_stats: Vec<(f32, f32)>,
    /// Logits, turned into the loss gradient in place.
    logits: Vec<f32>,
    row_loss: Vec<f32>,
    // Backward scratch.
    d_res: Vec<f32>,
    d_small: Vec<f32>,
    d_qkv: Vec<f32>,
    d_hidden: Vec<f32>,
}

impl CharTrainer {
    /// Whether this step can train a model on `device`: the CPU only.
    pub fn supports(device: &Device) -> bool {
        device.is_cpu()
    }

    /// A trainer for `model`'s architecture; the parameter layout comes from its `Params`.
    pub fn new(model: &CharTransformer) -> Result<Self> {
        let config = model.config().clone();
        let params = model.params();
        let mut slots = Vec::with_capacity(params.names().len());
        let mut offset = 0;
        for var in params.vars() {
            let dims = var.dims().to_vec();
            let len: usize = dims.iter().product();
            slots.push((offset..offset + len, dims));
            offset += len;
        }
        let names = params.names();
        let find = |name: &str| -> Result<Range<usize>> {
            names
                .iter()
                .position(|n| n == name)
                .map(|i| slots[i].0.clone())
                .ok_or_else(|| {
                    WorkerError::Corrupt(format!("the char-transformer has no parameter {name:?}"))
                })
        };
        let mut blocks = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let p = |s: &str| find(&format!("blocks.{i}.{s}"));
            blocks.push(BlockParams {
                ln1_w: p("ln1.weight")?,
                ln1_b: p("ln1.bias")?,
                qkv_w: p("qkv.weight")?,
                qkv_b: p("qkv.bias")?,
                proj_w: p("proj.weight")?,
                proj_b: p("proj.bias")?,
                ln2_w: p("ln2.weight")?,
                ln2_b: p("ln2.bias")?,
                fc1_w: p("fc1.weight")?,
                fc1_b: p("fc1.bias")?,
                fc2_w: p("fc2.weight")?,
                fc2_b: p("fc2.bias")?,
            });
        }
        Ok(CharTrainer {
            tok_emb: find("tok_emb")?,
            pos_emb: find("pos_emb")?,
            lnf_w: find("ln_f.weight")?,
            lnf_b: find("ln_f.bias")?,
            head_w: find("head.weight")?,
            blocks,
            params: vec![0.0; offset],
            grads: vec![0.0; offset],
            slots,
            config,
            shape: (0, 0),
            acts: Vec::new(),
            last: Vec::new(),
            lnf: Vec::new(),
            lnf_stats: Vec::new(),
            logits: Vec::new(),
            row_loss: Vec::new(),
            d_res: Vec::new(),
            d_small: Vec::new(),
            d_qkv: Vec::new(),
            d_hidden: Vec::new(),
        })
    }

    /// Mean cross-entropy of predicting `targets` from `inputs` (both `batch * time` ids,
    /// row-major), and the gradient of every parameter, in the model's `Params` order.
    pub fn loss_and_grads(
        &mut self,
        model: &CharTransformer,
        inputs: &[u32],
        targets: &[u32],
        batch: usize,
    ) -> Result<(f32, Vec<Tensor>)> {
        let time = inputs.len() / batch.max(1);
        if batch == 0 || time == 0 || time > self.config.block_size {
            return Err(WorkerError::InvalidArgument(format!(
                "a training batch needs 1 to {} positions per example, got {} ids for {batch} examples",
                self.config.block_size,
                inputs.len()
            )));
        }
        if inputs.len() != batch * time || targets.len() != inputs.len() {
            return Err(WorkerError::InvalidArgument(format!(
                "{} input ids and {} targets do not make {batch} examples of equal length",
                inputs.len(),
                targets.len()
            )));
        }
        let vocab = self.config.vocab.len() as u32;
        if let Some(bad) = inputs.iter().chain(targets).find(|&&id| id >= vocab) {
            return Err(WorkerError::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary of {vocab} characters"
            )));
        }
        for ((range, _), var) in self.slots.iter().zip(model.params().vars()) {
            let values = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            self.params[range.clone()].copy_from_slice(&values);
        }
        self.resize(batch, time);
        // Run on one of rayon's threads with the caller asleep, so the serial parts do not
        // compete for the cores with pool threads waiting between the parallel ones.
        let loss = if rayon::current_thread_index().is_some() {
            self.step(inputs, targets)
        } else {
            rayon::scope(|_| self.step(inputs, targets))
        };
        let grads = self
            .slots
            .iter()
            .map(|(range, dims)| {
                Tensor::from_slice(&self.grads[range.clone()], dims.as_slice(), &Device::Cpu)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok((loss, grads))
    }

    fn resize(&mut self, batch: usize, time: usize) {
        if self.shape == (batch, time) {
            return;
        }
        self.shape = (batch, time);
        let c = &self.config;
        let (m, d, v) = (batch * time, c.d_model, c.vocab.len());
        let zeros = |n: usize| vec![0.0f32; n];
        self.acts = (0..c.layers)
            .map(|_| BlockActs {
                input: zeros(m * d),
                ln1: zeros(m * d),
                ln1_stats: vec![(0.0, 0.0); m],
                qkv: zeros(m * 3 * d),
                att: zeros(batch * c.heads * time * time),
                att_out: zeros(m * d),
                mid: zeros(m * d),
                ln2: zeros(m * d),
                ln2_stats: vec![(0.0, 0.0); m],
                hidden: zeros(m * 4 * d),
            })
            .collect();
        self.last = zeros(m * d);
        self.lnf = zeros(m * d);
        self.lnf_stats = vec![(0.0, 0.0); m];
        self.logits = zeros(m * v);
        self.row_loss = zeros(m);
        self.d_res = zeros(m * d);
        self.d_small = zeros(m * d);
        self.d_qkv = zeros(m * 3 * d);
        self.d_hidden = zeros(m * 4 * d);
    }

    fn step(&mut self, inputs: &[u32], targets: &[u32]) -> f32 {
        self.forward(inputs);
        let loss = self.loss(targets);
        self.backward(inputs);
        loss
    }

    fn forward(&mut self, inputs: &[u32]) {
        let (batch, time) = self.shape;
        let c = &self.config;
        let (m, d, heads) = (batch * time, c.d_model, c.heads);
        let p = &self.params;

        // Token plus position embeddings into the first block's input.
        let first = match self.acts.first_mut() {
            Some(a) => &mut a.input,
            None => &mut self.last,
        };
        for (row, (out, &id)) in first.chunks_exact_mut(d).zip(inputs).enumerate() {
            let tok = &p[self.tok_emb.start + id as usize * d..][..d];
            let pos = &p[self.pos_emb.start + (row % time) * d..][..d];
            for ((o, t), q) in out.iter_mut().zip(tok).zip(pos) {
                *o = t + q;
            }
        }

        for l in 0..self.blocks.len() {
            let bp = &self.blocks[l];
            let (done, rest) = self.acts.split_at_mut(l + 1);
            let a = &mut done[l];
            layer_norm(
                &a.input,
                &mut a.ln1,
                &mut a.ln1_stats,
                (&p[bp.ln1_w.clone()], &p[bp.ln1_b.clone()]),
                d,
                LN_EPS,
            );
            linear(
                &mut a.qkv,
                &a.ln1,
                &p[bp.qkv_w.clone()],
                Some(&p[bp.qkv_b.clone()]),
                None,
                Activation::None,
                m,
                d,
                3 * d,
            );
            attention(&a.qkv, &mut a.att, &mut a.att_out, batch, time, d, heads);
            linear(
                &mut a.mid,
                &a.att_out,
                &p[bp.proj_w.clone()],
                Some(&p[bp.proj_b.clone()]),
                Some(&a.input),
                Activation::None,
                m,
                d,
                d,
            );
            layer_norm(
                &a.mid,
                &mut a.ln2,
                &mut a.ln2_stats,
                (&p[bp.ln2_w.clone()], &p[bp.ln2_b.clone()]),
                d,
                LN_EPS,
            );
            linear(
                &mut a.hidden,
                &a.ln2,
                &p[bp.fc1_w.clone()],
                Some(&p[bp.fc1_b.clone()]),
                None,
                Activation::Relu,
                m,
                d,
                4 * d,
            );
            let out = match rest.first_mut() {
                Some(next) => &mut next.input,
                None => &mut self.last,
            };
            linear(
                out,
                &a.hidden,
                &p[bp.fc2_w.clone()],
                Some(&p[bp.fc2_b.clone()]),
                Some(&a.mid),
                Activation::None,
                m,
                4 * d,
                d,
            );
        }
        layer_norm(
            &self.last,
            &mut self.lnf,
            &mut self.lnf_stats,
            (&p[self.lnf_w.clone()], &p[self.lnf_b.clone()]),
            d,
            LN_EPS,
        );
        linear(
            &mut self.logits,
            &self.lnf,
            &p[self.head_w.clone()],
            None,
            None,
            Activation::None,
            m,
            d,
            c.vocab.len(),
        );
    }

    /// Mean cross-entropy; leaves its gradient with respect to the logits in `logits`.
    fn loss(&mut self, targets: &[u32]) -> f32 {
        let v = self.config.vocab.len();
        let m = targets.len();
        let scale = 1.0 / m as f32;
        let band = band(m);
        self.logits
            .par_chunks_mut(v * band)
            .zip(self.row_loss.par_chunks_mut(band))
            .zip(targets.par_chunks(band))
            .for_each(|((logits, losses), targets)| {
                for ((row, loss), &target) in logits.chunks_exact_mut(v).zip(losses).zip(targets) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let target_shifted = row[target as usize] - max;
                    let mut sum = 0.0f32;
                    for x in row.iter_mut() {
                        *x = (*x - max).exp();
                        sum += *x;
                    }
                    *loss = sum.ln() - target_shifted;
                    let inv = 1.0 / sum;
                    for x in row.iter_mut() {
                        *x *= inv * scale;
                    }
                    row[target as usize] -= scale;
                }
            });
        (self.row_loss.iter().map(|&l| l as f64).sum::<f64>() / m as f64) as f32
    }

    fn backward(&mut self, inputs: &[u32]) {
        let (batch, time) = self.shape;
        let c = &self.config;
        let (m, d, v, heads) = (batch * time, c.d_model, c.vocab.len(), c.heads);
        let p = &self.params;
        let g = &mut self.grads;
        g.fill(0.0);

        // Head, then the final layer norm into d_res.
        linear_backward(
            Some(&mut self.d_small),
            (&mut g[self.head_w.clone()], None),
            &self.logits,
            &self.lnf,
            &p[self.head_w.clone()],
            m,
            d,
            v,
        );
        self.d_res.fill(0.0);
        layer_norm_backward(
            &mut self.d_res,
            g,
            (self.lnf_w.clone(), self.lnf_b.clone()),
            &self.d_small,
            &self.last,
            &self.lnf_stats,
            &p[self.lnf_w.clone()],
            d,
        );

        for (bp, a) in self.blocks.iter().zip(&self.acts).rev() {
            // MLP: d_res is the gradient of the block output (= mid + fc2(...)).
            linear_backward(
                Some(&mut self.d_hidden),
                split_two(g, &bp.fc2_w, &bp.fc2_b),
                &self.d_res,
                &a.hidden,
                &p[bp.fc2_w.clone()],
                m,
                4 * d,
                d,
            );
            self.d_hidden
                .par_iter_mut()
                .zip(a.hidden.par_iter())
                .with_min_len(4096)
                .for_each(|(dh, &h)| {
                    if h <= 0.0 {
                        *dh = 0.0;
                    }
                });
            linear_backward(
                Some(&mut self.d_small),
                split_two(g, &bp.fc1_w, &bp.fc1_b),
                &self.d_hidden,
                &a.ln2,
                &p[bp.fc1_w.clone()],
                m,
                d,
                4 * d,
            );
            layer_norm_backward(
                &mut self.d_res,
                g,
                (bp.ln2_w.clone(), bp.ln2_b.clone()),
                &self.d_small,
                &a.mid,
                &a.ln2_stats,
                &p[bp.ln2_w.clone()],
                d,
            );
            // Attention: d_res is now the gradient of mid (= input + proj(...)).
            linear_backward(
                Some(&mut self.d_small),
                split_two(g, &bp.proj_w, &bp.proj_b),
                &self.d_res,
                &a.att_out,
                &p[bp.proj_w.clone()],
                m,
                d,
                d,
            );
            attention_backward(
                &mut self.d_qkv,
                &self.d_small,
                &a.qkv,
                &a.att,
                batch,
                time,
                d,
                heads,
            );
            linear_backward(
                Some(&mut self.d_small),
                split_two(g, &bp.qkv_w, &bp.qkv_b),
                &self.d_qkv,
                &a.ln1,
                &p[bp.qkv_w.clone()],
                m,
                d,
                3 * d,
            );
            layer_norm_backward(
                &mut self.d_res,
                g,
                (bp.ln1_w.clone(), bp.ln1_b.clone()),
                &self.d_small,
                &a.input,
                &a.ln1_stats,
                &p[bp.ln1_w.clone()],
                d,
            );
        }

        // Embeddings, in row order.
        for (row, (dx, &id)) in self.d_res.chunks_exact(d).zip(inputs).enumerate() {
            let tok = &mut g[self.tok_emb.start + id as usize * d..][..d];
            for (t, x) in tok.iter_mut().zip(dx) {
                *t += x;
            }
            let pos = &mut g[self.pos_emb.start + (row % time) * d..][..d];
            for (q, x) in pos.iter_mut().zip(dx) {
                *q += x;
            }
        }
    }
}

/// The weight and bias gradients of one layer, as two disjoint slices of `grads`.
fn split_two<'a>(
    grads: &'a mut [f32],
    weight: &Range<usize>,
    bias: &Range<usize>,
) -> (&'a mut [f32], Option<&'a mut [f32]>) {
    assert!(
        weight.end <= bias.start,
        "a bias is laid out after its weight"
    );
    let (head, tail) = grads.split_at_mut(bias.start);
    (&mut head[weight.clone()], Some(&mut tail[..bias.len()]))
}

/// Gradients of [`linear`] given `d_out[m, n]`: `d_x = d_out @ w` (overwritten),
/// `d_w = d_out^T @ x` and `d_bias = column sums of d_out` (both overwritten).
#[allow(clippy::too_many_arguments)]
fn linear_backward(
    d_x: Option<&mut [f32]>,
    (d_w, d_bias): (&mut [f32], Option<&mut [f32]>),
    d_out: &[f32],
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
) {
    let d_out_view = View::rows(m, n, n);
    if let Some(d_x) = d_x {
        matmul(
            (d_x, View::rows(m, k, k)),
            (d_out, d_out_view),
            (w, View::rows(n, k, k)),
            1.0,
            true,
        );
    }
    matmul(
        (d_w, View::rows(n, k, k)),
        (d_out, d_out_view.t()),
        (x, View::rows(m, k, k)),
        1.0,
        true,
    );
    if let Some(d_bias) = d_bias {
        d_bias.fill(0.0);
        for row in d_out.chunks_exact(n) {
            for (b, x) in d_bias.iter_mut().zip(row) {
                *b += x;
            }
        }
    }
}

/// Adds the input gradient of [`layer_norm`] to `d_x` and writes the weight and bias
/// gradients into `grads[w_range]` and `grads[b_range]`.
#[allow(clippy::too_many_arguments)]
fn layer_norm_backward(
    d_x: &mut [f32],
    grads: &mut [f32],
    (w_range, b_range): (Range<usize>, Range<usize>),
    d_out: &[f32],
    x: &[f32],
    stats: &[(f32, f32)],
    w: &[f32],
    d: usize,
) {
    let band = band(stats.len());
    d_x.par_chunks_mut(d * band)
        .zip(d_out.par_chunks(d * band))
        .zip(x.par_chunks(d * band))
        .zip(stats.par_chunks(band))
        .for_each(|(((d_x, d_out), x), stats)| {
            let rows = d_x
                .chunks_exact_mut(d)
                .zip(d_out.chunks_exact(d))
                .zip(x.chunks_exact(d))
                .zip(stats);
            for (((d_x, d_out), x), &(mean, rstd)) in rows {
                let mut sum_dxhat = 0.0f32;
                let mut sum_dxhat_xhat = 0.0f32;
                for ((g, x), w) in d_out.iter().zip(x).zip(w) {
                    let dxhat = g * w;
                    sum_dxhat += dxhat;
                    sum_dxhat_xhat += dxhat * (x - mean) * rstd;
                }
                let (mean_dxhat, mean_dxhat_xhat) =
                    (sum_dxhat / d as f32, sum_dxhat_xhat / d as f32);
                for (((dx, g), x), w) in d_x.iter_mut().zip(d_out).zip(x).zip(w) {
                    let xhat = (x - mean) * rstd;
                    *dx += rstd * (g * w - mean_dxhat - xhat * mean_dxhat_xhat);
                }
            }
        });
    let (mut dw, mut db) = (vec![0.0f32; d], vec![0.0f32; d]);
    for ((g, x), &(mean, rstd)) in d_out.chunks_exact(d).zip(x.chunks_exact(d)).zip(stats) {
        for (((dw, db), g), x) in dw.iter_mut().zip(db.iter_mut()).zip(g).zip(x) {
            *dw += g * (x - mean) * rstd;
            *db += g;
        }
    }
    grads[w_range].copy_from_slice(&dw);
    grads[b_range].copy_from_slice(&db);
}

/// Causal multi-head self-attention of `qkv` rows (`[q | k | v]`, heads side by side in
/// each), keeping the attention weights. One parallel task per example; per head, two
/// matrix products around a masked softmax.
fn attention(
    qkv: &[f32],
    att: &mut [f32],
    out: &mut [f32],
    batch: usize,
    time: usize,
    d: usize,
    heads: usize,
) {
    debug_assert_eq!(att.len(), batch * heads * time * time);
    let hd = d / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    out.par_chunks_mut(time * d)
        .zip(att.par_chunks_mut(heads * time * time))
        .zip(qkv.par_chunks(time * 3 * d))
        .for_each(|((out, att), qkv)| {
            let head = View::rows(time, hd, 3 * d);
            for h in 0..heads {
                let att = &mut att[h * time * time..(h + 1) * time * time];
                let square = View::rows(time, time, time);
                let q = &qkv[h * hd..];
                let k = &qkv[d + h * hd..];
                let v = &qkv[2 * d + h * hd..];
                matmul((att, square), (q, head), (k, head.t()), scale, false);
                softmax_rows(att, time, true);
                let y = (&mut out[h * hd..], View::rows(time, hd, d));
                matmul(y, (att, square), (v, head), 1.0, false);
            }
        });
}

/// Gradient of [`attention`] with respect to `qkv`, given the gradient of its output.
#[allow(clippy::too_many_arguments)]
fn attention_backward(
    d_qkv: &mut [f32],
    d_out: &[f32],
    qkv: &[f32],
    att: &[f32],
    batch: usize,
    time: usize,
    d: usize,
    heads: usize,
) {
    debug_assert_eq!(d_qkv.len(), batch * time * 3 * d);
    let hd = d / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    d_qkv
        .par_chunks_mut(time * 3 * d)
        .zip(d_out.par_chunks(time * d))
        .zip(qkv.par_chunks(time * 3 * d))
        .zip(att.par_chunks(heads * time * time))
        .for_each_init(
            || vec![0.0f32; time * time],
            |d_att, (((d_qkv, d_out), qkv), att)| {
                let head = View::rows(time, hd, 3 * d);
                let square = View::rows(time, time, time);
                let dy = View::rows(time, hd, d);
                for h in 0..heads {
                    let p = &att[h * time * time..(h + 1) * time * time];
                    let (q, k, v) = (&qkv[h * hd..], &qkv[d + h * hd..], &qkv[2 * d + h * hd..]);
                    let d_y = &d_out[h * hd..];
                    // d_att = d_y v^T, then the softmax gradient (with the score scale).
                    matmul((d_att, square), (d_y, dy), (v, head.t()), 1.0, false);
                    softmax_backward(d_att, p, time, scale);
                    let ds = &d_att[..];
                    let d_q = (&mut d_qkv[h * hd..], head);
                    matmul(d_q, (ds, square), (k, head), 1.0, false);
                    let d_k = (&mut d_qkv[d + h * hd..], head);
                    matmul(d_k, (ds, square.t()), (q, head), 1.0, false);
                    let d_v = (&mut d_qkv[2 * d + h * hd..], head);
                    matmul(d_v, (p, square.t()), (d_y, dy), 1.0, false);
                }
            },
        );
}

with_simd! {
    /// `d = p * (d - sum(p * d)) * scale` along each row of the attention weights `p`.
    fn softmax_backward(d: &mut [f32], p: &[f32], time: usize, scale: f32) => softmax_backward_body
}

#[inline(always)]
fn softmax_backward_body(d: &mut [f32], p: &[f32], time: usize, scale: f32) {
    for (d, p) in d.chunks_exact_mut(time).zip(p.chunks_exact(time)) {
        let weighted = lane_sum(d, p);
        for (d, &p) in d.iter_mut().zip(p) {
            *d = p * (*d - weighted) * scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn model(seed: u64) -> CharTransformer {
        let config = CharTransformerConfig {
            vocab: "abcdefg".chars().collect(),
            d_model: 12,
            layers: 2,
            heads: 3,
            block_size: 6,
        };
        let model = CharTransformer::new(config, &mut Rng::new(seed), &Device::Cpu).unwrap();
        // Move the layer norms and biases off their initial 1 and 0 so their gradients
        // and the paths through them are exercised.
        let mut rng = Rng::new(seed + 1);
        for var in model.params().vars() {
            let noise: Vec<f32> = (0..var.elem_count()).map(|_| rng.normal(0.3)).collect();
            let noise = Tensor::from_vec(noise, var.shape(), &Device::Cpu).unwrap();
            var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
        }
        model
    }

    #[test]
    fn loss_and_gradients_match_candles_autograd() {
        let model = model(3);
        let mut trainer = CharTrainer::new(&model).unwrap();
        let mut rng = Rng::new(9);
        // A full context and a shorter one, so both attention shapes are covered.
        for (batch, time) in [(3, 6), (2, 4)] {
            let ids: Vec<u32> = (0..batch * time).map(|_| rng.below(7) as u32).collect();
            let targets: Vec<u32> = (0..batch * time).map(|_| rng.below(7) as u32).collect();
            let (loss, grads) = trainer
                .loss_and_grads(&model, &ids, &targets, batch)
                .unwrap();

            let x = Tensor::from_slice(&ids, (batch, time), &Device::Cpu).unwrap();
            let y = Tensor::from_slice(&targets, batch * time, &Device::Cpu).unwrap();
            let logits = model
                .forward(&x)
                .unwrap()
                .reshape((batch * time, 7))
                .unwrap();
            let reference = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
            let expected_loss = reference.to_scalar::<f32>().unwrap();
            assert!(
                (loss - expected_loss).abs() < 1e-5,
                "loss {loss} vs {expected_loss}"
            );
            let store = reference.backward().unwrap();
            let names = model.params().names();
            for ((name, var), grad) in names.iter().zip(model.params().vars()).zip(&grads) {
                let want = store.get(var.as_tensor()).unwrap();
                assert_eq!(grad.dims(), want.dims(), "{name}");
                let got = grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let scale = want.iter().fold(1e-3f32, |a, w| a.max(w.abs()));
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-4 * scale,
                        "{name}: {g} vs {w} ({batch}x{time})"
                    );
                }
            }
        }
    }

    #[test]
    fn repeated_steps_are_bitwise_equal() {
        let model = model(5);
        let ids: Vec<u32> = (0..4 * 6).map(|i| (i * 5 % 7) as u32).collect();
        let targets: Vec<u32> = (0..4 * 6).map(|i| (i * 3 % 7) as u32).collect();
        let run = || {
            let mut trainer = CharTrainer::new(&model).unwrap();
            let (loss, grads) = trainer.loss_and_grads(&model, &ids, &targets, 4).unwrap();
            let grads: Vec<Vec<f32>> = grads
                .iter()
                .map(|g| g.flatten_all().unwrap().to_vec1().unwrap())
                .collect();
            (loss.to_bits(), grads)
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn bad_batches_are_refused() {
        let model = model(1);
        let mut trainer = CharTrainer::new(&model).unwrap();
        let too_long = vec![0u32; 2 * 7];
        let error = trainer
            .loss_and_grads(&model, &too_long, &too_long, 2)
            .unwrap_err();
        assert!(error.to_string().contains("1 to 6 positions"), "{error}");
        let error = trainer
            .loss_and_grads(&model, &[0, 9], &[0, 0], 1)
            .unwrap_err();
        assert!(error.to_string().contains("token id 9"), "{error}");
    }
}
