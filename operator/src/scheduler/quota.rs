//! Queue quota accounting: what each queue and cohort has admitted, what it may admit, and
//! what a blocked queue head holds back from later workloads of its queue.
//!
//! A queue without a cohort is a cohort of one, so one rule covers both: a workload fits
//! when its cohort's usage plus the request stays within the cohort's summed quota. Inside
//! that, using more than the queue's own quota is borrowing.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::config::{QueueConfig, Quota};
use super::resources::{Amounts, Bytes, Gpus, Millicores};

/// Usage and limits for every queue.
pub(super) struct QuotaBook {
    queues: Vec<QueueState>,
    cohorts: Vec<CohortState>,
    by_name: HashMap<String, usize>,
}

pub(super) struct QueueState {
    pub(super) config: QueueConfig,
    usage: Amounts,
    /// Quota kept for this queue's blocked head; only later workloads of the queue see it.
    held: Amounts,
    cohort: usize,
}

struct CohortState {
    name: Option<String>,
    quota: Quota,
    usage: Amounts,
}

/// Why a request does not fit its queue's quota.
pub(super) struct QuotaShortfall {
    pub(super) message: String,
}

impl QuotaBook {
    pub(super) fn new(queues: Vec<QueueConfig>) -> Self {
        let mut cohorts: Vec<CohortState> = Vec::new();
        let mut cohort_by_name: HashMap<String, usize> = HashMap::new();
        let mut states = Vec::with_capacity(queues.len());
        let mut by_name = HashMap::new();
        for config in queues {
            let cohort = match &config.cohort {
                Some(name) => *cohort_by_name.entry(name.clone()).or_insert_with(|| {
                    cohorts.push(CohortState {
                        name: Some(name.clone()),
                        quota: Quota {
                            gpu: Some(Gpus(0)),
                            cpu: Some(Millicores(0)),
                            memory: Some(Bytes(0)),
                        },
                        usage: Amounts::ZERO,
                    });
                    cohorts.len() - 1
                }),
                None => {
                    cohorts.push(CohortState {
                        name: None,
                        quota: Quota::default(),
                        usage: Amounts::ZERO,
                    });
                    cohorts.len() - 1
                }
            };
            let total = &mut cohorts[cohort].quota;
            if config.cohort.is_some() {
                total.gpu = sum_limit(total.gpu, config.quota.gpu, |a, b| {
                    Gpus(a.0.saturating_add(b.0))
                });
                total.cpu = sum_limit(total.cpu, config.quota.cpu, |a, b| {
                    Millicores(a.0.saturating_add(b.0))
                });
                total.memory = sum_limit(total.memory, config.quota.memory, |a, b| {
                    Bytes(a.0.saturating_add(b.0))
                });
            } else {
                *total = config.quota;
            }
            by_name.insert(config.name.clone(), states.len());
            states.push(QueueState {
                config,
                usage: Amounts::ZERO,
                held: Amounts::ZERO,
                cohort,
            });
        }
        QuotaBook {
            queues: states,
            cohorts,
            by_name,
        }
    }

    pub(super) fn queue_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub(super) fn queue(&self, index: usize) -> &QueueState {
        &self.queues[index]
    }

    pub(super) fn queue_names(&self) -> Vec<&str> {
        self.queues.iter().map(|q| q.config.name.as_str()).collect()
    }

    pub(super) fn same_cohort(&self, a: usize, b: usize) -> bool {
        self.queues[a].cohort == self.queues[b].cohort
    }

    /// Adds admitted (or already running) requests to a queue.
    pub(super) fn charge(&mut self, queue: usize, amounts: Amounts) {
        self.queues[queue].usage += amounts;
        let cohort = self.queues[queue].cohort;
        self.cohorts[cohort].usage += amounts;
    }

    /// Takes requests of stopped pods off a queue.
    pub(super) fn refund(&mut self, queue: usize, amounts: Amounts) {
        self.queues[queue].usage = self.queues[queue].usage - amounts;
        let cohort = self.queues[queue].cohort;
        self.cohorts[cohort].usage = self.cohorts[cohort].usage - amounts;
    }

    /// Keeps `amounts` of the queue's quota for its blocked head.
    pub(super) fn hold(&mut self, queue: usize, amounts: Amounts) {
        self.queues[queue].held += amounts;
    }

    /// Whether the queue stays within its own quota after adding `request`.
    pub(super) fn within_own_quota(&self, queue: usize, request: Amounts) -> bool {
        let state = &self.queues[queue];
        within(&state.config.quota, state.usage + state.held + request)
    }

    /// Whether the queue uses more than its own quota (it borrows from its cohort).
    pub(super) fn is_borrowing(&self, queue: usize) -> bool {
        let state = &self.queues[queue];
        !within(&state.config.quota, state.usage)
    }

    /// Checks `request` against the queue's quota and its cohort's; `Ok(true)` when it fits
    /// only by borrowing.
    pub(super) fn check(&self, queue: usize, request: Amounts) -> Result<bool, QuotaShortfall> {
        let state = &self.queues[queue];
        let cohort = &self.cohorts[state.cohort];
        let cohort_used = cohort.usage + state.held;
        if within(&cohort.quota, cohort_used + request) {
            return Ok(!within(
                &state.config.quota,
                state.usage + state.held + request,
            ));
        }
        Err(self.shortfall(queue, request))
    }

    /// Whether `request` fits the queue's cohort when nothing else runs there.
    pub(super) fn could_ever_fit(&self, queue: usize, request: Amounts) -> bool {
        let state = &self.queues[queue];
        within(&self.cohorts[state.cohort].quota, request)
    }

    fn shortfall(&self, queue: usize, request: Amounts) -> QuotaShortfall {
        let state = &self.queues[queue];
        let cohort = &self.cohorts[state.cohort];
        if !self.could_ever_fit(queue, request) {
            let limit = cohort.quota_amounts();
            let scope = match &cohort.name {
                Some(name) => format!("cohort {name}'s whole quota"),
                None => "its whole quota".to_owned(),
            };
            let message = if request.gpu > limit.gpu {
                format!(
                    "needs {} GPUs, more than {scope} of {}",
                    request.gpu.0, limit.gpu.0
                )
            } else if request.cpu > limit.cpu {
                format!(
                    "needs {} cpu, more than {scope} of {}",
                    request.cpu, limit.cpu
                )
            } else {
                format!(
                    "needs {} memory, more than {scope} of {}",
                    request.memory, limit.memory
                )
            };
            return QuotaShortfall {
                message: format!("queue {}: {message}", state.config.name),
            };
        }
        let cohort_used = cohort.usage + state.held;
        let total = cohort_used + request;
        let mut message = format!("queue {}: ", state.config.name);
        // Name the first resource that does not fit, in the order users usually run out.
        let over = |limit: Option<u64>, total: u64| limit.is_some_and(|limit| total > limit);
        let (used, held, quota, needs, unit) = if over(
            cohort.quota.gpu.map(|g| u64::from(g.0)),
            u64::from(total.gpu.0),
        ) {
            let quota = state.config.quota.gpu.map_or(0, |g| g.0);
            let show = |n: u32| n.to_string();
            (
                show(state.usage.gpu.0),
                show(state.held.gpu.0),
                show(quota),
                show(request.gpu.0),
                "GPUs",
            )
        } else if over(cohort.quota.cpu.map(|c| c.0), total.cpu.0) {
            let quota = state.config.quota.cpu.unwrap_or_default();
            let show = |m: Millicores| m.to_string();
            (
                show(state.usage.cpu),
                show(state.held.cpu),
                show(quota),
                show(request.cpu),
                "cpu",
            )
        } else {
            let quota = state.config.quota.memory.unwrap_or_default();
            let show = |b: Bytes| b.to_string();
            (
                show(state.usage.memory),
                show(state.held.memory),
                show(quota),
                show(request.memory),
                "memory",
            )
        };
        let _ = write!(message, "quota {used}/{quota} {unit} in use");
        if state.held != Amounts::ZERO {
            let _ = write!(
                message,
                ", {held} held for a higher-priority workload of this queue"
            );
        }
        let _ = write!(message, ", needs {needs}");
        if let Some(name) = &cohort.name {
            let idle = cohort.quota_amounts().saturating_sub(&cohort_used);
            let _ = write!(
                message,
                "; cohort {name} has {} GPUs, {} cpu, {} memory idle to lend",
                idle.gpu.0, idle.cpu, idle.memory
            );
        }
        QuotaShortfall { message }
    }
}

impl CohortState {
    /// The limits as amounts, unlimited resources as the largest value.
    fn quota_amounts(&self) -> Amounts {
        Amounts {
            cpu: self.quota.cpu.unwrap_or(Millicores(u64::MAX)),
            memory: self.quota.memory.unwrap_or(Bytes(u64::MAX)),
            gpu: self.quota.gpu.unwrap_or(Gpus(u32::MAX)),
        }
    }
}

fn sum_limit<T: Copy>(total: Option<T>, part: Option<T>, add: impl Fn(T, T) -> T) -> Option<T> {
    // One unlimited member makes the cohort unlimited in that resource.
    Some(add(total?, part?))
}

fn within(quota: &Quota, amounts: Amounts) -> bool {
    quota.gpu.is_none_or(|limit| amounts.gpu <= limit)
        && quota.cpu.is_none_or(|limit| amounts.cpu <= limit)
        && quota.memory.is_none_or(|limit| amounts.memory <= limit)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn queue(name: &str, cohort: Option<&str>, gpus: u32) -> QueueConfig {
        QueueConfig {
            name: name.into(),
            namespaces: BTreeSet::new(),
            cohort: cohort.map(Into::into),
            quota: Quota {
                gpu: Some(Gpus(gpus)),
                ..Quota::default()
            },
        }
    }

    const GPU: Amounts = Amounts::new(0, 0, 1);

    #[test]
    fn a_full_queue_says_how_much_is_in_use() {
        let mut book = QuotaBook::new(vec![queue("gpu-team", None, 8)]);
        book.charge(0, GPU.times(8));
        let err = book.check(0, GPU.times(4)).err().unwrap();
        assert_eq!(
            err.message,
            "queue gpu-team: quota 8/8 GPUs in use, needs 4"
        );
    }

    #[test]
    fn idle_quota_in_a_cohort_is_borrowed() {
        let mut book = QuotaBook::new(vec![queue("a", Some("c"), 4), queue("b", Some("c"), 4)]);
        assert_eq!(book.check(0, GPU.times(6)).ok(), Some(true));
        book.charge(0, GPU.times(6));
        assert!(book.is_borrowing(0));
        assert!(book.within_own_quota(1, GPU.times(4)));
        let err = book.check(1, GPU.times(4)).err().unwrap();
        assert!(
            err.message.contains("cohort c has 2 GPUs"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_held_quota_blocks_only_the_same_queue() {
        let mut book = QuotaBook::new(vec![queue("a", Some("c"), 4), queue("b", Some("c"), 4)]);
        book.hold(0, GPU.times(4));
        assert!(book.check(0, GPU.times(5)).is_err());
        assert_eq!(book.check(1, GPU.times(4)).ok(), Some(false));
    }

    #[test]
    fn a_request_larger_than_the_whole_quota_says_so() {
        let book = QuotaBook::new(vec![queue("a", None, 4)]);
        assert!(!book.could_ever_fit(0, GPU.times(6)));
        let err = book.check(0, GPU.times(6)).err().unwrap();
        assert_eq!(
            err.message,
            "queue a: needs 6 GPUs, more than its whole quota of 4"
        );
    }

    #[test]
    fn unlimited_resources_never_block() {
        let book = QuotaBook::new(vec![queue("a", None, 1)]);
        assert_eq!(
            book.check(0, Amounts::new(1 << 40, 1 << 60, 1)).ok(),
            Some(false)
        );
    }
}
