//! The Job controller: runs pods from the template until `completions` of them succeed (or,
//! without `completions`, until one succeeds and the rest finish), at most `parallelism` at a
//! time. Failed pods (and, with `restartPolicy: OnFailure`, container restarts) count against
//! `backoffLimit`, and each retry waits an exponential back-off (10s doubling, at most 10
//! minutes) after the last failure. `activeDeadlineSeconds` ends the Job. An `Indexed` Job
//! runs one pod per completion index (annotation, label, hostname and `JOB_COMPLETION_INDEX`)
//! and reports `completedIndexes`. Status carries
//! `active`, `ready`, `succeeded`, `failed`, `startTime`, `completionTime` and the conditions
//! `Complete` and `Failed` (reasons `BackoffLimitExceeded`, `DeadlineExceeded`) that
//! `kubectl wait --for=condition=complete` reads; `ttlSecondsAfterFinished` deletes a finished
//! Job and its pods. The decision is [`decide`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    CONTROLLER_MANAGER, condition, conditions_of, controller_ref, is_active, is_controlled_by,
    is_ready, record_event, stopped, to_chrono,
};

/// Label with the owning Job's uid, by which its pods are found.
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// Label with the owning Job's name.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// Annotation (and label) with an Indexed Job pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// Wait before the first retry; it doubles with each further failure.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// Longest wait between retries.
const BACKOFF_MAX: Duration = Duration::from_secs(600);

/// The component named in events.
const COMPONENT: &str = "job-controller";

struct Context {
    client: Client,
}

/// Run until `stop` turns true.
pub async fn run(client: Client, stop: watch::Receiver<bool>) {
    Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .graceful_shutdown_on(stopped(stop))
        .run(reconcile, error_policy, Arc::new(Context { client }))
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn error_policy(job: Arc<Job>, error: &kube::Error, _: Arc<Context>) -> Action {
    tracing::warn!(job = %job.name_any(), %error, "reconciling a Job failed");
    Action::requeue(Duration::from_secs(1))
}

/// What the Job's pods show.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// Pods that succeeded.
    pub succeeded: i32,
    /// Pods that failed.
    pub failed: i32,
    /// Container restarts of pods still running (they count as failures with `OnFailure`).
    pub restarts: i32,
    /// Pods running or waiting to run.
    pub active: i32,
    /// When the most recent failure happened.
    pub last_failure: Option<DateTime<Utc>>,
}

/// The Job's limits, defaulted as the API server defaults them.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// `completions` (`None`: the first success completes the Job).
    pub completions: Option<i32>,
    /// `parallelism`.
    pub parallelism: i32,
    /// `backoffLimit`.
    pub backoff_limit: i32,
    /// `activeDeadlineSeconds`, as the moment it passes.
    pub deadline: Option<DateTime<Utc>>,
    /// `suspend`.
    pub suspended: bool,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Enough pods succeeded.
    Complete,
    /// The Job failed; active pods are to be deleted.
    Failed {
        /// `BackoffLimitExceeded` or `DeadlineExceeded`.
        reason: &'static str,
        /// The condition message.
        message: &'static str,
    },
    /// Keep going.
    Run {
        /// Pods to create now.
        create: i32,
        /// Active pods to delete (parallelism lowered or suspended).
        delete: i32,
        /// When to look again without an event: a back-off or the deadline ending.
        wake_at: Option<DateTime<Utc>>,
    },
}

/// The back-off before retrying after `failures` failures.
pub fn backoff(failures: i32) -> Duration {
    let doublings = u32::try_from(failures.saturating_sub(1))
        .unwrap_or(0)
        .min(16);
    (BACKOFF_BASE * 2u32.pow(doublings)).min(BACKOFF_MAX)
}

/// Decide the Job's next step from what its pods show.
pub fn decide(limits: &Limits, observed: &Observed, now: DateTime<Utc>) -> Decision {
    if observed.failed + observed.restarts > limits.backoff_limit {
        return Decision::Failed {
            reason: "BackoffLimitExceeded",
            message: "Job has reached the specified backoff limit",
        };
    }
    if limits.deadline.is_some_and(|d| now >= d) {
        return Decision::Failed {
            reason: "DeadlineExceeded",
            message: "Job was active longer than specified deadline",
        };
    }
    let complete = match limits.completions {
        Some(completions) => observed.succeeded >= completions,
        None => observed.succeeded >= 1 && observed.active == 0,
    };
    if complete {
        return Decision::Complete;
    }
    let wanted = if limits.suspended {
        0
    } else {
        match limits.completions {
            Some(completions) => limits.parallelism.min(completions - observed.succeeded),
            None if observed.succeeded > 0 => observed.active,
            None => limits.parallelism,
        }
    };
    let mut wake_at = limits.deadline;
    let mut create = (wanted - observed.active).max(0);
    if create > 0
        && let Some(last) = observed.last_failure
    {
        let retry_at = last
            + chrono::Duration::from_std(backoff(observed.failed + observed.restarts))
                .unwrap_or_default();
        if now < retry_at {
            create = 0;
            wake_at = Some(wake_at.map_or(retry_at, |d| d.min(retry_at)));
        }
    }
    Decision::Run {
        create,
        delete: (observed.active - wanted).max(0),
        wake_at,
    }
}

/// When a finished pod finished: its containers' last finish, else when it last changed
/// condition, else its creation.
fn finished_at(pod: &Pod) -> Option<DateTime<Utc>> {
    let status = pod.status.as_ref();
    let finished = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(to_chrono)
        .max();
    let changed = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.last_transition_time.as_ref())
        .map(to_chrono)
        .max();
    finished
        .or(changed)
        .or_else(|| pod.creation_timestamp().as_ref().map(to_chrono))
}

/// The completion index of a pod of an Indexed Job.
fn completion_index(pod: &Pod) -> Option<i32> {
    pod.annotations().get(COMPLETION_INDEX)?.parse().ok()
}

/// Indexes (below `completions`) with a pod that succeeded.
fn succeeded_indexes(pods: &[Pod], completions: i32) -> BTreeSet<i32> {
    pods.iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
        .filter_map(completion_index)
        .filter(|i| (0..completions).contains(i))
        .collect()
}

/// Indexes that neither succeeded nor have an active pod, lowest first.
pub fn missing_indexes(pods: &[Pod], completions: i32) -> Vec<i32> {
    let succeeded = succeeded_indexes(pods, completions);
    let active: BTreeSet<i32> = pods
        .iter()
        .filter(|p| is_active(p))
        .filter_map(completion_index)
        .collect();
    (0..completions)
        .filter(|i| !succeeded.contains(i) && !active.contains(i))
        .collect()
}

/// `status.completedIndexes`: ranges of consecutive indexes, e.g. `0-2,4`.
pub fn index_ranges(indexes: &BTreeSet<i32>) -> String {
    let mut ranges: Vec<(i32, i32)> = Vec::new();
    for &i in indexes {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == i => *end = i,
            _ => ranges.push((i, i)),
        }
    }
    ranges
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn observe(pods: &[Pod], indexed_completions: Option<i32>) -> Observed {
    let phase = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default()
    };
    let failed: Vec<&Pod> = pods.iter().filter(|p| phase(p) == "Failed").collect();
    let active: Vec<&Pod> = pods.iter().filter(|p| is_active(p)).collect();
    let restarts = active
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) == Some("OnFailure"))
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .map(|c| c.restart_count)
        .sum();
    Observed {
        succeeded: match indexed_completions {
            Some(completions) => succeeded_indexes(pods, completions).len() as i32,
            None => pods.iter().filter(|p| phase(p) == "Succeeded").count() as i32,
        },
        failed: failed.len() as i32,
        restarts,
        active: active.len() as i32,
        last_failure: failed.iter().filter_map(|p| finished_at(p)).max(),
    }
}

/// The pod the Job creates from its template, labelled so the Job finds it; in an Indexed
/// Job it carries its completion index (annotation, label, hostname and the
/// `JOB_COMPLETION_INDEX` variable).
pub fn pod_from_template(job: &Job, index: Option<i32>) -> Pod {
    let template = job.spec.clone().unwrap_or_default().template;
    let template_meta = template.metadata.unwrap_or_default();
    let mut labels: BTreeMap<String, String> = template_meta.labels.unwrap_or_default();
    let uid = job.uid().unwrap_or_default();
    for (key, value) in [
        (CONTROLLER_UID_LABEL, uid.as_str()),
        ("controller-uid", uid.as_str()),
        (JOB_NAME_LABEL, &job.name_any()),
        ("job-name", &job.name_any()),
    ] {
        labels.insert(key.to_owned(), value.to_owned());
    }
    let mut annotations = template_meta.annotations;
    let mut spec = template.spec;
    let mut generate_name = format!("{}-", job.name_any());
    if let Some(index) = index {
        labels.insert(COMPLETION_INDEX.to_owned(), index.to_string());
        annotations
            .get_or_insert_with(Default::default)
            .insert(COMPLETION_INDEX.to_owned(), index.to_string());
        generate_name = format!("{}-{index}-", job.name_any());
        if let Some(spec) = spec.as_mut() {
            spec.hostname = Some(format!("{}-{index}", job.name_any()));
            let variable: EnvVar = serde_json::from_value(json!({
                "name": "JOB_COMPLETION_INDEX",
                "valueFrom": {"fieldRef": {"fieldPath": format!("metadata.annotations['{COMPLETION_INDEX}']")}},
            }))
            .unwrap_or_default();
            let containers = spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten());
            for container in containers {
                let env = container.env.get_or_insert_with(Vec::new);
                if !env.iter().any(|e| e.name == variable.name) {
                    env.push(variable.clone());
                }
            }
        }
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations,
            owner_references: Some(vec![controller_ref(job)]),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

/// A Job condition (Jobs carry `lastProbeTime` where workloads carry `lastUpdateTime`).
fn job_condition(previous: &[Value], type_: &str, reason: &str, message: &str) -> Value {
    let mut c = condition(previous, type_, true, reason, message);
    if let Some(map) = c.as_object_mut() {
        map.remove("lastUpdateTime");
        let probed = map["lastTransitionTime"].clone();
        map.insert("lastProbeTime".to_owned(), probed);
    }
    c
}

fn finished_since(status: &Value) -> Option<DateTime<Utc>> {
    conditions_of(status)
        .iter()
        .find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
        .and_then(|c| {
            c["lastTransitionTime"]
                .as_str()
                .and_then(|t| t.parse().ok())
        })
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = job.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = Utc::now();
    let previous = serde_json::to_value(job.status.clone().unwrap_or_default()).unwrap_or_default();
    let spec = job.spec.clone().unwrap_or_default();
    if let Some(finished) = finished_since(&previous) {
        let Some(ttl) = spec.ttl_seconds_after_finished else {
            return Ok(Action::await_change());
        };
        let expires = finished + chrono::Duration::seconds(i64::from(ttl));
        if now >= expires {
            match jobs
                .delete(&job.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(error) => return Err(error),
            }
            return Ok(Action::await_change());
        }
        return Ok(Action::requeue(
            (expires - now).to_std().unwrap_or_default(),
        ));
    }

    let uid = job.uid().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels(&format!("{CONTROLLER_UID_LABEL}={uid}")))
        .await?
        .items
        .into_iter()
        .filter(|p| is_controlled_by(&p.metadata, &uid))
        .collect();
    let indexed =
        (spec.completion_mode.as_deref() == Some("Indexed")).then(|| spec.completions.unwrap_or(1));
    let observed = observe(&pods, indexed);
    let started: DateTime<Utc> = previous["startTime"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(now);
    let limits = Limits {
        completions: spec.completions.or(if spec.parallelism.is_none() {
            Some(1)
        } else {
            None
        }),
        parallelism: spec.parallelism.unwrap_or(1).max(0),
        backoff_limit: spec.backoff_limit.unwrap_or(6),
        deadline: spec
            .active_deadline_seconds
            .map(|s| started + chrono::Duration::seconds(s)),
        suspended: spec.suspend.unwrap_or(false),
    };
    let decision = decide(&limits, &observed, now);
    let mut active: Vec<&Pod> = pods.iter().filter(|p| is_active(p)).collect();
    active.sort_by_key(|p| {
        (
            is_ready(p),
            std::cmp::Reverse(p.creation_timestamp().as_ref().map(to_chrono)),
        )
    });
    let to_delete = match &decision {
        Decision::Failed { .. } => active.len(),
        Decision::Run { delete, .. } => usize::try_from(*delete).unwrap_or(0),
        Decision::Complete => 0,
    };
    for pod in active.iter().take(to_delete) {
        match pods_api
            .delete(&pod.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(error) => return Err(error),
        }
    }
    let mut created = 0;
    if let Decision::Run { create, .. } = decision {
        let indexes: Vec<Option<i32>> = match indexed {
            Some(completions) => missing_indexes(&pods, completions)
                .into_iter()
                .map(Some)
                .collect(),
            None => vec![None; usize::try_from(create).unwrap_or(0)],
        };
        for index in indexes
            .into_iter()
            .take(usize::try_from(create).unwrap_or(0))
        {
            let pod = pod_from_template(&job, index);
            let made = pods_api.create(&PostParams::default(), &pod).await?;
            created += 1;
            let message = format!("Created pod: {}", made.name_any());
            record_event(
                &ctx.client,
                job.as_ref(),
                false,
                "SuccessfulCreate",
                &message,
                COMPONENT,
            )
            .await;
        }
    }

    let previous_conditions = conditions_of(&previous);
    let mut status = json!({
        "startTime": previous["startTime"].as_str().map_or_else(|| json!(super::now()), |t| json!(t)),
        "active": if matches!(decision, Decision::Failed { .. }) { 0 } else { observed.active + created },
        "ready": active.iter().filter(|p| is_ready(p)).count(),
        "succeeded": observed.succeeded,
        "failed": observed.failed,
    });
    if let Some(completions) = indexed {
        status["completedIndexes"] = json!(index_ranges(&succeeded_indexes(&pods, completions)));
    }
    let mut conditions = previous_conditions.clone();
    match &decision {
        Decision::Complete => {
            conditions.push(job_condition(
                &previous_conditions,
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            ));
            status["completionTime"] = json!(super::now());
        }
        Decision::Failed { reason, message } => {
            conditions.push(job_condition(
                &previous_conditions,
                "Failed",
                reason,
                message,
            ));
        }
        Decision::Run { .. } => {}
    }
    status["conditions"] = json!(conditions);
    let unchanged = [
        "startTime",
        "active",
        "ready",
        "succeeded",
        "failed",
        "conditions",
    ]
    .iter()
    .all(|f| previous[f] == status[f] || (previous[f].is_null() && status[f] == json!(0)));
    match &decision {
        Decision::Complete => {
            record_event(
                &ctx.client,
                job.as_ref(),
                false,
                "Completed",
                "Job completed",
                COMPONENT,
            )
            .await;
        }
        Decision::Failed { reason, message } => {
            record_event(&ctx.client, job.as_ref(), true, reason, message, COMPONENT).await;
        }
        Decision::Run { .. } => {}
    }
    if !unchanged {
        jobs.patch_status(
            &job.name_any(),
            &PatchParams::apply(CONTROLLER_MANAGER),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    }
    Ok(match decision {
        Decision::Run {
            wake_at: Some(at), ..
        } => Action::requeue((at - now).to_std().unwrap_or_default() + Duration::from_millis(10)),
        _ => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(completions: Option<i32>, parallelism: i32, backoff_limit: i32) -> Limits {
        Limits {
            completions,
            parallelism,
            backoff_limit,
            deadline: None,
            suspended: false,
        }
    }

    fn observed(succeeded: i32, failed: i32, active: i32) -> Observed {
        Observed {
            succeeded,
            failed,
            restarts: 0,
            active,
            last_failure: None,
        }
    }

    fn run(create: i32) -> Decision {
        Decision::Run {
            create,
            delete: 0,
            wake_at: None,
        }
    }

    #[test]
    fn pods_are_created_up_to_parallelism_and_remaining_completions() {
        let now = Utc::now();
        assert_eq!(
            decide(&limits(Some(5), 2, 6), &observed(0, 0, 0), now),
            run(2)
        );
        assert_eq!(
            decide(&limits(Some(5), 2, 6), &observed(4, 0, 0), now),
            run(1)
        );
        assert_eq!(
            decide(&limits(Some(5), 2, 6), &observed(5, 0, 0), now),
            Decision::Complete
        );
    }

    #[test]
    fn without_completions_the_first_success_completes_once_the_others_finish() {
        let now = Utc::now();
        assert_eq!(decide(&limits(None, 3, 6), &observed(0, 0, 0), now), run(3));
        assert_eq!(decide(&limits(None, 3, 6), &observed(1, 0, 2), now), run(0));
        assert_eq!(
            decide(&limits(None, 3, 6), &observed(1, 0, 0), now),
            Decision::Complete
        );
    }

    #[test]
    fn failures_beyond_the_backoff_limit_fail_the_job() {
        let now = Utc::now();
        let failed = Decision::Failed {
            reason: "BackoffLimitExceeded",
            message: "Job has reached the specified backoff limit",
        };
        assert_eq!(
            decide(&limits(Some(1), 1, 1), &observed(0, 2, 0), now),
            failed
        );
        let restarts = Observed {
            restarts: 2,
            ..observed(0, 0, 1)
        };
        assert_eq!(decide(&limits(Some(1), 1, 1), &restarts, now), failed);
    }

    #[test]
    fn a_retry_waits_for_the_back_off() {
        let now = Utc::now();
        let just_failed = Observed {
            last_failure: Some(now),
            ..observed(0, 1, 0)
        };
        let decision = decide(&limits(Some(1), 1, 6), &just_failed, now);
        assert_eq!(
            decision,
            Decision::Run {
                create: 0,
                delete: 0,
                wake_at: Some(now + chrono::Duration::seconds(10))
            }
        );
        let later = now + chrono::Duration::seconds(11);
        assert_eq!(decide(&limits(Some(1), 1, 6), &just_failed, later), run(1));
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(40), BACKOFF_MAX);
    }

    #[test]
    fn the_deadline_fails_the_job_and_is_woken_for() {
        let now = Utc::now();
        let deadline = now + chrono::Duration::seconds(30);
        let bounded = Limits {
            deadline: Some(deadline),
            ..limits(Some(1), 1, 6)
        };
        assert_eq!(
            decide(&bounded, &observed(0, 0, 1), now),
            Decision::Run {
                create: 0,
                delete: 0,
                wake_at: Some(deadline)
            }
        );
        assert_eq!(
            decide(&bounded, &observed(0, 0, 1), deadline),
            Decision::Failed {
                reason: "DeadlineExceeded",
                message: "Job was active longer than specified deadline"
            }
        );
    }

    #[test]
    fn indexed_jobs_fill_the_lowest_missing_indexes_and_report_ranges() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "gang", "namespace": "default", "uid": "u"},
            "spec": {"completions": 4, "completionMode": "Indexed", "template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "main", "image": "aigc-worker"}]}}},
        }))
        .unwrap();
        let with_phase = |index: i32, phase: &str| {
            let mut pod = pod_from_template(&job, Some(index));
            pod.status = Some(serde_json::from_value(json!({"phase": phase})).unwrap());
            pod
        };
        let pod = pod_from_template(&job, Some(2));
        assert_eq!(pod.annotations()[COMPLETION_INDEX], "2");
        assert_eq!(
            pod.spec.as_ref().unwrap().hostname.as_deref(),
            Some("gang-2")
        );
        let env = pod.spec.as_ref().unwrap().containers[0]
            .env
            .clone()
            .unwrap();
        assert_eq!(env[0].name, "JOB_COMPLETION_INDEX");
        let pods = [
            with_phase(0, "Succeeded"),
            with_phase(1, "Running"),
            with_phase(3, "Failed"),
        ];
        assert_eq!(missing_indexes(&pods, 4), vec![2, 3]);
        assert_eq!(observe(&pods, Some(4)).succeeded, 1);
        let done: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into();
        assert_eq!(index_ranges(&done), "0-2,4,6-7");
    }

    #[test]
    fn suspending_deletes_active_pods() {
        let suspended = Limits {
            suspended: true,
            ..limits(Some(3), 2, 6)
        };
        assert_eq!(
            decide(&suspended, &observed(0, 0, 2), Utc::now()),
            Decision::Run {
                create: 0,
                delete: 2,
                wake_at: None
            }
        );
    }
}
