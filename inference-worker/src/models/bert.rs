//! BERT-family sentence embeddings (all-MiniLM-L6-v2 and kin) from safetensors, pooled
//! like sentence-transformers: mean over real tokens, then L2 normalisation.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::Tokenizer;

use crate::error::WorkerError;
use crate::models::Embedder;
use crate::models::bert_cpu::BertCpu;

pub const ARCHITECTURE: &str = "bert";

/// Inputs run through the network together; sorting by length first keeps padding small.
const CHUNK: usize = 32;

pub struct BertEmbedder {
    /// The encoder: the hand-written CPU forward where it applies, else candle's.
    encoder: Encoder,
    tokenizer: Tokenizer,
    max_tokens: usize,
    dimensions: usize,
    pad_id: u32,
    device: Device,
}

enum Encoder {
    Cpu(BertCpu),
    Candle(BertModel),
}

impl BertEmbedder {
    /// Loads `config.json`, `tokenizer.json` and the `.safetensors` weights in `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, WorkerError> {
        Self::load_inner(dir, device, true)
    }

    /// [`BertEmbedder::load`] with candle's encoder even on the CPU (for comparisons).
    pub fn load_candle(dir: &Path, device: &Device) -> Result<Self, WorkerError> {
        Self::load_inner(dir, device, false)
    }

    fn load_inner(dir: &Path, device: &Device, hand_written: bool) -> Result<Self, WorkerError> {
        let config_path = dir.join("config.json");
        let config_text =
            std::fs::read_to_string(&config_path).map_err(|e| WorkerError::io(&config_path, e))?;
        let config: Config =
            serde_json::from_str(&config_text).map_err(|e| WorkerError::ModelFormat {
                path: config_path.clone(),
                reason: format!("not a BERT config: {e}"),
            })?;

        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| WorkerError::ModelFormat {
                path: tokenizer_path.clone(),
                reason: e.to_string(),
            })?;
        // The shipped tokenizer pads every input to a fixed length; batches pad themselves
        // to their longest input instead, and over-long inputs are refused, not truncated.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| WorkerError::Tokenizer(e.to_string()))?;

        let weights = safetensors_files(dir)?;
        let encoder = if hand_written && device.is_cpu() && BertCpu::supports(&config) {
            Encoder::Cpu(BertCpu::load(&weights, &config)?)
        } else {
            // SAFETY: the files are mapped read-only and this process never writes them; a
            // concurrent writer outside the process is the operator's contract to prevent.
            let vb = unsafe { VarBuilder::from_mmaped_safetensors(&weights, DType::F32, device)? };
            Encoder::Candle(BertModel::load(vb, &config)?)
        };

        Ok(Self {
            encoder,
            tokenizer,
            max_tokens: max_seq_length(dir)?.unwrap_or(config.max_position_embeddings),
            dimensions: config.hidden_size,
            pad_id: config.pad_token_id as u32,
            device: device.clone(),
        })
    }

    /// Embeds inputs of similar length in one forward pass of candle's model.
    fn embed_chunk(
        &self,
        model: &BertModel,
        inputs: &[&Vec<u32>],
    ) -> Result<Vec<Vec<f32>>, WorkerError> {
        let longest = inputs.iter().map(|ids| ids.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(inputs.len() * longest);
        let mut mask = Vec::with_capacity(inputs.len() * longest);
        for input in inputs {
            ids.extend_from_slice(input);
            ids.extend(std::iter::repeat_n(self.pad_id, longest - input.len()));
            mask.extend(std::iter::repeat_n(1u32, input.len()));
            mask.extend(std::iter::repeat_n(0u32, longest - input.len()));
        }
        let shape = (inputs.len(), longest);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let token_types = ids.zeros_like()?;
        let hidden = model.forward(&ids, &token_types, Some(&mask))?;

        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f32::MAX)?;
        Ok(mean.broadcast_div(&norm)?.to_vec2()?)
    }
}

impl Embedder for BertEmbedder {
    fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn tokenize(&self, text: &str) -> Result<Vec<u32>, WorkerError> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| WorkerError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    fn embed(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, WorkerError> {
        // Run on a rayon thread with the caller asleep, so the caller's serial parts do not
        // compete for the cores with pool threads spinning between parallel ops.
        if rayon::current_thread_index().is_none() {
            return rayon::scope(|_| self.embed(inputs));
        }
        let model = match &self.encoder {
            Encoder::Cpu(cpu) => return cpu.embed(&inputs.iter().collect::<Vec<_>>()),
            Encoder::Candle(model) => model,
        };
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| inputs[i].len());
        let mut vectors = vec![Vec::new(); inputs.len()];
        for chunk in order.chunks(CHUNK) {
            let batch: Vec<&Vec<u32>> = chunk.iter().map(|&i| &inputs[i]).collect();
            for (&i, vector) in chunk.iter().zip(self.embed_chunk(model, &batch)?) {
                vectors[i] = vector;
            }
        }
        Ok(vectors)
    }
}

fn safetensors_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, WorkerError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| WorkerError::io(dir, e))? {
        let path = entry.map_err(|e| WorkerError::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(WorkerError::ModelFormat {
            path: dir.to_path_buf(),
            reason: "no .safetensors file next to config.json".into(),
        });
    }
    files.sort();
    Ok(files)
}

/// sentence-transformers' `max_seq_length`, when the model ships its config.
fn max_seq_length(dir: &Path) -> Result<Option<usize>, WorkerError> {
    let path = dir.join("sentence_bert_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| WorkerError::io(&path, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| WorkerError::ModelFormat {
            path: path.clone(),
            reason: format!("not JSON: {e}"),
        })?;
    Ok(value
        .get("max_seq_length")
        .and_then(|v| v.as_u64())
        .map(|n| n as usize))
}
