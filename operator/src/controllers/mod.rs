//! The controllers, one module per kind, and the few helpers through which they touch the
//! cluster: server-side apply of children, status patches and Events.
//!
//! A controller module computes desired children and status with pure functions and calls
//! these helpers at the edges; no controller reaches into another's module.

pub mod admission;
pub mod inference_service;
pub mod storage_tier;
pub mod training_job;

use std::fmt::Debug;
use std::sync::Arc;

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::scheduler::SchedulerConfig;
use crate::worker_pod::WorkerImages;

/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "aigc-operator";

/// Settings the controllers share.
#[derive(Clone, Debug, Default)]
pub struct ControllerConfig {
    /// Images of worker pods.
    pub worker_images: WorkerImages,
    /// Admission queues, quotas and the `accelerator: auto` fallback delay. Until the
    /// operator configuration file carries it, the default: one unlimited `default` queue.
    pub scheduler: SchedulerConfig,
}

/// What every reconcile gets: the client, the configuration and the event recorder.
pub struct Context {
    /// Client of the cluster the operator manages.
    pub client: Client,
    /// Shared settings.
    pub config: ControllerConfig,
    /// Publishes Events on the objects the operator manages.
    pub recorder: Recorder,
}

impl Context {
    /// A context reporting Events as `aigc-operator`.
    pub fn new(client: Client, config: ControllerConfig) -> Arc<Context> {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: None,
        };
        let recorder = Recorder::new(client.clone(), reporter);
        Arc::new(Context {
            client,
            config,
            recorder,
        })
    }
}

/// Run every controller until the process is asked to stop.
pub async fn run_all(ctx: Arc<Context>) {
    tokio::join!(
        storage_tier::run(ctx.clone()),
        inference_service::run(ctx.clone()),
        training_job::run(ctx.clone()),
        admission::run(ctx),
    );
}

/// Create or update `child` by server-side apply, taking ownership of the fields it sets.
pub async fn apply_child<K>(api: &Api<K>, child: &K) -> Result<K, Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
    K::DynamicType: Default,
{
    let name = child.meta().name.clone().ok_or(Error::MissingName)?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(child))
        .await
        .map_err(|source| Error::Kube {
            action: format!("applying {} {name}", K::kind(&K::DynamicType::default())),
            source,
        })
}

/// Replace the status of `obj` by server-side apply on the status subresource.
pub async fn apply_status<K, S>(api: &Api<K>, obj: &K, status: &S) -> Result<(), Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
    K::DynamicType: Default,
    S: Serialize,
{
    let dt = K::DynamicType::default();
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&dt),
        "kind": K::kind(&dt),
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&obj.name_any(), &params, &Patch::Apply(&patch))
        .await
        .map(|_| ())
        .map_err(|source| Error::Kube {
            action: format!("updating status of {} {}", K::kind(&dt), obj.name_any()),
            source,
        })
}

/// Write the status of `obj` as a JSON merge patch that carries the `resourceVersion` the
/// status was computed from, so that the write fails with a conflict instead of overwriting
/// a newer status written by someone else (the admission loop and the controllers both write
/// workload status). Fields of the old status missing from `status` are removed.
pub async fn patch_status_checked<K, S>(api: &Api<K>, obj: &K, status: &S) -> Result<K, Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
    K::DynamicType: Default,
    S: Serialize,
{
    let dt = K::DynamicType::default();
    let action = || format!("updating status of {} {}", K::kind(&dt), obj.name_any());
    let old = serde_json::to_value(obj)
        .map(|v| v.get("status").cloned().unwrap_or(serde_json::Value::Null))
        .unwrap_or(serde_json::Value::Null);
    let new = serde_json::to_value(status).map_err(|error| Error::Serialize {
        what: action(),
        message: error.to_string(),
    })?;
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": obj.meta().resource_version},
        "status": merge_patch(&old, &new),
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|source| Error::Kube {
        action: action(),
        source,
    })
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`.
pub fn merge_patch(old: &serde_json::Value, new: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let mut patch = serde_json::Map::new();
            for key in old.keys().filter(|key| !new.contains_key(*key)) {
                patch.insert(key.clone(), Value::Null);
            }
            for (key, value) in new {
                match old.get(key) {
                    Some(previous) if previous == value => {}
                    Some(previous) => {
                        patch.insert(key.clone(), merge_patch(previous, value));
                    }
                    None => {
                        patch.insert(key.clone(), value.clone());
                    }
                }
            }
            Value::Object(patch)
        }
        _ => new.clone(),
    }
}

/// Whether an error is an optimistic-concurrency conflict (someone wrote first).
pub fn is_conflict(error: &Error) -> bool {
    matches!(error, Error::Kube { source: kube::Error::Api(status), .. } if status.code == 409)
}

/// Publish an Event on `obj`. A failure to record is logged, never fatal: Events inform,
/// they do not drive reconciliation.
pub async fn publish<K>(recorder: &Recorder, obj: &K, type_: EventType, reason: &str, note: String)
where
    K: Resource<DynamicType = ()>,
{
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(%error, reason, "could not publish event");
    }
}

/// The object named `name`, or `None` when it does not exist.
pub async fn get_opt<K>(api: &Api<K>, name: &str) -> Result<Option<K>, Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
    K::DynamicType: Default,
{
    api.get_opt(name).await.map_err(|source| Error::Kube {
        action: format!("reading {} {name}", K::kind(&K::DynamicType::default())),
        source,
    })
}

/// Delete the object named `name` if it exists.
pub async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
    K::DynamicType: Default,
{
    match api.delete(name, &Default::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(Error::Kube {
            action: format!("deleting {} {name}", K::kind(&K::DynamicType::default())),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::merge_patch;

    #[test]
    fn merge_patches_remove_what_the_new_status_drops() {
        let old = json!({"phase": "Running", "placement": {"nodes": ["a"]}, "attempts": 1,
                         "progress": {"step": 4, "loss": 0.5}});
        let new = json!({"phase": "Queued", "attempts": 1, "progress": {"step": 4}});
        assert_eq!(
            merge_patch(&old, &new),
            json!({"phase": "Queued", "placement": null, "progress": {"loss": null}})
        );
        assert_eq!(merge_patch(&json!(null), &new), new);
    }
}
