//! Support for the end-to-end tests in `tests/tests/`: locating the repository, reading
//! multi-document YAML, and admitting manifests through the CRD schemas the way the API server
//! does.

use std::path::{Path, PathBuf};

use aigc_local_cluster::schema::{CelRules, FieldError, UnknownFields, admit_custom_resource};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;
use serde_json::Value;

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace")
        .to_path_buf()
}

/// Every YAML file under `dir`, recursively, sorted by path.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The non-empty documents of a multi-document YAML file, as JSON values.
pub fn yaml_documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let yaml = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()));
            serde_json::to_value(yaml)
                .unwrap_or_else(|e| panic!("{}: not JSON-compatible: {e}", path.display()))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The generated CRD serving `apiVersion`/`kind`, if it is one of ours.
pub fn crd_for(api_version: &str, kind: &str) -> Option<CustomResourceDefinition> {
    aigc_crds::all_crds().into_iter().find(|crd| {
        crd.spec.names.kind == kind
            && crd
                .spec
                .versions
                .iter()
                .any(|v| format!("{}/{}", crd.spec.group, v.name) == api_version)
    })
}

/// The `openAPIV3Schema` of a CRD's only version, as JSON.
pub fn crd_schema(crd: &CustomResourceDefinition) -> Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("every generated CRD carries a schema");
    serde_json::to_value(schema).expect("schemas serialise")
}

/// Admit one aigc.dev manifest as the API server would for `kubectl apply` (strict field
/// validation): the defaulted object, or every field error.
pub fn admit(document: &Value) -> Result<Value, Vec<FieldError>> {
    let api_version = document["apiVersion"].as_str().unwrap_or_default();
    let kind = document["kind"].as_str().unwrap_or_default();
    let crd =
        crd_for(api_version, kind).unwrap_or_else(|| panic!("no CRD serves {api_version} {kind}"));
    let schema = crd_schema(&crd);
    let rules = CelRules::compile(Some(&schema));
    admit_custom_resource(&schema, &rules, document, UnknownFields::Reject)
}

/// Run `python3 tests/scripts/<script> <args>` and return its stdout. Panics with the script's
/// stderr when it fails; the scripts name `scripts/install-test-deps.sh` when a package they
/// need is missing.
pub fn run_python_script(script: &str, args: &[&str]) -> String {
    let path = repo_root().join("tests/scripts").join(script);
    let output = std::process::Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running python3 {}: {e}; is python3 on PATH?",
                path.display()
            )
        });
    assert!(
        output.status.success(),
        "python3 {script} {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the scripts print UTF-8")
}
