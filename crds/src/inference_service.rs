//! InferenceService: candle inference workers behind an OpenAI-compatible API (service layer).

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{LocalObjectRef, Resources};
use crate::condition::Condition;
use crate::training_job::WorkloadPlacement;

/// Serves a Model with candle worker pods behind an OpenAI-compatible HTTP API.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "aigc.dev",
    version = "v1alpha1",
    kind = "InferenceService",
    plural = "inferenceservices",
    namespaced,
    shortname = "aisvc",
    category = "aigc",
    status = "InferenceServiceStatus",
    derive = "PartialEq",
    doc = "Serves a Model with candle inference worker pods behind an OpenAI-compatible HTTP API, with API keys, TLS, autoscaling and canary traffic.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.modelRef.name"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.canary) || self.canary.modelRef.name != self.modelRef.name").message("canary.modelRef must name a different Model than modelRef"))]
#[x_kube(validation = Rule::new("!has(self.autoscaling) || (self.replicas >= self.autoscaling.minReplicas && self.replicas <= self.autoscaling.maxReplicas)").message("replicas must lie between autoscaling.minReplicas and autoscaling.maxReplicas"))]
pub struct InferenceServiceSpec {
    /// The Model to serve, in this namespace. The service waits until it is Ready.
    pub model_ref: LocalObjectRef,
    /// A second Model that receives a share of the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// Worker pods serving the main Model. Set by the autoscaler when `autoscaling` is given.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: u32,
    /// Scale between bounds on in-flight requests per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// CPU, memory and GPU per replica.
    #[serde(default)]
    pub resources: Resources,
    /// Authentication and TLS of the HTTP API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiSecurity>,
    /// How requests are grouped into batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<Batching>,
}

/// A second Model receiving a share of the traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Canary {
    /// The canary Model, in this namespace; must differ from `modelRef`.
    pub model_ref: LocalObjectRef,
    /// Percent of requests sent to the canary.
    #[schemars(range(min = 0, max = 100))]
    pub traffic_percent: u32,
}

/// Autoscaling bounds and target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
pub struct Autoscaling {
    /// Fewest replicas; 0 lets the service scale to zero when idle.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: u32,
    /// Most replicas.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: u32,
    /// In-flight requests per replica the autoscaler aims for.
    #[serde(default = "default_target_concurrency")]
    #[schemars(range(min = 1, max = 10000))]
    pub target_concurrency: u32,
}

/// Authentication and TLS of the HTTP API.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiSecurity {
    /// Secret whose `keys` entry lists accepted bearer API keys, one per line. Without it
    /// the API is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<LocalObjectRef>,
    /// Secret of type `kubernetes.io/tls` (`tls.crt`, `tls.key`); the API serves HTTPS when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_ref: Option<LocalObjectRef>,
}

/// How requests are grouped into batches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Batching {
    /// Most requests run together in one batch.
    #[serde(default = "default_max_batch_size")]
    #[schemars(range(min = 1, max = 256))]
    pub max_batch_size: u32,
    /// Longest a request waits for others to fill a batch, in milliseconds.
    #[serde(default = "default_max_wait_millis")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_wait_millis: u32,
}

fn one() -> u32 {
    1
}

fn default_target_concurrency() -> u32 {
    4
}

fn default_max_batch_size() -> u32 {
    8
}

fn default_max_wait_millis() -> u32 {
    5
}

/// Lifecycle phase of an InferenceService.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum InferenceServicePhase {
    /// Waiting for its Model.
    Pending,
    /// Worker pods are starting.
    Deploying,
    /// At least one replica answers requests.
    Ready,
    /// No replica can serve; see the conditions.
    Failed,
}

/// Observed state of an InferenceService.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceStatus {
    /// `Pending`, `Deploying`, `Ready` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<InferenceServicePhase>,
    /// `Ready`, and `Admitted` for placement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Base URL of the OpenAI-compatible API, e.g. `http://chat.default.svc:8080/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Worker pods that exist (for the scale subresource).
    #[serde(default)]
    pub replicas: u32,
    /// Worker pods that pass their readiness probe.
    #[serde(default)]
    pub ready_replicas: u32,
    /// Version of the Model being served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// Nodes (one per admitted replica) and accelerator chosen by the scheduler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<WorkloadPlacement>,
    /// Label selector of the worker pods, for the scale subresource and HPAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
