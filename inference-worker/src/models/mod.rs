//! Model loading: detects a model's format and architecture from its files and hands back
//! one of a small set of capabilities (text generation, embeddings, prediction). A new
//! architecture plugs in by implementing one of the traits and adding an arm to [`load`].

pub mod bert;
mod bert_cpu;
pub mod char_transformer;
pub(crate) mod cpu;
pub mod llama;
pub mod mlp;
pub mod ops;
#[cfg(target_arch = "x86_64")]
mod sgemm_amx;
#[cfg(target_arch = "x86_64")]
mod sgemm_avx512;
pub mod text_classifier;
pub mod trained;

pub use char_transformer::{CharGenerator, CharTransformer, CharTransformerConfig};
pub use mlp::{Mlp, MlpConfig, Prediction};
pub use trained::*;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;

use crate::error::WorkerError;
use crate::tokenizer::{ChatTemplate, TextTokenizer};

/// A causal language model that produces logits one step at a time.
pub trait TextGenerator: Send {
    /// The longest sequence (prompt plus output) the model attends over.
    fn context_length(&self) -> usize;
    fn tokenizer(&self) -> &TextTokenizer;
    /// How chat requests become prompts for this model.
    fn chat_template(&self) -> ChatTemplate;
    /// Forgets the previous sequence so the next call starts at position 0.
    fn reset(&mut self);
    /// Feeds `tokens` at positions `start..start + tokens.len()` and returns the logits
    /// of the token after the last one.
    fn next_logits(&mut self, tokens: &[u32], start: usize) -> Result<Vec<f32>, WorkerError>;
    /// How many sequences the model holds at once, in slots `0..sequences()`, and feeds
    /// together through [`feed`](Self::feed): 1 for a model that keeps one sequence,
    /// `usize::MAX` for one with no limit of its own (memory permitting).
    fn sequences(&self) -> usize {
        1
    }
    /// Feeds each entry's tokens to the sequence in its slot (at most one entry per slot)
    /// and returns the logits after each entry's last token; `start` 0 begins a new
    /// sequence in the slot. The sequence of [`next_logits`](Self::next_logits) is slot 0
    /// unless the model says otherwise. Nothing changes when an entry is invalid.
    fn feed(&mut self, batch: &[SlotFeed<'_>]) -> Result<Vec<Vec<f32>>, WorkerError> {
        feed_each(self, batch)
    }
    /// Frees what the sequence in `slot` holds: its request is over.
    fn release(&mut self, _slot: usize) {}
    /// Memory one sequence of [`feed`](Self::feed) holds per position (its key/value
    /// cache), for bounding how many are decoded together; 0 when the model keeps one.
    fn cache_bytes_per_position(&self) -> usize {
        0
    }
}

/// Tokens for the sequence in one slot of a [`TextGenerator::feed`]: they go at positions
/// `start..start + tokens.len()`, `start` at most the positions the slot holds.
#[derive(Debug, Clone, Copy)]
pub struct SlotFeed<'a> {
    pub slot: usize,
    pub tokens: &'a [u32],
    pub start: usize,
}

/// [`TextGenerator::feed`] for a model that keeps one sequence: entry by entry through
/// `next_logits`.
pub fn feed_each<G: TextGenerator + ?Sized>(
    model: &mut G,
    batch: &[SlotFeed<'_>],
) -> Result<Vec<Vec<f32>>, WorkerError> {
    if let Some(bad) = batch.iter().find(|f| f.slot >= model.sequences()) {
        return Err(WorkerError::InvalidArgument(format!(
            "sequence slot {}; this model holds {}",
            bad.slot,
            model.sequences()
        )));
    }
    batch
        .iter()
        .map(|f| {
            if f.start == 0 {
                model.reset();
            }
            model.next_logits(f.tokens, f.start)
        })
        .collect()
}

/// A sentence-embedding model.
pub trait Embedder: Send + Sync {
    /// Longest input in tokens; longer inputs are refused, not truncated.
    fn max_tokens(&self) -> usize;
    fn dimensions(&self) -> usize;
    /// Token ids of one input, including any special tokens the model adds.
    fn tokenize(&self, text: &str) -> Result<Vec<u32>, WorkerError>;
    /// One L2-normalised vector per tokenized input, in input order.
    fn embed(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, WorkerError>;
}

/// A model that predicts one value per instance of named inputs: a class label or a number.
pub trait Predictor: Send + Sync {
    /// The inputs every instance must have, in the model's order.
    fn inputs(&self) -> Vec<InputColumn>;
    /// The column it predicts.
    fn target(&self) -> &str;
    /// One prediction per instance, as JSON: the class label (a number when the labels are
    /// numbers) or the predicted value. An instance the model cannot take is a
    /// [`WorkerError::InvalidInstance`] naming the instance and column.
    fn predict_json(
        &self,
        instances: &[serde_json::Map<String, serde_json::Value>],
    ) -> Result<Vec<serde_json::Value>, WorkerError>;
    /// The sentence-embedding model inside, when there is one (it then also serves
    /// `/v1/embeddings`).
    fn embedder(&self) -> Option<Arc<dyn Embedder>> {
        None
    }
}

/// One input of a [`Predictor`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InputColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: InputKind,
}

/// What an input takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// A number (also a numeric string, a boolean, or null for "unknown").
    Number,
    /// A string of text.
    Text,
}

/// What a loaded model can do.
pub enum Capability {
    Generation(Box<dyn TextGenerator>),
    Embedding(Arc<dyn Embedder>),
    Prediction(Arc<dyn Predictor>),
}

/// A loaded model and what `/v1/models` says about it.
pub struct LoadedModel {
    pub architecture: &'static str,
    pub format: ModelFormat,
    pub capability: Capability,
}

/// How a model's weights are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFormat {
    /// One GGUF file (weights, hyper-parameters and tokenizer in its metadata).
    Gguf(PathBuf),
    /// A directory with `config.json`, `*.safetensors` and usually `tokenizer.json`.
    Safetensors { dir: PathBuf },
}

impl ModelFormat {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Gguf(_) => "gguf",
            Self::Safetensors { .. } => "safetensors",
        }
    }

    /// Detects the format of `path`: a GGUF file (by its magic bytes), a directory holding
    /// one GGUF file or `config.json`, or a `.safetensors` file next to `config.json`.
    pub fn detect(path: &Path) -> Result<Self, WorkerError> {
        let format_error = |reason: &str| WorkerError::ModelFormat {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let metadata = std::fs::metadata(path).map_err(|e| WorkerError::io(path, e))?;
        if metadata.is_file() {
            if has_gguf_magic(path)? {
                return Ok(Self::Gguf(path.to_path_buf()));
            }
            let dir = path.parent().unwrap_or(Path::new("."));
            if path.extension().is_some_and(|e| e == "safetensors")
                && dir.join("config.json").is_file()
            {
                return Ok(Self::Safetensors {
                    dir: dir.to_path_buf(),
                });
            }
            return Err(format_error(
                "is neither a GGUF file nor a .safetensors file next to config.json",
            ));
        }
        if path.join("config.json").is_file() {
            return Ok(Self::Safetensors {
                dir: path.to_path_buf(),
            });
        }
        let entries = std::fs::read_dir(path).map_err(|e| WorkerError::io(path, e))?;
        let mut ggufs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| WorkerError::io(path, e))?;
            let file = entry.path();
            if file.is_file() && has_gguf_magic(&file)? {
                ggufs.push(file);
            }
        }
        match ggufs.len() {
            1 => Ok(Self::Gguf(ggufs.remove(0))),
            0 => Err(format_error(
                "directory has neither config.json (safetensors model) nor a GGUF file",
            )),
            n => Err(format_error(&format!(
                "directory holds {n} GGUF files; pass the one to serve"
            ))),
        }
    }
}

/// The header of a `.safetensors` file, read without touching its data.
pub(crate) struct SafetensorsHeader {
    /// The file, open for reading tensors.
    pub file: File,
    /// Where the data section starts in the file, and its length in bytes.
    pub data_start: u64,
    pub data_bytes: u64,
    /// Tensor name to its entry (`dtype`, `shape`, `data_offsets`); `__metadata__` left out.
    pub tensors: serde_json::Map<String, serde_json::Value>,
}

/// Reads the header of the safetensors file at `path`; its length must fit the file.
pub(crate) fn read_safetensors_header(path: &Path) -> Result<SafetensorsHeader, WorkerError> {
    let corrupt = |reason: String| WorkerError::ModelFormat {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path).map_err(|e| WorkerError::io(path, e))?;
    let file_size = file.metadata().map_err(|e| WorkerError::io(path, e))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| corrupt(format!("no safetensors header: {e}")))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > file_size.saturating_sub(8) || header_len > 100 << 20 {
        return Err(corrupt(format!(
            "header length {header_len} does not fit the file ({file_size} bytes)"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| corrupt(format!("safetensors header: {e}")))?;
    let mut tensors: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header)
            .map_err(|e| corrupt(format!("safetensors header is not a JSON object: {e}")))?;
    tensors.remove("__metadata__");
    Ok(SafetensorsHeader {
        file,
        data_start: 8 + header_len,
        data_bytes: file_size - 8 - header_len,
        tensors,
    })
}

fn has_gguf_magic(path: &Path) -> Result<bool, WorkerError> {
    let mut magic = [0u8; 4];
    let mut file = File::open(path).map_err(|e| WorkerError::io(path, e))?;
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == b"GGUF"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(WorkerError::io(path, e)),
    }
}

/// Loads the model at `path` onto `device`.
pub fn load(path: &Path, device: &Device) -> Result<LoadedModel, WorkerError> {
    let format = ModelFormat::detect(path)?;
    match &format {
        ModelFormat::Gguf(file) => {
            let generator = llama::QuantizedLlama::load(file, device)?;
            Ok(LoadedModel {
                architecture: llama::ARCHITECTURE,
                format,
                capability: Capability::Generation(Box::new(generator)),
            })
        }
        ModelFormat::Safetensors { dir } => {
            if let Some(architecture) = trained_architecture(dir)? {
                return load_trained(dir, &architecture, format.clone(), device);
            }
            let model_type = config_model_type(dir)?;
            match model_type.as_str() {
                "bert" => {
                    let embedder = bert::BertEmbedder::load(dir, device)?;
                    Ok(LoadedModel {
                        architecture: bert::ARCHITECTURE,
                        format,
                        capability: Capability::Embedding(Arc::new(embedder)),
                    })
                }
                other => Err(WorkerError::Unsupported(format!(
                    "config.json model_type `{other}` in {}; supported: bert",
                    dir.display()
                ))),
            }
        }
    }
}

/// Loads a model directory written by `aigc-worker train`.
fn load_trained(
    dir: &Path,
    architecture: &str,
    format: ModelFormat,
    device: &Device,
) -> Result<LoadedModel, WorkerError> {
    let (architecture, capability) = match architecture {
        "mlp" => (
            "mlp",
            Capability::Prediction(Arc::new(Mlp::load(dir, device)?)),
        ),
        "char-transformer" => (
            "char-transformer",
            Capability::Generation(Box::new(CharGenerator::new(CharTransformer::load(
                dir, device,
            )?))),
        ),
        "text-classifier" => (
            "text-classifier",
            Capability::Prediction(Arc::new(text_classifier::TextClassifier::load(
                dir, device,
            )?)),
        ),
        other => {
            return Err(WorkerError::Unsupported(format!(
                "config.json architecture `{other}` in {}; supported trained architectures: mlp, char-transformer, text-classifier",
                dir.display()
            )));
        }
    };
    Ok(LoadedModel {
        architecture,
        format,
        capability,
    })
}

fn read_config_json(dir: &Path) -> Result<serde_json::Value, WorkerError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| WorkerError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| WorkerError::ModelFormat {
        path,
        reason: format!("not JSON: {e}"),
    })
}

/// The `architecture` of a trained model's config (see [`ModelConfig`]), or `None` for a
/// config of another kind (a Hugging Face `config.json` names a `model_type` instead).
fn trained_architecture(dir: &Path) -> Result<Option<String>, WorkerError> {
    let config = read_config_json(dir)?;
    Ok(match (config.get("architecture"), config.get("format")) {
        (Some(serde_json::Value::String(a)), Some(serde_json::Value::Number(_))) => Some(a.clone()),
        _ => None,
    })
}

fn config_model_type(dir: &Path) -> Result<String, WorkerError> {
    let path = dir.join("config.json");
    let config = read_config_json(dir)?;
    config
        .get("model_type")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| WorkerError::ModelFormat {
            path,
            reason: "has no string field `model_type`".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_names_the_path_when_nothing_matches() {
        let dir = std::env::temp_dir().join(format!("aigc-detect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("weights.bin"), b"not a model").unwrap();
        let error = ModelFormat::detect(&dir.join("weights.bin")).unwrap_err();
        assert!(error.to_string().contains("weights.bin"), "{error}");
        let error = ModelFormat::detect(&dir).unwrap_err();
        assert!(error.to_string().contains("config.json"), "{error}");
        std::fs::write(dir.join("m.gguf"), b"GGUF\x03\0\0\0").unwrap();
        assert_eq!(
            ModelFormat::detect(&dir).unwrap(),
            ModelFormat::Gguf(dir.join("m.gguf"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
