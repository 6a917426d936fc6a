//! `metadata.managedFields`: which field manager owns which fields, updated on every write, and
//! server-side apply on top of it (merge of the applied configuration, removal of fields a
//! manager stopped applying, conflicts with other managers unless forced).
//!
//! Fields are tracked as leaf paths in `fieldsV1` spelling (`f:spec`, `k:{"name":"web"}`).
//! Lists are atomic unless their items all carry one of the usual merge keys (`name`, `type`,
//! `containerPort`, `mountPath`), matching the list types of the kinds we serve.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::api::{Part, now};
use crate::resources::Resource;

type Path = Vec<String>;
type Leaves = BTreeMap<Path, Value>;

const LIST_KEYS: [&str; 4] = ["name", "type", "containerPort", "mountPath"];

/// The merge key of a list, if every item is an object carrying the same scalar key.
fn list_key(items: &[Value]) -> Option<&'static str> {
    if items.is_empty() {
        return None;
    }
    LIST_KEYS.into_iter().find(|key| {
        items.iter().all(|item| {
            item.get(*key)
                .is_some_and(|k| k.is_string() || k.is_number())
        })
    })
}

fn key_segment(key: &str, item: &Value) -> String {
    format!("k:{{\"{key}\":{}}}", item[key])
}

fn collect_leaves(value: &Value, prefix: &mut Path, out: &mut Leaves) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                prefix.push(format!("f:{k}"));
                collect_leaves(v, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => match list_key(items) {
            Some(key) => {
                for item in items {
                    prefix.push(key_segment(key, item));
                    collect_leaves(item, prefix, out);
                    prefix.pop();
                }
            }
            None => {
                out.insert(prefix.clone(), value.clone());
            }
        },
        _ => {
            if !prefix.is_empty() {
                out.insert(prefix.clone(), value.clone());
            }
        }
    }
}

/// The fields of an object a manager can own for one part (main resource or status).
fn tracked_leaves(object: &Value, resource: &Resource, part: Part) -> Leaves {
    let mut tracked = Map::new();
    if let Some(map) = object.as_object() {
        for (k, v) in map {
            let keep = match (k.as_str(), part) {
                ("apiVersion" | "kind", _) => false,
                ("metadata", Part::Main) => true,
                ("metadata", Part::Status) => false,
                ("status", Part::Main) => !resource.status_subresource,
                ("status", Part::Status) => true,
                (_, Part::Main) => true,
                (_, Part::Status) => false,
            };
            if keep {
                tracked.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(meta) = tracked.get_mut("metadata") {
        let kept: Map<String, Value> = meta
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| {
                        matches!(
                            k.as_str(),
                            "labels" | "annotations" | "finalizers" | "ownerReferences"
                        )
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        if kept.is_empty() {
            tracked.remove("metadata");
        } else {
            *meta = Value::Object(kept);
        }
    }
    let mut out = Leaves::new();
    collect_leaves(&Value::Object(tracked), &mut Vec::new(), &mut out);
    out
}

/// A set of paths as a `fieldsV1` tree.
fn to_fields_v1<'a>(paths: impl Iterator<Item = &'a Path>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut node = &mut root;
        for segment in path {
            let child = node
                .entry(segment.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if segment.starts_with("k:")
                && let Some(map) = child.as_object_mut()
            {
                map.entry(".").or_insert_with(|| json!({}));
            }
            node = match child.as_object_mut() {
                Some(map) => map,
                None => break,
            };
        }
    }
    Value::Object(root)
}

fn from_fields_v1(value: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    let Some(map) = value.as_object() else {
        return;
    };
    let children: Vec<(&String, &Value)> = map.iter().filter(|(k, _)| *k != ".").collect();
    if children.is_empty() {
        if !prefix.is_empty() {
            out.insert(prefix.clone());
        }
        return;
    }
    for (k, v) in children {
        prefix.push(k.clone());
        from_fields_v1(v, prefix, out);
        prefix.pop();
    }
}

#[derive(Clone, Debug)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: String,
    fields: BTreeSet<Path>,
}

impl Entry {
    fn part(&self) -> Part {
        if self.subresource == "status" {
            Part::Status
        } else {
            Part::Main
        }
    }
}

fn subresource_name(part: Part) -> &'static str {
    match part {
        Part::Main => "",
        Part::Status => "status",
    }
}

fn entries_of(object: &Value) -> Vec<Entry> {
    object["metadata"]["managedFields"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    let text = |k: &str| e[k].as_str().unwrap_or("").to_owned();
                    let mut fields = BTreeSet::new();
                    from_fields_v1(&e["fieldsV1"], &mut Vec::new(), &mut fields);
                    Entry {
                        manager: text("manager"),
                        operation: text("operation"),
                        api_version: text("apiVersion"),
                        time: text("time"),
                        subresource: text("subresource"),
                        fields,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The managedFields entry of an apply by `manager` owning the leaves of its configuration.
fn apply_entry(
    manager: &str,
    resource: &Resource,
    subresource: &str,
    config_leaves: &Leaves,
) -> Entry {
    Entry {
        manager: manager.to_owned(),
        operation: "Apply".to_owned(),
        api_version: resource.api_version(),
        time: now(),
        subresource: subresource.to_owned(),
        fields: config_leaves.keys().cloned().collect(),
    }
}

fn write_entries(object: &mut Value, entries: &[Entry]) {
    let rendered: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut entry = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(e.fields.iter()),
            });
            if !e.subresource.is_empty() {
                entry["subresource"] = json!(e.subresource);
            }
            entry
        })
        .collect();
    let meta = &mut object["metadata"];
    if rendered.is_empty() {
        if let Some(m) = meta.as_object_mut() {
            m.remove("managedFields");
        }
    } else {
        meta["managedFields"] = Value::Array(rendered);
    }
}

/// Drop paths that no longer exist in the object from every entry.
fn prune_missing(entries: &mut [Entry], object: &Value, resource: &Resource) {
    let main = tracked_leaves(object, resource, Part::Main);
    let status = tracked_leaves(object, resource, Part::Status);
    for entry in entries {
        let present = if entry.part() == Part::Status {
            &status
        } else {
            &main
        };
        entry.fields.retain(|p| present.contains_key(p));
    }
}

/// Record an `Update` by `manager`: it now owns the fields it changed, and other managers
/// lose them.
pub fn record_update(
    object: &mut Value,
    old: Option<&Value>,
    manager: &str,
    resource: &Resource,
    part: Part,
) {
    let mut entries = old.map(entries_of).unwrap_or_default();
    let new_leaves = tracked_leaves(object, resource, part);
    let old_leaves = old
        .map(|o| tracked_leaves(o, resource, part))
        .unwrap_or_default();
    let changed: BTreeSet<Path> = new_leaves
        .iter()
        .filter(|(p, v)| old_leaves.get(*p) != Some(*v))
        .map(|(p, _)| p.clone())
        .collect();
    prune_missing(&mut entries, object, resource);
    let subresource = subresource_name(part);
    for entry in entries.iter_mut() {
        if !(entry.manager == manager && entry.operation == "Update") {
            entry.fields.retain(|p| !changed.contains(p));
        }
    }
    if !changed.is_empty() {
        let api_version = resource.api_version();
        match entries.iter_mut().find(|e| {
            e.manager == manager && e.operation == "Update" && e.subresource == subresource
        }) {
            Some(entry) => {
                entry.fields.extend(changed);
                entry.time = now();
                entry.api_version = api_version;
            }
            None => entries.push(Entry {
                manager: manager.to_owned(),
                operation: "Update".to_owned(),
                api_version,
                time: now(),
                subresource: subresource.to_owned(),
                fields: changed,
            }),
        }
    }
    write_entries(object, &entries);
}

/// A field path as shown in conflict messages: `.spec.replicas`, `.spec.containers[name="web"].image`.
fn dotted(path: &Path) -> String {
    let mut out = String::new();
    for segment in path {
        if let Some(field) = segment.strip_prefix("f:") {
            out.push('.');
            out.push_str(field);
        } else if let Some(key) = segment.strip_prefix("k:") {
            let parsed: Value = serde_json::from_str(key).unwrap_or(Value::Null);
            let inner: Vec<String> = parsed
                .as_object()
                .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                .unwrap_or_default();
            out.push_str(&format!("[{}]", inner.join(",")));
        }
    }
    out
}

fn item_matches(item: &Value, key_segment: &str) -> bool {
    let Some(key) = key_segment.strip_prefix("k:") else {
        return false;
    };
    let parsed: Value = serde_json::from_str(key).unwrap_or(Value::Null);
    parsed
        .as_object()
        .is_some_and(|m| m.iter().all(|(k, v)| item.get(k) == Some(v)))
}

/// Remove the field at `path`; a keyed list item left with only its key goes too.
fn remove_path(value: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if let Some(field) = first.strip_prefix("f:") {
        let Some(map) = value.as_object_mut() else {
            return;
        };
        if rest.is_empty() {
            map.remove(field);
        } else if let Some(child) = map.get_mut(field) {
            remove_path(child, rest);
            if child.as_object().is_some_and(Map::is_empty)
                || child.as_array().is_some_and(Vec::is_empty)
            {
                map.remove(field);
            }
        }
    } else if let Some(items) = value.as_array_mut()
        && let Some(index) = items.iter().position(|i| item_matches(i, first))
    {
        if rest.is_empty() {
            items.remove(index);
        } else {
            remove_path(&mut items[index], rest);
            let key_fields = first
                .strip_prefix("k:")
                .and_then(|k| serde_json::from_str::<Map<String, Value>>(k).ok())
                .map(|m| m.len())
                .unwrap_or(0);
            if items[index]
                .as_object()
                .is_some_and(|m| m.len() <= key_fields)
            {
                items.remove(index);
            }
        }
    }
}

/// Merge an applied configuration into an object: maps field by field, keyed lists item by
/// item, everything else replaced.
pub fn merge_applied(target: &mut Value, config: &Value) {
    match (target, config) {
        (Value::Object(target), Value::Object(config)) => {
            for (k, v) in config {
                match target.get_mut(k) {
                    Some(existing) => merge_applied(existing, v),
                    None => {
                        target.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(target), Value::Array(config)) => match list_key(config) {
            Some(key) if list_key(target).is_some() || target.is_empty() => {
                for item in config {
                    match target.iter_mut().find(|t| t.get(key) == item.get(key)) {
                        Some(existing) => merge_applied(existing, item),
                        None => target.push(item.clone()),
                    }
                }
            }
            _ => target.clone_from(config),
        },
        (target, config) => *target = config.clone(),
    }
}

/// A server-side apply that other managers' fields block: `(manager, field)` pairs.
pub type Conflicts = Vec<(String, String)>;

/// Server-side apply `config` by `manager` onto `current` (or onto nothing, creating).
pub fn apply(
    current: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    resource: &Resource,
    part: Part,
) -> Result<Value, Conflicts> {
    let subresource = subresource_name(part);
    let config_leaves = tracked_leaves(config, resource, part);
    let Some(current) = current else {
        let mut object = config.clone();
        write_entries(
            &mut object,
            &[apply_entry(manager, resource, subresource, &config_leaves)],
        );
        return Ok(object);
    };
    let current_leaves = tracked_leaves(current, resource, part);
    let mut entries = entries_of(current);
    let mut conflicts = Conflicts::new();
    let mut conflicting = BTreeSet::new();
    for (path, value) in &config_leaves {
        let Some(existing) = current_leaves.get(path) else {
            continue;
        };
        if existing == value {
            continue;
        }
        for entry in &entries {
            if entry.manager != manager
                && entry.subresource == subresource
                && entry.fields.contains(path)
            {
                conflicts.push((entry.manager.clone(), dotted(path)));
                conflicting.insert(path.clone());
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    let mut object = current.clone();
    let previously_applied: BTreeSet<Path> = entries
        .iter()
        .filter(|e| e.manager == manager && e.operation == "Apply" && e.subresource == subresource)
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    for path in previously_applied {
        let owned_elsewhere = entries.iter().any(|e| {
            !(e.manager == manager && e.operation == "Apply")
                && e.subresource == subresource
                && e.fields.contains(&path)
        });
        if !config_leaves.contains_key(&path) && !owned_elsewhere {
            remove_path(&mut object, &path);
        }
    }
    let mut applied = config.clone();
    if let Some(map) = applied.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
    }
    merge_applied(&mut object, &applied);
    for entry in entries.iter_mut() {
        if entry.manager == manager && entry.operation == "Apply" {
            continue;
        }
        entry.fields.retain(|p| !conflicting.contains(p));
    }
    entries.retain(|e| {
        !(e.manager == manager && e.operation == "Apply" && e.subresource == subresource)
    });
    entries.push(apply_entry(manager, resource, subresource, &config_leaves));
    prune_missing(&mut entries, &object, resource);
    write_entries(&mut object, &entries);
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    fn configmaps() -> Resource {
        (*Registry::with_builtins()
            .get("", "v1", "configmaps")
            .unwrap())
        .clone()
    }

    #[test]
    fn apply_conflicts_with_another_managers_value_unless_forced() {
        let resource = configmaps();
        let base = json!({"metadata": {"name": "c"}, "data": {"a": "1"}});
        let first = apply(None, &base, "alice", false, &resource, Part::Main).unwrap();
        let change = json!({"metadata": {"name": "c"}, "data": {"a": "2"}});
        let conflicts =
            apply(Some(&first), &change, "bob", false, &resource, Part::Main).unwrap_err();
        assert_eq!(conflicts, [("alice".to_owned(), ".data.a".to_owned())]);
        let forced = apply(Some(&first), &change, "bob", true, &resource, Part::Main).unwrap();
        assert_eq!(forced["data"]["a"], "2");
        let managers: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, ["bob"]);
    }

    #[test]
    fn fields_a_manager_stops_applying_are_removed() {
        let resource = configmaps();
        let both = json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
        let first = apply(None, &both, "alice", false, &resource, Part::Main).unwrap();
        let only_a = json!({"metadata": {"name": "c"}, "data": {"a": "1"}});
        let second = apply(Some(&first), &only_a, "alice", false, &resource, Part::Main).unwrap();
        assert_eq!(second["data"], json!({"a": "1"}));
    }

    #[test]
    fn keyed_lists_merge_by_name_and_show_as_k_entries() {
        let resource = configmaps();
        let config = json!({"spec": {"containers": [{"name": "web", "image": "a"}]}});
        let object = apply(None, &config, "m", false, &resource, Part::Main).unwrap();
        let fields = &object["metadata"]["managedFields"][0]["fieldsV1"];
        assert!(fields["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"]["f:image"].is_object());
        let mut target = json!({"containers": [{"name": "web", "image": "a"}, {"name": "side"}]});
        merge_applied(
            &mut target,
            &json!({"containers": [{"name": "web", "image": "b"}]}),
        );
        assert_eq!(target["containers"][0]["image"], "b");
        assert_eq!(target["containers"][1]["name"], "side");
    }
}
