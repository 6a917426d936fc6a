//! Fine-tuning on a sentence-embedding base model (`--base-model`, e.g. all-MiniLM-L6-v2):
//! the base stays frozen, so each row's text is embedded once and an MLP head trains on the
//! embeddings as if they were tabular features (one column per dimension).

use std::path::{Path, PathBuf};

use aigc_crds::dataset::{Column, ColumnType, DataSchema};
use candle_core::Device;

use super::TrainOptions;
use super::data::PreparedDataset;
use crate::models::Embedder;
use crate::models::bert::BertEmbedder;
use crate::{Result, WorkerError, objects};

/// The dataset as an embedding table, and what the model config needs to know.
pub(crate) struct EmbeddedTable {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub schema: DataSchema,
    pub text_column: String,
    /// The local copy of the base model, copied into the output's `base/`.
    pub base_dir: PathBuf,
}

/// Name of the feature for embedding dimension `i`.
fn dimension_name(i: usize) -> String {
    format!("embedding.{i}")
}

/// Embed the text column of every row that has a target.
pub(crate) fn embedded_table(
    dataset: &PreparedDataset,
    options: &TrainOptions,
    base_model: &str,
    device: &Device,
) -> Result<EmbeddedTable> {
    let base_dir = objects::local_copy(base_model)?;
    let embedder = BertEmbedder::load(&base_dir, device).map_err(|e| {
        WorkerError::InvalidArgument(format!(
            "--base-model {base_model}: {e}; it must be a BERT-family sentence-embedding model directory (config.json, tokenizer.json, *.safetensors)"
        ))
    })?;
    let (header, rows) = dataset.table()?;
    let schema = dataset.schema()?;
    let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    let target_name = options
        .target
        .clone()
        .unwrap_or_else(|| names.last().expect("schemas have columns").to_string());
    let target = schema
        .columns
        .iter()
        .find(|c| c.name == target_name)
        .ok_or_else(|| {
            WorkerError::InvalidArgument(format!(
                "--target {target_name:?} is not a column of the dataset; columns are {names:?}"
            ))
        })?;
    let text = match &options.text_column {
        Some(name) => schema.columns.iter().find(|c| &c.name == name),
        None => schema
            .columns
            .iter()
            .find(|c| c.type_ == ColumnType::String && c.name != target_name),
    }
    .ok_or_else(|| {
        WorkerError::InvalidArgument(format!(
            "--base-model needs a string column with the text (--text-column); the dataset's columns are {names:?}"
        ))
    })?;
    let position = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            WorkerError::Corrupt(format!(
                "column {name:?} is in the schema but not in the shards"
            ))
        })
    };
    let (text_pos, target_pos) = (position(&text.name)?, position(&target_name)?);
    let rows: Vec<&Vec<String>> = rows.iter().filter(|r| !r[target_pos].is_empty()).collect();
    let max_tokens = embedder.max_tokens();
    let mut inputs = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let ids = embedder.tokenize(&row[text_pos])?;
        if ids.len() > max_tokens {
            return Err(WorkerError::InvalidData(format!(
                "row {} of column {:?} has {} tokens; the base model takes at most {max_tokens}",
                i + 1,
                text.name,
                ids.len()
            )));
        }
        inputs.push(ids);
    }
    tracing::info!(
        rows = inputs.len(),
        "embedding the text column with the base model"
    );
    let vectors = embedder.embed(&inputs)?;
    let dimensions = embedder.dimensions();
    let mut table_header: Vec<String> = (0..dimensions).map(dimension_name).collect();
    table_header.push(target_name.clone());
    let table_rows = vectors
        .iter()
        .zip(&rows)
        .map(|(vector, row)| {
            let mut out: Vec<String> = vector.iter().map(|x| x.to_string()).collect();
            out.push(row[target_pos].clone());
            out
        })
        .collect();
    let mut columns: Vec<Column> = (0..dimensions)
        .map(|i| Column {
            name: dimension_name(i),
            type_: ColumnType::Number,
            required: true,
            minimum: None,
            maximum: None,
        })
        .collect();
    columns.push(target.clone());
    Ok(EmbeddedTable {
        header: table_header,
        rows: table_rows,
        schema: DataSchema { columns },
        text_column: text.name.clone(),
        base_dir,
    })
}

/// Copy the base model's files into `staging/base/`; returns their keys.
pub(crate) fn copy_base(base_dir: &Path, staging: &Path, prefix: &str) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    objects::collect_files(base_dir, "", &mut keys)?;
    keys.retain(|k| k != aigc_storage::MANIFEST_KEY);
    let mut copied = Vec::with_capacity(keys.len());
    for key in keys {
        let to = staging.join(prefix).join(&key);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| WorkerError::io(parent, e))?;
        }
        std::fs::copy(base_dir.join(&key), &to)
            .map_err(|e| WorkerError::io(format!("copying the base model's {key}"), e))?;
        copied.push(format!("{prefix}/{key}"));
    }
    Ok(copied)
}
