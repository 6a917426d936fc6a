//! Events the kubelet records on pods (`kubectl describe pod` shows them): containers
//! started, images that cannot be resolved, back-offs, failed probes and stops.

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, PostParams};
use serde_json::json;

/// `Normal` or `Warning`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Routine.
    Normal,
    /// Something to look at.
    Warning,
}

/// One event about a pod (and, when set, one of its containers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEvent {
    /// Normal or Warning.
    pub severity: Severity,
    /// CamelCase reason, e.g. `Started`, `BackOff`.
    pub reason: &'static str,
    /// What happened.
    pub message: String,
    /// The container concerned.
    pub container: Option<String>,
}

/// The pod the events are about.
pub struct Subject<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// Uid.
    pub uid: &'a str,
    /// The node it runs on.
    pub node: &'a str,
}

/// Record `event`; failures are logged, never fatal.
pub async fn record(client: &kube::Client, subject: &Subject<'_>, event: &PodEvent) {
    let now = crate::api::now();
    let severity = match event.severity {
        Severity::Normal => "Normal",
        Severity::Warning => "Warning",
    };
    let mut involved = json!({
        "apiVersion": "v1", "kind": "Pod",
        "namespace": subject.namespace, "name": subject.name, "uid": subject.uid,
    });
    if let Some(container) = &event.container {
        involved["fieldPath"] = json!(format!("spec.containers{{{container}}}"));
    }
    let body = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{}.", subject.name), "namespace": subject.namespace},
        "involvedObject": involved,
        "reason": event.reason,
        "message": event.message,
        "type": severity,
        "source": {"component": "kubelet", "host": subject.node},
        "reportingComponent": "kubelet",
        "reportingInstance": subject.node,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    let Ok(event) = serde_json::from_value::<Event>(body) else {
        return;
    };
    let api: Api<Event> = Api::namespaced(client.clone(), subject.namespace);
    if let Err(e) = api.create(&PostParams::default(), &event).await {
        tracing::warn!(pod = %subject.name, error = %e, "recording an event failed");
    }
}
