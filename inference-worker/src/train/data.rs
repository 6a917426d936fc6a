//! Reading a prepared dataset (the output of `prepare`), checked against its manifest.

use std::path::PathBuf;

use aigc_storage::Manifest;

use crate::prepare::{DATASET_KEY, DatasetDescriptor, InputFormat};
use crate::{Result, WorkerError, objects};

/// A prepared dataset: its descriptor and manifest.
pub(crate) struct PreparedDataset {
    dir: PathBuf,
    manifest: Manifest,
    pub descriptor: DatasetDescriptor,
}

impl PreparedDataset {
    pub fn open(uri: &str) -> Result<Self> {
        let dir = objects::local_copy(uri)?;
        let manifest = objects::read_manifest(&dir)?;
        let bytes = objects::read_verified(&dir, &manifest, DATASET_KEY)?;
        let descriptor: DatasetDescriptor = serde_json::from_slice(&bytes)
            .map_err(|e| WorkerError::Corrupt(format!("{}/{DATASET_KEY}: {e}", dir.display())))?;
        Ok(PreparedDataset {
            dir,
            manifest,
            descriptor,
        })
    }

    /// The manifest digest: the dataset version trained on.
    pub fn digest(&self) -> String {
        self.manifest.digest()
    }

    /// The schema of a tabular dataset.
    pub fn schema(&self) -> Result<&aigc_crds::dataset::DataSchema> {
        self.descriptor.schema.as_ref().ok_or_else(|| {
            WorkerError::InvalidArgument(format!(
                "{} is a text dataset without columns; this needs a tabular (csv or jsonl) dataset",
                self.dir.display()
            ))
        })
    }

    /// Header and rows of a tabular dataset (all shards, in order).
    pub fn table(&self) -> Result<(Vec<String>, Vec<Vec<String>>)> {
        if self.descriptor.format != InputFormat::Csv {
            return Err(WorkerError::InvalidArgument(format!(
                "{} is a text dataset; the mlp architecture needs a tabular (csv or jsonl) dataset",
                self.dir.display()
            )));
        }
        let mut header = Vec::new();
        let mut rows = Vec::new();
        for key in &self.descriptor.shards {
            let bytes = objects::read_verified(&self.dir, &self.manifest, key)?;
            let mut reader = csv::Reader::from_reader(bytes.as_slice());
            let h: Vec<String> = reader
                .headers()
                .map_err(|e| WorkerError::Corrupt(format!("{key}: {e}")))?
                .iter()
                .map(str::to_owned)
                .collect();
            if header.is_empty() {
                header = h;
            } else if header != h {
                return Err(WorkerError::Corrupt(format!(
                    "{key}: its header differs from the first shard's"
                )));
            }
            for record in reader.records() {
                let record = record.map_err(|e| WorkerError::Corrupt(format!("{key}: {e}")))?;
                rows.push(record.iter().map(str::to_owned).collect());
            }
        }
        Ok((header, rows))
    }

    /// The text of a text dataset: its rows joined by newlines.
    pub fn text(&self) -> Result<String> {
        if self.descriptor.format != InputFormat::Text {
            return Err(WorkerError::InvalidArgument(format!(
                "{} is a tabular dataset; the char-transformer architecture needs a text dataset",
                self.dir.display()
            )));
        }
        let mut text = String::new();
        for key in &self.descriptor.shards {
            let bytes = objects::read_verified(&self.dir, &self.manifest, key)?;
            let shard = String::from_utf8(bytes)
                .map_err(|_| WorkerError::Corrupt(format!("{key} is not UTF-8")))?;
            text.push_str(&shard);
        }
        Ok(text)
    }
}
