//! `aigc-worker inspect`: checks a model artifact before it is registered or served. It
//! verifies every object against the manifest (size and SHA-256), parses the artifact as its
//! format (GGUF header and tensor table; safetensors headers and `config.json`; a trained
//! model's config), counts parameters, and reports a compact JSON summary (see
//! [`crate::summary`]) for the Model controller.
//!
//! Reading headers only: no weights are loaded, so inspecting a large model is quick and
//! needs little memory.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use aigc_storage::{MANIFEST_KEY, Manifest, ManifestEntry};
use serde::Serialize;

use crate::models::{ModelFormat, SafetensorsHeader, read_safetensors_header};
use crate::{Result, WorkerError, objects, summary};

/// Formats `inspect` parses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One GGUF file (weights, hyper-parameters, tokenizer).
    Gguf,
    /// `config.json` with `*.safetensors` (Hugging Face or `aigc-worker train` output).
    Safetensors,
}

/// Flags of `aigc-worker inspect`.
#[derive(Clone, Debug, clap::Args)]
pub struct InspectArgs {
    /// The model: a GGUF file, or a directory (`file:///abs/dir`, a plain path, or
    /// `s3://bucket/prefix`).
    #[arg(long)]
    pub model: String,
    /// The format the model must have; detected from the files when omitted.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Where the compact final JSON summary goes (Kubernetes' termination message).
    #[arg(long, default_value = summary::DEFAULT_TERMINATION_MESSAGE_PATH)]
    pub termination_message_path: PathBuf,
}

/// What `inspect` found.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inspection {
    pub format: Format,
    /// `llama`, `bert`, `mlp`, `char-transformer`, ...
    pub architecture: String,
    /// Elements of every weight tensor.
    pub parameters: u64,
    /// Bytes of every object in the manifest.
    pub size_bytes: u64,
    /// `sha256:` digest of the manifest (the artifact's content identity).
    pub manifest_digest: String,
    /// `verified` (a stored manifest, every object checked) or `computed` (no manifest was
    /// stored; this one was computed from the files).
    pub manifest: &'static str,
    /// Objects in the manifest.
    pub objects: usize,
    /// `text-generation`, `embeddings`, `classification` or `regression`.
    pub task: String,
    /// Longest context in tokens (generative models that state it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u64>,
}

/// Run `aigc-worker inspect`; exit 0 when the model checks out, 1 otherwise (with `error` in
/// the summary).
pub fn run_command(args: InspectArgs) -> std::process::ExitCode {
    let result = objects::local_copy(&args.model).and_then(|path| inspect(&path, args.format));
    let (value, code) = match result {
        Ok(found) => (
            serde_json::to_value(&found).expect("inspections serialise"),
            std::process::ExitCode::SUCCESS,
        ),
        Err(error) => {
            eprintln!("aigc-worker inspect: {error}");
            (
                serde_json::json!({ "model": args.model, "error": error.to_string() }),
                std::process::ExitCode::FAILURE,
            )
        }
    };
    summary::emit(
        &summary::compact(&value, &[]),
        Some(&args.termination_message_path),
    );
    code
}

/// Inspect the model at `path` (a GGUF file or a model directory).
pub fn inspect(path: &Path, expected: Option<Format>) -> Result<Inspection> {
    let detected = ModelFormat::detect(path)?;
    let root = match &detected {
        ModelFormat::Gguf(file) if path.is_file() => file.parent().unwrap_or(Path::new(".")),
        _ => path,
    };
    let (manifest, how) = match objects::read_manifest_if_present(root)? {
        Some(manifest) => {
            verify(root, &manifest)?;
            (manifest, "verified")
        }
        None => (computed_manifest(root)?, "computed"),
    };
    let mut found = match &detected {
        ModelFormat::Gguf(file) => inspect_gguf(file)?,
        ModelFormat::Safetensors { dir } => inspect_safetensors(dir, &manifest)?,
    };
    if let Some(expected) = expected
        && expected != found.format
    {
        return Err(WorkerError::InvalidArgument(format!(
            "--format {}: {} is a {} model",
            format_name(expected),
            path.display(),
            format_name(found.format)
        )));
    }
    found.size_bytes = manifest.total_bytes;
    found.manifest_digest = manifest.digest();
    found.manifest = how;
    found.objects = manifest.objects.len();
    Ok(found)
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Gguf => "gguf",
        Format::Safetensors => "safetensors",
    }
}

/// Every object of `manifest` under `root` has its listed size and SHA-256.
fn verify(root: &Path, manifest: &Manifest) -> Result<()> {
    for entry in &manifest.objects {
        let path = root.join(&entry.key);
        let (size, sha256) = objects::sha256_file(&path)?;
        if size != entry.size || sha256 != entry.sha256 {
            return Err(WorkerError::Corrupt(format!(
                "{}: {size} bytes with sha256 {sha256}, but the manifest lists {} bytes with sha256 {}",
                path.display(),
                entry.size,
                entry.sha256
            )));
        }
    }
    Ok(())
}

/// A manifest of every file below `root` (for artifacts stored without one).
fn computed_manifest(root: &Path) -> Result<Manifest> {
    let mut keys = Vec::new();
    objects::collect_files(root, "", &mut keys)?;
    keys.retain(|k| k != MANIFEST_KEY);
    let mut entries = Vec::with_capacity(keys.len());
    for key in keys {
        let (size, sha256) = objects::sha256_file(&root.join(&key))?;
        entries.push(ManifestEntry { key, size, sha256 });
    }
    Ok(Manifest::new(entries)?)
}

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> WorkerError {
    WorkerError::ModelFormat {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn inspect_gguf(file: &Path) -> Result<Inspection> {
    use candle_core::quantized::gguf_file;
    let mut reader = BufReader::new(File::open(file).map_err(|e| WorkerError::io(file, e))?);
    let content = gguf_file::Content::read(&mut reader)
        .map_err(|e| corrupt(file, format!("GGUF header: {e}")))?;
    let architecture = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| corrupt(file, "GGUF metadata has no general.architecture"))?;
    let file_size = std::fs::metadata(file)
        .map_err(|e| WorkerError::io(file, e))?
        .len();
    let mut parameters = 0u64;
    for (name, info) in &content.tensor_infos {
        let elements = info.shape.elem_count() as u64;
        let block = info.ggml_dtype.block_size() as u64;
        let bytes = elements / block * info.ggml_dtype.type_size() as u64;
        let end = content.tensor_data_offset + info.offset + bytes;
        if end > file_size {
            return Err(corrupt(
                file,
                format!(
                    "tensor {name:?} ends at byte {end}, past the end of the file ({file_size} bytes): the file is truncated"
                ),
            ));
        }
        parameters += elements;
    }
    let context_length = content
        .metadata
        .get(&format!("{architecture}.context_length"))
        .and_then(|v| v.to_u32().ok())
        .map(u64::from);
    Ok(Inspection {
        format: Format::Gguf,
        architecture,
        parameters,
        size_bytes: 0,
        manifest_digest: String::new(),
        manifest: "",
        objects: 0,
        task: "text-generation".into(),
        context_length,
    })
}

fn inspect_safetensors(dir: &Path, manifest: &Manifest) -> Result<Inspection> {
    let config_path = dir.join("config.json");
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&config_path).map_err(|e| WorkerError::io(&config_path, e))?,
    )
    .map_err(|e| corrupt(&config_path, format!("not JSON: {e}")))?;
    let weight_files: Vec<&str> = manifest
        .objects
        .iter()
        .map(|o| o.key.as_str())
        .filter(|k| k.ends_with(".safetensors"))
        .collect();
    if weight_files.is_empty() {
        return Err(corrupt(dir, "holds config.json but no .safetensors file"));
    }
    let mut parameters = 0;
    for key in weight_files {
        parameters += safetensors_parameters(&dir.join(key))?;
    }
    let (architecture, task, context_length) = match config.get("architecture") {
        // Written by `aigc-worker train` (see `models::ModelConfig`).
        Some(serde_json::Value::String(architecture)) => {
            let task = match architecture.as_str() {
                "mlp" => config["task"]
                    .as_str()
                    .unwrap_or("classification")
                    .to_string(),
                "char-transformer" => "text-generation".to_string(),
                _ => "classification".to_string(),
            };
            (architecture.clone(), task, None)
        }
        _ => {
            let model_type = config["model_type"].as_str().ok_or_else(|| {
                corrupt(
                    &config_path,
                    "has neither `architecture` (a trained model) nor `model_type` (a Hugging Face model)",
                )
            })?;
            let task = match model_type {
                "bert" | "roberta" | "xlm-roberta" | "distilbert" | "mpnet" => "embeddings",
                _ => "text-generation",
            };
            (
                model_type.to_string(),
                task.to_string(),
                config["max_position_embeddings"].as_u64(),
            )
        }
    };
    Ok(Inspection {
        format: Format::Safetensors,
        architecture,
        parameters,
        size_bytes: 0,
        manifest_digest: String::new(),
        manifest: "",
        objects: 0,
        task,
        context_length,
    })
}

/// Elements of every tensor in a safetensors file, from its header alone; the header's
/// offsets must agree with the file's size.
fn safetensors_parameters(path: &Path) -> Result<u64> {
    let SafetensorsHeader {
        data_bytes,
        tensors: header,
        ..
    } = read_safetensors_header(path)?;
    let mut parameters = 0u64;
    for (name, tensor) in &header {
        let shape = tensor["shape"]
            .as_array()
            .ok_or_else(|| corrupt(path, format!("tensor {name:?} has no shape")))?;
        let elements = shape
            .iter()
            .try_fold(1u64, |n, d| d.as_u64().and_then(|d| n.checked_mul(d)));
        let end = tensor["data_offsets"][1].as_u64();
        match (elements, end) {
            (Some(elements), Some(end)) if end <= data_bytes => parameters += elements,
            _ => {
                return Err(corrupt(
                    path,
                    format!(
                        "tensor {name:?}: shape {} and data_offsets {} do not fit the {data_bytes} data bytes",
                        tensor["shape"], tensor["data_offsets"]
                    ),
                ));
            }
        }
    }
    Ok(parameters)
}
