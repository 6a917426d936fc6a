//! `aigc-operator run`, the real binary, against the embedded cluster: it serves /healthz,
//! /readyz and /metrics, leads through its Lease, reconciles, logs JSON, stops cleanly on
//! SIGTERM releasing the Lease, and never logs a secret's value even at debug level, while
//! probing an S3 tier (moto) with a Secret's keys.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aigc_crds::model::Model;
use aigc_crds::storage_tier::StorageTier;
use aigc_crds::training_job::TrainingJob;
use aigc_local_cluster::{Config, LocalCluster};
use aigc_storage::testing::MotoServer;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Generous bound on any wait, so a broken operator fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(90);
/// How often an HTTP endpoint or the API is polled while waiting for a condition.
const POLL: Duration = Duration::from_millis(200);

struct Operator {
    child: Child,
    /// Every line the process wrote, stdout and stderr.
    output: Arc<Mutex<Vec<String>>>,
    metrics_addr: String,
}

async fn start_cluster() -> (LocalCluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let cluster = LocalCluster::start(Config::new(dir.path().join("data")))
        .await
        .expect("the local cluster starts");
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client());
    for crd in aigc_crds::all_crds() {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(
            &name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("installing the CRDs");
    }
    (cluster, dir)
}

fn collect_lines<R>(reader: R, output: Arc<Mutex<Vec<String>>>)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            output.lock().unwrap().push(line);
        }
    });
}

/// Start `aigc-operator run`, with leader election as the chart does unless `elect` is false.
async fn start_operator(
    cluster: &LocalCluster,
    dir: &Path,
    log_level: &str,
    elect: bool,
) -> Operator {
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "workers:\n  images:\n    cpu: test/aigc-worker:1\nscheduler:\n  queues:\n    - name: default\n    - name: gpu-team\n      quota: {gpu: 2}\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_aigc-operator"))
        .args(["run", "--metrics-addr=127.0.0.1:0"])
        .args(elect.then_some("--leader-election"))
        .arg(format!("--config={}", config.display()))
        .arg("--lease-name=aigc-operator")
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .env("POD_NAME", "operator-0")
        .env("POD_NAMESPACE", "default")
        .env("RUST_LOG", log_level)
        .env("AIGC_LOG_FORMAT", "json")
        .env("HOME", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the operator binary starts");
    let output = Arc::new(Mutex::new(Vec::new()));
    collect_lines(child.stdout.take().unwrap(), output.clone());
    collect_lines(child.stderr.take().unwrap(), output.clone());
    let metrics_addr = wait_for("the metrics address in the logs", || {
        let output = output.clone();
        async move {
            output.lock().unwrap().iter().find_map(|line| {
                let entry: Value = serde_json::from_str(line).ok()?;
                entry["fields"]["metrics_addr"].as_str().map(str::to_owned)
            })
        }
    })
    .await;
    Operator {
        child,
        output,
        metrics_addr,
    }
}

impl Operator {
    /// SIGTERM the process and wait for it to exit.
    async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().expect("the operator is running");
        let kill = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("kill runs");
        assert!(kill.success());
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("the operator exits after SIGTERM")
            .expect("waiting for the operator");
        // Let the readers drain what the process wrote last.
        tokio::time::sleep(POLL).await;
        status
    }

    fn logs(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    async fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.metrics_addr, path).await
    }
}

/// A plain HTTP/1.1 GET: (status code, body).
async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

/// Poll `probe` until it returns something, or fail after [`PATIENCE`].
async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The value of the sample `name` (with its labels as written) in a Prometheus text page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn holder(client: &Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), "default")
        .get("aigc-operator")
        .await
        .expect("the Lease exists")
        .spec
        .and_then(|s| s.holder_identity)
}

async fn apply<K>(api: &Api<K>, object: Value)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let name = object["metadata"]["name"].as_str().unwrap().to_owned();
    api.patch(
        &name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(&object),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {name}: {e}"));
}

#[tokio::test]
async fn run_serves_probes_and_metrics_leads_and_stops_cleanly_on_sigterm() {
    let (cluster, dir) = start_cluster().await;
    let client = cluster.client();
    let mut operator = start_operator(&cluster, dir.path(), "info", true).await;

    assert_eq!(operator.get("/healthz").await, (200, "ok\n".to_owned()));
    let ready = wait_for("/readyz to turn ready", || async {
        let (status, body) = operator.get("/readyz").await;
        (status == 200).then_some(body)
    })
    .await;
    assert!(ready.starts_with("leading; caches synced"), "{ready}");
    assert_eq!(holder(&client).await.as_deref(), Some("operator-0"));

    let tier_dir = dir.path().join("tier");
    std::fs::create_dir_all(&tier_dir).unwrap();
    std::fs::write(tier_dir.join("object"), b"12345").unwrap();
    let tiers: Api<StorageTier> = Api::all(client.clone());
    apply(
        &tiers,
        json!({"apiVersion": "aigc.dev/v1alpha1", "kind": "StorageTier", "metadata": {"name": "hot"},
               "spec": {"class": "hot", "backend": {"filesystem": {"path": tier_dir}}}}),
    )
    .await;
    let status = wait_for("the StorageTier status", || async {
        tiers
            .get("hot")
            .await
            .ok()?
            .status
            .filter(|s| s.object_count.is_some())
    })
    .await;
    assert_eq!(status.used_bytes, Some(5));

    let page = wait_for("a counted StorageTier reconcile", || async {
        let (_, page) = operator.get("/metrics").await;
        (sample(&page, "aigc_reconcile_total{kind=\"StorageTier\"}")? >= 1.0).then_some(page)
    })
    .await;
    assert_eq!(sample(&page, "aigc_leader"), Some(1.0));
    assert_eq!(
        sample(&page, "aigc_reconcile_errors_total{kind=\"StorageTier\"}"),
        Some(0.0)
    );
    assert!(
        sample(
            &page,
            "aigc_reconcile_duration_seconds_count{kind=\"StorageTier\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(&page, "aigc_reconcile_total{kind=\"InferenceService\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&page, "aigc_queue_pending_workloads{queue=\"gpu-team\"}"),
        Some(0.0)
    );

    // Every kind is counted, the data controllers' too, and the tier policy's passes.
    let datasets: Api<aigc_crds::Dataset> = Api::namespaced(client.clone(), "default");
    apply(
        &datasets,
        json!({"apiVersion": "aigc.dev/v1alpha1", "kind": "Dataset",
               "metadata": {"name": "reviews", "namespace": "default"},
               "spec": {"source": {"http": {"url": "http://data.invalid/reviews.csv"}},
                        "format": "csv", "placement": {"tier": "nowhere"}}}),
    )
    .await;
    let page = wait_for("a counted Dataset reconcile", || async {
        let (_, page) = operator.get("/metrics").await;
        (sample(&page, "aigc_reconcile_total{kind=\"Dataset\"}")? >= 1.0).then_some(page)
    })
    .await;
    for kind in ["Dataset", "Model", "TrainingJob", "TierPolicy"] {
        assert!(
            sample(
                &page,
                &format!("aigc_reconcile_duration_seconds_count{{kind=\"{kind}\"}}")
            )
            .is_some(),
            "no {kind} in\n{page}"
        );
    }

    let status = operator.terminate().await;
    assert!(status.success(), "exit status {status}");
    assert_eq!(holder(&client).await, None, "the Lease is released");
    let logs = operator.logs();
    for line in &logs {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(
            entry["level"].is_string() && entry["timestamp"].is_string(),
            "{line}"
        );
    }
    let messages: Vec<String> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["fields"]["message"].as_str().map(str::to_owned))
        .collect();
    for expected in [
        "became the leader",
        "SIGTERM; shutting down",
        "stopping controllers",
        "released the leader Lease",
        "stopped",
    ] {
        assert!(
            messages.iter().any(|m| m == expected),
            "no {expected:?} in {messages:?}"
        );
    }
}

#[tokio::test]
async fn without_leader_election_the_controllers_start_once_and_run_until_sigterm() {
    let (cluster, dir) = start_cluster().await;
    let mut operator = start_operator(&cluster, dir.path(), "info", false).await;
    let ready = wait_for("/readyz to turn ready", || async {
        let (status, body) = operator.get("/readyz").await;
        (status == 200).then_some(body)
    })
    .await;
    assert!(ready.starts_with("leading; caches synced"), "{ready}");
    let (_, page) = operator.get("/metrics").await;
    assert_eq!(sample(&page, "aigc_leader"), Some(1.0));
    let status = operator.terminate().await;
    assert!(status.success(), "exit status {status}");
    let starts = operator
        .logs()
        .iter()
        .filter(|line| line.contains("\"starting controllers\""))
        .count();
    assert_eq!(starts, 1, "{:#?}", operator.logs());
    let leases = Api::<Lease>::namespaced(cluster.client(), "default");
    assert!(leases.get_opt("aigc-operator").await.unwrap().is_none());
}

#[tokio::test]
async fn debug_logs_never_contain_a_secret_value() {
    const ACCESS_KEY: &str = "AKIAQ7TESTACCESSKEY9";
    const SECRET_KEY: &str = "tEsT/sEcReT+kEy/9f8e7d6c5b4a3";
    const API_KEY: &str = "sk-aigc-test-3c1f9e77d2b84a56";
    // The S3 tier's probe signs real requests with the Secret's keys.
    let moto = MotoServer::start().expect("moto (scripts/install-test-deps.sh)");
    moto.create_bucket("aigc-cold").await;
    let (cluster, dir) = start_cluster().await;
    let client = cluster.client();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    for (name, data) in [
        (
            "s3-credentials",
            json!({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}),
        ),
        ("api-keys", json!({"keys": format!("{API_KEY}\n")})),
    ] {
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data}))
                    .unwrap(),
            )
            .await
            .unwrap();
    }
    let tiers: Api<StorageTier> = Api::all(client.clone());
    let hot_dir = dir.path().join("hot");
    std::fs::create_dir_all(&hot_dir).unwrap();
    apply(
        &tiers,
        json!({"apiVersion": "aigc.dev/v1alpha1", "kind": "StorageTier", "metadata": {"name": "hot"},
               "spec": {"class": "hot", "backend": {"filesystem": {"path": hot_dir}}}}),
    )
    .await;
    apply(
        &tiers,
        json!({"apiVersion": "aigc.dev/v1alpha1", "kind": "StorageTier", "metadata": {"name": "cold"},
               "spec": {"class": "cold", "backend": {"s3": {
                   "bucket": "aigc-cold", "endpoint": moto.endpoint(), "forcePathStyle": true,
                   "credentialsSecretRef": {"name": "s3-credentials", "namespace": "default"}}}}}),
    )
    .await;
    // A Model written by a TrainingJob that already succeeded: the Model controller marks it
    // Ready by itself (patching the Model's status by hand would race with it).
    let jobs: Api<TrainingJob> = Api::namespaced(client.clone(), "default");
    apply(
        &jobs,
        json!({"apiVersion": "aigc.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "train-chat"},
               "spec": {"datasetRef": {"name": "chat-data"}, "architecture": "char-transformer",
                        "output": {"modelName": "chat", "version": "1.0.0", "tier": "hot"}}}),
    )
    .await;
    jobs.patch_status(
        "train-chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
    )
    .await
    .unwrap();
    let models: Api<Model> = Api::namespaced(client.clone(), "default");
    apply(
        &models,
        json!({"apiVersion": "aigc.dev/v1alpha1", "kind": "Model", "metadata": {"name": "chat"},
               "spec": {"source": {"trainingJobRef": {"name": "train-chat"}}, "format": "gguf",
                        "architecture": "llama", "task": "text-generation", "version": "1.0.0"}}),
    )
    .await;
    let services: Api<aigc_crds::inference_service::InferenceService> =
        Api::namespaced(client.clone(), "default");
    apply(
        &services,
        json!({"apiVersion": "aigc.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": "chat"},
               "spec": {"modelRef": {"name": "chat"}, "api": {"apiKeySecretRef": {"name": "api-keys"}}}}),
    )
    .await;

    let mut operator = start_operator(&cluster, dir.path(), "debug", true).await;
    // Both resources that reference secrets have been reconciled.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deployment = wait_for("the inference Deployment", || async {
        deployments
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await;
    wait_for("the S3 tier Ready", || async {
        tiers.get("cold").await.ok()?.status.filter(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == aigc_crds::ConditionStatus::True)
        })
    })
    .await;
    let status = operator.terminate().await;
    assert!(status.success(), "exit status {status}");

    let logs = operator.logs().join("\n");
    assert!(
        logs.contains("\"level\":\"DEBUG\""),
        "the operator logged at debug level"
    );
    let deployment = serde_json::to_string(&deployment).unwrap();
    for secret in [ACCESS_KEY, SECRET_KEY, API_KEY] {
        let leaks: Vec<String> = logs
            .lines()
            .filter(|line| line.contains(secret))
            .map(|line| line.replace(secret, "<SECRET>"))
            .collect();
        assert!(
            leaks.is_empty(),
            "a secret value appears in the logs:\n{}",
            leaks.join("\n")
        );
        // Nor base64-encoded, as Secret data travels.
        let encoded = k8s_openapi::ByteString(secret.as_bytes().to_vec());
        let encoded = serde_json::to_value(&encoded).unwrap();
        assert!(
            !logs.contains(encoded.as_str().unwrap()),
            "a base64-encoded secret value appears in the logs"
        );
        assert!(
            !deployment.contains(secret),
            "secrets are passed by reference, never copied into the Deployment"
        );
    }
}
