//! `examples/gitops`: the kustomize overlays build offline with the real kubectl into objects
//! the CRD schemas admit; the Argo CD and Flux objects point at paths that exist and at chart
//! values the chart's schema accepts; argocd-cm carries a health check for every kind.

use std::path::Path;

use aigc_e2e::{admit, repo_root, run_python_script};
use serde::Deserialize;
use serde_json::{Value, json};

const GITOPS: &str = "examples/gitops";

/// `kubectl kustomize` of a directory under examples/gitops, as JSON objects.
fn kustomize(dir: &str) -> Vec<Value> {
    let path = repo_root().join(GITOPS).join(dir);
    let output = std::process::Command::new("kubectl")
        .args(["kustomize", "--load-restrictor=LoadRestrictionsNone"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("running kubectl kustomize (is kubectl on PATH?): {e}"));
    assert!(
        output.status.success(),
        "kubectl kustomize {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {objects:?}"))
}

/// Admit every aigc.dev object through its CRD schema and CEL rules.
fn assert_admitted(objects: &[Value], origin: &str) {
    for object in objects
        .iter()
        .filter(|o| o["apiVersion"] == "aigc.dev/v1alpha1")
    {
        if let Err(errors) = admit(object) {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!(
                "{origin}: {} {} is rejected:\n{}",
                object["kind"],
                object["metadata"]["name"],
                lines.join("\n")
            );
        }
    }
}

fn check_overlay(overlay: &str, namespace: &str, environment: &str) -> Vec<Value> {
    let objects = kustomize(&format!("kustomize/overlays/{overlay}"));
    assert_admitted(&objects, overlay);
    let kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "Namespace",
        "PersistentVolumeClaim",
        "Dataset",
        "TrainingJob",
        "Model",
        "InferenceService",
    ] {
        assert!(kinds.contains(&kind), "{overlay} lacks a {kind}: {kinds:?}");
    }
    assert!(
        !kinds.contains(&"StorageTier"),
        "{overlay} would put cluster-scoped StorageTiers in a namespace"
    );
    named(&objects, "Namespace", namespace);
    for object in objects.iter().filter(|o| o["kind"] != "Namespace") {
        assert_eq!(object["metadata"]["namespace"], namespace, "{object}");
        assert_eq!(
            object["metadata"]["labels"]["environment"], environment,
            "{object}"
        );
    }
    objects
}

#[test]
fn staging_overlay_builds_offline_into_admitted_objects() {
    let objects = check_overlay("staging", "aigc-staging", "staging");
    let job = named(&objects, "TrainingJob", "breast-cancer-mlp");
    assert_eq!(job["spec"]["hyperparameters"]["epochs"], 5);
    // References between our kinds are by name, so the overlay must not rename anything.
    assert_eq!(job["spec"]["datasetRef"]["name"], "breast-cancer");
    named(&objects, "Dataset", "breast-cancer");
}

#[test]
fn production_overlay_builds_offline_into_admitted_objects() {
    let objects = check_overlay("production", "aigc-prod", "production");
    let service = named(&objects, "InferenceService", "breast-cancer");
    assert_eq!(
        service["spec"]["autoscaling"],
        json!({"minReplicas": 2, "maxReplicas": 6, "targetConcurrency": 8})
    );
    // The strategic merge keeps the fields the patch does not name.
    assert_eq!(service["spec"]["resources"]["accelerator"], "cpu");
    assert_eq!(service["spec"]["modelRef"]["name"], "breast-cancer-mlp");
}

#[test]
fn storage_tiers_build_without_a_namespace() {
    let objects = kustomize("kustomize/tiers");
    assert_admitted(&objects, "tiers");
    let names: Vec<&str> = objects
        .iter()
        .map(|o| {
            assert_eq!(o["kind"], "StorageTier");
            assert!(o["metadata"]["namespace"].is_null(), "{o}");
            o["metadata"]["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(names, ["cold", "hot"]);
}

fn lint_errors(values: &Value) -> Vec<String> {
    let chart = repo_root()
        .join("charts/aigc-operator")
        .display()
        .to_string();
    let out = run_python_script("helm_chart.py", &["lint", &chart, &values.to_string()]);
    let report: Value = serde_json::from_str(&out).unwrap();
    report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.to_string())
        .collect()
}

fn assert_kustomize_path(path: &str, origin: &str) {
    let dir = repo_root().join(path.trim_start_matches("./"));
    assert!(
        dir.join("kustomization.yaml").is_file(),
        "{origin}: {path} has no kustomization.yaml"
    );
    let relative = dir
        .strip_prefix(repo_root().join(GITOPS))
        .unwrap_or_else(|_| panic!("{origin}: {path} is outside {GITOPS}"));
    assert!(!kustomize(relative.to_str().unwrap()).is_empty());
}

#[test]
fn argocd_applications_point_at_the_chart_and_the_overlays() {
    let objects = kustomize("argocd");
    let mut paths = Vec::new();
    for app in &objects {
        assert_eq!(app["apiVersion"], "argoproj.io/v1alpha1");
        assert_eq!(app["kind"], "Application");
        let origin = format!("Application {}", app["metadata"]["name"]);
        let source = &app["spec"]["source"];
        assert_eq!(
            source["repoURL"],
            format!("{}.git", env!("CARGO_PKG_REPOSITORY")),
            "{origin}"
        );
        let path = source["path"].as_str().unwrap();
        if source["helm"].is_object() {
            assert!(
                Path::new(&repo_root().join(path).join("Chart.yaml")).is_file(),
                "{origin}: {path} is no chart"
            );
            assert_eq!(
                lint_errors(&source["helm"]["valuesObject"]),
                Vec::<String>::new(),
                "{origin}: the chart rejects its values"
            );
            assert!(
                app["spec"]["syncPolicy"]["syncOptions"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("ServerSideApply=true")),
                "{origin}: the CRDs are too large for client-side apply"
            );
        } else {
            assert_kustomize_path(path, &origin);
        }
        paths.push(path.to_owned());
    }
    paths.sort();
    assert_eq!(
        paths,
        [
            "charts/aigc-operator",
            "examples/gitops/kustomize/overlays/production",
            "examples/gitops/kustomize/tiers"
        ]
    );
}

#[test]
fn flux_helm_release_and_kustomizations_point_at_the_chart_and_the_overlays() {
    let objects = kustomize("flux");
    let source = objects
        .iter()
        .find(|o| o["kind"] == "GitRepository")
        .expect("a GitRepository");
    assert_eq!(
        source["spec"]["url"],
        format!("{}.git", env!("CARGO_PKG_REPOSITORY"))
    );
    let source_name = &source["metadata"]["name"];

    let release = named(&objects, "HelmRelease", "aigc-operator");
    let chart = &release["spec"]["chart"]["spec"];
    assert_eq!(chart["sourceRef"]["name"], *source_name);
    assert!(
        repo_root()
            .join(chart["chart"].as_str().unwrap())
            .join("Chart.yaml")
            .is_file()
    );
    assert_eq!(release["spec"]["install"]["crds"], "CreateReplace");
    assert_eq!(release["spec"]["upgrade"]["crds"], "CreateReplace");
    assert_eq!(
        lint_errors(&release["spec"]["values"]),
        Vec::<String>::new()
    );

    let kustomizations: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "Kustomization")
        .collect();
    assert_eq!(kustomizations.len(), 2);
    for kustomization in kustomizations {
        let origin = format!("Kustomization {}", kustomization["metadata"]["name"]);
        assert_eq!(kustomization["spec"]["sourceRef"]["name"], *source_name);
        assert_kustomize_path(kustomization["spec"]["path"].as_str().unwrap(), &origin);
    }
    let quickstart = named(&objects, "Kustomization", "aigc-quickstart");
    assert_eq!(
        quickstart["spec"]["dependsOn"],
        json!([{"name": "aigc-storage-tiers"}])
    );
}

#[test]
fn argocd_cm_has_the_health_check_for_every_kind() {
    let objects = kustomize("argocd/health");
    assert_eq!(objects.len(), 1);
    let config_map = named(&objects, "ConfigMap", "argocd-cm");
    assert_eq!(config_map["metadata"]["namespace"], "argocd");
    let lua =
        std::fs::read_to_string(repo_root().join(GITOPS).join("argocd/health/health.lua")).unwrap();
    let data = config_map["data"].as_object().unwrap();
    for crd in aigc_crds::all_crds() {
        let key = format!(
            "resource.customizations.health.{}_{}",
            crd.spec.group, crd.spec.names.kind
        );
        assert_eq!(data.get(&key), Some(&json!(lua)), "argocd-cm lacks {key}");
    }
    assert_eq!(
        data["kustomize.buildOptions"],
        "--load-restrictor LoadRestrictionsNone"
    );
    assert_eq!(data.len(), 6, "{:?}", data.keys().collect::<Vec<_>>());
}
