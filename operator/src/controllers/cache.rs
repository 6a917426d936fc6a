//! In-memory views of the objects the Dataset and Model controllers read on every reconcile
//! (StorageTiers, worker Jobs, TrainingJobs, InferenceServices), kept current by watches, so
//! a reconcile reads memory instead of listing through the API server. A view may lag the
//! API by a moment; the controllers only read from it what they can also tolerate being
//! stale (they create Jobs by server-side apply under deterministic names, so a Job missing
//! from the view is applied again, not duplicated).

use std::future::Future;

use aigc_crds::inference_service::InferenceService;
use aigc_crds::storage_tier::StorageTier;
use aigc_crds::training_job::TrainingJob;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::reflector::Store;
use kube::runtime::reflector::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use crate::controllers::worker_job::OWNER_UID_LABEL;

/// The watched views.
#[derive(Clone)]
pub struct Caches {
    tiers: Store<StorageTier>,
    jobs: Store<Job>,
    training_jobs: Store<TrainingJob>,
    services: Store<InferenceService>,
}

fn watched<K>(
    api: Api<K>,
    config: watcher::Config,
    slim: fn(&mut K),
) -> (Store<K>, impl Future<Output = ()> + Send + 'static)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = kube::runtime::reflector::store();
    let stream = watcher(api, config).default_backoff().modify(move |obj| {
        // Field ownership is never read here and is most of an applied object's size.
        obj.meta_mut().managed_fields = None;
        slim(obj);
    });
    let drive = reflector(writer, stream).for_each(|_| futures::future::ready(()));
    (store, drive)
}

impl Caches {
    /// The views, and the future that keeps them current (run it for as long as they are used).
    pub fn new(client: &Client) -> (Caches, impl Future<Output = ()> + Send + 'static) {
        let all = watcher::Config::default();
        let managed =
            watcher::Config::default().labels("app.kubernetes.io/managed-by=aigc-operator");
        let (tiers, a) = watched(Api::<StorageTier>::all(client.clone()), all.clone(), |_| {});
        // Of a Job only its labels, annotations and status are read; the pod template is not.
        let (jobs, b) = watched(Api::<Job>::all(client.clone()), managed, |job| {
            job.spec = None
        });
        let (training_jobs, c) =
            watched(Api::<TrainingJob>::all(client.clone()), all.clone(), |_| {});
        let (services, d) = watched(Api::<InferenceService>::all(client.clone()), all, |_| {});
        let drive = async move {
            futures::join!(a, b, c, d);
        };
        (
            Caches {
                tiers,
                jobs,
                training_jobs,
                services,
            },
            drive,
        )
    }

    /// Wait until every view has its first full list.
    pub async fn ready(&self) {
        let _ = futures::join!(
            self.tiers.wait_until_ready(),
            self.jobs.wait_until_ready(),
            self.training_jobs.wait_until_ready(),
            self.services.wait_until_ready(),
        );
    }

    /// All StorageTiers.
    pub fn tiers(&self) -> Vec<StorageTier> {
        self.tiers.state().iter().map(|t| (**t).clone()).collect()
    }

    /// The worker Jobs of the resource with `uid`.
    pub fn jobs_of(&self, namespace: &str, uid: &str) -> Vec<Job> {
        self.jobs
            .state()
            .iter()
            .filter(|j| {
                j.namespace().as_deref() == Some(namespace)
                    && j.labels().get(OWNER_UID_LABEL).map(String::as_str) == Some(uid)
            })
            .map(|j| (**j).clone())
            .collect()
    }

    /// The TrainingJobs in `namespace`.
    pub fn training_jobs_in(&self, namespace: &str) -> Vec<TrainingJob> {
        self.training_jobs
            .state()
            .iter()
            .filter(|j| j.namespace().as_deref() == Some(namespace))
            .map(|j| (**j).clone())
            .collect()
    }

    /// The InferenceServices in `namespace`.
    pub fn services_in(&self, namespace: &str) -> Vec<InferenceService> {
        self.services
            .state()
            .iter()
            .filter(|s| s.namespace().as_deref() == Some(namespace))
            .map(|s| (**s).clone())
            .collect()
    }
}
