//! The `meta.k8s.io/v1` `Table` rendering `kubectl get` asks for: a Name column, the CRD's
//! `additionalPrinterColumns` (or the familiar columns of a built-in kind) and Age, with cells
//! computed from simple JSONPath expressions.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::resources::{PrinterColumn, Resource};

/// How much of each object a row carries (`?includeObject=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object.
    None,
    /// `PartialObjectMetadata` (the default).
    Metadata,
    /// The whole object.
    Object,
}

fn column(name: &str, type_: &str, json_path: &str, description: &str) -> PrinterColumn {
    PrinterColumn {
        name: name.to_owned(),
        type_: type_.to_owned(),
        format: String::new(),
        description: description.to_owned(),
        priority: 0,
        json_path: json_path.to_owned(),
    }
}

const AGE: &str =
    "CreationTimestamp is a timestamp representing the server time when this object was created.";

/// The columns shown for a resource (after Name).
pub fn columns(resource: &Resource) -> Vec<PrinterColumn> {
    if !resource.builtin {
        if resource.printer_columns.is_empty() {
            return vec![column("Age", "date", ".metadata.creationTimestamp", AGE)];
        }
        return resource.printer_columns.clone();
    }
    let mut columns = match resource.plural.as_str() {
        "pods" => vec![
            column("Ready", "string", "", "The number of ready containers."),
            column(
                "Status",
                "string",
                "",
                "The pod's phase, or why a container is not running.",
            ),
            column(
                "Restarts",
                "string",
                "",
                "The number of container restarts.",
            ),
        ],
        "deployments" => vec![
            column(
                "Ready",
                "string",
                "",
                "Number of ready replicas out of desired.",
            ),
            column(
                "Up-to-date",
                "integer",
                ".status.updatedReplicas",
                "Updated replicas.",
            ),
            column(
                "Available",
                "integer",
                ".status.availableReplicas",
                "Available replicas.",
            ),
        ],
        "replicasets" => vec![
            column("Desired", "integer", ".spec.replicas", "Desired replicas."),
            column(
                "Current",
                "integer",
                ".status.replicas",
                "Current replicas.",
            ),
            column(
                "Ready",
                "integer",
                ".status.readyReplicas",
                "Ready replicas.",
            ),
        ],
        "jobs" => vec![
            column("Status", "string", "", "Status of the job."),
            column(
                "Completions",
                "string",
                "",
                "Succeeded out of desired completions.",
            ),
        ],
        "namespaces" => vec![column(
            "Status",
            "string",
            ".status.phase",
            "The namespace phase.",
        )],
        "configmaps" => vec![column("Data", "integer", "", "Number of data keys.")],
        "secrets" => vec![
            column("Type", "string", ".type", "The secret type."),
            column("Data", "integer", "", "Number of data keys."),
        ],
        "services" => vec![
            column("Type", "string", ".spec.type", "The service type."),
            column("Cluster-IP", "string", ".spec.clusterIP", "The cluster IP."),
        ],
        "nodes" => vec![column("Status", "string", "", "Whether the node is ready.")],
        "customresourcedefinitions" => {
            return vec![column(
                "Created At",
                "string",
                ".metadata.creationTimestamp",
                AGE,
            )];
        }
        _ => Vec::new(),
    };
    columns.push(column("Age", "date", ".metadata.creationTimestamp", AGE));
    if resource.plural == "pods" {
        for (name, path, description) in [
            ("IP", ".status.podIP", "The pod's IP address."),
            ("Node", ".spec.nodeName", "The node the pod runs on."),
        ] {
            columns.push(PrinterColumn {
                priority: 1,
                ..column(name, "string", path, description)
            });
        }
    }
    columns
}

/// The pod's STATUS as kubectl shows it: a container's waiting or terminated reason when
/// there is one, else the phase.
fn pod_status_reason(object: &Value) -> String {
    let status = &object["status"];
    let init = status["initContainerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (done, container) in init.iter().enumerate() {
        let state = &container["state"];
        if state["terminated"]["exitCode"] == json!(0) {
            continue;
        }
        return match (
            state["terminated"].as_object(),
            state["waiting"]["reason"].as_str(),
        ) {
            (Some(terminated), _) => match terminated.get("reason").and_then(Value::as_str) {
                Some(reason) if !reason.is_empty() => format!("Init:{reason}"),
                _ => format!(
                    "Init:ExitCode:{}",
                    terminated
                        .get("exitCode")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                ),
            },
            (None, Some(reason)) if !reason.is_empty() && reason != "PodInitializing" => {
                format!("Init:{reason}")
            }
            _ => format!("Init:{done}/{}", init.len()),
        };
    }
    let mut reason = status["reason"]
        .as_str()
        .or_else(|| status["phase"].as_str())
        .unwrap_or("Pending")
        .to_owned();
    let mut running = false;
    let mut all_ready = true;
    for container in status["containerStatuses"].as_array().into_iter().flatten() {
        let state = &container["state"];
        all_ready &= container["ready"] == json!(true);
        if let Some(waiting) = state["waiting"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            reason = waiting.to_owned();
        } else if let Some(terminated) = state["terminated"].as_object() {
            reason = match (
                terminated.get("reason").and_then(Value::as_str),
                terminated.get("signal").and_then(Value::as_i64),
            ) {
                (Some(r), _) if !r.is_empty() => r.to_owned(),
                (_, Some(signal)) => format!("Signal:{signal}"),
                _ => format!(
                    "ExitCode:{}",
                    terminated
                        .get("exitCode")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                ),
            };
        } else if state["running"].is_object() {
            running = true;
        }
    }
    if reason == "Completed" && running {
        reason = if all_ready { "Running" } else { "NotReady" }.to_owned();
    }
    reason
}

fn count(value: &Value) -> usize {
    value.as_object().map_or(0, |m| m.len()) + value.as_array().map_or(0, Vec::len)
}

/// Cells of built-in columns that are computed rather than read from one path.
fn computed_cell(resource: &Resource, column: &str, object: &Value) -> Option<Value> {
    let status = &object["status"];
    match (resource.plural.as_str(), column) {
        ("pods", "Ready") => {
            let total = count(&object["spec"]["containers"]);
            let ready = status["containerStatuses"].as_array().map_or(0, |s| {
                s.iter().filter(|c| c["ready"] == json!(true)).count()
            });
            Some(json!(format!("{ready}/{total}")))
        }
        ("pods", "Status") if crate::api::is_deleting(object) => Some(json!("Terminating")),
        ("pods", "Status") => Some(json!(pod_status_reason(object))),
        ("pods", "Restarts") => {
            let restarts: i64 = status["containerStatuses"].as_array().map_or(0, |s| {
                s.iter().filter_map(|c| c["restartCount"].as_i64()).sum()
            });
            Some(json!(restarts.to_string()))
        }
        ("deployments", "Ready") => Some(json!(format!(
            "{}/{}",
            status["readyReplicas"].as_i64().unwrap_or(0),
            object["spec"]["replicas"].as_i64().unwrap_or(1)
        ))),
        ("jobs", "Status") => {
            let complete = status["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == json!("Complete") && c["status"] == json!("True"))
            });
            let failed = status["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == json!("Failed") && c["status"] == json!("True"))
            });
            Some(json!(if complete {
                "Complete"
            } else if failed {
                "Failed"
            } else {
                "Running"
            }))
        }
        ("jobs", "Completions") => Some(json!(format!(
            "{}/{}",
            status["succeeded"].as_i64().unwrap_or(0),
            object["spec"]["completions"].as_i64().unwrap_or(1)
        ))),
        ("configmaps", "Data") => {
            Some(json!(count(&object["data"]) + count(&object["binaryData"])))
        }
        ("secrets", "Data") => Some(json!(count(&object["data"]))),
        ("nodes", "Status") => {
            let ready = status["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == json!("Ready") && c["status"] == json!("True"))
            });
            Some(json!(if ready { "Ready" } else { "NotReady" }))
        }
        _ => None,
    }
}

/// Evaluate a simple JSONPath (`.a.b`, `.a[0].b`, `.a[?(@.type=="Ready")].status`).
pub fn json_path<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut current = object;
    let mut rest = path.strip_prefix('.').unwrap_or(path);
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            let inside = &after[..end];
            rest = after[end + 1..]
                .strip_prefix('.')
                .unwrap_or(&after[end + 1..]);
            if let Some(filter) = inside
                .strip_prefix("?(@.")
                .and_then(|f| f.strip_suffix(')'))
            {
                let (field, wanted) = filter.split_once("==")?;
                let wanted = wanted.trim().trim_matches('"').trim_matches('\'');
                current = current
                    .as_array()?
                    .iter()
                    .find(|item| match item.get(field.trim()) {
                        Some(Value::String(s)) => s == wanted,
                        Some(other) => serde_json::to_string(other).is_ok_and(|s| s == wanted),
                        None => false,
                    })?;
            } else {
                current = current.get(inside.parse::<usize>().ok()?)?;
            }
            continue;
        }
        let end = rest.find(['.', '[']).unwrap_or(rest.len());
        current = current.get(&rest[..end])?;
        rest = rest[end..].strip_prefix('.').unwrap_or(&rest[end..]);
    }
    Some(current)
}

/// A duration as kubectl shows ages: `45s`, `5m10s`, `3h`, `12d`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    let seconds = seconds.max(0);
    let minutes = seconds / 60;
    let hours = seconds / 3600;
    let days = hours / 24;
    let years = days / 365;
    if seconds < 120 {
        format!("{seconds}s")
    } else if minutes < 10 {
        match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        }
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        }
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        match days % 365 {
            0 => format!("{years}y"),
            d => format!("{years}y{d}d"),
        }
    } else {
        format!("{years}y")
    }
}

fn age(timestamp: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(timestamp) {
        Ok(t) => human_duration((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds()),
        Err(_) => "<unknown>".to_owned(),
    }
}

fn cell(resource: &Resource, column: &PrinterColumn, object: &Value) -> Value {
    if resource.builtin
        && let Some(value) = computed_cell(resource, &column.name, object)
    {
        return value;
    }
    let Some(value) = json_path(object, &column.json_path) else {
        return Value::Null;
    };
    match (column.type_.as_str(), value) {
        ("date", Value::String(s)) => json!(age(s)),
        (_, Value::String(_) | Value::Number(_) | Value::Bool(_)) => value.clone(),
        (_, Value::Null) => Value::Null,
        (_, other) => json!(other.to_string()),
    }
}

fn partial_metadata(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object["metadata"],
    })
}

/// A Table of objects; `headers` adds the column definitions.
pub fn table(
    resource: &Resource,
    objects: &[Arc<Value>],
    headers: bool,
    include: IncludeObject,
    list_metadata: Value,
) -> Value {
    let columns = columns(resource);
    let definitions: Vec<Value> = if headers {
        std::iter::once(json!({
            "name": "Name", "type": "string", "format": "name", "priority": 0,
            "description": "Name must be unique within a namespace.",
        }))
        .chain(columns.iter().map(|c| {
            json!({"name": c.name, "type": if c.type_ == "date" { "string" } else { c.type_.as_str() },
                   "format": c.format, "description": c.description, "priority": c.priority})
        }))
        .collect()
    } else {
        Vec::new()
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let cells: Vec<Value> = std::iter::once(object["metadata"]["name"].clone())
                .chain(columns.iter().map(|c| cell(resource, c, object)))
                .collect();
            let mut row = json!({"cells": cells});
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => row["object"] = partial_metadata(object),
                IncludeObject::Object => row["object"] = (**object).clone(),
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_status_shows_why_a_container_is_not_running() {
        let pod = |statuses: Value, phase: &str| json!({"status": {"phase": phase, "containerStatuses": statuses}});
        assert_eq!(pod_status_reason(&pod(json!([]), "Pending")), "Pending");
        let pulling = json!([{"state": {"waiting": {"reason": "ErrImagePull"}}}]);
        assert_eq!(pod_status_reason(&pod(pulling, "Pending")), "ErrImagePull");
        let done = json!([{"state": {"terminated": {"reason": "Completed", "exitCode": 0}}}]);
        assert_eq!(pod_status_reason(&pod(done, "Succeeded")), "Completed");
        let initializing = json!({"status": {"phase": "Pending",
            "initContainerStatuses": [{"state": {"terminated": {"exitCode": 0}}}, {"state": {"running": {}}}]}});
        assert_eq!(pod_status_reason(&initializing), "Init:1/2");
        let running = json!([{"ready": true, "state": {"running": {}}}]);
        assert_eq!(pod_status_reason(&pod(running, "Running")), "Running");
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(130), "2m10s");
        assert_eq!(human_duration(3600 * 5 + 60 * 7), "5h7m");
        assert_eq!(human_duration(3600 * 24 * 3), "3d");
        assert_eq!(human_duration(-5), "<invalid>");
    }

    #[test]
    fn json_paths_follow_fields_indices_and_filters() {
        let object = json!({"status": {"conditions": [
            {"type": "Admitted", "status": "True"},
            {"type": "Ready", "status": "False"}
        ]}});
        assert_eq!(
            json_path(&object, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(&json!("False"))
        );
        assert_eq!(
            json_path(&object, ".status.conditions[0].type"),
            Some(&json!("Admitted"))
        );
        assert_eq!(json_path(&object, ".status.missing"), None);
    }
}
