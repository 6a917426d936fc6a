//! CustomResourceDefinition admission: the checks and defaults the API server applies to a CRD
//! before serving its resource, and the `Established`/`NamesAccepted` status it reports.
//! Serving the resource itself is [`crate::resources::Registry::register_crd`]'s job.

use serde_json::{Value, json};

use crate::api::now;
use crate::schema::{Cause, FieldError};
use crate::status::ApiError;

fn required(field: &str) -> FieldError {
    FieldError {
        field: field.to_owned(),
        cause: Cause::Required,
    }
}

fn invalid(field: &str, value: &Value, detail: &str) -> FieldError {
    FieldError {
        field: field.to_owned(),
        cause: Cause::Invalid {
            value: value.clone(),
            detail: detail.to_owned(),
        },
    }
}

/// Validate a CRD, fill in its defaulted names and set its status.
pub fn admit(mut crd: Value) -> Result<Value, ApiError> {
    let mut errors = Vec::new();
    let spec = &crd["spec"];
    let text = |pointer: &str| spec.pointer(pointer).and_then(Value::as_str).unwrap_or("");
    let group = text("/group").to_owned();
    let plural = text("/names/plural").to_owned();
    let kind = text("/names/kind").to_owned();
    if group.is_empty() {
        errors.push(required("spec.group"));
    } else if !group.contains('.') {
        errors.push(invalid(
            "spec.group",
            &json!(group),
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        errors.push(required("spec.names.plural"));
    }
    if kind.is_empty() {
        errors.push(required("spec.names.kind"));
    }
    match text("/scope") {
        "Namespaced" | "Cluster" => {}
        "" => errors.push(required("spec.scope")),
        other => errors.push(FieldError {
            field: "spec.scope".to_owned(),
            cause: Cause::NotSupported {
                value: json!(other),
                supported: vec![json!("Cluster"), json!("Namespaced")],
            },
        }),
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        errors.push(required("spec.versions"));
    } else {
        let storage = versions
            .iter()
            .filter(|v| v["storage"] == Value::Bool(true))
            .count();
        if storage != 1 {
            errors.push(invalid(
                "spec.versions",
                &json!(versions),
                "must have exactly one version marked as storage version",
            ));
        }
        for (i, version) in versions.iter().enumerate() {
            if version["name"].as_str().unwrap_or("").is_empty() {
                errors.push(required(&format!("spec.versions[{i}].name")));
            }
            if !version["schema"]["openAPIV3Schema"].is_object() {
                errors.push(required(&format!(
                    "spec.versions[{i}].schema.openAPIV3Schema"
                )));
            }
        }
    }
    let name = crd["metadata"]["name"].as_str().unwrap_or("").to_owned();
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        errors.push(invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(
            "CustomResourceDefinition",
            "apiextensions.k8s.io",
            &name,
            &errors,
        ));
    }
    let names = &mut crd["spec"]["names"];
    if names["singular"].as_str().unwrap_or("").is_empty() {
        names["singular"] = json!(kind.to_lowercase());
    }
    if names["listKind"].as_str().unwrap_or("").is_empty() {
        names["listKind"] = json!(format!("{kind}List"));
    }
    if !crd["spec"]["conversion"].is_object() {
        crd["spec"]["conversion"] = json!({"strategy": "None"});
    }
    let accepted = crd["spec"]["names"].clone();
    let storage_version = versions
        .iter()
        .find(|v| v["storage"] == Value::Bool(true))
        .and_then(|v| v["name"].as_str())
        .unwrap_or("")
        .to_owned();
    let transition = crd["status"]["conditions"]
        .as_array()
        .and_then(|c| c.first())
        .and_then(|c| c["lastTransitionTime"].as_str())
        .map_or_else(now, str::to_owned);
    crd["status"] = json!({
        "acceptedNames": accepted,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": transition},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": transition},
        ],
        "storedVersions": [storage_version],
    });
    Ok(crd)
}
