//! Training data and objective for the character transformer: windows of a text corpus.
//!
//! The first `1 - validation_fraction` of the text trains, the rest validates (a contiguous
//! split, so validation text was never seen). Training examples are windows of
//! `block_size + 1` characters starting every `block_size / 2` characters.

use std::cell::RefCell;
use std::collections::BTreeSet;

use candle_core::{Device, Tensor};

use super::{Evaluation, TrainOptions};
use crate::models::{CharTransformer, CharTransformerConfig};
use crate::rng::Rng;
use crate::train::char_cpu::CharTrainer;
use crate::train::data::PreparedDataset;
use crate::{Result, WorkerError};

pub(crate) struct Text {
    pub model: CharTransformer,
    /// The hand-written training step, on the CPU (see [`CharTrainer`]).
    cpu_step: Option<Box<RefCell<CharTrainer>>>,
    train_ids: Vec<u32>,
    val_ids: Vec<u32>,
    starts: Vec<usize>,
    batch_size: usize,
    baseline: f64,
    device: Device,
}

impl Text {
    pub fn build(
        dataset: &PreparedDataset,
        options: &TrainOptions,
        init_rng: &mut Rng,
        device: &Device,
    ) -> Result<Self> {
        let text = dataset.text()?;
        let vocab: Vec<char> = text.chars().collect::<BTreeSet<_>>().into_iter().collect();
        let config = CharTransformerConfig {
            vocab,
            d_model: options.d_model,
            layers: options.layers,
            heads: options.heads,
            block_size: options.block_size,
        };
        let ids = config.encode(&text)?;
        let n_val = (ids.len() as f64 * options.validation_fraction).round() as usize;
        let block = options.block_size;
        if n_val < block + 1 || ids.len() - n_val < block + 1 {
            return Err(WorkerError::InvalidData(format!(
                "the text has {} characters: too short for block size {block} with validation fraction {} (each split needs more than {block} characters)",
                ids.len(),
                options.validation_fraction
            )));
        }
        let (train_ids, val_ids) = ids.split_at(ids.len() - n_val);
        let stride = (block / 2).max(1);
        let starts = (0..=train_ids.len() - (block + 1))
            .step_by(stride)
            .collect();
        let baseline = unigram_cross_entropy(train_ids, val_ids, config.vocab.len());
        let model = CharTransformer::new(config, init_rng, device)?;
        let cpu_step = if CharTrainer::supports(device) {
            Some(Box::new(RefCell::new(CharTrainer::new(&model)?)))
        } else {
            None
        };
        Ok(Text {
            model,
            cpu_step,
            train_ids: train_ids.to_vec(),
            val_ids: val_ids.to_vec(),
            starts,
            batch_size: options.batch_size as usize,
            baseline,
            device: device.clone(),
        })
    }

    pub fn examples(&self) -> usize {
        self.starts.len()
    }

    /// Validation loss of predicting each character from training-split character frequencies
    /// alone: the bar a model that learned anything from context must beat.
    pub fn baseline(&self) -> f64 {
        self.baseline
    }

    /// Inputs and next-character targets of the windows at `starts`, row-major.
    fn window_ids(&self, ids: &[u32], starts: &[usize]) -> (Vec<u32>, Vec<u32>) {
        let t = self.model.config().block_size;
        let mut x = Vec::with_capacity(starts.len() * t);
        let mut y = Vec::with_capacity(starts.len() * t);
        for &s in starts {
            x.extend_from_slice(&ids[s..s + t]);
            y.extend_from_slice(&ids[s + 1..s + t + 1]);
        }
        (x, y)
    }

    fn windows(&self, ids: &[u32], starts: &[usize]) -> Result<(Tensor, Tensor)> {
        let t = self.model.config().block_size;
        let (x, y) = self.window_ids(ids, starts);
        Ok((
            Tensor::from_vec(x, (starts.len(), t), &self.device)?,
            Tensor::from_vec(y, starts.len() * t, &self.device)?,
        ))
    }

    fn loss(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let logits = self.model.forward(x)?;
        let (b, t, v) = logits.dims3()?;
        Ok(candle_nn::loss::cross_entropy(
            &logits.reshape((b * t, v))?,
            y,
        )?)
    }

    pub fn batch_loss(&self, indices: &[usize]) -> Result<Tensor> {
        let starts: Vec<usize> = indices.iter().map(|&i| self.starts[i]).collect();
        let (x, y) = self.windows(&self.train_ids, &starts)?;
        self.loss(&x, &y)
    }

    /// The batch's loss and every parameter's gradient (in `Params` order) from the
    /// hand-written CPU step; `None` where there is none (not on the CPU).
    pub fn cpu_loss_and_grads(&self, indices: &[usize]) -> Result<Option<(f32, Vec<Tensor>)>> {
        let Some(trainer) = &self.cpu_step else {
            return Ok(None);
        };
        let starts: Vec<usize> = indices.iter().map(|&i| self.starts[i]).collect();
        let (x, y) = self.window_ids(&self.train_ids, &starts);
        let step = trainer
            .borrow_mut()
            .loss_and_grads(&self.model, &x, &y, indices.len())?;
        Ok(Some(step))
    }

    /// Mean loss over non-overlapping validation windows; the metric is perplexity.
    pub fn evaluate(&self) -> Result<Evaluation> {
        let t = self.model.config().block_size;
        let starts: Vec<usize> = (0..=self.val_ids.len() - (t + 1)).step_by(t).collect();
        let mut total = 0.0;
        for chunk in starts.chunks(self.batch_size.max(1)) {
            let (x, y) = self.windows(&self.val_ids, chunk)?;
            total += self.loss(&x, &y)?.to_scalar::<f32>()? as f64 * chunk.len() as f64;
        }
        let loss = total / starts.len() as f64;
        Ok(Evaluation {
            loss,
            metric: loss.exp(),
        })
    }
}

/// Cross-entropy (nats per character) of `val` under add-one-smoothed character frequencies
/// of `train`.
pub(crate) fn unigram_cross_entropy(train: &[u32], val: &[u32], vocab: usize) -> f64 {
    let mut counts = vec![1.0f64; vocab];
    for &c in train {
        counts[c as usize] += 1.0;
    }
    let total: f64 = counts.iter().sum();
    -val.iter()
        .map(|&c| (counts[c as usize] / total).ln())
        .sum::<f64>()
        / val.len() as f64
}
