//! The controllers, one module per kind, and the few helpers through which they touch the
//! cluster: server-side apply of children, status patches and Events.
//!
//! A controller module computes desired children and status with pure functions and calls
//! these helpers at the edges; no controller reaches into another's module.

pub mod cache;
pub mod dataset;
pub mod inference_service;
pub mod model;
pub mod placement;
pub mod storage_tier;
pub mod tiering;
pub mod worker_job;

use std::fmt::Debug;
use std::sync::Arc;

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::worker_pod::WorkerImages;

/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "aigc-operator";

/// Settings the controllers share.
#[derive(Clone, Debug, Default)]
pub struct ControllerConfig {
    /// Images of worker pods.
    pub worker_images: WorkerImages,
    /// How often the tier policy runs when nothing wakes it earlier;
    /// [`tiering::DEFAULT_INTERVAL`] when unset.
    pub tier_policy_interval: Option<std::time::Duration>,
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
        dataset::run(ctx.clone()),
        model::run(ctx.clone()),
        tiering::run(ctx),
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

/// Add `finalizer` to `obj` unless it is there. A merge patch carrying the resourceVersion
/// it was computed from, so a concurrent change makes it fail and retry rather than drop
/// another writer's finalizer.
pub async fn add_finalizer<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<(), Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
    K::DynamicType: Default,
{
    let mut finalizers = obj.finalizers().to_vec();
    if finalizers.iter().any(|f| f == finalizer) {
        return Ok(());
    }
    finalizers.push(finalizer.to_owned());
    patch_finalizers(api, obj, finalizers).await
}

/// Remove `finalizer` from `obj` if it is there.
pub async fn remove_finalizer<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<(), Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
    K::DynamicType: Default,
{
    if !obj.finalizers().iter().any(|f| f == finalizer) {
        return Ok(());
    }
    let finalizers = obj
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    patch_finalizers(api, obj, finalizers).await
}

async fn patch_finalizers<K>(api: &Api<K>, obj: &K, finalizers: Vec<String>) -> Result<(), Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
    K::DynamicType: Default,
{
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": obj.resource_version(),
        }
    });
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Already gone: nothing left to hold.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(Error::Kube {
            action: format!(
                "updating the finalizers of {} {}",
                K::kind(&K::DynamicType::default()),
                obj.name_any()
            ),
            source,
        }),
    }
}
