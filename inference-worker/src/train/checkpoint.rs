//! Checkpoints: everything needed to continue a run exactly where it stopped.
//!
//! A checkpoint directory `step-NNNNNNNNNN/` holds `state.safetensors` (parameters as
//! `param.<name>`, AdamW moments as `adam.m.<name>` / `adam.v.<name>`) and `state.json`
//! ([`CheckpointMeta`]: step, epoch, position in the epoch, RNG state, loss sums, history,
//! and the fingerprint of the settings it belongs to). The file `latest` names the newest
//! complete checkpoint; it is replaced atomically after the checkpoint is fully written, so a
//! crash while checkpointing leaves the previous one in force.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::EpochRecord;
use super::adamw::AdamW;
use crate::models::Params;
use crate::{Result, WorkerError, objects};

const LATEST: &str = "latest";
const META: &str = "state.json";
const TENSORS: &str = "state.safetensors";

/// Where training is, beyond the tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Current epoch (0-based).
    pub epoch: usize,
    /// Batches of the current epoch completed.
    pub step_in_epoch: usize,
    /// State of the shuffling generator at the start of the current epoch.
    pub epoch_rng: u64,
    /// Sum of the training losses of the current epoch's completed batches.
    pub loss_sum: f64,
    /// Completed epochs.
    pub history: Vec<EpochRecord>,
}

/// `state.json` of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointMeta {
    /// The settings the run was started with; a resume must match them.
    pub fingerprint: serde_json::Value,
    /// Where training is.
    pub state: TrainState,
}

/// Write a checkpoint and make it the latest; older checkpoints are removed.
pub fn save(dir: &Path, params: &Params, adam: &AdamW, meta: &CheckpointMeta) -> Result<()> {
    fs::create_dir_all(dir)
        .map_err(|e| WorkerError::io(format!("creating {}", dir.display()), e))?;
    let name = format!("step-{:010}", meta.state.step);
    let staging = dir.join(format!(".{name}.partial"));
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .map_err(|e| WorkerError::io(format!("clearing {}", staging.display()), e))?;
    }
    fs::create_dir_all(&staging)
        .map_err(|e| WorkerError::io(format!("creating {}", staging.display()), e))?;
    let mut tensors: HashMap<String, Tensor> = params
        .tensors()
        .into_iter()
        .map(|(k, v)| (format!("param.{k}"), v))
        .collect();
    tensors.extend(adam.tensors(params));
    candle_core::safetensors::save(&tensors, staging.join(TENSORS))?;
    let json = serde_json::to_vec_pretty(meta).expect("checkpoint state serialises");
    objects::write_atomic(&staging.join(META), &json)?;
    let target = dir.join(&name);
    if target.exists() {
        fs::remove_dir_all(&target)
            .map_err(|e| WorkerError::io(format!("replacing {}", target.display()), e))?;
    }
    fs::rename(&staging, &target)
        .map_err(|e| WorkerError::io(format!("moving checkpoint to {}", target.display()), e))?;
    objects::write_atomic(&dir.join(LATEST), name.as_bytes())?;
    let entries =
        fs::read_dir(dir).map_err(|e| WorkerError::io(format!("listing {}", dir.display()), e))?;
    for entry in entries.flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        if n.starts_with("step-") && n != name {
            // Best effort: an old checkpoint left behind is harmless.
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

/// The latest checkpoint under `dir`, if any.
pub fn load_latest(
    dir: &Path,
    device: &Device,
) -> Result<Option<(CheckpointMeta, HashMap<String, Tensor>)>> {
    let latest = dir.join(LATEST);
    let name = match fs::read_to_string(&latest) {
        Ok(name) => name,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(WorkerError::io(format!("reading {}", latest.display()), e)),
    };
    let ckpt = dir.join(name.trim());
    let meta_path = ckpt.join(META);
    let bytes = fs::read(&meta_path)
        .map_err(|e| WorkerError::io(format!("reading {}", meta_path.display()), e))?;
    let meta: CheckpointMeta = serde_json::from_slice(&bytes)
        .map_err(|e| WorkerError::Corrupt(format!("{}: {e}", meta_path.display())))?;
    let tensors = candle_core::safetensors::load(ckpt.join(TENSORS), device)?;
    Ok(Some((meta, tensors)))
}

/// Restore parameters and optimizer from checkpoint tensors.
pub fn restore(
    params: &Params,
    adam: &mut AdamW,
    tensors: &HashMap<String, Tensor>,
    step: u64,
) -> Result<()> {
    params.assign(tensors, "param.")?;
    adam.restore(params, tensors, step)
}

/// Fields whose values differ between two fingerprints.
pub fn fingerprint_differences(
    saved: &serde_json::Value,
    current: &serde_json::Value,
) -> Vec<String> {
    let (Some(a), Some(b)) = (saved.as_object(), current.as_object()) else {
        return vec!["(fingerprint)".into()];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "{k}: checkpoint {} vs now {}",
                a.get(k).unwrap_or(&serde_json::Value::Null),
                b.get(k).unwrap_or(&serde_json::Value::Null)
            )
        })
        .collect()
}
