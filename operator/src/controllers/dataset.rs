//! Dataset controller: prepares each Dataset with an `aigc-worker prepare` Job that reads the
//! source, checks the schema, cleans, and publishes shards with a manifest on the placement
//! tier; records rows, bytes, manifest digest and tier from the Job's termination message;
//! follows tier moves (started by the tier policy) into `status.tier`; tracks the TrainingJobs
//! that read it in `lineage` and `lastAccessTime`.
//!
//! The prepared data lives at `datasets/<namespace>/<name>/<version>` on its tier, where the
//! version is a hash of the spec fields that shape it: a spec change prepares a new version
//! with a new Job, and the old Job is removed once the new version is Ready.
//!
//! A finalizer keeps a Dataset whose data is moving until the move has finished, so deletion
//! never strands data half-way between tiers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aigc_crds::common::LocalObjectRef;
use aigc_crds::dataset::{
    DataFormat, Dataset, DatasetPhase, DatasetSource, DatasetSpec, DatasetStatus, Lineage,
};
use aigc_crds::training_job::TrainingJob;
use aigc_crds::{Condition, ConditionStatus, condition::set_condition};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, ConfigMapVolumeSource, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::controllers::cache::Caches;
use crate::controllers::placement::{
    Blocker, check_one_s3_endpoint, placement_tier, pvc_source, s3_source, url_source,
};
use crate::controllers::worker_job::{
    Consumer, JobOutcome, MoveView, ROLE_LABEL, Role, TERMINATION_LOG, TIER_ANNOTATION,
    access_time, current_move, job_name, job_outcome, job_pods, last_access, later, move_status,
    spec_hash, worker_job,
};
use crate::controllers::{
    Context, add_finalizer, apply_child, apply_status, delete_if_present, get_opt, instrumented,
    publish, remove_finalizer,
};
use crate::layout::{StoredKind, TierAccess};
use crate::worker_pod::{WorkerImages, worker_pod_spec};

/// Finalizer that holds a Dataset while its data is moving between tiers.
pub const FINALIZER: &str = "aigc.dev/tier-move";
/// Where the schema ConfigMap is mounted in prepare pods.
pub const SCHEMA_DIR: &str = "/etc/aigc/schema";
/// Key of the schema in its ConfigMap.
pub const SCHEMA_KEY: &str = "schema.json";

/// The spec fields that shape the prepared data, and the tier it is prepared on. Their hash
/// is the data's version.
#[derive(Serialize)]
struct Shape<'a> {
    source: &'a DatasetSource,
    format: DataFormat,
    schema: &'a Option<aigc_crds::dataset::DataSchema>,
    cleaning: &'a Option<aigc_crds::dataset::Cleaning>,
    tier: &'a str,
}

/// Version of the data `spec` prepares on `tier`.
pub fn version(spec: &DatasetSpec, tier: &str) -> String {
    spec_hash(&Shape {
        source: &spec.source,
        format: spec.format,
        schema: &spec.schema,
        cleaning: &spec.cleaning,
        tier,
    })
}

/// The `--format` `aigc-worker prepare` takes for `format`, or why it cannot prepare it.
pub fn worker_format(format: DataFormat) -> Result<&'static str, Blocker> {
    match format {
        DataFormat::Jsonl => Ok("jsonl"),
        DataFormat::Csv => Ok("csv"),
        DataFormat::Text => Ok("text"),
        DataFormat::Parquet | DataFormat::Images => Err(Blocker {
            reason: "UnsupportedFormat",
            message: format!(
                "spec.format: aigc-worker prepare reads jsonl, csv and text, not {}",
                serde_json::to_string(&format)
                    .unwrap_or_default()
                    .trim_matches('"')
            ),
        }),
    }
}

/// How the prepare pod reaches the Dataset's source.
pub fn source_access(spec: &DatasetSpec) -> TierAccess {
    match &spec.source {
        DatasetSource::S3(s3) => s3_source(s3),
        DatasetSource::Pvc(pvc) => pvc_source(pvc, false),
        DatasetSource::Http(http) => url_source(&http.url),
    }
}

/// The arguments of `aigc-worker prepare` for `spec`.
pub fn prepare_args(spec: &DatasetSpec, format: &str, source: &str, out: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "prepare", "--source", source, "--format", format, "--out", out,
    ]
    .map(str::to_owned)
    .to_vec();
    if spec.schema.is_some() {
        args.extend(["--schema".to_owned(), format!("{SCHEMA_DIR}/{SCHEMA_KEY}")]);
    }
    // Without a cleaning section, rows that break the schema fail the preparation.
    let drop_invalid = spec.cleaning.as_ref().is_some_and(|c| c.drop_invalid_rows);
    if !drop_invalid {
        args.push("--fail-on-invalid-rows".to_owned());
    }
    if let Some(cleaning) = &spec.cleaning {
        if cleaning.dedupe {
            args.push("--dedupe".to_owned());
        }
        if let Some(max) = cleaning.max_row_bytes {
            args.extend(["--max-row-bytes".to_owned(), max.to_string()]);
        }
    }
    // The compact summary (at most 4096 bytes, the termination message's limit).
    args.extend([
        "--termination-message-path".to_owned(),
        TERMINATION_LOG.to_owned(),
    ]);
    args
}

/// The ConfigMap holding the schema the prepare pod reads, named like its Job.
pub fn desired_schema_config_map(dataset: &Dataset, job: &str) -> Option<ConfigMap> {
    let schema = dataset.spec.schema.as_ref()?;
    Some(ConfigMap {
        metadata: ObjectMeta {
            name: Some(job.to_owned()),
            namespace: dataset.namespace(),
            owner_references: dataset.controller_owner_ref(&()).map(|r| vec![r]),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "aigc-operator".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            SCHEMA_KEY.to_owned(),
            serde_json::to_string_pretty(schema).unwrap_or_default(),
        )])),
        ..ConfigMap::default()
    })
}

/// The prepare Job of `dataset`: version `version` written to the tier reached by `tier`.
pub fn desired_prepare_job(
    dataset: &Dataset,
    version: &str,
    tier: &TierAccess,
    images: &WorkerImages,
) -> Result<Job, Blocker> {
    let format = worker_format(dataset.spec.format)?;
    let source = source_access(&dataset.spec);
    check_one_s3_endpoint(&[&source, tier])?;
    let namespace = dataset.namespace().unwrap_or_default();
    let name = dataset.name_any();
    let out = tier.uri(StoredKind::Dataset, &namespace, &name, version);
    let args = prepare_args(&dataset.spec, format, &source.root_uri, &out);
    let mut pod = worker_pod_spec(
        images,
        args,
        &Default::default(),
        aigc_crds::common::Accelerator::Cpu,
        &[&source, tier],
    );
    let job = job_name(&name, Role::Prepare, version);
    if dataset.spec.schema.is_some() {
        pod.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: "schema".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: job.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        pod.containers[0]
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: "schema".to_owned(),
                mount_path: SCHEMA_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
    }
    let owner = dataset.controller_owner_ref(&()).ok_or(Blocker {
        reason: "NoUid",
        message: "the Dataset has no uid yet".to_owned(),
    })?;
    let annotations = BTreeMap::from([(TIER_ANNOTATION.to_owned(), tier.tier.clone())]);
    Ok(worker_job(
        job,
        namespace,
        owner,
        Role::Prepare,
        annotations,
        pod,
    ))
}

/// The summary `aigc-worker prepare` leaves as its termination message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PrepareSummary {
    /// Rows read.
    pub rows_in: u64,
    /// Rows written.
    pub rows_out: u64,
    /// Dropped rows by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Shards written.
    pub shards: u64,
    /// Bytes of the published objects.
    pub bytes: u64,
    /// `sha256:` digest of the manifest.
    pub manifest_digest: Option<String>,
    /// Why nothing was published.
    pub error: Option<String>,
}

/// Read a prepare summary, saying what is wrong with it when it cannot be used.
pub fn parse_summary(message: &str) -> Result<PrepareSummary, String> {
    serde_json::from_str(message).map_err(|e| {
        let head: String = message.chars().take(200).collect();
        format!("the termination message is not a prepare summary ({e}): {head:?}")
    })
}

/// Where preparation of the current version stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Preparation {
    /// It cannot start.
    Blocked(Blocker),
    /// The prepare Job is running on this tier.
    Running {
        /// Destination tier.
        tier: String,
    },
    /// The prepare Job just succeeded with this summary.
    Done {
        /// Tier it wrote to.
        tier: String,
        /// What it wrote.
        summary: PrepareSummary,
    },
    /// The prepare Job failed.
    Failed {
        /// CamelCase reason.
        reason: String,
        /// The worker's explanation.
        message: String,
    },
    /// The status already describes this version.
    Recorded,
}

/// Preparation as a finished or running prepare Job shows it.
pub fn preparation_of(tier: &str, outcome: JobOutcome) -> Preparation {
    match outcome {
        JobOutcome::Running => Preparation::Running {
            tier: tier.to_owned(),
        },
        JobOutcome::Succeeded { message: None } => Preparation::Failed {
            reason: "NoSummary".to_owned(),
            message: "the prepare Job succeeded but its pod left no termination message".to_owned(),
        },
        JobOutcome::Succeeded {
            message: Some(message),
        } => match parse_summary(&message) {
            Ok(summary) if summary.error.is_none() && summary.manifest_digest.is_some() => {
                Preparation::Done {
                    tier: tier.to_owned(),
                    summary,
                }
            }
            Ok(summary) => Preparation::Failed {
                reason: "PrepareFailed".to_owned(),
                message: summary
                    .error
                    .unwrap_or_else(|| "the prepare summary has no manifest digest".to_owned()),
            },
            Err(message) => Preparation::Failed {
                reason: "UnreadableSummary".to_owned(),
                message,
            },
        },
        JobOutcome::Failed { reason, message } => match parse_summary(&message) {
            Ok(PrepareSummary {
                error: Some(error), ..
            }) => Preparation::Failed {
                reason: "PrepareFailed".to_owned(),
                message: error,
            },
            _ => Preparation::Failed { reason, message },
        },
    }
}

fn ready_condition(
    status: ConditionStatus,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Condition {
    Condition::new("Ready", status, reason, message, generation, now)
}

/// The status to write: `version` is the current spec's version, `preparation` where it
/// stands, `moving` the resource's move Job if any, `consumers` the TrainingJobs reading it.
pub fn desired_status(
    dataset: &Dataset,
    version: &str,
    preparation: &Preparation,
    moving: Option<&MoveView>,
    consumers: &[Consumer],
    now: DateTime<Utc>,
) -> DatasetStatus {
    let generation = dataset.metadata.generation;
    let mut status = dataset.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    let unknown_validated = |reason: &str, message: String| {
        Condition::new(
            "Validated",
            ConditionStatus::Unknown,
            reason,
            message,
            generation,
            now,
        )
    };
    match preparation {
        Preparation::Blocked(blocker) => {
            status.phase = Some(DatasetPhase::Pending);
            set_condition(
                &mut status.conditions,
                ready_condition(
                    ConditionStatus::False,
                    blocker.reason,
                    blocker.message.clone(),
                    generation,
                    now,
                ),
            );
        }
        Preparation::Running { tier } => {
            status.phase = Some(DatasetPhase::Preparing);
            let message = format!("preparing version {version} on tier {tier}");
            set_condition(
                &mut status.conditions,
                unknown_validated("Preparing", message.clone()),
            );
            set_condition(
                &mut status.conditions,
                ready_condition(
                    ConditionStatus::False,
                    "Preparing",
                    message,
                    generation,
                    now,
                ),
            );
        }
        Preparation::Done { tier, summary } => {
            status.phase = Some(DatasetPhase::Ready);
            status.tier = Some(tier.clone());
            status.version = Some(version.to_owned());
            status.rows = Some(summary.rows_out);
            status.bytes = Some(summary.bytes);
            status.objects = Some(summary.shards);
            status.manifest_digest = summary.manifest_digest.clone();
            // Preparation counts as an access: idle time for demotion starts now.
            status.last_access_time = later(status.last_access_time.take(), Some(access_time(now)));
            let rejected: u64 = summary.rejected.values().sum();
            set_condition(
                &mut status.conditions,
                Condition::new(
                    "Validated",
                    ConditionStatus::True,
                    "SchemaChecked",
                    format!(
                        "{} rows read, {} kept, {rejected} dropped",
                        summary.rows_in, summary.rows_out
                    ),
                    generation,
                    now,
                ),
            );
            set_condition(
                &mut status.conditions,
                ready_condition(
                    ConditionStatus::True,
                    "Prepared",
                    format!(
                        "{} rows, {} bytes in {} shards on tier {tier}",
                        summary.rows_out, summary.bytes, summary.shards
                    ),
                    generation,
                    now,
                ),
            );
        }
        Preparation::Failed { reason, message } => {
            status.phase = Some(DatasetPhase::Failed);
            set_condition(
                &mut status.conditions,
                Condition::new(
                    "Validated",
                    ConditionStatus::False,
                    reason,
                    message.clone(),
                    generation,
                    now,
                ),
            );
            set_condition(
                &mut status.conditions,
                ready_condition(
                    ConditionStatus::False,
                    reason,
                    message.clone(),
                    generation,
                    now,
                ),
            );
        }
        Preparation::Recorded => {}
    }
    let prepared = matches!(
        preparation,
        Preparation::Recorded | Preparation::Done { .. }
    );
    if prepared {
        status.phase = Some(DatasetPhase::Ready);
        if let Some(mv) = moving {
            let (tier, migrating, condition) =
                move_status(status.tier.as_deref(), mv, generation, now);
            status.tier = tier;
            if migrating {
                status.phase = Some(DatasetPhase::Migrating);
            }
            set_condition(&mut status.conditions, condition);
        }
    }
    let mut names: Vec<String> = consumers.iter().map(|c| c.name.clone()).collect();
    names.sort();
    names.dedup();
    let lineage = status.lineage.get_or_insert_with(Lineage::default);
    lineage.consumed_by = names
        .into_iter()
        .map(|name| LocalObjectRef { name })
        .collect();
    if status.lineage == Some(Lineage::default()) {
        status.lineage = None;
    }
    status.last_access_time = later(status.last_access_time.take(), last_access(consumers, now));
    status
}

/// Prepare one Dataset, or follow what is running for it, and write its status.
pub async fn reconcile(dataset: Arc<Dataset>, state: Arc<State>) -> Result<Action, Error> {
    let ctx = &state.ctx;
    let namespace = dataset.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<Dataset> = Api::namespaced(ctx.client.clone(), &namespace);
    if dataset.metadata.deletion_timestamp.is_some() {
        cleanup(&dataset, &state, &namespace)?;
        remove_finalizer(&api, dataset.as_ref(), FINALIZER).await?;
        return Ok(Action::await_change());
    }
    add_finalizer(&api, dataset.as_ref(), FINALIZER).await?;
    apply(dataset, &state, &namespace).await
}

/// What the Dataset controller's reconciles share: the context and the watched views.
pub struct State {
    /// Client, configuration and recorder.
    pub ctx: Arc<Context>,
    /// StorageTiers, worker Jobs and TrainingJobs.
    pub caches: Caches,
}

impl AsRef<Context> for State {
    fn as_ref(&self) -> &Context {
        &self.ctx
    }
}

/// Deletion: wait for a move in flight to finish; the owner references remove the Jobs.
fn cleanup(dataset: &Dataset, state: &State, namespace: &str) -> Result<(), Error> {
    let uid = dataset.uid().unwrap_or_default();
    let jobs = state.caches.jobs_of(namespace, &uid);
    if let Some(job) = jobs.iter().find(|j| {
        j.labels().get(ROLE_LABEL).map(String::as_str) == Some(Role::Move.as_str())
            && !crate::controllers::worker_job::finished(j)
    }) {
        return Err(Error::MoveInProgress {
            kind: "Dataset",
            name: dataset.name_any(),
            job: job.name_any(),
        });
    }
    Ok(())
}

async fn apply(dataset: Arc<Dataset>, state: &State, namespace: &str) -> Result<Action, Error> {
    let ctx = &state.ctx;
    let client = &ctx.client;
    let tiers = state.caches.tiers();
    let uid = dataset.uid().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(client.clone(), namespace);
    let jobs = state.caches.jobs_of(namespace, &uid);
    let placement = placement_tier(dataset.spec.placement.as_ref(), &tiers);
    let old = dataset.status.clone().unwrap_or_default();
    let (version, preparation) = match placement {
        Err(blocker) => (String::new(), Preparation::Blocked(blocker)),
        Ok(tier) => {
            let version = version(&dataset.spec, &tier.name_any());
            let recorded = old.version.as_deref() == Some(version.as_str())
                && matches!(
                    old.phase,
                    Some(DatasetPhase::Ready | DatasetPhase::Migrating)
                );
            let preparation = if recorded {
                Preparation::Recorded
            } else {
                let access = TierAccess::for_tier(tier);
                match desired_prepare_job(&dataset, &version, &access, &ctx.config.worker_images) {
                    Err(blocker) => Preparation::Blocked(blocker),
                    Ok(wanted) => {
                        let name = wanted.name_any();
                        let job = match get_opt(&jobs_api, &name).await? {
                            Some(job) => job,
                            None => {
                                if let Some(cm) = desired_schema_config_map(&dataset, &name) {
                                    let cms: Api<ConfigMap> =
                                        Api::namespaced(client.clone(), namespace);
                                    apply_child(&cms, &cm).await?;
                                }
                                let job = apply_child(&jobs_api, &wanted).await?;
                                publish(
                                    &ctx.recorder,
                                    dataset.as_ref(),
                                    EventType::Normal,
                                    "Preparing",
                                    format!("started Job {name} to prepare version {version} on tier {}", access.tier),
                                )
                                .await;
                                job
                            }
                        };
                        let outcome = match job_outcome(&job, &[]) {
                            JobOutcome::Running => JobOutcome::Running,
                            // Only a finished Job's pods hold the summary.
                            _ => job_outcome(&job, &job_pods(client, namespace, &name).await?),
                        };
                        preparation_of(&access.tier, outcome)
                    }
                }
            };
            (version, preparation)
        }
    };
    let moving = current_move(client, namespace, &jobs).await?;
    let name = dataset.name_any();
    let consumers: Vec<Consumer> = state
        .caches
        .training_jobs_in(namespace)
        .iter()
        .filter(|j| j.spec.dataset_ref.name == name)
        .map(Consumer::of)
        .collect();
    let status = desired_status(
        &dataset,
        &version,
        &preparation,
        moving.as_ref(),
        &consumers,
        Utc::now(),
    );
    publish_transition(ctx, &dataset, &old, &status).await;
    if dataset.status.as_ref() != Some(&status) {
        let api: Api<Dataset> = Api::namespaced(client.clone(), namespace);
        apply_status(&api, dataset.as_ref(), &status).await?;
    }
    // Clean up after the status records the outcome, never before: a finished move Job is
    // the record of the tier until the status shows it.
    let ready_version = matches!(
        status.phase,
        Some(DatasetPhase::Ready | DatasetPhase::Migrating)
    ) && status.version.as_deref() == Some(version.as_str());
    for job in &jobs {
        let role = job.labels().get(ROLE_LABEL).map(String::as_str);
        let stale_prepare = role == Some(Role::Prepare.as_str())
            && ready_version
            && job.name_any() != job_name(&dataset.name_any(), Role::Prepare, &version);
        let recorded_move = role == Some(Role::Move.as_str())
            && crate::controllers::worker_job::finished(job)
            && old.tier == status.tier
            && moving.as_ref().is_some_and(|m| m.job == job.name_any());
        if stale_prepare || recorded_move {
            delete_if_present(&jobs_api, &job.name_any()).await?;
            if stale_prepare {
                let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
                delete_if_present(&cms, &job.name_any()).await?;
            }
        }
    }
    Ok(match status.phase {
        Some(DatasetPhase::Ready) => Action::requeue(Duration::from_secs(600)),
        _ => Action::requeue(Duration::from_secs(60)),
    })
}

async fn publish_transition(
    ctx: &Context,
    dataset: &Dataset,
    old: &DatasetStatus,
    new: &DatasetStatus,
) {
    let ready = |s: &DatasetStatus| {
        aigc_crds::condition::find_condition(&s.conditions, "Ready")
            .map(|c| (c.status, c.reason.clone(), c.message.clone()))
    };
    let migrating = |s: &DatasetStatus| {
        aigc_crds::condition::find_condition(&s.conditions, "Migrating")
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    if let Some((status, reason, message)) = ready(new)
        && (ready(old).map(|r| (r.0, r.1)) != Some((status, reason.clone())))
    {
        let type_ = if new.phase == Some(DatasetPhase::Failed) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish(&ctx.recorder, dataset, type_, &reason, message).await;
    }
    if let Some((reason, message)) = migrating(new)
        && migrating(old).map(|m| m.0) != Some(reason.clone())
    {
        let type_ = if reason == "MoveFailed" {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish(&ctx.recorder, dataset, type_, &reason, message).await;
    }
}

/// Retry soon after an error.
pub fn error_policy(_dataset: Arc<Dataset>, error: &Error, _state: Arc<State>) -> Action {
    tracing::debug!(%error, "Dataset reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// Run the Dataset controller until the process is asked to stop. It reconciles on changes to
/// Datasets, their Jobs, and the TrainingJobs that read them. `caches` are shared with the
/// Model controller; the caller keeps them current (see [`Caches::new`]).
pub async fn run(ctx: Arc<Context>, caches: Caches) {
    let client = ctx.client.clone();
    let stopped = ctx.stopped();
    // Built here so `/readyz` waits for its cache and `/metrics` lists the kind.
    let controller = ctx.controller(
        "Dataset",
        Api::<Dataset>::all(client.clone()),
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
            Api::<TrainingJob>::all(client),
            watcher::Config::default(),
            |job| {
                let namespace = job.namespace().unwrap_or_default();
                std::iter::once(ObjectRef::new(&job.spec.dataset_ref.name).within(&namespace))
            },
        )
        .graceful_shutdown_on(stopped)
        .run(instrumented("Dataset", reconcile), error_policy, state)
        .for_each(|result| async move {
            match result {
                Ok((dataset, _)) => tracing::debug!(dataset = %dataset, "reconciled Dataset"),
                Err(error) => tracing::warn!(%error, "Dataset reconcile failed"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use aigc_crds::storage_tier::{StorageTier, StorageTierSpec};
    use chrono::TimeZone;

    fn dataset(spec: serde_json::Value) -> Dataset {
        let mut d = Dataset::new("reviews", serde_json::from_value(spec).unwrap());
        d.metadata.namespace = Some("ml".into());
        d.metadata.uid = Some("uid-1".into());
        d.metadata.generation = Some(4);
        d
    }

    fn csv_dataset() -> Dataset {
        dataset(serde_json::json!({
            "source": {"pvc": {"claimName": "raw", "path": "/reviews.csv"}},
            "format": "csv",
            "schema": {"columns": [{"name": "text", "type": "string", "required": true}]},
            "cleaning": {"dedupe": true, "maxRowBytes": 4096}
        }))
    }

    fn hot() -> TierAccess {
        let spec: StorageTierSpec = serde_json::from_value(serde_json::json!({
            "class": "hot", "backend": {"filesystem": {"path": "/tiers/hot"}}
        }))
        .unwrap();
        TierAccess::for_tier(&StorageTier::new("hot", spec))
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 30).unwrap()
    }

    #[test]
    fn the_prepare_job_runs_the_worker_on_the_placement_tier() {
        let d = csv_dataset();
        let v = version(&d.spec, "hot");
        let job = desired_prepare_job(&d, &v, &hot(), &WorkerImages::default()).unwrap();
        assert_eq!(job.name_any(), format!("reviews-prepare-{v}"));
        assert_eq!(
            job.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-1"
        );
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let args = pod.containers[0].args.clone().unwrap();
        assert_eq!(
            args,
            [
                "prepare",
                "--source",
                "file:///var/run/aigc/source/reviews.csv",
                "--format",
                "csv",
                "--out",
                &format!("file:///tiers/hot/datasets/ml/reviews/{v}"),
                "--schema",
                "/etc/aigc/schema/schema.json",
                "--dedupe",
                "--max-row-bytes",
                "4096",
                "--termination-message-path",
                "/dev/termination-log"
            ]
        );
        let volumes: Vec<&str> = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, ["tmp", "source", "tier-hot", "schema"]);
        let cm = desired_schema_config_map(&d, &job.name_any()).unwrap();
        let schema: serde_json::Value =
            serde_json::from_str(&cm.data.unwrap()[SCHEMA_KEY]).unwrap();
        assert_eq!(schema["columns"][0]["name"], "text");
    }

    #[test]
    fn invalid_rows_fail_the_preparation_unless_cleaning_drops_them() {
        let mut d = csv_dataset();
        d.spec.cleaning = None;
        let args = prepare_args(&d.spec, "csv", "s", "o");
        assert!(args.contains(&"--fail-on-invalid-rows".to_owned()));
        let d = csv_dataset();
        let args = prepare_args(&d.spec, "csv", "s", "o");
        assert!(!args.contains(&"--fail-on-invalid-rows".to_owned()));
    }

    #[test]
    fn the_version_follows_the_fields_that_shape_the_data() {
        let d = csv_dataset();
        let v = version(&d.spec, "hot");
        let mut lifecycle_only = d.clone();
        lifecycle_only.spec.lifecycle = Some(Default::default());
        assert_eq!(version(&lifecycle_only.spec, "hot"), v);
        let mut deduped = d.clone();
        deduped.spec.cleaning.as_mut().unwrap().dedupe = false;
        assert_ne!(version(&deduped.spec, "hot"), v);
        assert_ne!(version(&d.spec, "warm"), v);
    }

    #[test]
    fn formats_the_worker_cannot_read_and_endpoint_clashes_are_blocked() {
        let mut d = csv_dataset();
        d.spec.format = DataFormat::Parquet;
        d.spec.schema = None;
        let err = desired_prepare_job(&d, "v", &hot(), &WorkerImages::default()).unwrap_err();
        assert_eq!(err.reason, "UnsupportedFormat");
        assert!(err.message.contains("parquet"), "{}", err.message);
    }

    #[test]
    fn a_successful_summary_makes_the_dataset_ready_with_its_numbers() {
        let d = csv_dataset();
        let message = r#"{"rowsIn":10,"rowsOut":8,"rejected":{"duplicate":2},"shards":1,"bytes":321,"manifestDigest":"sha256:ab"}"#;
        let prep = preparation_of(
            "hot",
            JobOutcome::Succeeded {
                message: Some(message.into()),
            },
        );
        let status = desired_status(&d, "v1", &prep, None, &[], now());
        assert_eq!(status.phase, Some(DatasetPhase::Ready));
        assert_eq!(
            (status.rows, status.bytes, status.objects),
            (Some(8), Some(321), Some(1))
        );
        assert_eq!(status.manifest_digest.as_deref(), Some("sha256:ab"));
        assert_eq!(
            (status.tier.as_deref(), status.version.as_deref()),
            (Some("hot"), Some("v1"))
        );
        assert_eq!(
            status.last_access_time.as_deref(),
            Some("2026-12-04T12:00:00Z")
        );
        let validated = &status.conditions[0];
        assert_eq!(
            (validated.type_.as_str(), validated.status),
            ("Validated", ConditionStatus::True)
        );
        assert_eq!(validated.message, "10 rows read, 8 kept, 2 dropped");
        assert_eq!(validated.observed_generation, Some(4));
        let ready = &status.conditions[1];
        assert_eq!(
            (ready.type_.as_str(), ready.status),
            ("Ready", ConditionStatus::True)
        );
    }

    #[test]
    fn a_failed_prepare_reports_the_workers_reason() {
        let d = csv_dataset();
        let prep = preparation_of(
            "hot",
            JobOutcome::Failed {
                reason: "BackoffLimitExceeded".into(),
                message: r#"{"rowsIn":3,"error":"row 2: column \"text\" is required"}"#.into(),
            },
        );
        let status = desired_status(&d, "v1", &prep, None, &[], now());
        assert_eq!(status.phase, Some(DatasetPhase::Failed));
        let ready = aigc_crds::condition::find_condition(&status.conditions, "Ready").unwrap();
        assert_eq!(ready.status, ConditionStatus::False);
        assert_eq!(ready.reason, "PrepareFailed");
        assert_eq!(ready.message, "row 2: column \"text\" is required");
        let unreadable = preparation_of(
            "hot",
            JobOutcome::Succeeded {
                message: Some("{\"rowsIn\": 3, \"colu".into()),
            },
        );
        assert!(matches!(
            unreadable,
            Preparation::Failed { ref reason, .. } if reason == "UnreadableSummary"
        ));
    }

    #[test]
    fn a_move_is_followed_and_switches_the_tier_when_done() {
        let mut d = csv_dataset();
        d.status = Some(DatasetStatus {
            phase: Some(DatasetPhase::Ready),
            tier: Some("hot".into()),
            version: Some("v1".into()),
            ..DatasetStatus::default()
        });
        let mv = |outcome| MoveView {
            job: "reviews-move-1".into(),
            from: "hot".into(),
            to: "cold".into(),
            outcome,
        };
        let moving = mv(JobOutcome::Running);
        let status = desired_status(&d, "v1", &Preparation::Recorded, Some(&moving), &[], now());
        assert_eq!(status.phase, Some(DatasetPhase::Migrating));
        assert_eq!(status.tier.as_deref(), Some("hot"));
        let done = mv(JobOutcome::Succeeded { message: None });
        let status = desired_status(&d, "v1", &Preparation::Recorded, Some(&done), &[], now());
        assert_eq!(status.phase, Some(DatasetPhase::Ready));
        assert_eq!(status.tier.as_deref(), Some("cold"));
    }

    #[test]
    fn consumers_are_listed_and_their_use_counts_as_access() {
        let mut d = csv_dataset();
        d.status = Some(DatasetStatus {
            phase: Some(DatasetPhase::Ready),
            version: Some("v1".into()),
            last_access_time: Some("2026-11-01T00:00:00Z".into()),
            ..DatasetStatus::default()
        });
        let finished = Consumer {
            name: "train-b".into(),
            active: false,
            start_time: Some("2026-11-20T00:00:00Z".into()),
            completion_time: Some("2026-11-21T00:00:00Z".into()),
        };
        let status = desired_status(
            &d,
            "v1",
            &Preparation::Recorded,
            None,
            std::slice::from_ref(&finished),
            now(),
        );
        assert_eq!(
            status.last_access_time.as_deref(),
            Some("2026-11-21T00:00:00Z")
        );
        let running = Consumer {
            name: "train-a".into(),
            active: true,
            start_time: None,
            completion_time: None,
        };
        let status = desired_status(
            &d,
            "v1",
            &Preparation::Recorded,
            None,
            &[finished, running],
            now(),
        );
        let names: Vec<&str> = status
            .lineage
            .as_ref()
            .unwrap()
            .consumed_by
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["train-a", "train-b"]);
        assert_eq!(
            status.last_access_time.as_deref(),
            Some("2026-12-04T12:00:00Z")
        );
    }
}
