//! TrainingJob: queued, admitted and placed training or fine-tuning (model layer).

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Accelerator, LocalObjectRef, NAME_PATTERN, Resources};
use crate::condition::Condition;
use crate::model::{
    ARCHITECTURE_FITS_TASK, ARCHITECTURE_FITS_TASK_MESSAGE, Architecture, Task, VERSION_PATTERN,
};

/// Trains or fine-tunes a model with candle on a Dataset and registers the result as a Model.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "aigc.dev",
    version = "v1alpha1",
    kind = "TrainingJob",
    plural = "trainingjobs",
    namespaced,
    shortname = "tj",
    category = "aigc",
    status = "TrainingJobStatus",
    derive = "PartialEq",
    doc = "Trains or fine-tunes a model on a Dataset with GPU or CPU worker pods, checkpointing as it goes, and registers the output as a Model.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Epoch",
        type_ = "integer",
        json_path = ".status.progress.epoch"
    ),
    printcolumn(
        name = "Step",
        type_ = "string",
        json_path = ".status.progress.stepText"
    ),
    printcolumn(name = "Loss", type_ = "number", json_path = ".status.progress.loss"),
    printcolumn(name = "ETA", type_ = "string", json_path = ".status.progress.eta"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(format!("!has(self.task) || ({ARCHITECTURE_FITS_TASK})")).message(ARCHITECTURE_FITS_TASK_MESSAGE))]
#[x_kube(validation = Rule::new("!has(self.baseModelRef) || self.architecture == 'bert'").message("baseModelRef (fine-tuning) is supported only for architecture bert"))]
pub struct TrainingJobSpec {
    /// The Dataset to train on, in this namespace. The job waits until it is Ready.
    pub dataset_ref: LocalObjectRef,
    /// A Model to fine-tune instead of training from scratch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model_ref: Option<LocalObjectRef>,
    /// The Model the job registers when it succeeds.
    pub output: TrainingOutput,
    /// Architecture to train: `mlp` (tabular), `char-transformer` (text) or `bert`
    /// (a classification head on a base embeddings model).
    pub architecture: Architecture,
    /// `classification` or `regression` for tabular data; inferred from the target column
    /// when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Task>,
    /// Column to predict (tabular data). Defaults to the last column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub target: Option<String>,
    /// Optimisation settings.
    #[serde(default)]
    pub hyperparameters: Hyperparameters,
    /// CPU, memory and GPU per replica.
    #[serde(default)]
    pub resources: Resources,
    /// Worker pods trained as one gang: all start together or none does.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 64))]
    pub replicas: u32,
    /// Higher runs first; a pending job may preempt running training of lower priority.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000000))]
    pub priority: i32,
    /// Admission queue from the operator's configuration.
    #[serde(default = "default_queue")]
    #[schemars(pattern(NAME_PATTERN), length(max = 63))]
    pub queue: String,
    /// How often to checkpoint, and where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
    /// Failed attempts retried (each resuming from the last checkpoint) before the job fails.
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub backoff_limit: u32,
    /// Seconds the job may run, counted from its first start, before it is stopped and failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<u64>,
}

/// The Model a TrainingJob registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingOutput {
    /// Name of the Model to create or update in this namespace.
    #[schemars(pattern(NAME_PATTERN), length(max = 253))]
    pub model_name: String,
    /// Version recorded on the Model.
    #[schemars(pattern(VERSION_PATTERN))]
    pub version: String,
    /// StorageTier for the trained weights. When omitted the operator uses a tier of class `hot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(NAME_PATTERN), length(max = 253))]
    pub tier: Option<String>,
}

/// Optimisation settings of a TrainingJob.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hyperparameters {
    /// Passes over the training split.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100000))]
    pub epochs: u32,
    /// Examples per optimisation step.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 65536))]
    pub batch_size: u32,
    /// AdamW learning rate.
    #[serde(default = "default_learning_rate")]
    #[schemars(range(min = 0.0000001, max = 10.0))]
    pub learning_rate: f64,
    /// Seed for initialisation, shuffling and the train/validation split; the same seed on
    /// CPU gives the same weights.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub seed: u64,
    /// Architecture-specific settings passed to the trainer, e.g. `hiddenLayers: [64, 32]`
    /// for mlp or `contextLength: 64` for char-transformer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Default for Hyperparameters {
    fn default() -> Self {
        Hyperparameters {
            epochs: one(),
            batch_size: default_batch_size(),
            learning_rate: default_learning_rate(),
            seed: 0,
            extra: BTreeMap::new(),
        }
    }
}

/// How often a TrainingJob checkpoints, and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// Optimisation steps between checkpoints. A checkpoint is also written on preemption.
    #[serde(default = "default_checkpoint_steps")]
    #[schemars(range(min = 1))]
    pub every_steps: u32,
    /// StorageTier for checkpoints. When omitted the output tier is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(NAME_PATTERN), length(max = 253))]
    pub tier: Option<String>,
}

fn one() -> u32 {
    1
}

fn default_queue() -> String {
    "default".to_owned()
}

fn default_backoff_limit() -> u32 {
    3
}

fn default_batch_size() -> u32 {
    32
}

fn default_learning_rate() -> f64 {
    0.001
}

fn default_checkpoint_steps() -> u32 {
    100
}

/// Lifecycle phase of a TrainingJob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TrainingJobPhase {
    /// Waiting for its Dataset or base Model.
    Pending,
    /// In its admission queue; the `Admitted` condition says why it waits.
    Queued,
    /// Resources reserved; worker pods are starting.
    Admitted,
    /// Training.
    Running,
    /// Finished; the output Model is registered.
    Succeeded,
    /// Out of retries or past its deadline; see the conditions.
    Failed,
}

/// How far training has come.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Current epoch, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
    /// Optimisation steps done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    /// Optimisation steps in the whole job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<u64>,
    /// `step/totalSteps`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_text: Option<String>,
    /// Training loss of the latest step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Validation metric of the latest epoch (accuracy, RMSE or perplexity by task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<f64>,
    /// Estimated time to completion, e.g. `3m20s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<String>,
}

/// Where a TrainingJob runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadPlacement {
    /// Nodes the worker pods were pinned to, one per replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Accelerator chosen by the scheduler (`gpu` or `cpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<Accelerator>,
}

/// Observed state of a TrainingJob.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobStatus {
    /// `Pending`, `Queued`, `Admitted`, `Running`, `Succeeded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TrainingJobPhase>,
    /// `Admitted`, `Complete` and `Failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Epoch, step, loss and ETA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Nodes and accelerator chosen by the scheduler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<WorkloadPlacement>,
    /// Attempts started so far, counting retries and resumptions after preemption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Attempts that failed; the job fails once this exceeds `backoffLimit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    /// When the first attempt started, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When the job succeeded or failed, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// The Model registered from the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_ref: Option<LocalObjectRef>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
