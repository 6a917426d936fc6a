//! Llama-family text generation from a quantized GGUF file, through candle-transformers'
//! quantized llama.

use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

use crate::error::WorkerError;
use crate::models::TextGenerator;
use crate::tokenizer::{ChatTemplate, TextTokenizer};

pub const ARCHITECTURE: &str = "llama";

/// The context length assumed when the GGUF file does not state one.
const DEFAULT_CONTEXT_LENGTH: usize = 2048;

pub struct QuantizedLlama {
    weights: ModelWeights,
    tokenizer: TextTokenizer,
    context_length: usize,
    device: Device,
}

impl QuantizedLlama {
    pub fn load(path: &Path, device: &Device) -> Result<Self, WorkerError> {
        let mut file = File::open(path).map_err(|e| WorkerError::io(path, e))?;
        let content =
            gguf_file::Content::read(&mut file).map_err(|e| WorkerError::ModelFormat {
                path: path.to_path_buf(),
                reason: format!("GGUF header: {e}"),
            })?;
        let architecture = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if architecture != ARCHITECTURE {
            return Err(WorkerError::Unsupported(format!(
                "GGUF general.architecture `{architecture}` in {}; supported: {ARCHITECTURE}",
                path.display()
            )));
        }
        let context_length = content
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map_or(DEFAULT_CONTEXT_LENGTH, |n| n as usize);
        let tokenizer = TextTokenizer::from_gguf(&content)?;
        let weights = ModelWeights::from_gguf(content, &mut file, device)?;
        Ok(Self {
            weights,
            tokenizer,
            context_length,
            device: device.clone(),
        })
    }
}

impl TextGenerator for QuantizedLlama {
    fn context_length(&self) -> usize {
        self.context_length
    }

    fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    fn chat_template(&self) -> ChatTemplate {
        ChatTemplate::for_vocabulary(&self.tokenizer)
    }

    fn reset(&mut self) {
        self.weights.clear_kv_cache();
    }

    fn next_logits(&mut self, tokens: &[u32], start: usize) -> Result<Vec<f32>, WorkerError> {
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let logits = self.weights.forward(&input, start)?;
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?)
    }
}
