//! The API verbs on stored objects — create, update, delete, get — with the API server's
//! semantics: uid, generateName, creationTimestamp, `metadata.generation` bumped on spec
//! changes only, optimistic concurrency, status subresources, finalizers and deletionTimestamp,
//! schema admission for custom resources, and CRD registration. HTTP is not known here.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::crd;
use crate::managed;
use crate::resources::{Registry, Resource};
use crate::schema::{self, Cause, FieldError, UnknownFields};
use crate::status::{ApiError, Subject};
use crate::store::Store;

/// `?fieldValidation=`: what to do with fields a custom resource's schema does not declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    /// Reject the request (400).
    Strict,
    /// Drop them and return a warning (the server default).
    Warn,
    /// Drop them silently.
    Ignore,
}

/// Options every write carries.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// `?dryRun=All`: validate and return the result without storing it.
    pub dry_run: bool,
    /// The field manager recorded in `managedFields`.
    pub field_manager: String,
    /// Unknown-field handling.
    pub validation: FieldValidation,
    /// Server-side apply: `managedFields` were already computed by [`managed::apply`].
    pub apply: bool,
}

/// Which part of an object a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The object itself (status is ignored when the kind has a status subresource).
    Main,
    /// `/status`: only status is taken from the body.
    Status,
}

/// A stored object and the warnings its admission produced.
#[derive(Debug)]
pub struct Written {
    /// The object as stored.
    pub object: Value,
    /// `Warning` headers for the response.
    pub warnings: Vec<String>,
    /// Whether a new object was created (201) rather than an existing one changed (200).
    pub created: bool,
}

/// `propagationPolicy` of a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// Delete the owner now, dependents afterwards.
    Background,
    /// Delete dependents first; the owner waits with the `foregroundDeletion` finalizer.
    Foreground,
    /// Keep dependents, removing their owner references.
    Orphan,
}

/// Options of a delete.
#[derive(Clone, Debug)]
pub struct DeleteOptions {
    /// How dependents are treated.
    pub propagation: Propagation,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `?dryRun=All`.
    pub dry_run: bool,
    /// `gracePeriodSeconds`: how long a pod running on a node gets to stop.
    pub grace_period_seconds: Option<i64>,
}

/// Finalizer the namespace lifecycle holds until a namespace is empty.
pub const NAMESPACE_FINALIZER: &str = "kubernetes";
/// Finalizer that keeps an owner until its dependents are gone (foreground deletion).
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// Finalizer that makes the garbage collector orphan dependents.
pub const ORPHAN_FINALIZER: &str = "orphan";

/// The served API: resource registry and storage, guarded together by the server.
pub struct Cluster {
    /// Served resources.
    pub registry: Registry,
    /// Stored objects.
    pub store: Store,
    /// Set when a deletion may have left work for the garbage collector.
    pub gc_pending: bool,
}

/// The current time as Kubernetes writes timestamps.
pub fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn subject<'a>(resource: &'a Resource, name: &'a str) -> Subject<'a> {
    Subject {
        group: &resource.group,
        resource: &resource.plural,
        name,
    }
}

/// `metadata.name` of an object.
pub fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or("")
}

/// `metadata.namespace` of an object (empty for cluster-scoped).
pub fn namespace_of(object: &Value) -> &str {
    object["metadata"]["namespace"].as_str().unwrap_or("")
}

/// `metadata.finalizers` of an object.
pub fn finalizers_of(object: &Value) -> Vec<String> {
    crate::resources::strings_at(object, "/metadata/finalizers")
}

/// Replace `metadata.finalizers` (removing the field when empty).
pub fn set_finalizers(object: &mut Value, finalizers: &[String]) {
    let meta = &mut object["metadata"];
    if finalizers.is_empty() {
        if let Some(m) = meta.as_object_mut() {
            m.remove("finalizers");
        }
    } else {
        meta["finalizers"] = json!(finalizers);
    }
}

/// Whether an object is being deleted.
pub fn is_deleting(object: &Value) -> bool {
    object["metadata"]["deletionTimestamp"].is_string()
}

const NAME_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generated_name(prefix: &str) -> String {
    let random = uuid::Uuid::new_v4();
    let suffix: String = random
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| NAME_CHARS[usize::from(*b) % NAME_CHARS.len()] as char)
        .collect();
    format!("{prefix}{suffix}")
}

fn dns_subdomain_error(field: &str, value: &str) -> Option<FieldError> {
    let valid = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    (!valid).then(|| FieldError {
        field: field.to_owned(),
        cause: Cause::Invalid {
            value: json!(value),
            detail: "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_owned(),
        },
    })
}

fn dns_label_error(field: &str, value: &str) -> Option<FieldError> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    (!valid).then(|| FieldError {
        field: field.to_owned(),
        cause: Cause::Invalid {
            value: json!(value),
            detail: "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')".to_owned(),
        },
    })
}

/// Everything but metadata and status: what `metadata.generation` tracks.
fn spec_part(object: &Value) -> Map<String, Value> {
    object
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The object without fields that change on every write, for no-op detection. Ownership
/// changes count only for server-side apply, where they are the point of the request.
fn comparable(object: &Value, keep_owners: bool) -> Value {
    let mut object = object.clone();
    if let Some(meta) = object["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
        if !keep_owners {
            meta.remove("managedFields");
        } else if let Some(entries) = meta.get_mut("managedFields").and_then(Value::as_array_mut) {
            for entry in entries {
                if let Some(entry) = entry.as_object_mut() {
                    entry.remove("time");
                }
            }
        }
    }
    if let Some(map) = object.as_object_mut() {
        map.remove("apiVersion");
    }
    object
}

impl Cluster {
    /// An empty cluster serving the built-in kinds.
    pub fn new(history_limit: usize) -> Self {
        Self {
            registry: Registry::with_builtins(),
            store: Store::new(history_limit),
            gc_pending: false,
        }
    }

    /// The resource an object of this `apiVersion`/`kind` belongs to.
    pub fn resource_for(&self, api_version: &str, kind: &str) -> Option<Arc<Resource>> {
        self.registry.by_kind(api_version, kind)
    }

    /// Read one object, as the requested version.
    pub fn get(&self, resource: &Resource, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.store
            .get(&resource.key(), namespace, name)
            .map(|o| present(resource, &o))
            .ok_or_else(|| ApiError::not_found(&subject(resource, name)))
    }

    fn check_namespace(&self, resource: &Resource, namespace: &str) -> Result<(), ApiError> {
        if !resource.namespaced {
            return Ok(());
        }
        let namespaces = crate::resources::ResourceKey {
            group: String::new(),
            plural: "namespaces".to_owned(),
        };
        match self.store.get(&namespaces, "", namespace) {
            None => Err(ApiError::not_found(&Subject {
                group: "",
                resource: "namespaces",
                name: namespace,
            })),
            Some(ns) if is_deleting(&ns) => Err(ApiError::forbidden(format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                resource.plural,
                name_of(&ns)
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Check `apiVersion`/`kind` of a request body against the URL's resource.
    fn check_type(resource: &Resource, body: &Value) -> Result<(), ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON or YAML object",
            ));
        }
        let kind = body["kind"].as_str().unwrap_or("");
        let api_version = body["apiVersion"].as_str().unwrap_or("");
        if !kind.is_empty() && kind != resource.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind ({}) for the resource {}",
                resource.kind, resource.plural
            )));
        }
        if !api_version.is_empty() && api_version != resource.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({api_version}) does not match the expected API version ({})",
                resource.api_version()
            )));
        }
        if !body["metadata"].is_object() && !body["metadata"].is_null() {
            return Err(ApiError::bad_request(
                "metadata: must be an object (ObjectMeta)",
            ));
        }
        Ok(())
    }

    /// Validate, default and prune a custom resource (or a CRD), returning warnings.
    fn admit(
        &self,
        resource: &Resource,
        object: Value,
        validation: FieldValidation,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let name = name_of(&object).to_owned();
        if resource.group == "apiextensions.k8s.io" {
            let object = crd::admit(object)?;
            return Ok((object, Vec::new()));
        }
        let Some(schema) = &resource.schema else {
            return Ok((object, Vec::new()));
        };
        let invalid = |errors: &[FieldError]| {
            ApiError::invalid(&resource.kind, &resource.group, &name, errors)
        };
        match schema::admit_custom_resource(
            schema,
            &resource.cel_rules,
            &object,
            UnknownFields::Reject,
        ) {
            Ok(admitted) => Ok((admitted, Vec::new())),
            Err(errors) => {
                let (unknown, other): (Vec<FieldError>, Vec<FieldError>) =
                    errors.into_iter().partition(|e| e.cause == Cause::Unknown);
                if !other.is_empty() {
                    return Err(invalid(&other));
                }
                let warnings: Vec<String> = unknown.iter().map(ToString::to_string).collect();
                match validation {
                    FieldValidation::Strict => Err(ApiError::bad_request(format!(
                        "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                        resource.kind,
                        resource.version,
                        resource.kind,
                        warnings.join(", ")
                    ))),
                    FieldValidation::Warn | FieldValidation::Ignore => {
                        let admitted = schema::admit_custom_resource(
                            schema,
                            &resource.cel_rules,
                            &object,
                            UnknownFields::Prune,
                        )
                        .map_err(|errors| invalid(&errors))?;
                        let warnings = if validation == FieldValidation::Warn {
                            warnings
                        } else {
                            Vec::new()
                        };
                        Ok((admitted, warnings))
                    }
                }
            }
        }
    }

    /// `POST`: create an object in `namespace` (ignored for cluster-scoped resources).
    pub fn create(
        &mut self,
        resource: &Resource,
        namespace: &str,
        mut body: Value,
        options: &WriteOptions,
    ) -> Result<Written, ApiError> {
        Self::check_type(resource, &body)?;
        body["apiVersion"] = json!(resource.api_version());
        body["kind"] = json!(resource.kind);
        if !body["metadata"].is_object() {
            body["metadata"] = json!({});
        }
        let meta = &mut body["metadata"];
        let body_namespace = meta["namespace"].as_str().unwrap_or("").to_owned();
        if resource.namespaced {
            if !body_namespace.is_empty() && body_namespace != namespace {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            meta["namespace"] = json!(namespace);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        let name = match meta["name"].as_str() {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => match meta["generateName"].as_str() {
                Some(prefix) if !prefix.is_empty() => {
                    let name = generated_name(prefix);
                    meta["name"] = json!(name);
                    name
                }
                _ => {
                    return Err(ApiError::invalid(
                        &resource.kind,
                        &resource.group,
                        "",
                        &[FieldError {
                            field: "metadata.name".to_owned(),
                            cause: Cause::Required,
                        }],
                    ));
                }
            },
        };
        let name_error = if resource.plural == "namespaces" {
            dns_label_error("metadata.name", &name)
        } else {
            dns_subdomain_error("metadata.name", &name)
        };
        if let Some(error) = name_error {
            return Err(ApiError::invalid(
                &resource.kind,
                &resource.group,
                &name,
                &[error],
            ));
        }
        if resource.namespaced {
            self.check_namespace(resource, namespace)?;
        }
        if let Some(m) = meta.as_object_mut() {
            for field in [
                "resourceVersion",
                "uid",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
                "selfLink",
            ] {
                m.remove(field);
            }
        }
        meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
        meta["creationTimestamp"] = json!(now());
        if resource.tracks_generation {
            meta["generation"] = json!(1);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("generation");
        }
        if resource.status_subresource
            && !resource.builtin
            && let Some(map) = body.as_object_mut()
        {
            map.remove("status");
        }
        if resource.plural == "namespaces" {
            body["spec"] = json!({"finalizers": [NAMESPACE_FINALIZER]});
            body["status"] = json!({"phase": "Active"});
        }
        let key = resource.key();
        if self.store.get(&key, namespace_of(&body), &name).is_some() {
            return Err(ApiError::already_exists(&subject(resource, &name)));
        }
        self.default_builtin(resource, &mut body, None)?;
        let (mut object, warnings) = self.admit(resource, body, options.validation)?;
        if options.apply {
            let config = object.clone();
            if let Ok(applied) = managed::apply(
                None,
                &config,
                &options.field_manager,
                false,
                resource,
                Part::Main,
            ) {
                object = applied;
            }
        } else {
            managed::record_update(
                &mut object,
                None,
                &options.field_manager,
                resource,
                Part::Main,
            );
        }
        if options.dry_run {
            return Ok(Written {
                object: present(resource, &object),
                warnings,
                created: true,
            });
        }
        if self.has_collectable_owners(&object) {
            self.gc_pending = true;
        }
        let stored = self.store.put(&key, object);
        if resource.plural == "customresourcedefinitions" {
            self.registry.register_crd(&stored)?;
        }
        Ok(Written {
            object: present(resource, &stored),
            warnings,
            created: true,
        })
    }

    /// `PUT` (and the write behind every patch): replace an object or its status.
    pub fn update(
        &mut self,
        resource: &Resource,
        namespace: &str,
        name: &str,
        mut body: Value,
        part: Part,
        options: &WriteOptions,
    ) -> Result<Written, ApiError> {
        Self::check_type(resource, &body)?;
        let key = resource.key();
        let Some(old) = self.store.get(&key, namespace, name) else {
            return Err(ApiError::not_found(&subject(resource, name)));
        };
        if !body["metadata"].is_object() {
            body["metadata"] = json!({});
        }
        let body_name = name_of(&body);
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(version) = body["metadata"]["resourceVersion"].as_str()
            && !version.is_empty()
            && Some(version) != old["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::conflict(
                &subject(resource, name),
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        if let Some(uid) = body["metadata"]["uid"].as_str()
            && !uid.is_empty()
            && Some(uid) != old["metadata"]["uid"].as_str()
        {
            return Err(ApiError::conflict(
                &subject(resource, name),
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    old["metadata"]["uid"].as_str().unwrap_or("")
                ),
            ));
        }
        let mut object = match part {
            Part::Status => {
                let mut object = (*old).clone();
                match body.get("status") {
                    Some(status) => object["status"] = status.clone(),
                    None => {
                        if let Some(map) = object.as_object_mut() {
                            map.remove("status");
                        }
                    }
                }
                object
            }
            Part::Main => {
                let mut object = body;
                if resource.status_subresource {
                    match old.get("status") {
                        Some(status) => object["status"] = status.clone(),
                        None => {
                            if let Some(map) = object.as_object_mut() {
                                map.remove("status");
                            }
                        }
                    }
                }
                object
            }
        };
        object["apiVersion"] = json!(resource.api_version());
        object["kind"] = json!(resource.kind);
        {
            let old_meta = &old["metadata"];
            let meta = &mut object["metadata"];
            for field in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
                "managedFields",
            ] {
                if field == "managedFields" && options.apply {
                    continue;
                }
                match old_meta.get(field) {
                    Some(value) => meta[field] = value.clone(),
                    None => {
                        if let Some(m) = meta.as_object_mut() {
                            m.remove(field);
                        }
                    }
                }
            }
        }
        if resource.plural == "namespaces" && part == Part::Main {
            object["spec"] = old["spec"].clone();
        }
        self.default_builtin(resource, &mut object, Some(&old))?;
        let (mut object, warnings) = self.admit(resource, object, options.validation)?;
        if resource.tracks_generation && spec_part(&object) != spec_part(&old) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            object["metadata"]["generation"] = json!(generation);
        }
        if is_deleting(&old) {
            let old_finalizers = finalizers_of(&old);
            if let Some(added) = finalizers_of(&object)
                .iter()
                .find(|f| !old_finalizers.contains(f))
            {
                return Err(ApiError::invalid(
                    &resource.kind,
                    &resource.group,
                    name,
                    &[FieldError {
                        field: "metadata.finalizers".to_owned(),
                        cause: Cause::Invalid {
                            value: json!(added),
                            detail: "no new finalizers can be added if the object is being deleted"
                                .to_owned(),
                        },
                    }],
                ));
            }
        }
        if comparable(&object, options.apply) == comparable(&old, options.apply) {
            return Ok(Written {
                object: present(resource, &old),
                warnings,
                created: false,
            });
        }
        if !options.apply {
            managed::record_update(
                &mut object,
                Some(&old),
                &options.field_manager,
                resource,
                part,
            );
        }
        if options.dry_run {
            return Ok(Written {
                object: present(resource, &object),
                warnings,
                created: false,
            });
        }
        let stored = self.store_or_finish(resource, object)?;
        Ok(Written {
            object: present(resource, &stored),
            warnings,
            created: false,
        })
    }

    /// Whether an owner of `object` is gone or being deleted, so the garbage collector has
    /// work on it: delete it, orphan it, or hold a foreground deletion for it. Writes of
    /// objects whose owners are all alive leave the collector idle.
    fn has_collectable_owners(&self, object: &Value) -> bool {
        object["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|owners| {
                owners.iter().any(|owner| {
                    owner["uid"]
                        .as_str()
                        .and_then(|uid| self.store.by_uid(uid))
                        .is_none_or(|owner| is_deleting(owner))
                })
            })
    }

    /// Store an updated object, or remove it when it is being deleted and no finalizer is left.
    pub fn store_or_finish(
        &mut self,
        resource: &Resource,
        object: Value,
    ) -> Result<Arc<Value>, ApiError> {
        let key = resource.key();
        if is_deleting(&object) && finalizers_of(&object).is_empty() {
            self.gc_pending = true;
            let (namespace, name) = (
                namespace_of(&object).to_owned(),
                name_of(&object).to_owned(),
            );
            self.store.put(&key, object);
            return self.remove(resource, &namespace, &name);
        }
        if is_deleting(&object) || self.has_collectable_owners(&object) {
            self.gc_pending = true;
        }
        let stored = self.store.put(&key, object);
        if resource.plural == "customresourcedefinitions" {
            self.registry.register_crd(&stored)?;
        }
        Ok(stored)
    }

    /// Remove an object from storage now (no finalizers left).
    fn remove(
        &mut self,
        resource: &Resource,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<Value>, ApiError> {
        let removed = self
            .store
            .remove(&resource.key(), namespace, name)
            .ok_or_else(|| ApiError::not_found(&subject(resource, name)))?;
        self.gc_pending = true;
        if resource.plural == "customresourcedefinitions" {
            for served in crate::resources::resources_of_crd(&removed)?.iter().take(1) {
                self.store.drop_resource(&served.key());
                self.registry.unregister(&served.key());
            }
        }
        Ok(removed)
    }

    /// `DELETE`: remove an object, or mark it for deletion while finalizers remain.
    pub fn delete(
        &mut self,
        resource: &Resource,
        namespace: &str,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let key = resource.key();
        let Some(old) = self.store.get(&key, namespace, name) else {
            return Err(ApiError::not_found(&subject(resource, name)));
        };
        let meta = &old["metadata"];
        if let Some(uid) = &options.uid
            && meta["uid"].as_str() != Some(uid.as_str())
        {
            return Err(ApiError::conflict(
                &subject(resource, name),
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta["uid"].as_str().unwrap_or("")
                ),
            ));
        }
        if let Some(version) = &options.resource_version
            && meta["resourceVersion"].as_str() != Some(version.as_str())
        {
            return Err(ApiError::conflict(
                &subject(resource, name),
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {version}, ResourceVersion in object meta: {}",
                    meta["resourceVersion"].as_str().unwrap_or("")
                ),
            ));
        }
        if options.dry_run {
            return Ok(present(resource, &old));
        }
        let mut object = (*old).clone();
        let mut finalizers = finalizers_of(&object);
        let extra = match options.propagation {
            Propagation::Foreground => Some(FOREGROUND_FINALIZER),
            Propagation::Orphan => Some(ORPHAN_FINALIZER),
            Propagation::Background => None,
        };
        if let Some(extra) = extra
            && !finalizers.iter().any(|f| f == extra)
        {
            finalizers.push(extra.to_owned());
        }
        if resource.plural == "namespaces" {
            object["status"]["phase"] = json!("Terminating");
        }
        let namespace_finalizing = resource.plural == "namespaces"
            && object["spec"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
        let graceful = self.pod_grace_period(resource, &old, options.grace_period_seconds);
        if finalizers.is_empty() && !namespace_finalizing && graceful.is_none() {
            return self
                .remove(resource, namespace, name)
                .map(|o| present(resource, &o));
        }
        set_finalizers(&mut object, &finalizers);
        if !is_deleting(&object) {
            object["metadata"]["deletionTimestamp"] = json!(now());
            object["metadata"]["deletionGracePeriodSeconds"] = json!(graceful.unwrap_or(0));
        } else if let Some(grace) = graceful
            && object["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .is_none_or(|current| grace < current)
        {
            object["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        }
        self.gc_pending = true;
        if comparable(&object, false) == comparable(&old, false) {
            return Ok(present(resource, &old));
        }
        let stored = self.store.put(&key, object);
        Ok(present(resource, &stored))
    }
}

impl Cluster {
    /// The grace period of a pod deletion that must wait for the kubelet: the pod runs on an
    /// existing node, has not finished, and no zero grace period was asked for. `None` means
    /// the pod goes at once, as the API server's pod strategy decides.
    fn pod_grace_period(
        &self,
        resource: &Resource,
        pod: &Value,
        requested: Option<i64>,
    ) -> Option<i64> {
        if !(resource.builtin && resource.group.is_empty() && resource.plural == "pods") {
            return None;
        }
        let node = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty())?;
        let nodes = crate::resources::ResourceKey {
            group: String::new(),
            plural: "nodes".to_owned(),
        };
        // Only the kubelet's own (simulated) nodes stop containers; a pod on any other Node
        // object has nobody to wait for and goes at once.
        let node = self.store.get(&nodes, "", node)?;
        if node["metadata"]["labels"][crate::nodes::SIMULATED_LABEL] != "true" {
            return None;
        }
        if matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        ) {
            return None;
        }
        let grace = requested
            .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30);
        (grace > 0).then_some(grace)
    }
}

/// An object as served at `resource`'s version (versions of a CRD differ only in apiVersion).
pub fn present(resource: &Resource, object: &Value) -> Value {
    let mut object = object.clone();
    if object["apiVersion"].as_str() != Some(resource.api_version().as_str()) {
        object["apiVersion"] = json!(resource.api_version());
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> WriteOptions {
        WriteOptions {
            dry_run: false,
            field_manager: "test".into(),
            validation: FieldValidation::Strict,
            apply: false,
        }
    }

    fn delete(grace: Option<i64>) -> DeleteOptions {
        DeleteOptions {
            propagation: Propagation::Background,
            uid: None,
            resource_version: None,
            dry_run: false,
            grace_period_seconds: grace,
        }
    }

    /// A cluster with the simulated node `n1` and the pods `on-node` (bound to it), `unbound` and
    /// `elsewhere` (bound to a node that does not exist).
    fn cluster() -> (Cluster, Arc<Resource>) {
        let mut cluster = Cluster::new(100);
        let get = |c: &Cluster, plural: &str| c.registry.get("", "v1", plural).unwrap();
        let namespaces = get(&cluster, "namespaces");
        let nodes = get(&cluster, "nodes");
        let pods = get(&cluster, "pods");
        cluster
            .create(
                &namespaces,
                "",
                json!({"metadata": {"name": "default"}}),
                &options(),
            )
            .unwrap();
        cluster
            .create(
                &nodes,
                "",
                json!({"metadata": {"name": "n1", "labels": {crate::nodes::SIMULATED_LABEL: "true"}}}),
                &options(),
            )
            .unwrap();
        for (name, node) in [("on-node", "n1"), ("unbound", ""), ("elsewhere", "gone")] {
            let pod = json!({"metadata": {"name": name}, "spec": {"nodeName": node, "terminationGracePeriodSeconds": 20}});
            cluster.create(&pods, "default", pod, &options()).unwrap();
        }
        (cluster, pods)
    }

    #[test]
    fn pods_on_a_node_wait_for_the_kubelet_others_go_at_once() {
        let (mut cluster, pods) = cluster();
        let marked = cluster
            .delete(&pods, "default", "on-node", &delete(None))
            .unwrap();
        assert!(is_deleting(&marked));
        assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 20);
        let shortened = cluster
            .delete(&pods, "default", "on-node", &delete(Some(5)))
            .unwrap();
        assert_eq!(shortened["metadata"]["deletionGracePeriodSeconds"], 5);
        let kept = cluster
            .delete(&pods, "default", "on-node", &delete(Some(9)))
            .unwrap();
        assert_eq!(kept["metadata"]["deletionGracePeriodSeconds"], 5);
        cluster
            .delete(&pods, "default", "on-node", &delete(Some(0)))
            .unwrap();
        assert!(cluster.get(&pods, "default", "on-node").is_err());
        for name in ["unbound", "elsewhere"] {
            cluster
                .delete(&pods, "default", name, &delete(None))
                .unwrap();
            assert!(
                cluster.get(&pods, "default", name).is_err(),
                "{name} is removed at once"
            );
        }
    }

    #[test]
    fn only_writes_with_a_gone_or_deleting_owner_wake_the_collector() {
        let (mut cluster, pods) = cluster();
        let config_maps = cluster.registry.get("", "v1", "configmaps").unwrap();
        let owner = cluster
            .create(
                &config_maps,
                "default",
                json!({"metadata": {"name": "owner"}}),
                &options(),
            )
            .unwrap()
            .object;
        let owned_by = |uid: &Value| json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]);
        let dependent = json!({"metadata": {"name": "kept", "ownerReferences": owned_by(&owner["metadata"]["uid"])}});
        cluster
            .create(&pods, "default", dependent, &options())
            .unwrap();
        assert!(!cluster.gc_pending, "the owner is alive");

        let orphan = json!({"metadata": {"name": "orphan", "ownerReferences": owned_by(&json!("no-such-uid"))}});
        cluster
            .create(&pods, "default", orphan, &options())
            .unwrap();
        assert!(cluster.gc_pending, "the owner is gone");
        cluster.collect_garbage();
        assert!(cluster.get(&pods, "default", "orphan").is_err());
        assert!(cluster.get(&pods, "default", "kept").is_ok());

        cluster
            .delete(&config_maps, "default", "owner", &delete(None))
            .unwrap();
        cluster.collect_garbage();
        assert!(
            cluster.get(&pods, "default", "kept").is_err(),
            "the owner's deletion collected its dependent"
        );
    }
}
