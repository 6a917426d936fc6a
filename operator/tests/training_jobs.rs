//! TrainingJobs and InferenceServices scheduled on the embedded cluster: the TrainingJob
//! controller, the scheduling loop and the InferenceService controller run in-process against
//! two Nodes shaped like the embedded cluster's defaults (`local-cpu`, and `local-gpu` with
//! two tainted GPUs). No kubelet runs here, so each test plays the worker pods by writing
//! their status, and serves `/progress` itself on the pod IP it assigns.

use std::time::Duration;

use aigc_crds::training_job::{TrainingJob, TrainingJobPhase};
use aigc_crds::{Dataset, InferenceService, Model, StorageTier};
use aigc_local_cluster::{Config, LocalCluster};
use aigc_operator::controllers::{self, Context, ControllerConfig};
use aigc_operator::metrics::Metrics;
use aigc_operator::scheduler::SchedulerConfig;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

const NS: &str = "default";
const WAIT: Duration = Duration::from_secs(60);

struct Env {
    cluster: LocalCluster,
    client: Client,
    operator: Option<JoinHandle<()>>,
    /// The running operator's metrics.
    metrics: Metrics,
    config: SchedulerConfig,
    dir: tempfile::TempDir,
}

impl Env {
    async fn start(config: SchedulerConfig) -> Env {
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temporary directory");
        // The test plays the nodes, the kubelet and the workload controllers itself.
        let mut cluster_config = Config::new(dir.path().join("data"));
        cluster_config.workloads = false;
        let cluster = LocalCluster::start(cluster_config)
            .await
            .expect("the embedded cluster starts");
        let client = cluster.client();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in aigc_crds::all_crds() {
            let name = crd.metadata.name.clone().unwrap();
            crds.create(&PostParams::default(), &crd).await.unwrap();
            tokio::time::timeout(
                WAIT,
                await_condition(crds.clone(), &name, conditions::is_crd_established()),
            )
            .await
            .expect("CRD established in time")
            .unwrap();
        }
        let mut env = Env {
            cluster,
            client,
            operator: None,
            metrics: Metrics::new(),
            config,
            dir,
        };
        env.add_node("local-cpu", false).await;
        env.add_node("local-gpu", true).await;
        let hot = env.dir.path().join("tiers/hot");
        env.apply_cluster::<StorageTier>(json!({
            "apiVersion": "aigc.dev/v1alpha1", "kind": "StorageTier",
            "metadata": {"name": "hot"},
            "spec": {"class": "hot", "backend": {"filesystem": {"path": hot}}}
        }))
        .await;
        env.start_operator();
        env
    }

    /// Run the controllers and the scheduling loop, as `aigc-operator run` does.
    fn start_operator(&mut self) {
        let config = ControllerConfig {
            scheduler: self.config.clone(),
            ..ControllerConfig::default()
        };
        let ctx = Context::new(self.client.clone(), config);
        self.metrics = ctx.metrics.clone();
        self.operator = Some(tokio::spawn(async move {
            tokio::join!(
                controllers::training_job::run(ctx.clone()),
                controllers::admission::run(ctx.clone()),
                controllers::inference_service::run(ctx),
            );
        }));
    }

    async fn stop_operator(&mut self) {
        if let Some(handle) = self.operator.take() {
            handle.abort();
            let _ = handle.await;
        }
    }

    async fn add_node(&self, name: &str, gpu: bool) {
        // Not labelled simulated: no kubelet stops its pods, so they are deleted at once.
        let mut labels = json!({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"});
        let mut capacity = json!({"cpu": "8", "memory": "32Gi", "pods": "110"});
        let mut spec = json!({});
        if gpu {
            labels["nvidia.com/gpu.product"] = json!("NVIDIA-H100-80GB-HBM3");
            labels["nvidia.com/gpu.count"] = json!("2");
            capacity["nvidia.com/gpu"] = json!("2");
            spec = json!({"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]});
        }
        self.apply_cluster::<Node>(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels}, "spec": spec
        }))
        .await;
        let nodes: Api<Node> = Api::all(self.client.clone());
        let status = json!({"status": {"capacity": capacity, "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), NS)
    }

    /// Server-side apply of a test object in the test namespace.
    async fn apply<K>(&self, object: Value)
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + DeserializeOwned,
        K::DynamicType: Default,
    {
        apply_with(self.api::<K>(), object).await;
    }

    /// Server-side apply of a cluster-scoped test object.
    async fn apply_cluster<K>(&self, object: Value)
    where
        K: Resource<Scope = k8s_openapi::ClusterResourceScope>
            + Clone
            + std::fmt::Debug
            + DeserializeOwned,
        K::DynamicType: Default,
    {
        apply_with(Api::<K>::all(self.client.clone()), object).await;
    }

    async fn set_status<K>(&self, name: &str, status: Value)
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + DeserializeOwned,
        K::DynamicType: Default,
    {
        self.api::<K>()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
            .unwrap_or_else(|e| panic!("setting the status of {name}: {e}"));
    }

    /// Wait until `name` satisfies `check`; on timeout, fail showing the object.
    async fn wait_for<K>(&self, name: &str, what: &str, check: impl Fn(&K) -> bool)
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + DeserializeOwned
            + Send
            + 'static,
        K::DynamicType: Default,
    {
        let api = self.api::<K>();
        let waited = tokio::time::timeout(
            WAIT,
            await_condition(api.clone(), name, move |obj: Option<&K>| {
                obj.is_some_and(&check)
            }),
        )
        .await;
        if !matches!(waited, Ok(Ok(_))) {
            let now = api.get_opt(name).await.ok().flatten();
            panic!("{name} never reached: {what}; it is now {now:#?}");
        }
    }

    async fn wait_gone<K>(&self, name: &str)
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + DeserializeOwned
            + Send
            + 'static,
        K::DynamicType: Default,
    {
        let api = self.api::<K>();
        let waited =
            tokio::time::timeout(WAIT, await_condition(api, name, conditions::is_deleted("")))
                .await;
        assert!(waited.is_ok(), "{name} was never deleted");
    }

    /// Wait until the `/metrics` page shows `value` for `sample` (its name and labels).
    async fn wait_metric(&self, sample: &str, value: u64) {
        let expected = format!("{sample} {value}\n");
        let shown = tokio::time::timeout(WAIT, async {
            while !self.metrics.render().contains(&expected) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            shown.is_ok(),
            "/metrics never showed {expected:?}:\n{}",
            self.metrics.render()
        );
    }

    async fn job(&self, name: &str) -> TrainingJob {
        self.api::<TrainingJob>().get(name).await.unwrap()
    }

    async fn pods_of(&self, job: &str) -> Vec<Pod> {
        self.api::<Pod>()
            .list(&ListParams::default().labels(&format!("aigc.dev/training-job={job}")))
            .await
            .unwrap()
            .items
    }

    async fn ready_dataset(&self, name: &str) {
        self.apply::<Dataset>(json!({
            "apiVersion": "aigc.dev/v1alpha1", "kind": "Dataset",
            "metadata": {"name": name},
            "spec": {"source": {"http": {"url": "http://data.invalid/d.csv"}}, "format": "csv"}
        }))
        .await;
        self.set_status::<Dataset>(name, json!({"phase": "Ready", "tier": "hot"}))
            .await;
    }

    async fn training_job(&self, name: &str, extra: Value) {
        let mut spec = json!({
            "datasetRef": {"name": "quickstart-data"},
            "output": {"modelName": format!("{name}-model"), "version": "1.0.0"},
            "architecture": "mlp",
            "hyperparameters": {"epochs": 3},
            "resources": {"accelerator": "cpu", "cpu": "1", "memory": "1Gi"},
        });
        merge(&mut spec, extra);
        self.apply::<TrainingJob>(json!({
            "apiVersion": "aigc.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name}, "spec": spec
        }))
        .await;
    }

    /// Play the kubelet: the pod runs with `ip`.
    async fn run_pod(&self, pod: &str, ip: &str) {
        self.set_status::<Pod>(
            pod,
            json!({"phase": "Running", "podIP": ip, "hostIP": "127.0.0.1"}),
        )
        .await;
    }

    /// Play the kubelet: the worker exited with `code` and wrote `message`.
    async fn finish_pod(&self, pod: &str, code: i32, message: Value) {
        let phase = if code == 0 { "Succeeded" } else { "Failed" };
        self.set_status::<Pod>(
            pod,
            json!({"phase": phase, "containerStatuses": [{
                "name": "worker", "ready": false, "restartCount": 0, "image": "aigc-worker",
                "imageID": "", "state": {"terminated": {"exitCode": code, "reason": if code == 0 {"Completed"} else {"Error"},
                "message": message.to_string()}}}]}),
        )
        .await;
    }

    async fn kubectl(&self, args: &[&str]) -> String {
        let output = tokio::process::Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", self.cluster.kubeconfig_path())
            .env("HOME", self.dir.path())
            .output()
            .await
            .expect("kubectl is on PATH (scripts/install-test-deps.sh checks for it)");
        assert!(
            output.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

async fn apply_with<K>(api: Api<K>, object: Value)
where
    K: Resource + Clone + std::fmt::Debug + DeserializeOwned,
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

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (key, value) in extra {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, extra) => *base = extra,
    }
}

fn phase(job: &TrainingJob) -> Option<TrainingJobPhase> {
    job.status.as_ref().and_then(|s| s.phase)
}

fn admitted_reason(job: &TrainingJob) -> Option<String> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Admitted")
        .map(|c| c.reason.clone())
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

fn gpu_request(pod: &Pod) -> Option<String> {
    let requests = pod.spec.as_ref()?.containers[0]
        .resources
        .as_ref()?
        .requests
        .as_ref()?;
    requests.get("nvidia.com/gpu").map(|q| q.0.clone())
}

fn args_of(pod: &Pod) -> Vec<String> {
    pod.spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap_or_default()
}

/// Serves `body` at `GET /progress` on `ip:9090`, as the worker does.
async fn serve_progress(ip: &str, body: Value) -> JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind((ip, 9090))
        .await
        .unwrap_or_else(|e| panic!("binding {ip}:9090: {e}"));
    let body = body.to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = vec![0; 4096];
            let _ = stream.read(&mut request).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_job_waits_for_its_dataset_runs_on_the_gpu_node_and_registers_its_model() {
    let env = Env::start(SchedulerConfig::default()).await;
    env.training_job(
        "train",
        json!({"resources": {"accelerator": "gpu", "gpus": 1}}),
    )
    .await;
    env.wait_for::<TrainingJob>("train", "waiting for its Dataset", |job| {
        job.status.as_ref().is_some_and(|s| {
            s.phase == Some(TrainingJobPhase::Pending)
                && s.conditions.iter().any(|c| {
                    c.reason == "DatasetNotFound"
                        && c.message == "Dataset quickstart-data not found"
                })
        })
    })
    .await;

    env.ready_dataset("quickstart-data").await;
    env.wait_for::<Pod>("train-a1-r0", "created", |_| true)
        .await;
    let pod = env.api::<Pod>().get("train-a1-r0").await.unwrap();
    assert_eq!(node_of(&pod), Some("local-gpu"));
    assert_eq!(gpu_request(&pod).as_deref(), Some("1"));
    let args = args_of(&pod);
    assert!(args.contains(&"$(POD_IP):9090".to_owned()), "{args:?}");
    assert!(!args.contains(&"--resume".to_owned()), "{args:?}");
    let job = env.job("train").await;
    let placement = job.status.as_ref().unwrap().placement.clone().unwrap();
    assert_eq!(placement.nodes, ["local-gpu"]);
    assert_eq!(admitted_reason(&job).as_deref(), Some("Admitted"));

    let _progress = serve_progress(
        "127.1.40.1",
        json!({"phase": "Running", "device": "cuda:0", "epoch": 1, "epochs": 3, "step": 40,
               "totalSteps": 120, "progress": 0.33, "trainLoss": 0.4321, "metricName": "accuracy",
               "etaSeconds": 200}),
    )
    .await;
    env.run_pod("train-a1-r0", "127.1.40.1").await;
    env.wait_for::<TrainingJob>("train", "running with progress", |job| {
        phase(job) == Some(TrainingJobPhase::Running)
            && job
                .status
                .as_ref()
                .and_then(|s| s.progress.as_ref())
                .is_some_and(|p| p.step == Some(40))
    })
    .await;
    let table = env.kubectl(&["get", "tj", "train"]).await;
    assert!(
        table.contains("Running") && table.contains("40/120") && table.contains("3m20s"),
        "{table}"
    );

    env.finish_pod(
        "train-a1-r0",
        0,
        json!({"phase": "Succeeded", "epoch": 3, "epochs": 3, "step": 120, "totalSteps": 120,
               "trainLoss": 0.1, "metricName": "accuracy", "metric": 0.93,
               "model": "file:///tiers/hot/models/default/train-model/1.0.0",
               "manifestDigest": "sha256:abc"}),
    )
    .await;
    env.wait_for::<TrainingJob>("train", "Succeeded", |job| {
        phase(job) == Some(TrainingJobPhase::Succeeded)
    })
    .await;
    let model = env.api::<Model>().get("train-model").await.unwrap();
    assert_eq!(
        serde_json::to_value(&model.spec.source).unwrap(),
        json!({"trainingJobRef": {"name": "train"}})
    );
    assert_eq!(model.spec.version, "1.0.0");
    assert_eq!(
        model.metadata.annotations.unwrap()["aigc.dev/manifest-digest"],
        "sha256:abc"
    );
    let job = env.job("train").await;
    assert_eq!(
        job.status.unwrap().model_ref.map(|r| r.name).as_deref(),
        Some("train-model")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_cpu_while_the_gpus_are_busy() {
    let config = SchedulerConfig::from_yaml("autoFallbackAfter: 1s").unwrap();
    let env = Env::start(config).await;
    // Someone else's pod holds both GPUs.
    env.apply::<Pod>(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "other-gpu-user"},
        "spec": {"nodeName": "local-gpu", "containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}}}]}
    }))
    .await;
    env.set_status::<Pod>("other-gpu-user", json!({"phase": "Running"}))
        .await;
    env.ready_dataset("quickstart-data").await;
    env.training_job("auto", json!({"resources": {"accelerator": "auto"}}))
        .await;

    env.wait_for::<Pod>("auto-a1-r0", "created", |_| true).await;
    let pod = env.api::<Pod>().get("auto-a1-r0").await.unwrap();
    assert_eq!(node_of(&pod), Some("local-cpu"));
    assert_eq!(gpu_request(&pod), None);
    let job = env.job("auto").await;
    let status = job.status.clone().unwrap();
    assert_eq!(
        serde_json::to_value(status.placement.unwrap().accelerator).unwrap(),
        json!("cpu")
    );
    assert_eq!(admitted_reason(&job).as_deref(), Some("CpuFallback"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_preempts_training_which_resumes_from_its_checkpoint() {
    let env = Env::start(SchedulerConfig::default()).await;
    env.ready_dataset("quickstart-data").await;
    env.training_job(
        "long",
        json!({"resources": {"accelerator": "gpu", "gpus": 2}}),
    )
    .await;
    env.wait_for::<Pod>("long-a1-r0", "created", |_| true).await;
    env.run_pod("long-a1-r0", "127.1.41.1").await;
    env.wait_for::<TrainingJob>("long", "Running", |job| {
        phase(job) == Some(TrainingJobPhase::Running)
    })
    .await;

    env.apply::<Model>(json!({
        "apiVersion": "aigc.dev/v1alpha1", "kind": "Model", "metadata": {"name": "chat"},
        "spec": {"source": {"pvc": {"claimName": "models"}}, "format": "gguf",
                 "architecture": "llama", "task": "text-generation", "version": "1.0.0"}
    }))
    .await;
    env.set_status::<Model>("chat", json!({"phase": "Ready", "tier": "hot"}))
        .await;
    env.apply::<InferenceService>(json!({
        "apiVersion": "aigc.dev/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": "chat"},
        "spec": {"modelRef": {"name": "chat"}, "replicas": 1,
                 "resources": {"accelerator": "gpu", "gpus": 1}}
    }))
    .await;

    env.wait_for::<TrainingJob>("long", "preempted back to its queue", |job| {
        admitted_reason(job).as_deref() == Some("Preempted")
    })
    .await;
    env.wait_gone::<Pod>("long-a1-r0").await;
    env.wait_for::<Deployment>("chat", "created", |_| true)
        .await;
    let deployment = env.api::<Deployment>().get("chat").await.unwrap();
    let template = deployment.spec.unwrap().template.spec.unwrap();
    let affinity = serde_json::to_value(template.affinity.unwrap()).unwrap();
    assert_eq!(
        affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchFields"][0]["values"],
        json!(["local-gpu"])
    );
    let args = template.containers[0].args.clone().unwrap();
    assert!(args.contains(&"$(POD_IP):8080".to_owned()), "{args:?}");
    let job = env.job("long").await;
    assert_eq!(phase(&job), Some(TrainingJobPhase::Queued));

    // Local mode: the Service's loopback clusterIP is the URL.
    // The embedded API server gives every Service a loopback cluster IP: that is the URL.
    env.wait_for::<Service>("chat", "created", |_| true).await;
    let service = env.api::<Service>().get("chat").await.unwrap();
    let ip = service
        .spec
        .and_then(|spec| spec.cluster_ip)
        .expect("a cluster IP");
    assert!(ip.starts_with("127."), "{ip}");
    let url = format!("http://{ip}:8080/v1");
    env.wait_for::<InferenceService>("chat", "a loopback URL", |service| {
        service.status.as_ref().and_then(|s| s.url.as_deref()) == Some(url.as_str())
    })
    .await;

    // When the service goes, the training is admitted again and resumes.
    env.api::<InferenceService>()
        .delete("chat", &Default::default())
        .await
        .unwrap();
    env.wait_for::<Pod>("long-a2-r0", "created", |_| true).await;
    let pod = env.api::<Pod>().get("long-a2-r0").await.unwrap();
    assert!(args_of(&pod).contains(&"--resume".to_owned()));
    assert_eq!(node_of(&pod), Some("local-gpu"));
    let job = env.job("long").await;
    assert_eq!(job.status.unwrap().attempts, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_retry_from_the_checkpoint_up_to_the_backoff_limit() {
    let env = Env::start(SchedulerConfig::default()).await;
    env.ready_dataset("quickstart-data").await;
    env.training_job("flaky", json!({"backoffLimit": 1})).await;

    env.wait_for::<Pod>("flaky-a1-r0", "created", |_| true)
        .await;
    env.finish_pod(
        "flaky-a1-r0",
        1,
        json!({"phase": "Failed", "error": "out of memory"}),
    )
    .await;
    env.wait_for::<Pod>("flaky-a2-r0", "created", |_| true)
        .await;
    let retry = env.api::<Pod>().get("flaky-a2-r0").await.unwrap();
    assert!(args_of(&retry).contains(&"--resume".to_owned()));
    let job = env.job("flaky").await;
    assert_eq!(job.status.as_ref().unwrap().failures, Some(1));

    env.finish_pod(
        "flaky-a2-r0",
        1,
        json!({"phase": "Failed", "error": "out of memory"}),
    )
    .await;
    env.wait_for::<TrainingJob>("flaky", "Failed", |job| {
        phase(job) == Some(TrainingJobPhase::Failed)
    })
    .await;
    let job = env.job("flaky").await;
    let failed = job
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .unwrap();
    assert_eq!(failed.reason, "BackoffLimitExceeded");
    assert!(
        failed.message.contains("out of memory"),
        "{}",
        failed.message
    );
    assert!(
        env.api::<Pod>()
            .get_opt("flaky-a3-r0")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_operator_converges_without_duplicate_pods() {
    let mut env = Env::start(SchedulerConfig::default()).await;
    env.ready_dataset("quickstart-data").await;
    env.training_job("steady", json!({"replicas": 2})).await;
    // Stop the operator as soon as the job is admitted, before or while its pods are made.
    env.wait_for::<TrainingJob>("steady", "admitted", |job| {
        phase(job) == Some(TrainingJobPhase::Admitted)
    })
    .await;
    env.stop_operator().await;
    env.start_operator();
    env.wait_for::<Pod>("steady-a1-r1", "created", |_| true)
        .await;
    env.stop_operator().await;
    env.start_operator();
    env.run_pod("steady-a1-r0", "127.1.42.1").await;
    env.run_pod("steady-a1-r1", "127.1.42.2").await;
    env.wait_for::<TrainingJob>("steady", "Running", |job| {
        phase(job) == Some(TrainingJobPhase::Running)
    })
    .await;

    let mut names: Vec<String> = env
        .pods_of("steady")
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    names.sort();
    assert_eq!(names, ["steady-a1-r0", "steady-a1-r1"]);
    let job = env.job("steady").await;
    assert_eq!(job.status.unwrap().attempts, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_deadline_is_stopped_and_failed() {
    let env = Env::start(SchedulerConfig::default()).await;
    env.ready_dataset("quickstart-data").await;
    // Long enough that the pod is created before the deadline even on a loaded machine (with
    // 1 s the job could fail before its pod existed, and the wait below timed out), short
    // enough to keep the test quick.
    env.training_job("slow", json!({"activeDeadlineSeconds": 5}))
        .await;
    env.wait_for::<Pod>("slow-a1-r0", "created", |_| true).await;
    env.run_pod("slow-a1-r0", "127.1.43.1").await;
    env.wait_for::<TrainingJob>("slow", "failed at its deadline", |job| {
        job.status.as_ref().is_some_and(|s| {
            s.phase == Some(TrainingJobPhase::Failed)
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Failed" && c.reason == "DeadlineExceeded")
        })
    })
    .await;
    env.wait_gone::<Pod>("slow-a1-r0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_its_queue_quota_waits_and_says_why() {
    let config =
        SchedulerConfig::from_yaml("queues:\n  - name: gpu-team\n    quota: { gpu: 1 }\n").unwrap();
    let env = Env::start(config).await;
    env.ready_dataset("quickstart-data").await;
    let gpu = json!({"queue": "gpu-team", "resources": {"accelerator": "gpu", "gpus": 1}});
    env.training_job("first", gpu.clone()).await;
    env.wait_for::<Pod>("first-a1-r0", "created", |_| true)
        .await;
    env.training_job("second", gpu).await;
    env.wait_for::<TrainingJob>("second", "waiting on the quota", |job| {
        admitted_reason(job).as_deref() == Some("QuotaExceeded")
    })
    .await;
    let job = env.job("second").await;
    let message = job
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Admitted")
        .unwrap()
        .message;
    assert!(
        message.contains("queue gpu-team") && message.contains("1/1"),
        "{message}"
    );
    // The queue's gauges follow every scheduling pass.
    env.wait_metric("aigc_queue_pending_workloads{queue=\"gpu-team\"}", 1)
        .await;
    env.wait_metric("aigc_admitted_workloads{queue=\"gpu-team\"}", 1)
        .await;
    env.training_job("lost", json!({"queue": "nobody"})).await;
    env.wait_for::<TrainingJob>("lost", "waiting on an unknown queue", |job| {
        admitted_reason(job).as_deref() == Some("UnknownQueue")
    })
    .await;
    env.wait_metric("aigc_queue_pending_workloads{queue=\"nobody\"}", 1)
        .await;
    // The first job ends: the second takes its GPU.
    env.finish_pod(
        "first-a1-r0",
        0,
        json!({"phase": "Succeeded", "epoch": 3, "epochs": 3, "step": 120, "totalSteps": 120,
               "trainLoss": 0.1, "model": "file:///tiers/hot/models/default/first-model/1.0.0",
               "manifestDigest": "sha256:abc"}),
    )
    .await;
    env.wait_for::<TrainingJob>("first", "Succeeded", |job| {
        phase(job) == Some(TrainingJobPhase::Succeeded)
    })
    .await;
    env.wait_for::<Pod>("second-a1-r0", "created", |_| true)
        .await;
    env.wait_metric("aigc_queue_pending_workloads{queue=\"gpu-team\"}", 0)
        .await;
    env.wait_metric("aigc_admitted_workloads{queue=\"gpu-team\"}", 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_never_preempts_inference_and_waits_saying_why() {
    let env = Env::start(SchedulerConfig::default()).await;
    env.ready_dataset("quickstart-data").await;
    env.apply::<Model>(json!({
        "apiVersion": "aigc.dev/v1alpha1", "kind": "Model", "metadata": {"name": "chat"},
        "spec": {"source": {"pvc": {"claimName": "models"}}, "format": "gguf",
                 "architecture": "llama", "task": "text-generation", "version": "1.0.0"}
    }))
    .await;
    env.set_status::<Model>("chat", json!({"phase": "Ready", "tier": "hot"}))
        .await;
    env.apply::<InferenceService>(json!({
        "apiVersion": "aigc.dev/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": "chat"},
        "spec": {"modelRef": {"name": "chat"}, "replicas": 1,
                 "resources": {"accelerator": "gpu", "gpus": 1}}
    }))
    .await;
    env.wait_for::<Deployment>("chat", "created", |_| true)
        .await;

    // Its replica has no pod yet (no kubelet here): the admission alone holds the GPU.
    env.training_job(
        "urgent",
        json!({"priority": 5000, "resources": {"accelerator": "gpu", "gpus": 2}}),
    )
    .await;
    env.wait_for::<TrainingJob>("urgent", "unschedulable", |job| {
        admitted_reason(job).as_deref() == Some("Unschedulable")
    })
    .await;
    let service = env.api::<InferenceService>().get("chat").await.unwrap();
    let placement = service.status.unwrap().placement.unwrap();
    assert_eq!(placement.nodes, ["local-gpu"]);
    assert!(env.pods_of("urgent").await.is_empty());
}
