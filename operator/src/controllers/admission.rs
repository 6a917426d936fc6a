//! The scheduling loop: feeds the resource scheduler from reflectors on Nodes, Pods,
//! TrainingJobs, InferenceServices and Models, and writes its decisions where the
//! controllers read them.
//!
//! - A queued TrainingJob (`phase: Queued`) and the replicas an InferenceService still lacks
//!   are the pending workloads.
//! - An admission is recorded in the workload's status: `placement` (one node per replica and
//!   the accelerator) and the `Admitted` condition; a TrainingJob also starts a new attempt.
//!   The TrainingJob and InferenceService controllers create pods only for admitted
//!   placements, so the status is the single record of what the scheduler granted.
//! - A preemption sends the victim back to its queue (status first) and then deletes its pods
//!   with a grace period, in which the worker writes a checkpoint.
//! - A waiting workload gets `Admitted=False` with the scheduler's reason and message.
//!
//! Replicas admitted but not yet bound to their node (pods not created yet, or a Deployment's
//! pods not scheduled yet) are reserved in the snapshot, so capacity is never granted twice.
//! Every status write carries the resourceVersion the decision was made from; a conflict
//! skips that decision until the next pass.

use std::collections::{BTreeMap, HashMap};
use std::future::ready;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aigc_crds::common::{Accelerator, Resources};
use aigc_crds::condition::{find_condition, set_condition};
use aigc_crds::inference_service::{InferenceService, InferenceServiceStatus};
use aigc_crds::model::{Model, ModelPhase, ModelStatus};
use aigc_crds::training_job::{TrainingJob, TrainingJobPhase, TrainingJobStatus};
use aigc_crds::{Condition, ConditionStatus};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1 as core;
use kube::api::DeleteParams;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::Notify;

use crate::Error;
use crate::controllers::{
    Context, is_conflict, lean_watcher, patch_status_checked, publish, whole,
};
use crate::scheduler::TaintEffect;
use crate::scheduler::{
    Admission, Amounts, ClusterSnapshot, Device, GPU_RESOURCE, Node, PodOwner, Preemption,
    ReplicaRequest, RunningPod, Scheduler, SchedulerConfig, Toleration, TolerationOperator,
    WaitReason, Waiting, Workload, WorkloadKey, WorkloadKind,
};

/// Label on every worker pod naming the TrainingJob it belongs to.
pub const TRAINING_JOB_LABEL: &str = "aigc.dev/training-job";
/// Label on every inference pod naming its InferenceService.
pub const INFERENCE_SERVICE_LABEL: &str = super::inference_service::SERVICE_LABEL;
/// Label on worker pods naming the queue the workload was admitted through.
pub const QUEUE_LABEL: &str = "aigc.dev/queue";
/// Label on worker pods carrying the workload's priority.
pub const PRIORITY_LABEL: &str = "aigc.dev/priority";
/// Label on every child the operator manages.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Condition type of scheduling decisions.
pub const ADMITTED: &str = "Admitted";
/// Condition reason of a workload sent back to its queue by a preemption.
pub const PREEMPTED: &str = "Preempted";
/// Seconds a preempted worker gets to write its checkpoint before it is killed.
pub const PREEMPTION_GRACE_SECONDS: i64 = 30;

/// How long the loop sleeps when nothing changes, so time-based decisions are never missed.
const IDLE_PASS: Duration = Duration::from_secs(10);
/// How long the loop lets a burst of changes settle before planning again.
const SETTLE: Duration = Duration::from_millis(100);
/// How long the loop waits for its own writes to come back through the reflectors.
const REFLECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The scheduler's key of a TrainingJob. Kinds get distinct keys, since a TrainingJob and an
/// InferenceService may share a name.
pub fn training_key(namespace: &str, name: &str) -> WorkloadKey {
    WorkloadKey::new(namespace, format!("trainingjob/{name}"))
}

/// The scheduler's key of an InferenceService.
pub fn inference_key(namespace: &str, name: &str) -> WorkloadKey {
    WorkloadKey::new(namespace, format!("inferenceservice/{name}"))
}

/// Kind and object name of a workload key.
fn key_target(key: &WorkloadKey) -> Option<(WorkloadKind, &str)> {
    if let Some(name) = key.name.strip_prefix("trainingjob/") {
        Some((WorkloadKind::Training, name))
    } else {
        key.name
            .strip_prefix("inferenceservice/")
            .map(|name| (WorkloadKind::Inference, name))
    }
}

/// The toleration worker pods on GPUs carry (see `worker_pod::worker_pod_spec`).
fn gpu_toleration() -> Toleration {
    Toleration {
        key: Some(GPU_RESOURCE.to_owned()),
        operator: TolerationOperator::Exists,
        value: None,
        effect: Some(TaintEffect::NoSchedule),
    }
}

/// What each replica of a workload with `resources` asks the scheduler for.
pub fn replica_request(resources: &Resources) -> Result<ReplicaRequest, Error> {
    let mut request = ReplicaRequest::from_resources(resources)?;
    request.gpu_tolerations.push(gpu_toleration());
    Ok(request)
}

/// What one replica holds on its node once placed on `device`.
pub fn replica_amounts(resources: &Resources, device: Device) -> Result<Amounts, Error> {
    let request = ReplicaRequest::from_resources(resources)?;
    Ok(Amounts {
        cpu: request.cpu,
        memory: request.memory,
        gpu: match device {
            Device::Gpu => request.gpus,
            Device::Cpu => Default::default(),
        },
    })
}

fn device_of(accelerator: Option<Accelerator>) -> Option<Device> {
    match accelerator? {
        Accelerator::Gpu => Some(Device::Gpu),
        Accelerator::Cpu => Some(Device::Cpu),
        Accelerator::Auto => None,
    }
}

fn parse_time(text: &str) -> Option<SystemTime> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| SystemTime::from(t.with_timezone(&Utc)))
}

/// When a workload entered its queue: the last transition of `Admitted` to False (a fresh or
/// preempted workload), else its creation.
pub fn queued_since(conditions: &[Condition], created: Option<SystemTime>) -> SystemTime {
    find_condition(conditions, ADMITTED)
        .filter(|c| c.status == ConditionStatus::False)
        .and_then(|c| parse_time(&c.last_transition_time))
        .or(created)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn created_at<K: Resource>(obj: &K) -> Option<SystemTime> {
    obj.meta()
        .creation_timestamp
        .as_ref()
        .map(|t| SystemTime::from(t.0))
}

/// The nodes and accelerator a TrainingJob holds: admitted or running with a placement.
pub fn training_placement(job: &TrainingJob) -> Option<(&[String], Device)> {
    let status = job.status.as_ref()?;
    if !matches!(
        status.phase,
        Some(TrainingJobPhase::Admitted | TrainingJobPhase::Running)
    ) {
        return None;
    }
    let placement = status.placement.as_ref()?;
    let device = device_of(placement.accelerator)?;
    (!placement.nodes.is_empty()).then_some((placement.nodes.as_slice(), device))
}

/// The nodes and accelerator an InferenceService's admitted replicas hold.
pub fn inference_placement(service: &InferenceService) -> Option<(&[String], Device)> {
    let placement = service.status.as_ref()?.placement.as_ref()?;
    let device = device_of(placement.accelerator)?;
    (!placement.nodes.is_empty()).then_some((placement.nodes.as_slice(), device))
}

/// Everything the loop reads, as the reflectors hold it.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    /// All Nodes.
    pub nodes: &'a [Arc<core::Node>],
    /// All Pods.
    pub pods: &'a [Arc<core::Pod>],
    /// All TrainingJobs.
    pub jobs: &'a [Arc<TrainingJob>],
    /// All InferenceServices.
    pub services: &'a [Arc<InferenceService>],
    /// All Models, to admit inference only once it has something to serve.
    pub models: &'a [Arc<Model>],
}

/// The scheduler's input built from what the loop observed.
#[derive(Clone, Debug)]
pub struct SchedulingInput {
    /// Nodes, pods and reservations.
    pub cluster: ClusterSnapshot,
    /// Workloads waiting for admission.
    pub pending: Vec<Workload>,
    /// Workloads that cannot be scheduled as written, with the reason.
    pub invalid: Vec<(WorkloadKey, String)>,
    /// Nodes and pods left out of the snapshot, with the reason (logged).
    pub skipped: Vec<String>,
}

fn label<'a>(pod: &'a core::Pod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

/// The workload a pod the operator created belongs to, from its labels.
pub fn pod_owner(pod: &core::Pod, config: &SchedulerConfig) -> Option<PodOwner> {
    if label(pod, MANAGED_BY_LABEL) != Some(crate::controllers::FIELD_MANAGER) {
        return None;
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let (workload, kind) = if let Some(job) = label(pod, TRAINING_JOB_LABEL) {
        (training_key(namespace, job), WorkloadKind::Training)
    } else {
        let service = label(pod, INFERENCE_SERVICE_LABEL)?;
        (inference_key(namespace, service), WorkloadKind::Inference)
    };
    let queue = label(pod, QUEUE_LABEL)
        .map(str::to_owned)
        .unwrap_or_else(|| config.queue_for_namespace(namespace));
    let priority = label(pod, PRIORITY_LABEL)
        .and_then(|p| p.parse().ok())
        .unwrap_or(match kind {
            WorkloadKind::Training => 0,
            WorkloadKind::Inference => config.inference_priority,
        });
    Some(PodOwner {
        workload,
        kind,
        queue,
        priority,
    })
}

/// Placed replicas without a bound pod, as pods holding their node's capacity.
fn reservations(
    owner: &PodOwner,
    nodes: &[String],
    per_replica: Amounts,
    bound: &[RunningPod],
) -> Vec<RunningPod> {
    let mut on_node: HashMap<&str, usize> = HashMap::new();
    for pod in bound.iter().filter(|p| {
        p.owner
            .as_ref()
            .is_some_and(|o| o.workload == owner.workload)
    }) {
        *on_node.entry(pod.node.as_str()).or_default() += 1;
    }
    nodes
        .iter()
        .enumerate()
        .filter_map(|(replica, node)| {
            let count = on_node.entry(node.as_str()).or_default();
            if *count > 0 {
                *count -= 1;
                return None;
            }
            Some(RunningPod {
                namespace: owner.workload.namespace.clone(),
                name: format!("{}/reserved-{replica}", owner.workload.name),
                node: node.clone(),
                requests: per_replica,
                owner: Some(owner.clone()),
            })
        })
        .collect()
}

fn model_ready(models: &[Arc<Model>], namespace: &str, name: &str) -> bool {
    models.iter().any(|m| {
        m.namespace().as_deref() == Some(namespace)
            && m.name_any() == name
            && m.status.as_ref().and_then(|s| s.phase) == Some(ModelPhase::Ready)
    })
}

/// The cluster snapshot and pending workloads the scheduler plans with at `now`.
pub fn scheduling_input(
    observed: Observed<'_>,
    config: &SchedulerConfig,
    now: SystemTime,
) -> SchedulingInput {
    let mut skipped = Vec::new();
    let mut invalid = Vec::new();
    let nodes = observed
        .nodes
        .iter()
        .filter_map(|node| {
            Node::from_k8s(node)
                .map_err(|error| skipped.push(error.to_string()))
                .ok()
        })
        .collect();
    let mut pods: Vec<RunningPod> = observed
        .pods
        .iter()
        .filter_map(|pod| {
            RunningPod::from_k8s(pod, pod_owner(pod, config))
                .map_err(|error| skipped.push(error.to_string()))
                .ok()
                .flatten()
        })
        .collect();
    let mut pending = Vec::new();
    let mut reserved = Vec::new();
    for job in observed.jobs {
        if job.meta().deletion_timestamp.is_some() {
            continue;
        }
        let namespace = job.namespace().unwrap_or_default();
        let key = training_key(&namespace, &job.name_any());
        let request = match replica_request(&job.spec.resources) {
            Ok(request) => request,
            Err(error) => {
                invalid.push((key, error.to_string()));
                continue;
            }
        };
        let status = job.status.clone().unwrap_or_default();
        if let Some((nodes, device)) = training_placement(job) {
            let owner = PodOwner {
                workload: key,
                kind: WorkloadKind::Training,
                queue: job.spec.queue.clone(),
                priority: job.spec.priority,
            };
            if let Ok(amounts) = replica_amounts(&job.spec.resources, device) {
                reserved.extend(reservations(&owner, nodes, amounts, &pods));
            }
        } else if status.phase == Some(TrainingJobPhase::Queued) {
            pending.push(Workload {
                key,
                kind: WorkloadKind::Training,
                queue: job.spec.queue.clone(),
                priority: job.spec.priority,
                queued_at: queued_since(&status.conditions, created_at(job.as_ref())),
                replicas: job.spec.replicas,
                replica: request,
                dataset: Some(format!("{namespace}/{}", job.spec.dataset_ref.name)),
            });
        }
    }
    for service in observed.services {
        if service.meta().deletion_timestamp.is_some() {
            continue;
        }
        let namespace = service.namespace().unwrap_or_default();
        let key = inference_key(&namespace, &service.name_any());
        let mut request = match replica_request(&service.spec.resources) {
            Ok(request) => request,
            Err(error) => {
                invalid.push((key, error.to_string()));
                continue;
            }
        };
        let queue = config.queue_for_namespace(&namespace);
        let placed = inference_placement(service);
        if let Some((nodes, device)) = placed {
            let owner = PodOwner {
                workload: key.clone(),
                kind: WorkloadKind::Inference,
                queue: queue.clone(),
                priority: config.inference_priority,
            };
            let kept = nodes.len().min(service.spec.replicas as usize);
            if let Ok(amounts) = replica_amounts(&service.spec.resources, device) {
                reserved.extend(reservations(&owner, &nodes[..kept], amounts, &pods));
            }
            // More replicas must run where the first ones do: one Deployment, one image.
            request.accelerator = device.into();
        }
        let placed_count = placed.map_or(0, |(nodes, _)| nodes.len()) as u32;
        let models_ready = model_ready(observed.models, &namespace, &service.spec.model_ref.name)
            && service
                .spec
                .canary
                .as_ref()
                .is_none_or(|c| model_ready(observed.models, &namespace, &c.model_ref.name));
        if service.spec.replicas > placed_count && models_ready {
            let status = service.status.clone().unwrap_or_default();
            pending.push(Workload {
                key,
                kind: WorkloadKind::Inference,
                queue,
                priority: config.inference_priority,
                queued_at: queued_since(&status.conditions, created_at(service.as_ref())),
                replicas: service.spec.replicas - placed_count,
                replica: request,
                dataset: None,
            });
        }
    }
    pods.extend(reserved);
    SchedulingInput {
        cluster: ClusterSnapshot { nodes, pods, now },
        pending,
        invalid,
        skipped,
    }
}

/// Workloads per queue as `/metrics` shows them: `(pending, admitted)` for every configured
/// queue (zeros when idle) and for any other queue a workload names. Pending: waiting for
/// admission; admitted: holding a placement (a TrainingJob admitted or running, an
/// InferenceService with placed replicas; one that also waits for more replicas counts in
/// both).
pub fn queue_depths(
    observed: Observed<'_>,
    input: &SchedulingInput,
    config: &SchedulerConfig,
) -> BTreeMap<String, (u64, u64)> {
    let mut depths: BTreeMap<String, (u64, u64)> = config
        .effective_queues()
        .into_iter()
        .map(|queue| (queue.name, (0, 0)))
        .collect();
    for workload in &input.pending {
        depths.entry(workload.queue.clone()).or_default().0 += 1;
    }
    let live = |meta: &kube::api::ObjectMeta| meta.deletion_timestamp.is_none();
    for job in observed.jobs {
        if live(job.meta()) && training_placement(job).is_some() {
            depths.entry(job.spec.queue.clone()).or_default().1 += 1;
        }
    }
    for service in observed.services {
        if live(service.meta()) && inference_placement(service).is_some() {
            let queue = config.queue_for_namespace(&service.namespace().unwrap_or_default());
            depths.entry(queue).or_default().1 += 1;
        }
    }
    depths
}

fn rfc3339(time: SystemTime) -> String {
    DateTime::<Utc>::from(time).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// When an `auto` workload waiting for a GPU falls back to CPU.
fn fallback_at(queued_at: SystemTime, config: &SchedulerConfig) -> SystemTime {
    let after = config.auto_fallback_after.to_std().unwrap_or_default();
    queued_at + after
}

/// The waiting message as a condition keeps it: a countdown ("falls back to CPU in 4m59s")
/// would change on every pass, so it becomes the time of the fallback.
pub fn condition_message(waiting: &Waiting, fallback: Option<SystemTime>) -> String {
    const COUNTDOWN: &str = "; falls back to CPU in ";
    match (waiting.reason, fallback) {
        (WaitReason::WaitingForGpu, Some(at)) => match waiting.message.rfind(COUNTDOWN) {
            Some(position) => format!(
                "{}; falls back to CPU at {}",
                &waiting.message[..position],
                rfc3339(at)
            ),
            None => waiting.message.clone(),
        },
        _ => waiting.message.clone(),
    }
}

/// A TrainingJob's status once admitted: a new attempt on the placed nodes.
pub fn admitted_job_status(
    job: &TrainingJob,
    admission: &Admission,
    now: DateTime<Utc>,
) -> TrainingJobStatus {
    let mut status = job.status.clone().unwrap_or_default();
    status.phase = Some(TrainingJobPhase::Admitted);
    status.placement = Some(admission.placement());
    status.attempts = Some(status.attempts.unwrap_or(0) + 1);
    status
        .start_time
        .get_or_insert_with(|| now.to_rfc3339_opts(SecondsFormat::Secs, true));
    status.observed_generation = job.metadata.generation;
    set_condition(
        &mut status.conditions,
        Condition::new(
            ADMITTED,
            ConditionStatus::True,
            admission.reason.as_str(),
            admission.message.clone(),
            job.metadata.generation,
            now,
        ),
    );
    status
}

/// A TrainingJob's status once preempted: back in its queue, without a placement.
pub fn preempted_job_status(
    job: &TrainingJob,
    preemption: &Preemption,
    now: DateTime<Utc>,
) -> TrainingJobStatus {
    let mut status = job.status.clone().unwrap_or_default();
    status.phase = Some(TrainingJobPhase::Queued);
    status.placement = None;
    set_condition(
        &mut status.conditions,
        Condition::new(
            ADMITTED,
            ConditionStatus::False,
            PREEMPTED,
            preemption.message.clone(),
            job.metadata.generation,
            now,
        ),
    );
    status
}

/// The `Admitted=False` condition of a waiting workload; `None` when it is already there.
pub fn waiting_condition(
    conditions: &[Condition],
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Option<Vec<Condition>> {
    let mut conditions = conditions.to_vec();
    let changed = set_condition(
        &mut conditions,
        Condition::new(
            ADMITTED,
            ConditionStatus::False,
            reason,
            message,
            generation,
            now,
        ),
    );
    changed.then_some(conditions)
}

/// An InferenceService's status once more replicas are admitted.
pub fn admitted_service_status(
    service: &InferenceService,
    admission: &Admission,
    now: DateTime<Utc>,
) -> InferenceServiceStatus {
    let mut status = service.status.clone().unwrap_or_default();
    let mut placement = status.placement.take().unwrap_or_default();
    placement.nodes.extend(admission.nodes.iter().cloned());
    placement.accelerator = Some(admission.device.into());
    status.placement = Some(placement);
    set_condition(
        &mut status.conditions,
        Condition::new(
            ADMITTED,
            ConditionStatus::True,
            admission.reason.as_str(),
            admission.message.clone(),
            service.metadata.generation,
            now,
        ),
    );
    status
}

/// An InferenceService scaled down keeps the placement of its remaining replicas only;
/// `None` when nothing is to be released.
pub fn trimmed_service_status(service: &InferenceService) -> Option<InferenceServiceStatus> {
    let mut status = service.status.clone()?;
    let placement = status.placement.as_mut()?;
    let wanted = service.spec.replicas as usize;
    if placement.nodes.len() <= wanted {
        return None;
    }
    placement.nodes.truncate(wanted);
    if placement.nodes.is_empty() {
        status.placement = None;
    }
    Some(status)
}

/// Run the scheduling loop until the process stops.
pub async fn run(ctx: Arc<Context>) {
    let scheduler = match Scheduler::new(&ctx.config.scheduler) {
        Ok(scheduler) => scheduler,
        Err(error) => {
            tracing::error!(%error, "the scheduler configuration is invalid; nothing will be admitted");
            return;
        }
    };
    let notify = Notify::new();
    let client = ctx.client.clone();
    let (nodes, nodes_writer) = reflector::store::<core::Node>();
    let (pods, pods_writer) = reflector::store::<core::Pod>();
    let (jobs, jobs_writer) = reflector::store::<TrainingJob>();
    let (services, services_writer) = reflector::store::<InferenceService>();
    let (models, models_writer) = reflector::store::<Model>();
    let stores = Stores {
        nodes,
        pods,
        jobs,
        services,
        models,
    };
    let all = watcher::Config::default;
    // Finished pods hold no capacity: kube-scheduler watches pods with the same selector.
    let unfinished = all().fields("status.phase!=Succeeded,status.phase!=Failed");
    let everything = async {
        tokio::join!(
            reflect(
                Api::all(client.clone()),
                all(),
                nodes_writer,
                &notify,
                whole
            ),
            reflect(
                Api::all(client.clone()),
                unfinished,
                pods_writer,
                &notify,
                slim_pod
            ),
            reflect(Api::all(client.clone()), all(), jobs_writer, &notify, whole),
            reflect(
                Api::all(client.clone()),
                all(),
                services_writer,
                &notify,
                whole
            ),
            reflect(Api::all(client), all(), models_writer, &notify, slim_model),
            schedule(&ctx, &scheduler, &stores, &notify),
        )
    };
    // Stop with the other controllers: leadership lost or the process shutting down.
    tokio::select! {
        _ = everything => {}
        () = ctx.stopped() => {}
    }
}

struct Stores {
    nodes: Store<core::Node>,
    pods: Store<core::Pod>,
    jobs: Store<TrainingJob>,
    services: Store<InferenceService>,
    models: Store<Model>,
}

/// Of a pod the loop reads its labels, node, phase, deletion and the containers' requests
/// (see [`RunningPod::from_k8s`]); the rest (env, volumes, probes, statuses) is dropped.
fn slim_pod(pod: &mut core::Pod) {
    fn requests_only(container: core::Container) -> core::Container {
        core::Container {
            name: container.name,
            resources: container.resources,
            ..core::Container::default()
        }
    }
    pod.metadata.annotations = None;
    if let Some(spec) = pod.spec.take() {
        pod.spec = Some(core::PodSpec {
            node_name: spec.node_name,
            overhead: spec.overhead,
            containers: spec.containers.into_iter().map(requests_only).collect(),
            init_containers: spec
                .init_containers
                .map(|c| c.into_iter().map(requests_only).collect()),
            ..core::PodSpec::default()
        });
    }
    if let Some(status) = pod.status.take() {
        pod.status = Some(core::PodStatus {
            phase: status.phase,
            ..core::PodStatus::default()
        });
    }
}

/// Of a Model the loop reads only whether it is Ready.
fn slim_model(model: &mut Model) {
    model.metadata.annotations = None;
    model.metadata.labels = None;
    if let Some(status) = model.status.take() {
        model.status = Some(ModelStatus {
            phase: status.phase,
            ..ModelStatus::default()
        });
    }
}

async fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    notify: &Notify,
    slim: fn(&mut K),
) where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    lean_watcher(api, config, slim)
        .reflect(writer)
        .for_each(|event| {
            if let Err(error) = event {
                tracing::warn!(%error, "scheduler watch failed; retrying");
            }
            notify.notify_one();
            ready(())
        })
        .await;
}

/// A write of the loop the reflectors must show before the next plan.
enum Expect {
    Job(WorkloadKey, String),
    Service(WorkloadKey, String),
    PodGone(String, String),
}

impl Stores {
    fn shows(&self, expect: &Expect) -> bool {
        let version = |meta: &kube::api::ObjectMeta, version: &str| {
            meta.resource_version.as_deref() == Some(version)
        };
        match expect {
            Expect::Job(key, rv) => {
                let name = key_target(key).map_or("", |(_, name)| name);
                let found = self
                    .jobs
                    .get(&reflector::ObjectRef::new(name).within(&key.namespace));
                found.is_none_or(|job| version(job.meta(), rv))
            }
            Expect::Service(key, rv) => {
                let name = key_target(key).map_or("", |(_, name)| name);
                let found = self
                    .services
                    .get(&reflector::ObjectRef::new(name).within(&key.namespace));
                found.is_none_or(|service| version(service.meta(), rv))
            }
            Expect::PodGone(namespace, name) => self
                .pods
                .get(&reflector::ObjectRef::new(name).within(namespace))
                .is_none_or(|pod| pod.meta().deletion_timestamp.is_some()),
        }
    }
}

async fn schedule(ctx: &Context, scheduler: &Scheduler, stores: &Stores, notify: &Notify) {
    let ready = futures::future::join5(
        stores.nodes.wait_until_ready(),
        stores.pods.wait_until_ready(),
        stores.jobs.wait_until_ready(),
        stores.services.wait_until_ready(),
        stores.models.wait_until_ready(),
    )
    .await;
    if ready.0.is_err()
        || ready.1.is_err()
        || ready.2.is_err()
        || ready.3.is_err()
        || ready.4.is_err()
    {
        return;
    }
    loop {
        let (expected, next) = pass(ctx, scheduler, stores).await;
        if !expected.is_empty() {
            // Plan again only on a view that includes this pass's decisions.
            let deadline = tokio::time::Instant::now() + REFLECT_TIMEOUT;
            while !expected.iter().all(|e| stores.shows(e)) {
                if tokio::time::timeout_at(deadline, notify.notified())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            continue;
        }
        let wait = next
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .map_or(IDLE_PASS, |d| d.min(IDLE_PASS));
        let _ = tokio::time::timeout(wait, notify.notified()).await;
        tokio::time::sleep(SETTLE).await;
    }
}

/// One scheduling pass: plan and carry the plan out. Returns the writes to wait for and when
/// a time-based decision (an `auto` fallback) is due.
async fn pass(
    ctx: &Context,
    scheduler: &Scheduler,
    stores: &Stores,
) -> (Vec<Expect>, Option<SystemTime>) {
    let (nodes, pods, jobs, services, models) = (
        stores.nodes.state(),
        stores.pods.state(),
        stores.jobs.state(),
        stores.services.state(),
        stores.models.state(),
    );
    let observed = Observed {
        nodes: &nodes,
        pods: &pods,
        jobs: &jobs,
        services: &services,
        models: &models,
    };
    let config = &ctx.config.scheduler;
    let now = SystemTime::now();
    let input = scheduling_input(observed, config, now);
    ctx.metrics
        .set_queues(queue_depths(observed, &input, config));
    for problem in &input.skipped {
        tracing::warn!(problem, "left out of the scheduler's snapshot");
    }
    let plan = scheduler.plan(&input.cluster, &input.pending);
    let job_of: HashMap<WorkloadKey, &Arc<TrainingJob>> = jobs
        .iter()
        .map(|j| {
            (
                training_key(&j.namespace().unwrap_or_default(), &j.name_any()),
                j,
            )
        })
        .collect();
    let service_of: HashMap<WorkloadKey, &Arc<InferenceService>> = services
        .iter()
        .map(|s| {
            (
                inference_key(&s.namespace().unwrap_or_default(), &s.name_any()),
                s,
            )
        })
        .collect();
    let mut actor = Actor {
        ctx,
        expected: Vec::new(),
    };
    let utc_now = DateTime::<Utc>::from(now);

    let mut blocked: Vec<&WorkloadKey> = Vec::new();
    for preemption in &plan.preemptions {
        let done = match job_of.get(&preemption.victim) {
            Some(job) => actor.preempt(job, preemption, &pods, utc_now).await,
            None => false,
        };
        if !done {
            blocked.push(&preemption.preemptor);
        }
    }
    for admission in &plan.admissions {
        if blocked.contains(&&admission.workload) {
            continue;
        }
        if let Some(job) = job_of.get(&admission.workload) {
            actor.admit_job(job, admission, utc_now).await;
        } else if let Some(service) = service_of.get(&admission.workload) {
            actor.admit_service(service, admission, utc_now).await;
        }
    }
    let queued_at: HashMap<&WorkloadKey, SystemTime> = input
        .pending
        .iter()
        .map(|w| (&w.key, w.queued_at))
        .collect();
    let mut next: Option<SystemTime> = None;
    for waiting in &plan.waiting {
        let fallback = (waiting.reason == WaitReason::WaitingForGpu)
            .then(|| queued_at.get(&waiting.workload))
            .flatten()
            .map(|at| fallback_at(*at, config));
        if let Some(at) = fallback {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        let message = condition_message(waiting, fallback);
        let reason = waiting.reason.as_str();
        if let Some(job) = job_of.get(&waiting.workload) {
            actor.wait_job(job, reason, message, utc_now).await;
        } else if let Some(service) = service_of.get(&waiting.workload) {
            actor.wait_service(service, reason, message, utc_now).await;
        }
    }
    for (key, message) in &input.invalid {
        if let Some(job) = job_of.get(key) {
            actor
                .wait_job(job, "InvalidResources", message.clone(), utc_now)
                .await;
        } else if let Some(service) = service_of.get(key) {
            actor
                .wait_service(service, "InvalidResources", message.clone(), utc_now)
                .await;
        }
    }
    for service in &services {
        if let Some(status) = trimmed_service_status(service) {
            actor.write_service(service, &status).await;
        }
    }
    (actor.expected, next)
}

/// Carries out decisions, remembering the writes the reflectors must show next.
struct Actor<'a> {
    ctx: &'a Context,
    expected: Vec<Expect>,
}

impl Actor<'_> {
    async fn write_job(&mut self, job: &TrainingJob, status: &TrainingJobStatus) -> bool {
        let namespace = job.namespace().unwrap_or_default();
        let api: Api<TrainingJob> = Api::namespaced(self.ctx.client.clone(), &namespace);
        match patch_status_checked(&api, job, status).await {
            Ok(written) => {
                if let Some(rv) = written.resource_version() {
                    self.expected
                        .push(Expect::Job(training_key(&namespace, &job.name_any()), rv));
                }
                true
            }
            Err(error) => {
                log_write_error(&error);
                false
            }
        }
    }

    async fn write_service(
        &mut self,
        service: &InferenceService,
        status: &InferenceServiceStatus,
    ) -> bool {
        let namespace = service.namespace().unwrap_or_default();
        let api: Api<InferenceService> = Api::namespaced(self.ctx.client.clone(), &namespace);
        match patch_status_checked(&api, service, status).await {
            Ok(written) => {
                if let Some(rv) = written.resource_version() {
                    self.expected.push(Expect::Service(
                        inference_key(&namespace, &service.name_any()),
                        rv,
                    ));
                }
                true
            }
            Err(error) => {
                log_write_error(&error);
                false
            }
        }
    }

    async fn preempt(
        &mut self,
        job: &TrainingJob,
        preemption: &Preemption,
        pods: &[Arc<core::Pod>],
        now: DateTime<Utc>,
    ) -> bool {
        if !self
            .write_job(job, &preempted_job_status(job, preemption, now))
            .await
        {
            return false;
        }
        let namespace = job.namespace().unwrap_or_default();
        let api: Api<core::Pod> = Api::namespaced(self.ctx.client.clone(), &namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(PREEMPTION_GRACE_SECONDS as u32),
            ..DeleteParams::default()
        };
        let name = job.name_any();
        for pod in pods.iter().filter(|p| {
            p.metadata.namespace.as_deref() == Some(namespace.as_str())
                && label(p, TRAINING_JOB_LABEL) == Some(name.as_str())
                && p.metadata.deletion_timestamp.is_none()
        }) {
            let pod_name = pod.name_any();
            match api.delete(&pod_name, &params).await {
                Ok(_) => self
                    .expected
                    .push(Expect::PodGone(namespace.clone(), pod_name)),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => {
                    tracing::warn!(%error, pod = pod_name, "could not delete a preempted pod")
                }
            }
        }
        publish(
            &self.ctx.recorder,
            job,
            EventType::Warning,
            PREEMPTED,
            preemption.message.clone(),
        )
        .await;
        true
    }

    async fn admit_job(&mut self, job: &TrainingJob, admission: &Admission, now: DateTime<Utc>) {
        let status = admitted_job_status(job, admission, now);
        if self.write_job(job, &status).await {
            let note = format!(
                "{} on {} ({})",
                admission.message,
                admission.nodes.join(", "),
                accelerator_name(admission.device)
            );
            publish(
                &self.ctx.recorder,
                job,
                EventType::Normal,
                admission.reason.as_str(),
                note,
            )
            .await;
        }
    }

    async fn admit_service(
        &mut self,
        service: &InferenceService,
        admission: &Admission,
        now: DateTime<Utc>,
    ) {
        let status = admitted_service_status(service, admission, now);
        if self.write_service(service, &status).await {
            let note = format!(
                "{} on {} ({})",
                admission.message,
                admission.nodes.join(", "),
                accelerator_name(admission.device)
            );
            publish(
                &self.ctx.recorder,
                service,
                EventType::Normal,
                admission.reason.as_str(),
                note,
            )
            .await;
        }
    }

    async fn wait_job(
        &mut self,
        job: &TrainingJob,
        reason: &str,
        message: String,
        now: DateTime<Utc>,
    ) {
        let mut status = job.status.clone().unwrap_or_default();
        let before = find_condition(&status.conditions, ADMITTED).map(|c| c.reason.clone());
        let Some(conditions) = waiting_condition(
            &status.conditions,
            reason,
            message.clone(),
            job.metadata.generation,
            now,
        ) else {
            return;
        };
        status.conditions = conditions;
        if self.write_job(job, &status).await && before.as_deref() != Some(reason) {
            publish(&self.ctx.recorder, job, EventType::Normal, reason, message).await;
        }
    }

    async fn wait_service(
        &mut self,
        service: &InferenceService,
        reason: &str,
        message: String,
        now: DateTime<Utc>,
    ) {
        let mut status = service.status.clone().unwrap_or_default();
        let before = find_condition(&status.conditions, ADMITTED).map(|c| c.reason.clone());
        let Some(conditions) = waiting_condition(
            &status.conditions,
            reason,
            message.clone(),
            service.metadata.generation,
            now,
        ) else {
            return;
        };
        status.conditions = conditions;
        if self.write_service(service, &status).await && before.as_deref() != Some(reason) {
            publish(
                &self.ctx.recorder,
                service,
                EventType::Normal,
                reason,
                message,
            )
            .await;
        }
    }
}

fn accelerator_name(device: Device) -> &'static str {
    match device {
        Device::Gpu => "gpu",
        Device::Cpu => "cpu",
    }
}

fn log_write_error(error: &Error) {
    if is_conflict(error) {
        tracing::debug!(%error, "scheduling decision raced another write; replanning");
    } else {
        tracing::warn!(%error, "could not record a scheduling decision");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use aigc_crds::inference_service::InferenceServiceSpec;
    use aigc_crds::model::{ModelSpec, ModelStatus};
    use aigc_crds::training_job::{TrainingJobSpec, WorkloadPlacement};
    use chrono::TimeZone;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::scheduler::{Bytes, Gpus, Millicores};

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap()
    }

    fn node(name: &str, gpus: u32) -> Arc<core::Node> {
        let mut allocatable = BTreeMap::from([
            ("cpu".to_owned(), Quantity("8".into())),
            ("memory".to_owned(), Quantity("32Gi".into())),
        ]);
        let mut taints = None;
        if gpus > 0 {
            allocatable.insert(GPU_RESOURCE.to_owned(), Quantity(gpus.to_string()));
            taints = Some(vec![core::Taint {
                key: GPU_RESOURCE.into(),
                value: Some("present".into()),
                effect: "NoSchedule".into(),
                time_added: None,
            }]);
        }
        Arc::new(core::Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(core::NodeSpec {
                taints,
                ..core::NodeSpec::default()
            }),
            status: Some(core::NodeStatus {
                allocatable: Some(allocatable),
                ..core::NodeStatus::default()
            }),
        })
    }

    fn job(
        name: &str,
        phase: TrainingJobPhase,
        placement: Option<(&str, Accelerator)>,
    ) -> Arc<TrainingJob> {
        let spec: TrainingJobSpec = serde_json::from_value(serde_json::json!({
            "datasetRef": {"name": "data"},
            "output": {"modelName": "m", "version": "1"},
            "architecture": "mlp",
            "resources": {"accelerator": "gpu", "gpus": 1, "cpu": "1", "memory": "1Gi"},
            "queue": "default", "priority": 5
        }))
        .unwrap();
        let mut job = TrainingJob::new(name, spec);
        job.metadata.namespace = Some("ml".into());
        job.status = Some(TrainingJobStatus {
            phase: Some(phase),
            placement: placement.map(|(node, accelerator)| WorkloadPlacement {
                nodes: vec![node.to_owned()],
                accelerator: Some(accelerator),
            }),
            ..TrainingJobStatus::default()
        });
        Arc::new(job)
    }

    fn service(replicas: u32, placed: &[&str]) -> Arc<InferenceService> {
        let spec: InferenceServiceSpec = serde_json::from_value(serde_json::json!({
            "modelRef": {"name": "chat"}, "replicas": replicas,
            "resources": {"accelerator": "auto", "cpu": "1", "memory": "1Gi"}
        }))
        .unwrap();
        let mut service = InferenceService::new("chat", spec);
        service.metadata.namespace = Some("ml".into());
        if !placed.is_empty() {
            service.status = Some(InferenceServiceStatus {
                placement: Some(WorkloadPlacement {
                    nodes: placed.iter().map(|n| (*n).to_owned()).collect(),
                    accelerator: Some(Accelerator::Gpu),
                }),
                ..InferenceServiceStatus::default()
            });
        }
        Arc::new(service)
    }

    fn model(ready: bool) -> Arc<Model> {
        let spec: ModelSpec = serde_json::from_value(serde_json::json!({
            "source": {"pvc": {"claimName": "models"}}, "format": "gguf",
            "architecture": "llama", "task": "text-generation", "version": "1"}))
        .unwrap();
        let mut model = Model::new("chat", spec);
        model.metadata.namespace = Some("ml".into());
        model.status = Some(ModelStatus {
            phase: Some(if ready {
                ModelPhase::Ready
            } else {
                ModelPhase::Verifying
            }),
            ..ModelStatus::default()
        });
        Arc::new(model)
    }

    fn worker_pod(name: &str, labels: &[(&str, &str)], node: &str, gpus: u32) -> Arc<core::Pod> {
        let requests = BTreeMap::from([(GPU_RESOURCE.to_owned(), Quantity(gpus.to_string()))]);
        Arc::new(core::Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ml".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(core::PodSpec {
                node_name: Some(node.into()),
                containers: vec![core::Container {
                    name: "worker".into(),
                    resources: Some(core::ResourceRequirements {
                        requests: Some(requests),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        })
    }

    fn input(
        jobs: &[Arc<TrainingJob>],
        services: &[Arc<InferenceService>],
        pods: &[Arc<core::Pod>],
        models: &[Arc<Model>],
    ) -> SchedulingInput {
        let nodes = [node("local-cpu", 0), node("local-gpu", 2)];
        let observed = Observed {
            nodes: &nodes,
            pods,
            jobs,
            services,
            models,
        };
        scheduling_input(
            observed,
            &SchedulerConfig::default(),
            SystemTime::from(now()),
        )
    }

    #[test]
    fn queue_depths_count_waiting_and_admitted_workloads_per_queue() {
        let admitted = job(
            "running",
            TrainingJobPhase::Running,
            Some(("local-gpu", Accelerator::Gpu)),
        );
        let queued = job("queued", TrainingJobPhase::Queued, None);
        let done = job(
            "done",
            TrainingJobPhase::Succeeded,
            Some(("local-gpu", Accelerator::Gpu)),
        );
        // One replica placed, a second one waiting.
        let growing = service(2, &["local-gpu"]);
        let jobs = [admitted, queued, done];
        let services = [growing];
        let nodes = [node("local-cpu", 0), node("local-gpu", 2)];
        let models = [model(true)];
        let observed = Observed {
            nodes: &nodes,
            pods: &[],
            jobs: &jobs,
            services: &services,
            models: &models,
        };
        let config = SchedulerConfig::default();
        let input = scheduling_input(observed, &config, SystemTime::from(now()));
        assert_eq!(
            queue_depths(observed, &input, &config),
            BTreeMap::from([("default".to_owned(), (2, 2))])
        );
        let empty = Observed {
            jobs: &[],
            services: &[],
            ..observed
        };
        let idle = scheduling_input(empty, &config, SystemTime::from(now()));
        assert_eq!(
            queue_depths(empty, &idle, &config),
            BTreeMap::from([("default".to_owned(), (0, 0))])
        );
    }

    #[test]
    fn operator_pods_name_their_workload_queue_and_priority() {
        let config = SchedulerConfig::default();
        let training = worker_pod(
            "t-a1-r0",
            &[
                (MANAGED_BY_LABEL, "aigc-operator"),
                (TRAINING_JOB_LABEL, "t"),
                (QUEUE_LABEL, "gpu-team"),
                (PRIORITY_LABEL, "7"),
            ],
            "n",
            1,
        );
        let owner = pod_owner(&training, &config).unwrap();
        assert_eq!(owner.workload, training_key("ml", "t"));
        assert_eq!(
            (owner.kind, owner.queue.as_str(), owner.priority),
            (WorkloadKind::Training, "gpu-team", 7)
        );
        let serving = worker_pod(
            "chat-x",
            &[
                (MANAGED_BY_LABEL, "aigc-operator"),
                (INFERENCE_SERVICE_LABEL, "chat"),
            ],
            "n",
            1,
        );
        let owner = pod_owner(&serving, &config).unwrap();
        assert_eq!(owner.kind, WorkloadKind::Inference);
        assert_eq!(owner.priority, config.inference_priority);
        let foreign = worker_pod("other", &[(TRAINING_JOB_LABEL, "t")], "n", 1);
        assert_eq!(pod_owner(&foreign, &config), None);
    }

    #[test]
    fn admitted_replicas_without_a_bound_pod_hold_their_node() {
        let admitted = job(
            "t",
            TrainingJobPhase::Admitted,
            Some(("local-gpu", Accelerator::Gpu)),
        );
        let reserved = input(std::slice::from_ref(&admitted), &[], &[], &[]);
        assert!(reserved.pending.is_empty());
        let pod = &reserved.cluster.pods[0];
        assert_eq!(pod.node, "local-gpu");
        assert_eq!(
            pod.requests,
            Amounts {
                cpu: Millicores(1000),
                memory: Bytes(1 << 30),
                gpu: Gpus(1)
            }
        );
        let bound = worker_pod(
            "t-a1-r0",
            &[
                (MANAGED_BY_LABEL, "aigc-operator"),
                (TRAINING_JOB_LABEL, "t"),
            ],
            "local-gpu",
            1,
        );
        let running = input(&[admitted], &[], &[bound], &[]);
        assert_eq!(
            running.cluster.pods.len(),
            1,
            "the pod, and no reservation besides"
        );
        assert_eq!(running.cluster.pods[0].name, "t-a1-r0");
    }

    #[test]
    fn queued_jobs_and_unplaced_replicas_of_served_models_are_pending() {
        let queued = job("q", TrainingJobPhase::Queued, None);
        let pending_job = job("p", TrainingJobPhase::Pending, None);
        let scaled_up = service(3, &["local-gpu"]);
        let input_ = input(
            &[queued, pending_job],
            std::slice::from_ref(&scaled_up),
            &[],
            &[model(true)],
        );
        let keys: Vec<&str> = input_.pending.iter().map(|w| w.key.name.as_str()).collect();
        assert_eq!(keys, ["trainingjob/q", "inferenceservice/chat"]);
        let training = &input_.pending[0];
        assert_eq!(training.dataset.as_deref(), Some("ml/data"));
        assert_eq!(training.replica.gpu_tolerations, [gpu_toleration()]);
        assert!(training.replica.tolerations.is_empty());
        let inference = &input_.pending[1];
        assert_eq!(inference.replicas, 2);
        assert_eq!(inference.replica.accelerator, Accelerator::Gpu);

        let unready = input(&[], &[scaled_up], &[], &[model(false)]);
        assert!(
            unready.pending.is_empty(),
            "no admission before the Model is Ready"
        );
    }

    #[test]
    fn the_plan_pins_gpu_training_to_the_gpu_node() {
        let input = input(&[job("q", TrainingJobPhase::Queued, None)], &[], &[], &[]);
        let plan = Scheduler::new(&SchedulerConfig::default())
            .unwrap()
            .plan(&input.cluster, &input.pending);
        assert_eq!(plan.admissions[0].nodes, ["local-gpu"]);
        assert_eq!(plan.admissions[0].device, Device::Gpu);
    }

    #[test]
    fn a_countdown_becomes_the_time_of_the_fallback() {
        let waiting = Waiting {
            workload: training_key("ml", "t"),
            reason: WaitReason::WaitingForGpu,
            message:
                "waiting for a GPU: no node with 1 free nvidia.com/gpu; falls back to CPU in 4m0s"
                    .into(),
        };
        let at = SystemTime::from(now());
        assert_eq!(
            condition_message(&waiting, Some(at)),
            "waiting for a GPU: no node with 1 free nvidia.com/gpu; falls back to CPU at 2026-12-04T12:00:00Z"
        );
        let quota = Waiting {
            reason: WaitReason::QuotaExceeded,
            message: "queue gpu-team: quota 8/8 GPUs in use".into(),
            ..waiting
        };
        assert_eq!(condition_message(&quota, Some(at)), quota.message);
    }

    #[test]
    fn admission_starts_an_attempt_and_preemption_requeues_without_a_placement() {
        let queued = job("t", TrainingJobPhase::Queued, None);
        let admission = Admission {
            workload: training_key("ml", "t"),
            device: Device::Gpu,
            nodes: vec!["local-gpu".into()],
            borrowing: false,
            reason: crate::scheduler::AdmitReason::Admitted,
            message: "admitted to queue default".into(),
        };
        let status = admitted_job_status(&queued, &admission, now());
        assert_eq!(status.phase, Some(TrainingJobPhase::Admitted));
        assert_eq!(status.attempts, Some(1));
        assert_eq!(status.start_time.as_deref(), Some("2026-12-04T12:00:00Z"));
        assert_eq!(status.placement.as_ref().unwrap().nodes, ["local-gpu"]);

        let mut running = (*queued).clone();
        running.status = Some(status);
        let preemption = Preemption {
            victim: training_key("ml", "t"),
            pods: vec![],
            preemptor: inference_key("ml", "chat"),
            resume_from_checkpoint: true,
            message: "preempted by ml/inferenceservice/chat (priority 1000)".into(),
        };
        let later = now() + chrono::Duration::seconds(30);
        let status = preempted_job_status(&running, &preemption, later);
        assert_eq!(status.phase, Some(TrainingJobPhase::Queued));
        assert_eq!(status.placement, None);
        assert_eq!(
            status.attempts,
            Some(1),
            "the next admission starts attempt 2"
        );
        let condition = find_condition(&status.conditions, ADMITTED).unwrap();
        assert_eq!(
            (condition.status, condition.reason.as_str()),
            (ConditionStatus::False, PREEMPTED)
        );
        assert_eq!(
            queued_since(&status.conditions, None),
            SystemTime::from(later),
            "a preempted job queues again from the preemption"
        );
        running.status = Some(status);
        let again = admitted_job_status(&running, &admission, later);
        assert_eq!(again.attempts, Some(2));
        assert_eq!(again.start_time.as_deref(), Some("2026-12-04T12:00:00Z"));
    }

    #[test]
    fn scaling_inference_down_releases_the_last_placements() {
        let mut scaled = (*service(3, &["a", "b", "c"])).clone();
        assert_eq!(trimmed_service_status(&scaled), None);
        scaled.spec.replicas = 1;
        let status = trimmed_service_status(&scaled).unwrap();
        assert_eq!(status.placement.unwrap().nodes, ["a"]);
        scaled.spec.replicas = 0;
        assert_eq!(trimmed_service_status(&scaled).unwrap().placement, None);
    }
}
