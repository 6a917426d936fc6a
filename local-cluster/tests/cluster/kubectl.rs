//! The real kubectl against the embedded cluster, with its output parsed.

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::harness::Harness;

const TIER: &str = "apiVersion: aigc.dev/v1alpha1
kind: StorageTier
metadata:
  name: hot
spec:
  class: hot
  backend:
    filesystem:
      path: /data/hot
";

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: 'web:1'}
      - {name: side, image: 'side:1'}
";

fn images(deployment: &Value) -> Vec<String> {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{}={}",
                c["name"].as_str().unwrap(),
                c["image"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn apply_client_side_then_server_side() {
    let h = Harness::start().await;
    h.install_crds().await;
    let out = h.kubectl_stdin_ok(&["apply", "-f", "-"], Some(TIER)).await;
    assert_eq!(out.trim(), "storagetier.aigc.dev/hot created");
    let out = h.kubectl_stdin_ok(&["apply", "-f", "-"], Some(TIER)).await;
    assert_eq!(out.trim(), "storagetier.aigc.dev/hot unchanged");
    let yaml = h
        .kubectl_ok(&["get", "storagetier", "hot", "-o", "yaml"])
        .await;
    let tier: Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(tier["spec"]["class"], "hot");
    assert_eq!(tier["metadata"]["generation"], 1);
    assert!(
        tier["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| u.len() == 36)
    );

    let warm = TIER.replace("class: hot", "class: warm");
    let out = h.kubectl_stdin_ok(&["apply", "-f", "-"], Some(&warm)).await;
    assert_eq!(out.trim(), "storagetier.aigc.dev/hot configured");
    let tier = h.get_json(&["storagetier", "hot"]).await;
    assert_eq!(tier["spec"]["class"], "warm");
    assert_eq!(tier["metadata"]["generation"], 2);

    let cold = TIER.replace("class: hot", "class: cold");
    let out = h
        .kubectl_stdin_ok(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(&cold),
        )
        .await;
    assert_eq!(out.trim(), "storagetier.aigc.dev/hot serverside-applied");
    let tier = h
        .get_json(&["storagetier", "hot", "--show-managed-fields"])
        .await;
    assert_eq!(tier["spec"]["class"], "cold");
    let appliers: Vec<&str> = tier["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operation"] == "Apply")
        .map(|e| e["manager"].as_str().unwrap())
        .collect();
    assert!(appliers.contains(&"kubectl"), "{appliers:?}");

    let conflicting = TIER.replace("class: hot", "class: warm");
    let output = h
        .kubectl_with(
            &["apply", "--server-side", "--field-manager=other", "-f", "-"],
            Some(&conflicting),
        )
        .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("conflict"), "{stderr}");
    assert!(stderr.contains(".spec.class"), "{stderr}");
}

#[tokio::test]
async fn get_aigc_lists_every_kind_with_printer_columns() {
    let h = Harness::start().await;
    h.install_crds().await;
    let names = h
        .kubectl_ok(&["api-resources", "--categories=aigc", "-o", "name"])
        .await;
    let mut names: Vec<&str> = names.lines().collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "datasets.aigc.dev",
            "inferenceservices.aigc.dev",
            "models.aigc.dev",
            "storagetiers.aigc.dev",
            "trainingjobs.aigc.dev"
        ]
    );
    h.kubectl_stdin_ok(&["apply", "-f", "-"], Some(TIER)).await;
    let table = h.kubectl_ok(&["get", "aigc"]).await;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "CLASS", "USED", "OBJECTS", "READY", "AGE"]);
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[0], "storagetier.aigc.dev/hot");
    assert_eq!(row[1], "hot");
    let short = h.kubectl_ok(&["get", "tier", "-o", "name"]).await;
    assert_eq!(short.trim(), "storagetier.aigc.dev/hot");

    h.kubectl_ok(&["delete", "crd", "storagetiers.aigc.dev"])
        .await;
    let gone = h.kubectl(&["get", "storagetiers"]).await;
    assert!(!gone.status.success(), "the resource is no longer served");
    let served: Value = serde_json::from_str(
        &h.kubectl_ok(&["get", "--raw", "/apis/aigc.dev/v1alpha1"])
            .await,
    )
    .unwrap();
    let resources: Vec<&str> = served["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        !resources.iter().any(|r| r.starts_with("storagetiers")),
        "{resources:?}"
    );
    assert!(resources.contains(&"datasets"), "{resources:?}");
}

#[tokio::test]
async fn explain_and_describe_read_the_schema_and_object() {
    let h = Harness::start().await;
    h.install_crds().await;
    let explain = h.kubectl_ok(&["explain", "storagetier.spec.class"]).await;
    assert!(explain.contains("KIND:       StorageTier"), "{explain}");
    assert!(explain.contains("FIELD: class <string>"), "{explain}");
    let values: Vec<&str> = explain
        .lines()
        .skip_while(|l| l.trim() != "ENUM:")
        .skip(1)
        .take(4)
        .map(str::trim)
        .collect();
    assert_eq!(values, ["hot", "warm", "cold", "archive"], "{explain}");
    h.kubectl_stdin_ok(&["apply", "-f", "-"], Some(TIER)).await;
    let describe = h.kubectl_ok(&["describe", "storagetier", "hot"]).await;
    assert!(
        describe
            .lines()
            .any(|l| l.starts_with("Name:") && l.ends_with("hot")),
        "{describe}"
    );
    assert!(describe.contains("Class:"), "{describe}");
}

#[tokio::test]
async fn patches_of_every_type_scale_and_label() {
    let h = Harness::start().await;
    h.kubectl_stdin_ok(&["apply", "-f", "-"], Some(DEPLOYMENT))
        .await;
    let updated = DEPLOYMENT.replace("web:1", "web:2");
    h.kubectl_stdin_ok(&["apply", "-f", "-"], Some(&updated))
        .await;
    let deployment = h.get_json(&["deployment", "web"]).await;
    assert_eq!(images(&deployment), ["web=web:2", "side=side:1"]);
    assert_eq!(deployment["metadata"]["generation"], 2);

    h.kubectl_ok(&[
        "patch",
        "deployment",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"side","image":"side:2"}]}}}}"#,
    ])
    .await;
    let deployment = h.get_json(&["deployment", "web"]).await;
    assert_eq!(images(&deployment), ["web=web:2", "side=side:2"]);

    h.kubectl_ok(&[
        "patch",
        "deployment",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#,
    ])
    .await;
    h.kubectl_ok(&[
        "patch",
        "deployment",
        "web",
        "--type=merge",
        "-p",
        r#"{"metadata":{"annotations":{"note":"merged"}}}"#,
    ])
    .await;
    let deployment = h.get_json(&["deployment", "web"]).await;
    assert_eq!(deployment["spec"]["replicas"], 4);
    assert_eq!(deployment["metadata"]["annotations"]["note"], "merged");

    let out = h
        .kubectl_ok(&["scale", "deployment", "web", "--replicas=7"])
        .await;
    assert_eq!(out.trim(), "deployment.apps/web scaled");
    let deployment = h.get_json(&["deployment", "web"]).await;
    assert_eq!(deployment["spec"]["replicas"], 7);
    let generation = deployment["metadata"]["generation"].as_i64().unwrap();

    h.kubectl_ok(&["label", "deployment", "web", "tier=front"])
        .await;
    let labelled = h.get_json(&["deployment", "web"]).await;
    assert_eq!(
        labelled["metadata"]["generation"], generation,
        "labels are not spec"
    );
    let selected = h
        .kubectl_ok(&["get", "deployments", "-l", "tier=front", "-o", "name"])
        .await;
    assert_eq!(selected.trim(), "deployment.apps/web");
    let none = h
        .kubectl_ok(&["get", "deployments", "-l", "tier!=front", "-o", "name"])
        .await;
    assert_eq!(none.trim(), "");
    let by_field = h
        .kubectl_ok(&[
            "get",
            "deployments",
            "--field-selector",
            "metadata.name=web",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(by_field.trim(), "deployment.apps/web");
}

#[tokio::test]
async fn deletion_waits_for_finalizers_and_cascades() {
    let h = Harness::start().await;
    h.install_crds().await;
    h.kubectl_stdin_ok(&["apply", "-f", "-"], Some(TIER)).await;
    h.kubectl_ok(&[
        "patch",
        "storagetier",
        "hot",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["aigc.dev/cleanup"]}}"#,
    ])
    .await;
    h.kubectl_ok(&["delete", "storagetier", "hot", "--wait=false"])
        .await;
    let tier = h.get_json(&["storagetier", "hot"]).await;
    assert!(tier["metadata"]["deletionTimestamp"].is_string());
    h.kubectl_ok(&[
        "patch",
        "storagetier",
        "hot",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])
    .await;
    let gone = h.kubectl(&["get", "storagetier", "hot"]).await;
    assert!(String::from_utf8_lossy(&gone.stderr).contains("NotFound"));

    for (policy, dependent_survives) in [
        ("background", false),
        ("foreground", false),
        ("orphan", true),
    ] {
        h.kubectl_ok(&["create", "configmap", "owner"]).await;
        let owner = h.get_json(&["configmap", "owner"]).await;
        let uid = owner["metadata"]["uid"].as_str().unwrap();
        let dependent = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dependent\n  ownerReferences:\n  - {{apiVersion: v1, kind: ConfigMap, name: owner, uid: {uid}}}\n"
        );
        h.kubectl_stdin_ok(&["apply", "-f", "-"], Some(&dependent))
            .await;
        h.kubectl_ok(&[
            "delete",
            "configmap",
            "owner",
            &format!("--cascade={policy}"),
        ])
        .await;
        let listed = h.kubectl_ok(&["get", "configmaps", "-o", "name"]).await;
        assert_eq!(
            listed.contains("configmap/dependent"),
            dependent_survives,
            "{policy}: {listed}"
        );
        if dependent_survives {
            let orphan = h.get_json(&["configmap", "dependent"]).await;
            assert!(orphan["metadata"]["ownerReferences"].is_null());
            h.kubectl_ok(&["delete", "configmap", "dependent"]).await;
        }
    }
}

#[tokio::test]
async fn namespace_deletion_removes_its_contents() {
    let h = Harness::start().await;
    h.kubectl_ok(&["create", "namespace", "scratch"]).await;
    h.kubectl_ok(&["create", "configmap", "c", "-n", "scratch"])
        .await;
    h.kubectl_ok(&["delete", "namespace", "scratch"]).await;
    let namespaces = h.kubectl_ok(&["get", "namespaces", "-o", "name"]).await;
    assert!(!namespaces.contains("namespace/scratch"), "{namespaces}");
    let all = h
        .kubectl_ok(&["get", "configmaps", "-A", "-o", "name"])
        .await;
    assert_eq!(all.trim(), "");
    let refused = h
        .kubectl(&["create", "configmap", "c", "-n", "scratch"])
        .await;
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not found"));
}

#[tokio::test]
async fn wait_for_condition_sees_a_status_update() {
    let h = Harness::start().await;
    h.install_crds().await;
    h.kubectl_stdin_ok(&["apply", "-f", "-"], Some(TIER)).await;
    let waiter = h
        .kubectl_command(&[
            "wait",
            "--for=condition=Ready",
            "storagetier/hot",
            "--timeout=60s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    h.kubectl_ok(&["patch", "storagetier", "hot", "--subresource=status", "--type=merge", "-p",
        r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"Probed","message":"ok","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#]).await;
    let output = waiter.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.trim(), "storagetier.aigc.dev/hot condition met");
    let tier = h.get_json(&["storagetier", "hot"]).await;
    assert_eq!(
        tier["metadata"]["generation"], 1,
        "status writes keep the generation"
    );
}

#[tokio::test]
async fn get_watch_streams_changes() {
    let h = Harness::start().await;
    h.kubectl_ok(&["create", "configmap", "watched"]).await;
    let mut watcher = h
        .kubectl_command(&["get", "configmaps", "--watch", "--output-watch-events"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    let mut next = async || {
        let line = lines.next_line().await.unwrap().unwrap();
        line.split_whitespace()
            .take(3)
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(next().await, ["EVENT", "NAME", "DATA"]);
    assert_eq!(next().await, ["ADDED", "watched", "0"]);
    h.kubectl_ok(&[
        "patch",
        "configmap",
        "watched",
        "--type=merge",
        "-p",
        r#"{"data":{"k":"v"}}"#,
    ])
    .await;
    assert_eq!(next().await, ["MODIFIED", "watched", "1"]);
    h.kubectl_ok(&["delete", "configmap", "watched"]).await;
    assert_eq!(next().await, ["DELETED", "watched", "1"]);
    watcher.kill().await.unwrap();
}

#[tokio::test]
async fn chunked_lists_page_with_continue() {
    let h = Harness::start().await;
    for i in 0..5 {
        h.kubectl_ok(&["create", "configmap", &format!("page-{i}")])
            .await;
    }
    let names = h
        .kubectl_ok(&["get", "configmaps", "--chunk-size=2", "-o", "name"])
        .await;
    let names: Vec<&str> = names.lines().collect();
    assert_eq!(
        names,
        [
            "configmap/page-0",
            "configmap/page-1",
            "configmap/page-2",
            "configmap/page-3",
            "configmap/page-4"
        ]
    );
}

#[tokio::test]
async fn server_side_apply_of_a_partial_manifest_keeps_the_rest() {
    let h = Harness::start().await;
    h.install_crds().await;
    h.kubectl_stdin_ok(&["apply", "--server-side", "-f", "-"], Some(TIER))
        .await;
    let labels = "apiVersion: aigc.dev/v1alpha1
kind: StorageTier
metadata:
  name: hot
  labels:
    team: data
";
    let out = h
        .kubectl_stdin_ok(
            &[
                "apply",
                "--server-side",
                "--field-manager=labeller",
                "-f",
                "-",
            ],
            Some(labels),
        )
        .await;
    assert_eq!(out.trim(), "storagetier.aigc.dev/hot serverside-applied");
    let class = "apiVersion: aigc.dev/v1alpha1
kind: StorageTier
metadata:
  name: hot
spec:
  class: warm
";
    h.kubectl_stdin_ok(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=tierer",
            "-f",
            "-",
        ],
        Some(class),
    )
    .await;
    let tier = h.get_json(&["storagetier", "hot"]).await;
    assert_eq!(tier["metadata"]["labels"]["team"], "data");
    assert_eq!(tier["spec"]["class"], "warm");
    assert_eq!(tier["spec"]["backend"]["filesystem"]["path"], "/data/hot");
}
