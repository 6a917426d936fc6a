//! The scheduler's input: a snapshot of nodes and running pods, and the workloads waiting
//! for admission. Plain data, so the controllers can build it from Node and Pod objects and
//! from TrainingJob and InferenceService specs, and tests can write it by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::SystemTime;

use aigc_crds::common::{Accelerator, Resources};
use serde::{Deserialize, Serialize};

use super::resources::{Amounts, Bytes, Gpus, Millicores};
use crate::Error;

/// The node label naming the GPU model, as set by NVIDIA's GPU feature discovery.
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";

/// A node as the scheduler sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`, matched by node selectors and the GPU product.
    pub labels: BTreeMap<String, String>,
    /// `spec.taints`.
    pub taints: Vec<Taint>,
    /// `status.allocatable` for cpu, memory and `nvidia.com/gpu`.
    pub allocatable: Amounts,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// Datasets (`namespace/name`) held in a node-local hot tier on this node.
    pub hot_datasets: BTreeSet<String>,
}

/// What a taint does to pods that do not tolerate it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaintEffect {
    /// New pods are not placed on the node.
    NoSchedule,
    /// A soft preference; the scheduler ignores it when filtering.
    PreferNoSchedule,
    /// New pods are not placed and running ones are evicted.
    NoExecute,
}

/// A node taint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Taint {
    /// Taint key, e.g. `nvidia.com/gpu`.
    pub key: String,
    /// Taint value, if any.
    pub value: Option<String>,
    /// Effect.
    pub effect: TaintEffect,
}

/// How a toleration compares its value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TolerationOperator {
    /// Key and value must match.
    #[default]
    Equal,
    /// The key alone matches (an empty key matches every taint).
    Exists,
}

/// A pod toleration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Toleration {
    /// Taint key to match; `None` with `Exists` matches every key.
    pub key: Option<String>,
    /// How to compare.
    pub operator: TolerationOperator,
    /// Value to match with `Equal`.
    pub value: Option<String>,
    /// Effect to match; `None` matches every effect.
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    /// Whether this toleration lets a pod ignore `taint`, following the Kubernetes rules.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|effect| effect != taint.effect) {
            return false;
        }
        match (&self.key, self.operator) {
            (None, TolerationOperator::Exists) => true,
            (None, TolerationOperator::Equal) => false,
            (Some(key), _) if *key != taint.key => false,
            (Some(_), TolerationOperator::Exists) => true,
            (Some(_), TolerationOperator::Equal) => {
                self.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
            }
        }
    }
}

/// Namespace and name of a TrainingJob or InferenceService.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl WorkloadKey {
    /// A key from namespace and name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        WorkloadKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Which kind of workload; inference is never preempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    /// A TrainingJob: packed onto few nodes, preemptible, resumes from its checkpoint.
    Training,
    /// An InferenceService: replicas spread across nodes, never preempted.
    Inference,
}

/// A running (or bound) pod that uses node capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningPod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The node it is bound to.
    pub node: String,
    /// Sum of its containers' requests.
    pub requests: Amounts,
    /// The workload it belongs to, for pods this operator created; `None` for all others,
    /// which use capacity but are never preempted and count against no queue.
    pub owner: Option<PodOwner>,
}

/// The workload a running pod belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodOwner {
    /// The owning workload.
    pub workload: WorkloadKey,
    /// Its kind.
    pub kind: WorkloadKind,
    /// The queue it was admitted through.
    pub queue: String,
    /// Its priority.
    pub priority: i32,
}

/// What each replica of a workload asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaRequest {
    /// `cpu`, `gpu` or `auto`.
    pub accelerator: Accelerator,
    /// GPUs per replica when it runs on a GPU (at least one).
    pub gpus: Gpus,
    /// Required value of the node label `nvidia.com/gpu.product`, when on a GPU.
    pub gpu_product: Option<String>,
    /// CPU per replica.
    pub cpu: Millicores,
    /// Memory per replica.
    pub memory: Bytes,
    /// Labels a node must carry.
    pub node_selector: BTreeMap<String, String>,
    /// Taints the replica tolerates.
    pub tolerations: Vec<Toleration>,
    /// Taints the replica tolerates only when it runs on GPUs: worker pods get the
    /// `nvidia.com/gpu` toleration only then, so CPU work stays off tainted GPU nodes.
    pub gpu_tolerations: Vec<Toleration>,
}

impl ReplicaRequest {
    /// The request a workload's `spec.resources` describes.
    pub fn from_resources(resources: &Resources) -> Result<Self, Error> {
        let cpu = match &resources.cpu {
            Some(quantity) => Millicores::parse("resources.cpu", quantity)?,
            None => Millicores(0),
        };
        let memory = match &resources.memory {
            Some(quantity) => Bytes::parse("resources.memory", quantity)?,
            None => Bytes(0),
        };
        let gpus = match resources.accelerator {
            Accelerator::Cpu => Gpus(0),
            Accelerator::Gpu | Accelerator::Auto => Gpus(resources.gpus.unwrap_or(1).max(1)),
        };
        Ok(ReplicaRequest {
            accelerator: resources.accelerator,
            gpus,
            gpu_product: resources.gpu_product.clone(),
            cpu,
            memory,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            gpu_tolerations: Vec::new(),
        })
    }
}

/// A workload waiting for admission: a TrainingJob not yet running (or preempted), or the
/// replicas an InferenceService still lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Namespace and name.
    pub key: WorkloadKey,
    /// Training or inference.
    pub kind: WorkloadKind,
    /// The queue it asks for (`spec.queue`, or the namespace's queue for inference).
    pub queue: String,
    /// Higher is admitted first: `spec.priority` for a TrainingJob, the configured
    /// `inferencePriority` for an InferenceService.
    pub priority: i32,
    /// When it entered the queue; earlier goes first within a priority.
    pub queued_at: SystemTime,
    /// Replicas to admit together (the gang).
    pub replicas: u32,
    /// What each replica needs.
    pub replica: ReplicaRequest,
    /// The dataset (`namespace/name`) it reads, for node-local hot-tier locality.
    pub dataset: Option<String>,
}

/// Everything the scheduler looks at: nodes, the pods on them, and the time now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSnapshot {
    /// All nodes.
    pub nodes: Vec<Node>,
    /// Pods bound to nodes and not finished.
    pub pods: Vec<RunningPod>,
    /// The time the plan is made, for `autoFallbackAfter`.
    pub now: SystemTime,
}

#[cfg(test)]
mod tests {
    use aigc_crds::common::Quantity;

    use super::*;

    fn taint(key: &str, value: Option<&str>, effect: TaintEffect) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect,
        }
    }

    #[test]
    fn tolerations_follow_kubernetes_matching() {
        let gpu = taint("nvidia.com/gpu", Some("present"), TaintEffect::NoSchedule);
        let exists = Toleration {
            key: Some("nvidia.com/gpu".into()),
            operator: TolerationOperator::Exists,
            ..Toleration::default()
        };
        let wrong_value = Toleration {
            key: Some("nvidia.com/gpu".into()),
            value: Some("absent".into()),
            ..Toleration::default()
        };
        let wrong_effect = Toleration {
            effect: Some(TaintEffect::NoExecute),
            ..exists.clone()
        };
        let everything = Toleration {
            operator: TolerationOperator::Exists,
            ..Toleration::default()
        };
        assert!(exists.tolerates(&gpu));
        assert!(!wrong_value.tolerates(&gpu));
        assert!(!wrong_effect.tolerates(&gpu));
        assert!(everything.tolerates(&gpu));
    }

    #[test]
    fn replica_requests_come_from_crd_resources() {
        let resources = Resources {
            accelerator: Accelerator::Auto,
            gpus: None,
            gpu_product: Some("NVIDIA-H100-80GB-HBM3".into()),
            cpu: Some(Quantity("500m".into())),
            memory: Some(Quantity("2Gi".into())),
        };
        let request = ReplicaRequest::from_resources(&resources).unwrap();
        assert_eq!(request.gpus, Gpus(1));
        assert_eq!(request.cpu, Millicores(500));
        assert_eq!(request.memory, Bytes(2 << 30));
        let bad = Resources {
            memory: Some(Quantity("2GB".into())),
            ..resources
        };
        let err = ReplicaRequest::from_resources(&bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("resources.memory") && err.contains("\"2GB\""),
            "{err}"
        );
    }
}
