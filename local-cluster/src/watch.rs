//! Watch streams: the initial state (synthetic `ADDED` events, optionally closed by the
//! `k8s.io/initial-events-end` bookmark) or a replay from a resourceVersion, then live changes
//! filtered by namespace and selectors, periodic `BOOKMARK`s, and a `410 Expired` `ERROR` event
//! when the requested version is too old or the watcher falls behind.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::api::present;
use crate::resources::Resource;
use crate::resources::ResourceKey;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{Change, ChangeKind, Stored, encode};
use crate::table::{IncludeObject, table};

/// What a watch filters on and how it renders events.
pub struct WatchSpec {
    /// The resource watched (the version decides `apiVersion` in events).
    pub resource: Arc<Resource>,
    /// Only this namespace, if set.
    pub namespace: Option<String>,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
    /// When the server ends the watch (`timeoutSeconds`).
    pub timeout: Duration,
    /// How often bookmarks are sent.
    pub bookmark_interval: Duration,
    /// Render objects as Table rows (`kubectl get -w`).
    pub table: Option<IncludeObject>,
}

impl WatchSpec {
    fn matches(&self, object: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns))
            && self.labels.matches(object)
            && self.fields.matches(object)
    }
}

/// Where a watch starts.
pub enum Start {
    /// Send these objects as `ADDED` first; `end_bookmark` closes them with the
    /// initial-events-end bookmark (`sendInitialEvents=true`).
    Initial {
        /// Current objects.
        objects: Vec<Stored>,
        /// The resourceVersion they were read at.
        revision: u64,
        /// Whether to send the initial-events-end bookmark.
        end_bookmark: bool,
    },
    /// Replay these changes (after the requested resourceVersion).
    Replay {
        /// Changes already made.
        changes: Vec<Arc<Change>>,
        /// The requested resourceVersion.
        revision: u64,
    },
    /// The requested resourceVersion is compacted: one `ERROR` event, then the end.
    Expired(ApiError),
}

struct State {
    spec: WatchSpec,
    /// The watched resource's key and `apiVersion`, computed once rather than per change.
    key: ResourceKey,
    api_version: String,
    pending: std::collections::VecDeque<Bytes>,
    receiver: broadcast::Receiver<Arc<Change>>,
    expire: tokio::sync::watch::Receiver<u64>,
    revision: u64,
    deadline: Instant,
    next_bookmark: Instant,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    headers_sent: bool,
    done: bool,
}

fn line(event_type: &str, object: &Value) -> Bytes {
    encoded_line(event_type, &encode(object))
}

/// An event line around an already serialized object.
fn encoded_line(event_type: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(event_type.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

impl State {
    fn event(&mut self, event_type: &str, object: &Value) -> Bytes {
        let object = present(&self.spec.resource, object);
        match self.spec.table {
            None => line(event_type, &object),
            Some(include) => {
                let rendered = table(
                    &self.spec.resource,
                    &[Arc::new(object)],
                    !self.headers_sent,
                    include,
                    json!({"resourceVersion": self.revision.to_string()}),
                );
                self.headers_sent = true;
                line(event_type, &rendered)
            }
        }
    }

    fn bookmark(&self, initial_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": self.revision.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            "BOOKMARK",
            &json!({
                "kind": self.spec.resource.kind,
                "apiVersion": self.spec.resource.api_version(),
                "metadata": metadata,
            }),
        )
    }

    fn expired(&mut self, message: String) -> Bytes {
        self.done = true;
        line("ERROR", &ApiError::gone(message).to_status())
    }

    fn accept(&mut self, change: &Change) {
        if change.resource != self.key || change.revision <= self.revision {
            return;
        }
        self.revision = change.revision;
        let now_matches = self.spec.matches(&change.object);
        let before_matched = change
            .previous
            .as_deref()
            .is_some_and(|p| self.spec.matches(p));
        let event_type = match change.kind {
            ChangeKind::Added => now_matches.then_some("ADDED"),
            ChangeKind::Modified => match (before_matched, now_matches) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            },
            ChangeKind::Deleted => (before_matched || now_matches).then_some("DELETED"),
        };
        if let Some(event_type) = event_type {
            let event = self.sent_as(event_type, &change.object, || change.encoded());
            self.pending.push_back(event);
        }
    }

    /// An event line for `object`, around its shared encoding when it goes out unchanged.
    fn sent_as<'a>(
        &mut self,
        event_type: &str,
        object: &Value,
        encoded: impl FnOnce() -> &'a Bytes,
    ) -> Bytes {
        if self.spec.table.is_none() && object["apiVersion"].as_str() == Some(&self.api_version) {
            encoded_line(event_type, encoded())
        } else {
            self.event(event_type, object)
        }
    }

    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.done {
                return None;
            }
            let wake_at = if self.spec.bookmarks {
                self.next_bookmark
            } else {
                self.deadline
            };
            // One timer for the watch's life, moved only when its target moves: a new timer
            // per event would cost every watcher a timer-wheel insertion for each change.
            if self.timer.deadline() != wake_at {
                self.timer.as_mut().reset(wake_at);
            }
            tokio::select! {
                received = self.receiver.recv() => match received {
                    Ok(change) => self.accept(&change),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let revision = self.revision;
                        return Some(self.expired(format!(
                            "too old resource version: {revision}: the watcher fell behind"
                        )));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                changed = self.expire.changed() => {
                    let revision = self.revision;
                    if changed.is_err() {
                        return None;
                    }
                    return Some(self.expired(format!(
                        "too old resource version: {revision}: the watch cache was reset"
                    )));
                }
                () = self.timer.as_mut() => {
                    if Instant::now() >= self.deadline {
                        return None;
                    }
                    self.next_bookmark = Instant::now() + self.spec.bookmark_interval;
                    return Some(self.bookmark(false));
                }
            }
        }
    }
}

/// The body of a watch response: newline-delimited JSON events.
pub fn stream(
    spec: WatchSpec,
    start: Start,
    receiver: broadcast::Receiver<Arc<Change>>,
    expire: tokio::sync::watch::Receiver<u64>,
) -> impl Stream<Item = Bytes> + Send {
    let now = Instant::now();
    let mut state = State {
        deadline: now + spec.timeout,
        next_bookmark: now + spec.bookmark_interval,
        timer: Box::pin(tokio::time::sleep_until(now + spec.bookmark_interval)),
        key: spec.resource.key(),
        api_version: spec.resource.api_version(),
        spec,
        pending: std::collections::VecDeque::new(),
        receiver,
        expire,
        revision: 0,
        headers_sent: false,
        done: false,
    };
    match start {
        Start::Initial {
            objects,
            revision,
            end_bookmark,
        } => {
            state.revision = revision;
            for stored in objects {
                if state.spec.matches(stored.object()) {
                    let event = state.sent_as("ADDED", stored.object(), || stored.encoded());
                    state.pending.push_back(event);
                }
            }
            if end_bookmark {
                let bookmark = state.bookmark(true);
                state.pending.push_back(bookmark);
            }
        }
        Start::Replay { changes, revision } => {
            state.revision = revision;
            for change in changes {
                state.accept(&change);
            }
        }
        Start::Expired(error) => {
            state.pending.push_back(line("ERROR", &error.to_status()));
            state.done = true;
        }
    }
    futures::stream::unfold(state, |mut state| async move {
        state.next().await.map(|bytes| (bytes, state))
    })
}
