//! The Argo CD health check in `examples/gitops/argocd/health/health.lua`, run by a real Lua
//! (Python's lupa, through `tests/scripts/argocd_health.py`) against statuses written with the
//! operator's own status types: every phase of every kind maps to the health Argo CD should show,
//! and the message says why.

use std::sync::atomic::{AtomicUsize, Ordering};

use aigc_crds::{Condition, ConditionStatus};
use aigc_e2e::{crd_schema, repo_root, run_python_script, yaml_documents};
use chrono::Utc;
use serde_json::{Value, json};

/// The quickstart's object of `kind`, with `metadata.generation` and `status` set. The status
/// goes through the kind's Rust status type, so it is shaped as the operator writes it.
fn object(kind: &str, generation: i64, status: Option<Value>) -> Value {
    let dir = repo_root().join("examples/quickstart");
    let mut object = aigc_e2e::yaml_files(&dir)
        .iter()
        .flat_map(|f| yaml_documents(f))
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("the quickstart has no {kind}"));
    object["metadata"]["generation"] = json!(generation);
    if let Some(status) = status {
        object["status"] = typed_status(kind, status);
    }
    object
}

fn typed_status(kind: &str, status: Value) -> Value {
    fn via<T: serde::de::DeserializeOwned + serde::Serialize>(status: Value) -> Value {
        let typed: T = serde_json::from_value(status.clone())
            .unwrap_or_else(|e| panic!("not a valid status: {e}: {status}"));
        serde_json::to_value(typed).unwrap()
    }
    use aigc_crds::{dataset, inference_service, model, storage_tier, training_job};
    match kind {
        "Dataset" => via::<dataset::DatasetStatus>(status),
        "Model" => via::<model::ModelStatus>(status),
        "TrainingJob" => via::<training_job::TrainingJobStatus>(status),
        "InferenceService" => via::<inference_service::InferenceServiceStatus>(status),
        "StorageTier" => via::<storage_tier::StorageTierStatus>(status),
        other => panic!("no status type for {other}"),
    }
}

fn condition(type_: &str, status: ConditionStatus, reason: &str, message: &str) -> Value {
    serde_json::to_value(Condition::new(
        type_,
        status,
        reason,
        message,
        Some(1),
        Utc::now(),
    ))
    .unwrap()
}

/// (status, message) Argo CD would show for each object.
fn health(objects: &[Value]) -> Vec<(String, String)> {
    let script = repo_root().join("examples/gitops/argocd/health/health.lua");
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let input = std::env::temp_dir().join(format!(
        "aigc-health-{}-{}.json",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&input, serde_json::to_vec(objects).unwrap()).unwrap();
    let out = run_python_script(
        "argocd_health.py",
        &[script.to_str().unwrap(), input.to_str().unwrap()],
    );
    std::fs::remove_file(&input).ok();
    let results: Vec<Value> = serde_json::from_str(&out).unwrap();
    results
        .iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap().to_owned(),
                r["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn expected_health(phase: &str) -> &'static str {
    match phase {
        "Ready" | "Migrating" | "Succeeded" => "Healthy",
        "Pending" | "Preparing" | "Verifying" | "Queued" | "Admitted" | "Running" | "Deploying" => {
            "Progressing"
        }
        "Failed" => "Degraded",
        other => panic!("phase {other} has no expected health: add it to health.lua and here"),
    }
}

#[test]
fn every_phase_of_every_kind_maps_to_its_health() {
    let mut objects = Vec::new();
    let mut expected = Vec::new();
    for crd in aigc_crds::all_crds() {
        let kind = crd.spec.names.kind.clone();
        let schema = crd_schema(&crd);
        let Some(phases) = schema["properties"]["status"]["properties"]["phase"]["enum"].as_array()
        else {
            assert_eq!(kind, "StorageTier", "only StorageTier has no phase");
            continue;
        };
        for phase in phases {
            let phase = phase.as_str().unwrap();
            let why = condition("Ready", ConditionStatus::False, "Because", "the reason");
            objects.push(object(
                &kind,
                1,
                Some(json!({"phase": phase, "conditions": [why], "observedGeneration": 1})),
            ));
            expected.push((kind.clone(), phase.to_owned(), expected_health(phase)));
        }
    }
    assert!(expected.len() >= 20, "{expected:?}");
    for ((status, message), (kind, phase, want)) in health(&objects).into_iter().zip(&expected) {
        assert_eq!(status, *want, "{kind} in phase {phase}: {message}");
        if *want != "Healthy" {
            assert_eq!(message, format!("{phase} (Because: the reason)"), "{kind}");
        }
    }
}

#[test]
fn messages_explain_why_a_job_waits_or_failed() {
    let queued = object(
        "TrainingJob",
        1,
        Some(
            json!({"phase": "Queued", "observedGeneration": 1, "conditions": [
                condition("Admitted", ConditionStatus::False, "QuotaExceeded",
                    "namespace default holds 8 of 8 nvidia.com/gpu"),
            ]}),
        ),
    );
    let failed = object(
        "TrainingJob",
        1,
        Some(
            json!({"phase": "Failed", "observedGeneration": 1, "conditions": [
                condition("Admitted", ConditionStatus::True, "Admitted", "placed on node-a"),
                condition("Complete", ConditionStatus::False, "Failed", "did not complete"),
                condition("Failed", ConditionStatus::True, "BackoffLimitExceeded",
                    "3 attempts failed; last: worker exited with code 1"),
            ]}),
        ),
    );
    let serving = object(
        "InferenceService",
        1,
        Some(json!({"phase": "Ready", "observedGeneration": 1, "replicas": 3, "readyReplicas": 2})),
    );
    assert_eq!(
        health(&[queued, failed, serving]),
        [
            (
                "Progressing".to_owned(),
                "Queued (QuotaExceeded: namespace default holds 8 of 8 nvidia.com/gpu)".to_owned()
            ),
            (
                "Degraded".to_owned(),
                "Failed (BackoffLimitExceeded: 3 attempts failed; last: worker exited with code 1)"
                    .to_owned()
            ),
            ("Healthy".to_owned(), "Ready: 2/3 replicas".to_owned()),
        ]
    );
}

#[test]
fn storage_tiers_follow_their_ready_condition() {
    let tier = |ready: Option<Value>| {
        let conditions: Vec<Value> = ready.into_iter().collect();
        object(
            "StorageTier",
            1,
            Some(json!({"conditions": conditions, "observedGeneration": 1})),
        )
    };
    let results = health(&[
        tier(None),
        tier(Some(condition(
            "Ready",
            ConditionStatus::Unknown,
            "Probing",
            "",
        ))),
        tier(Some(condition(
            "Ready",
            ConditionStatus::True,
            "Reachable",
            "wrote and read a probe object",
        ))),
        tier(Some(condition(
            "Ready",
            ConditionStatus::False,
            "Unreachable",
            "bucket cold-archive does not exist",
        ))),
    ]);
    let statuses: Vec<&str> = results.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        statuses,
        ["Progressing", "Progressing", "Healthy", "Degraded"]
    );
    assert_eq!(
        results[3].1,
        "Not ready (Unreachable: bucket cold-archive does not exist)"
    );
}

#[test]
fn a_missing_or_stale_status_is_progressing_and_an_unknown_phase_is_unknown() {
    let stale = object(
        "Dataset",
        2,
        Some(json!({"phase": "Ready", "observedGeneration": 1})),
    );
    let mut unknown = object("Model", 1, None);
    unknown["status"] = json!({"phase": "Exploded", "observedGeneration": 1});
    let results = health(&[object("InferenceService", 1, None), stale, unknown]);
    assert_eq!(
        results,
        [
            (
                "Progressing".to_owned(),
                "Waiting for the operator to report a status".to_owned()
            ),
            (
                "Progressing".to_owned(),
                "Waiting for the operator to observe generation 2".to_owned()
            ),
            ("Unknown".to_owned(), "Unknown phase Exploded".to_owned()),
        ]
    );
}
