//! The default scheduler: watches Pods and Nodes, and places every pod that nobody placed
//! (empty `spec.nodeName`, `schedulerName` empty or `default-scheduler`) through the
//! `pods/binding` subresource, one pod at a time in priority then creation order. A pod that
//! fits nowhere gets `PodScheduled=False`, reason `Unschedulable`, with kube-scheduler's
//! message, and is tried again whenever a pod or node changes. Pods created with
//! `spec.nodeName` are never touched. The decision itself is [`super::placement`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use super::placement::{self, NodeState, Resources};
use super::{now, record_event, stopped, to_chrono};

/// Field manager of the scheduler's writes, as on a real cluster.
const SCHEDULER: &str = "kube-scheduler";

/// Pods bound in this process that the watch has not shown bound yet, so their requests
/// count on their node in the meantime.
type Assumed = HashMap<String, (String, Resources)>;

/// Run until `stop` turns true.
pub async fn run(client: Client, stop: watch::Receiver<bool>) {
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (nodes, node_writer) = reflector::store::<Node>();
    let pod_events = reflector(
        pod_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .map(|_| ());
    let node_events = reflector(
        node_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .map(|_| ());
    let mut events = futures::stream::select(pod_events, node_events).boxed();
    let mut assumed = Assumed::new();
    let mut retry: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let shutdown = stopped(stop);
    tokio::pin!(shutdown);
    loop {
        let retry_due = async {
            match retry.as_mut() {
                Some(sleep) => sleep.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => return,
            event = events.next() => {
                if event.is_none() {
                    return;
                }
                // Handle a burst of changes with one pass.
                while let Some(Some(_)) = events.next().now_or_never() {}
            }
            _ = retry_due => {}
        }
        retry = None;
        if pods.wait_until_ready().now_or_never().is_none()
            || nodes.wait_until_ready().now_or_never().is_none()
        {
            continue;
        }
        let failed = schedule_pending(&client, &pods.state(), &nodes.state(), &mut assumed).await;
        if failed {
            retry = Some(Box::pin(tokio::time::sleep(Duration::from_secs(1))));
        }
    }
}

/// One pass over every pending pod. Returns whether an API call failed (worth a retry).
async fn schedule_pending(
    client: &Client,
    pods: &[Arc<Pod>],
    nodes: &[Arc<Node>],
    assumed: &mut Assumed,
) -> bool {
    let mut states: Vec<NodeState> = nodes
        .iter()
        .map(|n| NodeState::new((**n).clone()))
        .collect();
    let by_uid: HashMap<String, &Pod> = pods
        .iter()
        .map(|p| (p.uid().unwrap_or_default(), p.as_ref()))
        .collect();
    assumed.retain(|uid, _| {
        by_uid.get(uid).is_some_and(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .unwrap_or("")
                .is_empty()
        })
    });
    for pod in pods {
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if node_name.is_empty() || placement::is_terminated(pod) {
            continue;
        }
        if let Some(state) = states.iter_mut().find(|s| s.name() == node_name) {
            state.add_pod(&placement::pod_requests(pod).unwrap_or_default());
        }
    }
    for (node_name, requests) in assumed.values() {
        if let Some(state) = states.iter_mut().find(|s| s.name() == node_name) {
            state.add_pod(requests);
        }
    }
    let mut pending: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| placement::wants_default_scheduler(p))
        .filter(|p| !assumed.contains_key(&p.uid().unwrap_or_default()))
        .collect();
    pending.sort_by_key(|p| {
        (
            std::cmp::Reverse(p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)),
            p.creation_timestamp().map(|t| to_chrono(&t)),
            p.name_any(),
        )
    });
    let mut failed = false;
    for pod in pending {
        let decision = placement::pod_requests(pod).and_then(|requests| {
            placement::choose_node(pod, &requests, &states).map(|n| (n, requests))
        });
        let result = match decision {
            Ok((node_name, requests)) => {
                let bound = bind(client, pod, &node_name).await;
                if bound.is_ok() {
                    if let Some(state) = states.iter_mut().find(|s| s.name() == node_name) {
                        state.add_pod(&requests);
                    }
                    assumed.insert(pod.uid().unwrap_or_default(), (node_name, requests));
                }
                bound
            }
            Err(message) => mark_unschedulable(client, pod, &message).await,
        };
        match result {
            Ok(()) => {}
            // The pod changed or went away meanwhile; its watch event brings another pass.
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(error) => {
                tracing::warn!(pod = %pod.name_any(), %error, "scheduling a pod failed");
                failed = true;
            }
        }
    }
    failed
}

async fn bind(client: &Client, pod: &Pod, node_name: &str) -> Result<(), kube::Error> {
    let namespace = pod.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": pod.name_any(), "namespace": namespace, "uid": pod.uid()},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node_name},
    });
    api.create_subresource::<_, serde_json::Value>(
        "binding",
        &pod.name_any(),
        &PostParams::default(),
        &binding,
    )
    .await?;
    let message = format!(
        "Successfully assigned {namespace}/{} to {node_name}",
        pod.name_any()
    );
    record_event(client, pod, false, "Scheduled", &message, SCHEDULER).await;
    Ok(())
}

async fn mark_unschedulable(client: &Client, pod: &Pod, message: &str) -> Result<(), kube::Error> {
    let current = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
    if current.is_some_and(|c| {
        c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
            && c.message.as_deref() == Some(message)
    }) {
        return Ok(());
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let condition = json!({
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
        "lastProbeTime": null,
        "lastTransitionTime": now(),
    });
    let mut status = json!({"conditions": [condition]});
    if pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_none()
    {
        status["phase"] = json!("Pending");
    }
    api.patch_status(
        &pod.name_any(),
        &PatchParams::apply(SCHEDULER),
        &Patch::Strategic(json!({"status": status})),
    )
    .await?;
    record_event(client, pod, true, "FailedScheduling", message, SCHEDULER).await;
    Ok(())
}
