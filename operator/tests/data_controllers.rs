//! The Dataset, Model and tier policy controllers against the embedded cluster: apply ->
//! worker Job -> (pod played through the API) -> status; spec change -> new Job; delete ->
//! children gone; a controller killed mid-reconcile converges without duplicate Jobs; an idle
//! Dataset is demoted and deletion waits for a move in flight.

mod support;

use std::time::Duration;

use aigc_crds::dataset::{Dataset, DatasetPhase};
use aigc_crds::model::{Model, ModelPhase};
use aigc_crds::{ConditionStatus, condition::find_condition};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::{Harness, args, eventually};

const POLICY_INTERVAL: Duration = Duration::from_millis(200);

fn reviews(dedupe: bool) -> serde_json::Value {
    json!({
        "apiVersion": "aigc.dev/v1alpha1", "kind": "Dataset",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {
            "source": {"pvc": {"claimName": "raw", "path": "/reviews.csv"}},
            "format": "csv",
            "schema": {"columns": [{"name": "text", "type": "string", "required": true},
                                   {"name": "stars", "type": "integer", "minimum": 1, "maximum": 5}]},
            "cleaning": {"dedupe": dedupe}
        }
    })
}

const SUMMARY: &str = r#"{"rowsIn":10,"rowsOut":8,"rejected":{"duplicate":2},"shards":1,"bytes":321,"manifestDigest":"sha256:0123"}"#;

async fn dataset_where(h: &Harness, name: &str, accept: impl Fn(&Dataset) -> bool) -> Dataset {
    let api: Api<Dataset> = Api::namespaced(h.client.clone(), "default");
    eventually(&format!("Dataset {name} in the expected state"), || async {
        api.get_opt(name).await.unwrap().filter(|d| accept(d))
    })
    .await
}

async fn model_where(h: &Harness, name: &str, accept: impl Fn(&Model) -> bool) -> Model {
    let api: Api<Model> = Api::namespaced(h.client.clone(), "default");
    eventually(&format!("Model {name} in the expected state"), || async {
        api.get_opt(name).await.unwrap().filter(|m| accept(m))
    })
    .await
}

fn phase(d: &Dataset) -> Option<DatasetPhase> {
    d.status.as_ref()?.phase
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_is_prepared_by_a_job_and_reprepared_on_spec_change() {
    let mut h = Harness::start().await;
    h.filesystem_tier("hot", "hot", json!({})).await;
    h.run_controllers(POLICY_INTERVAL);
    h.apply("datasets", reviews(false)).await;

    let d = dataset_where(&h, "reviews", |d| d.uid().is_some()).await;
    let uid = d.uid().unwrap();
    let job = h.await_job("default", &uid, "prepare", |_| true).await;
    let hot = h.dir.path().join("tiers/hot");
    let a = args(&job);
    let out = a[a.iter().position(|x| x == "--out").unwrap() + 1].clone();
    assert!(
        out.starts_with(&format!(
            "file://{}/datasets/default/reviews/",
            hot.display()
        )),
        "{a:?}"
    );
    assert_eq!(
        &a[..5],
        [
            "prepare",
            "--source",
            "file:///var/run/aigc/source/reviews.csv",
            "--format",
            "csv"
        ]
    );
    assert!(a.ends_with(&[
        "--termination-message-path".into(),
        "/dev/termination-log".into()
    ]));
    let pod = job.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let volumes: Vec<String> = pod.volumes.unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(volumes, ["tmp", "source", "tier-hot", "schema"]);
    let cms: Api<ConfigMap> = Api::namespaced(h.client.clone(), "default");
    let cm = cms.get(&job.name_any()).await.expect("schema ConfigMap");
    assert!(cm.data.unwrap()["schema.json"].contains("\"stars\""));
    let preparing =
        dataset_where(&h, "reviews", |d| phase(d) == Some(DatasetPhase::Preparing)).await;
    assert_eq!(
        find_condition(&preparing.status.unwrap().conditions, "Ready")
            .unwrap()
            .reason,
        "Preparing"
    );

    h.finish_job(&job, 0, Some(SUMMARY)).await;
    let ready = dataset_where(&h, "reviews", |d| phase(d) == Some(DatasetPhase::Ready)).await;
    let status = ready.status.unwrap();
    assert_eq!((status.rows, status.bytes), (Some(8), Some(321)));
    assert_eq!(status.manifest_digest.as_deref(), Some("sha256:0123"));
    assert_eq!(status.tier.as_deref(), Some("hot"));
    assert!(out.ends_with(status.version.as_deref().unwrap()));
    let validated = find_condition(&status.conditions, "Validated").unwrap();
    assert_eq!(validated.status, ConditionStatus::True);
    assert_eq!(validated.observed_generation, ready.metadata.generation);
    let events: Api<Event> = Api::namespaced(h.client.clone(), "default");
    eventually("a Prepared Event on the Dataset", || async {
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("Prepared")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("reviews")
            })
    })
    .await;

    // A spec change that shapes the data prepares a new version with a new Job.
    h.apply("datasets", reviews(true)).await;
    let second = h
        .await_job("default", &uid, "prepare", |j| {
            j.name_any() != job.name_any()
        })
        .await;
    assert!(args(&second).contains(&"--dedupe".to_owned()));
    h.finish_job(
        &second,
        0,
        Some(&SUMMARY.replace("\"rowsOut\":8", "\"rowsOut\":7")),
    )
    .await;
    let ready = dataset_where(&h, "reviews", |d| {
        d.status.as_ref().and_then(|s| s.rows) == Some(7)
    })
    .await;
    assert_eq!(phase(&ready), Some(DatasetPhase::Ready));
    eventually("the old prepare Job removed", || async {
        let jobs = h.jobs_of("default", &uid).await;
        (jobs.len() == 1 && jobs[0].name_any() == second.name_any()).then_some(())
    })
    .await;

    // Deleting the Dataset removes it and, through owner references, its Jobs.
    let api: Api<Dataset> = Api::namespaced(h.client.clone(), "default");
    api.delete("reviews", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the Dataset and its Jobs gone", || async {
        let gone = api.get_opt("reviews").await.unwrap().is_none();
        (gone && h.jobs_of("default", &uid).await.is_empty()).then_some(())
    })
    .await;
    h.kill_controllers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_prepare_reports_the_workers_reason() {
    let mut h = Harness::start().await;
    h.filesystem_tier("hot", "hot", json!({})).await;
    h.run_controllers(POLICY_INTERVAL);
    h.apply("datasets", reviews(false)).await;
    let uid = dataset_where(&h, "reviews", |d| d.uid().is_some())
        .await
        .uid()
        .unwrap();
    let job = h.await_job("default", &uid, "prepare", |_| true).await;
    h.finish_job(
        &job,
        1,
        Some(r#"{"rowsIn":2,"error":"/data/reviews.csv row 2: column \"stars\" is 9, above the maximum 5"}"#),
    )
    .await;
    let failed = dataset_where(&h, "reviews", |d| phase(d) == Some(DatasetPhase::Failed)).await;
    let ready = find_condition(&failed.status.as_ref().unwrap().conditions, "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready.status, ConditionStatus::False);
    assert_eq!(ready.reason, "PrepareFailed");
    assert!(
        ready.message.contains("above the maximum 5"),
        "{}",
        ready.message
    );
    h.kill_controllers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_reconcile_converges_without_duplicate_jobs() {
    let mut h = Harness::start().await;
    h.filesystem_tier("hot", "hot", json!({})).await;
    h.run_controllers(POLICY_INTERVAL);
    h.apply("datasets", reviews(false)).await;
    let uid = dataset_where(&h, "reviews", |d| d.uid().is_some())
        .await
        .uid()
        .unwrap();
    // Killed as soon as the Job exists: the status may not say so yet.
    let job = h.await_job("default", &uid, "prepare", |_| true).await;
    h.kill_controllers().await;
    h.run_controllers(POLICY_INTERVAL);
    // And once more, after the restarted controller picked the Dataset up again.
    dataset_where(&h, "reviews", |d| phase(d) == Some(DatasetPhase::Preparing)).await;
    h.kill_controllers().await;
    h.run_controllers(POLICY_INTERVAL);
    h.finish_job(&job, 0, Some(SUMMARY)).await;
    dataset_where(&h, "reviews", |d| phase(d) == Some(DatasetPhase::Ready)).await;
    let jobs = h.jobs_of("default", &uid).await;
    assert_eq!(
        jobs.len(),
        1,
        "{:?}",
        jobs.iter().map(|j| j.name_any()).collect::<Vec<_>>()
    );
    h.kill_controllers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_verified_by_inspect_or_by_their_training_job() {
    let mut h = Harness::start().await;
    h.filesystem_tier("hot", "hot", json!({})).await;
    h.run_controllers(POLICY_INTERVAL);
    h.apply(
        "models",
        json!({"apiVersion": "aigc.dev/v1alpha1", "kind": "Model",
               "metadata": {"name": "chat", "namespace": "default"},
               "spec": {"source": {"pvc": {"claimName": "weights", "path": "/smollm2"}},
                        "format": "gguf", "architecture": "llama",
                        "task": "text-generation", "version": "1.0.0"}}),
    )
    .await;
    let uid = model_where(&h, "chat", |m| m.uid().is_some())
        .await
        .uid()
        .unwrap();
    let job = h.await_job("default", &uid, "verify", |_| true).await;
    let uri = format!(
        "file://{}/models/default/chat/1.0.0",
        h.dir.path().join("tiers/hot").display()
    );
    assert_eq!(
        args(&job),
        [
            "inspect",
            "--model",
            &uri,
            "--format",
            "gguf",
            "--termination-message-path",
            "/dev/termination-log"
        ]
    );
    let init = job
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .clone()
        .unwrap();
    assert_eq!(
        init[0].args.as_deref().unwrap(),
        [
            "transfer",
            "--from",
            "file:///var/run/aigc/source/smollm2",
            "--to",
            &uri
        ]
    );
    h.finish_job(
        &job,
        0,
        Some(r#"{"format":"gguf","architecture":"llama","parameters":134515008,"sizeBytes":88000000,"manifestDigest":"sha256:77","task":"text-generation"}"#),
    )
    .await;
    let ready = model_where(&h, "chat", |m| {
        m.status.as_ref().and_then(|s| s.phase) == Some(ModelPhase::Ready)
    })
    .await;
    let status = ready.status.unwrap();
    assert_eq!(
        (status.parameters, status.size_bytes, status.tier.as_deref()),
        (Some(134_515_008), Some(88_000_000), Some("hot"))
    );

    // An InferenceService naming the Model is listed in servedBy.
    h.apply(
        "inferenceservices",
        json!({"apiVersion": "aigc.dev/v1alpha1", "kind": "InferenceService",
               "metadata": {"name": "chat-api", "namespace": "default"},
               "spec": {"modelRef": {"name": "chat"}, "replicas": 1}}),
    )
    .await;
    model_where(&h, "chat", |m| {
        m.status
            .as_ref()
            .is_some_and(|s| s.served_by.iter().any(|r| r.name == "chat-api"))
    })
    .await;

    // A Model from a TrainingJob waits for it and is Ready when it succeeds.
    h.apply(
        "trainingjobs",
        json!({"apiVersion": "aigc.dev/v1alpha1", "kind": "TrainingJob",
               "metadata": {"name": "ft", "namespace": "default"},
               "spec": {"datasetRef": {"name": "reviews"}, "architecture": "mlp", "task": "classification",
                        "target": "stars",
                        "output": {"modelName": "stars", "version": "1"}}}),
    )
    .await;
    h.apply(
        "models",
        json!({"apiVersion": "aigc.dev/v1alpha1", "kind": "Model",
               "metadata": {"name": "stars", "namespace": "default"},
               "spec": {"source": {"trainingJobRef": {"name": "ft"}},
                        "format": "safetensors", "architecture": "mlp",
                        "task": "classification", "version": "1"}}),
    )
    .await;
    let waiting = model_where(&h, "stars", |m| {
        m.status.as_ref().and_then(|s| s.phase) == Some(ModelPhase::Pending)
    })
    .await;
    assert_eq!(
        find_condition(&waiting.status.unwrap().conditions, "Ready")
            .unwrap()
            .reason,
        "WaitingForTrainingJob"
    );
    let tjs: Api<aigc_crds::TrainingJob> = Api::namespaced(h.client.clone(), "default");
    tjs.patch_status(
        "ft",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
    )
    .await
    .unwrap();
    model_where(&h, "stars", |m| {
        m.status.as_ref().and_then(|s| s.phase) == Some(ModelPhase::Ready)
    })
    .await;
    let uid = model_where(&h, "stars", |_| true).await.uid().unwrap();
    assert!(h.jobs_of("default", &uid).await.is_empty());
    h.kill_controllers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_data_is_demoted_and_deletion_waits_for_the_move() {
    let mut h = Harness::start().await;
    h.filesystem_tier("hot", "hot", json!({})).await;
    h.filesystem_tier("cold", "cold", json!({})).await;
    h.run_controllers(POLICY_INTERVAL);
    let text = |name: &str| {
        json!({"apiVersion": "aigc.dev/v1alpha1", "kind": "Dataset",
               "metadata": {"name": name, "namespace": "default"},
               "spec": {"source": {"pvc": {"claimName": "raw"}}, "format": "text",
                        "placement": {"tier": "hot"},
                        "lifecycle": {"demoteAfter": "1s", "demoteTo": "cold"}}})
    };
    for name in ["notes", "logs"] {
        h.apply("datasets", text(name)).await;
    }
    let mut uids = Vec::new();
    for name in ["notes", "logs"] {
        let uid = dataset_where(&h, name, |d| d.uid().is_some())
            .await
            .uid()
            .unwrap();
        let job = h.await_job("default", &uid, "prepare", |_| true).await;
        h.finish_job(&job, 0, Some(SUMMARY)).await;
        uids.push(uid);
    }

    // notes: demoted once idle; the tier switches only after the move Job succeeded.
    let mv = h.await_job("default", &uids[0], "move", |_| true).await;
    let a = args(&mv);
    assert_eq!(
        (a[0].as_str(), a.last().unwrap().as_str()),
        ("transfer", "--delete-source")
    );
    let migrating = dataset_where(&h, "notes", |d| phase(d) == Some(DatasetPhase::Migrating)).await;
    assert_eq!(migrating.status.unwrap().tier.as_deref(), Some("hot"));
    h.finish_job(&mv, 0, None).await;
    let moved = dataset_where(&h, "notes", |d| {
        d.status.as_ref().and_then(|s| s.tier.as_deref()) == Some("cold")
    })
    .await;
    let condition = find_condition(&moved.status.as_ref().unwrap().conditions, "Migrating")
        .unwrap()
        .clone();
    assert_eq!(
        (condition.status, condition.reason.as_str()),
        (ConditionStatus::False, "Moved")
    );
    eventually(
        "the finished move Job removed, and no second move",
        || async {
            let jobs = h.jobs_of("default", &uids[0]).await;
            let moves = jobs
                .iter()
                .filter(|j| j.labels()["aigc.dev/role"] == "move")
                .count();
            (moves == 0).then_some(())
        },
    )
    .await;
    let jobs: Api<Job> = Api::namespaced(h.client.clone(), "default");

    // logs: deleted while its move runs; it stays until the move finished.
    let mv = h.await_job("default", &uids[1], "move", |_| true).await;
    let api: Api<Dataset> = Api::namespaced(h.client.clone(), "default");
    dataset_where(&h, "logs", |d| phase(d) == Some(DatasetPhase::Migrating)).await;
    api.delete("logs", &DeleteParams::default()).await.unwrap();
    let held = dataset_where(&h, "logs", |d| d.metadata.deletion_timestamp.is_some()).await;
    assert!(held.finalizers().contains(&"aigc.dev/tier-move".to_owned()));
    assert!(jobs.get_opt(&mv.name_any()).await.unwrap().is_some());
    h.finish_job(&mv, 0, None).await;
    eventually("the Dataset gone once its move finished", || async {
        api.get_opt("logs").await.unwrap().is_none().then_some(())
    })
    .await;
    h.kill_controllers().await;
}
