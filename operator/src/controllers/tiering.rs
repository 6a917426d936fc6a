//! Tier policy controller: runs the pure policy engine ([`crate::tier_policy`]) over every
//! Dataset and Model and starts the moves it decides, as `aigc-worker transfer
//! --delete-source` Jobs owned by the resource they move.
//!
//! It only starts moves and reports decisions as Events. The Dataset and Model controllers
//! follow each move Job into their resource's status (phase `Migrating`, the `Migrating`
//! condition, and `status.tier` switched only after the Job succeeded, which the transfer
//! reaches only once every object is verified at the destination and then the source is
//! deleted). A resource with a move Job, finished or not, is never given a second one.
//!
//! It runs every [`DEFAULT_INTERVAL`] (or the configured interval) and soon after any change
//! to a TrainingJob or InferenceService, so data is promoted before the workload that needs it
//! starts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aigc_crds::common::Lifecycle;
use aigc_crds::dataset::{Dataset, DatasetPhase};
use aigc_crds::inference_service::InferenceService;
use aigc_crds::model::{Model, ModelPhase};
use aigc_crds::storage_tier::StorageTier;
use aigc_crds::training_job::{TrainingJob, TrainingJobPhase};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ListParams;
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};

use crate::Error;
use crate::controllers::placement::{Blocker, check_one_s3_endpoint, placement_tier};
use crate::controllers::worker_job::{
    FROM_TIER_ANNOTATION, OWNER_UID_LABEL, ROLE_LABEL, Role, TIER_ANNOTATION, job_name, spec_hash,
    worker_job,
};
use crate::controllers::{Context, apply_child, counted, publish};
use crate::layout::{StoredKind, TierAccess};
use crate::tier_policy::{Decision, ItemView, TierView, decide};
use crate::worker_pod::{WorkerImages, worker_pod_spec};

/// How often the policy runs when nothing wakes it earlier.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// The `kind` label under which `/metrics` counts the policy's passes.
pub const TIER_POLICY: &str = "TierPolicy";

/// Everything the policy looks at, as read from the cluster.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// All StorageTiers.
    pub tiers: Vec<StorageTier>,
    /// All Datasets.
    pub datasets: Vec<Dataset>,
    /// All Models.
    pub models: Vec<Model>,
    /// All TrainingJobs.
    pub training_jobs: Vec<TrainingJob>,
    /// All InferenceServices.
    pub services: Vec<InferenceService>,
    /// All move Jobs.
    pub move_jobs: Vec<Job>,
}

/// A move to start: the Job, and the Event to publish on the resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Move {
    /// `Dataset/<namespace>/<name>` or `Model/<namespace>/<name>`.
    pub item: String,
    /// The move Job.
    pub job: Job,
    /// `Promoting` or `Demoting`.
    pub reason: &'static str,
    /// Event note.
    pub note: String,
}

/// What one policy pass wants done.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Moves to start.
    pub moves: Vec<Move>,
    /// Moves due that cannot start, by item, with the reason (for a Warning Event).
    pub blocked: BTreeMap<String, String>,
}

fn id(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

/// The policy's view of a StorageTier.
pub fn tier_view(tier: &StorageTier) -> TierView {
    TierView {
        name: tier.name_any(),
        class: tier.spec.class,
        capacity_bytes: tier
            .spec
            .capacity
            .as_ref()
            .and_then(|q| q.to_milli().ok())
            .map(|milli| u64::try_from(milli / 1000).unwrap_or(u64::MAX)),
        cost_per_gib_month: tier.spec.cost_per_gib_month,
    }
}

fn parse_time(time: Option<&str>) -> Option<SystemTime> {
    let t = chrono::DateTime::parse_from_rfc3339(time?).ok()?;
    Some(SystemTime::from(t.to_utc()))
}

fn training_pending(job: &TrainingJob) -> bool {
    !matches!(
        job.status.as_ref().and_then(|s| s.phase),
        Some(TrainingJobPhase::Succeeded | TrainingJobPhase::Failed)
    )
}

/// Resources a workload needs now: Datasets and base Models of unfinished TrainingJobs and the
/// Models of InferenceServices, as `Kind/namespace/name`.
pub fn wanted(training_jobs: &[TrainingJob], services: &[InferenceService]) -> BTreeSet<String> {
    let mut wanted = BTreeSet::new();
    for job in training_jobs.iter().filter(|j| training_pending(j)) {
        let ns = job.namespace().unwrap_or_default();
        wanted.insert(id("Dataset", &ns, &job.spec.dataset_ref.name));
        if let Some(base) = &job.spec.base_model_ref {
            wanted.insert(id("Model", &ns, &base.name));
        }
    }
    for service in services.iter().filter(|s| s.spec.replicas > 0) {
        let ns = service.namespace().unwrap_or_default();
        wanted.insert(id("Model", &ns, &service.spec.model_ref.name));
        if let Some(canary) = &service.spec.canary {
            wanted.insert(id("Model", &ns, &canary.model_ref.name));
        }
    }
    wanted
}

/// A resource the policy may move: placed, prepared or verified, not being deleted.
struct Movable {
    view: ItemView,
    kind: StoredKind,
    namespace: String,
    name: String,
    version: String,
    owner: Option<OwnerReference>,
}

#[allow(clippy::too_many_arguments)]
fn movable(
    kind: StoredKind,
    meta: &kube::core::ObjectMeta,
    owner: Option<OwnerReference>,
    ready: bool,
    tier: Option<&str>,
    version: Option<&str>,
    bytes: u64,
    last_access: Option<&str>,
    placement: Option<&aigc_crds::common::Placement>,
    lifecycle: Option<&Lifecycle>,
    tiers: &[StorageTier],
    wanted: &BTreeSet<String>,
    moving_to: &BTreeMap<String, String>,
) -> Option<Movable> {
    if !ready || meta.deletion_timestamp.is_some() {
        return None;
    }
    let (tier, version) = (tier?, version?);
    let namespace = meta.namespace.clone()?;
    let name = meta.name.clone()?;
    let kind_name = match kind {
        StoredKind::Dataset => "Dataset",
        _ => "Model",
    };
    let item = id(kind_name, &namespace, &name);
    let placement_tier = placement_tier(placement, tiers)
        .map(|t| t.name_any())
        .unwrap_or_else(|_| tier.to_owned());
    let lifecycle_or_default = lifecycle.cloned().unwrap_or_default();
    Some(Movable {
        view: ItemView {
            id: item.clone(),
            bytes,
            current_tier: tier.to_owned(),
            placement_tier,
            demote_after: lifecycle_or_default
                .demote_after
                .as_ref()
                .and_then(|d| d.to_std().ok()),
            demote_to: lifecycle_or_default.demote_to.clone(),
            promote_on_use: lifecycle_or_default.promote_on_use,
            pinned: lifecycle_or_default.pinned,
            last_access: parse_time(last_access),
            wanted_by_workload: wanted.contains(&item),
            migrating_to: moving_to.get(&item).cloned(),
        },
        kind,
        namespace,
        name,
        version: version.to_owned(),
        owner,
    })
}

/// Which stored object set a move is about.
#[derive(Clone, Copy, Debug)]
pub struct Stored<'a> {
    /// Dataset or Model.
    pub kind: StoredKind,
    /// Namespace of the resource.
    pub namespace: &'a str,
    /// Name of the resource.
    pub name: &'a str,
    /// Its version directory (Dataset `status.version`, Model `spec.version`).
    pub version: &'a str,
}

/// The move Job of one resource from one tier to another.
pub fn desired_move_job(
    stored: Stored<'_>,
    owner: OwnerReference,
    from: &TierAccess,
    to: &TierAccess,
    images: &WorkerImages,
) -> Result<Job, Blocker> {
    check_one_s3_endpoint(&[from, to])?;
    let Stored {
        kind,
        namespace,
        name,
        version,
    } = stored;
    let from_uri = from.uri(kind, namespace, name, version);
    let to_uri = to.uri(kind, namespace, name, version);
    let args = vec![
        "transfer".to_owned(),
        "--from".to_owned(),
        from_uri.clone(),
        "--to".to_owned(),
        to_uri.clone(),
        "--delete-source".to_owned(),
    ];
    let pod = worker_pod_spec(
        images,
        args,
        &Default::default(),
        aigc_crds::common::Accelerator::Cpu,
        &[from, to],
    );
    let hash = spec_hash(&(&from_uri, &to_uri));
    Ok(worker_job(
        job_name(name, Role::Move, &hash),
        namespace.to_owned(),
        owner,
        Role::Move,
        BTreeMap::from([
            (FROM_TIER_ANNOTATION.to_owned(), from.tier.clone()),
            (TIER_ANNOTATION.to_owned(), to.tier.clone()),
        ]),
        pod,
    ))
}

/// Decide every resource's move and build the Jobs of those due. Pure.
pub fn plan(inputs: &Inputs, images: &WorkerImages, now: SystemTime) -> Plan {
    let wanted = wanted(&inputs.training_jobs, &inputs.services);
    // A resource with a move Job, finished or not, is moving until its controller records it.
    let uid_moving: BTreeMap<&str, String> = inputs
        .move_jobs
        .iter()
        .filter_map(|j| {
            let uid = j.labels().get(OWNER_UID_LABEL)?;
            let to = j.annotations().get(TIER_ANNOTATION)?;
            Some((uid.as_str(), to.clone()))
        })
        .collect();
    let moving_to_of = |meta: &kube::core::ObjectMeta, item: String| {
        meta.uid
            .as_deref()
            .and_then(|uid| uid_moving.get(uid))
            .map(|to| (item, to.clone()))
    };
    let mut moving_to = BTreeMap::new();
    for d in &inputs.datasets {
        let ns = d.namespace().unwrap_or_default();
        moving_to.extend(moving_to_of(&d.metadata, id("Dataset", &ns, &d.name_any())));
    }
    for m in &inputs.models {
        let ns = m.namespace().unwrap_or_default();
        moving_to.extend(moving_to_of(&m.metadata, id("Model", &ns, &m.name_any())));
    }
    let mut items: Vec<Movable> = Vec::new();
    for d in &inputs.datasets {
        let status = d.status.clone().unwrap_or_default();
        items.extend(movable(
            StoredKind::Dataset,
            &d.metadata,
            d.controller_owner_ref(&()),
            status.phase == Some(DatasetPhase::Ready),
            status.tier.as_deref(),
            status.version.as_deref(),
            status.bytes.unwrap_or(0),
            status.last_access_time.as_deref(),
            d.spec.placement.as_ref(),
            d.spec.lifecycle.as_ref(),
            &inputs.tiers,
            &wanted,
            &moving_to,
        ));
    }
    for m in &inputs.models {
        let status = m.status.clone().unwrap_or_default();
        items.extend(movable(
            StoredKind::Model,
            &m.metadata,
            m.controller_owner_ref(&()),
            status.phase == Some(ModelPhase::Ready),
            status.tier.as_deref(),
            Some(m.spec.version.as_str()),
            status.size_bytes.unwrap_or(0),
            status.last_access_time.as_deref(),
            m.spec.placement.as_ref(),
            m.spec.lifecycle.as_ref(),
            &inputs.tiers,
            &wanted,
            &moving_to,
        ));
    }
    // Resources already moving count against capacity but are not decided on again.
    let mut views: Vec<ItemView> = items.iter().map(|i| i.view.clone()).collect();
    for (item, to) in &moving_to {
        if !views.iter().any(|v| &v.id == item) {
            let bytes = bytes_of(inputs, item);
            views.push(ItemView {
                id: item.clone(),
                bytes,
                current_tier: String::new(),
                placement_tier: String::new(),
                demote_after: None,
                demote_to: None,
                promote_on_use: false,
                pinned: false,
                last_access: None,
                wanted_by_workload: false,
                migrating_to: Some(to.clone()),
            });
        }
    }
    let tier_views: Vec<TierView> = inputs.tiers.iter().map(tier_view).collect();
    let decisions = decide(&views, &tier_views, now);
    let mut plan = Plan::default();
    for item in &items {
        let Some(decision) = decisions.get(&item.view.id) else {
            continue;
        };
        let (to, reason, why) = match decision {
            Decision::Promote { to } => (to, "Promoting", "a workload that uses it is starting"),
            Decision::Demote { to } => (to, "Demoting", "it has not been read for demoteAfter"),
            Decision::Blocked {
                to,
                needed_bytes,
                free_bytes,
            } => {
                plan.blocked.insert(
                    item.view.id.clone(),
                    format!(
                        "moving to tier {to} needs {needed_bytes} bytes but only {free_bytes} are free within its capacity"
                    ),
                );
                continue;
            }
            Decision::Stay { .. } => continue,
        };
        let access = |name: &str| {
            inputs
                .tiers
                .iter()
                .find(|t| t.name_any() == name)
                .map(TierAccess::for_tier)
        };
        let (Some(from), Some(dest), Some(owner)) = (
            access(&item.view.current_tier),
            access(to),
            item.owner.clone(),
        ) else {
            continue;
        };
        let stored = Stored {
            kind: item.kind,
            namespace: &item.namespace,
            name: &item.name,
            version: &item.version,
        };
        match desired_move_job(stored, owner, &from, &dest, images) {
            Ok(job) => plan.moves.push(Move {
                item: item.view.id.clone(),
                note: format!(
                    "moving from tier {} to tier {to} because {why} (Job {})",
                    from.tier,
                    job.name_any()
                ),
                job,
                reason,
            }),
            Err(blocker) => {
                plan.blocked.insert(item.view.id.clone(), blocker.message);
            }
        }
    }
    plan
}

fn bytes_of(inputs: &Inputs, item: &str) -> u64 {
    let mut parts = item.splitn(3, '/');
    let (kind, ns, name) = (parts.next(), parts.next(), parts.next());
    let same =
        |o: &kube::core::ObjectMeta| o.namespace.as_deref() == ns && o.name.as_deref() == name;
    match kind {
        Some("Dataset") => inputs
            .datasets
            .iter()
            .find(|d| same(&d.metadata))
            .and_then(|d| d.status.as_ref()?.bytes),
        _ => inputs
            .models
            .iter()
            .find(|m| same(&m.metadata))
            .and_then(|m| m.status.as_ref()?.size_bytes),
    }
    .unwrap_or(0)
}

/// Objects per list request: a pass holds one page of response at a time, not every
/// Dataset and Model of the cluster as one body.
const LIST_PAGE: u32 = 250;

async fn list_all<K>(
    client: &kube::Client,
    params: &ListParams,
    what: &str,
) -> Result<Vec<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let api = Api::<K>::all(client.clone());
    let mut items = Vec::new();
    let mut page = params.clone().limit(LIST_PAGE);
    loop {
        let list = api.list(&page).await.map_err(|source| Error::Kube {
            action: format!("listing {what}"),
            source,
        })?;
        // Field ownership is never read by the policy and is most of an applied object.
        items.extend(list.items.into_iter().map(|mut item| {
            item.meta_mut().managed_fields = None;
            item
        }));
        match list.metadata.continue_ {
            Some(token) if !token.is_empty() => page = page.continue_token(&token),
            _ => return Ok(items),
        }
    }
}

/// Read what the policy needs from the cluster.
pub async fn read_inputs(client: &kube::Client) -> Result<Inputs, Error> {
    let all = ListParams::default();
    let moves = ListParams::default().labels(&format!("{ROLE_LABEL}={}", Role::Move.as_str()));
    Ok(Inputs {
        tiers: list_all(client, &all, "StorageTiers").await?,
        datasets: list_all(client, &all, "Datasets").await?,
        models: list_all(client, &all, "Models").await?,
        training_jobs: list_all(client, &all, "TrainingJobs").await?,
        services: list_all(client, &all, "InferenceServices").await?,
        move_jobs: list_all(client, &moves, "move Jobs").await?,
    })
}

/// One policy pass: read, decide, start the moves, publish the decisions. Returns the items
/// blocked in this pass, so a blocked move is reported once, not on every pass.
pub async fn run_once(
    ctx: &Context,
    reported_blocked: &BTreeSet<String>,
) -> Result<BTreeSet<String>, Error> {
    let inputs = read_inputs(&ctx.client).await?;
    let plan = plan(&inputs, &ctx.config.worker_images, SystemTime::now());
    for mv in &plan.moves {
        let namespace = mv.job.namespace().unwrap_or_default();
        let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
        apply_child(&jobs, &mv.job).await?;
        publish_on(
            ctx,
            &inputs,
            &mv.item,
            EventType::Normal,
            mv.reason,
            mv.note.clone(),
        )
        .await;
    }
    for (item, note) in &plan.blocked {
        if !reported_blocked.contains(item) {
            publish_on(
                ctx,
                &inputs,
                item,
                EventType::Warning,
                "MoveBlocked",
                note.clone(),
            )
            .await;
        }
    }
    Ok(plan.blocked.into_keys().collect())
}

async fn publish_on(
    ctx: &Context,
    inputs: &Inputs,
    item: &str,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let mut parts = item.splitn(3, '/');
    let (kind, ns, name) = (parts.next(), parts.next(), parts.next());
    let same =
        |o: &kube::core::ObjectMeta| o.namespace.as_deref() == ns && o.name.as_deref() == name;
    match kind {
        Some("Dataset") => {
            if let Some(d) = inputs.datasets.iter().find(|d| same(&d.metadata)) {
                publish(&ctx.recorder, d, type_, reason, note).await;
            }
        }
        _ => {
            if let Some(m) = inputs.models.iter().find(|m| same(&m.metadata)) {
                publish(&ctx.recorder, m, type_, reason, note).await;
            }
        }
    }
}

/// Run the policy until the process is asked to stop.
pub async fn run(ctx: Arc<Context>) {
    let interval = ctx.config.tier_policy_interval.unwrap_or(DEFAULT_INTERVAL);
    ctx.metrics.register_kind(TIER_POLICY);
    let client = ctx.client.clone();
    let training = watcher(
        Api::<TrainingJob>::all(client.clone()),
        watcher::Config::default(),
    )
    .map(|_| ());
    let services = watcher(
        Api::<InferenceService>::all(client),
        watcher::Config::default(),
    )
    .map(|_| ());
    let mut changes = futures::stream::select(training, services).boxed();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut blocked = BTreeSet::new();
    // Stop with the controllers: leadership lost or the process shutting down.
    let stopped = ctx.stopped();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            change = changes.next() => {
                if change.is_none() {
                    return;
                }
                // Let a burst of changes settle into one pass.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while changes.next().now_or_never().flatten().is_some() {}
            }
            () = &mut stopped => return,
        }
        match counted(ctx.metrics.clone(), TIER_POLICY, run_once(&ctx, &blocked)).await {
            Ok(now_blocked) => blocked = now_blocked,
            Err(error) => tracing::warn!(%error, "tier policy pass failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aigc_crds::dataset::DatasetStatus;
    use aigc_crds::storage_tier::StorageTierSpec;

    fn tier(name: &str, class: &str, capacity: Option<&str>) -> StorageTier {
        let mut spec = serde_json::json!({
            "class": class, "backend": {"filesystem": {"path": format!("/tiers/{name}")}}
        });
        if let Some(c) = capacity {
            spec["capacity"] = serde_json::json!(c);
        }
        StorageTier::new(
            name,
            serde_json::from_value::<StorageTierSpec>(spec).unwrap(),
        )
    }

    fn dataset(name: &str, on: &str, lifecycle: serde_json::Value, last: &str) -> Dataset {
        let mut d: Dataset = serde_json::from_value(serde_json::json!({
            "apiVersion": "aigc.dev/v1alpha1", "kind": "Dataset",
            "metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}")},
            "spec": {"source": {"http": {"url": "http://example.invalid/d.txt"}}, "format": "text",
                     "placement": {"tier": "hot"}, "lifecycle": lifecycle}
        }))
        .unwrap();
        d.status = Some(DatasetStatus {
            phase: Some(DatasetPhase::Ready),
            tier: Some(on.into()),
            version: Some("v1".into()),
            bytes: Some(100),
            last_access_time: Some(last.into()),
            ..DatasetStatus::default()
        });
        d
    }

    fn now() -> SystemTime {
        SystemTime::from(
            chrono::DateTime::parse_from_rfc3339("2026-12-04T12:00:00Z")
                .unwrap()
                .to_utc(),
        )
    }

    fn inputs(datasets: Vec<Dataset>) -> Inputs {
        Inputs {
            tiers: vec![tier("hot", "hot", Some("1Ki")), tier("cold", "cold", None)],
            datasets,
            ..Inputs::default()
        }
    }

    #[test]
    fn idle_data_gets_a_move_job_to_its_demotion_tier() {
        let idle = dataset(
            "idle",
            "hot",
            serde_json::json!({"demoteAfter": "1d", "demoteTo": "cold"}),
            "2026-12-01T00:00:00Z",
        );
        let fresh = dataset(
            "fresh",
            "hot",
            serde_json::json!({"demoteAfter": "7d", "demoteTo": "cold"}),
            "2026-12-01T00:00:00Z",
        );
        let plan = plan(&inputs(vec![idle, fresh]), &WorkerImages::default(), now());
        assert_eq!(plan.moves.len(), 1, "{plan:?}");
        let mv = &plan.moves[0];
        assert_eq!(
            (mv.item.as_str(), mv.reason),
            ("Dataset/ml/idle", "Demoting")
        );
        let job = &mv.job;
        assert_eq!(job.annotations()[TIER_ANNOTATION], "cold");
        assert_eq!(job.annotations()[FROM_TIER_ANNOTATION], "hot");
        assert_eq!(job.labels()[OWNER_UID_LABEL], "uid-idle");
        let args = job
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .args
            .clone()
            .unwrap();
        assert_eq!(
            args,
            [
                "transfer",
                "--from",
                "file:///tiers/hot/datasets/ml/idle/v1",
                "--to",
                "file:///tiers/cold/datasets/ml/idle/v1",
                "--delete-source"
            ]
        );
    }

    #[test]
    fn a_resource_with_a_move_job_gets_no_second_one() {
        let idle = dataset(
            "idle",
            "hot",
            serde_json::json!({"demoteAfter": "1d", "demoteTo": "cold"}),
            "2026-12-01T00:00:00Z",
        );
        let mut inputs = inputs(vec![idle]);
        let first = plan(&inputs, &WorkerImages::default(), now());
        inputs.move_jobs.push(first.moves[0].job.clone());
        assert!(
            plan(&inputs, &WorkerImages::default(), now())
                .moves
                .is_empty()
        );
    }

    #[test]
    fn workloads_promote_cold_data_within_capacity_and_pinned_data_stays() {
        let on_cold =
            |name: &str, lifecycle| dataset(name, "cold", lifecycle, "2026-12-01T00:00:00Z");
        let a = on_cold("a", serde_json::json!({"promoteOnUse": true}));
        let pinned = on_cold(
            "pinned",
            serde_json::json!({"promoteOnUse": true, "pinned": true}),
        );
        let mut too_big = on_cold("too-big", serde_json::json!({"promoteOnUse": true}));
        too_big.status.as_mut().unwrap().bytes = Some(2000);
        let training: Vec<TrainingJob> = ["a", "pinned", "too-big"]
            .iter()
            .map(|d| {
                serde_json::from_value(serde_json::json!({
                    "apiVersion": "aigc.dev/v1alpha1", "kind": "TrainingJob",
                    "metadata": {"name": format!("train-{d}"), "namespace": "ml"},
                    "spec": {"datasetRef": {"name": d}, "architecture": "mlp",
                             "output": {"modelName": "m", "version": "1"}, "hyperparameters": {}},
                    "status": {"phase": "Queued"}
                }))
                .unwrap()
            })
            .collect();
        let mut inputs = inputs(vec![a, pinned, too_big]);
        inputs.training_jobs = training;
        let plan = plan(&inputs, &WorkerImages::default(), now());
        let moved: Vec<(&str, &str)> = plan
            .moves
            .iter()
            .map(|m| (m.item.as_str(), m.reason))
            .collect();
        assert_eq!(moved, [("Dataset/ml/a", "Promoting")]);
        assert!(
            plan.blocked["Dataset/ml/too-big"].contains("needs 2000 bytes but only 924"),
            "{:?}",
            plan.blocked
        );
    }

    #[test]
    fn tier_capacity_is_read_in_bytes() {
        assert_eq!(
            tier_view(&tier("hot", "hot", Some("2Gi"))).capacity_bytes,
            Some(2 << 30)
        );
        assert_eq!(tier_view(&tier("cold", "cold", None)).capacity_bytes, None);
    }
}
