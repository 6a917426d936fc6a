//! The Deployment controller: one ReplicaSet per pod template, named
//! `<deployment>-<pod-template-hash>` and labelled with that hash, controlled by the
//! Deployment; a template change rolls pods from the old ReplicaSets to the new one within
//! `maxSurge`/`maxUnavailable` (or all at once with `Recreate`); scaling resizes the current
//! one. Status carries `replicas`, `updatedReplicas`, `readyReplicas`, `availableReplicas`,
//! `observedGeneration` and the `Available`/`Progressing` conditions that
//! `kubectl rollout status` and `kubectl wait` read (`Progressing=False`, reason
//! `ProgressDeadlineExceeded`, once pod counts stop changing for `progressDeadlineSeconds`
//! before the rollout completes). Orphaned ReplicaSets it selects are adopted; ReplicaSets beyond
//! `revisionHistoryLimit` are deleted. The rollout arithmetic is [`rolling_update`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use super::{
    CONTROLLER_MANAGER, condition, conditions_of, controller_ref, is_controlled_by, record_event,
    selector_query, stopped,
};

/// Label (and selector term) that tells the ReplicaSets of one Deployment apart.
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// Annotation with a ReplicaSet's revision, as `kubectl rollout history` reads it.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

/// The component named in events.
const COMPONENT: &str = "deployment-controller";

struct Context {
    client: Client,
}

/// Run until `stop` turns true.
pub async fn run(client: Client, stop: watch::Receiver<bool>) {
    Controller::new(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(stopped(stop))
    .run(reconcile, error_policy, Arc::new(Context { client }))
    .for_each(|_| futures::future::ready(()))
    .await;
}

fn error_policy(deployment: Arc<Deployment>, error: &kube::Error, _: Arc<Context>) -> Action {
    tracing::warn!(deployment = %deployment.name_any(), %error, "reconciling a Deployment failed");
    Action::requeue(Duration::from_secs(1))
}

/// A stable short hash of a pod template, spelled with the characters Kubernetes uses for
/// generated names (no vowels, so it never spells words).
pub fn template_hash(template: &PodTemplateSpec) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let text = serde_json::to_string(template).unwrap_or_default();
    let mut hash: u32 = 0x811c_9dc5;
    for byte in text.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash.to_string()
        .bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

/// `maxSurge`/`maxUnavailable` as pod counts for `desired` replicas: percentages round up
/// for the surge and down for unavailability, and both zero would stall, so unavailability
/// becomes 1 then (as kube-controller-manager does).
pub fn fenceposts(
    desired: i32,
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
) -> (i32, i32) {
    let resolve = |value: Option<&IntOrString>, round_up: bool| -> i32 {
        match value {
            None => {
                let quarter = f64::from(desired) * 0.25;
                (if round_up {
                    quarter.ceil()
                } else {
                    quarter.floor()
                }) as i32
            }
            Some(IntOrString::Int(n)) => *n,
            Some(IntOrString::String(text)) => {
                let percent: f64 = text.trim_end_matches('%').parse().unwrap_or(25.0);
                let share = f64::from(desired) * percent / 100.0;
                (if round_up {
                    share.ceil()
                } else {
                    share.floor()
                }) as i32
            }
        }
    };
    let surge = resolve(max_surge, true).max(0);
    let unavailable = resolve(max_unavailable, false).clamp(0, desired.max(0));
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// Pods of one ReplicaSet: wanted (`spec.replicas`) and available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.availableReplicas`.
    pub available: i32,
}

/// One rolling-update step: the new ReplicaSet grows while the total stays within
/// `desired + surge`; old ones (oldest first) shrink, unavailable pods first, while at least
/// `desired - unavailable` pods stay available. Returns the new `spec.replicas` of the new
/// ReplicaSet and of each old one.
pub fn rolling_update(
    desired: i32,
    surge: i32,
    unavailable: i32,
    new: Counts,
    olds: &[Counts],
) -> (i32, Vec<i32>) {
    let old_total: i32 = olds.iter().map(|o| o.replicas).sum();
    let new_replicas = if new.replicas >= desired {
        desired
    } else {
        let room = desired + surge - (new.replicas + old_total);
        new.replicas + room.clamp(0, desired - new.replicas)
    };
    let mut old_replicas: Vec<i32> = olds.iter().map(|o| o.replicas).collect();
    let min_available = desired - unavailable;
    let new_unavailable = (new.replicas - new.available).max(0);
    let mut budget = new.replicas + old_total - min_available - new_unavailable;
    for (old, replicas) in olds.iter().zip(old_replicas.iter_mut()) {
        if budget <= 0 {
            break;
        }
        let cut = (old.replicas - old.available).clamp(0, budget);
        *replicas -= cut;
        budget -= cut;
    }
    let available: i32 = new.available
        + olds
            .iter()
            .zip(&old_replicas)
            .map(|(o, r)| o.available.min(*r))
            .sum::<i32>();
    let mut budget = available - min_available;
    for replicas in old_replicas.iter_mut() {
        if budget <= 0 {
            break;
        }
        let cut = (*replicas).min(budget);
        *replicas -= cut;
        budget -= cut;
    }
    (new_replicas, old_replicas)
}

fn counts(rs: &ReplicaSet) -> Counts {
    Counts {
        replicas: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        available: rs
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0),
    }
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The ReplicaSet for the Deployment's current template.
fn new_replica_set(
    deployment: &Deployment,
    hash: &str,
    replicas: i32,
    revision: i64,
) -> ReplicaSet {
    let spec = deployment.spec.clone().unwrap_or_default();
    let mut template = spec.template.clone();
    let mut template_meta = template.metadata.take().unwrap_or_default();
    template_meta
        .labels
        .get_or_insert_with(Default::default)
        .insert(TEMPLATE_HASH_LABEL.to_owned(), hash.to_owned());
    let labels = template_meta.labels.clone();
    template.metadata = Some(template_meta);
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(TEMPLATE_HASH_LABEL.to_owned(), hash.to_owned());
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", deployment.name_any())),
            namespace: deployment.namespace(),
            labels,
            annotations: Some([(REVISION_ANNOTATION.to_owned(), revision.to_string())].into()),
            owner_references: Some(vec![controller_ref(deployment)]),
            ..ObjectMeta::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

async fn scale(
    ctx: &Context,
    deployment: &Deployment,
    api: &Api<ReplicaSet>,
    rs: &ReplicaSet,
    replicas: i32,
) -> Result<(), kube::Error> {
    let current = counts(rs).replicas;
    if current == replicas {
        return Ok(());
    }
    api.patch(
        &rs.name_any(),
        &PatchParams::apply(CONTROLLER_MANAGER),
        &Patch::Merge(json!({"spec": {"replicas": replicas}})),
    )
    .await?;
    let direction = if replicas > current { "up" } else { "down" };
    let message = format!(
        "Scaled {direction} replica set {} from {current} to {replicas}",
        rs.name_any()
    );
    record_event(
        &ctx.client,
        deployment,
        false,
        "ScalingReplicaSet",
        &message,
        COMPONENT,
    )
    .await;
    Ok(())
}

async fn reconcile(deployment: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    if deployment.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = deployment.namespace().unwrap_or_default();
    let uid = deployment.uid().unwrap_or_default();
    let spec = deployment.spec.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1);
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let selected = api
        .list(&ListParams::default().labels(&selector_query(&spec.selector)))
        .await?
        .items;
    let mut owned = Vec::new();
    for rs in selected {
        if is_controlled_by(&rs.metadata, &uid) {
            owned.push(rs);
        } else if !rs
            .owner_references()
            .iter()
            .any(|r| r.controller == Some(true))
        {
            // Orphans matching the selector are adopted, as after `--cascade=orphan`.
            owned.push(adopt(&api, &deployment, &rs).await?);
        }
    }
    owned.sort_by_key(|rs| {
        (
            rs.creation_timestamp().as_ref().map(super::to_chrono),
            rs.name_any(),
        )
    });
    let hash = template_hash(&spec.template);
    let is_new = |rs: &ReplicaSet| rs.labels().get(TEMPLATE_HASH_LABEL) == Some(&hash);
    let (news, olds): (Vec<ReplicaSet>, Vec<ReplicaSet>) = owned.into_iter().partition(is_new);
    let latest_revision = olds.iter().map(revision).max().unwrap_or(0);
    let paused = spec.paused.unwrap_or(false);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let rolling = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let (surge, unavailable) = if recreate {
        (0, desired)
    } else {
        fenceposts(
            desired,
            rolling.and_then(|r| r.max_surge.as_ref()),
            rolling.and_then(|r| r.max_unavailable.as_ref()),
        )
    };
    let old_counts: Vec<Counts> = olds.iter().map(counts).collect();
    let old_pods: i32 = olds
        .iter()
        .map(|rs| rs.status.as_ref().map_or(0, |s| s.replicas))
        .sum();

    let mut new = news.into_iter().next();
    if !paused {
        let new_counts = new.as_ref().map_or(
            Counts {
                replicas: 0,
                available: 0,
            },
            counts,
        );
        let (new_replicas, old_replicas) = if recreate {
            let olds_gone = old_pods == 0 && old_counts.iter().all(|c| c.replicas == 0);
            (if olds_gone { desired } else { 0 }, vec![0; olds.len()])
        } else {
            rolling_update(desired, surge, unavailable, new_counts, &old_counts)
        };
        match &new {
            Some(rs) => {
                if revision(rs) <= latest_revision {
                    api.patch(
                        &rs.name_any(),
                        &PatchParams::apply(CONTROLLER_MANAGER),
                        &Patch::Merge(json!({"metadata": {"annotations": {REVISION_ANNOTATION: (latest_revision + 1).to_string()}}})),
                    )
                    .await?;
                }
                scale(&ctx, &deployment, &api, rs, new_replicas).await?;
            }
            None => {
                let rs = new_replica_set(&deployment, &hash, new_replicas, latest_revision + 1);
                match api.create(&PostParams::default(), &rs).await {
                    Ok(created) => {
                        let message = format!(
                            "Scaled up replica set {} from 0 to {new_replicas}",
                            created.name_any()
                        );
                        record_event(
                            &ctx.client,
                            deployment.as_ref(),
                            false,
                            "ScalingReplicaSet",
                            &message,
                            COMPONENT,
                        )
                        .await;
                        new = Some(created);
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        // Taken by a ReplicaSet this Deployment does not control and cannot
                        // adopt (another controller owns it, or its labels differ).
                        tracing::warn!(deployment = %deployment.name_any(), replicaset = %rs.name_any(), "the ReplicaSet name for the current template is taken");
                        return Ok(Action::requeue(Duration::from_secs(5)));
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        for (rs, replicas) in olds.iter().zip(old_replicas) {
            scale(&ctx, &deployment, &api, rs, replicas).await?;
        }
        delete_old_history(&api, &olds, spec.revision_history_limit.unwrap_or(10)).await?;
    }

    // The Deployment carries its current revision, as `kubectl rollout history/undo` expect.
    let current_revision = new
        .as_ref()
        .map(|rs| revision(rs).max(latest_revision + 1).to_string());
    if let Some(current) = current_revision
        && deployment.annotations().get(REVISION_ANNOTATION) != Some(&current)
    {
        let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
        deployments
            .patch(
                &deployment.name_any(),
                &PatchParams::apply(CONTROLLER_MANAGER),
                &Patch::Merge(json!({"metadata": {"annotations": {REVISION_ANNOTATION: current}}})),
            )
            .await?;
    }

    let sum = |f: fn(&ReplicaSet) -> i32| -> i32 { new.iter().chain(olds.iter()).map(f).sum() };
    let replicas = sum(|rs| rs.status.as_ref().map_or(0, |s| s.replicas));
    let ready = sum(|rs| {
        rs.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    });
    let available = sum(|rs| {
        rs.status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0)
    });
    let updated = new
        .as_ref()
        .and_then(|rs| rs.status.as_ref())
        .map_or(0, |s| s.replicas);
    let new_name = new.as_ref().map(|rs| rs.name_any()).unwrap_or_default();
    let previous =
        serde_json::to_value(deployment.status.clone().unwrap_or_default()).unwrap_or_default();
    let previous_conditions = conditions_of(&previous);
    let min_available = desired - if recreate { 0 } else { unavailable };
    let available_condition = if available >= min_available {
        condition(
            &previous_conditions,
            "Available",
            true,
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        )
    } else {
        condition(
            &previous_conditions,
            "Available",
            false,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    };
    let complete =
        updated == desired && replicas == desired && available >= desired && old_pods == 0;
    // Progress is any change in the pod counts; a rollout without any for
    // `progressDeadlineSeconds` is reported as stuck (and `kubectl rollout status` fails).
    let counts_now = [replicas, updated, ready, available];
    let counts_before = [
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
    ]
    .map(|f| previous[f].as_i64().unwrap_or(0) as i32);
    let progressed = counts_now != counts_before
        || previous["observedGeneration"].as_i64() != deployment.metadata.generation;
    let previous_progressing = previous_conditions
        .iter()
        .find(|c| c["type"] == "Progressing");
    let already_stuck =
        previous_progressing.is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded");
    let last_progress = previous_progressing
        .and_then(|c| c["lastUpdateTime"].as_str())
        .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok());
    let deadline = spec
        .progress_deadline_seconds
        .map(|s| chrono::Duration::seconds(i64::from(s)));
    let now = chrono::Utc::now();
    let stuck_at = match (progressed, last_progress, deadline) {
        (false, Some(last), Some(deadline)) => Some(last + deadline),
        _ => None,
    };
    let mut wake = None;
    let progressing = if complete {
        condition(
            &previous_conditions,
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            &format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        )
    } else if !paused && !progressed && (already_stuck || stuck_at.is_some_and(|at| now >= at)) {
        condition(
            &previous_conditions,
            "Progressing",
            false,
            "ProgressDeadlineExceeded",
            &format!("ReplicaSet \"{new_name}\" has timed out progressing."),
        )
    } else {
        let mut c = condition(
            &previous_conditions,
            "Progressing",
            true,
            "ReplicaSetUpdated",
            &format!("ReplicaSet \"{new_name}\" is progressing."),
        );
        if progressed {
            c["lastUpdateTime"] = json!(super::now());
        }
        wake = match (progressed, deadline) {
            (true, Some(deadline)) => Some(now + deadline),
            _ => stuck_at,
        };
        c
    };
    let status = json!({
        "observedGeneration": deployment.metadata.generation,
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": (desired - available).max(0),
        "conditions": [available_condition, progressing],
    });
    let unchanged = [
        "observedGeneration",
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
        "unavailableReplicas",
    ]
    .iter()
    .all(|f| previous[f].as_i64().unwrap_or(0) == status[f].as_i64().unwrap_or(0))
        && previous["conditions"] == status["conditions"];
    if !unchanged {
        let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
        deployments
            .patch_status(
                &deployment.name_any(),
                &PatchParams::apply(CONTROLLER_MANAGER),
                &Patch::Merge(json!({"status": status})),
            )
            .await?;
    }
    Ok(match wake {
        Some(at) if !paused => Action::requeue(
            (at - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(10),
        ),
        _ => Action::await_change(),
    })
}

/// Make an orphaned ReplicaSet this Deployment's own.
async fn adopt(
    api: &Api<ReplicaSet>,
    deployment: &Deployment,
    rs: &ReplicaSet,
) -> Result<ReplicaSet, kube::Error> {
    let mut owners = rs.owner_references().to_vec();
    owners.push(controller_ref(deployment));
    api.patch(
        &rs.name_any(),
        &PatchParams::apply(CONTROLLER_MANAGER),
        &Patch::Merge(json!({"metadata": {"ownerReferences": owners, "resourceVersion": rs.resource_version()}})),
    )
    .await
}

/// Delete scaled-down old ReplicaSets beyond the history limit, oldest revision first.
async fn delete_old_history(
    api: &Api<ReplicaSet>,
    olds: &[ReplicaSet],
    limit: i32,
) -> Result<(), kube::Error> {
    let mut idle: Vec<&ReplicaSet> = olds
        .iter()
        .filter(|rs| counts(rs).replicas == 0 && rs.status.as_ref().is_none_or(|s| s.replicas == 0))
        .collect();
    let keep = usize::try_from(limit).unwrap_or(0);
    if idle.len() <= keep {
        return Ok(());
    }
    idle.sort_by_key(|rs| revision(rs));
    for rs in &idle[..idle.len() - keep] {
        match api
            .delete(&rs.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(replicas: i32, available: i32) -> Counts {
        Counts {
            replicas,
            available,
        }
    }

    #[test]
    fn fenceposts_round_like_kubernetes() {
        assert_eq!(fenceposts(4, None, None), (1, 1));
        assert_eq!(fenceposts(1, None, None), (1, 0));
        let pct = |s: &str| IntOrString::String(s.to_owned());
        assert_eq!(fenceposts(10, Some(&pct("15%")), Some(&pct("15%"))), (2, 1));
        assert_eq!(
            fenceposts(3, Some(&IntOrString::Int(0)), Some(&IntOrString::Int(0))),
            (0, 1)
        );
    }

    #[test]
    fn a_rollout_surges_first_then_retires_old_pods_as_new_ones_become_available() {
        // desired 3, surge 1, unavailable 0
        let (new, olds) = rolling_update(3, 1, 0, c(0, 0), &[c(3, 3)]);
        assert_eq!((new, olds), (1, vec![3]));
        let (new, olds) = rolling_update(3, 1, 0, c(1, 0), &[c(3, 3)]);
        assert_eq!(
            (new, olds),
            (1, vec![3]),
            "nothing moves until the new pod is available"
        );
        let (new, olds) = rolling_update(3, 1, 0, c(1, 1), &[c(3, 3)]);
        assert_eq!((new, olds), (1, vec![2]));
        let (new, olds) = rolling_update(3, 1, 0, c(1, 1), &[c(2, 2)]);
        assert_eq!((new, olds), (2, vec![2]));
        let (new, olds) = rolling_update(3, 1, 0, c(3, 3), &[c(1, 1)]);
        assert_eq!((new, olds), (3, vec![0]));
    }

    #[test]
    fn unavailable_old_pods_go_first_and_max_unavailable_allows_going_below_desired() {
        let (new, olds) = rolling_update(4, 0, 1, c(0, 0), &[c(4, 2)]);
        assert_eq!(new, 0);
        assert_eq!(
            olds,
            vec![3],
            "an unavailable pod goes, keeping 3 of 4 possible"
        );
        let (_, olds) = rolling_update(4, 0, 1, c(0, 0), &[c(4, 4)]);
        assert_eq!(olds, vec![3], "one available pod may go");
        let (new, _) = rolling_update(4, 0, 1, c(0, 0), &[c(1, 1)]);
        assert_eq!(new, 3);
    }

    #[test]
    fn scaling_without_a_rollout_resizes_the_new_set() {
        assert_eq!(rolling_update(5, 1, 1, c(2, 2), &[]), (5, vec![]));
        assert_eq!(rolling_update(1, 1, 0, c(3, 3), &[]), (1, vec![]));
    }

    #[test]
    fn the_template_hash_is_stable_and_changes_with_the_template() {
        let a: PodTemplateSpec =
            serde_json::from_value(json!({"spec": {"containers": [{"name": "c", "image": "a"}]}}))
                .unwrap();
        let b: PodTemplateSpec =
            serde_json::from_value(json!({"spec": {"containers": [{"name": "c", "image": "b"}]}}))
                .unwrap();
        assert_eq!(template_hash(&a), template_hash(&a.clone()));
        assert_ne!(template_hash(&a), template_hash(&b));
        assert!(
            template_hash(&a)
                .bytes()
                .all(|c| b"bcdfghjklmnpqrstvwxz2456789".contains(&c))
        );
    }
}
