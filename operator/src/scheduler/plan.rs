//! One scheduling pass: order the pending workloads, then for each check its queue, fit it
//! (possibly by preemption), or explain why it waits and hold room for it.

use std::collections::HashMap;
use std::time::Duration;

use aigc_crds::common::Accelerator;

use super::config::{QueueConfig, SchedulerConfig};
use super::decision::{Admission, AdmitReason, Device, Plan, Preemption, WaitReason, Waiting};
use super::model::{ClusterSnapshot, GPU_PRODUCT_LABEL, Workload, WorkloadKey, WorkloadKind};
use super::nodes::{Layout, NodeTable, Shape, Shortfall};
use super::quota::{QuotaBook, QuotaShortfall};
use super::resources::{Amounts, Gpus};
use crate::Error;

/// The scheduler with its checked configuration.
#[derive(Clone, Debug)]
pub struct Scheduler {
    queues: Vec<QueueConfig>,
    auto_fallback_after: Duration,
}

/// A running workload assembled from its pods.
struct Running<'a> {
    key: &'a WorkloadKey,
    kind: WorkloadKind,
    queue: Option<usize>,
    priority: i32,
    /// Pod names (`namespace/name`), with node index and requests.
    pods: Vec<(String, Option<u32>, Amounts)>,
    total: Amounts,
    evicted: bool,
}

/// Where a gang fits: its device, one node per replica, and whether it borrows quota.
struct Fit {
    device: Device,
    placement: Vec<u32>,
    borrowing: bool,
}

enum Failure {
    Quota(QuotaShortfall),
    Nodes(Shortfall),
}

struct Pass<'a> {
    nodes: NodeTable<'a>,
    quotas: QuotaBook,
    running: Vec<Running<'a>>,
    existing: HashMap<&'a WorkloadKey, Vec<u32>>,
    pending: &'a [Workload],
    /// Whether a queue's head already holds quota and nodes in this pass.
    head_held: Vec<bool>,
    plan: Plan,
}

impl Scheduler {
    /// Checks the configuration once so that planning cannot fail.
    pub fn new(config: &SchedulerConfig) -> Result<Self, Error> {
        config.validate()?;
        let auto_fallback_after = config
            .auto_fallback_after
            .to_std()
            .map_err(|err| Error::SchedulerConfig(format!("autoFallbackAfter: {err}")))?;
        Ok(Scheduler {
            queues: config.effective_queues(),
            auto_fallback_after,
        })
    }

    /// Decides admissions, placements and preemptions for `pending` on `cluster`.
    pub fn plan(&self, cluster: &ClusterSnapshot, pending: &[Workload]) -> Plan {
        let mut pass = Pass::new(self, cluster, pending);
        let mut order: Vec<usize> = (0..pending.len()).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&pending[a], &pending[b]);
            b.priority
                .cmp(&a.priority)
                .then(a.queued_at.cmp(&b.queued_at))
                .then(a.key.cmp(&b.key))
        });
        for index in order {
            let waited = cluster
                .now
                .duration_since(pending[index].queued_at)
                .unwrap_or_default();
            pass.decide(self, index, waited);
        }
        pass.plan
    }
}

impl<'a> Pass<'a> {
    fn new(scheduler: &Scheduler, cluster: &'a ClusterSnapshot, pending: &'a [Workload]) -> Self {
        let mut nodes = NodeTable::new(&cluster.nodes);
        let mut quotas = QuotaBook::new(scheduler.queues.clone());
        let mut running: Vec<Running<'a>> = Vec::new();
        let mut running_index: HashMap<&'a WorkloadKey, usize> = HashMap::new();
        let mut existing: HashMap<&'a WorkloadKey, Vec<u32>> = HashMap::new();
        for pod in &cluster.pods {
            let node = nodes.index(&pod.node);
            if let Some(node) = node {
                nodes.occupy(node, pod.requests);
            }
            let Some(owner) = &pod.owner else { continue };
            let queue = quotas.queue_index(&owner.queue);
            if let Some(queue) = queue {
                quotas.charge(queue, pod.requests);
            }
            if let Some(node) = node {
                existing.entry(&owner.workload).or_default().push(node);
            }
            let slot = *running_index.entry(&owner.workload).or_insert_with(|| {
                running.push(Running {
                    key: &owner.workload,
                    kind: owner.kind,
                    queue,
                    priority: owner.priority,
                    pods: Vec::new(),
                    total: Amounts::ZERO,
                    evicted: false,
                });
                running.len() - 1
            });
            let entry = &mut running[slot];
            entry.pods.push((
                format!("{}/{}", pod.namespace, pod.name),
                node,
                pod.requests,
            ));
            entry.total += pod.requests;
            // A workload with pods at several priorities counts at its highest.
            entry.priority = entry.priority.max(owner.priority);
            if owner.kind == WorkloadKind::Inference {
                entry.kind = WorkloadKind::Inference;
            }
        }
        let head_held = vec![false; scheduler.queues.len()];
        Pass {
            nodes,
            quotas,
            running,
            existing,
            pending,
            head_held,
            plan: Plan::default(),
        }
    }

    fn shape(&self, workload: &'a Workload, device: Device) -> Shape<'a> {
        let request = &workload.replica;
        let mut selector: Vec<(&'a str, &'a str)> = request
            .node_selector
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let gpus = match device {
            Device::Gpu => {
                if let Some(product) = &request.gpu_product {
                    selector.push((GPU_PRODUCT_LABEL, product.as_str()));
                }
                Gpus(request.gpus.0.max(1))
            }
            Device::Cpu => Gpus(0),
        };
        let layout = match (workload.kind, device) {
            (WorkloadKind::Training, Device::Gpu) => Layout::Pack,
            _ => Layout::Spread,
        };
        Shape {
            per_replica: Amounts {
                cpu: request.cpu,
                memory: request.memory,
                gpu: gpus,
            },
            replicas: workload.replicas,
            layout,
            selector,
            tolerations: &request.tolerations,
            gpu_tolerations: match device {
                Device::Gpu => &request.gpu_tolerations,
                Device::Cpu => &[],
            },
            dataset: workload.dataset.as_deref(),
            existing: self
                .existing
                .get(&workload.key)
                .cloned()
                .unwrap_or_default(),
        }
    }

    fn wait(&mut self, index: usize, reason: WaitReason, message: String) {
        self.plan.waiting.push(Waiting {
            workload: self.pending[index].key.clone(),
            reason,
            message,
        });
    }

    fn failure_message(&self, failure: &Failure) -> String {
        match failure {
            Failure::Quota(shortfall) => shortfall.message.clone(),
            Failure::Nodes(shortfall) => {
                let holder = shortfall
                    .reserved_for
                    .map(|index| self.pending[index].key.to_string());
                shortfall.message(holder.as_deref())
            }
        }
    }

    fn decide(&mut self, scheduler: &Scheduler, index: usize, waited: Duration) {
        let workload = &self.pending[index];
        let Some(queue) = self.quotas.queue_index(&workload.queue) else {
            let message = format!(
                "queue {:?} is not configured; configured queues: {}",
                workload.queue,
                self.quotas.queue_names().join(", ")
            );
            return self.wait(index, WaitReason::UnknownQueue, message);
        };
        let queue_config = &self.quotas.queue(queue).config;
        if !queue_config.admits_namespace(&workload.key.namespace) {
            let allowed: Vec<&str> = queue_config.namespaces.iter().map(String::as_str).collect();
            let message = format!(
                "queue {} does not admit namespace {}; it admits: {}",
                queue_config.name,
                workload.key.namespace,
                allowed.join(", ")
            );
            return self.wait(index, WaitReason::NamespaceNotAllowed, message);
        }
        let fallen_back = waited >= scheduler.auto_fallback_after;
        let devices: &[Device] = match workload.replica.accelerator {
            Accelerator::Cpu => &[Device::Cpu],
            Accelerator::Gpu => &[Device::Gpu],
            Accelerator::Auto if fallen_back => &[Device::Gpu, Device::Cpu],
            Accelerator::Auto => &[Device::Gpu],
        };
        let mut failures = Vec::with_capacity(devices.len());
        for &device in devices {
            let shape = self.shape(workload, device);
            let total = shape.per_replica.times(shape.replicas);
            let failure = match self.quotas.check(queue, total) {
                Err(shortfall) => Failure::Quota(shortfall),
                Ok(borrowing) => match self.nodes.place(&shape) {
                    Ok(placement) => {
                        let (reason, message) =
                            self.admit_message(scheduler, workload, device, &failures, waited);
                        let fit = Fit {
                            device,
                            placement,
                            borrowing,
                        };
                        return self.admit(index, queue, &shape, fit, reason, message);
                    }
                    Err(shortfall) => Failure::Nodes(shortfall),
                },
            };
            failures.push(failure);
        }
        for &device in devices {
            if self.admit_by_preemption(index, queue, device) {
                return;
            }
        }
        let last_device = *devices.last().unwrap_or(&Device::Cpu);
        let Some(last) = failures.last() else { return };
        if !self.head_held[queue] {
            self.head_held[queue] = true;
            let shape = self.shape(workload, last_device);
            let total = shape.per_replica.times(shape.replicas);
            let hold = match last {
                Failure::Quota(_) => self.quotas.could_ever_fit(queue, total),
                Failure::Nodes(_) => self.nodes.reserve(&shape, index),
            };
            if hold {
                self.quotas.hold(queue, total);
            }
        }
        let message = self.failure_message(last);
        if workload.replica.accelerator == Accelerator::Auto && !fallen_back {
            let left = scheduler.auto_fallback_after.saturating_sub(waited);
            let message = format!(
                "waiting for a GPU: {message}; falls back to CPU in {}",
                human_duration(left)
            );
            return self.wait(index, WaitReason::WaitingForGpu, message);
        }
        let reason = match last {
            Failure::Quota(_) => WaitReason::QuotaExceeded,
            Failure::Nodes(_) => WaitReason::Unschedulable,
        };
        let message = match (workload.replica.accelerator, failures.first()) {
            (Accelerator::Auto, Some(gpu)) if failures.len() > 1 => {
                format!(
                    "no GPU ({}), and on CPU: {message}",
                    self.failure_message(gpu)
                )
            }
            _ => message,
        };
        self.wait(index, reason, message)
    }

    fn admit_message(
        &self,
        scheduler: &Scheduler,
        workload: &Workload,
        device: Device,
        earlier: &[Failure],
        waited: Duration,
    ) -> (AdmitReason, String) {
        match (workload.replica.accelerator, device, earlier.first()) {
            (Accelerator::Auto, Device::Cpu, Some(gpu)) => (
                AdmitReason::CpuFallback,
                format!(
                    "accelerator auto: no GPU after {} (autoFallbackAfter {}): {}; running on CPU",
                    human_duration(waited),
                    human_duration(scheduler.auto_fallback_after),
                    self.failure_message(gpu)
                ),
            ),
            (Accelerator::Auto, Device::Gpu, _) => (
                AdmitReason::Admitted,
                "accelerator auto: a GPU is free; running on GPU".to_owned(),
            ),
            _ => (
                AdmitReason::Admitted,
                format!("admitted to queue {}", workload.queue),
            ),
        }
    }

    fn admit(
        &mut self,
        index: usize,
        queue: usize,
        shape: &Shape<'_>,
        fit: Fit,
        reason: AdmitReason,
        mut message: String,
    ) {
        let Fit {
            device,
            placement,
            borrowing,
        } = fit;
        self.nodes.commit(&placement, shape.per_replica);
        self.quotas
            .charge(queue, shape.per_replica.times(shape.replicas));
        if borrowing {
            message.push_str("; borrowing idle quota from its cohort");
        }
        self.plan.admissions.push(Admission {
            workload: self.pending[index].key.clone(),
            device,
            nodes: placement
                .iter()
                .map(|&n| self.nodes.name(n).to_owned())
                .collect(),
            borrowing,
            reason,
            message,
        });
    }

    /// Training workloads this one may preempt, cheapest first: lowest priority, then
    /// fewest pods.
    fn preemption_candidates(&self, index: usize, queue: usize, total: Amounts) -> Vec<usize> {
        let workload = &self.pending[index];
        let within_own = self.quotas.within_own_quota(queue, total);
        let mut candidates: Vec<usize> = self
            .running
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.evicted && r.kind == WorkloadKind::Training)
            .filter(|(_, r)| {
                let Some(their_queue) = r.queue else {
                    return false;
                };
                if their_queue == queue {
                    r.priority < workload.priority
                } else {
                    within_own
                        && (r.priority < workload.priority
                            || (self.quotas.same_cohort(queue, their_queue)
                                && self.quotas.is_borrowing(their_queue)))
                }
            })
            .map(|(i, _)| i)
            .collect();
        candidates.sort_by(|&a, &b| {
            let (a, b) = (&self.running[a], &self.running[b]);
            a.priority
                .cmp(&b.priority)
                .then(a.pods.len().cmp(&b.pods.len()))
                .then(b.key.cmp(a.key))
        });
        candidates
    }

    fn set_evicted(&mut self, victim: usize, evicted: bool) {
        let running = &mut self.running[victim];
        running.evicted = evicted;
        for (_, node, requests) in &running.pods {
            if let Some(node) = *node {
                if evicted {
                    self.nodes.release(node, *requests);
                } else {
                    self.nodes.occupy(node, *requests);
                }
            }
        }
        if let Some(queue) = running.queue {
            if evicted {
                self.quotas.refund(queue, running.total);
            } else {
                self.quotas.charge(queue, running.total);
            }
        }
    }

    /// Whether the shape fits with `victims` stopped; leaves them running.
    fn fits_without(
        &mut self,
        victims: &[usize],
        queue: usize,
        shape: &Shape<'_>,
    ) -> Option<(Vec<u32>, bool)> {
        for &victim in victims {
            self.set_evicted(victim, true);
        }
        let total = shape.per_replica.times(shape.replicas);
        let fit = match self.quotas.check(queue, total) {
            Ok(borrowing) => self.nodes.place(shape).ok().map(|p| (p, borrowing)),
            Err(_) => None,
        };
        for &victim in victims {
            self.set_evicted(victim, false);
        }
        fit
    }

    fn admit_by_preemption(&mut self, index: usize, queue: usize, device: Device) -> bool {
        let workload = &self.pending[index];
        let shape = self.shape(workload, device);
        let total = shape.per_replica.times(shape.replicas);
        let candidates = self.preemption_candidates(index, queue, total);
        if candidates.is_empty() || self.fits_without(&candidates, queue, &shape).is_none() {
            return false;
        }
        // Fitting only gets easier as victims are added: find the shortest prefix that fits.
        let (mut low, mut high) = (1, candidates.len());
        while low < high {
            let middle = (low + high) / 2;
            if self
                .fits_without(&candidates[..middle], queue, &shape)
                .is_some()
            {
                high = middle;
            } else {
                low = middle + 1;
            }
        }
        let mut victims = candidates[..low].to_vec();
        // Spare any victim, costliest first, whose eviction turns out unnecessary.
        let mut position = victims.len();
        while position > 0 {
            position -= 1;
            let mut without = victims.clone();
            without.remove(position);
            if self.fits_without(&without, queue, &shape).is_some() {
                victims = without;
            }
        }
        let Some((placement, borrowing)) = self.fits_without(&victims, queue, &shape) else {
            return false;
        };
        for &victim in &victims {
            self.set_evicted(victim, true);
            let running = &self.running[victim];
            self.plan.preemptions.push(Preemption {
                victim: running.key.clone(),
                pods: running.pods.iter().map(|(name, _, _)| name.clone()).collect(),
                preemptor: workload.key.clone(),
                resume_from_checkpoint: true,
                message: format!(
                    "preempted by {} (priority {}); resumes from its last checkpoint when readmitted",
                    workload.key, workload.priority
                ),
            });
        }
        let names: Vec<String> = victims
            .iter()
            .map(|&v| {
                format!(
                    "{} (priority {})",
                    self.running[v].key, self.running[v].priority
                )
            })
            .collect();
        let message = format!(
            "admitted to queue {} by preempting {}",
            workload.queue,
            names.join(", ")
        );
        let fit = Fit {
            device,
            placement,
            borrowing,
        };
        self.admit(index, queue, &shape, fit, AdmitReason::Preempting, message);
        true
    }
}

/// `90s` as `1m30s`, `3600s` as `1h0m0s`.
fn human_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}
