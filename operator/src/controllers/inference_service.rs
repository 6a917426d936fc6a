//! InferenceService controller: a Deployment of `aigc-worker serve` per track (main and
//! canary), one Service in front of both, and the status users read (`url`, `readyReplicas`,
//! `modelVersion`, `selector` for the scale subresource).
//!
//! The desired children and the status are computed by pure functions from plain inputs; the
//! reconcile at the bottom only reads the inputs and applies the results.

use std::collections::BTreeMap;
use std::sync::Arc;

use aigc_crds::common::Accelerator;
use aigc_crds::inference_service::{
    InferenceService, InferenceServicePhase, InferenceServiceStatus,
};
use aigc_crds::model::{Model, ModelPhase};
use aigc_crds::storage_tier::StorageTier;
use aigc_crds::{Condition, ConditionStatus, condition::find_condition, condition::set_condition};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodTemplateSpec,
    Probe, SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};

use crate::Error;
use crate::controllers::admission::{ADMITTED, QUEUE_LABEL, inference_placement};
use crate::controllers::{
    Context, apply_child, delete_if_present, get_opt, instrumented, patch_status_checked, publish,
};
use crate::layout::{StoredKind, TierAccess};
use crate::scheduler::pinned_to_any;
use crate::worker_pod::{WorkerImages, worker_pod_spec};

/// Port the worker's HTTP API listens on.
pub const HTTP_PORT: i32 = 8080;
/// Label on every pod of a service.
pub const SERVICE_LABEL: &str = "aigc.dev/inference-service";
/// Label telling main pods from canary pods.
pub const TRACK_LABEL: &str = "aigc.dev/track";

const API_KEYS_DIR: &str = "/etc/aigc/api-keys";
const TLS_DIR: &str = "/etc/aigc/tls";

/// Which Deployment of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Track {
    /// Serves `spec.modelRef`.
    Main,
    /// Serves `spec.canary.modelRef`.
    Canary,
}

impl Track {
    fn label(self) -> &'static str {
        match self {
            Track::Main => "main",
            Track::Canary => "canary",
        }
    }
}

/// A Ready Model and how pods reach it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServedModel {
    /// Name of the Model.
    pub name: String,
    /// `spec.version` of the Model.
    pub version: String,
    /// URI of the artifact on its tier.
    pub uri: String,
    /// Access to the tier holding it.
    pub access: TierAccess,
}

impl ServedModel {
    /// The served form of a Ready Model on the tier reached by `access`.
    pub fn new(model: &Model, access: TierAccess) -> ServedModel {
        let namespace = model.namespace().unwrap_or_default();
        let uri = access.uri(
            StoredKind::Model,
            &namespace,
            &model.name_any(),
            &model.spec.version,
        );
        ServedModel {
            name: model.name_any(),
            version: model.spec.version.clone(),
            uri,
            access,
        }
    }
}

/// Name of the Deployment of a track.
pub fn deployment_name(service: &str, track: Track) -> String {
    match track {
        Track::Main => service.to_owned(),
        Track::Canary => format!("{service}-canary"),
    }
}

/// Replicas of the main and canary tracks: the canary gets its share of `total`, rounded,
/// but at least one replica whenever it should receive traffic and there are two or more.
pub fn split_replicas(total: u32, canary_percent: Option<u32>) -> (u32, u32) {
    let Some(percent) = canary_percent.filter(|p| *p > 0) else {
        return (total, 0);
    };
    if total == 0 {
        return (0, 0);
    }
    let mut canary = (total * percent.min(100) + 50) / 100;
    if canary == 0 && total >= 2 {
        canary = 1;
    }
    if percent < 100 && canary == total && total >= 2 {
        canary -= 1;
    }
    (total - canary, canary)
}

/// Base URL of the OpenAI-compatible API: the Service's address when its clusterIP is a
/// loopback address (the embedded cluster proxies it on the host), else its DNS name.
pub fn service_url(isvc: &InferenceService, cluster_ip: Option<&str>) -> String {
    let scheme = if tls_secret(isvc).is_some() {
        "https"
    } else {
        "http"
    };
    let loopback = cluster_ip
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        .filter(|ip| ip.is_loopback());
    match loopback {
        Some(ip) => format!("{scheme}://{ip}:{HTTP_PORT}/v1"),
        None => format!(
            "{scheme}://{}.{}.svc:{HTTP_PORT}/v1",
            isvc.name_any(),
            isvc.namespace().unwrap_or_else(|| "default".to_owned())
        ),
    }
}

fn tls_secret(isvc: &InferenceService) -> Option<&str> {
    isvc.spec
        .api
        .as_ref()?
        .tls_secret_ref
        .as_ref()
        .map(|r| r.name.as_str())
}

fn api_key_secret(isvc: &InferenceService) -> Option<&str> {
    isvc.spec
        .api
        .as_ref()?
        .api_key_secret_ref
        .as_ref()
        .map(|r| r.name.as_str())
}

fn selector_labels(isvc: &InferenceService) -> BTreeMap<String, String> {
    BTreeMap::from([(SERVICE_LABEL.to_owned(), isvc.name_any())])
}

/// `kubectl`-style label selector string of all the service's pods (for the scale subresource).
pub fn selector_string(isvc: &InferenceService) -> String {
    format!("{SERVICE_LABEL}={}", isvc.name_any())
}

fn owned_meta(
    isvc: &InferenceService,
    name: String,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: isvc.namespace(),
        labels: Some(labels),
        owner_references: isvc.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// The worker arguments for serving `model` under the service's settings.
fn serve_args(isvc: &InferenceService, model: &ServedModel) -> Vec<String> {
    let mut args = vec![
        "serve".to_owned(),
        "--model".to_owned(),
        model.uri.clone(),
        // Clients ask for the Model by its name (the OpenAI `model` field).
        "--model-name".to_owned(),
        model.name.clone(),
        "--listen".to_owned(),
        format!("$(POD_IP):{HTTP_PORT}"),
    ];
    if let Some(batching) = &isvc.spec.batching {
        args.extend([
            "--max-batch".to_owned(),
            batching.max_batch_size.to_string(),
        ]);
    }
    if api_key_secret(isvc).is_some() {
        args.extend(["--api-key-file".to_owned(), format!("{API_KEYS_DIR}/keys")]);
    }
    if tls_secret(isvc).is_some() {
        args.extend([
            "--tls-cert".to_owned(),
            format!("{TLS_DIR}/tls.crt"),
            "--tls-key".to_owned(),
            format!("{TLS_DIR}/tls.key"),
        ]);
    }
    args
}

fn secret_volume(name: &str, secret: &str, mount_path: &str) -> (Volume, VolumeMount) {
    (
        Volume {
            name: name.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.to_owned()),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: name.to_owned(),
            mount_path: mount_path.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    )
}

fn http_probe(path: &str, https: bool, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            scheme: Some(if https { "HTTPS" } else { "HTTP" }.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// Where the scheduler placed a service's replicas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placed {
    /// `gpu` or `cpu`, as decided.
    pub accelerator: Accelerator,
    /// Nodes of the admitted replicas; the pods are restricted to them.
    pub nodes: Vec<String>,
    /// The queue the replicas were admitted through.
    pub queue: String,
}

/// The Deployment of one track serving `model` with `replicas` pods where `placed` says.
pub fn desired_deployment(
    isvc: &InferenceService,
    track: Track,
    model: &ServedModel,
    replicas: u32,
    placed: &Placed,
    images: &WorkerImages,
) -> Deployment {
    let accelerator = placed.accelerator;
    let name = deployment_name(&isvc.name_any(), track);
    let mut labels = selector_labels(isvc);
    labels.insert(TRACK_LABEL.to_owned(), track.label().to_owned());
    labels.insert(
        "app.kubernetes.io/name".to_owned(),
        "aigc-worker".to_owned(),
    );
    labels.insert(
        "app.kubernetes.io/component".to_owned(),
        "inference".to_owned(),
    );
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        "aigc-operator".to_owned(),
    );
    if !placed.queue.is_empty() {
        labels.insert(QUEUE_LABEL.to_owned(), placed.queue.clone());
    }
    let mut pod = worker_pod_spec(
        images,
        serve_args(isvc, model),
        &isvc.spec.resources,
        accelerator,
        &[&model.access],
    );
    if !placed.nodes.is_empty() {
        pod.affinity = Some(pinned_to_any(&placed.nodes));
    }
    let https = tls_secret(isvc).is_some();
    let container = &mut pod.containers[0];
    container.env.get_or_insert_with(Vec::new).insert(
        0,
        EnvVar {
            name: "POD_IP".to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "status.podIP".to_owned(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
        },
    );
    container.ports = Some(vec![ContainerPort {
        name: Some("http".to_owned()),
        container_port: HTTP_PORT,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }]);
    container.readiness_probe = Some(http_probe("/readyz", https, 5));
    container.liveness_probe = Some(http_probe("/healthz", https, 10));
    let secrets = [
        ("api-keys", api_key_secret(isvc), API_KEYS_DIR),
        ("tls", tls_secret(isvc), TLS_DIR),
    ];
    for (volume_name, secret, dir) in secrets {
        if let Some(secret) = secret {
            let (volume, mount) = secret_volume(volume_name, secret, dir);
            pod.volumes.get_or_insert_with(Vec::new).push(volume);
            pod.containers[0]
                .volume_mounts
                .get_or_insert_with(Vec::new)
                .push(mount);
        }
    }
    let match_labels = BTreeMap::from([
        (SERVICE_LABEL.to_owned(), isvc.name_any()),
        (TRACK_LABEL.to_owned(), track.label().to_owned()),
    ]);
    let mut pod_annotations = BTreeMap::new();
    pod_annotations.insert(
        "aigc.dev/model".to_owned(),
        format!("{}@{}", model.name, model.version),
    );
    Deployment {
        metadata: owned_meta(isvc, name, labels.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas as i32),
            selector: LabelSelector {
                match_labels: Some(match_labels),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The Service in front of both tracks; traffic splits in proportion to ready replicas.
pub fn desired_service(isvc: &InferenceService) -> Service {
    let mut labels = selector_labels(isvc);
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        "aigc-operator".to_owned(),
    );
    Service {
        metadata: owned_meta(isvc, isvc.name_any(), labels),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(isvc)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String("http".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// What the controller observed for one service.
#[derive(Clone, Debug, Default)]
pub struct Observed<'a> {
    /// The main Model, if it exists.
    pub model: Option<&'a Model>,
    /// The canary Model, if the spec names one and it exists.
    pub canary_model: Option<&'a Model>,
    /// The service's Deployments as they are now.
    pub deployments: Vec<&'a Deployment>,
    /// Why the service waits for the scheduler, while no replica is admitted.
    pub awaiting_admission: Option<String>,
    /// `spec.clusterIP` of the service's Service, once allocated.
    pub cluster_ip: Option<String>,
}

fn model_ready(model: Option<&Model>) -> bool {
    model
        .and_then(|m| m.status.as_ref())
        .is_some_and(|s| s.phase == Some(ModelPhase::Ready))
}

/// Why the service cannot deploy yet, if it cannot.
pub fn waiting_reason(
    isvc: &InferenceService,
    observed: &Observed<'_>,
) -> Option<(&'static str, String)> {
    let main = &isvc.spec.model_ref.name;
    match observed.model {
        None => {
            return Some((
                "ModelNotFound",
                format!("Model {main:?} does not exist in this namespace"),
            ));
        }
        Some(m) if !model_ready(Some(m)) => {
            return Some((
                "WaitingForModel",
                format!("Model {main:?} is not Ready yet"),
            ));
        }
        Some(_) => {}
    }
    if let Some(canary) = &isvc.spec.canary {
        let name = &canary.model_ref.name;
        if observed.canary_model.is_none() {
            return Some((
                "CanaryModelNotFound",
                format!("canary Model {name:?} does not exist in this namespace"),
            ));
        }
        if !model_ready(observed.canary_model) {
            return Some((
                "WaitingForCanaryModel",
                format!("canary Model {name:?} is not Ready yet"),
            ));
        }
    }
    None
}

/// The status to write, given what was observed, keeping condition transition times.
pub fn desired_status(
    isvc: &InferenceService,
    observed: &Observed<'_>,
    now: DateTime<Utc>,
) -> InferenceServiceStatus {
    let generation = isvc.metadata.generation;
    let mut status = isvc.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    status.selector = Some(selector_string(isvc));
    status.replicas = observed
        .deployments
        .iter()
        .filter_map(|d| d.status.as_ref()?.replicas)
        .sum::<i32>()
        .max(0) as u32;
    status.ready_replicas = observed
        .deployments
        .iter()
        .filter_map(|d| d.status.as_ref()?.ready_replicas)
        .sum::<i32>()
        .max(0) as u32;
    status.model_version = observed.model.map(|m| m.spec.version.clone());
    let (phase, condition) = if let Some((reason, message)) = waiting_reason(isvc, observed) {
        (
            InferenceServicePhase::Pending,
            Condition::new(
                "Ready",
                ConditionStatus::False,
                reason,
                message,
                generation,
                now,
            ),
        )
    } else if let Some(message) = &observed.awaiting_admission {
        (
            InferenceServicePhase::Pending,
            Condition::new(
                "Ready",
                ConditionStatus::False,
                "WaitingForAdmission",
                message.clone(),
                generation,
                now,
            ),
        )
    } else if status.ready_replicas == 0 {
        let message = if isvc.spec.replicas == 0 {
            "scaled to zero replicas".to_owned()
        } else {
            format!("0 of {} replicas ready", isvc.spec.replicas)
        };
        (
            InferenceServicePhase::Deploying,
            Condition::new(
                "Ready",
                ConditionStatus::False,
                "NoReadyReplicas",
                message,
                generation,
                now,
            ),
        )
    } else {
        let message = format!(
            "{} of {} replicas ready",
            status.ready_replicas, isvc.spec.replicas
        );
        (
            InferenceServicePhase::Ready,
            Condition::new(
                "Ready",
                ConditionStatus::True,
                "ReplicasReady",
                message,
                generation,
                now,
            ),
        )
    };
    status.phase = Some(phase);
    status.url = (phase != InferenceServicePhase::Pending)
        .then(|| service_url(isvc, observed.cluster_ip.as_deref()));
    set_condition(&mut status.conditions, condition);
    if let Some(canary) = &isvc.spec.canary {
        let (main, canary_replicas) =
            split_replicas(isvc.spec.replicas, Some(canary.traffic_percent));
        set_condition(
            &mut status.conditions,
            Condition::new(
                "TrafficSplit",
                ConditionStatus::True,
                "ReplicaProportional",
                format!(
                    "no Gateway API HTTPRoute in the cluster: traffic splits by replicas, {main} main and {canary_replicas} canary for {}% requested",
                    canary.traffic_percent
                ),
                generation,
                now,
            ),
        );
    }
    status
}

/// Make the cluster match one InferenceService: children applied, status written.
pub async fn reconcile(isvc: Arc<InferenceService>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = isvc.namespace().ok_or(Error::MissingNamespace)?;
    let models: Api<Model> = Api::namespaced(ctx.client.clone(), &namespace);
    let model = get_opt(&models, &isvc.spec.model_ref.name).await?;
    let canary_model = match &isvc.spec.canary {
        Some(canary) => get_opt(&models, &canary.model_ref.name).await?,
        None => None,
    };
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut observed = Observed {
        model: model.as_ref(),
        canary_model: canary_model.as_ref(),
        ..Observed::default()
    };
    let mut current = Vec::new();
    let placed = placed_replicas(&isvc, &ctx);
    if waiting_reason(&isvc, &observed).is_none() {
        match placed {
            None => {
                let message = isvc
                    .status
                    .as_ref()
                    .and_then(|s| find_condition(&s.conditions, ADMITTED))
                    .map_or_else(
                        || "waiting for the scheduler to place the replicas".to_owned(),
                        |c| format!("waiting for the scheduler: {}", c.message),
                    );
                observed.awaiting_admission = Some(message);
            }
            Some((replicas, placed)) => {
                let tiers: Api<StorageTier> = Api::all(ctx.client.clone());
                let main = served_model(&tiers, model.as_ref().expect("checked by waiting_reason"))
                    .await?;
                let canary = match canary_model.as_ref() {
                    Some(m) => Some(served_model(&tiers, m).await?),
                    None => None,
                };
                let percent = isvc.spec.canary.as_ref().map(|c| c.traffic_percent);
                let (main_replicas, canary_replicas) = split_replicas(replicas, percent);
                let images = &ctx.config.worker_images;
                let wanted =
                    desired_deployment(&isvc, Track::Main, &main, main_replicas, &placed, images);
                current.push(apply_child(&deployments, &wanted).await?);
                let canary_name = deployment_name(&isvc.name_any(), Track::Canary);
                match canary {
                    Some(canary) => {
                        let wanted = desired_deployment(
                            &isvc,
                            Track::Canary,
                            &canary,
                            canary_replicas,
                            &placed,
                            images,
                        );
                        current.push(apply_child(&deployments, &wanted).await?);
                    }
                    None => delete_if_present(&deployments, &canary_name).await?,
                }
                let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
                let service = apply_child(&services, &desired_service(&isvc)).await?;
                observed.cluster_ip = service.spec.and_then(|s| s.cluster_ip);
            }
        }
    }
    observed.deployments = current.iter().collect();
    let status = desired_status(&isvc, &observed, Utc::now());
    let old_phase = isvc.status.as_ref().and_then(|s| s.phase);
    if status.phase != old_phase {
        let ready = find_condition(&status.conditions, "Ready")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        let type_ = if status.phase == Some(InferenceServicePhase::Failed) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let reason = format!(
            "{:?}",
            status.phase.unwrap_or(InferenceServicePhase::Pending)
        );
        publish(&ctx.recorder, isvc.as_ref(), type_, &reason, ready).await;
    }
    if isvc.status.as_ref() != Some(&status) {
        let api: Api<InferenceService> = Api::namespaced(ctx.client.clone(), &namespace);
        patch_status_checked(&api, isvc.as_ref(), &status).await?;
    }
    Ok(Action::requeue(std::time::Duration::from_secs(300)))
}

/// Run the InferenceService controller until [`Context::stopped`]. It reconciles on
/// changes to services, their Deployments and Services, and the Models they serve.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let managed = watcher::Config::default().labels("app.kubernetes.io/managed-by=aigc-operator");
    let controller = ctx
        .controller(
            "InferenceService",
            Api::<InferenceService>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(Api::<Deployment>::all(client.clone()), managed.clone())
        .owns(Api::<Service>::all(client.clone()), managed)
        .graceful_shutdown_on(ctx.stopped());
    let services = controller.store();
    controller
        .watches(
            Api::<Model>::all(client),
            watcher::Config::default(),
            move |model| {
                let namespace = model.namespace();
                let name = model.name_any();
                services
                    .state()
                    .into_iter()
                    .filter(|s| s.namespace() == namespace)
                    .filter(|s| {
                        s.spec.model_ref.name == name
                            || s.spec
                                .canary
                                .as_ref()
                                .is_some_and(|c| c.model_ref.name == name)
                    })
                    .map(|s| ObjectRef::from_obj(s.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(
            instrumented("InferenceService", reconcile),
            error_policy,
            ctx,
        )
        .for_each(|result| async move {
            match result {
                Ok((service, _)) => {
                    tracing::debug!(service = %service, "reconciled InferenceService")
                }
                Err(error) => tracing::warn!(%error, "InferenceService reconcile failed"),
            }
        })
        .await;
}

/// Retry soon after an error; the error itself is logged by the controller runner.
pub fn error_policy(_isvc: Arc<InferenceService>, _error: &Error, _ctx: Arc<Context>) -> Action {
    Action::requeue(std::time::Duration::from_secs(5))
}

/// How many replicas to run and where: the admitted ones (never more than asked for), or
/// `None` while the scheduler has admitted none. A service scaled to zero needs no admission.
fn placed_replicas(isvc: &InferenceService, ctx: &Context) -> Option<(u32, Placed)> {
    let queue = ctx
        .config
        .scheduler
        .queue_for_namespace(&isvc.namespace().unwrap_or_default());
    if isvc.spec.replicas == 0 {
        let accelerator = match isvc.spec.resources.accelerator {
            Accelerator::Gpu => Accelerator::Gpu,
            Accelerator::Cpu | Accelerator::Auto => Accelerator::Cpu,
        };
        let placed = Placed {
            accelerator,
            nodes: Vec::new(),
            queue,
        };
        return Some((0, placed));
    }
    let (nodes, device) = inference_placement(isvc)?;
    let replicas = (nodes.len() as u32).min(isvc.spec.replicas);
    let placed = Placed {
        accelerator: device.into(),
        nodes: nodes[..replicas as usize].to_vec(),
        queue,
    };
    Some((replicas, placed))
}

async fn served_model(tiers: &Api<StorageTier>, model: &Model) -> Result<ServedModel, Error> {
    let tier_name = model
        .status
        .as_ref()
        .and_then(|s| s.tier.clone())
        .ok_or_else(|| Error::NotPlaced {
            kind: "Model",
            name: model.name_any(),
        })?;
    let tier = get_opt(tiers, &tier_name)
        .await?
        .ok_or_else(|| Error::TierNotFound(tier_name.clone()))?;
    Ok(ServedModel::new(model, TierAccess::for_tier(&tier)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aigc_crds::inference_service::InferenceServiceSpec;
    use aigc_crds::model::{ModelSpec, ModelStatus};
    use aigc_crds::storage_tier::{StorageTier, StorageTierSpec};
    use chrono::TimeZone;
    use k8s_openapi::api::apps::v1::DeploymentStatus;

    fn isvc(spec: serde_json::Value) -> InferenceService {
        let spec: InferenceServiceSpec = serde_json::from_value(spec).unwrap();
        let mut s = InferenceService::new("chat", spec);
        s.metadata.namespace = Some("team".into());
        s.metadata.uid = Some("uid-1".into());
        s.metadata.generation = Some(3);
        s
    }

    fn model(name: &str, ready: bool) -> Model {
        let spec: ModelSpec = serde_json::from_value(serde_json::json!({
            "source": {"pvc": {"claimName": "models"}}, "format": "gguf",
            "architecture": "llama", "task": "text-generation", "version": "1.2.0"}))
        .unwrap();
        let mut m = Model::new(name, spec);
        m.metadata.namespace = Some("team".into());
        m.status = Some(ModelStatus {
            phase: Some(if ready {
                ModelPhase::Ready
            } else {
                ModelPhase::Verifying
            }),
            ..ModelStatus::default()
        });
        m
    }

    fn served(m: &Model) -> ServedModel {
        let spec: StorageTierSpec = serde_json::from_value(
            serde_json::json!({"class": "hot", "backend": {"filesystem": {"path": "/tiers/hot"}}}),
        )
        .unwrap();
        ServedModel::new(m, TierAccess::for_tier(&StorageTier::new("hot", spec)))
    }

    fn cpu() -> Placed {
        Placed {
            accelerator: Accelerator::Cpu,
            nodes: Vec::new(),
            queue: "default".into(),
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap()
    }

    #[test]
    fn canary_share_rounds_but_both_tracks_keep_a_replica() {
        assert_eq!(split_replicas(4, None), (4, 0));
        assert_eq!(split_replicas(10, Some(10)), (9, 1));
        assert_eq!(split_replicas(3, Some(5)), (2, 1));
        assert_eq!(split_replicas(2, Some(95)), (1, 1));
        assert_eq!(split_replicas(4, Some(100)), (0, 4));
        assert_eq!(split_replicas(1, Some(30)), (1, 0));
        assert_eq!(split_replicas(0, Some(50)), (0, 0));
    }

    #[test]
    fn the_deployment_serves_the_model_with_auth_tls_and_probes() {
        let s = isvc(serde_json::json!({
            "modelRef": {"name": "smol"}, "replicas": 2,
            "api": {"apiKeySecretRef": {"name": "keys"}, "tlsSecretRef": {"name": "cert"}},
            "batching": {"maxBatchSize": 4}}));
        let m = model("smol", true);
        let d = desired_deployment(
            &s,
            Track::Main,
            &served(&m),
            2,
            &cpu(),
            &WorkerImages::default(),
        );
        assert_eq!(d.metadata.name.as_deref(), Some("chat"));
        assert_eq!(
            d.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-1"
        );
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        let pod = spec.template.spec.unwrap();
        let args = pod.containers[0].args.clone().unwrap();
        assert_eq!(
            args,
            [
                "serve",
                "--model",
                "file:///tiers/hot/models/team/smol/1.2.0",
                "--model-name",
                "smol",
                "--listen",
                "$(POD_IP):8080",
                "--max-batch",
                "4",
                "--api-key-file",
                "/etc/aigc/api-keys/keys",
                "--tls-cert",
                "/etc/aigc/tls/tls.crt",
                "--tls-key",
                "/etc/aigc/tls/tls.key"
            ]
        );
        let readiness = pod.containers[0]
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(
            (readiness.path.as_deref(), readiness.scheme.as_deref()),
            (Some("/readyz"), Some("HTTPS"))
        );
        let secrets: Vec<_> = pod
            .volumes
            .unwrap()
            .into_iter()
            .filter_map(|v| v.secret?.secret_name)
            .collect();
        assert_eq!(secrets, ["keys", "cert"]);
        assert_eq!(service_url(&s, None), "https://chat.team.svc:8080/v1");
    }

    #[test]
    fn the_service_selects_both_tracks() {
        let s = isvc(serde_json::json!({"modelRef": {"name": "smol"}}));
        let svc = desired_service(&s);
        let selector = svc.spec.unwrap().selector.unwrap();
        assert_eq!(
            selector,
            BTreeMap::from([(SERVICE_LABEL.to_owned(), "chat".to_owned())])
        );
        let m = model("smol", true);
        let canary = desired_deployment(
            &s,
            Track::Canary,
            &served(&m),
            1,
            &cpu(),
            &WorkerImages::default(),
        );
        let labels = canary
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .labels
            .unwrap();
        assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
        assert_eq!(labels[TRACK_LABEL], "canary");
    }

    #[test]
    fn status_waits_for_the_model_then_counts_ready_replicas() {
        let s = isvc(serde_json::json!({"modelRef": {"name": "smol"}, "replicas": 2}));
        let missing = desired_status(&s, &Observed::default(), now());
        assert_eq!(missing.phase, Some(InferenceServicePhase::Pending));
        assert_eq!(missing.conditions[0].reason, "ModelNotFound");
        assert!(missing.url.is_none());

        let verifying = model("smol", false);
        let waiting = desired_status(
            &s,
            &Observed {
                model: Some(&verifying),
                ..Observed::default()
            },
            now(),
        );
        assert_eq!(waiting.conditions[0].reason, "WaitingForModel");

        let ready = model("smol", true);
        let mut d = desired_deployment(
            &s,
            Track::Main,
            &served(&ready),
            2,
            &cpu(),
            &WorkerImages::default(),
        );
        d.status = Some(DeploymentStatus {
            replicas: Some(2),
            ready_replicas: Some(1),
            ..DeploymentStatus::default()
        });
        let status = desired_status(
            &s,
            &Observed {
                model: Some(&ready),
                canary_model: None,
                deployments: vec![&d],
                ..Observed::default()
            },
            now(),
        );
        assert_eq!(status.phase, Some(InferenceServicePhase::Ready));
        assert_eq!((status.replicas, status.ready_replicas), (2, 1));
        assert_eq!(status.url.as_deref(), Some("http://chat.team.svc:8080/v1"));
        assert_eq!(status.model_version.as_deref(), Some("1.2.0"));
        assert_eq!(
            status.selector.as_deref(),
            Some("aigc.dev/inference-service=chat")
        );
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.conditions[0].message, "1 of 2 replicas ready");
    }

    #[test]
    fn a_canary_reports_how_traffic_is_split() {
        let s = isvc(
            serde_json::json!({"modelRef": {"name": "a"}, "replicas": 4, "canary": {"modelRef": {"name": "b"}, "trafficPercent": 25}}),
        );
        let (a, b) = (model("a", true), model("b", false));
        let status = desired_status(
            &s,
            &Observed {
                model: Some(&a),
                canary_model: Some(&b),
                ..Observed::default()
            },
            now(),
        );
        assert_eq!(status.conditions[0].reason, "WaitingForCanaryModel");
        let split = status
            .conditions
            .iter()
            .find(|c| c.type_ == "TrafficSplit")
            .unwrap();
        assert!(
            split.message.contains("3 main and 1 canary for 25%"),
            "{}",
            split.message
        );
    }

    #[test]
    fn the_url_is_the_loopback_cluster_ip_in_local_mode() {
        let s = isvc(serde_json::json!({"modelRef": {"name": "smol"}}));
        assert_eq!(
            service_url(&s, Some("127.2.0.7")),
            "http://127.2.0.7:8080/v1"
        );
        assert_eq!(
            service_url(&s, Some("10.96.0.12")),
            "http://chat.team.svc:8080/v1"
        );
        assert_eq!(
            service_url(&s, Some("None")),
            "http://chat.team.svc:8080/v1"
        );
    }

    #[test]
    fn placed_pods_are_restricted_to_their_nodes_and_listen_on_the_pod_ip() {
        let s = isvc(serde_json::json!({"modelRef": {"name": "smol"}, "replicas": 2}));
        let m = model("smol", true);
        let placed = Placed {
            accelerator: Accelerator::Gpu,
            nodes: vec!["local-gpu".into(), "local-gpu".into()],
            queue: "serving".into(),
        };
        let d = desired_deployment(
            &s,
            Track::Main,
            &served(&m),
            2,
            &placed,
            &WorkerImages::default(),
        );
        let template = d.spec.unwrap().template;
        assert_eq!(
            template.metadata.unwrap().labels.unwrap()[QUEUE_LABEL],
            "serving"
        );
        let pod = template.spec.unwrap();
        let affinity = serde_json::to_value(pod.affinity.unwrap()).unwrap();
        assert_eq!(
            affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
                [0]["matchFields"][0]["values"],
            serde_json::json!(["local-gpu"])
        );
        let container = &pod.containers[0];
        let env = &container.env.as_ref().unwrap()[0];
        assert_eq!(env.name, "POD_IP");
        assert_eq!(
            env.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "status.podIP"
        );
        let limits = container
            .resources
            .as_ref()
            .unwrap()
            .limits
            .as_ref()
            .unwrap();
        assert!(limits.contains_key("nvidia.com/gpu"));
    }

    #[test]
    fn an_unadmitted_service_waits_for_the_scheduler() {
        let s = isvc(serde_json::json!({"modelRef": {"name": "smol"}, "replicas": 1}));
        let ready = model("smol", true);
        let status = desired_status(
            &s,
            &Observed {
                model: Some(&ready),
                awaiting_admission: Some(
                    "waiting for the scheduler: no node with 1 free nvidia.com/gpu".into(),
                ),
                ..Observed::default()
            },
            now(),
        );
        assert_eq!(status.phase, Some(InferenceServicePhase::Pending));
        assert_eq!(status.conditions[0].reason, "WaitingForAdmission");
        assert!(status.url.is_none());
    }
}
