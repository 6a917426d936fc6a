//! Scale benchmark (ignored by `cargo test`): 1,000 Datasets and 1,000 Models applied at once
//! reach Ready. The operator runs as its own process (`aigc-operator run`) against the
//! embedded cluster, so its RSS is measured alone; this test plays every worker Job's pod
//! through the API as soon as the Job appears.
//!
//! Run with:
//! `cargo test -p aigc-operator --test data_scale -- --ignored --nocapture`
//! (`AIGC_SCALE=N` changes the count per kind; `AIGC_SCALE_LOG=FILE` keeps the operator's log,
//! at `AIGC_SCALE_RUST_LOG` level, default `warn`; `AIGC_SCALE_WRAPPER="heaptrack -o F"` runs
//! the operator under a profiler, the words of the variable before its command line;
//! `AIGC_SCALE_OPERATOR=PATH` runs that binary instead of this build's, e.g. the release one
//! users deploy: `cargo build --release -p aigc-operator`).

mod support;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aigc_crds::dataset::{Dataset, DatasetPhase};
use aigc_crds::model::{Model, ModelPhase};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::Harness;

const PREPARED: &str =
    r#"{"rowsIn":10,"rowsOut":10,"shards":1,"bytes":2048,"manifestDigest":"sha256:00"}"#;
const INSPECTED: &str = r#"{"format":"safetensors","architecture":"mlp","parameters":1000,"sizeBytes":4096,"manifestDigest":"sha256:11","task":"classification"}"#;

/// The operator process, stopped even when the benchmark fails half-way.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU seconds a process has used so far (`/proc/PID/stat` fields 14 and 15).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: f64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    // Linux reports in clock ticks of 1/100 s on every platform we run on.
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn thousands_of_datasets_and_models_reach_ready() {
    let n: usize = std::env::var("AIGC_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let h = Harness::start().await;
    h.filesystem_tier("hot", "hot", json!({})).await;
    let wrapper = std::env::var("AIGC_SCALE_WRAPPER").unwrap_or_default();
    let mut command_line: Vec<&str> = wrapper.split_whitespace().collect();
    let binary = std::env::var("AIGC_SCALE_OPERATOR")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_aigc-operator").to_owned());
    command_line.extend([binary.as_str(), "run"]);
    let operator = Command::new(command_line[0])
        .args(&command_line[1..])
        .env("KUBECONFIG", h.cluster.kubeconfig_path())
        .env(
            "RUST_LOG",
            std::env::var("AIGC_SCALE_RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdout(match std::env::var_os("AIGC_SCALE_LOG") {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
            None => Stdio::null(),
        })
        .stderr(Stdio::inherit())
        .spawn()
        .expect("aigc-operator run starts");
    let pid = operator.id();
    let mut operator = KillOnDrop(operator);

    let started = Instant::now();
    let objects: Vec<(&str, serde_json::Value)> = (0..n)
        .flat_map(|i| {
            [
                (
                    "datasets",
                    json!({"apiVersion": "aigc.dev/v1alpha1", "kind": "Dataset",
                           "metadata": {"name": format!("d{i}"), "namespace": "default"},
                           "spec": {"source": {"pvc": {"claimName": "raw", "path": format!("/d{i}")}},
                                    "format": "text"}}),
                ),
                (
                    "models",
                    json!({"apiVersion": "aigc.dev/v1alpha1", "kind": "Model",
                           "metadata": {"name": format!("m{i}"), "namespace": "default"},
                           "spec": {"source": {"pvc": {"claimName": "weights", "path": format!("/m{i}")}},
                                    "format": "safetensors", "architecture": "mlp",
                                    "task": "classification", "version": "1"}}),
                ),
            ]
        })
        .collect();
    let h = Arc::new(h);
    futures::stream::iter(objects)
        .for_each_concurrent(32, |(plural, object)| {
            let h = h.clone();
            async move { h.apply(plural, object).await }
        })
        .await;
    let applied = started.elapsed();

    // Play every worker Job's pod as soon as a watch shows the Job.
    let mut player = {
        let h = h.clone();
        tokio::spawn(async move {
            let jobs: Api<Job> = Api::namespaced(h.client.clone(), "default");
            let config =
                watcher::Config::default().labels("app.kubernetes.io/managed-by=aigc-operator");
            let mut seen = HashSet::new();
            watcher(jobs, config)
                .applied_objects()
                .filter_map(|job| futures::future::ready(job.ok()))
                .filter(move |job| futures::future::ready(seen.insert(job.name_any())))
                .for_each_concurrent(32, |job| {
                    let h = h.clone();
                    async move {
                        let summary = if job.labels()["aigc.dev/role"] == "prepare" {
                            PREPARED
                        } else {
                            INSPECTED
                        };
                        h.finish_job(&job, 0, Some(summary)).await;
                    }
                })
                .await;
        })
    };

    let datasets: Api<Dataset> = Api::namespaced(h.client.clone(), "default");
    let models: Api<Model> = Api::namespaced(h.client.clone(), "default");
    let mut peak_rss = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    let (ready_d, ready_m) = loop {
        peak_rss = peak_rss.max(rss_kib(pid, "VmRSS:"));
        if player.is_finished() {
            // It only ends by panicking (a request failed): show why instead of timing out.
            if let Err(error) = (&mut player).await
                && error.is_panic()
            {
                std::panic::resume_unwind(error.into_panic());
            }
            panic!("the pod player stopped watching Jobs");
        }
        let d = datasets.list(&Default::default()).await.unwrap().items;
        let m = models.list(&Default::default()).await.unwrap().items;
        let rd = d
            .iter()
            .filter(|d| d.status.as_ref().and_then(|s| s.phase) == Some(DatasetPhase::Ready))
            .count();
        let rm = m
            .iter()
            .filter(|m| m.status.as_ref().and_then(|s| s.phase) == Some(ModelPhase::Ready))
            .count();
        if (rd == n && rm == n) || Instant::now() > deadline {
            break (rd, rm);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let all_ready = started.elapsed();
    let hwm = rss_kib(pid, "VmHWM:");
    let operator_cpu = cpu_seconds(&pid.to_string());
    let cluster_cpu = cpu_seconds("self");
    player.abort();
    let _ = operator.0.kill();
    let _ = operator.0.wait();
    println!(
        "{n} Datasets + {n} Models: applied in {:.1} s, all Ready after {:.1} s \
         ({ready_d} Datasets and {ready_m} Models Ready); operator RSS peak {:.1} MiB \
         (sampled max {:.1} MiB); CPU: operator {operator_cpu:.1} s, embedded cluster and \
         pod player {cluster_cpu:.1} s",
        applied.as_secs_f64(),
        all_ready.as_secs_f64(),
        hwm as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    assert_eq!((ready_d, ready_m), (n, n), "not everything became Ready");
}
