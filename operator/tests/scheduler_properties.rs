//! Properties of the scheduler over random clusters, queues and workloads, checked while a
//! simulated cluster runs plan after plan and workloads complete at random.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use aigc_crds::common::Accelerator;
use aigc_operator::scheduler::{
    Amounts, Bytes, ClusterSnapshot, Device, GPU_PRODUCT_LABEL, Gpus, Millicores, Node, Plan,
    PodOwner, QueueConfig, Quota, ReplicaRequest, RunningPod, Scheduler, SchedulerConfig, Taint,
    TaintEffect, Toleration, TolerationOperator, Workload, WorkloadKey, WorkloadKind,
};
use proptest::prelude::*;

const GI: u64 = 1 << 30;
const PRODUCTS: [&str; 2] = ["NVIDIA-A100", "NVIDIA-H100"];
const GPU_TAINT: &str = "nvidia.com/gpu";

fn at(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
}

fn node_strategy() -> impl Strategy<Value = (u64, u64, u32, usize, bool)> {
    (
        prop::sample::select(vec![4u64, 8, 16]),
        prop::sample::select(vec![16u64, 64]),
        prop::sample::select(vec![0u32, 0, 4, 8]),
        0..PRODUCTS.len(),
        any::<bool>(),
    )
}

fn build_node(
    index: usize,
    (cores, memory, gpus, product, tainted): (u64, u64, u32, usize, bool),
) -> Node {
    let mut node = Node {
        name: format!("node-{index}"),
        allocatable: Amounts::new(cores * 1000, memory * GI, gpus),
        ..Node::default()
    };
    if gpus > 0 {
        node.labels
            .insert(GPU_PRODUCT_LABEL.into(), PRODUCTS[product].into());
        if tainted {
            node.taints.push(Taint {
                key: GPU_TAINT.into(),
                value: None,
                effect: TaintEffect::NoSchedule,
            });
        }
    }
    if index.is_multiple_of(3) {
        node.hot_datasets.insert("ml/corpus".into());
    }
    node
}

fn queue_strategy() -> impl Strategy<Value = (bool, Option<u32>, Option<u64>)> {
    (
        any::<bool>(),
        prop::option::of(0u32..16),
        prop::option::of(4u64..64),
    )
}

fn build_config(queues: &[(bool, Option<u32>, Option<u64>)]) -> SchedulerConfig {
    SchedulerConfig {
        auto_fallback_after: aigc_crds::common::Duration("2m".into()),
        queues: queues
            .iter()
            .enumerate()
            .map(|(index, &(in_cohort, gpu, cores))| QueueConfig {
                name: format!("q{index}"),
                namespaces: BTreeSet::new(),
                cohort: in_cohort.then(|| "shared".to_owned()),
                quota: Quota {
                    gpu: gpu.map(Gpus),
                    cpu: cores.map(|c| Millicores(c * 1000)),
                    memory: None,
                },
            })
            .collect(),
        ..SchedulerConfig::default()
    }
}

#[derive(Clone, Debug)]
struct WorkloadSeed {
    inference: bool,
    queue: usize,
    priority: i32,
    queued_at: u64,
    replicas: u32,
    accelerator: Accelerator,
    gpus: u32,
    cores: u64,
    memory: u64,
    product: Option<usize>,
    tolerates: bool,
    reads_corpus: bool,
}

fn workload_strategy() -> impl Strategy<Value = WorkloadSeed> {
    (
        (any::<bool>(), 0usize..3, 0i32..4, 0u64..5, 1u32..4),
        (
            prop::sample::select(vec![Accelerator::Cpu, Accelerator::Gpu, Accelerator::Auto]),
            1u32..5,
            1u64..6,
            1u64..12,
            prop::option::of(0..PRODUCTS.len()),
            any::<bool>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (inference, queue, priority, queued_at, replicas),
                (accelerator, gpus, cores, memory, product, tolerates, reads_corpus),
            )| WorkloadSeed {
                inference,
                queue,
                priority,
                queued_at,
                replicas,
                accelerator,
                gpus,
                cores,
                memory,
                product,
                tolerates,
                reads_corpus,
            },
        )
}

fn build_workload(index: usize, seed: &WorkloadSeed, queues: usize) -> Workload {
    let gpu_capable = seed.accelerator != Accelerator::Cpu;
    Workload {
        key: WorkloadKey::new("ml", format!("w{index}")),
        kind: if seed.inference {
            WorkloadKind::Inference
        } else {
            WorkloadKind::Training
        },
        queue: format!("q{}", seed.queue % queues),
        priority: seed.priority,
        queued_at: at(seed.queued_at),
        replicas: seed.replicas,
        replica: ReplicaRequest {
            accelerator: seed.accelerator,
            gpus: Gpus(if gpu_capable { seed.gpus } else { 0 }),
            gpu_product: seed
                .product
                .filter(|_| gpu_capable)
                .map(|p| PRODUCTS[p].to_owned()),
            cpu: Millicores(seed.cores * 1000),
            memory: Bytes(seed.memory * GI),
            node_selector: BTreeMap::new(),
            gpu_tolerations: Vec::new(),
            tolerations: if seed.tolerates {
                vec![Toleration {
                    key: Some(GPU_TAINT.into()),
                    operator: TolerationOperator::Exists,
                    ..Toleration::default()
                }]
            } else {
                Vec::new()
            },
        },
        dataset: seed.reads_corpus.then(|| "ml/corpus".to_owned()),
    }
}

/// A cluster that runs plans: admitted workloads become pods, preempted ones go back to
/// pending, and some running ones complete between plans.
struct Simulation {
    scheduler: Scheduler,
    config: SchedulerConfig,
    nodes: Vec<Node>,
    pending: Vec<Workload>,
    running: Vec<(Workload, Vec<RunningPod>)>,
    now: u64,
    ever_admitted: BTreeSet<WorkloadKey>,
}

impl Simulation {
    fn new(config: SchedulerConfig, nodes: Vec<Node>, pending: Vec<Workload>) -> Self {
        Simulation {
            scheduler: Scheduler::new(&config).expect("generated configuration is valid"),
            config,
            nodes,
            pending,
            running: Vec::new(),
            now: 10,
            ever_admitted: BTreeSet::new(),
        }
    }

    fn snapshot(&self) -> ClusterSnapshot {
        ClusterSnapshot {
            nodes: self.nodes.clone(),
            pods: self
                .running
                .iter()
                .flat_map(|(_, pods)| pods.clone())
                .collect(),
            now: at(self.now),
        }
    }

    /// Plans once, checks the plan against the state it was made for, then applies it.
    fn step(&mut self) -> Result<(), TestCaseError> {
        let plan = self.scheduler.plan(&self.snapshot(), &self.pending);
        self.check_plan(&plan)?;
        for preemption in &plan.preemptions {
            let position = self
                .running
                .iter()
                .position(|(w, _)| w.key == preemption.victim)
                .ok_or_else(|| {
                    TestCaseError::fail(format!("{} is not running", preemption.victim))
                })?;
            let (victim, _) = self.running.remove(position);
            prop_assert!(preemption.resume_from_checkpoint);
            self.pending.push(victim);
        }
        for admission in &plan.admissions {
            let position = self
                .pending
                .iter()
                .position(|w| w.key == admission.workload)
                .unwrap();
            let workload = self.pending.remove(position);
            let per_replica = Amounts {
                cpu: workload.replica.cpu,
                memory: workload.replica.memory,
                gpu: match admission.device {
                    Device::Gpu => workload.replica.gpus,
                    Device::Cpu => Gpus(0),
                },
            };
            let pods = admission
                .nodes
                .iter()
                .enumerate()
                .map(|(replica, node)| RunningPod {
                    namespace: workload.key.namespace.clone(),
                    name: format!("{}-{replica}", workload.key.name),
                    node: node.clone(),
                    requests: per_replica,
                    owner: Some(PodOwner {
                        workload: workload.key.clone(),
                        kind: workload.kind,
                        queue: workload.queue.clone(),
                        priority: workload.priority,
                    }),
                })
                .collect();
            self.ever_admitted.insert(workload.key.clone());
            self.running.push((workload, pods));
        }
        self.check_state()
    }

    fn check_plan(&self, plan: &Plan) -> Result<(), TestCaseError> {
        // Every pending workload is either admitted whole or waiting, never both.
        let mut decided = BTreeSet::new();
        for admission in &plan.admissions {
            let workload = self
                .pending
                .iter()
                .find(|w| w.key == admission.workload)
                .unwrap();
            prop_assert_eq!(admission.nodes.len(), workload.replicas as usize);
            prop_assert!(decided.insert(&admission.workload));
            for name in &admission.nodes {
                let node = self.nodes.iter().find(|n| &n.name == name).unwrap();
                if let (Device::Gpu, Some(product)) =
                    (admission.device, &workload.replica.gpu_product)
                {
                    prop_assert_eq!(node.labels.get(GPU_PRODUCT_LABEL), Some(product));
                }
                for taint in &node.taints {
                    prop_assert!(
                        workload
                            .replica
                            .tolerations
                            .iter()
                            .any(|t| t.tolerates(taint))
                    );
                }
            }
        }
        for waiting in &plan.waiting {
            prop_assert!(!waiting.message.is_empty());
            prop_assert!(decided.insert(&waiting.workload));
        }
        prop_assert_eq!(decided.len(), self.pending.len());
        // Only training is preempted, and only by higher priority or to reclaim lent quota.
        for preemption in &plan.preemptions {
            let (victim, _) = self
                .running
                .iter()
                .find(|(w, _)| w.key == preemption.victim)
                .unwrap();
            let preemptor = self
                .pending
                .iter()
                .find(|w| w.key == preemption.preemptor)
                .unwrap();
            prop_assert_eq!(victim.kind, WorkloadKind::Training);
            let reclaim = self.cohort_of(&victim.queue).is_some()
                && self.cohort_of(&victim.queue) == self.cohort_of(&preemptor.queue)
                && victim.queue != preemptor.queue;
            prop_assert!(victim.priority < preemptor.priority || reclaim);
        }
        Ok(())
    }

    fn cohort_of(&self, queue: &str) -> Option<&str> {
        self.config
            .queues
            .iter()
            .find(|q| q.name == queue)
            .and_then(|q| q.cohort.as_deref())
    }

    fn check_state(&self) -> Result<(), TestCaseError> {
        let mut used: HashMap<&str, Amounts> = HashMap::new();
        let mut by_queue: HashMap<&str, Amounts> = HashMap::new();
        for (workload, pods) in &self.running {
            for pod in pods {
                *used.entry(&pod.node).or_default() += pod.requests;
                *by_queue.entry(&workload.queue).or_default() += pod.requests;
            }
        }
        for node in &self.nodes {
            let used = used.get(node.name.as_str()).copied().unwrap_or_default();
            prop_assert!(
                used.fits_in(&node.allocatable),
                "{} over-committed: {:?}",
                node.name,
                used
            );
        }
        // A queue stays within its quota; a cohort's queues together within their summed quota.
        let mut groups: BTreeMap<String, (Amounts, Vec<Quota>)> = BTreeMap::new();
        for queue in &self.config.queues {
            let group = match &queue.cohort {
                Some(cohort) => format!("cohort {cohort}"),
                None => format!("queue {}", queue.name),
            };
            let entry = groups.entry(group).or_default();
            entry.0 += by_queue
                .get(queue.name.as_str())
                .copied()
                .unwrap_or_default();
            entry.1.push(queue.quota);
        }
        for (group, (usage, quotas)) in groups {
            if quotas.iter().all(|q| q.gpu.is_some()) {
                let limit: u32 = quotas.iter().map(|q| q.gpu.unwrap().0).sum();
                prop_assert!(
                    usage.gpu.0 <= limit,
                    "{group}: {} GPUs over {limit}",
                    usage.gpu.0
                );
            }
            if quotas.iter().all(|q| q.cpu.is_some()) {
                let limit: u64 = quotas.iter().map(|q| q.cpu.unwrap().0).sum();
                prop_assert!(
                    usage.cpu.0 <= limit,
                    "{group}: {:?} cpu over {limit}",
                    usage.cpu
                );
            }
        }
        Ok(())
    }

    /// Completes running workloads chosen by the bits of `mask`.
    fn complete(&mut self, mask: u32) {
        let mut bit = 0;
        self.running.retain(|_| {
            bit += 1;
            mask & (1 << (bit % 32)) == 0
        });
        self.now += 60;
    }
}

/// Whether `workload` would be admitted alone on the empty cluster, long after it queued.
fn fits_alone(config: &SchedulerConfig, nodes: &[Node], workload: &Workload) -> bool {
    let scheduler = Scheduler::new(config).unwrap();
    let empty = ClusterSnapshot {
        nodes: nodes.to_vec(),
        pods: Vec::new(),
        now: at(1_000_000),
    };
    !scheduler
        .plan(&empty, std::slice::from_ref(workload))
        .admissions
        .is_empty()
}

fn scenario() -> impl Strategy<Value = (SchedulerConfig, Vec<Node>, Vec<Workload>)> {
    (
        prop::collection::vec(queue_strategy(), 1..4),
        prop::collection::vec(node_strategy(), 1..7),
        prop::collection::vec(workload_strategy(), 1..12),
    )
        .prop_map(|(queues, nodes, workloads)| {
            let config = build_config(&queues);
            let nodes = nodes
                .into_iter()
                .enumerate()
                .map(|(i, n)| build_node(i, n))
                .collect();
            let workloads = workloads
                .iter()
                .enumerate()
                .map(|(i, seed)| build_workload(i, seed, queues.len()))
                .collect();
            (config, nodes, workloads)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// No node over-committed, quotas kept (cohorts together), gangs whole, only training
    /// preempted, and every workload that fits the empty cluster admitted eventually.
    #[test]
    fn plans_keep_every_invariant_and_admit_everything_that_fits(
        (config, nodes, workloads) in scenario(),
        completions in prop::collection::vec(any::<u32>(), 1..8),
    ) {
        let mut simulation = Simulation::new(config.clone(), nodes.clone(), workloads.clone());
        for mask in completions {
            simulation.step()?;
            simulation.complete(mask);
        }
        // Drain: workloads finish one at a time, oldest first, until nothing is left to admit.
        for _ in 0..(4 * workloads.len() + 8) {
            simulation.step()?;
            if simulation.pending.is_empty() && simulation.running.is_empty() {
                break;
            }
            if !simulation.running.is_empty() {
                simulation.running.remove(0);
            }
            simulation.now += 600;
        }
        for workload in &workloads {
            if fits_alone(&config, &nodes, workload) {
                prop_assert!(
                    simulation.ever_admitted.contains(&workload.key),
                    "{} fits the empty cluster but was never admitted", workload.key
                );
            }
        }
    }

    /// Adding lower-priority workloads never changes what happens to higher-priority ones.
    #[test]
    fn lower_priority_workloads_never_change_higher_priority_decisions(
        (config, nodes, workloads) in scenario(),
        extra in prop::collection::vec(workload_strategy(), 1..6),
        running_share in 0usize..4,
    ) {
        // Some of the workloads already run (admitted by an earlier plan).
        let mut simulation = Simulation::new(config.clone(), nodes, workloads[..workloads.len() / (running_share + 1)].to_vec());
        simulation.step()?;
        let pending: Vec<Workload> = workloads[workloads.len() / (running_share + 1)..].to_vec();
        prop_assume!(!pending.is_empty());
        let lowest = pending.iter().map(|w| w.priority).min().unwrap();
        let lower: Vec<Workload> = extra
            .iter()
            .enumerate()
            .map(|(i, seed)| {
                let mut w = build_workload(100 + i, seed, config.queues.len());
                w.priority = lowest - 1 - seed.priority;
                w
            })
            .collect();
        let snapshot = simulation.snapshot();
        let alone = simulation.scheduler.plan(&snapshot, &pending);
        let mut all = pending.clone();
        all.extend(lower);
        let together = simulation.scheduler.plan(&snapshot, &all);
        let original = |key: &WorkloadKey| pending.iter().any(|w| &w.key == key);
        let admitted: Vec<_> = together.admissions.iter().filter(|a| original(&a.workload)).cloned().collect();
        let waiting: Vec<_> = together.waiting.iter().filter(|w| original(&w.workload)).cloned().collect();
        prop_assert_eq!(alone.admissions, admitted);
        prop_assert_eq!(alone.waiting, waiting);
    }
}
