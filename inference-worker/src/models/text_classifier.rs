//! A text classifier fine-tuned from a sentence-embedding model: the frozen base model (a
//! copy of all-MiniLM-L6-v2 in the model's `base/` directory) embeds the text, and a trained
//! MLP head maps the embedding to a label (or a number).
//!
//! The model directory is self-contained: `base/` is listed in the manifest with the head's
//! weights and config, so a copy on any tier serves without the original base model.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::bert::BertEmbedder;
use super::mlp::{Mlp, MlpConfig, architecture_name};
use super::{ArchitectureConfig, Embedder, InputColumn, InputKind, Predictor, read_model};
use crate::{Result, WorkerError, objects};

/// Directory of the base model inside a text-classifier model.
pub const BASE_DIR: &str = "base";

/// Configuration of a text classifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TextClassifierConfig {
    /// The input column holding the text.
    pub text_column: String,
    /// Where the base model came from (informational; the copy in `base/` is used).
    pub base_model: String,
    /// The head, whose features are the embedding's dimensions.
    pub head: MlpConfig,
}

/// A loaded text classifier.
pub struct TextClassifier {
    config: TextClassifierConfig,
    embedder: Arc<BertEmbedder>,
    head: Mlp,
}

impl TextClassifier {
    /// Load a model directory written by `aigc-worker train --base-model`, checking every
    /// object (the base model's files too) against the manifest.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let (config, tensors) = read_model(dir, device)?;
        let config = match config.model {
            ArchitectureConfig::TextClassifier(c) => c,
            other => {
                return Err(WorkerError::InvalidArgument(format!(
                    "{} holds a {} model, not a text-classifier",
                    dir.display(),
                    architecture_name(&other)
                )));
            }
        };
        let manifest = objects::read_manifest(dir)?;
        for entry in manifest
            .objects
            .iter()
            .filter(|e| e.key.starts_with(&format!("{BASE_DIR}/")))
        {
            objects::read_verified(dir, &manifest, &entry.key)?;
        }
        let embedder = Arc::new(BertEmbedder::load(&dir.join(BASE_DIR), device)?);
        if embedder.dimensions() != config.head.features.len() {
            return Err(WorkerError::Corrupt(format!(
                "{}: the base model gives {} dimensions but the head takes {}",
                dir.display(),
                embedder.dimensions(),
                config.head.features.len()
            )));
        }
        let head = Mlp::from_tensors(config.head.clone(), tensors, device)?;
        Ok(TextClassifier {
            config,
            embedder,
            head,
        })
    }

    /// The base model, which also serves `/v1/embeddings`.
    pub fn embedder(&self) -> Arc<BertEmbedder> {
        self.embedder.clone()
    }
}

impl Predictor for TextClassifier {
    fn inputs(&self) -> Vec<InputColumn> {
        vec![InputColumn {
            name: self.config.text_column.clone(),
            kind: InputKind::Text,
        }]
    }

    fn target(&self) -> &str {
        &self.config.head.target
    }

    fn predict_json(
        &self,
        instances: &[serde_json::Map<String, serde_json::Value>],
    ) -> Result<Vec<serde_json::Value>> {
        let column = &self.config.text_column;
        let max_tokens = self.embedder.max_tokens();
        let mut inputs = Vec::with_capacity(instances.len());
        for (row, instance) in instances.iter().enumerate() {
            let invalid = |reason: String| WorkerError::InvalidInstance {
                row,
                column: column.clone(),
                reason,
            };
            let text = match instance.get(column) {
                Some(serde_json::Value::String(text)) => text,
                Some(other) => {
                    return Err(invalid(format!(
                        "{other} is not usable; accepted: a string"
                    )));
                }
                None => return Err(invalid("missing; every instance needs its text".into())),
            };
            let ids = self.embedder.tokenize(text)?;
            if ids.len() > max_tokens {
                return Err(invalid(format!(
                    "the text has {} tokens; this model accepts at most {max_tokens}",
                    ids.len()
                )));
            }
            inputs.push(ids);
        }
        let vectors = self.embedder.embed(&inputs)?;
        let rows: Vec<Vec<f64>> = vectors
            .into_iter()
            .map(|v| v.into_iter().map(f64::from).collect())
            .collect();
        Ok(self.head.predictions_json(self.head.predict_values(&rows)?))
    }

    fn embedder(&self) -> Option<Arc<dyn Embedder>> {
        Some(self.embedder.clone())
    }
}
