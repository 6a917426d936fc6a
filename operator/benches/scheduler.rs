//! Plan time for 10,000 pending pods in 1,000 workloads (GPU and CPU training gangs,
//! inference, `auto`) over 10 quota'd queues, onto 500 to 5,000 nodes where every node
//! runs a system pod and every fourth node a lower-priority, preemptible training pod.
//!
//! Run: `cargo bench -p aigc-operator --bench scheduler`

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::time::{Duration, SystemTime};

use aigc_crds::common::Accelerator;
use aigc_operator::scheduler::{
    Amounts, Bytes, ClusterSnapshot, GPU_PRODUCT_LABEL, Gpus, Millicores, Node, PodOwner,
    QueueConfig, Quota, ReplicaRequest, RunningPod, Scheduler, SchedulerConfig, Taint, TaintEffect,
    Toleration, TolerationOperator, Workload, WorkloadKey, WorkloadKind,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const GI: u64 = 1 << 30;
const QUEUES: usize = 10;
const PRODUCTS: [&str; 2] = ["NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"];

/// A small deterministic generator, so every run plans the same cluster.
struct Random(u64);

impl Random {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

fn gpu_taint() -> Taint {
    Taint {
        key: "nvidia.com/gpu".into(),
        value: None,
        effect: TaintEffect::NoSchedule,
    }
}

/// One node in five has 8 GPUs (tainted, labelled with a product); the rest are CPU nodes.
fn nodes(count: usize, random: &mut Random) -> Vec<Node> {
    (0..count)
        .map(|index| {
            let name = format!("node-{index:05}");
            let mut labels = BTreeMap::from([
                ("kubernetes.io/hostname".to_owned(), name.clone()),
                (
                    "topology.kubernetes.io/zone".to_owned(),
                    format!("zone-{}", index % 3),
                ),
            ]);
            let mut node = Node {
                name,
                ..Node::default()
            };
            if index % 5 == 0 {
                labels.insert(GPU_PRODUCT_LABEL.into(), PRODUCTS[index / 5 % 2].into());
                node.taints.push(gpu_taint());
                node.allocatable = Amounts::new(96_000, 1024 * GI, 8);
            } else {
                node.allocatable = Amounts::new(32_000, 128 * GI, 0);
            }
            if random.below(20) == 0 {
                node.hot_datasets
                    .insert(format!("team-{}/corpus", random.below(QUEUES as u64)));
            }
            node.labels = labels;
            node
        })
        .collect()
}

/// Pods already running: system pods on every node, and low-priority training on some.
fn running(nodes: &[Node], random: &mut Random) -> Vec<RunningPod> {
    let mut pods = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        pods.push(RunningPod {
            namespace: "kube-system".into(),
            name: format!("agent-{index}"),
            node: node.name.clone(),
            requests: Amounts::new(500, GI, 0),
            owner: None,
        });
        if index % 4 == 3 {
            let team = random.below(QUEUES as u64);
            let workload = WorkloadKey::new(format!("team-{team}"), format!("old-{index}"));
            let gpus = if node.allocatable.gpu.0 > 0 { 2 } else { 0 };
            pods.push(RunningPod {
                namespace: workload.namespace.clone(),
                name: format!("{}-0", workload.name),
                node: node.name.clone(),
                requests: Amounts::new(4000, 16 * GI, gpus),
                owner: Some(PodOwner {
                    workload,
                    kind: WorkloadKind::Training,
                    queue: format!("team-{team}"),
                    priority: 0,
                }),
            });
        }
    }
    pods
}

/// 1,000 workloads of 10,000 pods: GPU training gangs of 8, CPU training of 16, inference
/// of 6 and `auto` jobs of 10, in equal numbers of pods.
fn workloads(random: &mut Random) -> Vec<Workload> {
    let tolerate_gpus = vec![Toleration {
        key: Some("nvidia.com/gpu".into()),
        operator: TolerationOperator::Exists,
        ..Toleration::default()
    }];
    let mut pending = Vec::new();
    let mut pods = 0;
    let mut index = 0;
    while pods < 10_000 {
        let team = random.below(QUEUES as u64);
        let (kind, accelerator, replicas, gpus, cores) = match index % 4 {
            0 => (
                WorkloadKind::Training,
                Accelerator::Gpu,
                8,
                1 + random.below(2) as u32,
                8,
            ),
            1 => (WorkloadKind::Training, Accelerator::Cpu, 16, 0, 2),
            2 => (WorkloadKind::Inference, Accelerator::Cpu, 6, 0, 1),
            _ => (WorkloadKind::Training, Accelerator::Auto, 10, 1, 4),
        };
        let replicas = replicas.min(10_000 - pods);
        pods += replicas;
        pending.push(Workload {
            key: WorkloadKey::new(format!("team-{team}"), format!("w-{index}")),
            kind,
            queue: format!("team-{team}"),
            // Above the running training, so every workload that does not fit tries preemption.
            priority: 10 + random.below(4) as i32 * 10,
            queued_at: SystemTime::UNIX_EPOCH + Duration::from_secs(random.below(3600)),
            replicas,
            replica: ReplicaRequest {
                accelerator,
                gpus: Gpus(gpus),
                gpu_product: (accelerator == Accelerator::Gpu && random.below(3) == 0)
                    .then(|| PRODUCTS[random.below(2) as usize].to_owned()),
                cpu: Millicores(cores * 1000),
                memory: Bytes(cores * 4 * GI),
                node_selector: BTreeMap::new(),
                tolerations: if accelerator == Accelerator::Cpu {
                    Vec::new()
                } else {
                    tolerate_gpus.clone()
                },
                gpu_tolerations: Vec::new(),
            },
            dataset: Some(format!("team-{team}/corpus")),
        });
        index += 1;
    }
    pending
}

/// Ten queues, one per team namespace; the first six share a cohort.
fn config() -> SchedulerConfig {
    SchedulerConfig {
        auto_fallback_after: aigc_crds::common::Duration("30m".into()),
        queues: (0..QUEUES)
            .map(|team| QueueConfig {
                name: format!("team-{team}"),
                namespaces: BTreeSet::from([format!("team-{team}")]),
                cohort: (team < 6).then(|| "shared".to_owned()),
                quota: Quota {
                    gpu: Some(Gpus(600)),
                    cpu: Some(Millicores(6_000_000)),
                    memory: None,
                },
            })
            .collect(),
        ..SchedulerConfig::default()
    }
}

fn plan_time(c: &mut Criterion) {
    let scheduler = Scheduler::new(&config()).expect("benchmark configuration is valid");
    let mut group = c.benchmark_group("plan 10000 pods in 1000 workloads");
    group.sample_size(10);
    group.throughput(Throughput::Elements(10_000));
    for node_count in [500, 1_000, 2_000, 5_000] {
        let mut random = Random(0x5eed_0000 + node_count as u64);
        let nodes = nodes(node_count, &mut random);
        let pods = running(&nodes, &mut random);
        let pending = workloads(&mut random);
        let cluster = ClusterSnapshot {
            nodes,
            pods,
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(3600),
        };
        let plan = scheduler.plan(&cluster, &pending);
        let placed: usize = plan.admissions.iter().map(|a| a.nodes.len()).sum();
        let mut reasons = BTreeMap::new();
        for waiting in &plan.waiting {
            *reasons.entry(waiting.reason.as_str()).or_insert(0) += 1;
        }
        eprintln!(
            "{node_count} nodes: {} of {} workloads admitted ({placed} pods), {} preemptions, waiting: {reasons:?}",
            plan.admissions.len(),
            pending.len(),
            plan.preemptions.len(),
        );
        group.bench_with_input(
            BenchmarkId::new("nodes", node_count),
            &cluster,
            |b, cluster| {
                b.iter(|| scheduler.plan(black_box(cluster), black_box(&pending)));
            },
        );
    }
    group.finish();
}

criterion_group!(benches, plan_time);
criterion_main!(benches);
