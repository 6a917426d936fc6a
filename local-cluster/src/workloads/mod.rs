//! The workload half of the embedded cluster's control plane: the default scheduler and the
//! minimal built-in controllers our manifests rely on, each a task started by
//! [`spawn`] inside [`crate::LocalCluster::start`] (when `Config::workloads` is set) and
//! stopped with the cluster.
//!
//! - [`scheduler`] places unplaced pods on Nodes ([`placement`] decides) through `pods/binding`;
//! - [`deployment`] keeps a ReplicaSet per pod template and rolls between them;
//! - [`replica_set`] keeps the number of pods;
//! - [`job`] runs pods to completion with back-off, deadlines and status conditions;
//! - [`endpoints`] lists the ready pods behind each Service (Endpoints and EndpointSlices);
//! - [`service_proxy`] listens on every Service's `clusterIP:port` and forwards TCP to them.
//!
//! They are API clients like any other controller: they talk to the server over its plain
//! loopback port through kube-rs and never touch its storage, so they see exactly what kubectl
//! sees. Running pods is the kubelet's job, not theirs: a pod is Ready when its status says so.

pub mod deployment;
pub mod endpoints;
pub mod job;
pub mod placement;
pub mod quantity;
pub mod replica_set;
pub mod scheduler;
pub mod service_proxy;

use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::Resource;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Field manager of the controllers' writes, as on a real cluster.
const CONTROLLER_MANAGER: &str = "kube-controller-manager";

/// Start every workload task; each ends when `stop` turns true.
pub fn spawn(client: kube::Client, stop: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(scheduler::run(client.clone(), stop.clone())),
        tokio::spawn(deployment::run(client.clone(), stop.clone())),
        tokio::spawn(replica_set::run(client.clone(), stop.clone())),
        tokio::spawn(job::run(client.clone(), stop.clone())),
        tokio::spawn(endpoints::run(client.clone(), stop.clone())),
        tokio::spawn(service_proxy::run(client, stop.clone())),
    ]
}

/// Resolves when `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Record a core/v1 Event about `object` (what `kubectl describe` lists). Events are
/// best-effort, as on a real cluster: a failure to record one is only logged.
async fn record_event<K: Resource<DynamicType = ()>>(
    client: &kube::Client,
    object: &K,
    warning: bool,
    reason: &str,
    message: &str,
    component: &str,
) {
    let meta = object.meta();
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let name = meta.name.clone().unwrap_or_default();
    let now = now();
    let event = json!({
        "metadata": {"generateName": format!("{name}."), "namespace": namespace},
        "involvedObject": {
            "apiVersion": K::api_version(&()), "kind": K::kind(&()), "name": name,
            "namespace": meta.namespace, "uid": meta.uid,
        },
        "type": if warning { "Warning" } else { "Normal" },
        "reason": reason,
        "message": message,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    let Ok(event) = serde_json::from_value::<Event>(event) else {
        return;
    };
    let events: kube::Api<Event> = kube::Api::namespaced(client.clone(), &namespace);
    if let Err(error) = events.create(&Default::default(), &event).await {
        tracing::debug!(%error, reason, "recording an event failed");
    }
}

/// The current time as Kubernetes writes timestamps.
fn now() -> String {
    crate::api::now()
}

/// A label selector as the `labelSelector` query parameter writes it.
fn selector_query(selector: &LabelSelector) -> String {
    let mut terms: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for expression in selector.match_expressions.iter().flatten() {
        let values = expression.values.clone().unwrap_or_default().join(",");
        terms.push(match expression.operator.as_str() {
            "In" => format!("{} in ({values})", expression.key),
            "NotIn" => format!("{} notin ({values})", expression.key),
            "Exists" => expression.key.clone(),
            _ => format!("!{}", expression.key),
        });
    }
    terms.join(",")
}

/// The owner reference a controller puts on what it creates.
fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    let meta = owner.meta();
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether the object with `meta` is controlled by the owner with `uid`.
fn is_controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// Whether a pod counts for its controller: not finished and not being deleted.
fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !placement::is_terminated(pod)
}

/// When the pod became Ready, if it is Ready.
fn ready_since(pod: &Pod) -> Option<chrono::DateTime<chrono::Utc>> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(
        condition
            .last_transition_time
            .as_ref()
            .map_or(chrono::DateTime::<chrono::Utc>::MIN_UTC, to_chrono),
    )
}

/// A Kubernetes timestamp as a chrono time.
fn to_chrono(
    time: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> chrono::DateTime<chrono::Utc> {
    let nanos = u32::try_from(time.0.subsec_nanosecond()).unwrap_or(0);
    chrono::DateTime::from_timestamp(time.0.as_second(), nanos).unwrap_or_default()
}

/// Whether the pod is Ready.
fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// A status condition; `lastTransitionTime` is kept from `previous` when the status, reason
/// and message did not change, so rewriting an unchanged status writes nothing.
fn condition(previous: &[Value], type_: &str, status: bool, reason: &str, message: &str) -> Value {
    let status = if status { "True" } else { "False" };
    let old = previous.iter().find(|c| c["type"] == type_);
    let unchanged = old
        .is_some_and(|c| c["status"] == status && c["reason"] == reason && c["message"] == message);
    let (transition, update) = match old {
        Some(c) if unchanged => (c["lastTransitionTime"].clone(), c["lastUpdateTime"].clone()),
        Some(c) if c["status"] == status => (c["lastTransitionTime"].clone(), json!(now())),
        _ => (json!(now()), json!(now())),
    };
    json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
        "lastUpdateTime": update,
    })
}

/// The conditions of a status object as JSON.
fn conditions_of(status: &Value) -> Vec<Value> {
    status["conditions"].as_array().cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_render_as_query_parameters() {
        let selector: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "legacy", "operator": "DoesNotExist"},
            ],
        }))
        .unwrap();
        assert_eq!(selector_query(&selector), "app=web,tier in (a,b),!legacy");
    }

    #[test]
    fn an_unchanged_condition_keeps_its_times() {
        let first = condition(&[], "Available", true, "MinimumReplicasAvailable", "ok");
        let again = condition(
            std::slice::from_ref(&first),
            "Available",
            true,
            "MinimumReplicasAvailable",
            "ok",
        );
        assert_eq!(first, again);
        let flipped = condition(
            std::slice::from_ref(&first),
            "Available",
            false,
            "MinimumReplicasUnavailable",
            "no",
        );
        assert_eq!(flipped["status"], "False");
    }
}
