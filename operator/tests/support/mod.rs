//! The embedded cluster with the CRDs installed, the data controllers running in-process,
//! and helpers that play a worker Job's pod through the API (set its termination message and
//! the Job's status), the way a kubelet and the Job controller would.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aigc_local_cluster::{Config, LocalCluster};
use aigc_operator::controllers::{self, Context, ControllerConfig};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

/// How long any awaited state may take before a test fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct Harness {
    pub cluster: LocalCluster,
    pub client: Client,
    pub dir: tempfile::TempDir,
    controllers: Option<JoinHandle<()>>,
}

impl Harness {
    /// A fresh cluster with the five CRDs, controllers not yet started.
    pub async fn start() -> Harness {
        // `RUST_LOG=aigc_operator=debug` shows the controllers' reconciles.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("temporary directory");
        // The tests play the Jobs' pods themselves: no nodes, kubelet or workload controllers.
        let mut cluster_config = Config::new(dir.path().join("cluster"));
        cluster_config.workloads = false;
        let cluster = LocalCluster::start(cluster_config)
            .await
            .expect("the embedded cluster starts");
        let client = cluster.client();
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let params = PatchParams::apply("aigc-operator").force();
        for crd in aigc_crds::all_crds() {
            let name = crd.metadata.name.clone().unwrap();
            crds.patch(&name, &params, &Patch::Apply(&crd))
                .await
                .expect("CRD installs");
        }
        Harness {
            cluster,
            client,
            dir,
            controllers: None,
        }
    }

    /// Run the Dataset, Model and tier policy controllers in this process.
    pub fn run_controllers(&mut self, policy_interval: Duration) {
        let config = ControllerConfig {
            tier_policy_interval: Some(policy_interval),
            ..ControllerConfig::default()
        };
        let ctx: Arc<Context> = Context::new(self.client.clone(), config);
        self.controllers = Some(tokio::spawn(async move {
            let (caches, keep_current) = controllers::cache::Caches::new(&ctx.client);
            let running = async {
                tokio::join!(
                    controllers::dataset::run(ctx.clone(), caches.clone()),
                    controllers::model::run(ctx.clone(), caches),
                    controllers::tiering::run(ctx.clone()),
                )
            };
            tokio::select! {
                _ = running => {}
                () = keep_current => {}
            }
        }));
    }

    /// Kill the controllers wherever they are, as a crashed operator would stop.
    pub async fn kill_controllers(&mut self) {
        if let Some(handle) = self.controllers.take() {
            handle.abort();
            let _ = handle.await;
        }
    }

    /// A filesystem StorageTier under the test's directory.
    pub async fn filesystem_tier(&self, name: &str, class: &str, extra: serde_json::Value) {
        let path = self.dir.path().join("tiers").join(name);
        let mut spec = json!({"class": class, "backend": {"filesystem": {"path": path}}});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        self.apply(
            "storagetiers",
            json!({"apiVersion": "aigc.dev/v1alpha1", "kind": "StorageTier",
                   "metadata": {"name": name}, "spec": spec}),
        )
        .await;
    }

    /// Server-side apply an aigc.dev object as a user would with kubectl.
    pub async fn apply(&self, plural: &str, object: serde_json::Value) {
        let ar = kube::discovery::ApiResource {
            group: "aigc.dev".into(),
            version: "v1alpha1".into(),
            api_version: "aigc.dev/v1alpha1".into(),
            kind: object["kind"].as_str().unwrap().into(),
            plural: plural.into(),
        };
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let api: Api<kube::api::DynamicObject> = match object["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        };
        api.patch(
            &name,
            &PatchParams::apply("kubectl"),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {plural}/{name}: {e}"));
    }

    /// The worker Jobs of the resource with `uid`.
    pub async fn jobs_of(&self, namespace: &str, uid: &str) -> Vec<Job> {
        let api: Api<Job> = Api::namespaced(self.client.clone(), namespace);
        api.list(&ListParams::default().labels(&format!("aigc.dev/owner-uid={uid}")))
            .await
            .expect("jobs list")
            .items
    }

    /// Wait until the resource with `uid` has a Job whose role is `role` and that `accept`s.
    pub async fn await_job(
        &self,
        namespace: &str,
        uid: &str,
        role: &str,
        accept: impl Fn(&Job) -> bool,
    ) -> Job {
        eventually(&format!("a {role} Job of {uid}"), || async {
            self.jobs_of(namespace, uid).await.into_iter().find(|j| {
                j.labels().get("aigc.dev/role").map(String::as_str) == Some(role) && accept(j)
            })
        })
        .await
    }

    /// Play `job`'s pod to the end: a pod that exited with `exit_code` leaving `message`, and
    /// the Job marked Complete or Failed.
    pub async fn finish_job(&self, job: &Job, exit_code: i32, message: Option<&str>) {
        let namespace = job.namespace().unwrap();
        let name = job.name_any();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let mut pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{name}-x1"), "namespace": namespace},
        }))
        .unwrap();
        let template = job.spec.as_ref().unwrap().template.clone();
        pod.metadata.labels = template.metadata.and_then(|m| m.labels);
        pod.spec = template.spec;
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("pod is created");
        let mut terminated = json!({"exitCode": exit_code, "reason": if exit_code == 0 {"Completed"} else {"Error"}});
        if let Some(message) = message {
            terminated["message"] = json!(message);
        }
        pods.patch_status(
            &format!("{name}-x1"),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": if exit_code == 0 {"Succeeded"} else {"Failed"},
                "containerStatuses": [{"name": "worker", "ready": false, "restartCount": 0,
                    "image": "aigc-worker", "imageID": "",
                    "state": {"terminated": terminated}}]
            }})),
        )
        .await
        .expect("pod status is set");
        let (type_, counts) = if exit_code == 0 {
            ("Complete", json!({"succeeded": 1}))
        } else {
            ("Failed", json!({"failed": 3}))
        };
        let mut status = counts;
        status["conditions"] = json!([{"type": type_, "status": "True",
            "reason": if exit_code == 0 {"Completed"} else {"BackoffLimitExceeded"},
            "message": "played by the test"}]);
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &namespace);
        jobs.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .expect("job status is set");
    }
}

/// Poll `probe` until it returns something, failing the test after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Job's worker container arguments.
pub fn args(job: &Job) -> Vec<String> {
    job.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap_or_default()
}
