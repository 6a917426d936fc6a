//! The controllers, one module per kind, and the few helpers through which they touch the
//! cluster: server-side apply of children, status patches and Events.
//!
//! A controller module computes desired children and status with pure functions and calls
//! these helpers at the edges; no controller reaches into another's module.
//!
//! Every controller's `run(ctx)` takes three lines from the process around it:
//! `.graceful_shutdown_on(ctx.stopped())` so it stops when leadership is lost or the process
//! is asked to stop, `ctx.controller("Kind", api, watcher_config)` instead of
//! `Controller::new` so `/readyz` waits for its cache, and
//! `.run(instrumented("Kind", reconcile), error_policy, ctx)` so `/metrics` counts and times
//! its reconciles (`ctx` may be the [`Context`] or a controller's own state that holds it;
//! loops that work in passes use [`counted`]).

pub mod admission;
pub mod cache;
pub mod dataset;
pub mod inference_service;
pub mod model;
pub mod placement;
pub mod storage_tier;
pub mod tiering;
pub mod training_job;
pub mod worker_job;

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{WatchStreamExt, watcher};

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::scheduler::SchedulerConfig;
use crate::worker_pod::WorkerImages;

/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "aigc-operator";

/// Reconciles each controller runs at once unless configured: 1,000 Datasets and 1,000 Models
/// applied together reach Ready as fast as unbounded (34 s in the scale benchmark) with a
/// fifth less operator memory (65 MiB peak instead of 84 MiB).
pub const DEFAULT_MAX_CONCURRENT_RECONCILES: u16 = 16;

/// Settings the controllers share (built from `config::OperatorConfig`).
#[derive(Clone, Debug, Default)]
pub struct ControllerConfig {
    /// Images of worker pods.
    pub worker_images: WorkerImages,
    /// Admission queues, quotas and cohorts of the resource scheduler.
    pub scheduler: SchedulerConfig,
    /// Root under which filesystem tier paths are visible to the operator process itself
    /// (`local up`); `None` in a cluster.
    pub local_root: Option<PathBuf>,
    /// How often the tier policy runs when nothing wakes it earlier;
    /// [`tiering::DEFAULT_INTERVAL`] when unset.
    pub tier_policy_interval: Option<std::time::Duration>,
    /// How often a Ready StorageTier is probed again (a failing one four times as often);
    /// [`storage_tier::PROBE_INTERVAL`] when unset.
    pub tier_probe_interval: Option<std::time::Duration>,
    /// How many objects each controller reconciles at once;
    /// [`DEFAULT_MAX_CONCURRENT_RECONCILES`] when unset. A bound keeps memory flat when
    /// thousands of objects change together (each reconcile in flight holds its objects and
    /// a request) and costs no time there: the apply-storm is bound by the API server.
    pub max_concurrent_reconciles: Option<u16>,
}

/// What every reconcile gets: the client, the configuration, the event recorder, and the
/// process's metrics, readiness and stop signal.
pub struct Context {
    /// Client of the cluster the operator manages.
    pub client: Client,
    /// Shared settings.
    pub config: ControllerConfig,
    /// Publishes Events on the objects the operator manages.
    pub recorder: Recorder,
    /// Counters and gauges served at `/metrics`.
    pub metrics: Metrics,
    /// Readiness served at `/readyz`.
    pub health: Health,
    /// `None`: the controllers run as long as the process.
    stop: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Context {
    /// A context reporting Events as `aigc-operator`, with its own metrics and readiness,
    /// whose controllers run until the process ends.
    pub fn new(client: Client, config: ControllerConfig) -> Arc<Context> {
        Self::build(client, config, Metrics::new(), Health::new(), None)
    }

    /// A context sharing the process's `metrics` and `health`, whose controllers stop when
    /// `stop` turns true (or its sender is dropped).
    pub fn with_process(
        client: Client,
        config: ControllerConfig,
        metrics: Metrics,
        health: Health,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Arc<Context> {
        Self::build(client, config, metrics, health, Some(stop))
    }

    fn build(
        client: Client,
        config: ControllerConfig,
        metrics: Metrics,
        health: Health,
        stop: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Arc<Context> {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: None,
        };
        let recorder = Recorder::new(client.clone(), reporter);
        Arc::new(Context {
            client,
            config,
            recorder,
            metrics,
            health,
            stop,
        })
    }

    /// Completes when the controllers should stop: leadership was lost or the process is
    /// shutting down. Pass it to `Controller::graceful_shutdown_on`.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let stop = self.stop.clone();
        async move {
            match stop {
                // An error means the sender is gone, which also means stop.
                Some(mut stop) => drop(stop.wait_for(|stopped| *stopped).await),
                None => std::future::pending().await,
            }
        }
    }

    /// A controller of `kind` watching `api`: it appears in `/metrics` before its first
    /// reconcile, and `/readyz` waits until its cache has completed the first list.
    pub fn controller<K>(
        &self,
        kind: &'static str,
        api: Api<K>,
        config: watcher::Config,
    ) -> Controller<K>
    where
        K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
        K::DynamicType: Eq + Hash + Clone + Default + Debug + Unpin,
    {
        self.metrics.register_kind(kind);
        self.health.expect_cache(kind);
        let health = self.health.clone();
        let (reader, writer) = reflector::store();
        let events = reflector(writer, lean_watcher(api, config, whole)).inspect(move |event| {
            if let Ok(watcher::Event::InitDone) = event {
                health.cache_synced(kind);
            }
        });
        let concurrency = self
            .config
            .max_concurrent_reconciles
            .unwrap_or(DEFAULT_MAX_CONCURRENT_RECONCILES);
        kube_runtime::Controller::for_stream(events.applied_objects(), reader)
            .with_config(kube_runtime::controller::Config::default().concurrency(concurrency))
    }
}

/// A watch of `api` that retries with backoff and hands on each object without its field
/// ownership (never read by the operator, and most of an applied object's size) and without
/// whatever else `slim` drops: what every controller and view of the operator watches.
pub fn lean_watcher<K>(
    api: Api<K>,
    config: watcher::Config,
    slim: fn(&mut K),
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + 'static,
{
    watcher(api, config).default_backoff().modify(move |obj| {
        obj.managed_fields_mut().clear();
        slim(obj);
    })
}

/// For [`lean_watcher`]: keep the rest of the object.
pub fn whole<K>(_: &mut K) {}

/// Run every controller until [`Context::stopped`] completes.
pub async fn run_all(ctx: Arc<Context>) {
    // One set of watched views for the Dataset and Model controllers, not one each.
    let (caches, keep_current) = cache::Caches::new(&ctx.client);
    let controllers = async {
        tokio::join!(
            storage_tier::run(ctx.clone()),
            inference_service::run(ctx.clone()),
            training_job::run(ctx.clone()),
            admission::run(ctx.clone()),
            dataset::run(ctx.clone(), caches.clone()),
            model::run(ctx.clone(), caches),
            tiering::run(ctx.clone()),
        )
    };
    // The views' watches never end on their own; they stop with the controllers.
    tokio::select! {
        _ = controllers => {}
        () = keep_current => {}
    }
}

/// Every controller's shared state leads to the process's [`Context`]: most controllers share
/// the `Context` itself, others a state holding it beside their own caches.
impl AsRef<Context> for Context {
    fn as_ref(&self) -> &Context {
        self
    }
}

/// `reconcile`, counted and timed per `kind` in the context's metrics (`/metrics`), for
/// controllers whose reconciles share the [`Context`] or a state holding it.
pub fn instrumented<K, S, E, F, Fut>(
    kind: &'static str,
    reconcile: F,
) -> impl FnMut(Arc<K>, Arc<S>) -> BoxFuture<'static, Result<Action, E>>
where
    S: AsRef<Context>,
    E: 'static,
    F: Fn(Arc<K>, Arc<S>) -> Fut,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
{
    move |obj, state| {
        let metrics = <S as AsRef<Context>>::as_ref(&state).metrics.clone();
        counted(metrics, kind, reconcile(obj, state)).boxed()
    }
}

/// `work`, counted and timed in `metrics` as one reconcile of `kind` that succeeds when
/// `work` does. For loops that reconcile in passes rather than per object (tier policy).
pub fn counted<T, E>(
    metrics: Metrics,
    kind: &'static str,
    work: impl Future<Output = Result<T, E>>,
) -> impl Future<Output = Result<T, E>> {
    let started = Instant::now();
    work.map(move |result| {
        metrics.record_reconcile(kind, started.elapsed(), result.is_ok());
        result
    })
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
