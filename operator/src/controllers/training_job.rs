//! TrainingJob controller: waits for the Dataset (and base Model), queues the job for the
//! scheduler, runs each admitted attempt as `aigc-worker train` pods pinned to the placed
//! nodes, follows their progress, retries failures from the last checkpoint, honours the
//! deadline and registers the output Model.
//!
//! Admission, placement and preemption are the scheduling loop's (`admission`): it writes
//! `status.placement` and starts an attempt (`status.attempts`); this controller creates the
//! pods of the current attempt, named after it, so a restart never creates them twice. The
//! desired pods and every status transition are pure functions; `reconcile` reads the inputs
//! and applies the results.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aigc_crds::common::{Accelerator, LocalObjectRef, Placement};
use aigc_crds::condition::{find_condition, set_condition};
use aigc_crds::dataset::{Dataset, DatasetPhase};
use aigc_crds::model::{
    Architecture, Model, ModelFormat, ModelPhase, ModelSource, ModelSpec, Task,
};
use aigc_crds::storage_tier::{StorageTier, TierClass};
use aigc_crds::training_job::{Progress, TrainingJob, TrainingJobPhase, TrainingJobStatus};
use aigc_crds::{Condition, ConditionStatus};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    ContainerPort, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde::Deserialize;

use crate::Error;
use crate::controllers::admission::{
    ADMITTED, MANAGED_BY_LABEL, PREEMPTION_GRACE_SECONDS, PRIORITY_LABEL, QUEUE_LABEL,
    TRAINING_JOB_LABEL, training_placement,
};
use crate::controllers::{
    Context, FIELD_MANAGER, apply_child, get_opt, instrumented, patch_status_checked, publish,
};
use crate::layout::{StoredKind, TierAccess};
use crate::scheduler::{Device, pinned_to};
use crate::worker_pod::{WorkerImages, worker_pod_spec};

/// Port of the worker's progress endpoint (`GET /progress`).
pub const PROGRESS_PORT: i32 = 9090;
/// Label with the attempt a pod belongs to.
pub const ATTEMPT_LABEL: &str = "aigc.dev/attempt";
/// Label with the replica index of a pod within its gang.
pub const REPLICA_LABEL: &str = "aigc.dev/replica";
/// Annotation on the output Model: where the trained artifacts are.
pub const ARTIFACTS_URI_ANNOTATION: &str = "aigc.dev/artifacts-uri";
/// Annotation on the output Model: the manifest digest the worker reported.
pub const MANIFEST_DIGEST_ANNOTATION: &str = "aigc.dev/manifest-digest";
/// Version segment of a prepared Dataset's location on its tier when its status names none
/// (`datasets/<ns>/<name>/current`); the Dataset controller records `status.version`.
pub const DATASET_VERSION: &str = "current";
/// Where the worker writes its final JSON result.
pub const TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// Condition type set when the job succeeded.
pub const COMPLETE: &str = "Complete";
/// Condition type set when the job failed (and, with status False, when it retries).
pub const FAILED: &str = "Failed";

/// How often progress is read from a running worker.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(3);
/// How long a progress request may take before the last value is kept.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(2);

/// Where an attempt reads and writes, resolved from the Dataset and the StorageTiers.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainInputs {
    /// The prepared Dataset.
    pub dataset_uri: String,
    /// Where replica 0 publishes the trained model.
    pub out_uri: String,
    /// Where checkpoints go.
    pub checkpoint_uri: String,
    /// The tier holding the output Model.
    pub output_tier: String,
    /// Access to every tier involved.
    pub tiers: Vec<TierAccess>,
}

/// Why a job cannot be queued yet: the Dataset or base Model is missing or not Ready.
pub fn dependency_wait(
    job: &TrainingJob,
    dataset: Option<&Dataset>,
    base_model: Option<&Model>,
) -> Option<(&'static str, String)> {
    let name = &job.spec.dataset_ref.name;
    match dataset {
        None => return Some(("DatasetNotFound", format!("Dataset {name} not found"))),
        Some(d) => {
            let phase = d.status.as_ref().and_then(|s| s.phase);
            let ready = matches!(phase, Some(DatasetPhase::Ready | DatasetPhase::Migrating));
            if !ready {
                let phase = phase.map_or("not prepared yet".to_owned(), |p| format!("{p:?}"));
                return Some((
                    "WaitingForDataset",
                    format!("Dataset {name} is {phase}, not Ready"),
                ));
            }
        }
    }
    if let Some(base) = &job.spec.base_model_ref {
        let name = &base.name;
        match base_model {
            None => return Some(("BaseModelNotFound", format!("Model {name} not found"))),
            Some(m) => {
                let phase = m.status.as_ref().and_then(|s| s.phase);
                if !matches!(phase, Some(ModelPhase::Ready | ModelPhase::Migrating)) {
                    let phase = phase.map_or("not verified yet".to_owned(), |p| format!("{p:?}"));
                    return Some((
                        "WaitingForBaseModel",
                        format!("base Model {name} is {phase}, not Ready"),
                    ));
                }
            }
        }
    }
    None
}

/// The StorageTier for the output when the spec names none: the first `hot` tier by name.
pub fn default_output_tier(tiers: &[StorageTier]) -> Option<String> {
    let mut hot: Vec<String> = tiers
        .iter()
        .filter(|t| t.spec.class == TierClass::Hot)
        .map(|t| t.name_any())
        .collect();
    hot.sort();
    hot.into_iter().next()
}

fn architecture_arg(architecture: Architecture) -> Result<&'static str, Error> {
    match architecture {
        Architecture::Mlp => Ok("mlp"),
        Architecture::CharTransformer => Ok("char-transformer"),
        other => Err(Error::Invalid(format!(
            "architecture {:?}: aigc-worker train trains mlp and char-transformer",
            format!("{other:?}").to_lowercase()
        ))),
    }
}

/// Worker flags for `spec.hyperparameters.extra`, by key.
const EXTRA_FLAGS: &[(&str, &str)] = &[
    ("hiddenLayers", "--hidden"),
    ("dModel", "--d-model"),
    ("layers", "--layers"),
    ("heads", "--heads"),
    ("contextLength", "--block-size"),
    ("weightDecay", "--weight-decay"),
    ("validationFraction", "--validation-fraction"),
];

fn extra_args(extra: &BTreeMap<String, serde_json::Value>) -> Result<Vec<String>, Error> {
    let mut args = Vec::new();
    for (key, value) in extra {
        let Some((_, flag)) = EXTRA_FLAGS.iter().find(|(k, _)| k == key) else {
            let accepted: Vec<&str> = EXTRA_FLAGS.iter().map(|(k, _)| *k).collect();
            return Err(Error::Invalid(format!(
                "hyperparameters.extra.{key}: unknown setting; accepted: {}",
                accepted.join(", ")
            )));
        };
        let text = match value {
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Array(items) if key == "hiddenLayers" => {
                let widths: Option<Vec<String>> = items
                    .iter()
                    .map(|v| v.as_u64().map(|w| w.to_string()))
                    .collect();
                widths.filter(|w| !w.is_empty()).ok_or_else(|| {
                    Error::Invalid(format!(
                        "hyperparameters.extra.hiddenLayers: {value} is not a list of layer widths, e.g. [64, 32]"
                    ))
                })?.join(",")
            }
            other => {
                return Err(Error::Invalid(format!(
                    "hyperparameters.extra.{key}: {other} is not a number"
                )));
            }
        };
        args.extend([(*flag).to_owned(), text]);
    }
    Ok(args)
}

/// The `aigc-worker train` arguments of one replica in one attempt. Attempts after the first
/// resume from the last checkpoint. Replicas train independently (the worker has no
/// data-parallel mode); replica 0's output is the job's model.
pub fn train_args(
    job: &TrainingJob,
    inputs: &TrainInputs,
    attempt: u32,
    replica: u32,
) -> Result<Vec<String>, Error> {
    let spec = &job.spec;
    let hyper = &spec.hyperparameters;
    let name = job.name_any();
    if name.len() > 63 {
        return Err(Error::Invalid(format!(
            "metadata.name {name:?} has {} characters; a TrainingJob's name labels its pods, so at most 63 are accepted",
            name.len()
        )));
    }
    let (out, checkpoints) = match replica {
        0 => (inputs.out_uri.clone(), inputs.checkpoint_uri.clone()),
        r => (
            format!("{}-replica-{r}", inputs.out_uri),
            format!("{}/replica-{r}", inputs.checkpoint_uri),
        ),
    };
    let mut args = vec![
        "train".to_owned(),
        "--dataset".to_owned(),
        inputs.dataset_uri.clone(),
        "--architecture".to_owned(),
        architecture_arg(spec.architecture)?.to_owned(),
        "--out".to_owned(),
        out,
        "--checkpoint-dir".to_owned(),
        checkpoints,
        "--checkpoint-every".to_owned(),
        spec.checkpoint
            .as_ref()
            .map_or(100, |c| c.every_steps)
            .to_string(),
        "--epochs".to_owned(),
        hyper.epochs.to_string(),
        "--batch-size".to_owned(),
        hyper.batch_size.to_string(),
        "--lr".to_owned(),
        hyper.learning_rate.to_string(),
        "--seed".to_owned(),
        hyper.seed.to_string(),
    ];
    if let Some(target) = &spec.target {
        args.extend(["--target".to_owned(), target.clone()]);
    }
    match spec.task {
        Some(Task::Classification) => args.extend(["--task".to_owned(), "classification".into()]),
        Some(Task::Regression) => args.extend(["--task".to_owned(), "regression".into()]),
        _ => {}
    }
    args.extend(extra_args(&hyper.extra)?);
    args.extend([
        "--termination-message-path".to_owned(),
        TERMINATION_MESSAGE_PATH.to_owned(),
        "--progress-listen".to_owned(),
        format!("$(POD_IP):{PROGRESS_PORT}"),
    ]);
    if attempt > 1 {
        args.push("--resume".to_owned());
    }
    Ok(args)
}

/// Name of the pod of `replica` in `attempt`.
pub fn pod_name(job: &str, attempt: u32, replica: u32) -> String {
    format!("{job}-a{attempt}-r{replica}")
}

/// The worker pod of one replica in one attempt, pinned to `node` on `device`.
#[allow(clippy::too_many_arguments)]
pub fn desired_pod(
    job: &TrainingJob,
    inputs: &TrainInputs,
    images: &WorkerImages,
    attempt: u32,
    replica: u32,
    node: &str,
    device: Device,
) -> Result<Pod, Error> {
    let args = train_args(job, inputs, attempt, replica)?;
    let tiers: Vec<&TierAccess> = inputs.tiers.iter().collect();
    let mut spec: PodSpec = worker_pod_spec(
        images,
        args,
        &job.spec.resources,
        Accelerator::from(device),
        &tiers,
    );
    spec.node_name = Some(node.to_owned());
    spec.affinity = Some(pinned_to(node));
    spec.restart_policy = Some("Never".to_owned());
    spec.termination_grace_period_seconds = Some(PREEMPTION_GRACE_SECONDS);
    let container = &mut spec.containers[0];
    container.termination_message_path = Some(TERMINATION_MESSAGE_PATH.to_owned());
    container.ports = Some(vec![ContainerPort {
        name: Some("progress".to_owned()),
        container_port: PROGRESS_PORT,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }]);
    container.env.get_or_insert_with(Vec::new).insert(
        0,
        EnvVar {
            name: "POD_IP".to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "status.podIP".to_owned(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
        },
    );
    let name = job.name_any();
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned()),
        (
            "app.kubernetes.io/name".to_owned(),
            "aigc-worker".to_owned(),
        ),
        (
            "app.kubernetes.io/component".to_owned(),
            "training".to_owned(),
        ),
        (TRAINING_JOB_LABEL.to_owned(), name.clone()),
        (ATTEMPT_LABEL.to_owned(), attempt.to_string()),
        (REPLICA_LABEL.to_owned(), replica.to_string()),
        (QUEUE_LABEL.to_owned(), job.spec.queue.clone()),
        (PRIORITY_LABEL.to_owned(), job.spec.priority.to_string()),
    ]);
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&name, attempt, replica)),
            namespace: job.namespace(),
            labels: Some(labels),
            owner_references: job.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// The worker's JSON status, as served at `/progress` and written as the termination message.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    /// `Starting`, `Running`, `Succeeded`, `Preempted` or `Failed`.
    #[serde(default)]
    pub phase: Option<String>,
    /// Completed epochs.
    #[serde(default)]
    pub epoch: Option<u32>,
    /// Epochs requested.
    #[serde(default)]
    pub epochs: Option<u32>,
    /// Steps done.
    #[serde(default)]
    pub step: Option<u64>,
    /// Steps of the whole run.
    #[serde(default)]
    pub total_steps: Option<u64>,
    /// Latest training loss.
    #[serde(default)]
    pub loss: Option<f64>,
    /// Mean training loss of the last epoch (older workers report only this).
    #[serde(default)]
    pub train_loss: Option<f64>,
    /// Validation metric.
    #[serde(default)]
    pub metric: Option<f64>,
    /// `accuracy`, `rmse` or `perplexity`.
    #[serde(default)]
    pub metric_name: Option<String>,
    /// Estimated seconds to completion.
    #[serde(default)]
    pub eta_seconds: Option<f64>,
    /// Where the model was published.
    #[serde(default)]
    pub model: Option<String>,
    /// Digest of the published manifest.
    #[serde(default)]
    pub manifest_digest: Option<String>,
    /// What went wrong.
    #[serde(default)]
    pub error: Option<String>,
}

/// Parses the worker's JSON status; `None` when it is not one.
pub fn parse_worker_status(text: &str) -> Option<WorkerStatus> {
    serde_json::from_str(text.trim()).ok()
}

/// `200` seconds as `3m20s`.
pub fn human_eta(seconds: f64) -> String {
    let seconds = seconds.max(0.0).round() as u64;
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if hours > 0 {
        format!("{hours}h{minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// The progress `kubectl get tj` shows, from the worker's status.
pub fn progress_of(worker: &WorkerStatus) -> Progress {
    let finished = worker.phase.as_deref() == Some("Succeeded");
    let epoch = match (worker.epoch, worker.epochs) {
        // The worker counts completed epochs; users read the one in progress.
        (Some(done), Some(all)) if !finished => Some((done + 1).min(all)),
        (done, _) => done,
    };
    let step_text = match (worker.step, worker.total_steps) {
        (Some(step), Some(total)) => Some(format!("{step}/{total}")),
        (Some(step), None) => Some(step.to_string()),
        _ => None,
    };
    Progress {
        epoch,
        step: worker.step,
        total_steps: worker.total_steps,
        step_text,
        loss: worker.loss.or(worker.train_loss),
        metric: worker.metric,
        eta: if finished {
            None
        } else {
            worker.eta_seconds.map(human_eta)
        },
    }
}

/// What the pods of the current attempt show.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttemptState {
    /// Replicas without a pod.
    pub missing: Vec<u32>,
    /// Whether any replica is running.
    pub running: bool,
    /// Whether every replica succeeded.
    pub succeeded: bool,
    /// Why a replica failed, if one did.
    pub failure: Option<String>,
    /// Pod IP of replica 0, for progress.
    pub progress_ip: Option<String>,
    /// Final status replica 0 wrote, once it terminated.
    pub result: Option<WorkerStatus>,
}

fn pod_label(pod: &Pod, key: &str) -> Option<u32> {
    pod.metadata.labels.as_ref()?.get(key)?.parse().ok()
}

fn termination_message(pod: &Pod) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses
        .iter()
        .filter_map(|s| s.state.as_ref()?.terminated.as_ref())
        .find_map(|t| t.message.clone())
}

fn failure_of(pod: &Pod) -> String {
    let name = pod.name_any();
    if let Some(message) = termination_message(pod) {
        return match parse_worker_status(&message) {
            Some(WorkerStatus {
                error: Some(error), ..
            }) => format!("pod {name}: {error}"),
            _ => format!("pod {name}: {}", message.trim()),
        };
    }
    let status = pod.status.as_ref();
    let terminated = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .find_map(|s| s.state.as_ref()?.terminated.as_ref());
    match terminated {
        Some(t) => format!(
            "pod {name}: worker exited with code {}{}",
            t.exit_code,
            t.reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
        None => {
            let reason = status.and_then(|s| s.message.clone().or(s.reason.clone()));
            format!(
                "pod {name} failed{}",
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            )
        }
    }
}

/// Reads the current attempt from its pods (those of other attempts are ignored).
pub fn attempt_state(pods: &[Pod], attempt: u32, replicas: u32) -> AttemptState {
    let mut state = AttemptState::default();
    let mut succeeded = 0;
    for replica in 0..replicas {
        let pod = pods.iter().find(|p| {
            pod_label(p, ATTEMPT_LABEL) == Some(attempt)
                && pod_label(p, REPLICA_LABEL) == Some(replica)
        });
        let Some(pod) = pod else {
            state.missing.push(replica);
            continue;
        };
        let status = pod.status.as_ref();
        match status.and_then(|s| s.phase.as_deref()) {
            Some("Succeeded") => succeeded += 1,
            Some("Failed") => {
                state.failure.get_or_insert_with(|| failure_of(pod));
            }
            Some("Running") => state.running = true,
            _ => {}
        }
        if replica == 0 {
            state.progress_ip = status.and_then(|s| s.pod_ip.clone());
            state.result = termination_message(pod).and_then(|m| parse_worker_status(&m));
        }
    }
    state.succeeded = replicas > 0 && succeeded == replicas;
    state
}

fn rfc3339(now: DateTime<Utc>) -> String {
    now.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn base_status(job: &TrainingJob) -> TrainingJobStatus {
    let mut status = job.status.clone().unwrap_or_default();
    status.observed_generation = job.metadata.generation;
    status
}

/// Waiting for the Dataset or base Model: `Pending`, `Admitted=Unknown` with the reason.
pub fn waiting_status(
    job: &TrainingJob,
    reason: &str,
    message: String,
    now: DateTime<Utc>,
) -> TrainingJobStatus {
    let mut status = base_status(job);
    status.phase = Some(TrainingJobPhase::Pending);
    status.placement = None;
    set_condition(
        &mut status.conditions,
        Condition::new(
            ADMITTED,
            ConditionStatus::Unknown,
            reason,
            message,
            job.metadata.generation,
            now,
        ),
    );
    status
}

/// Inputs ready: `Queued` in the job's queue until the scheduler admits it.
pub fn queued_status(job: &TrainingJob, now: DateTime<Utc>) -> TrainingJobStatus {
    let mut status = base_status(job);
    status.phase = Some(TrainingJobPhase::Queued);
    set_condition(
        &mut status.conditions,
        Condition::new(
            ADMITTED,
            ConditionStatus::False,
            "Queued",
            format!("waiting in queue {} for the scheduler", job.spec.queue),
            job.metadata.generation,
            now,
        ),
    );
    status
}

/// An attempt failed: the next one resumes from the checkpoint on the same nodes, unless
/// `backoffLimit` retries are used up and the job fails.
pub fn failed_attempt_status(
    job: &TrainingJob,
    failure: &str,
    now: DateTime<Utc>,
) -> TrainingJobStatus {
    let mut status = base_status(job);
    let failures = status.failures.unwrap_or(0) + 1;
    status.failures = Some(failures);
    let attempt = status.attempts.unwrap_or(1);
    let limit = job.spec.backoff_limit;
    if failures > limit {
        let message = format!(
            "attempt {attempt} failed and all {limit} retries are used (backoffLimit {limit}): {failure}"
        );
        return terminal_failure(status, job, "BackoffLimitExceeded", message, now);
    }
    status.attempts = Some(attempt + 1);
    // The next attempt's pods start on the nodes the job keeps.
    status.phase = Some(TrainingJobPhase::Admitted);
    set_condition(
        &mut status.conditions,
        Condition::new(
            FAILED,
            ConditionStatus::False,
            "Retrying",
            format!(
                "attempt {attempt} failed ({failure}); retry {failures} of {limit} resumes from the last checkpoint"
            ),
            job.metadata.generation,
            now,
        ),
    );
    status
}

fn terminal_failure(
    mut status: TrainingJobStatus,
    job: &TrainingJob,
    reason: &str,
    message: String,
    now: DateTime<Utc>,
) -> TrainingJobStatus {
    status.phase = Some(TrainingJobPhase::Failed);
    status.completion_time = Some(rfc3339(now));
    if let Some(progress) = status.progress.as_mut() {
        progress.eta = None;
    }
    set_condition(
        &mut status.conditions,
        Condition::new(
            FAILED,
            ConditionStatus::True,
            reason,
            message,
            job.metadata.generation,
            now,
        ),
    );
    status
}

/// The job failed for good, e.g. `DeadlineExceeded` or an unusable spec.
pub fn failed_status(
    job: &TrainingJob,
    reason: &str,
    message: String,
    now: DateTime<Utc>,
) -> TrainingJobStatus {
    terminal_failure(base_status(job), job, reason, message, now)
}

/// How long past `activeDeadlineSeconds` the job is, as a message; `None` within it.
pub fn deadline_exceeded(job: &TrainingJob, now: DateTime<Utc>) -> Option<String> {
    let deadline = job.spec.active_deadline_seconds?;
    let start = job.status.as_ref()?.start_time.as_ref()?;
    let start = DateTime::parse_from_rfc3339(start)
        .ok()?
        .with_timezone(&Utc);
    let ran = (now - start).num_seconds();
    (ran >= deadline as i64).then(|| {
        format!("ran {ran}s since its first start at {start}; activeDeadlineSeconds is {deadline}")
    })
}

/// Requeue after `interval`, or at the deadline if that comes first.
fn requeue_within_deadline(job: &TrainingJob, now: DateTime<Utc>, interval: Duration) -> Action {
    let left = || {
        let deadline = job.spec.active_deadline_seconds?;
        let start = job.status.as_ref()?.start_time.as_ref()?;
        let start = DateTime::parse_from_rfc3339(start)
            .ok()?
            .with_timezone(&Utc);
        let end = start + chrono::Duration::seconds(i64::try_from(deadline).ok()?);
        Some((end - now).to_std().unwrap_or_default())
    };
    Action::requeue(left().map_or(interval, |left| left.min(interval)))
}

/// The task of the output Model: the spec's, else what the worker's metric says.
pub fn output_task(job: &TrainingJob, result: Option<&WorkerStatus>) -> Task {
    if let Some(task) = job.spec.task {
        return task;
    }
    match (
        job.spec.architecture,
        result.and_then(|r| r.metric_name.as_deref()),
    ) {
        (Architecture::Mlp, Some("rmse")) => Task::Regression,
        (Architecture::Mlp, _) => Task::Classification,
        (Architecture::Bert, _) => Task::Classification,
        _ => Task::TextGeneration,
    }
}

/// The Model a successful job registers: sourced from this job, on the output tier.
pub fn output_model(
    job: &TrainingJob,
    inputs: &TrainInputs,
    result: Option<&WorkerStatus>,
) -> Model {
    let output = &job.spec.output;
    let spec = ModelSpec {
        source: ModelSource::TrainingJobRef(LocalObjectRef {
            name: job.name_any(),
        }),
        format: ModelFormat::Safetensors,
        architecture: job.spec.architecture,
        task: output_task(job, result),
        version: output.version.clone(),
        placement: Some(Placement {
            tier: inputs.output_tier.clone(),
        }),
        lifecycle: None,
    };
    let mut model = Model::new(&output.model_name, spec);
    model.metadata.namespace = job.namespace();
    model.metadata.annotations = Some(model_annotations(inputs, result));
    model
}

fn model_annotations(
    inputs: &TrainInputs,
    result: Option<&WorkerStatus>,
) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::from([(
        ARTIFACTS_URI_ANNOTATION.to_owned(),
        result
            .and_then(|r| r.model.clone())
            .unwrap_or_else(|| inputs.out_uri.clone()),
    )]);
    if let Some(digest) = result.and_then(|r| r.manifest_digest.clone()) {
        annotations.insert(MANIFEST_DIGEST_ANNOTATION.to_owned(), digest);
    }
    annotations
}

/// The job succeeded and its output Model is registered (or could not be: `conflict`).
pub fn succeeded_status(
    job: &TrainingJob,
    result: Option<&WorkerStatus>,
    conflict: Option<String>,
    now: DateTime<Utc>,
) -> TrainingJobStatus {
    let mut status = base_status(job);
    status.phase = Some(TrainingJobPhase::Succeeded);
    status.completion_time = Some(rfc3339(now));
    if let Some(result) = result {
        status.progress = Some(progress_of(result));
    }
    let model = &job.spec.output.model_name;
    let (reason, message) = match conflict {
        None => {
            status.model_ref = Some(LocalObjectRef {
                name: model.clone(),
            });
            (
                "Succeeded",
                format!(
                    "trained; registered Model {model} version {}",
                    job.spec.output.version
                ),
            )
        }
        Some(conflict) => ("OutputModelConflict", conflict),
    };
    set_condition(
        &mut status.conditions,
        Condition::new(
            COMPLETE,
            ConditionStatus::True,
            reason,
            message,
            job.metadata.generation,
            now,
        ),
    );
    status
}

/// Make the cluster match one TrainingJob.
pub async fn reconcile(job: Arc<TrainingJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = job.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<TrainingJob> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = Utc::now();
    let phase = job.status.as_ref().and_then(|s| s.phase);
    if matches!(
        phase,
        Some(TrainingJobPhase::Succeeded | TrainingJobPhase::Failed)
    ) || job.meta().deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    if let Some(message) = deadline_exceeded(&job, now) {
        delete_pods(&ctx, &job, |_| true).await?;
        let status = failed_status(&job, "DeadlineExceeded", message.clone(), now);
        patch_status_checked(&api, job.as_ref(), &status).await?;
        publish(
            &ctx.recorder,
            job.as_ref(),
            EventType::Warning,
            "DeadlineExceeded",
            message,
        )
        .await;
        return Ok(Action::await_change());
    }
    match phase {
        Some(TrainingJobPhase::Admitted | TrainingJobPhase::Running) => {
            run_attempt(&job, &ctx, &api, now).await
        }
        _ => queue(&job, &ctx, &api, now).await,
    }
}

/// Before admission: wait for the inputs, then queue.
async fn queue(
    job: &TrainingJob,
    ctx: &Context,
    api: &Api<TrainingJob>,
    now: DateTime<Utc>,
) -> Result<Action, Error> {
    let phase = job.status.as_ref().and_then(|s| s.phase);
    let inputs = match resolve_inputs(job, ctx).await? {
        Ok(inputs) => inputs,
        Err((reason, message)) => {
            let status = waiting_status(job, reason, message.clone(), now);
            let before = job
                .status
                .as_ref()
                .and_then(|s| find_condition(&s.conditions, ADMITTED))
                .map(|c| c.reason.clone());
            if job.status.as_ref() != Some(&status) {
                patch_status_checked(api, job, &status).await?;
                if before.as_deref() != Some(reason) {
                    publish(&ctx.recorder, job, EventType::Normal, reason, message).await;
                }
            }
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    };
    if let Err(error) = train_args(job, &inputs, 1, 0) {
        let message = error.to_string();
        let status = failed_status(job, "InvalidSpec", message.clone(), now);
        patch_status_checked(api, job, &status).await?;
        publish(
            &ctx.recorder,
            job,
            EventType::Warning,
            "InvalidSpec",
            message,
        )
        .await;
        return Ok(Action::await_change());
    }
    // A queued job runs nothing: pods left from before a preemption go.
    delete_pods(ctx, job, is_live).await?;
    if phase != Some(TrainingJobPhase::Queued) {
        let status = queued_status(job, now);
        patch_status_checked(api, job, &status).await?;
        let message = format!("inputs ready; waiting in queue {}", job.spec.queue);
        publish(&ctx.recorder, job, EventType::Normal, "Queued", message).await;
    }
    Ok(requeue_within_deadline(job, now, Duration::from_secs(300)))
}

/// After admission: keep the current attempt's pods running and act on how they end.
async fn run_attempt(
    job: &TrainingJob,
    ctx: &Context,
    api: &Api<TrainingJob>,
    now: DateTime<Utc>,
) -> Result<Action, Error> {
    let Some((nodes, device)) = training_placement(job) else {
        patch_status_checked(api, job, &queued_status(job, now)).await?;
        return Ok(Action::await_change());
    };
    let nodes = nodes.to_vec();
    let attempt = job
        .status
        .as_ref()
        .and_then(|s| s.attempts)
        .unwrap_or(1)
        .max(1);
    let pods = list_pods(ctx, job).await?;
    let state = attempt_state(&pods, attempt, job.spec.replicas);
    delete_pods(ctx, job, |pod| {
        pod_label(pod, ATTEMPT_LABEL) != Some(attempt) && is_live(pod)
    })
    .await?;

    if let Some(failure) = &state.failure {
        let status = failed_attempt_status(job, failure, now);
        patch_status_checked(api, job, &status).await?;
        delete_pods(ctx, job, is_live).await?;
        let reason = if status.phase == Some(TrainingJobPhase::Failed) {
            "BackoffLimitExceeded"
        } else {
            "Retrying"
        };
        let message = status
            .conditions
            .iter()
            .find(|c| c.type_ == FAILED)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        publish(&ctx.recorder, job, EventType::Warning, reason, message).await;
        return Ok(Action::await_change());
    }
    if state.succeeded {
        let inputs = match resolve_inputs(job, ctx).await? {
            Ok(inputs) => inputs,
            Err((_, message)) => return Err(Error::Invalid(message)),
        };
        let conflict = register_output(ctx, job, &inputs, state.result.as_ref()).await?;
        let status = succeeded_status(job, state.result.as_ref(), conflict.clone(), now);
        patch_status_checked(api, job, &status).await?;
        let message = find_condition(&status.conditions, COMPLETE)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        let type_ = if conflict.is_some() {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish(&ctx.recorder, job, type_, "Succeeded", message).await;
        return Ok(Action::await_change());
    }
    if !state.missing.is_empty() {
        // Pods are created only for the attempt the latest status grants: a preemption may
        // have been written since this reconcile's view.
        let latest = get_opt(api, &job.name_any()).await?;
        if latest.and_then(|j| j.metadata.resource_version) != job.metadata.resource_version {
            return Ok(Action::requeue(Duration::from_millis(200)));
        }
        let inputs = match resolve_inputs(job, ctx).await? {
            Ok(inputs) => inputs,
            Err((reason, message)) => {
                let status = failed_status(job, reason, message.clone(), now);
                patch_status_checked(api, job, &status).await?;
                publish(&ctx.recorder, job, EventType::Warning, reason, message).await;
                return Ok(Action::await_change());
            }
        };
        let pods_api: Api<Pod> =
            Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
        for &replica in &state.missing {
            let Some(node) = nodes.get(replica as usize) else {
                continue;
            };
            let pod = desired_pod(
                job,
                &inputs,
                &ctx.config.worker_images,
                attempt,
                replica,
                node,
                device,
            )?;
            apply_child(&pods_api, &pod).await?;
        }
        if state.missing.len() == job.spec.replicas as usize {
            let resume = if attempt > 1 {
                ", resuming from the last checkpoint"
            } else {
                ""
            };
            let message = format!("attempt {attempt} started on {}{resume}", nodes.join(", "));
            publish(&ctx.recorder, job, EventType::Normal, "Started", message).await;
        }
    }
    let mut status = base_status(job);
    if state.running {
        status.phase = Some(TrainingJobPhase::Running);
        if let Some(ip) = &state.progress_ip
            && let Some(worker) = fetch_progress(ip).await
        {
            status.progress = Some(progress_of(&worker));
        }
    }
    if job.status.as_ref() != Some(&status) {
        patch_status_checked(api, job, &status).await?;
        if state.running
            && job.status.as_ref().and_then(|s| s.phase) != Some(TrainingJobPhase::Running)
        {
            let message = format!("attempt {attempt} is running on {}", nodes.join(", "));
            publish(&ctx.recorder, job, EventType::Normal, "Running", message).await;
        }
    }
    let interval = if state.running {
        PROGRESS_INTERVAL
    } else {
        Duration::from_secs(30)
    };
    Ok(requeue_within_deadline(job, now, interval))
}

fn is_live(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed")) && pod.metadata.deletion_timestamp.is_none()
}

async fn list_pods(ctx: &Context, job: &TrainingJob) -> Result<Vec<Pod>, Error> {
    let namespace = job.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = ListParams::default().labels(&format!("{TRAINING_JOB_LABEL}={}", job.name_any()));
    api.list(&params)
        .await
        .map(|list| list.items)
        .map_err(|source| Error::Kube {
            action: format!("listing the pods of TrainingJob {}", job.name_any()),
            source,
        })
}

/// Delete the job's pods that `select` picks, with the grace period in which the worker
/// writes a checkpoint.
async fn delete_pods(
    ctx: &Context,
    job: &TrainingJob,
    select: impl Fn(&Pod) -> bool,
) -> Result<(), Error> {
    let namespace = job.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = DeleteParams {
        grace_period_seconds: Some(PREEMPTION_GRACE_SECONDS as u32),
        ..DeleteParams::default()
    };
    for pod in list_pods(ctx, job).await?.iter().filter(|p| select(p)) {
        let name = pod.name_any();
        match api.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(Error::Kube {
                    action: format!("deleting pod {name}"),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The Dataset, base Model and tiers the job needs, or why it must wait for them.
async fn resolve_inputs(
    job: &TrainingJob,
    ctx: &Context,
) -> Result<Result<TrainInputs, (&'static str, String)>, Error> {
    let namespace = job.namespace().unwrap_or_default();
    let datasets: Api<Dataset> = Api::namespaced(ctx.client.clone(), &namespace);
    let models: Api<Model> = Api::namespaced(ctx.client.clone(), &namespace);
    let dataset = get_opt(&datasets, &job.spec.dataset_ref.name).await?;
    let base = match &job.spec.base_model_ref {
        Some(base) => get_opt(&models, &base.name).await?,
        None => None,
    };
    if let Some(wait) = dependency_wait(job, dataset.as_ref(), base.as_ref()) {
        return Ok(Err(wait));
    }
    let Some(dataset) = dataset else {
        return Ok(Err(("DatasetNotFound", "Dataset not found".to_owned())));
    };
    let tiers_api: Api<StorageTier> = Api::all(ctx.client.clone());
    let tiers = tiers_api
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Kube {
            action: "listing StorageTiers".to_owned(),
            source,
        })?
        .items;
    let find = |name: &str| tiers.iter().find(|t| t.name_any() == name);
    let dataset_name = dataset.name_any();
    let Some(dataset_tier) = dataset.status.as_ref().and_then(|s| s.tier.clone()) else {
        return Ok(Err((
            "WaitingForDataset",
            format!("Dataset {dataset_name} is not placed on a StorageTier yet"),
        )));
    };
    let Some(dataset_tier) = find(&dataset_tier) else {
        return Ok(Err((
            "TierNotFound",
            format!("StorageTier {dataset_tier} of Dataset {dataset_name} not found"),
        )));
    };
    let output_tier = match &job.spec.output.tier {
        Some(tier) => tier.clone(),
        None => match default_output_tier(&tiers) {
            Some(tier) => tier,
            None => {
                return Ok(Err((
                    "TierNotFound",
                    "no StorageTier of class hot for the output; name one in spec.output.tier"
                        .to_owned(),
                )));
            }
        },
    };
    let Some(output) = find(&output_tier) else {
        return Ok(Err((
            "TierNotFound",
            format!("output StorageTier {output_tier} not found"),
        )));
    };
    let checkpoint_tier = job
        .spec
        .checkpoint
        .as_ref()
        .and_then(|c| c.tier.clone())
        .unwrap_or_else(|| output_tier.clone());
    let Some(checkpoint) = find(&checkpoint_tier) else {
        return Ok(Err((
            "TierNotFound",
            format!("checkpoint StorageTier {checkpoint_tier} not found"),
        )));
    };
    Ok(Ok(train_inputs(
        job,
        &dataset,
        dataset_tier,
        output,
        checkpoint,
    )))
}

/// Where the job reads and writes on the resolved tiers.
pub fn train_inputs(
    job: &TrainingJob,
    dataset: &Dataset,
    dataset_tier: &StorageTier,
    output_tier: &StorageTier,
    checkpoint_tier: &StorageTier,
) -> TrainInputs {
    let namespace = job.namespace().unwrap_or_default();
    let (data, out, checkpoints) = (
        TierAccess::for_tier(dataset_tier),
        TierAccess::for_tier(output_tier),
        TierAccess::for_tier(checkpoint_tier),
    );
    let output = &job.spec.output;
    let run = job.uid().unwrap_or_else(|| output.version.clone());
    let mut tiers = vec![data.clone()];
    for access in [&out, &checkpoints] {
        if !tiers.iter().any(|t| t.tier == access.tier) {
            tiers.push(access.clone());
        }
    }
    TrainInputs {
        dataset_uri: data.uri(
            StoredKind::Dataset,
            &namespace,
            &dataset.name_any(),
            dataset
                .status
                .as_ref()
                .and_then(|s| s.version.as_deref())
                .unwrap_or(DATASET_VERSION),
        ),
        out_uri: out.uri(
            StoredKind::Model,
            &namespace,
            &output.model_name,
            &output.version,
        ),
        checkpoint_uri: checkpoints.uri(StoredKind::Checkpoint, &namespace, &job.name_any(), &run),
        output_tier: output_tier.name_any(),
        tiers,
    }
}

/// Create the output Model, or mark a Model the user created for this job with where the
/// artifacts are. Returns why it could not be registered, if it could not.
async fn register_output(
    ctx: &Context,
    job: &TrainingJob,
    inputs: &TrainInputs,
    result: Option<&WorkerStatus>,
) -> Result<Option<String>, Error> {
    let namespace = job.namespace().unwrap_or_default();
    let models: Api<Model> = Api::namespaced(ctx.client.clone(), &namespace);
    let name = &job.spec.output.model_name;
    let wanted = output_model(job, inputs, result);
    match get_opt(&models, name).await? {
        None => {
            apply_child(&models, &wanted).await?;
        }
        Some(existing) => {
            let ours = ModelSource::TrainingJobRef(LocalObjectRef {
                name: job.name_any(),
            });
            if existing.spec.source != ours {
                return Ok(Some(format!(
                    "trained, but Model {name} already exists with another source; the weights are at {} and were not registered",
                    inputs.out_uri
                )));
            }
            // A merge patch of the annotations only: the Model's spec stays its author's.
            let mark = serde_json::json!({
                "metadata": {"annotations": model_annotations(inputs, result)},
            });
            models
                .patch(
                    name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&mark),
                )
                .await
                .map_err(|source| Error::Kube {
                    action: format!("marking Model {name} with its artifacts"),
                    source,
                })?;
        }
    }
    Ok(None)
}

/// The worker's progress, or `None` when it cannot be read now (the last value is kept).
async fn fetch_progress(ip: &str) -> Option<WorkerStatus> {
    let address = format!("{ip}:{PROGRESS_PORT}");
    let request = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&address).await.ok()?;
        let head = format!(
            "GET /progress HTTP/1.1\r\nHost: {address}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.take(1 << 20).read_to_end(&mut response).await.ok()?;
        Some(response)
    };
    let response = tokio::time::timeout(PROGRESS_TIMEOUT, request)
        .await
        .ok()??;
    parse_progress_response(&response)
}

/// The worker status in an HTTP/1.1 response to `GET /progress`; `None` unless it is a
/// `200` with a JSON body (chunked or not).
pub fn parse_progress_response(response: &[u8]) -> Option<WorkerStatus> {
    let text = std::str::from_utf8(response).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status_line = lines.next()?;
    if status_line.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    let chunked = lines.any(|line| {
        line.to_ascii_lowercase()
            .replace(' ', "")
            .starts_with("transfer-encoding:chunked")
    });
    if !chunked {
        return parse_worker_status(body);
    }
    let mut rest = body;
    let mut joined = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            break;
        }
        joined.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
    parse_worker_status(&joined)
}

/// Run the TrainingJob controller until the process is asked to stop. It reconciles on
/// changes to jobs, their pods, and the Datasets and Models they wait for.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));
    let controller = ctx
        .controller(
            "TrainingJob",
            Api::<TrainingJob>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(Api::<Pod>::all(client.clone()), managed)
        .graceful_shutdown_on(ctx.stopped());
    let jobs = controller.store();
    let jobs_for_models = jobs.clone();
    controller
        .watches(
            Api::<Dataset>::all(client.clone()),
            watcher::Config::default(),
            move |dataset| {
                let namespace = dataset.namespace();
                let name = dataset.name_any();
                jobs.state()
                    .into_iter()
                    .filter(|j| j.namespace() == namespace && j.spec.dataset_ref.name == name)
                    .map(|j| ObjectRef::from_obj(j.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .watches(
            Api::<Model>::all(client),
            watcher::Config::default(),
            move |model| {
                let namespace = model.namespace();
                let name = model.name_any();
                jobs_for_models
                    .state()
                    .into_iter()
                    .filter(|j| {
                        j.namespace() == namespace
                            && j.spec
                                .base_model_ref
                                .as_ref()
                                .is_some_and(|b| b.name == name)
                    })
                    .map(|j| ObjectRef::from_obj(j.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(instrumented("TrainingJob", reconcile), error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((job, _)) => tracing::debug!(job = %job, "reconciled TrainingJob"),
                Err(error) => tracing::warn!(%error, "TrainingJob reconcile failed"),
            }
        })
        .await;
}

/// Retry soon after an error (a conflict means another writer was first: read again).
pub fn error_policy(_job: Arc<TrainingJob>, _error: &Error, _ctx: Arc<Context>) -> Action {
    Action::requeue(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use aigc_crds::dataset::DatasetStatus;
    use aigc_crds::storage_tier::StorageTierSpec;
    use aigc_crds::training_job::TrainingJobSpec;
    use chrono::TimeZone;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
    };

    use super::*;

    fn job(spec: serde_json::Value) -> TrainingJob {
        let spec: TrainingJobSpec = serde_json::from_value(spec).unwrap();
        let mut job = TrainingJob::new("fraud", spec);
        job.metadata.namespace = Some("ml".into());
        job.metadata.uid = Some("uid-7".into());
        job.metadata.generation = Some(2);
        job
    }

    fn mlp_job() -> TrainingJob {
        job(serde_json::json!({
            "datasetRef": {"name": "quickstart-data"},
            "output": {"modelName": "fraud-model", "version": "1.0.0"},
            "architecture": "mlp",
            "task": "classification",
            "target": "label",
            "hyperparameters": {"epochs": 3, "batchSize": 16, "learningRate": 0.01, "seed": 7,
                "extra": {"hiddenLayers": [16, 8]}},
            "resources": {"accelerator": "gpu", "gpus": 1, "cpu": "2", "memory": "4Gi"},
            "checkpoint": {"everySteps": 10}
        }))
    }

    fn tier(name: &str, path: &str) -> StorageTier {
        let spec: StorageTierSpec = serde_json::from_value(serde_json::json!({
            "class": "hot", "backend": {"filesystem": {"path": path}}}))
        .unwrap();
        StorageTier::new(name, spec)
    }

    fn dataset(phase: Option<DatasetPhase>) -> Dataset {
        let spec = serde_json::from_value(serde_json::json!({
            "source": {"http": {"url": "http://data.example/x.csv"}}, "format": "csv"}))
        .unwrap();
        let mut d = Dataset::new("quickstart-data", spec);
        d.metadata.namespace = Some("ml".into());
        d.status = Some(DatasetStatus {
            phase,
            tier: Some("hot".into()),
            ..DatasetStatus::default()
        });
        d
    }

    fn inputs(job: &TrainingJob) -> TrainInputs {
        let hot = tier("hot", "/tiers/hot");
        let cold = tier("ckpt", "/tiers/ckpt");
        train_inputs(job, &dataset(Some(DatasetPhase::Ready)), &hot, &hot, &cold)
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap()
    }

    #[test]
    fn a_job_waits_for_its_dataset_by_name() {
        let job = mlp_job();
        assert_eq!(
            dependency_wait(&job, None, None),
            Some((
                "DatasetNotFound",
                "Dataset quickstart-data not found".to_owned()
            ))
        );
        let preparing = dataset(Some(DatasetPhase::Preparing));
        let (reason, message) = dependency_wait(&job, Some(&preparing), None).unwrap();
        assert_eq!(reason, "WaitingForDataset");
        assert!(message.contains("Preparing"), "{message}");
        let ready = dataset(Some(DatasetPhase::Ready));
        assert_eq!(dependency_wait(&job, Some(&ready), None), None);

        let mut fine_tune = job.clone();
        fine_tune.spec.base_model_ref = Some(LocalObjectRef {
            name: "minilm".into(),
        });
        assert_eq!(
            dependency_wait(&fine_tune, Some(&ready), None).map(|w| w.0),
            Some("BaseModelNotFound")
        );
    }

    #[test]
    fn train_args_name_the_tiers_hyperparameters_and_the_contract_endpoints() {
        let job = mlp_job();
        let inputs = inputs(&job);
        let args = train_args(&job, &inputs, 1, 0).unwrap();
        assert_eq!(
            args,
            [
                "train",
                "--dataset",
                "file:///tiers/hot/datasets/ml/quickstart-data/current",
                "--architecture",
                "mlp",
                "--out",
                "file:///tiers/hot/models/ml/fraud-model/1.0.0",
                "--checkpoint-dir",
                "file:///tiers/ckpt/checkpoints/ml/fraud/uid-7",
                "--checkpoint-every",
                "10",
                "--epochs",
                "3",
                "--batch-size",
                "16",
                "--lr",
                "0.01",
                "--seed",
                "7",
                "--target",
                "label",
                "--task",
                "classification",
                "--hidden",
                "16,8",
                "--termination-message-path",
                "/dev/termination-log",
                "--progress-listen",
                "$(POD_IP):9090",
            ]
        );
        let retry = train_args(&job, &inputs, 2, 0).unwrap();
        assert_eq!(retry.last().map(String::as_str), Some("--resume"));
        let second = train_args(&job, &inputs, 1, 1).unwrap();
        assert!(
            second.contains(&"file:///tiers/hot/models/ml/fraud-model/1.0.0-replica-1".to_owned())
        );
    }

    #[test]
    fn unsupported_settings_are_rejected_with_what_is_accepted() {
        let mut job = mlp_job();
        job.spec
            .hyperparameters
            .extra
            .insert("dropout".into(), serde_json::json!(0.1));
        let err = train_args(&job, &inputs(&job), 1, 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hyperparameters.extra.dropout") && err.contains("hiddenLayers"),
            "{err}"
        );
        let mut long = mlp_job();
        long.metadata.name = Some("x".repeat(64));
        let err = train_args(&long, &inputs(&long), 1, 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("64 characters") && err.contains("at most 63"),
            "{err}"
        );
        let mut bert = mlp_job();
        bert.spec.architecture = Architecture::Bert;
        let err = train_args(&bert, &inputs(&bert), 1, 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"bert\"") && err.contains("mlp and char-transformer"),
            "{err}"
        );
    }

    #[test]
    fn gpu_pods_are_pinned_hardened_and_carry_their_attempt() {
        let job = mlp_job();
        let pod = desired_pod(
            &job,
            &inputs(&job),
            &WorkerImages::default(),
            2,
            0,
            "local-gpu",
            Device::Gpu,
        )
        .unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("fraud-a2-r0"));
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[ATTEMPT_LABEL], "2");
        assert_eq!(labels[TRAINING_JOB_LABEL], "fraud");
        assert_eq!(labels[MANAGED_BY_LABEL], "aigc-operator");
        assert_eq!(
            pod.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-7"
        );
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("local-gpu"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert!(spec.affinity.is_some());
        assert_eq!(
            spec.tolerations.as_ref().unwrap()[0].key.as_deref(),
            Some("nvidia.com/gpu")
        );
        let container = &spec.containers[0];
        let requests = container
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap();
        assert_eq!(requests["nvidia.com/gpu"].0, "1");
        assert_eq!(requests["cpu"].0, "2");
        assert_eq!(container.env.as_ref().unwrap()[0].name, "POD_IP");
        assert!(
            container
                .args
                .as_ref()
                .unwrap()
                .contains(&"--resume".to_owned())
        );
        let mounts: Vec<&str> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, ["/tmp", "/tiers/hot", "/tiers/ckpt"]);
        assert_eq!(
            container
                .security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );

        let cpu = desired_pod(
            &job,
            &inputs(&job),
            &WorkerImages::default(),
            1,
            0,
            "local-cpu",
            Device::Cpu,
        )
        .unwrap();
        let spec = cpu.spec.unwrap();
        assert!(spec.tolerations.is_none());
        let requests = spec.containers[0]
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap();
        assert!(!requests.contains_key("nvidia.com/gpu"));
    }

    #[test]
    fn progress_responses_parse_plain_and_chunked() {
        let body = r#"{"phase":"Running","device":"cpu","epoch":1,"epochs":3,"step":40,"totalSteps":120,"progress":0.33,"trainLoss":0.52,"metric":0.8,"etaSeconds":200}"#;
        let plain = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let status = parse_progress_response(plain.as_bytes()).unwrap();
        let progress = progress_of(&status);
        assert_eq!(progress.epoch, Some(2));
        assert_eq!(progress.step_text.as_deref(), Some("40/120"));
        assert_eq!(progress.loss, Some(0.52));
        assert_eq!(progress.eta.as_deref(), Some("3m20s"));

        let (a, b) = body.split_at(30);
        let chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        );
        assert_eq!(parse_progress_response(chunked.as_bytes()), Some(status));
        assert_eq!(
            parse_progress_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\n{}"),
            None
        );
        assert_eq!(
            parse_progress_response(b"HTTP/1.1 200 OK\r\n\r\nnot json"),
            None
        );
    }

    fn pod(attempt: u32, replica: u32, phase: &str, message: Option<&str>) -> Pod {
        let job = mlp_job();
        let mut pod = desired_pod(
            &job,
            &inputs(&job),
            &WorkerImages::default(),
            attempt,
            replica,
            "n",
            Device::Cpu,
        )
        .unwrap();
        pod.status = Some(PodStatus {
            phase: Some(phase.into()),
            pod_ip: Some("127.1.0.9".into()),
            container_statuses: message.map(|m| {
                vec![ContainerStatus {
                    name: "worker".into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: 1,
                            message: Some(m.into()),
                            ..ContainerStateTerminated::default()
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]
            }),
            ..PodStatus::default()
        });
        pod
    }

    #[test]
    fn attempts_are_read_from_their_own_pods() {
        let pods = vec![
            pod(
                1,
                0,
                "Failed",
                Some(r#"{"phase":"Failed","error":"dataset has no column label"}"#),
            ),
            pod(2, 0, "Running", None),
        ];
        let second = attempt_state(&pods, 2, 2);
        assert_eq!(second.missing, [1]);
        assert!(second.running && second.failure.is_none());
        assert_eq!(second.progress_ip.as_deref(), Some("127.1.0.9"));
        let first = attempt_state(&pods, 1, 1);
        assert_eq!(
            first.failure.as_deref(),
            Some("pod fraud-a1-r0: dataset has no column label")
        );
        let done = attempt_state(
            &[pod(
                3,
                0,
                "Succeeded",
                Some(r#"{"phase":"Succeeded","model":"file:///m","manifestDigest":"sha256:ab"}"#),
            )],
            3,
            1,
        );
        assert!(done.succeeded);
        assert_eq!(
            done.result.unwrap().manifest_digest.as_deref(),
            Some("sha256:ab")
        );
    }

    #[test]
    fn failures_retry_until_the_backoff_limit() {
        let mut job = mlp_job();
        job.spec.backoff_limit = 1;
        job.status = Some(TrainingJobStatus {
            phase: Some(TrainingJobPhase::Running),
            attempts: Some(1),
            ..TrainingJobStatus::default()
        });
        let retry = failed_attempt_status(&job, "pod fraud-a1-r0: boom", now());
        assert_eq!(retry.phase, Some(TrainingJobPhase::Admitted));
        assert_eq!((retry.attempts, retry.failures), (Some(2), Some(1)));
        assert_eq!(
            find_condition(&retry.conditions, FAILED).unwrap().reason,
            "Retrying"
        );
        job.status = Some(retry);
        let failed = failed_attempt_status(&job, "pod fraud-a2-r0: boom", now());
        assert_eq!(failed.phase, Some(TrainingJobPhase::Failed));
        let condition = find_condition(&failed.conditions, FAILED).unwrap();
        assert_eq!(condition.reason, "BackoffLimitExceeded");
        assert!(condition.message.contains("boom"), "{}", condition.message);
        assert!(failed.completion_time.is_some());
    }

    #[test]
    fn the_deadline_counts_from_the_first_start() {
        let mut job = mlp_job();
        job.spec.active_deadline_seconds = Some(60);
        assert_eq!(deadline_exceeded(&job, now()), None);
        job.status = Some(TrainingJobStatus {
            start_time: Some("2026-12-04T11:59:30Z".into()),
            ..TrainingJobStatus::default()
        });
        assert_eq!(deadline_exceeded(&job, now()), None);
        job.status.as_mut().unwrap().start_time = Some("2026-12-04T11:58:00Z".into());
        let message = deadline_exceeded(&job, now()).unwrap();
        assert!(
            message.contains("ran 120s") && message.contains("activeDeadlineSeconds is 60"),
            "{message}"
        );
    }

    #[test]
    fn the_output_model_is_sourced_from_the_job_on_the_output_tier() {
        let mut job = mlp_job();
        job.spec.task = None;
        let result = WorkerStatus {
            metric_name: Some("rmse".into()),
            model: Some("file:///tiers/hot/models/ml/fraud-model/1.0.0".into()),
            manifest_digest: Some("sha256:0f".into()),
            ..WorkerStatus::default()
        };
        let model = output_model(&job, &inputs(&job), Some(&result));
        assert_eq!(model.metadata.name.as_deref(), Some("fraud-model"));
        assert_eq!(
            model.spec.source,
            ModelSource::TrainingJobRef(LocalObjectRef {
                name: "fraud".into()
            })
        );
        assert_eq!(model.spec.task, Task::Regression);
        assert_eq!(model.spec.placement.as_ref().unwrap().tier, "hot");
        let annotations = model.metadata.annotations.unwrap();
        assert_eq!(annotations[MANIFEST_DIGEST_ANNOTATION], "sha256:0f");
        let status = succeeded_status(&job, Some(&result), None, now());
        assert_eq!(status.phase, Some(TrainingJobPhase::Succeeded));
        assert_eq!(status.model_ref.unwrap().name, "fraud-model");
    }

    #[test]
    fn the_default_output_tier_is_the_first_hot_one() {
        let mut cold = tier("a-cold", "/c");
        cold.spec.class = TierClass::Cold;
        let tiers = [tier("zeta", "/z"), cold, tier("beta", "/b")];
        assert_eq!(default_output_tier(&tiers).as_deref(), Some("beta"));
    }
}
