//! In-memory views of the objects the Dataset and Model controllers read on every reconcile
//! (StorageTiers, worker Jobs, TrainingJobs, InferenceServices), kept current by watches, so
//! a reconcile reads memory instead of listing through the API server. A view may lag the
//! API by a moment; the controllers only read from it what they can also tolerate being
//! stale (they create Jobs by server-side apply under deterministic names, so a Job missing
//! from the view is applied again, not duplicated).

use std::future::Future;
use std::sync::Arc;

use aigc_crds::inference_service::InferenceService;
use aigc_crds::storage_tier::StorageTier;
use aigc_crds::training_job::TrainingJob;
use futures::{Stream, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::reflector::Store;
use kube::runtime::reflector::reflector;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::broadcast;

use crate::controllers::worker_job::OWNER_UID_LABEL;
use crate::controllers::{lean_watcher, whole};

/// The watched views.
#[derive(Clone)]
pub struct Caches {
    tiers: Store<StorageTier>,
    jobs: Store<Job>,
    training_jobs: Store<TrainingJob>,
    services: Store<InferenceService>,
    /// Every Job the view took in, after it took it in.
    job_changes: broadcast::Sender<Arc<Job>>,
}

/// Changed Jobs kept for subscribers that have not read them yet; one that falls further
/// behind gets every Job of the view instead.
const JOB_CHANGES: usize = 4096;

fn watched<K>(
    api: Api<K>,
    config: watcher::Config,
    slim: fn(&mut K),
    changes: Option<broadcast::Sender<Arc<K>>>,
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
    let stream = lean_watcher(api, config, slim);
    // The reflector updates the view before it passes an event on, so a subscriber told
    // about a change finds it in the view. After a (re)list the view is replaced whole at
    // `InitDone`, and every object in it counts as changed. No subscriber yet is fine:
    // nothing waits on the change.
    let view = store.clone();
    let drive = reflector(writer, stream).for_each(move |event| {
        if let Some(changes) = &changes {
            match event {
                Ok(watcher::Event::Apply(obj) | watcher::Event::Delete(obj)) => {
                    let _ = changes.send(Arc::new(obj));
                }
                Ok(watcher::Event::InitDone) => {
                    for obj in view.state() {
                        let _ = changes.send(obj);
                    }
                }
                _ => {}
            }
        }
        futures::future::ready(())
    });
    (store, drive)
}

impl Caches {
    /// The views, and the future that keeps them current (run it for as long as they are used).
    pub fn new(client: &Client) -> (Caches, impl Future<Output = ()> + Send + 'static) {
        let all = watcher::Config::default();
        let managed =
            watcher::Config::default().labels("app.kubernetes.io/managed-by=aigc-operator");
        let (job_changes, _) = broadcast::channel(JOB_CHANGES);
        let (tiers, a) = watched(
            Api::<StorageTier>::all(client.clone()),
            all.clone(),
            whole,
            None,
        );
        // Of a Job only its labels, annotations and status are read; the pod template is not.
        let (jobs, b) = watched(
            Api::<Job>::all(client.clone()),
            managed,
            |job| job.spec = None,
            Some(job_changes.clone()),
        );
        let (training_jobs, c) = watched(
            Api::<TrainingJob>::all(client.clone()),
            all.clone(),
            whole,
            None,
        );
        let (services, d) = watched(
            Api::<InferenceService>::all(client.clone()),
            all,
            whole,
            None,
        );
        let drive = async move {
            futures::join!(a, b, c, d);
        };
        (
            Caches {
                tiers,
                jobs,
                training_jobs,
                services,
                job_changes,
            },
            drive,
        )
    }

    /// Worker Jobs as the view takes them in (created, changed or deleted), for a
    /// controller's `owns_stream`: a reconcile it triggers reads the view and finds the change
    /// there, which a trigger from a watch of its own would not guarantee. Subscribe before
    /// waiting for [`Caches::ready`]. A subscriber that falls behind gets every Job of the
    /// view instead of the changes it missed.
    pub fn job_changes(&self) -> impl Stream<Item = Result<Job, watcher::Error>> + Send + 'static {
        let receiver = self.job_changes.subscribe();
        let jobs = self.jobs.clone();
        futures::stream::unfold(
            (receiver, Vec::new()),
            move |(mut receiver, mut backlog): (_, Vec<Arc<Job>>)| {
                let jobs = jobs.clone();
                async move {
                    loop {
                        if let Some(job) = backlog.pop() {
                            return Some((Ok((*job).clone()), (receiver, backlog)));
                        }
                        match receiver.recv().await {
                            Ok(job) => return Some((Ok((*job).clone()), (receiver, backlog))),
                            Err(broadcast::error::RecvError::Lagged(_)) => backlog = jobs.state(),
                            Err(broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                }
            },
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
