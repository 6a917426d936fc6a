//! Model: a versioned model artifact on a StorageTier (model layer, MaaS).

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Lifecycle, LocalObjectRef, Placement, PvcSource, S3Source};
use crate::condition::Condition;

/// Pattern of a Model version: letters, digits, `.`, `_` and `-`, e.g. `1.0.0` or `2026-05-01`.
pub const VERSION_PATTERN: &str = r"^[0-9A-Za-z][0-9A-Za-z._-]{0,62}$";

/// CEL rule: the task is one the architecture can do.
pub const ARCHITECTURE_FITS_TASK: &str = "(self.architecture == 'llama' && self.task == 'text-generation') \
     || (self.architecture == 'bert' && self.task in ['embeddings', 'classification']) \
     || (self.architecture == 'mlp' && self.task in ['classification', 'regression']) \
     || (self.architecture == 'char-transformer' && self.task == 'text-generation')";

/// What a user reads when [`ARCHITECTURE_FITS_TASK`] fails.
pub const ARCHITECTURE_FITS_TASK_MESSAGE: &str = "task does not fit architecture: llama and char-transformer do text-generation, \
     bert does embeddings or classification, mlp does classification or regression";

/// A versioned model artifact (GGUF or safetensors) placed on a storage tier.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "aigc.dev",
    version = "v1alpha1",
    kind = "Model",
    plural = "models",
    namespaced,
    shortname = "mdl",
    category = "aigc",
    status = "ModelStatus",
    derive = "PartialEq",
    doc = "A versioned model artifact (GGUF or safetensors) that is verified, placed on a StorageTier and served by InferenceServices.",
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(name = "Arch", type_ = "string", json_path = ".spec.architecture"),
    printcolumn(name = "Tier", type_ = "string", json_path = ".status.tier"),
    printcolumn(
        name = "Size",
        type_ = "integer",
        format = "int64",
        json_path = ".status.sizeBytes"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.format == 'safetensors' || self.architecture == 'llama'").message("format gguf is supported only for architecture llama; use safetensors for bert, mlp and char-transformer"))]
#[x_kube(validation = Rule::new(ARCHITECTURE_FITS_TASK).message(ARCHITECTURE_FITS_TASK_MESSAGE))]
pub struct ModelSpec {
    /// Where the artifact comes from: exactly one of `s3`, `pvc` or `trainingJobRef`
    /// (the output of a TrainingJob in this namespace).
    pub source: ModelSource,
    /// File format: `gguf` or `safetensors`.
    pub format: ModelFormat,
    /// Network architecture: `llama`, `bert`, `mlp` or `char-transformer`.
    pub architecture: Architecture,
    /// What the model does: `text-generation`, `embeddings`, `classification` or `regression`.
    pub task: Task,
    /// Version of the artifact, e.g. `1.0.0`.
    #[schemars(pattern(VERSION_PATTERN))]
    pub version: String,
    /// StorageTier to hold the artifact. When omitted the operator uses a tier of class `hot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// When the artifact moves between tiers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
}

/// Where a Model's artifact comes from: exactly one of `s3`, `pvc` or `trainingJobRef`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ModelSource {
    /// Objects in S3-compatible storage.
    S3(S3Source),
    /// Files on a PersistentVolumeClaim.
    Pvc(PvcSource),
    /// The output of a TrainingJob in this namespace; the Model becomes Ready when the job succeeds.
    TrainingJobRef(LocalObjectRef),
}

/// File format of a model artifact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// A single GGUF file (quantized llama-family weights and tokenizer).
    Gguf,
    /// safetensors weights with a config.json (and tokenizer.json where the model needs one).
    Safetensors,
}

/// Network architecture of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// Llama-family decoder (e.g. SmolLM2).
    Llama,
    /// BERT-family encoder (e.g. all-MiniLM-L6-v2).
    Bert,
    /// Multi-layer perceptron for tabular data.
    Mlp,
    /// Small decoder-only character-level transformer.
    CharTransformer,
}

/// What a model does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Generates text (completions and chat).
    TextGeneration,
    /// Maps text to vectors.
    Embeddings,
    /// Predicts a class label.
    Classification,
    /// Predicts a number.
    Regression,
}

/// Lifecycle phase of a Model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ModelPhase {
    /// Waiting for its source (e.g. the TrainingJob) or tier.
    Pending,
    /// Checking the artifact against its manifest and format.
    Verifying,
    /// Verified and readable on `status.tier`.
    Ready,
    /// Being moved to another tier; still readable on `status.tier`.
    Migrating,
    /// Verification failed; see the conditions.
    Failed,
}

/// Observed state of a Model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelStatus {
    /// `Pending`, `Verifying`, `Ready`, `Migrating` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ModelPhase>,
    /// `Ready`, `Validated` and `Migrating`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// StorageTier that holds the artifact now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Total bytes of the artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// `sha256:` digest of the manifest: the content identity of this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// Number of parameters read from the artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<u64>,
    /// Hash of the spec fields (source, format, placement) the recorded artifact was verified
    /// for; a change to them verifies the artifact again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_for: Option<String>,
    /// When a workload last read the artifact, RFC 3339; drives `lifecycle.demoteAfter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_access_time: Option<String>,
    /// InferenceServices in this namespace serving this Model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub served_by: Vec<LocalObjectRef>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
