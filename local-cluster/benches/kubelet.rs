//! How fast the process kubelet turns pods into processes and back: 200 pods (`sh -c 'exit
//! 0'`, restartPolicy Never) created at once until all are `Succeeded` (per-pod latency from
//! create to the Succeeded status, and the total), then deleting them all until they are gone.
//!
//! Run: `cargo bench -p aigc-local-cluster --bench kubelet` (release), or with the dev profile
//! `cargo test -p aigc-local-cluster --bench kubelet`; neither is part of `cargo test`'s default
//! run of unit and integration tests.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aigc_local_cluster::{Config, ImageMapping, LocalCluster};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

const PODS: usize = 200;

fn pod(i: usize) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("bench-{i:04}"), "labels": {"bench": "yes"}},
        "spec": {
            "nodeName": "local-cpu",
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "exit 0"]}],
        },
    }))
    .expect("a valid pod")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = Config::new(dir.path());
    config.images = vec![ImageMapping::new("busybox", "/bin/sh")];
    let cluster = LocalCluster::start(config)
        .await
        .expect("the cluster starts");
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "default");
    let mut finished = watcher(pods.clone(), watcher::Config::default().labels("bench=yes"))
        .applied_objects()
        .boxed();

    let started = Instant::now();
    let mut created_at = HashMap::new();
    for i in 0..PODS {
        pods.create(&PostParams::default(), &pod(i))
            .await
            .expect("created");
        created_at.insert(format!("bench-{i:04}"), Instant::now());
    }
    let mut latencies = Vec::new();
    while latencies.len() < PODS {
        let Some(Ok(pod)) = finished.next().await else {
            panic!("the pod watch ended");
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if phase == Some("Succeeded")
            && let Some(created) = pod
                .metadata
                .name
                .as_ref()
                .and_then(|n| created_at.remove(n))
        {
            latencies.push(created.elapsed());
        }
    }
    let all_done = started.elapsed();
    latencies.sort();
    println!(
        "{PODS} pods created to Succeeded: total {:.0} ms; per pod p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        ms(all_done),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.9)),
        ms(percentile(&latencies, 1.0)),
    );

    let deleting = Instant::now();
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("bench=yes"),
    )
    .await
    .expect("deleted");
    loop {
        let left = pods
            .list_metadata(&ListParams::default().labels("bench=yes"))
            .await
            .expect("listed")
            .items
            .len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{PODS} finished pods deleted and gone: {:.0} ms",
        ms(deleting.elapsed())
    );
    cluster.shutdown().await.expect("the cluster stops");
}
