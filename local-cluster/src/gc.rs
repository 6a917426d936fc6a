//! Garbage collection and namespace lifecycle, run synchronously after writes that delete:
//! dependents of deleted owners are deleted (background), owners waiting in foreground deletion
//! are released once their dependents are gone, orphaning owners strip their dependents' owner
//! references, and terminating namespaces are emptied and then removed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::api::{
    Cluster, DeleteOptions, FOREGROUND_FINALIZER, NAMESPACE_FINALIZER, ORPHAN_FINALIZER,
    Propagation, finalizers_of, is_deleting, name_of, namespace_of, set_finalizers,
};
use crate::resources::Resource;

fn uid_of(object: &Value) -> &str {
    object["metadata"]["uid"].as_str().unwrap_or("")
}

fn owner_uids(object: &Value) -> Vec<&str> {
    object["metadata"]["ownerReferences"]
        .as_array()
        .map(|refs| refs.iter().filter_map(|r| r["uid"].as_str()).collect())
        .unwrap_or_default()
}

/// A stored object with the resource it belongs to.
type Owned = (Arc<Resource>, Arc<Value>);

const BACKGROUND: DeleteOptions = DeleteOptions {
    propagation: Propagation::Background,
    uid: None,
    resource_version: None,
    dry_run: false,
    grace_period_seconds: None,
};

impl Cluster {
    fn storage_resource(&self, key: &crate::resources::ResourceKey) -> Option<Arc<Resource>> {
        self.registry.versions_of(key).into_iter().next()
    }

    /// Every stored object with the resource it belongs to.
    fn all_objects(&self) -> Vec<Owned> {
        let mut all = Vec::new();
        for key in self.store.resources() {
            if let Some(resource) = self.storage_resource(&key) {
                for object in self.store.list(&key, None, None) {
                    all.push((resource.clone(), object.clone()));
                }
            }
        }
        all
    }

    fn drop_finalizer(&mut self, resource: &Resource, object: &Value, finalizer: &str) {
        let mut updated = object.clone();
        let finalizers: Vec<String> = finalizers_of(object)
            .into_iter()
            .filter(|f| f != finalizer)
            .collect();
        set_finalizers(&mut updated, &finalizers);
        // The object exists (it was just listed), so storing cannot fail for want of it.
        let _ = self.store_or_finish(resource, updated);
    }

    /// Run garbage collection until nothing is left to do.
    pub fn collect_garbage(&mut self) {
        while std::mem::take(&mut self.gc_pending) {
            let objects = self.all_objects();
            let uids: HashSet<&str> = objects.iter().map(|(_, o)| uid_of(o)).collect();
            // One pass over all objects builds the owner index, so each object's dependents
            // are a lookup rather than another pass (the collector is linear, not quadratic).
            let mut dependents_of: HashMap<&str, Vec<&Owned>> = HashMap::new();
            for entry in &objects {
                let mut owners = owner_uids(&entry.1);
                owners.sort_unstable();
                owners.dedup();
                for owner in owners {
                    dependents_of.entry(owner).or_default().push(entry);
                }
            }
            let mut acted = false;
            for (resource, object) in &objects {
                let current =
                    self.store
                        .get(&resource.key(), namespace_of(object), name_of(object));
                if !current
                    .as_ref()
                    .is_some_and(|c| Arc::ptr_eq(c, object) || c == object)
                {
                    continue;
                }
                let dependents: &[&(Arc<Resource>, Arc<Value>)] =
                    dependents_of.get(uid_of(object)).map_or(&[], Vec::as_slice);
                let finalizers = finalizers_of(object);
                if is_deleting(object) && finalizers.iter().any(|f| f == ORPHAN_FINALIZER) {
                    for (dep_resource, dependent) in dependents.iter().copied() {
                        let mut updated = (**dependent).clone();
                        if let Some(refs) = updated["metadata"]["ownerReferences"].as_array_mut() {
                            refs.retain(|r| r["uid"].as_str() != Some(uid_of(object)));
                            if refs.is_empty()
                                && let Some(meta) = updated["metadata"].as_object_mut()
                            {
                                meta.remove("ownerReferences");
                            }
                        }
                        let _ = self.store_or_finish(dep_resource, updated);
                    }
                    self.drop_finalizer(resource, object, ORPHAN_FINALIZER);
                    acted = true;
                    continue;
                }
                if is_deleting(object) && finalizers.iter().any(|f| f == FOREGROUND_FINALIZER) {
                    if dependents.is_empty() {
                        self.drop_finalizer(resource, object, FOREGROUND_FINALIZER);
                        acted = true;
                    } else {
                        for (dep_resource, dependent) in dependents.iter().copied() {
                            if !is_deleting(dependent) {
                                acted = true;
                                let _ = self.delete(
                                    dep_resource,
                                    namespace_of(dependent),
                                    name_of(dependent),
                                    &DeleteOptions {
                                        propagation: Propagation::Foreground,
                                        ..BACKGROUND
                                    },
                                );
                            }
                        }
                    }
                    continue;
                }
                let owners = owner_uids(object);
                if !owners.is_empty()
                    && !is_deleting(object)
                    && owners.iter().all(|uid| !uids.contains(uid))
                {
                    let _ =
                        self.delete(resource, namespace_of(object), name_of(object), &BACKGROUND);
                    acted = true;
                    continue;
                }
                if resource.plural == "namespaces" && is_deleting(object) {
                    let namespace = name_of(object);
                    let contents: Vec<&Owned> = objects
                        .iter()
                        .filter(|(r, o)| r.namespaced && namespace_of(o) == namespace)
                        .collect();
                    for (content_resource, content) in &contents {
                        if !is_deleting(content) {
                            let _ = self.delete(
                                content_resource,
                                namespace,
                                name_of(content),
                                &BACKGROUND,
                            );
                            acted = true;
                        }
                    }
                    if contents.is_empty() {
                        let mut updated = (**object).clone();
                        if let Some(list) = updated["spec"]["finalizers"].as_array_mut() {
                            list.retain(|f| f.as_str() != Some(NAMESPACE_FINALIZER));
                        }
                        if updated["spec"]["finalizers"]
                            .as_array()
                            .is_some_and(Vec::is_empty)
                        {
                            updated["spec"] = json!({});
                        }
                        let spec_done = updated["spec"]["finalizers"].is_null();
                        if spec_done && finalizers.is_empty() {
                            let _ = self.store.remove(&resource.key(), "", namespace);
                            acted = true;
                        } else if updated != **object {
                            let _ = self.store_or_finish(resource, updated);
                            acted = true;
                        }
                    }
                }
            }
            if acted {
                self.gc_pending = true;
            }
        }
    }
}
