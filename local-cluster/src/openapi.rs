//! OpenAPI documents for custom resources: `/openapi/v3` (index and one document per
//! group/version) and `/openapi/v2`, enough for `kubectl explain` and for kubectl's check that
//! the server supports `fieldValidation`. Built-in kinds other than CustomResourceDefinition are
//! not described; clients fall back to the types compiled into them.

use serde_json::{Map, Value, json};

use crate::resources::{Registry, Resource};

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// The schema name of a kind: `dev.aigc.v1alpha1.Dataset`.
fn definition_name(resource: &Resource) -> String {
    let group: Vec<&str> = resource.group.split('.').rev().collect();
    format!("{}.{}.{}", group.join("."), resource.version, resource.kind)
}

fn gvk(resource: &Resource) -> Value {
    json!({"group": resource.group, "version": resource.version, "kind": resource.kind})
}

fn object_meta() -> Value {
    let text = |d: &str| json!({"type": "string", "description": d});
    json!({
        "type": "object",
        "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects users must create.",
        "properties": {
            "name": text("Name must be unique within a namespace."),
            "namespace": text("Namespace defines the space within which each name must be unique."),
            "generateName": text("GenerateName is an optional prefix, used by the server, to generate a unique name."),
            "uid": text("UID is the unique in time and space value for this object."),
            "resourceVersion": text("An opaque value that represents the internal version of this object."),
            "generation": {"type": "integer", "format": "int64", "description": "A sequence number representing a specific generation of the desired state."},
            "creationTimestamp": text("CreationTimestamp is a timestamp representing the server time when this object was created."),
            "deletionTimestamp": text("DeletionTimestamp is RFC 3339 date and time at which this resource will be deleted."),
            "labels": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Map of string keys and values that can be used to organize and categorize objects."},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Annotations is an unstructured key value map stored with a resource."},
            "finalizers": {"type": "array", "items": {"type": "string"}, "description": "Must be empty before the object is deleted from the registry."},
            "ownerReferences": {"type": "array", "items": {"type": "object"}, "description": "List of objects depended by this object."},
            "managedFields": {"type": "array", "items": {"type": "object"}, "description": "ManagedFields maps workflow-id and version to the set of fields that are managed by that workflow."},
        }
    })
}

/// The kind's schema with `apiVersion`, `kind` and `metadata` filled in, as the API server
/// publishes it.
fn published_schema(resource: &Resource, meta_ref: &str) -> Value {
    let mut schema = resource
        .schema
        .clone()
        .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    let properties = schema
        .as_object_mut()
        .map(|m| m.entry("properties").or_insert_with(|| json!({})));
    if let Some(Value::Object(properties)) = properties {
        properties.insert(
            "apiVersion".to_owned(),
            json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}),
        );
        properties.insert(
            "kind".to_owned(),
            json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}),
        );
        properties.insert(
            "metadata".to_owned(),
            json!({"allOf": [{"$ref": meta_ref}], "description": "Standard object's metadata."}),
        );
    }
    schema["x-kubernetes-group-version-kind"] = json!([gvk(resource)]);
    schema
}

fn parameters() -> Value {
    let query = |name: &str| json!({"name": name, "in": "query", "uniqueItems": true, "schema": {"type": "string"}, "type": "string"});
    json!([
        query("dryRun"),
        query("fieldManager"),
        query("fieldValidation"),
        query("pretty"),
    ])
}

fn operations(resource: &Resource, item: bool, schema_ref: &str) -> Value {
    let mut ops = Map::new();
    let verbs: &[(&str, &str)] = if item {
        &[
            ("get", "get"),
            ("put", "put"),
            ("patch", "patch"),
            ("delete", "delete"),
        ]
    } else {
        &[("get", "list"), ("post", "post")]
    };
    for (method, action) in verbs {
        ops.insert(
            (*method).to_owned(),
            json!({
                "operationId": format!("{action}{}", resource.kind),
                "parameters": parameters(),
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": schema_ref}}}, "schema": {"$ref": schema_ref}}},
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk(resource),
            }),
        );
    }
    ops.insert("parameters".to_owned(), parameters());
    Value::Object(ops)
}

fn paths(resources: &[&Resource], schema_prefix: &str) -> Map<String, Value> {
    let mut paths = Map::new();
    for resource in resources {
        let schema_ref = format!("{schema_prefix}{}", definition_name(resource));
        let collection = if resource.namespaced {
            format!(
                "{}/namespaces/{{namespace}}/{}",
                resource.prefix(),
                resource.plural
            )
        } else {
            format!("{}/{}", resource.prefix(), resource.plural)
        };
        paths.insert(
            format!("{collection}/{{name}}"),
            operations(resource, true, &schema_ref),
        );
        paths.insert(collection, operations(resource, false, &schema_ref));
    }
    paths
}

fn served(registry: &Registry) -> Vec<std::sync::Arc<Resource>> {
    registry
        .groups()
        .into_iter()
        .flat_map(|(g, versions)| {
            versions
                .into_iter()
                .flat_map(move |v| registry.in_group_version(&g, &v))
        })
        .collect()
}

/// Kinds whose schema is published: custom resources. Built-ins appear only as paths, which
/// tell kubectl the server validates fields itself; for their patch strategies it falls back to
/// the types compiled into it.
fn described(resource: &Resource) -> bool {
    !resource.builtin
}

/// A stable hash of a document, for `serverRelativeURL`s.
fn hash(value: &Value) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    format!("{:016X}", hasher.finish())
}

/// `/openapi/v3`: one entry per group/version of custom resources.
pub fn v3_index(registry: &Registry) -> Value {
    let mut paths = Map::new();
    let resources = served(registry);
    let mut seen = std::collections::BTreeSet::new();
    for resource in &resources {
        let key = (resource.group.clone(), resource.version.clone());
        if seen.insert(key) {
            let path = resource.prefix().trim_start_matches('/').to_owned();
            let doc = v3_document(registry, &resource.group, &resource.version);
            paths.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", doc.as_ref().map(hash).unwrap_or_default())}),
            );
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v3/apis/{group}/{version}` (or `/openapi/v3/api/v1`).
pub fn v3_document(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let resources = registry.in_group_version(group, version);
    if resources.is_empty() {
        return None;
    }
    let mut schemas = Map::new();
    let meta_ref = format!("#/components/schemas/{OBJECT_META}");
    for resource in resources.iter().filter(|r| described(r)) {
        schemas.insert(
            definition_name(resource),
            published_schema(resource, &meta_ref),
        );
    }
    schemas.insert(OBJECT_META.to_owned(), object_meta());
    let refs: Vec<&Resource> = resources.iter().map(|r| r.as_ref()).collect();
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": crate::discovery::KUBERNETES_VERSION},
        "paths": paths(&refs, "#/components/schemas/"),
        "components": {"schemas": schemas},
    }))
}

/// `/openapi/v2`: custom resources in Swagger 2.0 form.
pub fn v2_document(registry: &Registry) -> Value {
    let resources: Vec<std::sync::Arc<Resource>> = served(registry)
        .into_iter()
        .filter(|r| described(r))
        .collect();
    let mut definitions = Map::new();
    let meta_ref = format!("#/definitions/{OBJECT_META}");
    for resource in &resources {
        definitions.insert(
            definition_name(resource),
            published_schema(resource, &meta_ref),
        );
    }
    definitions.insert(OBJECT_META.to_owned(), object_meta());
    let refs: Vec<&Resource> = resources.iter().map(|r| r.as_ref()).collect();
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": crate::discovery::KUBERNETES_VERSION},
        "paths": paths(&refs, "#/definitions/"),
        "definitions": definitions,
    })
}
