//! The real chart `charts/aigc-operator` installed, upgraded and uninstalled by Helm (the Go
//! library through helm-sdkpy, driven by `tests/scripts/helm_chart.py`) on the embedded
//! cluster, checked with kubectl.

use std::path::PathBuf;
use std::process::Command;

use aigc_e2e::{repo_root, run_python_script};
use aigc_local_cluster::{Config, LocalCluster};
use aigc_operator::config::OperatorConfig;
use serde_json::{Value, json};

const NAMESPACE: &str = "aigc-system";
const RELEASE: &str = "aigc-operator";
const SELECTOR: &str = "app.kubernetes.io/instance=aigc-operator";

struct Cluster {
    cluster: LocalCluster,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let cluster = LocalCluster::start(Config::new(dir.path().join("data")))
            .await
            .expect("the local cluster starts");
        Cluster { cluster, dir }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.cluster.kubeconfig_path().to_path_buf()
    }

    /// Run Helm without blocking the runtime that serves the API.
    async fn helm(&self, action: &str, values: Value) -> Value {
        let kubeconfig = self.kubeconfig().display().to_string();
        let chart = repo_root()
            .join("charts/aigc-operator")
            .display()
            .to_string();
        let action = action.to_owned();
        let out = tokio::task::spawn_blocking(move || {
            run_python_script(
                "helm_chart.py",
                &[
                    &action,
                    &kubeconfig,
                    NAMESPACE,
                    RELEASE,
                    &chart,
                    &values.to_string(),
                ],
            )
        })
        .await
        .expect("helm runs");
        serde_json::from_str(&out).expect("helm_chart.py prints JSON")
    }

    /// kubectl's stdout, or its stderr as the error.
    async fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new("kubectl");
        command
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("KUBECACHEDIR", self.dir.path().join("kube-cache"))
            .env("HOME", self.dir.path());
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("kubectl runs")
            .expect("kubectl is on PATH (scripts/install-test-deps.sh checks for it)");
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    async fn kubectl_ok(&self, args: &[&str]) -> String {
        self.kubectl(args)
            .await
            .unwrap_or_else(|err| panic!("kubectl {args:?} failed: {err}"))
    }

    async fn get_json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&args).await).expect("kubectl prints JSON")
    }

    /// `kind/name` of the release's objects, sorted.
    async fn release_objects(&self) -> Vec<String> {
        let namespaced = self
            .kubectl_ok(&[
                "get",
                "deployments,serviceaccounts,configmaps,services,poddisruptionbudgets,networkpolicies,roles,rolebindings",
                "-n",
                NAMESPACE,
                "-l",
                SELECTOR,
                "-o",
                "name",
            ])
            .await;
        let cluster_wide = self
            .kubectl_ok(&[
                "get",
                "clusterroles,clusterrolebindings",
                "-l",
                SELECTOR,
                "-o",
                "name",
            ])
            .await;
        let mut names: Vec<String> = namespaced
            .lines()
            .chain(cluster_wide.lines())
            .map(str::to_owned)
            .collect();
        names.sort();
        names
    }

    async fn operator_config(&self) -> OperatorConfig {
        let config_map = self
            .get_json(&["get", "configmap", "aigc-operator-config", "-n", NAMESPACE])
            .await;
        let text = config_map["data"]["config.yaml"]
            .as_str()
            .expect("the ConfigMap holds config.yaml");
        OperatorConfig::from_yaml(text, "ConfigMap aigc-operator-config")
            .unwrap_or_else(|err| panic!("the operator rejects the chart's config: {err}"))
    }
}

#[tokio::test]
async fn helm_installs_upgrades_and_uninstalls_the_chart() {
    let cluster = Cluster::start().await;

    let installed = cluster.helm("install", json!({})).await;
    assert_eq!(installed, json!({"status": "deployed", "revision": 1}));
    assert_eq!(
        cluster.release_objects().await,
        [
            "clusterrole.rbac.authorization.k8s.io/aigc-operator",
            "clusterrole.rbac.authorization.k8s.io/aigc-operator-edit",
            "clusterrole.rbac.authorization.k8s.io/aigc-operator-view",
            "clusterrolebinding.rbac.authorization.k8s.io/aigc-operator",
            "configmap/aigc-operator-config",
            "deployment.apps/aigc-operator",
            "networkpolicy.networking.k8s.io/aigc-operator",
            "poddisruptionbudget.policy/aigc-operator",
            "role.rbac.authorization.k8s.io/aigc-operator-leader-election",
            "rolebinding.rbac.authorization.k8s.io/aigc-operator-leader-election",
            "service/aigc-operator-metrics",
            "serviceaccount/aigc-operator",
        ]
    );
    let crds = cluster.kubectl_ok(&["get", "crds", "-o", "name"]).await;
    for kind in [
        "datasets",
        "inferenceservices",
        "models",
        "storagetiers",
        "trainingjobs",
    ] {
        assert!(
            crds.contains(&format!(
                "customresourcedefinition.apiextensions.k8s.io/{kind}.aigc.dev"
            )),
            "CRD {kind} installed: {crds}"
        );
    }
    let deployment = cluster
        .get_json(&["get", "deployment", "aigc-operator", "-n", NAMESPACE])
        .await;
    assert_eq!(deployment["spec"]["replicas"], 1);
    let config = cluster.operator_config().await;
    assert_eq!(config.worker_images.cpu, "aigc-operator/aigc-worker:0.1.0");
    assert_eq!(config.scheduler.auto_fallback_after.0, "10m");
    let pdb = cluster
        .get_json(&["get", "pdb", "aigc-operator", "-n", NAMESPACE])
        .await;
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);

    let upgraded = cluster
        .helm(
            "upgrade",
            json!({
                "replicaCount": 2,
                "config": {"autoFallbackAfter": "3m", "queues": [
                    {"name": "default"},
                    {"name": "gpu-team", "namespaces": ["research"], "quota": {"gpu": 4}},
                ]},
            }),
        )
        .await;
    assert_eq!(upgraded, json!({"status": "deployed", "revision": 2}));
    let deployment = cluster
        .get_json(&["get", "deployment", "aigc-operator", "-n", NAMESPACE])
        .await;
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            [0]["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    let config = cluster.operator_config().await;
    assert_eq!(config.scheduler.auto_fallback_after.0, "3m");
    let gpu_team = &config.scheduler.queues[1];
    assert_eq!(gpu_team.name, "gpu-team");
    assert!(gpu_team.admits_namespace("research") && !gpu_team.admits_namespace("default"));
    assert_eq!(gpu_team.quota.gpu, Some(aigc_operator::scheduler::Gpus(4)));

    let uninstalled = cluster.helm("uninstall", json!({})).await;
    assert_eq!(uninstalled["status"], "uninstalled");
    assert_eq!(cluster.release_objects().await, Vec::<String>::new());
    let crds = cluster.kubectl_ok(&["get", "crds", "-o", "name"]).await;
    assert_eq!(
        crds.lines().filter(|l| l.ends_with(".aigc.dev")).count(),
        5,
        "Helm keeps the CRDs of crds/ on uninstall: {crds}"
    );
}
