//! The scheduler's output: which workloads start where, which training is preempted for
//! them, and why each of the others waits.

use std::fmt;

use aigc_crds::common::Accelerator;
use aigc_crds::training_job::WorkloadPlacement;

use super::model::WorkloadKey;

/// The decisions of one scheduling pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Workloads to start now, in the order they were decided.
    pub admissions: Vec<Admission>,
    /// Running training to stop so that admitted workloads fit.
    pub preemptions: Vec<Preemption>,
    /// Every pending workload not admitted, with the reason.
    pub waiting: Vec<Waiting>,
}

/// Where an admitted workload runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    /// On `nvidia.com/gpu` devices.
    Gpu,
    /// On CPU only.
    Cpu,
}

impl From<Device> for Accelerator {
    fn from(device: Device) -> Self {
        match device {
            Device::Gpu => Accelerator::Gpu,
            Device::Cpu => Accelerator::Cpu,
        }
    }
}

/// A workload admitted with one node per replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The workload.
    pub workload: WorkloadKey,
    /// GPU or CPU; for `accelerator: auto` this is the scheduler's choice.
    pub device: Device,
    /// Node of each replica, to pin the pods with required node affinity.
    pub nodes: Vec<String>,
    /// Whether the admission uses idle quota lent by other queues of the cohort.
    pub borrowing: bool,
    /// Why it was admitted this way, as a condition reason.
    pub reason: AdmitReason,
    /// The same for humans, e.g. "no GPU free for 5m; running on CPU".
    pub message: String,
}

impl Admission {
    /// The placement the TrainingJob status reports.
    pub fn placement(&self) -> WorkloadPlacement {
        WorkloadPlacement {
            nodes: self.nodes.clone(),
            accelerator: Some(self.device.into()),
        }
    }
}

/// Condition reasons for an admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdmitReason {
    /// Fitted as requested.
    Admitted,
    /// `accelerator: auto` found no GPU within `autoFallbackAfter` and runs on CPU.
    CpuFallback,
    /// Fits once the listed preemptions have stopped lower-priority training.
    Preempting,
}

impl AdmitReason {
    /// The `reason` of the `Admitted` condition.
    pub fn as_str(&self) -> &'static str {
        match self {
            AdmitReason::Admitted => "Admitted",
            AdmitReason::CpuFallback => "CpuFallback",
            AdmitReason::Preempting => "Preempting",
        }
    }
}

/// A running training workload to stop for a higher-priority one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preemption {
    /// The training workload to stop; it goes back to its queue.
    pub victim: WorkloadKey,
    /// Its pods to delete, as `namespace/name`.
    pub pods: Vec<String>,
    /// The workload it makes room for.
    pub preemptor: WorkloadKey,
    /// Whether the victim restarts from its last checkpoint (always, for training).
    pub resume_from_checkpoint: bool,
    /// The condition message for the victim.
    pub message: String,
}

/// A workload left waiting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// The workload.
    pub workload: WorkloadKey,
    /// Why, as a condition reason.
    pub reason: WaitReason,
    /// Why, for humans: "queue gpu-team: quota 8/8 GPUs in use, needs 4".
    pub message: String,
}

/// Condition reasons for a waiting workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WaitReason {
    /// The workload names a queue that is not configured.
    UnknownQueue,
    /// The queue does not admit the workload's namespace.
    NamespaceNotAllowed,
    /// The queue (and its cohort) has no quota left for it.
    QuotaExceeded,
    /// No set of nodes can hold all replicas now.
    Unschedulable,
    /// `accelerator: auto` waits for a GPU until `autoFallbackAfter` passes.
    WaitingForGpu,
}

impl WaitReason {
    /// The `reason` of the `Admitted=False` condition.
    pub fn as_str(&self) -> &'static str {
        match self {
            WaitReason::UnknownQueue => "UnknownQueue",
            WaitReason::NamespaceNotAllowed => "NamespaceNotAllowed",
            WaitReason::QuotaExceeded => "QuotaExceeded",
            WaitReason::Unschedulable => "Unschedulable",
            WaitReason::WaitingForGpu => "WaitingForGpu",
        }
    }
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.workload, self.message)
    }
}
