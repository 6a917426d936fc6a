//! The ReplicaSet controller: keeps `spec.replicas` active pods (not finished, not being
//! deleted) made from the template and controlled by the ReplicaSet, deleting the least
//! established ones first when there are too many, and reports `replicas`, `readyReplicas`,
//! `availableReplicas` (Ready for `minReadySeconds`) and `observedGeneration`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use super::{
    CONTROLLER_MANAGER, controller_ref, is_active, is_controlled_by, is_ready, ready_since,
    record_event, selector_query, stopped,
};

/// The component named in events.
const COMPONENT: &str = "replicaset-controller";

/// Most pods created or deleted in one pass (the rest follow on the next).
const BURST: usize = 100;

struct Context {
    client: Client,
}

/// Run until `stop` turns true.
pub async fn run(client: Client, stop: watch::Receiver<bool>) {
    Controller::new(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Pod>::all(client.clone()), watcher::Config::default())
    .graceful_shutdown_on(stopped(stop))
    .run(reconcile, error_policy, Arc::new(Context { client }))
    .for_each(|_| futures::future::ready(()))
    .await;
}

fn error_policy(rs: Arc<ReplicaSet>, error: &kube::Error, _: Arc<Context>) -> Action {
    tracing::warn!(replicaset = %rs.name_any(), %error, "reconciling a ReplicaSet failed");
    Action::requeue(Duration::from_secs(1))
}

/// The pod a ReplicaSet creates from its template.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let template_meta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.name_any())),
            namespace: rs.namespace(),
            labels: template_meta.labels,
            annotations: template_meta.annotations,
            owner_references: Some(vec![controller_ref(rs)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Order in which surplus pods go: unplaced, then pending, then not ready, then the most
/// recently ready, most restarted and newest.
#[allow(clippy::type_complexity)]
fn deletion_rank(
    pod: &Pod,
) -> (
    bool,
    u8,
    bool,
    std::cmp::Reverse<Option<chrono::DateTime<chrono::Utc>>>,
    std::cmp::Reverse<i32>,
    std::cmp::Reverse<Option<chrono::DateTime<chrono::Utc>>>,
) {
    let placed = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let phase = match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Running") => 2,
        _ => 1,
    };
    let restarts: i32 = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|c| c.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0);
    (
        placed,
        phase,
        is_ready(pod),
        std::cmp::Reverse(ready_since(pod)),
        std::cmp::Reverse(restarts),
        std::cmp::Reverse(pod.creation_timestamp().as_ref().map(super::to_chrono)),
    )
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = rs.namespace().unwrap_or_default();
    let uid = rs.uid().unwrap_or_default();
    let spec = rs.spec.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let listed = pods
        .list(&ListParams::default().labels(&selector_query(&spec.selector)))
        .await?;
    let mut active: Vec<Pod> = listed
        .items
        .into_iter()
        .filter(|p| is_controlled_by(&p.metadata, &uid) && is_active(p))
        .collect();
    let desired = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
    if active.len() < desired {
        let pod = pod_from_template(&rs);
        for _ in 0..(desired - active.len()).min(BURST) {
            let created = pods.create(&PostParams::default(), &pod).await?;
            let message = format!("Created pod: {}", created.name_any());
            record_event(
                &ctx.client,
                rs.as_ref(),
                false,
                "SuccessfulCreate",
                &message,
                COMPONENT,
            )
            .await;
        }
    } else if active.len() > desired {
        active.sort_by_cached_key(deletion_rank);
        for pod in active.iter().take((active.len() - desired).min(BURST)) {
            match pods.delete(&pod.name_any(), &DeleteParams::default()).await {
                Ok(_) => {
                    let message = format!("Deleted pod: {}", pod.name_any());
                    record_event(
                        &ctx.client,
                        rs.as_ref(),
                        false,
                        "SuccessfulDelete",
                        &message,
                        COMPONENT,
                    )
                    .await;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(error) => return Err(error),
            }
        }
    }

    let min_ready = chrono::Duration::seconds(i64::from(spec.min_ready_seconds.unwrap_or(0)));
    let now = chrono::Utc::now();
    let ready: Vec<chrono::DateTime<chrono::Utc>> = active.iter().filter_map(ready_since).collect();
    let available = ready
        .iter()
        .filter(|since| **since + min_ready <= now)
        .count();
    let status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": active.len(),
        "readyReplicas": ready.len(),
        "availableReplicas": available,
        "observedGeneration": rs.metadata.generation,
    });
    let current = serde_json::to_value(rs.status.clone().unwrap_or_default()).unwrap_or_default();
    let changed = [
        "replicas",
        "fullyLabeledReplicas",
        "readyReplicas",
        "availableReplicas",
        "observedGeneration",
    ]
    .iter()
    .any(|field| current[field].as_i64().unwrap_or(0) != status[field].as_i64().unwrap_or(0));
    if changed {
        let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &namespace);
        api.patch_status(
            &rs.name_any(),
            &PatchParams::apply(CONTROLLER_MANAGER),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    }
    // A pod that is Ready but not yet for minReadySeconds becomes available without an event.
    let next_available = ready
        .iter()
        .map(|since| *since + min_ready)
        .filter(|at| *at > now)
        .min();
    Ok(match next_available {
        Some(at) => {
            Action::requeue((at - now).to_std().unwrap_or_default() + Duration::from_millis(10))
        }
        None => Action::await_change(),
    })
}
