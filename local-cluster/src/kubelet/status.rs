//! The pod status the kubelet reports, computed from what it knows of each container:
//! container statuses, the pod phase and the `PodScheduled`, `Initialized`, `ContainersReady`
//! and `Ready` conditions. Pure: the pod worker feeds it and writes the result.

use serde_json::{Value, json};

/// A container instance that has exited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terminated {
    /// Exit code; 128 + signal for a process killed by a signal.
    pub exit_code: i32,
    /// The signal that killed the process, if one did.
    pub signal: Option<i32>,
    /// `Completed`, `Error` or `StartError`.
    pub reason: String,
    /// The termination message.
    pub message: String,
    /// When the instance started.
    pub started_at: String,
    /// When it exited.
    pub finished_at: String,
}

/// A container's current state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Not running: being created, image missing, or backing off before a restart.
    Waiting {
        /// `ContainerCreating`, `ErrImagePull`, `CrashLoopBackOff`, ...
        reason: String,
        /// Details for a person.
        message: String,
    },
    /// Running since `started_at`.
    Running {
        /// Start time.
        started_at: String,
    },
    /// Exited.
    Terminated(Terminated),
}

/// What the kubelet knows of one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerView {
    /// Container name.
    pub name: String,
    /// Its image.
    pub image: String,
    /// Current state.
    pub state: State,
    /// The previous instance, once restarted.
    pub last: Option<Terminated>,
    /// How often it was restarted.
    pub restart_count: u32,
    /// Running and passing its readiness probe (if any).
    pub ready: bool,
    /// Exited for good: the restart policy does not restart it.
    pub finished: bool,
    /// Process id of the running instance, shown as the container id.
    pub pid: Option<u32>,
}

impl ContainerView {
    /// A container not started yet.
    pub fn creating(name: &str, image: &str) -> Self {
        Self {
            name: name.to_owned(),
            image: image.to_owned(),
            state: State::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            last: None,
            restart_count: 0,
            ready: false,
            finished: false,
            pid: None,
        }
    }

    fn never_ran(&self) -> bool {
        matches!(self.state, State::Waiting { .. }) && self.last.is_none()
    }
}

/// `Pending`, `Running`, `Succeeded` or `Failed`.
pub fn phase(containers: &[ContainerView]) -> &'static str {
    if containers.is_empty() || containers.iter().any(ContainerView::never_ran) {
        return "Pending";
    }
    if containers.iter().all(|c| c.finished) {
        let all_zero = containers
            .iter()
            .all(|c| matches!(&c.state, State::Terminated(t) if t.exit_code == 0));
        return if all_zero { "Succeeded" } else { "Failed" };
    }
    "Running"
}

fn terminated_json(t: &Terminated) -> Value {
    let mut value = json!({
        "exitCode": t.exit_code, "reason": t.reason,
        "startedAt": t.started_at, "finishedAt": t.finished_at,
    });
    if let Some(signal) = t.signal {
        value["signal"] = json!(signal);
    }
    if !t.message.is_empty() {
        value["message"] = json!(t.message);
    }
    value
}

fn state_json(state: &State) -> Value {
    match state {
        State::Waiting { reason, message } if message.is_empty() => {
            json!({"waiting": {"reason": reason}})
        }
        State::Waiting { reason, message } => {
            json!({"waiting": {"reason": reason, "message": message}})
        }
        State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
        State::Terminated(t) => json!({"terminated": terminated_json(t)}),
    }
}

/// One entry of `status.containerStatuses`.
pub fn container_status(c: &ContainerView) -> Value {
    let mut value = json!({
        "name": c.name,
        "image": c.image,
        "imageID": "",
        "state": state_json(&c.state),
        "lastState": c.last.as_ref().map_or(json!({}), |t| json!({"terminated": terminated_json(t)})),
        "ready": c.ready,
        "restartCount": c.restart_count,
        "started": matches!(c.state, State::Running { .. }),
    });
    if let Some(pid) = c.pid {
        value["containerID"] = json!(format!("process://{pid}"));
    }
    value
}

/// Everything the pod status is computed from.
pub struct PodView<'a> {
    /// The init containers, then the containers.
    pub containers: &'a [ContainerView],
    /// How many of `containers` are init containers.
    pub init_count: usize,
    /// `status.podIP`, once allocated.
    pub pod_ip: Option<&'a str>,
    /// When the kubelet first saw the pod.
    pub start_time: &'a str,
    /// The conditions currently stored, to keep their transition times.
    pub previous_conditions: &'a [Value],
    /// The time now.
    pub now: &'a str,
}

fn condition(
    previous: &[Value],
    kind: &str,
    status: bool,
    reason: Option<&str>,
    now: &str,
) -> Value {
    let status = if status { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c["type"] == kind && c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or(now);
    let mut value =
        json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
    if let Some(reason) = reason {
        value["reason"] = json!(reason);
    }
    value
}

fn succeeded(c: &ContainerView) -> bool {
    c.finished && matches!(&c.state, State::Terminated(t) if t.exit_code == 0)
}

/// Whether every init container has completed successfully.
pub fn initialized(init: &[ContainerView]) -> bool {
    init.iter().all(succeeded)
}

/// The pod phase with init containers: `Failed` once one failed for good, `Pending` until
/// all completed, then as the containers say.
pub fn pod_phase(init: &[ContainerView], containers: &[ContainerView]) -> &'static str {
    if initialized(init) {
        phase(containers)
    } else if init.iter().any(|c| c.finished && !succeeded(c)) {
        "Failed"
    } else {
        "Pending"
    }
}

/// The whole `status` object.
pub fn pod_status(view: &PodView) -> Value {
    let split = view.init_count.min(view.containers.len());
    let (init, containers) = view.containers.split_at(split);
    let phase = pod_phase(init, containers);
    let initialized = initialized(init);
    let all_ready = !containers.is_empty() && containers.iter().all(|c| c.ready);
    let not_ready_reason = match phase {
        "Succeeded" | "Failed" => Some("PodCompleted"),
        _ if all_ready => None,
        _ => Some("ContainersNotReady"),
    };
    let previous = view.previous_conditions;
    let conditions = vec![
        condition(previous, "PodScheduled", true, None, view.now),
        condition(
            previous,
            "Initialized",
            initialized,
            (!initialized).then_some("ContainersNotInitialized"),
            view.now,
        ),
        condition(
            previous,
            "ContainersReady",
            all_ready,
            not_ready_reason,
            view.now,
        ),
        condition(previous, "Ready", all_ready, not_ready_reason, view.now),
    ];
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "startTime": view.start_time,
        "containerStatuses": containers.iter().map(container_status).collect::<Vec<_>>(),
    });
    if !init.is_empty() {
        status["initContainerStatuses"] = init
            .iter()
            .map(|c| {
                let mut status = container_status(c);
                status["ready"] = json!(succeeded(c));
                status
            })
            .collect();
    }
    if let Some(ip) = view.pod_ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> Terminated {
        Terminated {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: String::new(),
            started_at: "t0".into(),
            finished_at: "t1".into(),
        }
    }

    fn container(state: State, finished: bool) -> ContainerView {
        ContainerView {
            state,
            finished,
            ..ContainerView::creating("main", "busybox")
        }
    }

    #[test]
    fn phases_follow_the_containers() {
        let creating = ContainerView::creating("a", "x");
        let running = container(
            State::Running {
                started_at: "t".into(),
            },
            false,
        );
        let done = container(State::Terminated(exited(0)), true);
        let failed = container(State::Terminated(exited(3)), true);
        assert_eq!(phase(&[creating.clone(), running.clone()]), "Pending");
        assert_eq!(phase(&[running.clone(), done.clone()]), "Running");
        assert_eq!(phase(&[done.clone(), done.clone()]), "Succeeded");
        assert_eq!(phase(&[done.clone(), failed.clone()]), "Failed");
        let mut backing_off = container(
            State::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: String::new(),
            },
            false,
        );
        backing_off.last = Some(exited(1));
        assert_eq!(phase(&[backing_off]), "Running");
    }

    #[test]
    fn init_containers_hold_the_pod_pending_or_fail_it() {
        let waiting = ContainerView::creating("main", "x");
        let running_init = container(
            State::Running {
                started_at: "t".into(),
            },
            false,
        );
        let done = container(State::Terminated(exited(0)), true);
        let failed = container(State::Terminated(exited(2)), true);
        let one = std::slice::from_ref;
        assert_eq!(pod_phase(one(&running_init), one(&waiting)), "Pending");
        assert_eq!(pod_phase(one(&failed), one(&waiting)), "Failed");
        assert_eq!(pod_phase(one(&done), one(&done)), "Succeeded");
        let status = pod_status(&PodView {
            containers: &[failed, waiting],
            init_count: 1,
            pod_ip: None,
            start_time: "t",
            previous_conditions: &[],
            now: "now",
        });
        assert_eq!(status["phase"], "Failed");
        assert_eq!(
            status["initContainerStatuses"][0]["state"]["terminated"]["exitCode"],
            2
        );
        assert_eq!(
            status["containerStatuses"].as_array().map(Vec::len),
            Some(1)
        );
        let initialized = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Initialized")
            .unwrap();
        assert_eq!(initialized["status"], "False");
    }

    #[test]
    fn readiness_conditions_keep_their_transition_time() {
        let mut ready = container(
            State::Running {
                started_at: "t".into(),
            },
            false,
        );
        ready.ready = true;
        let containers = [ready];
        let previous =
            vec![json!({"type": "Ready", "status": "True", "lastTransitionTime": "earlier"})];
        let status = pod_status(&PodView {
            containers: &containers,
            init_count: 0,
            pod_ip: Some("127.1.0.1"),
            start_time: "t",
            previous_conditions: &previous,
            now: "now",
        });
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["podIP"], "127.1.0.1");
        let ready = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
        assert_eq!(ready["lastTransitionTime"], "earlier");
        assert_eq!(status["containerStatuses"][0]["ready"], true);
    }
}
