//! Every manifest under `examples/` is accepted by the CRD schemas (structure, defaults and CEL
//! rules, with strict field validation as `kubectl apply` uses), and survives a round trip
//! through the Rust types unchanged. `examples/gitops` holds Argo CD, Flux and kustomize
//! objects instead, checked by `tests/tests/gitops.rs`.

use aigc_crds::{Dataset, InferenceService, Model, StorageTier, TrainingJob};
use aigc_e2e::{admit, repo_root, yaml_documents, yaml_files};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Deserialise into `T` and serialise back; the result must equal the input.
fn round_trip<T: DeserializeOwned + Serialize>(doc: &Value, origin: &str) {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{origin}: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert!(
        same_json(&back, doc),
        "{origin}: the Rust types and the schema disagree (defaults or field names)\n types: {back}\nschema: {doc}"
    );
}

/// JSON equality where `90` and `90.0` are the same number, as they are to the API server.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(xs), Value::Object(ys)) => {
            xs.len() == ys.len()
                && xs
                    .iter()
                    .all(|(k, x)| ys.get(k).is_some_and(|y| same_json(x, y)))
        }
        _ => a == b,
    }
}

#[test]
fn every_example_is_admitted_and_round_trips() {
    let gitops = repo_root().join("examples/gitops");
    let files: Vec<_> = yaml_files(&repo_root().join("examples"))
        .into_iter()
        .filter(|f| !f.starts_with(&gitops))
        .collect();
    assert!(
        files.len() >= 9,
        "expected the quickstart and four scenarios, found {files:?}"
    );
    let mut kinds_seen = std::collections::BTreeSet::new();
    for file in files {
        for (i, doc) in yaml_documents(&file).into_iter().enumerate() {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let origin = format!("{} document {i} ({kind})", file.display());
            if doc["apiVersion"] == "v1" && kind == "PersistentVolumeClaim" {
                serde_json::from_value::<PersistentVolumeClaim>(doc)
                    .unwrap_or_else(|e| panic!("{origin}: {e}"));
                continue;
            }
            assert_eq!(
                doc["apiVersion"], "aigc.dev/v1alpha1",
                "{origin}: unexpected apiVersion"
            );
            let admitted = admit(&doc).unwrap_or_else(|errors| {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                panic!("{origin} is rejected:\n{}", lines.join("\n"))
            });
            match kind.as_str() {
                "StorageTier" => round_trip::<StorageTier>(&admitted, &origin),
                "Dataset" => round_trip::<Dataset>(&admitted, &origin),
                "Model" => round_trip::<Model>(&admitted, &origin),
                "TrainingJob" => round_trip::<TrainingJob>(&admitted, &origin),
                "InferenceService" => round_trip::<InferenceService>(&admitted, &origin),
                other => panic!("{origin}: no test covers kind {other}"),
            }
            kinds_seen.insert(kind);
        }
    }
    assert_eq!(
        kinds_seen.len(),
        5,
        "the examples use every kind: {kinds_seen:?}"
    );
}

#[test]
fn every_example_folder_has_a_readme() {
    for entry in std::fs::read_dir(repo_root().join("examples")).unwrap() {
        let dir = entry.unwrap().path();
        if dir.is_dir() {
            assert!(
                dir.join("README.md").is_file(),
                "{} has no README.md",
                dir.display()
            );
        }
    }
}
