//! Arbitrary request lines, headers and bodies through everything the server does with them
//! short of the socket: routing, query and `Accept` parsing, selectors, body decoding (JSON,
//! YAML, protobuf), patches, and the create/update verbs with schema admission (a custom
//! resource with a schema and a CEL rule is registered first). Any panic is
//! a bug: every malformed input must become an API error. Shared by the cargo-fuzz target and
//! the seed-corpus test in `tests/cluster/request_path.rs`.

use aigc_local_cluster::api::{Cluster, FieldValidation, Part, WriteOptions};
use aigc_local_cluster::request::{self, Route};
use aigc_local_cluster::selector::{FieldSelector, LabelSelector};
use aigc_local_cluster::{patch, protobuf};

/// A custom resource with a schema that exercises admission: required fields, bounds,
/// patterns, formats, enums with defaults, sets, preserved unknown fields, maps, and a CEL
/// rule (requests to `/apis/fuzz.dev/v1/namespaces/default/widgets` reach it).
fn widget_crd() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.fuzz.dev"},
        "spec": {
            "group": "fuzz.dev", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {
                        "type": "object", "required": ["size"],
                        "x-kubernetes-validations": [{"rule": "!has(self.max) || self.size <= self.max", "message": "size must not exceed max"}],
                        "properties": {
                            "size": {"type": "integer", "minimum": 0},
                            "max": {"type": "integer"},
                            "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 10},
                            "when": {"type": "string", "format": "date-time"},
                            "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                            "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        },
                    },
                    "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
                }}},
            }],
        },
    })
}

/// Run one input: `TARGET\nACCEPT\nBODY`.
pub fn exercise(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (target, header, body) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("").as_bytes(),
    );
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params = request::query_params(Some(query));
    let _ = request::representation(Some(header));
    if let Some(selector) = params.get("labelSelector") {
        let _ = LabelSelector::parse(selector);
    }
    if let Some(selector) = params.get("fieldSelector") {
        let _ = FieldSelector::parse(selector);
    }
    let _ = protobuf::decode(body);
    let decoded: Option<serde_json::Value> = serde_json::from_slice(body)
        .ok()
        .or_else(|| serde_yaml::from_slice(body).ok());
    let Route::Resource(route) = request::route(path) else {
        return;
    };
    let Some(value) = decoded else {
        return;
    };
    let mut cluster = Cluster::new(16);
    let options = WriteOptions {
        dry_run: false,
        field_manager: "fuzz".into(),
        validation: FieldValidation::Warn,
        apply: false,
    };
    if let Some(namespaces) = cluster.registry.get("", "v1", "namespaces") {
        let default = serde_json::json!({"metadata": {"name": "default"}});
        let _ = cluster.create(&namespaces, "", default, &options);
    }
    if let Some(crds) =
        cluster
            .registry
            .get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    {
        let _ = cluster.create(&crds, "", widget_crd(), &options);
    }
    let Some(resource) = cluster
        .registry
        .get(&route.group, &route.version, &route.plural)
    else {
        return;
    };
    let namespace = route.namespace.as_deref().unwrap_or("default");
    if let Ok(written) = cluster.create(&resource, namespace, value.clone(), &options) {
        let name = written.object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        for patched in [
            patch::merge_patch(&written.object, &value),
            patch::json_patch(&written.object, &value),
            patch::strategic_merge_patch(&written.object, &value),
        ]
        .into_iter()
        .flatten()
        {
            let _ = cluster.update(&resource, namespace, &name, patched, Part::Main, &options);
        }
        cluster.collect_garbage();
    }
}
