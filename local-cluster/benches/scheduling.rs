//! How fast the embedded cluster's default scheduler places pods: one placement decision
//! over 100 nodes holding 2,000 pods (pure), and 500 pods created through a kube client
//! until the last one is bound (end to end, over the API).
//!
//! Run: `cargo bench -p aigc-local-cluster --bench scheduling` (not part of `cargo test`);
//! add `--profile dev` to skip the release build (dependencies are optimised in dev too).

use std::time::{Duration, Instant};

use aigc_local_cluster::workloads::placement::{self, NodeState};
use aigc_local_cluster::{Config, LocalCluster};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

const NODES: usize = 100;
const PODS_ON_NODES: usize = 2_000;
const DECISIONS: usize = 1_000;
const PODS: usize = 500;

fn node(i: usize) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": format!("node-{i:03}"), "labels": {"zone": format!("z{}", i % 3)}},
        "spec": {"taints": if i.is_multiple_of(4) { json!([{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]) } else { json!([]) }},
        "status": {"allocatable": {"cpu": "64", "memory": "256Gi", "pods": "300", "nvidia.com/gpu": "8"}},
    }))
    .expect("a valid Node")
}

fn pod(i: usize) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("pod-{i:04}")},
        "spec": {"containers": [{"name": "main", "image": "aigc-worker",
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]},
    }))
    .expect("a valid Pod")
}

fn pure_decisions() {
    let mut nodes: Vec<NodeState> = (0..NODES).map(|i| NodeState::new(node(i))).collect();
    let requests = placement::pod_requests(&pod(0)).expect("parsable requests");
    for i in 0..PODS_ON_NODES {
        nodes[i % NODES].add_pod(&requests);
    }
    let candidate = pod(1);
    let start = Instant::now();
    for _ in 0..DECISIONS {
        let requests = placement::pod_requests(&candidate).expect("parsable requests");
        placement::choose_node(&candidate, &requests, &nodes).expect("a node fits");
    }
    let each = start.elapsed() / DECISIONS as u32;
    println!("placement: one decision over {NODES} nodes holding {PODS_ON_NODES} pods: {each:?}");
}

async fn end_to_end() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let cluster = LocalCluster::start(Config::new(dir.path()))
        .await
        .expect("the local cluster starts");
    let client = cluster.client();
    let nodes: Api<Node> = Api::all(client.clone());
    for i in 0..2 {
        let n = node(i + 1);
        let name = format!("node-{:03}", i + 1);
        nodes
            .create(&PostParams::default(), &n)
            .await
            .expect("node created");
        let status = json!({"status": n.status});
        nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .expect("node status written");
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut bound =
        Box::pin(
            watcher(pods.clone(), watcher::Config::default())
                .applied_objects()
                .filter(|p| {
                    futures::future::ready(p.as_ref().is_ok_and(|p| {
                        p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                    }))
                }),
        );
    let start = Instant::now();
    for i in 0..PODS {
        pods.create(&PostParams::default(), &pod(i))
            .await
            .expect("pod created");
    }
    let created = start.elapsed();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < PODS {
        let next = tokio::time::timeout(Duration::from_secs(120), bound.next())
            .await
            .expect("pods keep getting bound");
        if let Some(Ok(pod)) = next {
            seen.insert(pod.metadata.name.unwrap_or_default());
        }
    }
    let total = start.elapsed();
    println!(
        "scheduler: {PODS} pods created in {created:?}, all bound after {total:?} ({:.0} pods/s)",
        PODS as f64 / total.as_secs_f64()
    );
    cluster.shutdown().await.expect("the cluster stops");
}

#[tokio::main]
async fn main() {
    pure_decisions();
    end_to_end().await;
}
