//! The scheduler's part of the operator configuration: admission queues, their namespaces
//! and quotas, cohorts that lend idle quota, and the `accelerator: auto` fallback delay.
//!
//! ```yaml
//! autoFallbackAfter: 5m
//! inferencePriority: 1000
//! queues:
//!   - name: gpu-team
//!     namespaces: [research, vision]
//!     cohort: shared
//!     quota: { gpu: 8, cpu: "64", memory: 512Gi }
//! ```

use std::collections::BTreeSet;

use aigc_crds::common::Duration;
use serde::{Deserialize, Serialize};

use super::resources::{Bytes, Gpus, Millicores};
use crate::Error;

/// The queue a TrainingJob uses when it names none (the CRD default).
pub const DEFAULT_QUEUE: &str = "default";

/// Queues, quotas and the auto-accelerator fallback delay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchedulerConfig {
    /// How long an `accelerator: auto` workload waits for a GPU before it runs on CPU.
    #[serde(default = "default_fallback")]
    pub auto_fallback_after: Duration,
    /// Priority of InferenceService replicas, which have no priority field: TrainingJobs
    /// below it wait behind new inference replicas and may be preempted by them.
    #[serde(default = "default_inference_priority")]
    pub inference_priority: i32,
    /// Admission queues. Without any, one queue named `default` admits every namespace
    /// without quota.
    #[serde(default)]
    pub queues: Vec<QueueConfig>,
}

/// One admission queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueueConfig {
    /// Name that workloads put in `spec.queue`.
    pub name: String,
    /// Namespaces whose workloads may use this queue; empty means every namespace.
    #[serde(default)]
    pub namespaces: BTreeSet<String>,
    /// Queues sharing a cohort lend each other quota they are not using; the owner takes it
    /// back (by preempting the borrower's training) when it needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort: Option<String>,
    /// Upper bounds on what the queue's admitted workloads request together.
    #[serde(default)]
    pub quota: Quota,
}

/// Limits per resource; a resource left out is not limited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// `nvidia.com/gpu` devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<Gpus>,
    /// CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Millicores>,
    /// Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Bytes>,
}

fn default_inference_priority() -> i32 {
    1000
}

fn default_fallback() -> Duration {
    Duration("5m".to_owned())
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            auto_fallback_after: default_fallback(),
            inference_priority: default_inference_priority(),
            queues: Vec::new(),
        }
    }
}

impl SchedulerConfig {
    /// Reads and checks the scheduler section of the operator configuration.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let config: SchedulerConfig = serde_yaml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects duplicate queue names, empty names and an unparseable fallback delay.
    pub fn validate(&self) -> Result<(), Error> {
        self.auto_fallback_after
            .to_std()
            .map_err(|err| Error::SchedulerConfig(format!("autoFallbackAfter: {err}")))?;
        let mut seen = BTreeSet::new();
        for queue in &self.queues {
            if queue.name.is_empty() {
                return Err(Error::SchedulerConfig(
                    "a queue has an empty name; every queue needs one".to_owned(),
                ));
            }
            if !seen.insert(queue.name.as_str()) {
                return Err(Error::SchedulerConfig(format!(
                    "queue {:?} is defined twice; queue names must be unique",
                    queue.name
                )));
            }
        }
        Ok(())
    }

    /// The queues in effect: the configured ones, or the implicit unlimited `default`.
    pub fn effective_queues(&self) -> Vec<QueueConfig> {
        if self.queues.is_empty() {
            vec![QueueConfig {
                name: DEFAULT_QUEUE.to_owned(),
                namespaces: BTreeSet::new(),
                cohort: None,
                quota: Quota::default(),
            }]
        } else {
            self.queues.clone()
        }
    }

    /// The queue for a workload that names none (an InferenceService): the first queue
    /// admitting `namespace`, else `default`.
    pub fn queue_for_namespace(&self, namespace: &str) -> String {
        self.effective_queues()
            .into_iter()
            .find(|queue| queue.admits_namespace(namespace))
            .map_or_else(|| DEFAULT_QUEUE.to_owned(), |queue| queue.name)
    }
}

impl QueueConfig {
    /// Whether workloads from `namespace` may use this queue.
    pub fn admits_namespace(&self, namespace: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.contains(namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_parse_with_quotas_and_cohorts() {
        let config = SchedulerConfig::from_yaml(
            "autoFallbackAfter: 10m\nqueues:\n  - name: gpu-team\n    namespaces: [research]\n    cohort: shared\n    quota: { gpu: 8, cpu: \"64\", memory: 512Gi }\n",
        )
        .unwrap();
        let queue = &config.queues[0];
        assert_eq!(queue.quota.gpu, Some(Gpus(8)));
        assert_eq!(queue.quota.cpu, Some(Millicores(64_000)));
        assert_eq!(queue.quota.memory, Some(Bytes(512 << 30)));
        assert_eq!(queue.cohort.as_deref(), Some("shared"));
        assert_eq!(config.queue_for_namespace("research"), "gpu-team");
        assert_eq!(config.queue_for_namespace("elsewhere"), DEFAULT_QUEUE);
        assert_eq!(config.inference_priority, 1000);
    }

    #[test]
    fn duplicate_queues_are_rejected_by_name() {
        let err = SchedulerConfig::from_yaml("queues: [{name: a}, {name: a}]").unwrap_err();
        assert!(err.to_string().contains("\"a\" is defined twice"), "{err}");
    }

    #[test]
    fn a_bad_quota_names_the_resource() {
        let err = SchedulerConfig::from_yaml("queues: [{name: a, quota: {gpu: \"0.5\"}}]")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nvidia.com/gpu") && err.contains("whole"),
            "{err}"
        );
    }

    #[test]
    fn without_queues_one_unlimited_default_queue_admits_everyone() {
        let config = SchedulerConfig::default();
        let queues = config.effective_queues();
        assert_eq!(queues.len(), 1);
        assert!(queues[0].admits_namespace("anything"));
        assert_eq!(queues[0].quota, Quota::default());
    }
}
