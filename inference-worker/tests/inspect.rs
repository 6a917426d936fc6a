//! `aigc-worker inspect`: the real GGUF and safetensors models and a trained model, checked
//! against their manifests, with the summary on stdout and in the termination message.

mod common;
mod training_support;

use std::process::Command;
use std::sync::atomic::AtomicBool;

use aigc_worker::prepare::{InputFormat, PrepareOptions, prepare, read_schema};
use aigc_worker::train::progress::Phase;
use aigc_worker::train::{Architecture, TrainOptions, train};
use serde_json::Value;
use training_support::TempDir;

/// Runs `aigc-worker inspect`; returns the exit success, the summary (stdout's last line) and
/// checks that the termination message holds the same bytes.
fn inspect(tmp: &TempDir, args: &[&str]) -> (bool, Value) {
    let message = tmp.join("termination-log");
    let _ = std::fs::remove_file(&message);
    let output = Command::new(env!("CARGO_BIN_EXE_aigc-worker"))
        .arg("inspect")
        .args(args)
        .arg("--termination-message-path")
        .arg(&message)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let last = stdout.lines().last().unwrap_or_default();
    let written = std::fs::read_to_string(&message).unwrap();
    assert_eq!(written, last);
    assert!(written.len() <= 4096);
    (output.status.success(), serde_json::from_str(last).unwrap())
}

#[test]
fn real_models_report_format_architecture_and_parameters() {
    let tmp = TempDir::new("inspect-real");
    let gguf = common::smollm2_gguf();
    let (ok, summary) = inspect(&tmp, &["--model", gguf.to_str().unwrap()]);
    assert!(ok, "{summary}");
    assert_eq!(summary["format"], "gguf");
    assert_eq!(summary["architecture"], "llama");
    assert_eq!(summary["task"], "text-generation");
    let parameters = summary["parameters"].as_u64().unwrap();
    assert!(
        (130_000_000..140_000_000).contains(&parameters),
        "SmolLM2-135M has {parameters} parameters?"
    );
    assert_eq!(summary["contextLength"], 8192);
    assert!(
        summary["manifestDigest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );

    let minilm = common::minilm_dir();
    let (ok, summary) = inspect(&tmp, &["--model", minilm.to_str().unwrap()]);
    assert!(ok, "{summary}");
    assert_eq!(summary["format"], "safetensors");
    assert_eq!(summary["architecture"], "bert");
    assert_eq!(summary["task"], "embeddings");
    let parameters = summary["parameters"].as_u64().unwrap();
    assert!(
        (22_000_000..23_000_000).contains(&parameters),
        "all-MiniLM-L6-v2 has {parameters} parameters?"
    );
    assert_eq!(summary["manifest"], "computed");

    let (ok, summary) = inspect(
        &tmp,
        &["--model", minilm.to_str().unwrap(), "--format", "gguf"],
    );
    assert!(!ok);
    assert!(
        summary["error"].as_str().unwrap().contains("safetensors"),
        "{summary}"
    );
}

fn trained_mlp(tmp: &TempDir) -> (std::path::PathBuf, String) {
    let csv = training_support::shared_dataset("breast_cancer.csv");
    let schema = training_support::breast_cancer_schema(tmp.path(), &csv);
    let data = tmp.join("data");
    let report = prepare(&PrepareOptions {
        source: csv.display().to_string(),
        format: InputFormat::Csv,
        schema: Some(read_schema(&schema).unwrap()),
        out: data.display().to_string(),
        drop_invalid_rows: true,
        dedupe: false,
        max_row_bytes: None,
        shard_bytes: 64 << 20,
    });
    assert!(report.succeeded(), "{report:?}");
    let out = tmp.join("model");
    let status = train(
        &TrainOptions {
            dataset: data.display().to_string(),
            architecture: Architecture::Mlp,
            out: out.display().to_string(),
            base_model: None,
            text_column: None,
            target: None,
            task: None,
            epochs: 1,
            batch_size: 64,
            lr: 1e-3,
            weight_decay: 0.0,
            seed: 1,
            checkpoint_every: 0,
            checkpoint_dir: None,
            resume: false,
            validation_fraction: 0.2,
            hidden: vec![32, 16],
            d_model: 64,
            layers: 2,
            heads: 4,
            block_size: 32,
            status_file: None,
            termination_message_path: tmp.join("train-log"),
            progress_listen: None,
        },
        &AtomicBool::new(false),
    );
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    (out, status.manifest_digest.unwrap())
}

#[test]
fn trained_model_is_verified_and_tampering_is_named() {
    let tmp = TempDir::new("inspect-trained");
    let (model, digest) = trained_mlp(&tmp);
    let uri = format!("file://{}", model.display());
    let (ok, summary) = inspect(&tmp, &["--model", &uri, "--format", "safetensors"]);
    assert!(ok, "{summary}");
    assert_eq!(summary["architecture"], "mlp");
    assert_eq!(summary["task"], "classification");
    assert_eq!(summary["manifest"], "verified");
    assert_eq!(summary["manifestDigest"], digest.as_str());
    assert_eq!(summary["objects"], 4);
    // 30 features -> 32 -> 16 -> 2 classes, with biases.
    assert_eq!(
        summary["parameters"],
        30 * 32 + 32 + 32 * 16 + 16 + 16 * 2 + 2
    );

    let weights = model.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, bytes).unwrap();
    let (ok, summary) = inspect(&tmp, &["--model", &uri]);
    assert!(!ok);
    let error = summary["error"].as_str().unwrap();
    assert!(
        error.contains("model.safetensors") && error.contains("manifest lists"),
        "{error}"
    );
}
