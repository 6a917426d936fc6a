//! Throughput and latency of the embedded API server through a real kube client over HTTPS:
//! creating 10,000 custom resources, listing them all, fanning one update out to 100 watchers,
//! and the process's resident memory holding them.
//!
//! Run: `cargo bench -p aigc-local-cluster --bench api_server` (not part of `cargo test`).
//! `AIGC_BENCH_OBJECTS` and `AIGC_BENCH_UPDATES` change the counts, e.g. few objects and many
//! updates to profile the watch path alone.

use std::time::{Duration, Instant};

use aigc_crds::StorageTier;
use aigc_local_cluster::{Config, LocalCluster};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use tokio::sync::mpsc;

/// Objects created (default 10,000; `AIGC_BENCH_OBJECTS` overrides, e.g. to profile watches).
fn object_count() -> usize {
    env_count("AIGC_BENCH_OBJECTS", 10_000)
}

const CONCURRENCY: usize = 32;
const WATCHERS: usize = 100;
/// Updates fanned out (default 50; `AIGC_BENCH_UPDATES` overrides).
fn update_count() -> usize {
    env_count("AIGC_BENCH_UPDATES", 50)
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

const LISTS: usize = 10;

fn tier(i: usize) -> StorageTier {
    serde_json::from_value(json!({
        "apiVersion": "aigc.dev/v1alpha1", "kind": "StorageTier",
        "metadata": {"name": format!("tier-{i:05}"), "labels": {"bench": "yes"}},
        "spec": {"class": "cold", "backend": {"filesystem": {"path": format!("/data/{i}")}}},
    }))
    .expect("a valid StorageTier")
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
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
    let (objects, updates) = (object_count(), update_count());
    let dir = tempfile::tempdir().expect("temporary directory");
    let cluster = LocalCluster::start(Config::new(dir.path()))
        .await
        .expect("the cluster starts");
    let client = cluster.client();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in aigc_crds::all_crds() {
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply("bench"),
            &Patch::Apply(&crd),
        )
        .await
        .expect("CRD installs");
    }
    let tiers: Api<StorageTier> = Api::all(client.clone());
    let rss_before = rss_mib();

    let started = Instant::now();
    futures::stream::iter(0..objects)
        .map(|i| {
            let tiers = tiers.clone();
            async move {
                tiers
                    .create(&PostParams::default(), &tier(i))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .expect("every create succeeds");
    let create_time = started.elapsed();
    let rss_after = rss_mib();

    let mut lists = Vec::new();
    for _ in 0..LISTS {
        let started = Instant::now();
        let listed = tiers.list(&ListParams::default()).await.expect("list");
        lists.push(started.elapsed());
        assert_eq!(listed.items.len(), objects);
    }
    lists.sort();
    let mut raw_lists = Vec::new();
    let mut raw_bytes = 0;
    for _ in 0..LISTS {
        let request = hyper::Request::get("/apis/aigc.dev/v1alpha1/storagetiers")
            .body(Vec::new())
            .expect("a request");
        let started = Instant::now();
        let body = client.request_text(request).await.expect("raw list");
        raw_lists.push(started.elapsed());
        raw_bytes = body.len();
    }
    raw_lists.sort();

    let (sender, mut received) = mpsc::unbounded_channel::<(usize, Instant)>();
    let version = tiers
        .list(&ListParams::default().limit(1))
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("a resourceVersion");
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let stream = tiers
            .watch(&WatchParams::default().timeout(290), &version)
            .await
            .expect("watch starts");
        let sender = sender.clone();
        watchers.push(tokio::spawn(async move {
            let mut stream = stream.boxed();
            while let Some(Ok(event)) = stream.next().await {
                if let WatchEvent::Modified(tier) = event
                    && let Some(seq) = tier.labels().get("seq").and_then(|s| s.parse().ok())
                    && sender.send((seq, Instant::now())).is_err()
                {
                    break;
                }
            }
        }));
    }
    // Update 0 is a warm-up, reported on its own: every pooled client connection is now a
    // watch, so its patch opens a new connection and pays a TLS handshake (about 4 ms here),
    // which is the client's cost, not the server's delivery.
    let mut warm_up = Vec::new();
    let mut deliveries = Vec::new();
    for seq in 0..=updates {
        let patch = json!({"metadata": {"labels": {"seq": seq.to_string()}}});
        let sent = Instant::now();
        tiers
            .patch("tier-00000", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch");
        let mut got = 0;
        while got < WATCHERS {
            let (seen, at) = received.recv().await.expect("watchers are running");
            if seen == seq {
                if seq == 0 {
                    &mut warm_up
                } else {
                    &mut deliveries
                }
                .push(at - sent);
                got += 1;
            }
        }
    }
    deliveries.sort();
    warm_up.sort();
    for watcher in watchers {
        watcher.abort();
    }

    println!("objects created:        {objects} StorageTiers ({CONCURRENCY} in flight, HTTPS)");
    println!(
        "create throughput:      {:.0} creates/s ({:.2} s total)",
        objects as f64 / create_time.as_secs_f64(),
        create_time.as_secs_f64()
    );
    println!(
        "full list ({objects} items): median {:.1} ms, max {:.1} ms over {LISTS} lists",
        ms(percentile(&lists, 0.5)),
        ms(lists[lists.len() - 1])
    );
    println!(
        "full list as raw JSON ({:.1} MiB, no client decoding): median {:.1} ms, max {:.1} ms",
        raw_bytes as f64 / (1024.0 * 1024.0),
        ms(percentile(&raw_lists, 0.5)),
        ms(raw_lists[raw_lists.len() - 1])
    );
    println!(
        "watch fan-out ({WATCHERS} watchers x {updates} updates): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(&deliveries, 0.5)),
        ms(percentile(&deliveries, 0.99)),
        ms(deliveries[deliveries.len() - 1])
    );
    println!(
        "watch warm-up (first update on fresh watches, not in the above): p50 {:.2} ms, max {:.2} ms",
        ms(percentile(&warm_up, 0.5)),
        ms(warm_up[warm_up.len() - 1])
    );
    println!(
        "RSS (server and client in one process): {rss_before:.0} MiB before, {rss_after:.0} MiB with {objects} objects stored (+{:.0} MiB)",
        rss_after - rss_before
    );
    println!("objects stored:         {}", cluster.object_count());
    cluster.shutdown().await.expect("clean shutdown");
}
