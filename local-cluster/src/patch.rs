//! Patch bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch
//! for built-in kinds (lists merged by their merge keys, `$patch` and `$setElementOrder`
//! directives). Server-side apply lives in [`crate::managed`]. This module only computes the
//! patched object; the write goes through [`crate::api::Cluster::update`].

use serde_json::{Map, Value};

use crate::status::ApiError;

/// The patch types the server accepts, by `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml`.
    Apply,
}

/// Media types accepted for `PATCH`.
pub const PATCH_MEDIA_TYPES: [&str; 4] = [
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

impl PatchType {
    /// The patch type for a `Content-Type` header value (parameters ignored).
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// Apply a JSON patch (a list of operations).
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let operations: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let mut patched = target.clone();
    json_patch::patch(&mut patched, &operations).map_err(|e| {
        ApiError::new_unprocessable(format!(
            "the server rejected our request due to an error in our request: {e}"
        ))
    })?;
    Ok(patched)
}

/// Apply a JSON merge patch.
pub fn merge_patch(target: &Value, patch: &Value) -> Result<Value, ApiError> {
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "error decoding patch: a merge patch must be a JSON object",
        ));
    }
    let mut patched = target.clone();
    json_patch::merge(&mut patched, patch);
    Ok(patched)
}

/// The merge key of a list field of a built-in kind, from the API's patch strategies.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "hostAliases"
        | "secrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "conditions" | "taints" => Some("type"),
        "ownerReferences" => Some("uid"),
        _ => None,
    }
}

/// Lists of scalars the API merges instead of replacing.
fn merges_scalars(field: &str) -> bool {
    field == "finalizers"
}

/// Apply a strategic merge patch to a built-in object.
pub fn strategic_merge_patch(target: &Value, patch: &Value) -> Result<Value, ApiError> {
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "error decoding patch: a strategic merge patch must be a JSON object",
        ));
    }
    let mut patched = target.clone();
    merge_map(&mut patched, patch);
    Ok(patched)
}

fn merge_map(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        replacement.remove("$patch");
        *target = Value::Object(replacement);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(map) = target.as_object_mut() else {
        return;
    };
    for (key, value) in patch {
        if key.starts_with("$setElementOrder/") || key == "$retainKeys" || key == "$patch" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(remove)) = (
                map.get_mut(field).and_then(Value::as_array_mut),
                value.as_array(),
            ) {
                list.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if value.is_null() {
            map.remove(key);
            continue;
        }
        match (map.get_mut(key), value) {
            (Some(existing @ Value::Object(_)), Value::Object(_)) => merge_map(existing, value),
            (Some(Value::Array(existing)), Value::Array(items)) => {
                merge_list(existing, items, key);
            }
            _ => {
                let mut value = value.clone();
                strip_directives(&mut value);
                map.insert(key.clone(), value);
            }
        }
    }
}

fn merge_list(existing: &mut Vec<Value>, items: &[Value], field: &str) {
    if let Some(key) = merge_key(field) {
        for item in items {
            let directive = item.get("$patch").and_then(Value::as_str);
            let position = existing
                .iter()
                .position(|e| e.get(key).is_some() && e.get(key) == item.get(key));
            match (directive, position) {
                (Some("delete"), Some(index)) => {
                    existing.remove(index);
                }
                (Some("delete"), None) => {}
                (_, Some(index)) => merge_map(&mut existing[index], item),
                (_, None) => {
                    let mut item = item.clone();
                    strip_directives(&mut item);
                    existing.push(item);
                }
            }
        }
    } else if merges_scalars(field) {
        for item in items {
            if !existing.contains(item) {
                existing.push(item.clone());
            }
        }
    } else {
        *existing = items.to_vec();
        for item in existing.iter_mut() {
            strip_directives(item);
        }
    }
}

fn strip_directives(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|k, _| !k.starts_with('$'));
            for v in map.values_mut() {
                strip_directives(v);
            }
        }
        Value::Array(items) => {
            items.retain(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"));
            for item in items {
                strip_directives(item);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let deployment = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "web:1", "ports": [{"containerPort": 80}]},
            {"name": "sidecar", "image": "side:1"}
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "sidecar"}],
            "containers": [{"name": "web", "image": "web:2"}, {"name": "sidecar", "$patch": "delete"}]
        }}}});
        let patched = strategic_merge_patch(&deployment, &patch).unwrap();
        let containers = &patched["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers.as_array().unwrap().len(), 1);
        assert_eq!(containers[0]["image"], "web:2");
        assert_eq!(containers[0]["ports"][0]["containerPort"], 80);
    }

    #[test]
    fn finalizers_merge_and_delete_from_primitive_list() {
        let object = json!({"metadata": {"finalizers": ["a", "b"]}});
        let added =
            strategic_merge_patch(&object, &json!({"metadata": {"finalizers": ["c"]}})).unwrap();
        assert_eq!(added["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let removed = strategic_merge_patch(
            &added,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        )
        .unwrap();
        assert_eq!(removed["metadata"]["finalizers"], json!(["b", "c"]));
    }

    #[test]
    fn json_patch_errors_are_reported_not_panicked() {
        let object = json!({"a": 1});
        assert!(json_patch(&object, &json!([{"op": "remove", "path": "/missing"}])).is_err());
        assert!(json_patch(&object, &json!({"op": "bogus"})).is_err());
        let patched =
            json_patch(&object, &json!([{"op": "add", "path": "/b", "value": 2}])).unwrap();
        assert_eq!(patched, json!({"a": 1, "b": 2}));
    }
}
