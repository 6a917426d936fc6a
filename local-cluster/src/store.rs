//! In-memory object storage with one global resourceVersion counter and a bounded history of
//! changes for watches. It stores what it is given: defaulting, validation and API semantics
//! live in [`crate::api`], never here.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::resources::ResourceKey;

/// Namespace (empty for cluster-scoped objects) and name.
pub type ObjectKey = (String, String);

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Removed from storage.
    Deleted,
}

impl ChangeKind {
    /// The watch event `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "ADDED",
            ChangeKind::Modified => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        }
    }
}

/// One write, as watches see it.
#[derive(Debug)]
pub struct Change {
    /// The resourceVersion the write produced.
    pub revision: u64,
    /// The resource written.
    pub resource: ResourceKey,
    /// Added, modified or deleted.
    pub kind: ChangeKind,
    /// The object after the write (for deletes, the last state with the new resourceVersion).
    pub object: Arc<Value>,
    /// The object before the write, for selector transitions.
    pub previous: Option<Arc<Value>>,
    /// `object` serialized once, shared by every watcher that sends it unchanged and, while
    /// the object is current, by every list that includes it.
    pub encoded: Arc<OnceLock<Bytes>>,
}

impl Change {
    /// The object as JSON bytes, serialized on first use.
    pub fn encoded(&self) -> &Bytes {
        self.encoded.get_or_init(|| encode(&self.object))
    }
}

/// An object as JSON bytes.
pub fn encode(object: &Value) -> Bytes {
    let mut out = Vec::with_capacity(1024);
    // Writing a `Value` into memory cannot fail (its map keys are strings); Display is the
    // infallible route should that ever change.
    if serde_json::to_writer(&mut out, object).is_err() {
        out = object.to_string().into_bytes();
    }
    Bytes::from(out)
}

/// A stored object with its JSON encoding, computed the first time a list or watch sends it
/// and kept until the object changes, so reading the same objects again costs no serialization.
#[derive(Clone, Debug)]
pub struct Stored {
    object: Arc<Value>,
    encoded: Arc<OnceLock<Bytes>>,
}

impl Stored {
    fn new(object: Arc<Value>) -> Self {
        Self {
            object,
            encoded: Arc::new(OnceLock::new()),
        }
    }

    /// The object.
    pub fn object(&self) -> &Arc<Value> {
        &self.object
    }

    /// The object as JSON bytes.
    pub fn encoded(&self) -> &Bytes {
        self.encoded.get_or_init(|| encode(&self.object))
    }
}

/// Changes to replay and a receiver for the ones that follow.
pub type Subscription = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>);

/// Why a watch cannot start from the requested resourceVersion.
#[derive(Debug, PartialEq, Eq)]
pub struct TooOld {
    /// The oldest resourceVersion still replayable.
    pub oldest: u64,
}

/// All objects of all resources, plus the change history.
pub struct Store {
    tables: HashMap<ResourceKey, BTreeMap<ObjectKey, Stored>>,
    /// Where each stored object with a `metadata.uid` lives, for owner-reference lookups.
    uids: HashMap<String, (ResourceKey, ObjectKey)>,
    revision: u64,
    history: VecDeque<Arc<Change>>,
    history_limit: usize,
    /// Revision of the oldest change dropped from history (0 if none was dropped).
    compacted: u64,
    changes: broadcast::Sender<Arc<Change>>,
}

/// Two key-ordered sequences with no key in common, as one key-ordered sequence.
fn merge_by_key(
    a: impl Iterator<Item = (ObjectKey, Stored)>,
    b: impl Iterator<Item = (ObjectKey, Stored)>,
) -> impl Iterator<Item = Stored> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || {
        let take_a = match (a.peek(), b.peek()) {
            (Some((ka, _)), Some((kb, _))) => ka < kb,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if take_a { a.next() } else { b.next() }.map(|(_, stored)| stored)
    })
}

/// The namespace/name key of an object.
pub fn object_key(object: &Value) -> ObjectKey {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("").to_owned(),
        meta["name"].as_str().unwrap_or("").to_owned(),
    )
}

impl Store {
    /// An empty store that keeps the last `history_limit` changes for watch resumption.
    pub fn new(history_limit: usize) -> Self {
        let (changes, _) = broadcast::channel(history_limit.clamp(1024, 65536));
        Self {
            tables: HashMap::new(),
            uids: HashMap::new(),
            revision: 1,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 0,
            changes,
        }
    }

    /// The latest resourceVersion.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// One object.
    pub fn get(&self, resource: &ResourceKey, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.tables
            .get(resource)?
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|stored| stored.object.clone())
    }

    /// The object with this `metadata.uid`.
    pub fn by_uid(&self, uid: &str) -> Option<&Arc<Value>> {
        let (resource, key) = self.uids.get(uid)?;
        Some(&self.tables.get(resource)?.get(key)?.object)
    }

    fn index_uid(&mut self, resource: &ResourceKey, object: &Value) {
        if let Some(uid) = object["metadata"]["uid"].as_str() {
            self.uids
                .insert(uid.to_owned(), (resource.clone(), object_key(object)));
        }
    }

    fn unindex_uid(&mut self, resource: &ResourceKey, object: &Value) {
        if let Some(uid) = object["metadata"]["uid"].as_str()
            && self
                .uids
                .get(uid)
                .is_some_and(|(r, k)| r == resource && *k == object_key(object))
        {
            self.uids.remove(uid);
        }
    }

    /// Objects of a resource, in key order, optionally in one namespace, starting after `after`.
    pub fn list<'a>(
        &'a self,
        resource: &ResourceKey,
        namespace: Option<&'a str>,
        after: Option<&'a ObjectKey>,
    ) -> impl Iterator<Item = &'a Arc<Value>> + 'a {
        self.list_stored(resource, namespace, after)
            .map(|stored| &stored.object)
    }

    /// Like [`Store::list`], with each object's cached encoding.
    pub fn list_stored<'a>(
        &'a self,
        resource: &ResourceKey,
        namespace: Option<&'a str>,
        after: Option<&'a ObjectKey>,
    ) -> impl Iterator<Item = &'a Stored> + 'a {
        use std::ops::Bound;
        let lower = match after {
            Some(key) => Bound::Excluded(key.clone()),
            None => Bound::Unbounded,
        };
        self.tables
            .get(resource)
            .into_iter()
            .flat_map(move |table| table.range((lower.clone(), Bound::Unbounded)))
            .filter(move |((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(_, object)| object)
    }

    /// Like [`Store::list_stored`], as the objects were at `revision`: what a paged list
    /// serves after its first page, so pages read together form one consistent snapshot (as
    /// an API server's do) even while objects are created, changed and deleted in between.
    /// Fails when the history no longer reaches back to `revision`.
    pub fn list_at<'a>(
        &'a self,
        resource: &ResourceKey,
        namespace: Option<&'a str>,
        after: Option<&'a ObjectKey>,
        revision: u64,
    ) -> Result<impl Iterator<Item = Stored> + 'a, TooOld> {
        if revision < self.compacted {
            return Err(TooOld {
                oldest: self.compacted + 1,
            });
        }
        let in_range = move |key: &ObjectKey| {
            after.is_none_or(|a| key > a) && namespace.is_none_or(|n| n == key.0)
        };
        // The first change after `revision` to an object tells what it was at `revision`:
        // absent if that change added it, otherwise the state that change replaced.
        let mut then: BTreeMap<ObjectKey, Option<Arc<Value>>> = BTreeMap::new();
        for change in self.history.iter().rev() {
            if change.revision <= revision {
                break;
            }
            if change.resource != *resource {
                continue;
            }
            let key = object_key(&change.object);
            if in_range(&key) {
                let before = match change.kind {
                    ChangeKind::Added => None,
                    ChangeKind::Modified | ChangeKind::Deleted => change.previous.clone(),
                };
                // Walking backwards, the last insert for a key is its earliest change.
                then.insert(key, before);
            }
        }
        let current = self
            .list_stored(resource, namespace, after)
            .map(|stored| (object_key(&stored.object), stored.clone()))
            .filter(|(key, _)| !then.contains_key(key))
            .collect::<Vec<_>>();
        let restored = then
            .into_iter()
            .filter_map(|(key, before)| before.map(|object| (key, Stored::new(object))));
        Ok(merge_by_key(current.into_iter(), restored))
    }

    /// Every resource that has objects.
    pub fn resources(&self) -> Vec<ResourceKey> {
        self.tables
            .iter()
            .filter(|(_, t)| !t.is_empty())
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    fn stamp(object: &mut Value, revision: u64) {
        object["metadata"]["resourceVersion"] = Value::String(revision.to_string());
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        if self.history.len() == self.history_limit
            && let Some(dropped) = self.history.pop_front()
        {
            self.compacted = dropped.revision;
        }
        self.history.push_back(change.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(change);
    }

    /// Store a new object or replace an existing one, assigning the next resourceVersion.
    pub fn put(&mut self, resource: &ResourceKey, mut object: Value) -> Arc<Value> {
        let revision = self.next_revision();
        Self::stamp(&mut object, revision);
        let stored = Stored::new(Arc::new(object));
        let previous = self
            .tables
            .entry(resource.clone())
            .or_default()
            .insert(object_key(&stored.object), stored.clone())
            .map(|previous| previous.object);
        if let Some(previous) = &previous {
            self.unindex_uid(resource, previous);
        }
        self.index_uid(resource, &stored.object);
        let kind = if previous.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        self.record(Change {
            revision,
            resource: resource.clone(),
            kind,
            object: stored.object.clone(),
            previous,
            encoded: stored.encoded,
        });
        stored.object
    }

    /// Remove an object; the returned final state carries the deletion's resourceVersion.
    pub fn remove(
        &mut self,
        resource: &ResourceKey,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<Value>> {
        let previous = self
            .tables
            .get_mut(resource)?
            .remove(&(namespace.to_owned(), name.to_owned()))?
            .object;
        self.unindex_uid(resource, &previous);
        let revision = self.next_revision();
        let mut last = (*previous).clone();
        Self::stamp(&mut last, revision);
        let last = Arc::new(last);
        self.record(Change {
            revision,
            resource: resource.clone(),
            kind: ChangeKind::Deleted,
            object: last.clone(),
            previous: Some(previous),
            encoded: Arc::new(OnceLock::new()),
        });
        Some(last)
    }

    /// Remove every object of a resource (its CRD was deleted), without watch events per object.
    pub fn drop_resource(&mut self, resource: &ResourceKey) -> Vec<Arc<Value>> {
        let objects: Vec<ObjectKey> = self
            .tables
            .get(resource)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        objects
            .iter()
            .filter_map(|(ns, name)| self.remove(resource, ns, name))
            .collect()
    }

    /// Subscribe to changes after `since`: the changes already made, then a live receiver.
    /// Fails when `since` is older than the retained history.
    pub fn watch_from(&self, since: u64) -> Result<Subscription, TooOld> {
        if since < self.compacted {
            return Err(TooOld {
                oldest: self.compacted + 1,
            });
        }
        let replay = self
            .history
            .iter()
            .filter(|c| c.revision > since)
            .cloned()
            .collect();
        Ok((replay, self.changes.subscribe()))
    }

    /// Forget the whole change history, as an API server does when compacting: watches that
    /// resume from an earlier resourceVersion get `410 Gone`.
    pub fn compact(&mut self) {
        self.compacted = self.revision;
        self.history.clear();
    }

    /// Number of stored objects.
    pub fn len(&self) -> usize {
        self.tables.values().map(BTreeMap::len).sum()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All objects, for persistence.
    pub fn snapshot(&self) -> Vec<(ResourceKey, Arc<Value>)> {
        self.tables
            .iter()
            .flat_map(|(k, t)| t.values().map(move |o| (k.clone(), o.object.clone())))
            .collect()
    }

    /// Restore objects saved by [`Store::snapshot`], keeping their resourceVersions.
    pub fn restore(&mut self, objects: Vec<(ResourceKey, Value)>) {
        for (resource, object) in objects {
            let revision = object["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            self.revision = self.revision.max(revision);
            self.index_uid(&resource, &object);
            self.tables
                .entry(resource)
                .or_default()
                .insert(object_key(&object), Stored::new(Arc::new(object)));
        }
        self.compacted = self.revision;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> ResourceKey {
        ResourceKey {
            group: String::new(),
            plural: "configmaps".to_owned(),
        }
    }

    #[test]
    fn lists_at_an_earlier_revision_undo_the_later_writes() {
        let mut store = Store::new(100);
        let cm = |name: &str, v: &str| json!({"metadata": {"name": name, "namespace": "n"}, "data": {"v": v}});
        store.put(&key(), cm("a", "1"));
        store.put(&key(), cm("c", "1"));
        store.put(&key(), cm("d", "1"));
        let then = store.revision();
        store.put(&key(), cm("b", "1"));
        store.put(&key(), cm("c", "2"));
        store.put(&key(), cm("c", "3"));
        store.remove(&key(), "n", "d");
        store.put(&key(), cm("d", "new"));
        let at = |after: Option<&ObjectKey>| -> Vec<(String, String)> {
            store
                .list_at(&key(), Some("n"), after, then)
                .unwrap()
                .map(|s| {
                    let o = s.object();
                    (
                        o["metadata"]["name"].as_str().unwrap().to_owned(),
                        o["data"]["v"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        };
        let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        assert_eq!(at(None), [pair("a", "1"), pair("c", "1"), pair("d", "1")]);
        let after_a = ("n".to_owned(), "a".to_owned());
        assert_eq!(at(Some(&after_a)), [pair("c", "1"), pair("d", "1")]);
        assert_eq!(
            store
                .list_at(&key(), Some("other"), None, then)
                .unwrap()
                .count(),
            0
        );
        store.compact();
        assert!(store.list_at(&key(), Some("n"), None, then).is_err());
    }

    #[test]
    fn every_write_takes_the_next_resource_version() {
        let mut store = Store::new(10);
        let a = store.put(&key(), json!({"metadata": {"name": "a", "namespace": "n"}}));
        let b = store.put(&key(), json!({"metadata": {"name": "b", "namespace": "n"}}));
        assert_eq!(a["metadata"]["resourceVersion"], "2");
        assert_eq!(b["metadata"]["resourceVersion"], "3");
        let gone = store.remove(&key(), "n", "a").unwrap();
        assert_eq!(gone["metadata"]["resourceVersion"], "4");
        assert_eq!(store.list(&key(), Some("n"), None).count(), 1);
    }

    #[test]
    fn watches_older_than_history_are_refused() {
        let mut store = Store::new(2);
        for name in ["a", "b", "c", "d"] {
            store.put(
                &key(),
                json!({"metadata": {"name": name, "namespace": "n"}}),
            );
        }
        assert!(store.watch_from(1).is_err());
        let (replay, _) = store.watch_from(3).unwrap();
        let names: Vec<&str> = replay
            .iter()
            .map(|c| c.object["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["c", "d"]);
    }
}
