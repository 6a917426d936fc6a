//! Model controller: verifies each Model's artifact and records what it is.
//!
//! - A Model whose source is a TrainingJob becomes Ready when that job's status says
//!   `Succeeded` (the trainer writes the artifact with its manifest), Failed when it failed.
//! - A Model from S3 or a PVC is imported onto its placement tier and verified by one Job:
//!   an init container copies it with `aigc-worker transfer` (every object checked against the
//!   manifest at the destination; the source is kept), then `aigc-worker inspect` checks the
//!   manifest again, parses the artifact as its format, and leaves
//!   `{format, architecture, parameters, sizeBytes, manifestDigest, task}` as its termination
//!   message, which becomes the status.
//!
//! The artifact lives at `models/<namespace>/<name>/<spec.version>` on its tier, where
//! InferenceServices read it. `servedBy` lists the InferenceServices that name the Model;
//! they and the TrainingJobs fine-tuning from it count as access for the tier policy.
//! Tier moves are followed into `status.tier` and a finalizer holds deletion while one runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aigc_crds::common::{Accelerator, LocalObjectRef};
use aigc_crds::inference_service::InferenceService;
use aigc_crds::model::{Model, ModelFormat, ModelPhase, ModelSource, ModelSpec, ModelStatus};
use aigc_crds::storage_tier::StorageTier;
use aigc_crds::training_job::{TrainingJob, TrainingJobPhase};
use aigc_crds::{Condition, ConditionStatus, condition::find_condition, condition::set_condition};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::controllers::cache::Caches;
use crate::controllers::placement::{
    Blocker, check_one_s3_endpoint, placement_tier, pvc_source, s3_source,
};
use crate::controllers::worker_job::{
    Consumer, JobOutcome, MoveView, ROLE_LABEL, Role, TERMINATION_LOG, TIER_ANNOTATION,
    access_time, current_move, finished, job_name, job_outcome, job_pods, last_access, later,
    move_status, spec_hash, worker_job,
};
use crate::controllers::{
    Context, add_finalizer, apply_child, apply_status, delete_if_present, get_opt, instrumented,
    publish, remove_finalizer,
};
use crate::layout::{StoredKind, TierAccess};
use crate::worker_pod::{WorkerImages, worker_pod_spec};

/// Finalizer that holds a Model while its artifact is moving between tiers.
pub const FINALIZER: &str = "aigc.dev/tier-move";

#[derive(Serialize)]
struct Shape<'a> {
    source: &'a ModelSource,
    format: ModelFormat,
    version: &'a str,
    tier: &'a str,
}

/// Hash of the spec fields the verification depends on, with the tier it is verified on.
pub fn verification_hash(spec: &ModelSpec, tier: &str) -> String {
    spec_hash(&Shape {
        source: &spec.source,
        format: spec.format,
        version: &spec.version,
        tier,
    })
}

fn format_name(format: ModelFormat) -> &'static str {
    match format {
        ModelFormat::Gguf => "gguf",
        ModelFormat::Safetensors => "safetensors",
    }
}

/// The tier a Model belongs on: `spec.placement`, else the TrainingJob's output tier, else
/// the first hot tier.
pub fn model_tier<'a>(
    model: &Model,
    training_job: Option<&TrainingJob>,
    tiers: &'a [StorageTier],
) -> Result<&'a StorageTier, Blocker> {
    let from_job = training_job
        .and_then(|j| j.spec.output.tier.clone())
        .map(|tier| aigc_crds::common::Placement { tier });
    placement_tier(model.spec.placement.as_ref().or(from_job.as_ref()), tiers)
}

/// The import-and-verify Job of a Model from S3 or a PVC; `None` for TrainingJob outputs.
pub fn desired_verify_job(
    model: &Model,
    hash: &str,
    tier: &TierAccess,
    images: &WorkerImages,
) -> Result<Option<Job>, Blocker> {
    let source = match &model.spec.source {
        ModelSource::S3(s3) => s3_source(s3),
        ModelSource::Pvc(pvc) => pvc_source(pvc, true),
        ModelSource::TrainingJobRef(_) => return Ok(None),
    };
    check_one_s3_endpoint(&[&source, tier])?;
    let namespace = model.namespace().unwrap_or_default();
    let name = model.name_any();
    let uri = tier.uri(StoredKind::Model, &namespace, &name, &model.spec.version);
    let inspect = vec![
        "inspect".to_owned(),
        "--model".to_owned(),
        uri.clone(),
        "--format".to_owned(),
        format_name(model.spec.format).to_owned(),
        "--termination-message-path".to_owned(),
        TERMINATION_LOG.to_owned(),
    ];
    let import = vec![
        "transfer".to_owned(),
        "--from".to_owned(),
        source.root_uri.clone(),
        "--to".to_owned(),
        uri,
    ];
    let mut pod = worker_pod_spec(
        images,
        inspect,
        &Default::default(),
        Accelerator::Cpu,
        &[&source, tier],
    );
    let mut importer = pod.containers[0].clone();
    importer.name = "import".to_owned();
    importer.args = Some(import);
    pod.init_containers = Some(vec![importer]);
    let owner = model.controller_owner_ref(&()).ok_or(Blocker {
        reason: "NoUid",
        message: "the Model has no uid yet".to_owned(),
    })?;
    Ok(Some(worker_job(
        job_name(&name, Role::Verify, hash),
        namespace,
        owner,
        Role::Verify,
        BTreeMap::from([(TIER_ANNOTATION.to_owned(), tier.tier.clone())]),
        pod,
    )))
}

/// What `aigc-worker inspect` leaves as its termination message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InspectSummary {
    /// Format the artifact parsed as.
    pub format: Option<String>,
    /// Architecture read from the artifact.
    pub architecture: Option<String>,
    /// Number of parameters.
    pub parameters: Option<u64>,
    /// Total bytes.
    pub size_bytes: Option<u64>,
    /// `sha256:` digest of the manifest.
    pub manifest_digest: Option<String>,
    /// Why verification failed.
    pub error: Option<String>,
}

/// Where verification of the current spec stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Verification {
    /// It cannot start, or waits for the TrainingJob.
    Blocked(Blocker),
    /// The verify Job is running.
    Running {
        /// Destination tier.
        tier: String,
    },
    /// Verified now: by the inspect summary, or (`None`) by the TrainingJob that wrote it.
    Done {
        /// Tier holding it.
        tier: String,
        /// What inspect found.
        summary: Option<InspectSummary>,
        /// How it was verified, for the condition.
        how: String,
    },
    /// Verification failed.
    Failed {
        /// CamelCase reason.
        reason: String,
        /// What went wrong.
        message: String,
    },
    /// The status already describes this spec.
    Recorded,
}

/// Verification of a TrainingJob's output as the job's status shows it.
pub fn verification_of_training(
    job_name: &str,
    job: Option<&TrainingJob>,
    tier: &str,
) -> Verification {
    let Some(job) = job else {
        return Verification::Blocked(Blocker {
            reason: "TrainingJobNotFound",
            message: format!(
                "spec.source.trainingJobRef: TrainingJob {job_name:?} does not exist in this namespace"
            ),
        });
    };
    let status = job.status.clone().unwrap_or_default();
    match status.phase {
        Some(TrainingJobPhase::Succeeded) => Verification::Done {
            tier: tier.to_owned(),
            summary: None,
            how: format!("written by TrainingJob {job_name}, which succeeded"),
        },
        Some(TrainingJobPhase::Failed) => {
            let why = find_condition(&status.conditions, "Failed")
                .map(|c| c.message.clone())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "see its conditions".to_owned());
            Verification::Failed {
                reason: "TrainingJobFailed".to_owned(),
                message: format!("TrainingJob {job_name} failed: {why}"),
            }
        }
        phase => Verification::Blocked(Blocker {
            reason: "WaitingForTrainingJob",
            message: format!(
                "TrainingJob {job_name} is {}",
                phase.map_or("not started".to_owned(), |p| format!("{p:?}"))
            ),
        }),
    }
}

/// Verification as the verify Job shows it.
pub fn verification_of_job(spec: &ModelSpec, tier: &str, outcome: JobOutcome) -> Verification {
    let parse = |message: &str| {
        serde_json::from_str::<InspectSummary>(message).map_err(|e| {
            let head: String = message.chars().take(200).collect();
            format!("the termination message is not an inspect summary ({e}): {head:?}")
        })
    };
    match outcome {
        JobOutcome::Running => Verification::Running {
            tier: tier.to_owned(),
        },
        JobOutcome::Succeeded { message: None } => Verification::Failed {
            reason: "NoSummary".to_owned(),
            message: "the verify Job succeeded but its pod left no termination message".to_owned(),
        },
        JobOutcome::Succeeded {
            message: Some(message),
        } => match parse(&message) {
            Err(message) => Verification::Failed {
                reason: "UnreadableSummary".to_owned(),
                message,
            },
            Ok(InspectSummary {
                error: Some(error), ..
            }) => Verification::Failed {
                reason: "VerificationFailed".to_owned(),
                message: error,
            },
            Ok(summary) => {
                let declared = format_name(spec.format);
                match summary.format.as_deref() {
                    Some(found) if !found.eq_ignore_ascii_case(declared) => Verification::Failed {
                        reason: "FormatMismatch".to_owned(),
                        message: format!(
                            "spec.format is {declared} but the artifact parses as {found}"
                        ),
                    },
                    _ => Verification::Done {
                        tier: tier.to_owned(),
                        how: "manifest and format verified by aigc-worker inspect".to_owned(),
                        summary: Some(summary),
                    },
                }
            }
        },
        JobOutcome::Failed { reason, message } => match parse(&message) {
            Ok(InspectSummary {
                error: Some(error), ..
            }) => Verification::Failed {
                reason: "VerificationFailed".to_owned(),
                message: error,
            },
            _ => Verification::Failed { reason, message },
        },
    }
}

/// Consumers of a Model: the InferenceServices serving it (in use while they have replicas)
/// and the TrainingJobs fine-tuning from it.
pub fn model_consumers(
    name: &str,
    services: &[InferenceService],
    training_jobs: &[TrainingJob],
    now: DateTime<Utc>,
) -> (Vec<LocalObjectRef>, Option<String>) {
    let mut served_by: Vec<String> = services
        .iter()
        .filter(|s| {
            s.spec.model_ref.name == name
                || s.spec
                    .canary
                    .as_ref()
                    .is_some_and(|c| c.model_ref.name == name)
        })
        .map(|s| s.name_any())
        .collect();
    served_by.sort();
    served_by.dedup();
    let serving = services.iter().any(|s| {
        s.spec.replicas > 0
            && (s.spec.model_ref.name == name
                || s.spec
                    .canary
                    .as_ref()
                    .is_some_and(|c| c.model_ref.name == name))
    });
    let readers: Vec<Consumer> = training_jobs
        .iter()
        .filter(|j| {
            j.spec
                .base_model_ref
                .as_ref()
                .is_some_and(|r| r.name == name)
        })
        .map(Consumer::of)
        .collect();
    let access = later(
        last_access(&readers, now),
        serving.then(|| access_time(now)),
    );
    (
        served_by
            .into_iter()
            .map(|name| LocalObjectRef { name })
            .collect(),
        access,
    )
}

/// The status to write.
pub fn desired_status(
    model: &Model,
    hash: &str,
    verification: &Verification,
    moving: Option<&MoveView>,
    served_by: Vec<LocalObjectRef>,
    accessed: Option<String>,
    now: DateTime<Utc>,
) -> ModelStatus {
    let generation = model.metadata.generation;
    let mut status = model.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    let cond = |type_: &str, s, reason: &str, message: String| {
        Condition::new(type_, s, reason, message, generation, now)
    };
    match verification {
        Verification::Blocked(blocker) => {
            status.phase = Some(ModelPhase::Pending);
            set_condition(
                &mut status.conditions,
                cond(
                    "Ready",
                    ConditionStatus::False,
                    blocker.reason,
                    blocker.message.clone(),
                ),
            );
        }
        Verification::Running { tier } => {
            status.phase = Some(ModelPhase::Verifying);
            let message = format!("importing and verifying the artifact on tier {tier}");
            set_condition(
                &mut status.conditions,
                cond(
                    "Validated",
                    ConditionStatus::Unknown,
                    "Verifying",
                    message.clone(),
                ),
            );
            set_condition(
                &mut status.conditions,
                cond("Ready", ConditionStatus::False, "Verifying", message),
            );
        }
        Verification::Done { tier, summary, how } => {
            status.phase = Some(ModelPhase::Ready);
            status.tier = Some(tier.clone());
            status.verified_for = Some(hash.to_owned());
            if let Some(summary) = summary {
                status.size_bytes = summary.size_bytes;
                status.parameters = summary.parameters;
                status.manifest_digest = summary.manifest_digest.clone();
            }
            status.last_access_time = later(status.last_access_time.take(), Some(access_time(now)));
            set_condition(
                &mut status.conditions,
                cond("Validated", ConditionStatus::True, "Verified", how.clone()),
            );
            let mut message = format!(
                "{} {} version {} on tier {tier}",
                format_name(model.spec.format),
                serde_json::to_string(&model.spec.architecture)
                    .unwrap_or_default()
                    .trim_matches('"'),
                model.spec.version
            );
            if let (Some(p), Some(b)) = (status.parameters, status.size_bytes) {
                message.push_str(&format!(": {p} parameters, {b} bytes"));
            }
            set_condition(
                &mut status.conditions,
                cond("Ready", ConditionStatus::True, "Verified", message),
            );
        }
        Verification::Failed { reason, message } => {
            status.phase = Some(ModelPhase::Failed);
            set_condition(
                &mut status.conditions,
                cond("Validated", ConditionStatus::False, reason, message.clone()),
            );
            set_condition(
                &mut status.conditions,
                cond("Ready", ConditionStatus::False, reason, message.clone()),
            );
        }
        Verification::Recorded => {}
    }
    if matches!(
        verification,
        Verification::Recorded | Verification::Done { .. }
    ) {
        status.phase = Some(ModelPhase::Ready);
        if let Some(mv) = moving {
            let (tier, migrating, condition) =
                move_status(status.tier.as_deref(), mv, generation, now);
            status.tier = tier;
            if migrating {
                status.phase = Some(ModelPhase::Migrating);
            }
            set_condition(&mut status.conditions, condition);
        }
    }
    status.served_by = served_by;
    status.last_access_time = later(status.last_access_time.take(), accessed);
    status
}

/// Verify one Model, or follow what is running for it, and write its status.
pub async fn reconcile(model: Arc<Model>, state: Arc<State>) -> Result<Action, Error> {
    let ctx = &state.ctx;
    let namespace = model.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<Model> = Api::namespaced(ctx.client.clone(), &namespace);
    if model.metadata.deletion_timestamp.is_some() {
        let uid = model.uid().unwrap_or_default();
        let jobs = state.caches.jobs_of(&namespace, &uid);
        if let Some(job) = jobs.iter().find(|j| is_move(j) && !finished(j)) {
            return Err(Error::MoveInProgress {
                kind: "Model",
                name: model.name_any(),
                job: job.name_any(),
            });
        }
        remove_finalizer(&api, model.as_ref(), FINALIZER).await?;
        return Ok(Action::await_change());
    }
    add_finalizer(&api, model.as_ref(), FINALIZER).await?;
    apply(model, &state, &namespace).await
}

/// What the Model controller's reconciles share: the context and the watched views.
pub struct State {
    /// Client, configuration and recorder.
    pub ctx: Arc<Context>,
    /// StorageTiers, worker Jobs, TrainingJobs and InferenceServices.
    pub caches: Caches,
}

impl AsRef<Context> for State {
    fn as_ref(&self) -> &Context {
        &self.ctx
    }
}

fn is_move(job: &Job) -> bool {
    job.labels().get(ROLE_LABEL).map(String::as_str) == Some(Role::Move.as_str())
}

async fn apply(model: Arc<Model>, state: &State, namespace: &str) -> Result<Action, Error> {
    let ctx = &state.ctx;
    let client = &ctx.client;
    let tiers = state.caches.tiers();
    let training_jobs = state.caches.training_jobs_in(namespace);
    let services = state.caches.services_in(namespace);
    let uid = model.uid().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(client.clone(), namespace);
    let jobs = state.caches.jobs_of(namespace, &uid);
    let old = model.status.clone().unwrap_or_default();
    let producer = match &model.spec.source {
        ModelSource::TrainingJobRef(r) => Some(r.name.as_str()),
        _ => None,
    };
    // Read fresh: its phase decides readiness and must not lag the event that brought us here.
    let producer_job = match producer {
        Some(p) => {
            get_opt(
                &Api::<TrainingJob>::namespaced(client.clone(), namespace),
                p,
            )
            .await?
        }
        None => None,
    };
    let producer_job = producer_job.as_ref();
    let (hash, verification) = match model_tier(&model, producer_job, &tiers) {
        Err(blocker) => (String::new(), Verification::Blocked(blocker)),
        Ok(tier) => {
            let hash = verification_hash(&model.spec, &tier.name_any());
            let recorded = old.verified_for.as_deref() == Some(hash.as_str())
                && matches!(old.phase, Some(ModelPhase::Ready | ModelPhase::Migrating));
            let access = TierAccess::for_tier(tier);
            let verification = if recorded {
                Verification::Recorded
            } else if let Some(producer) = producer {
                verification_of_training(producer, producer_job, &access.tier)
            } else {
                match desired_verify_job(&model, &hash, &access, &ctx.config.worker_images) {
                    Err(blocker) => Verification::Blocked(blocker),
                    Ok(None) => Verification::Recorded,
                    Ok(Some(wanted)) => {
                        let name = wanted.name_any();
                        let job = match get_opt(&jobs_api, &name).await? {
                            Some(job) => job,
                            None => {
                                let job = apply_child(&jobs_api, &wanted).await?;
                                publish(
                                    &ctx.recorder,
                                    model.as_ref(),
                                    EventType::Normal,
                                    "Verifying",
                                    format!(
                                        "started Job {name} to import and verify the artifact on tier {}",
                                        access.tier
                                    ),
                                )
                                .await;
                                job
                            }
                        };
                        let outcome = match job_outcome(&job, &[]) {
                            JobOutcome::Running => JobOutcome::Running,
                            _ => job_outcome(&job, &job_pods(client, namespace, &name).await?),
                        };
                        verification_of_job(&model.spec, &access.tier, outcome)
                    }
                }
            };
            (hash, verification)
        }
    };
    let moving = current_move(client, namespace, &jobs).await?;
    let now = Utc::now();
    let (served_by, accessed) = model_consumers(&model.name_any(), &services, &training_jobs, now);
    let status = desired_status(
        &model,
        &hash,
        &verification,
        moving.as_ref(),
        served_by,
        accessed,
        now,
    );
    publish_transition(ctx, &model, &old, &status).await;
    if model.status.as_ref() != Some(&status) {
        let api: Api<Model> = Api::namespaced(client.clone(), namespace);
        apply_status(&api, model.as_ref(), &status).await?;
    }
    let verified = status.verified_for.as_deref() == Some(hash.as_str())
        && matches!(
            status.phase,
            Some(ModelPhase::Ready | ModelPhase::Migrating)
        );
    for job in &jobs {
        let stale_verify = job.labels().get(ROLE_LABEL).map(String::as_str)
            == Some(Role::Verify.as_str())
            && verified
            && job.name_any() != job_name(&model.name_any(), Role::Verify, &hash);
        let recorded_move = is_move(job)
            && finished(job)
            && old.tier == status.tier
            && moving.as_ref().is_some_and(|m| m.job == job.name_any());
        if stale_verify || recorded_move {
            delete_if_present(&jobs_api, &job.name_any()).await?;
        }
    }
    Ok(match status.phase {
        Some(ModelPhase::Ready) => Action::requeue(Duration::from_secs(600)),
        _ => Action::requeue(Duration::from_secs(60)),
    })
}

async fn publish_transition(ctx: &Context, model: &Model, old: &ModelStatus, new: &ModelStatus) {
    let key = |s: &ModelStatus, type_: &str| {
        find_condition(&s.conditions, type_).map(|c| (c.status, c.reason.clone()))
    };
    for type_ in ["Ready", "Migrating"] {
        let Some(condition) = find_condition(&new.conditions, type_) else {
            continue;
        };
        if key(old, type_) == key(new, type_) {
            continue;
        }
        let warning = new.phase == Some(ModelPhase::Failed) || condition.reason == "MoveFailed";
        let type_ = if warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish(
            &ctx.recorder,
            model,
            type_,
            &condition.reason,
            condition.message.clone(),
        )
        .await;
    }
}

/// Retry soon after an error.
pub fn error_policy(_model: Arc<Model>, error: &Error, _state: Arc<State>) -> Action {
    tracing::debug!(%error, "Model reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// Run the Model controller until the process is asked to stop. It reconciles on changes to
/// Models, their Jobs, the TrainingJobs that produce or fine-tune them and the
/// InferenceServices that serve them. `caches` are shared with the Dataset controller; the
/// caller keeps them current (see [`Caches::new`]).
pub async fn run(ctx: Arc<Context>, caches: Caches) {
    let client = ctx.client.clone();
    let stopped = ctx.stopped();
    // Built here so `/readyz` waits for its cache and `/metrics` lists the kind.
    let controller = ctx.controller(
        "Model",
        Api::<Model>::all(client.clone()),
        watcher::Config::default(),
    );
    let state = Arc::new(State {
        ctx,
        caches: caches.clone(),
    });
    // Job triggers come from the shared view, so a reconcile always finds the change there.
    let job_changes = caches.job_changes();
    caches.ready().await;
    controller
        .owns_stream(job_changes)
        .watches(
            Api::<TrainingJob>::all(client.clone()),
            watcher::Config::default(),
            |job| {
                let namespace = job.namespace().unwrap_or_default();
                let mut names = vec![job.spec.output.model_name.clone()];
                names.extend(job.spec.base_model_ref.iter().map(|r| r.name.clone()));
                if let Some(r) = job.status.as_ref().and_then(|s| s.model_ref.as_ref()) {
                    names.push(r.name.clone());
                }
                names
                    .into_iter()
                    .map(move |name| ObjectRef::new(&name).within(&namespace))
            },
        )
        .watches(
            Api::<InferenceService>::all(client),
            watcher::Config::default(),
            |isvc| {
                let namespace = isvc.namespace().unwrap_or_default();
                let mut names = vec![isvc.spec.model_ref.name.clone()];
                names.extend(isvc.spec.canary.iter().map(|c| c.model_ref.name.clone()));
                names
                    .into_iter()
                    .map(move |name| ObjectRef::new(&name).within(&namespace))
            },
        )
        .graceful_shutdown_on(stopped)
        .run(instrumented("Model", reconcile), error_policy, state)
        .for_each(|result| async move {
            match result {
                Ok((model, _)) => tracing::debug!(model = %model, "reconciled Model"),
                Err(error) => tracing::warn!(%error, "Model reconcile failed"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use aigc_crds::storage_tier::StorageTierSpec;
    use chrono::TimeZone;

    fn model(source: serde_json::Value) -> Model {
        let mut m = Model::new(
            "chat",
            serde_json::from_value(serde_json::json!({
                "source": source, "format": "gguf", "architecture": "llama",
                "task": "text-generation", "version": "1.0.0"
            }))
            .unwrap(),
        );
        m.metadata.namespace = Some("ml".into());
        m.metadata.uid = Some("uid-m".into());
        m.metadata.generation = Some(2);
        m
    }

    fn tier(name: &str) -> StorageTier {
        let spec: StorageTierSpec = serde_json::from_value(serde_json::json!({
            "class": "hot", "backend": {"filesystem": {"path": format!("/tiers/{name}")}}
        }))
        .unwrap();
        StorageTier::new(name, spec)
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 30).unwrap()
    }

    fn training_job(phase: &str) -> TrainingJob {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "aigc.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "ft", "namespace": "ml"},
            "spec": {"datasetRef": {"name": "d"}, "architecture": "mlp",
                     "output": {"modelName": "chat", "version": "1", "tier": "fast"},
                     "hyperparameters": {}},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    #[test]
    fn an_s3_model_is_imported_then_inspected_on_its_tier() {
        let m = model(
            serde_json::json!({"s3": {"uri": "s3://models/smollm2/", "endpoint": "http://127.0.0.1:9000"}}),
        );
        let access = TierAccess::for_tier(&tier("hot"));
        let job = desired_verify_job(&m, "h1", &access, &WorkerImages::default())
            .unwrap()
            .unwrap();
        assert_eq!(job.name_any(), "chat-verify-h1");
        let pod = job.spec.unwrap().template.spec.unwrap();
        let import = &pod.init_containers.as_ref().unwrap()[0];
        assert_eq!(
            import.args.as_deref().unwrap(),
            [
                "transfer",
                "--from",
                "s3://models/smollm2",
                "--to",
                "file:///tiers/hot/models/ml/chat/1.0.0"
            ]
        );
        assert_eq!(
            pod.containers[0].args.as_deref().unwrap(),
            [
                "inspect",
                "--model",
                "file:///tiers/hot/models/ml/chat/1.0.0",
                "--format",
                "gguf",
                "--termination-message-path",
                "/dev/termination-log"
            ]
        );
        let env: Vec<&str> = pod.containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(env, ["AWS_REGION", "AWS_ENDPOINT_URL"]);
        let trained = model(serde_json::json!({"trainingJobRef": {"name": "ft"}}));
        assert_eq!(
            desired_verify_job(&trained, "h", &access, &WorkerImages::default()),
            Ok(None)
        );
    }

    #[test]
    fn the_inspect_summary_becomes_the_status() {
        let m = model(serde_json::json!({"pvc": {"claimName": "weights"}}));
        let message = r#"{"format":"gguf","architecture":"llama","parameters":134515008,"sizeBytes":88000000,"manifestDigest":"sha256:cd","task":"text-generation"}"#;
        let v = verification_of_job(
            &m.spec,
            "hot",
            JobOutcome::Succeeded {
                message: Some(message.into()),
            },
        );
        let status = desired_status(&m, "h1", &v, None, vec![], None, now());
        assert_eq!(status.phase, Some(ModelPhase::Ready));
        assert_eq!(
            (status.parameters, status.size_bytes),
            (Some(134_515_008), Some(88_000_000))
        );
        assert_eq!(status.manifest_digest.as_deref(), Some("sha256:cd"));
        assert_eq!(status.verified_for.as_deref(), Some("h1"));
        let ready = find_condition(&status.conditions, "Ready").unwrap();
        assert_eq!(
            ready.message,
            "gguf llama version 1.0.0 on tier hot: 134515008 parameters, 88000000 bytes"
        );
        assert_eq!(ready.observed_generation, Some(2));

        let wrong = r#"{"format":"safetensors","parameters":1}"#;
        let v = verification_of_job(
            &m.spec,
            "hot",
            JobOutcome::Succeeded {
                message: Some(wrong.into()),
            },
        );
        let status = desired_status(&m, "h1", &v, None, vec![], None, now());
        assert_eq!(status.phase, Some(ModelPhase::Failed));
        let ready = find_condition(&status.conditions, "Ready").unwrap();
        assert_eq!(ready.reason, "FormatMismatch");
        let failed = verification_of_job(
            &m.spec,
            "hot",
            JobOutcome::Failed {
                reason: "BackoffLimitExceeded".into(),
                message: r#"{"error":"models/ml/chat/1.0.0/model.gguf: sha256 differs from the manifest"}"#.into(),
            },
        );
        assert_eq!(
            failed,
            Verification::Failed {
                reason: "VerificationFailed".into(),
                message: "models/ml/chat/1.0.0/model.gguf: sha256 differs from the manifest".into()
            }
        );
    }

    #[test]
    fn a_trained_model_follows_its_training_job() {
        let m = model(serde_json::json!({"trainingJobRef": {"name": "ft"}}));
        let tiers = [tier("fast"), tier("hot")];
        let running = training_job("Running");
        assert_eq!(
            model_tier(&m, Some(&running), &tiers).unwrap().name_any(),
            "fast",
            "the TrainingJob's output tier when the Model names none"
        );
        let v = verification_of_training("ft", Some(&running), "fast");
        let status = desired_status(&m, "h", &v, None, vec![], None, now());
        assert_eq!(status.phase, Some(ModelPhase::Pending));
        let ready = find_condition(&status.conditions, "Ready").unwrap();
        assert_eq!(
            (ready.reason.as_str(), ready.message.as_str()),
            ("WaitingForTrainingJob", "TrainingJob ft is Running")
        );
        let v = verification_of_training("ft", Some(&training_job("Succeeded")), "fast");
        let status = desired_status(&m, "h", &v, None, vec![], None, now());
        assert_eq!(status.phase, Some(ModelPhase::Ready));
        assert_eq!(status.tier.as_deref(), Some("fast"));
        let v = verification_of_training("ft", Some(&training_job("Failed")), "fast");
        assert!(
            matches!(v, Verification::Failed { ref reason, .. } if reason == "TrainingJobFailed")
        );
        let v = verification_of_training("ft", None, "fast");
        assert!(matches!(v, Verification::Blocked(ref b) if b.reason == "TrainingJobNotFound"));
    }

    #[test]
    fn services_naming_the_model_are_listed_and_count_as_access() {
        let isvc = |name: &str, model: &str, replicas: u32| -> InferenceService {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "aigc.dev/v1alpha1", "kind": "InferenceService",
                "metadata": {"name": name, "namespace": "ml"},
                "spec": {"modelRef": {"name": model}, "replicas": replicas}
            }))
            .unwrap()
        };
        let services = [
            isvc("b-chat", "chat", 0),
            isvc("a-chat", "chat", 0),
            isvc("other", "embed", 3),
        ];
        let (served, access) = model_consumers("chat", &services, &[], now());
        let names: Vec<&str> = served.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a-chat", "b-chat"]);
        assert_eq!(access, None, "scaled to zero: not in use");
        let services = [isvc("a-chat", "chat", 1)];
        let (_, access) = model_consumers("chat", &services, &[], now());
        assert_eq!(access.as_deref(), Some("2026-12-04T12:00:00Z"));
    }
}
