//! What the Dataset, Model and tier-move controllers share about their worker Jobs: stable
//! names from a hash of the spec, the Job object around a worker pod, and reading a finished
//! Job's outcome from its pod's termination message.
//!
//! Also how the workloads that read a resource count as access (`lastAccessTime`).
//!
//! Pure functions plus two small readers; the controllers decide what to run and when.

use std::collections::BTreeMap;

use aigc_crds::training_job::{TrainingJob, TrainingJobPhase};
use aigc_crds::{Condition, ConditionStatus};
use chrono::{DateTime, SecondsFormat, Utc};

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use crate::Error;

/// Label on every worker Job (and its pods) naming the uid of the resource it works for.
pub const OWNER_UID_LABEL: &str = "aigc.dev/owner-uid";
/// Label telling what a worker Job does: `prepare`, `verify` or `move`.
pub const ROLE_LABEL: &str = "aigc.dev/role";
/// Label on a worker Job's pod template naming the Job, so its pods can be found whatever
/// labels the Job controller adds.
pub const JOB_LABEL: &str = "aigc.dev/worker-job";
/// Annotation naming the StorageTier a Job writes to.
pub const TIER_ANNOTATION: &str = "aigc.dev/tier";
/// Annotation naming the StorageTier a move Job reads from.
pub const FROM_TIER_ANNOTATION: &str = "aigc.dev/from-tier";
/// Where the worker writes its JSON summary; the kubelet turns it into the termination message.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// Retries of a worker pod before its Job fails.
const BACKOFF_LIMIT: i32 = 2;

/// What a worker Job does for its resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `aigc-worker prepare` of a Dataset.
    Prepare,
    /// `aigc-worker inspect` (after an import) of a Model.
    Verify,
    /// `aigc-worker transfer --delete-source` between tiers.
    Move,
}

impl Role {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Prepare => "prepare",
            Role::Verify => "verify",
            Role::Move => "move",
        }
    }
}

/// A short, stable hash of `value`'s JSON form: 10 hex digits of 64-bit FNV-1a. Stable across
/// builds and processes (unlike `std::hash`), so a restarted operator names Jobs the same.
pub fn spec_hash(value: &impl Serialize) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:010x}", hash >> 24)
}

/// `<base>-<role>-<hash>`, shortened so it stays a valid label value (at most 63 characters):
/// the Job controller labels pods with their Job's name.
pub fn job_name(base: &str, role: Role, hash: &str) -> String {
    let suffix = format!("-{}-{hash}", role.as_str());
    let room = 63 - suffix.len();
    let mut head: String = base.chars().take(room).collect();
    while head.ends_with(['-', '.']) {
        head.pop();
    }
    format!("{head}{suffix}")
}

/// A Job running one worker pod for the resource owned through `owner`.
pub fn worker_job(
    name: String,
    namespace: String,
    owner: OwnerReference,
    role: Role,
    annotations: BTreeMap<String, String>,
    pod: PodSpec,
) -> Job {
    let labels = BTreeMap::from([
        (OWNER_UID_LABEL.to_owned(), owner.uid.clone()),
        (ROLE_LABEL.to_owned(), role.as_str().to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "aigc-operator".to_owned(),
        ),
    ]);
    let mut pod_labels = labels.clone();
    pod_labels.insert(JOB_LABEL.to_owned(), name.clone());
    let mut pod = pod;
    pod.restart_policy = Some("Never".to_owned());
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(BACKOFF_LIMIT),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// How a worker Job ended, or that it has not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// Still running (or not started).
    Running,
    /// Succeeded; the worker's summary when a pod left one.
    Succeeded {
        /// Termination message of the succeeded pod.
        message: Option<String>,
    },
    /// Failed for good.
    Failed {
        /// CamelCase reason of the Job's `Failed` condition, `JobFailed` when it has none.
        reason: String,
        /// The last pod's termination message when it left one, else the condition's message.
        message: String,
    },
}

fn job_condition<'a>(
    job: &'a Job,
    type_: &str,
) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Termination message of the first terminated container of `pod` whose exit code matches.
fn termination_message(pod: &Pod, succeeded: bool) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .filter_map(|s| s.state.as_ref()?.terminated.as_ref())
        .find(|t| (t.exit_code == 0) == succeeded)
        .and_then(|t| t.message.clone())
        .filter(|m| !m.trim().is_empty())
}

/// The outcome of `job`, with `pods` the pods it ran (any order).
pub fn job_outcome(job: &Job, pods: &[Pod]) -> JobOutcome {
    let status = job.status.clone().unwrap_or_default();
    let complete = job_condition(job, "Complete").is_some() || status.succeeded.unwrap_or(0) > 0;
    if complete {
        let message = pods.iter().find_map(|p| termination_message(p, true));
        return JobOutcome::Succeeded { message };
    }
    if let Some(failed) = job_condition(job, "Failed") {
        let from_pod = latest_first(pods)
            .into_iter()
            .find_map(|p| termination_message(p, false));
        return JobOutcome::Failed {
            reason: failed
                .reason
                .clone()
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "JobFailed".to_owned()),
            message: from_pod
                .or_else(|| failed.message.clone())
                .unwrap_or_else(|| "the worker Job failed without a message".to_owned()),
        };
    }
    JobOutcome::Running
}

fn latest_first(pods: &[Pod]) -> Vec<&Pod> {
    let mut sorted: Vec<&Pod> = pods.iter().collect();
    sorted.sort_by(|a, b| {
        b.metadata
            .creation_timestamp
            .cmp(&a.metadata.creation_timestamp)
    });
    sorted
}

/// Whether `job` has finished, successfully or not.
pub fn finished(job: &Job) -> bool {
    job_condition(job, "Complete").is_some()
        || job_condition(job, "Failed").is_some()
        || job.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0
}

/// The move of a resource whose worker Jobs (possibly from a lagging cache) are `jobs`, read
/// fresh from the API: its outcome decides `status.tier`, so it must not lag the watch event
/// that triggered the reconcile.
pub async fn current_move(
    client: &Client,
    namespace: &str,
    jobs: &[Job],
) -> Result<Option<MoveView>, Error> {
    let Some(cached) = jobs
        .iter()
        .find(|j| j.labels().get(ROLE_LABEL).map(String::as_str) == Some(Role::Move.as_str()))
    else {
        return Ok(None);
    };
    let api: Api<Job> = Api::namespaced(client.clone(), namespace);
    let Some(job) = crate::controllers::get_opt(&api, &cached.name_any()).await? else {
        return Ok(None);
    };
    let pods = match job_outcome(&job, &[]) {
        JobOutcome::Failed { .. } => job_pods(client, namespace, &job.name_any()).await?,
        _ => Vec::new(),
    };
    Ok(MoveView::of(&job, &pods))
}

/// The pods a worker Job ran.
pub async fn job_pods(client: &Client, namespace: &str, job: &str) -> Result<Vec<Pod>, Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().labels(&format!("{JOB_LABEL}={job}"));
    api.list(&params)
        .await
        .map(|list| list.items)
        .map_err(|source| Error::Kube {
            action: format!("listing the pods of Job {job}"),
            source,
        })
}

/// A move of a resource between tiers, as its controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveView {
    /// Name of the move Job.
    pub job: String,
    /// Tier the data is moving from.
    pub from: String,
    /// Tier the data is moving to.
    pub to: String,
    /// How the Job stands.
    pub outcome: JobOutcome,
}

impl MoveView {
    /// The move `job` stands for, when it is a move Job with both tiers annotated.
    pub fn of(job: &Job, pods: &[Pod]) -> Option<MoveView> {
        let annotations = job.metadata.annotations.as_ref()?;
        Some(MoveView {
            job: job.metadata.name.clone()?,
            from: annotations.get(FROM_TIER_ANNOTATION)?.clone(),
            to: annotations.get(TIER_ANNOTATION)?.clone(),
            outcome: job_outcome(job, pods),
        })
    }
}

/// What a move means for a resource's status: the tier it is on now, whether it is still
/// moving, and its `Migrating` condition.
pub fn move_status(
    current_tier: Option<&str>,
    mv: &MoveView,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> (Option<String>, bool, Condition) {
    let condition = |status, reason: &str, message: String| {
        Condition::new("Migrating", status, reason, message, generation, now)
    };
    match &mv.outcome {
        JobOutcome::Running => (
            current_tier.map(str::to_owned),
            true,
            condition(
                ConditionStatus::True,
                "Moving",
                format!(
                    "moving from tier {} to tier {} (Job {}); readable on {} until every object is verified",
                    mv.from, mv.to, mv.job, mv.from
                ),
            ),
        ),
        JobOutcome::Succeeded { .. } => (
            Some(mv.to.clone()),
            false,
            condition(
                ConditionStatus::False,
                "Moved",
                format!(
                    "moved from tier {} to tier {}; every object was verified before the source was deleted",
                    mv.from, mv.to
                ),
            ),
        ),
        JobOutcome::Failed { reason, message } => (
            current_tier.map(str::to_owned),
            false,
            condition(
                ConditionStatus::False,
                "MoveFailed",
                format!(
                    "moving from tier {} to tier {} failed ({reason}): {message}; the data stays on {}",
                    mv.from, mv.to, mv.from
                ),
            ),
        ),
    }
}

/// `now` rounded down to the minute, RFC 3339: the resolution of `lastAccessTime` while a
/// workload uses the data, so an active consumer rewrites the status at most once a minute.
pub fn access_time(now: DateTime<Utc>) -> String {
    let seconds = now.timestamp() - now.timestamp().rem_euclid(60);
    DateTime::from_timestamp(seconds, 0)
        .unwrap_or(now)
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The later of two RFC 3339 times; an unreadable one loses.
pub fn later(a: Option<String>, b: Option<String>) -> Option<String> {
    let parse = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    };
    match (parse(&a), parse(&b)) {
        (Some(x), Some(y)) => {
            if y > x {
                b
            } else {
                a
            }
        }
        (Some(_), None) => a,
        (None, Some(_)) => b,
        (None, None) => a.or(b),
    }
}

/// A workload that reads a Dataset or Model, as far as lineage and access times need it.
#[derive(Clone, Debug, PartialEq)]
pub struct Consumer {
    /// Its name.
    pub name: String,
    /// Admitted or running now.
    pub active: bool,
    /// When it started, RFC 3339.
    pub start_time: Option<String>,
    /// When it finished, RFC 3339.
    pub completion_time: Option<String>,
}

impl Consumer {
    /// The consumer view of a TrainingJob.
    pub fn of(job: &TrainingJob) -> Consumer {
        let status = job.status.clone().unwrap_or_default();
        Consumer {
            name: job.name_any(),
            active: matches!(
                status.phase,
                Some(TrainingJobPhase::Admitted | TrainingJobPhase::Running)
            ),
            start_time: status.start_time,
            completion_time: status.completion_time,
        }
    }
}

/// The latest access `consumers` show at `now`: now while one is active, else the last start
/// or completion.
pub fn last_access(consumers: &[Consumer], now: DateTime<Utc>) -> Option<String> {
    consumers.iter().fold(None, |acc, c| {
        let seen = if c.active {
            Some(access_time(now))
        } else {
            later(c.start_time.clone(), c.completion_time.clone())
        };
        later(acc, seen)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
    };

    fn job(conditions: &[(&str, &str)], succeeded: i32) -> Job {
        Job {
            status: Some(JobStatus {
                succeeded: Some(succeeded),
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(type_, reason)| JobCondition {
                            type_: (*type_).to_owned(),
                            status: "True".to_owned(),
                            reason: Some((*reason).to_owned()),
                            message: Some(format!("{type_} message")),
                            ..JobCondition::default()
                        })
                        .collect(),
                ),
                ..JobStatus::default()
            }),
            ..Job::default()
        }
    }

    fn pod(exit_code: i32, message: &str) -> Pod {
        Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "worker".into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code,
                            message: Some(message.into()),
                            ..ContainerStateTerminated::default()
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn hashes_are_stable_and_tell_specs_apart() {
        let a = spec_hash(&serde_json::json!({"format": "csv"}));
        assert_eq!(a, spec_hash(&serde_json::json!({"format": "csv"})));
        assert_ne!(a, spec_hash(&serde_json::json!({"format": "jsonl"})));
        assert_eq!(a.len(), 10);
    }

    #[test]
    fn job_names_fit_a_label_value() {
        assert_eq!(
            job_name("reviews", Role::Prepare, "0123456789"),
            "reviews-prepare-0123456789"
        );
        let long = job_name(&"a-".repeat(100), Role::Move, "0123456789");
        assert_eq!(long.len(), 63, "{long}");
        assert!(long.ends_with("a-move-0123456789"), "{long}");
    }

    #[test]
    fn a_finished_job_reports_its_pod_summary() {
        let ok = job(&[("Complete", "Completed")], 1);
        assert_eq!(
            job_outcome(
                &ok,
                &[pod(1, "first try failed"), pod(0, "{\"rowsOut\":3}")]
            ),
            JobOutcome::Succeeded {
                message: Some("{\"rowsOut\":3}".into())
            }
        );
        let failed = job(&[("Failed", "BackoffLimitExceeded")], 0);
        assert_eq!(
            job_outcome(&failed, &[pod(1, "{\"error\":\"bad rows\"}")]),
            JobOutcome::Failed {
                reason: "BackoffLimitExceeded".into(),
                message: "{\"error\":\"bad rows\"}".into()
            }
        );
        assert_eq!(
            job_outcome(&failed, &[]),
            JobOutcome::Failed {
                reason: "BackoffLimitExceeded".into(),
                message: "Failed message".into()
            }
        );
        assert_eq!(job_outcome(&job(&[], 0), &[]), JobOutcome::Running);
        assert!(finished(&ok) && finished(&failed) && !finished(&job(&[], 0)));
    }

    #[test]
    fn a_move_switches_the_tier_only_once_it_succeeded() {
        let now = DateTime::parse_from_rfc3339("2026-12-04T10:20:30Z")
            .unwrap()
            .to_utc();
        let mv = |outcome| MoveView {
            job: "d-move-1".into(),
            from: "hot".into(),
            to: "cold".into(),
            outcome,
        };
        let (tier, moving, c) = move_status(Some("hot"), &mv(JobOutcome::Running), Some(3), now);
        assert_eq!((tier.as_deref(), moving), (Some("hot"), true));
        assert_eq!(
            (c.status, c.reason.as_str()),
            (ConditionStatus::True, "Moving")
        );
        assert_eq!(c.observed_generation, Some(3));
        let done = JobOutcome::Succeeded { message: None };
        let (tier, moving, c) = move_status(Some("hot"), &mv(done), Some(3), now);
        assert_eq!((tier.as_deref(), moving), (Some("cold"), false));
        assert_eq!(c.reason, "Moved");
        let failed = JobOutcome::Failed {
            reason: "BackoffLimitExceeded".into(),
            message: "digest mismatch".into(),
        };
        let (tier, _, c) = move_status(Some("hot"), &mv(failed), Some(3), now);
        assert_eq!(tier.as_deref(), Some("hot"));
        assert!(c.message.contains("digest mismatch"), "{}", c.message);
    }

    #[test]
    fn access_times_round_to_the_minute_and_only_grow() {
        let now = DateTime::parse_from_rfc3339("2026-12-04T10:20:30Z")
            .unwrap()
            .to_utc();
        assert_eq!(access_time(now), "2026-12-04T10:20:00Z");
        let old = Some("2026-12-01T00:00:00Z".to_owned());
        let new = Some("2026-12-04T10:20:00Z".to_owned());
        assert_eq!(later(old.clone(), new.clone()), new);
        assert_eq!(later(new.clone(), old.clone()), new);
        assert_eq!(later(Some("garbage".into()), old.clone()), old);
        assert_eq!(later(None, None), None);
    }
}
