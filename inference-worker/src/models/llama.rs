//! Llama-family text generation from a quantized GGUF file: on the CPU through
//! `aigc_quant`'s llama forward and runtime-dispatched SIMD kernels (Q4_1 / Q8_0 weights),
//! elsewhere (CUDA) and for other quantizations through candle-transformers' quantized llama.

use std::fs::File;
use std::path::Path;

use aigc_quant::QuantError;
use aigc_quant::llama::{Feed, Llama, LlamaConfig, RawTensor, Sequence, TensorFormat};
use candle_core::quantized::{GgmlDType, gguf_file};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

use crate::device::{QuantizedKernels, quantized_kernels};
use crate::error::WorkerError;
use crate::models::{SlotFeed, TextGenerator, feed_each};
use crate::tokenizer::{ChatTemplate, TextTokenizer};

pub const ARCHITECTURE: &str = "llama";

/// The context length assumed when the GGUF file does not state one.
const DEFAULT_CONTEXT_LENGTH: usize = 2048;

pub struct QuantizedLlama {
    backend: Backend,
    /// The sequences [`TextGenerator::feed`] decodes on the CPU kernels, by slot.
    slots: Vec<Sequence>,
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
        let candle = |content, file: &mut File| -> Result<Backend, WorkerError> {
            Ok(Backend::Candle(Box::new(ModelWeights::from_gguf(
                content, file, device,
            )?)))
        };
        let backend = match quantized_kernels(device) {
            QuantizedKernels::Cpu => match cpu_model(&content, &mut file, context_length) {
                Ok(model) => Backend::Cpu(Box::new(model)),
                Err(WorkerError::Quant(QuantError::Unsupported(reason))) => {
                    tracing::info!(%reason, "using candle's quantized kernels for {}", path.display());
                    candle(content, &mut file)?
                }
                Err(e) => return Err(e),
            },
            QuantizedKernels::Candle => candle(content, &mut file)?,
        };
        Ok(Self {
            backend,
            slots: Vec::new(),
            tokenizer,
            context_length,
            device: device.clone(),
        })
    }
}

impl QuantizedLlama {
    /// Which kernels run the model: `aigc-quant <isa>` on the CPU, else `candle`.
    pub fn kernels(&self) -> String {
        match &self.backend {
            Backend::Cpu(model) => format!("aigc-quant {}", model.isa().name()),
            Backend::Candle(_) => "candle".into(),
        }
    }

    /// Runs the CPU kernels of `isa` (one of [`aigc_quant::Isa::available`]); for tests
    /// and benchmarks.
    pub fn set_isa(&mut self, isa: aigc_quant::Isa) -> Result<(), WorkerError> {
        match &mut self.backend {
            Backend::Cpu(model) => Ok(model.set_isa(isa)?),
            Backend::Candle(_) => Err(WorkerError::Unsupported(
                "choosing CPU kernels for a model on candle's kernels".into(),
            )),
        }
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
        match &mut self.backend {
            Backend::Cpu(model) => model.reset(),
            Backend::Candle(weights) => weights.clear_kv_cache(),
        }
    }

    fn next_logits(&mut self, tokens: &[u32], start: usize) -> Result<Vec<f32>, WorkerError> {
        match &mut self.backend {
            Backend::Cpu(model) => Ok(model.forward(tokens, start)?),
            Backend::Candle(weights) => {
                let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
                let logits = weights.forward(&input, start)?;
                Ok(logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?)
            }
        }
    }

    /// Any number on the CPU kernels, each slot its own sequence (separate from
    /// `next_logits`'); candle's model keeps one.
    fn sequences(&self) -> usize {
        match self.backend {
            Backend::Cpu(_) => usize::MAX,
            Backend::Candle(_) => 1,
        }
    }

    /// On the CPU kernels, one pass for the whole batch: each weight matrix is read once
    /// for every sequence's rows.
    fn feed(&mut self, batch: &[SlotFeed<'_>]) -> Result<Vec<Vec<f32>>, WorkerError> {
        let Backend::Cpu(model) = &self.backend else {
            return feed_each(self, batch);
        };
        let mut slots: Vec<usize> = batch.iter().map(|f| f.slot).collect();
        slots.sort_unstable();
        if slots.windows(2).any(|w| w[0] == w[1]) {
            return Err(WorkerError::InvalidArgument(
                "two entries of one batch feed the same sequence slot".into(),
            ));
        }
        if let Some(&last) = slots.last()
            && last >= self.slots.len()
        {
            self.slots.resize_with(last + 1, Sequence::default);
        }
        let mut taken: Vec<Sequence> = batch
            .iter()
            .map(|f| std::mem::take(&mut self.slots[f.slot]))
            .collect();
        let mut feeds: Vec<Feed<'_>> = taken
            .iter_mut()
            .zip(batch)
            .map(|(sequence, f)| Feed {
                sequence,
                tokens: f.tokens,
                start: f.start,
            })
            .collect();
        let logits = model.forward_many(&mut feeds);
        drop(feeds);
        for (sequence, f) in taken.into_iter().zip(batch) {
            self.slots[f.slot] = sequence;
        }
        Ok(logits?)
    }

    fn cache_bytes_per_position(&self) -> usize {
        match &self.backend {
            Backend::Cpu(model) => model.cache_bytes_per_position(),
            Backend::Candle(_) => 0,
        }
    }

    fn release(&mut self, slot: usize) {
        if let Some(sequence) = self.slots.get_mut(slot) {
            *sequence = Sequence::default();
        }
    }
}

enum Backend {
    Cpu(Box<Llama>),
    Candle(Box<ModelWeights>),
}

/// The model on `aigc_quant`'s CPU kernels; [`QuantError::Unsupported`] when its weights
/// use a quantization those kernels do not take (or experts).
fn cpu_model(
    content: &gguf_file::Content,
    file: &mut File,
    context_length: usize,
) -> Result<Llama, WorkerError> {
    let number = |key: &str| -> Result<Option<f64>, WorkerError> {
        let Some(value) = content.metadata.get(key) else {
            return Ok(None);
        };
        let number = value
            .to_u32()
            .map(f64::from)
            .or_else(|_| value.to_f32().map(f64::from))
            .or_else(|_| value.to_u64().map(|v| v as f64))
            .map_err(|_| {
                WorkerError::InvalidModel(format!("GGUF metadata `{key}` is not a number"))
            })?;
        Ok(Some(number))
    };
    let required = |key: &str| {
        number(key)?
            .ok_or_else(|| WorkerError::InvalidModel(format!("GGUF metadata lacks `{key}`")))
    };
    if number("llama.expert_count")?.is_some_and(|n| n > 1.0) {
        return Err(QuantError::Unsupported("mixture-of-experts llama".into()).into());
    }
    let embedding = required("llama.embedding_length")? as usize;
    let heads = required("llama.attention.head_count")? as usize;
    let config = LlamaConfig {
        layers: required("llama.block_count")? as usize,
        embedding,
        heads,
        kv_heads: number("llama.attention.head_count_kv")?.map_or(heads, |n| n as usize),
        feed_forward: required("llama.feed_forward_length")? as usize,
        rope_base: number("llama.rope.freq_base")?.map_or(10_000.0, |n| n as f32),
        rope_dimensions: number("llama.rope.dimension_count")?
            .map_or(embedding / heads.max(1), |n| n as usize),
        rms_epsilon: required("llama.attention.layer_norm_rms_epsilon")? as f32,
        context_length,
    };
    let model = Llama::load(config, |name| {
        let Some(info) = content.tensor_infos.get(name) else {
            return Ok(None);
        };
        let format = match info.ggml_dtype {
            GgmlDType::F32 => TensorFormat::F32,
            GgmlDType::Q4_1 => TensorFormat::Quantized(aigc_quant::WeightFormat::Q4_1),
            GgmlDType::Q8_0 => TensorFormat::Quantized(aigc_quant::WeightFormat::Q8_0),
            other => {
                return Err(QuantError::Unsupported(format!(
                    "tensor `{name}` is {other:?}"
                )));
            }
        };
        let tensor = content
            .tensor(file, name, &Device::Cpu)
            .and_then(|t| Ok((t.shape().dims().to_vec(), t.data()?.into_owned())))
            .map_err(|e| QuantError::Model(format!("reading tensor `{name}`: {e}")))?;
        Ok(Some(RawTensor {
            format,
            dims: tensor.0,
            data: tensor.1,
        }))
    })?;
    Ok(model)
}
