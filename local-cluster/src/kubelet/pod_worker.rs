//! One pod on a simulated node, from first sight to removal: allocate its IP, prepare its
//! volumes and containers (retrying while a secret, configMap or claim is missing), run a
//! [`Runner`] per container, turn their events into the pod's status, and on
//! `deletionTimestamp` stop the containers within the grace period and delete the pod for good
//! (the API server keeps it while finalizers remain).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::Context;
use super::container::{Event, LogTarget, RestartPolicy, Runner};
use super::events::{self, PodEvent, Severity};
use super::prepare::{self, ContainerPlan, Environment};
use super::status::{self, ContainerView, PodView, State};

/// How often a pod whose containers cannot be created yet is retried.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// Default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// Why the worker's main loop ended.
enum End {
    /// The pod is being deleted: stop within this grace period, then delete it.
    Deleting(Duration),
    /// The pod is gone from the API: stop at once and clean up.
    Gone,
    /// The cluster is shutting down: stop at once, keep the pod's files.
    Shutdown,
}

fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

/// The init containers, then the containers.
fn all_containers(pod: &Pod) -> Vec<&Container> {
    pod.spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
        .collect()
}

fn is_deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

struct Worker {
    ctx: Arc<Context>,
    api: Api<Pod>,
    namespace: String,
    name: String,
    uid: String,
    pod_ip: String,
    start_time: String,
    /// Init containers first, then the containers; runner events index into this.
    views: Vec<ContainerView>,
    /// How many of `views` are init containers.
    init_count: usize,
    readiness_probed: Vec<bool>,
    conditions: Vec<Value>,
    written: Option<Value>,
    node: String,
    events: Vec<PodEvent>,
    recorded_failures: Vec<PodEvent>,
    updates: watch::Receiver<Arc<Pod>>,
    shutdown: watch::Receiver<bool>,
}

impl Worker {
    fn event(
        &mut self,
        severity: Severity,
        reason: &'static str,
        index: Option<usize>,
        message: String,
    ) {
        let container = index
            .and_then(|i| self.views.get(i))
            .map(|v| v.name.clone());
        self.events.push(PodEvent {
            severity,
            reason,
            message,
            container,
        });
    }

    /// Record the pending events.
    async fn flush_events(&mut self) {
        let subject = events::Subject {
            namespace: &self.namespace,
            name: &self.name,
            uid: &self.uid,
            node: &self.node,
        };
        for event in self.events.drain(..) {
            events::record(&self.ctx.client, &subject, &event).await;
        }
    }

    /// Record pending events, then write the status (when it changed): a client that sees a
    /// status finds the events that led to it.
    async fn report(&mut self) {
        self.flush_events().await;
        self.write_status().await;
    }

    async fn write_status(&mut self) {
        let now = crate::api::now();
        let status = status::pod_status(&PodView {
            containers: &self.views,
            init_count: self.init_count,
            pod_ip: Some(&self.pod_ip),
            start_time: &self.start_time,
            previous_conditions: &self.conditions,
            now: &now,
        });
        if self.written.as_ref() == Some(&status) {
            return;
        }
        let params = PatchParams {
            field_manager: Some(crate::nodes::FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        match self
            .api
            .patch_status(
                &self.name,
                &params,
                &Patch::Merge(json!({"status": status})),
            )
            .await
        {
            Ok(_) => {
                self.conditions = status["conditions"].as_array().cloned().unwrap_or_default();
                self.written = Some(status);
            }
            Err(e) => {
                tracing::warn!(pod = %self.name, namespace = %self.namespace, error = %e, "writing the pod status failed");
            }
        }
    }

    /// Wait for the pod to change, be deleted or the cluster to stop.
    async fn next_change(&mut self, timeout: Option<Duration>) -> Option<End> {
        let sleep = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = crate::until_stopped(&mut self.shutdown) => Some(End::Shutdown),
            changed = self.updates.changed() => match changed {
                Err(_) => Some(End::Gone),
                Ok(()) => {
                    let pod = self.updates.borrow_and_update().clone();
                    is_deleting(&pod).then(|| End::Deleting(grace_period(&pod)))
                }
            },
            _ = sleep => None,
        }
    }

    /// Prepare every container; `Err` after setting the waiting reasons when one cannot run.
    async fn plans(&mut self, pod: &Pod) -> Result<Vec<ContainerPlan>, ()> {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .and_then(|n| crate::nodes::find(&self.ctx.nodes, n));
        let capacity = node.map(|n| n.capacity.clone()).unwrap_or_default();
        let env = Environment {
            client: &self.ctx.client,
            dirs: &self.ctx.dirs,
            images: &self.ctx.images,
            node_capacity: &capacity,
            pod_ip: &self.pod_ip,
        };
        let volumes = match prepare::pod_volumes(pod, &env).await {
            Ok(volumes) => volumes,
            Err(message) => {
                let failure = PodEvent {
                    severity: Severity::Warning,
                    reason: "FailedMount",
                    message: message.clone(),
                    container: None,
                };
                if !self.recorded_failures.contains(&failure) {
                    self.recorded_failures.push(failure.clone());
                    self.events.push(failure);
                }
                for view in &mut self.views {
                    view.state = State::Waiting {
                        reason: "CreateContainerConfigError".into(),
                        message: message.clone(),
                    };
                }
                return Err(());
            }
        };
        let mut plans = Vec::new();
        let mut blocked = false;
        let containers = all_containers(pod);
        let init_count = self.init_count;
        for (index, (container, view)) in containers
            .into_iter()
            .zip(self.views.iter_mut())
            .enumerate()
        {
            match prepare::container_plan(pod, container, &volumes, &env).await {
                Ok(plan) => {
                    let reason = if index >= init_count && init_count > 0 {
                        "PodInitializing"
                    } else {
                        "ContainerCreating"
                    };
                    view.state = State::Waiting {
                        reason: reason.into(),
                        message: String::new(),
                    };
                    plans.push(plan);
                }
                Err(why) => {
                    blocked = true;
                    let failure = PodEvent {
                        severity: Severity::Warning,
                        reason: "Failed",
                        message: format!("{}: {}", why.reason, why.message),
                        container: Some(container.name.clone()),
                    };
                    if !self.recorded_failures.contains(&failure) {
                        self.recorded_failures.push(failure.clone());
                        self.events.push(failure);
                    }
                    view.state = State::Waiting {
                        reason: why.reason.into(),
                        message: why.message,
                    };
                }
            }
        }
        if blocked { Err(()) } else { Ok(plans) }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Running {
                index,
                pid,
                started_at,
            } => {
                if let Some(view) = self.views.get_mut(index) {
                    if let State::Terminated(previous) = &view.state {
                        view.last = Some(previous.clone());
                        view.restart_count += 1;
                    } else if view.last.is_some() {
                        view.restart_count += 1;
                    }
                    view.state = State::Running { started_at };
                    view.pid = Some(pid);
                    view.ready = !self.readiness_probed.get(index).copied().unwrap_or(false);
                }
                self.event(
                    Severity::Normal,
                    "Started",
                    Some(index),
                    format!("Started container as process {pid}"),
                );
            }
            Event::Ready { index, ready } => {
                if let Some(view) = self.views.get_mut(index)
                    && matches!(view.state, State::Running { .. })
                {
                    view.ready = ready;
                }
                if !ready {
                    self.event(
                        Severity::Warning,
                        "Unhealthy",
                        Some(index),
                        "Readiness probe failed".into(),
                    );
                }
            }
            Event::Unhealthy { index } => {
                self.event(
                    Severity::Warning,
                    "Unhealthy",
                    Some(index),
                    "Liveness probe failed; the container will be killed and restarted".into(),
                );
            }
            Event::Exited {
                index,
                terminated,
                finished,
            } => {
                if let Some(view) = self.views.get_mut(index) {
                    view.state = State::Terminated(terminated);
                    view.ready = false;
                    view.finished = finished;
                    view.pid = None;
                }
            }
            Event::BackingOff { index, message } => {
                self.event(Severity::Warning, "BackOff", Some(index), message.clone());
                if let Some(view) = self.views.get_mut(index) {
                    if let State::Terminated(previous) = &view.state {
                        view.last = Some(previous.clone());
                    }
                    view.state = State::Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message,
                    };
                }
            }
        }
    }
}

/// Run one pod until it is deleted or the cluster stops.
pub async fn run(
    ctx: Arc<Context>,
    mut updates: watch::Receiver<Arc<Pod>>,
    shutdown: watch::Receiver<bool>,
) {
    let pod = updates.borrow_and_update().clone();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let pod_ip = ctx.ips.allocate(&uid, status.pod_ip.as_deref());
    let init_count = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .map_or(0, Vec::len);
    let containers = all_containers(&pod);
    let mut worker = Worker {
        api: Api::namespaced(ctx.client.clone(), &namespace),
        init_count,
        views: containers
            .iter()
            .map(|c| ContainerView::creating(&c.name, c.image.as_deref().unwrap_or("")))
            .collect(),
        readiness_probed: containers
            .iter()
            .map(|c| c.readiness_probe.is_some())
            .collect(),
        ctx,
        namespace,
        name,
        uid,
        pod_ip,
        start_time: crate::api::now(),
        conditions: Vec::new(),
        written: None,
        node: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        events: Vec::new(),
        recorded_failures: Vec::new(),
        updates,
        shutdown,
    };
    let terminal = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    let end = if is_deleting(&pod) {
        End::Deleting(grace_period(&pod))
    } else if terminal {
        // Finished before the cluster restarted: never run again, wait for deletion.
        loop {
            if let Some(end) = worker.next_change(None).await {
                break end;
            }
        }
    } else {
        worker.run_containers(&pod).await
    };
    worker.finish(end).await;
}

impl Worker {
    /// Prepare and run the containers until the pod's end.
    async fn run_containers(&mut self, pod: &Pod) -> End {
        let plans = loop {
            let attempt = self.plans(pod).await;
            self.report().await;
            match attempt {
                Ok(plans) => break plans,
                Err(()) => {
                    if let Some(end) = self.next_change(Some(RETRY_INTERVAL)).await {
                        return end;
                    }
                }
            }
        };
        let policy =
            RestartPolicy::parse(pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()));
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(None);
        let mut runners = JoinSet::new();
        let mut pending: Vec<Option<ContainerPlan>> = plans.into_iter().map(Some).collect();
        let mut start = |index: usize, plan: ContainerPlan, worker: &Worker| {
            // Init containers run until they succeed, unless the pod never restarts anything.
            let policy = match (index < worker.init_count, policy) {
                (true, RestartPolicy::Never) => RestartPolicy::Never,
                (true, _) => RestartPolicy::OnFailure,
                (false, policy) => policy,
            };
            let runner = Runner {
                index,
                plan,
                policy,
                backoff_base: worker.ctx.backoff_base,
                logs: LogTarget {
                    dir: worker.ctx.logs.clone(),
                    namespace: worker.namespace.clone(),
                    pod: worker.name.clone(),
                    uid: worker.uid.clone(),
                },
                processes: worker.ctx.processes.clone(),
                events: events_tx.clone(),
                stop: stop_rx.clone(),
            };
            runners.spawn(runner.run());
        };
        for (index, plan) in self.startable(&mut pending) {
            start(index, plan, self);
        }
        let end = loop {
            tokio::select! {
                Some(event) = events.recv() => {
                    self.apply(event);
                    while let Ok(event) = events.try_recv() {
                        self.apply(event);
                    }
                    for (index, plan) in self.startable(&mut pending) {
                        start(index, plan, self);
                    }
                    self.report().await;
                }
                end = self.next_change(None) => if let Some(end) = end { break end },
            }
        };
        let grace = match end {
            End::Deleting(grace) => {
                for index in 0..self.views.len() {
                    self.event(
                        Severity::Normal,
                        "Killing",
                        Some(index),
                        format!("Stopping container (grace period {}s)", grace.as_secs()),
                    );
                }
                self.flush_events().await;
                grace
            }
            End::Gone | End::Shutdown => Duration::ZERO,
        };
        let _ = stop.send(Some(grace));
        while runners.join_next().await.is_some() {}
        while let Ok(event) = events.try_recv() {
            self.apply(event);
        }
        end
    }

    /// The containers to start now: the first init container not yet completed, or, once all
    /// completed, every container; nothing after an init container failed for good.
    fn startable(&self, pending: &mut [Option<ContainerPlan>]) -> Vec<(usize, ContainerPlan)> {
        for index in 0..self.init_count.min(pending.len()) {
            let view = &self.views[index];
            let succeeded =
                view.finished && matches!(&view.state, State::Terminated(t) if t.exit_code == 0);
            if succeeded {
                continue;
            }
            return pending[index]
                .take()
                .map(|plan| (index, plan))
                .into_iter()
                .collect();
        }
        pending
            .iter_mut()
            .enumerate()
            .skip(self.init_count)
            .filter_map(|(index, plan)| plan.take().map(|plan| (index, plan)))
            .collect()
    }

    /// After the containers stopped: delete the pod, or just clean up, or keep everything.
    async fn finish(mut self, end: End) {
        match end {
            End::Shutdown => return,
            End::Deleting(_) => {
                // Only a status this worker reported is brought up to date: a pod that finished
                // before a restart keeps the status it finished with.
                if self.written.is_some() {
                    self.write_status().await;
                }
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(self.uid.clone()),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                if let Err(e) = self.api.delete(&self.name, &params).await {
                    tracing::warn!(pod = %self.name, namespace = %self.namespace, error = %e, "removing the terminated pod failed");
                }
            }
            End::Gone => {}
        }
        self.ctx.ips.release(&self.uid);
        let _ = std::fs::remove_dir_all(self.ctx.dirs.pod(&self.uid));
        let _ = std::fs::remove_dir_all(self.ctx.logs.pod_dir(
            &self.namespace,
            &self.name,
            &self.uid,
        ));
    }
}
