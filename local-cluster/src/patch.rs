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
    for operation in operations.0 {
        match operation {
            json_patch::PatchOperation::Test(test) => {
                test_operation(&patched, test.path.as_str(), &test.value)
                    .map_err(ApiError::patch_not_applicable)?;
            }
            operation => json_patch::patch(&mut patched, &[operation])
                .map_err(|e| ApiError::patch_not_applicable(e.to_string()))?,
        }
    }
    Ok(patched)
}

/// A JSON patch `test`, judged as the API server's patch library judges it: a missing parent
/// fails as "does not apply"; a missing member passes only for a `null` value (and a present
/// one never matches `null`); array indexes out of range are errors.
fn test_operation(document: &Value, path: &str, value: &Value) -> Result<(), String> {
    let failed = || format!("testing value {path} failed: test failed");
    if path.is_empty() {
        return if document == value {
            Ok(())
        } else {
            Err(failed())
        };
    }
    let not_applicable =
        || format!("test operation does not apply: is missing path: {path}: missing value");
    let Some(tokens) = path.strip_prefix('/') else {
        return Err(not_applicable());
    };
    let mut tokens: Vec<String> = tokens
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let key = tokens.pop().unwrap_or_default();
    let mut parent = document;
    for token in &tokens {
        let next = match parent {
            Value::Object(map) => map.get(token),
            Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        parent = match next {
            Some(next @ (Value::Object(_) | Value::Array(_))) => next,
            _ => return Err(not_applicable()),
        };
    }
    let found = match parent {
        Value::Object(map) => map.get(&key),
        Value::Array(items) => {
            let index = key
                .parse::<i64>()
                .map_err(|e| format!("error in test for path: '{path}': {e}"))?;
            let item = usize::try_from(index).ok().and_then(|i| items.get(i));
            if item.is_none() {
                return Err(format!(
                    "error in test for path: '{path}': Unable to access invalid index: {index}: invalid index referenced"
                ));
            }
            item
        }
        _ => return Err(not_applicable()),
    };
    match found {
        None | Some(Value::Null) if value.is_null() => Ok(()),
        Some(found) if !value.is_null() && found == value => Ok(()),
        _ => Err(failed()),
    }
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
    fn a_test_on_an_absent_path_fails_like_the_api_server() {
        let object = json!({"spec": {"class": "hot", "tags": ["a"]}});
        let cause = |patch: Value| {
            let error = json_patch(&object, &patch).unwrap_err();
            assert_eq!(error.code, 422);
            assert_eq!(error.reason, "Invalid");
            assert_eq!(
                error.message,
                "the server rejected our request due to an error in our request"
            );
            let details = error.details.unwrap();
            assert_eq!(details["causes"][0]["reason"], "UnexpectedServerResponse");
            details["causes"][0]["message"].as_str().unwrap().to_owned()
        };
        assert_eq!(
            cause(json!([{"op": "test", "path": "/spec/size", "value": 1}])),
            "testing value /spec/size failed: test failed"
        );
        assert_eq!(
            cause(json!([{"op": "test", "path": "/status/phase", "value": "Ready"}])),
            "test operation does not apply: is missing path: /status/phase: missing value"
        );
        assert_eq!(
            cause(json!([{"op": "test", "path": "/spec/tags/3", "value": "a"}])),
            "error in test for path: '/spec/tags/3': Unable to access invalid index: 3: invalid index referenced"
        );
        assert_eq!(
            cause(json!([{"op": "test", "path": "/spec/class", "value": null}])),
            "testing value /spec/class failed: test failed"
        );
        let absent_is_null = json!([
            {"op": "test", "path": "/spec/size", "value": null},
            {"op": "add", "path": "/spec/size", "value": 2},
            {"op": "test", "path": "/spec/size", "value": 2},
        ]);
        assert_eq!(
            json_patch(&object, &absent_is_null).unwrap()["spec"]["size"],
            2
        );
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
