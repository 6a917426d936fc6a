//! Cost of the scheduling loop's own work on top of the plan: turning what the reflectors
//! hold (5,000 Nodes, 10,000 worker Pods, 1,000 queued TrainingJobs) into the scheduler's
//! snapshot and pending workloads, once per pass.
//!
//! Run: `cargo bench -p aigc-operator --bench admission` (optimised), or with
//! `--profile dev` to reuse the test build (dependencies optimised, this crate not).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::SystemTime;

use aigc_crds::TrainingJob;
use aigc_crds::training_job::{TrainingJobPhase, TrainingJobStatus};
use aigc_operator::controllers::admission::{Observed, scheduling_input};
use aigc_operator::scheduler::SchedulerConfig;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::{Node, Pod};

const NODES: usize = 5_000;
const PODS: usize = 10_000;
const JOBS: usize = 1_000;

fn nodes() -> Vec<Arc<Node>> {
    (0..NODES)
        .map(|i| {
            let gpus = if i % 4 == 0 { "8" } else { "0" };
            let node: Node = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("node-{i}"),
                             "labels": {"kubernetes.io/hostname": format!("node-{i}")}},
                "spec": if i % 4 == 0 {
                    serde_json::json!({"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]})
                } else {
                    serde_json::json!({})
                },
                "status": {"allocatable": {"cpu": "64", "memory": "256Gi", "nvidia.com/gpu": gpus, "pods": "110"}}
            }))
            .expect("a valid Node");
            Arc::new(node)
        })
        .collect()
}

fn pods() -> Vec<Arc<Pod>> {
    (0..PODS)
        .map(|i| {
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("run-{i}-a1-r0"), "namespace": format!("team-{}", i % 10),
                             "labels": {"app.kubernetes.io/managed-by": "aigc-operator",
                                        "aigc.dev/training-job": format!("run-{i}"),
                                        "aigc.dev/queue": "default", "aigc.dev/priority": "10"}},
                "spec": {"nodeName": format!("node-{}", i % NODES),
                         "containers": [{"name": "worker", "resources": {"requests": {"cpu": "2", "memory": "4Gi"}}}]},
                "status": {"phase": "Running"}
            }))
            .expect("a valid Pod");
            Arc::new(pod)
        })
        .collect()
}

fn jobs() -> Vec<Arc<TrainingJob>> {
    (0..JOBS)
        .map(|i| {
            let mut job: TrainingJob = serde_json::from_value(serde_json::json!({
                "apiVersion": "aigc.dev/v1alpha1", "kind": "TrainingJob",
                "metadata": {"name": format!("queued-{i}"), "namespace": format!("team-{}", i % 10)},
                "spec": {"datasetRef": {"name": "corpus"},
                         "output": {"modelName": format!("m-{i}"), "version": "1"},
                         "architecture": "mlp", "replicas": 1 + (i % 4) as u32,
                         "resources": {"accelerator": if i % 2 == 0 { "gpu" } else { "cpu" },
                                       "cpu": "4", "memory": "16Gi"}}
            }))
            .expect("a valid TrainingJob");
            job.status = Some(TrainingJobStatus {
                phase: Some(TrainingJobPhase::Queued),
                ..TrainingJobStatus::default()
            });
            Arc::new(job)
        })
        .collect()
}

fn snapshot_time(c: &mut Criterion) {
    let (nodes, pods, jobs) = (nodes(), pods(), jobs());
    let config = SchedulerConfig::default();
    let observed = Observed {
        nodes: &nodes,
        pods: &pods,
        jobs: &jobs,
        services: &[],
        models: &[],
    };
    let input = scheduling_input(observed, &config, SystemTime::now());
    let mut kinds = BTreeMap::new();
    for pod in &input.cluster.pods {
        *kinds.entry(pod.owner.is_some()).or_insert(0) += 1;
    }
    eprintln!(
        "{} nodes, {} pods ({kinds:?} by owned), {} pending workloads",
        input.cluster.nodes.len(),
        input.cluster.pods.len(),
        input.pending.len()
    );
    let mut group = c.benchmark_group("scheduling input");
    group.sample_size(10);
    group.throughput(Throughput::Elements((NODES + PODS + JOBS) as u64));
    group.bench_function("5000 nodes, 10000 pods, 1000 jobs", |b| {
        b.iter(|| scheduling_input(black_box(observed), &config, SystemTime::now()));
    });
    group.finish();
}

criterion_group!(benches, snapshot_time);
criterion_main!(benches);
