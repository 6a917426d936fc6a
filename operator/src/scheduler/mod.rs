//! The resource scheduler: decides which pending TrainingJobs and InferenceServices start,
//! on which nodes, on GPU or CPU, and which running training makes room for them.
//!
//! Pure: it takes a [`ClusterSnapshot`] (nodes and the pods on them), the pending
//! [`Workload`]s and the queue configuration, and returns a [`Plan`]. It performs no API
//! calls and keeps no state between plans; the controllers build the input from reflectors
//! and carry out the plan (pin pods with required node affinity, delete preempted pods,
//! write conditions). The rules:
//!
//! - Workloads are taken in priority order, FIFO within a priority.
//! - Quotas per queue; queues in a cohort borrow each other's idle quota and the owner takes
//!   it back by preempting the borrower's training.
//! - Gangs: all replicas of a workload are placed together or none is.
//! - The first workload of a queue that cannot start holds its quota and a set of nodes, so
//!   later (smaller) workloads backfill around it without delaying it.
//! - `accelerator: auto` takes a GPU when one is free, else CPU after `autoFallbackAfter`.
//! - A workload may preempt the fewest, lowest-priority training workloads that make it
//!   fit: lower-priority ones of its own queue, and, while it stays within its own quota,
//!   lower-priority ones of other queues and any that borrow from its cohort. Inference is
//!   never preempted.

mod config;
mod decision;
mod k8s;
mod model;
mod nodes;
mod plan;
mod quota;
mod resources;

pub use config::{DEFAULT_QUEUE, QueueConfig, Quota, SchedulerConfig};
pub use decision::{Admission, AdmitReason, Device, Plan, Preemption, WaitReason, Waiting};
pub use k8s::{GPU_RESOURCE, pinned_to, pinned_to_any};
pub use model::{
    ClusterSnapshot, GPU_PRODUCT_LABEL, Node, PodOwner, ReplicaRequest, RunningPod, Taint,
    TaintEffect, Toleration, TolerationOperator, Workload, WorkloadKey, WorkloadKind,
};
pub use plan::Scheduler;
pub use resources::{Amounts, Bytes, Gpus, Millicores};

#[cfg(test)]
mod tests;
