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

use std::collections::HashMap;
use std::future::ready;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aigc_crds::common::{Accelerator, Resources};
use aigc_crds::condition::{find_condition, set_condition};
use aigc_crds::inference_service::{InferenceService, InferenceServiceStatus};
use aigc_crds::model::{Model, ModelPhase};
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
use crate::controllers::{Context, is_conflict, patch_status_checked, publish};
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
    let notify = Arc::new(Notify::new());
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
    tokio::join!(
        reflect(Api::all(client.clone()), nodes_writer, notify.clone()),
        reflect(Api::all(client.clone()), pods_writer, notify.clone()),
        reflect(Api::all(client.clone()), jobs_writer, notify.clone()),
        reflect(Api::all(client.clone()), services_writer, notify.clone()),
        reflect(Api::all(client), models_writer, notify.clone()),
        schedule(&ctx, &scheduler, &stores, &notify),
    );
}

struct Stores {
    nodes: Store<core::Node>,
    pods: Store<core::Pod>,
    jobs: Store<TrainingJob>,
    services: Store<InferenceService>,
    models: Store<Model>,
}

async fn reflect<K>(api: Api<K>, writer: reflector::store::Writer<K>, notify: Arc<Notify>)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|obj| obj.managed_fields_mut().clear())
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
    if ready.0.is_err() || ready.1.is_err() || ready.2.is_err() || ready.3.is_err() {
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
