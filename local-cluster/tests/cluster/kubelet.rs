//! The process kubelet and simulated nodes, driven through kubectl and kube::Api: pods run as
//! local processes (mapped images), report phases, exit codes, termination messages,
//! restarts and readiness, serve their logs, and leave no process behind.

use std::time::Duration;

use aigc_local_cluster::{Config, ImageMapping, LocalCluster};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::harness::Harness;

const WAIT: Duration = Duration::from_secs(60);

/// The real interpreter behind `python3` (a shim would need the caller's environment).
fn python() -> String {
    let output = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is installed (scripts/install-test-deps.sh)");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn configure(config: &mut Config) {
    config.images = vec![
        ImageMapping::new("busybox", "/bin/sh"),
        ImageMapping::new("python", python()),
    ];
    config.restart_backoff = Duration::from_secs(1);
}

async fn cluster() -> Harness {
    Harness::start_with(configure).await
}

fn pods(h: &Harness) -> Api<Pod> {
    Api::namespaced(h.cluster.client(), "default")
}

/// A pod running `script` with `sh -c` on `node`.
fn shell_pod(name: &str, script: &str, restart_policy: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": "local-cpu",
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "main", "image": "busybox:1.36", "command": ["sh", "-c", script]}],
        },
    })
}

async fn create(h: &Harness, pod: Value) -> Pod {
    pods(h)
        .create(
            &PostParams::default(),
            &serde_json::from_value(pod).expect("a valid pod"),
        )
        .await
        .expect("the pod is created")
}

/// Wait until `condition` holds for the pod; panics with the pod's last state otherwise.
async fn await_pod(
    h: &Harness,
    name: &str,
    what: &str,
    condition: impl Fn(&Pod) -> bool + Send + 'static,
) -> Pod {
    await_pod_in(pods(h), name, what, condition).await
}

async fn await_pod_in(
    api: Api<Pod>,
    name: &str,
    what: &str,
    condition: impl Fn(&Pod) -> bool + Send + 'static,
) -> Pod {
    let waited = tokio::time::timeout(
        WAIT,
        await_condition(api.clone(), name, move |pod: Option<&Pod>| {
            pod.is_some_and(&condition)
        }),
    )
    .await;
    match waited {
        Ok(Ok(Some(pod))) => pod,
        _ => {
            let last = api.get_opt(name).await.ok().flatten();
            panic!("pod {name} did not {what} within {WAIT:?}; last seen: {last:#?}")
        }
    }
}

async fn await_gone(h: &Harness, name: &str) {
    let api = pods(h);
    let gone = tokio::time::timeout(
        WAIT,
        await_condition(api, name, |pod: Option<&Pod>| pod.is_none()),
    )
    .await;
    assert!(
        matches!(gone, Ok(Ok(_))),
        "pod {name} was not removed within {WAIT:?}"
    );
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn main_status(pod: &Pod) -> Value {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    statuses
        .first()
        .map(|s| serde_json::to_value(s).expect("serializable"))
        .unwrap_or(Value::Null)
}

fn is_running(pod: &Pod) -> bool {
    main_status(pod)["state"]["running"].is_object()
}

/// The process id of the running main container (`containerID: process://PID`).
fn pid_of(pod: &Pod) -> u32 {
    main_status(pod)["containerID"]
        .as_str()
        .and_then(|id| id.strip_prefix("process://"))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no process id in {:#}", main_status(pod)))
}

/// Live (not zombie) processes of the process group `pgid`.
fn live_group_members(pgid: u32) -> Vec<u32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc")
        .expect("/proc is readable")
        .flatten()
    {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state, ppid, pgrp, ...
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
            members.push(pid);
        }
    }
    members
}

fn condition(pod: &Pod, kind: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

#[tokio::test]
async fn nodes_are_registered_with_capacity_labels_taints_and_leases() {
    let h = cluster().await;
    let nodes: Api<Node> = Api::all(h.cluster.client());
    let gpu = nodes.get("local-gpu").await.expect("the GPU node exists");
    let labels = gpu.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["nvidia.com/gpu.product"], "NVIDIA-H100-80GB-HBM3");
    assert_eq!(labels["kubernetes.io/hostname"], "local-gpu");
    let status = gpu.status.clone().expect("node status");
    assert_eq!(status.allocatable.unwrap()["nvidia.com/gpu"].0, "2");
    assert_eq!(gpu.spec.unwrap().taints.unwrap()[0].key, "nvidia.com/gpu");
    let out = h.kubectl_ok(&["get", "nodes", "-o", "name"]).await;
    assert_eq!(out, "node/local-cpu\nnode/local-gpu\n");
    let ready = h
        .kubectl_ok(&[
            "get",
            "node",
            "local-cpu",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])
        .await;
    assert_eq!(ready, "True");
    h.kubectl_ok(&["get", "lease", "-n", "kube-node-lease", "local-cpu"])
        .await;
}

#[tokio::test]
async fn a_pod_that_exits_zero_succeeds_and_its_logs_are_served() {
    let h = cluster().await;
    let mut pod = shell_pod(
        "hello",
        "echo hello from $(POD_NAME) at $POD_IP; echo second line",
        "Never",
    );
    pod["spec"]["containers"][0]["env"] = json!([
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]);
    h.kubectl_stdin_ok(&["apply", "-f", "-"], Some(&pod.to_string()))
        .await;
    let done = await_pod(&h, "hello", "succeed", |p| phase(p) == "Succeeded").await;
    let status = main_status(&done);
    assert_eq!(status["state"]["terminated"]["exitCode"], 0);
    assert_eq!(status["state"]["terminated"]["reason"], "Completed");
    let pod_ip = done
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a pod IP");
    assert!(pod_ip.starts_with("127.1."), "{pod_ip}");
    let row = h
        .kubectl_ok(&["get", "pod", "hello", "-o", "wide", "--no-headers"])
        .await;
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..4], ["hello", "0/1", "Completed", "0"], "{row}");
    assert!(
        cells.contains(&pod_ip.as_str()) && cells.contains(&"local-cpu"),
        "{row}"
    );
    let logs = h.kubectl_ok(&["logs", "hello"]).await;
    assert_eq!(logs, format!("hello from hello at {pod_ip}\nsecond line\n"));
    assert_eq!(
        h.kubectl_ok(&["logs", "hello", "--tail=1"]).await,
        "second line\n"
    );
    assert_eq!(
        h.kubectl_ok(&["logs", "hello", "--limit-bytes=5"]).await,
        "hello"
    );
    assert_eq!(h.kubectl_ok(&["logs", "hello", "--since=1h"]).await, logs);
    let container = h.kubectl(&["logs", "hello", "-c", "sidecar"]).await;
    assert!(
        String::from_utf8_lossy(&container.stderr)
            .contains("container sidecar is not valid for pod hello"),
        "{container:?}"
    );
    let stamped = h.kubectl_ok(&["logs", "hello", "--timestamps"]).await;
    assert!(
        stamped
            .lines()
            .all(|l| l.split(' ').next().is_some_and(|t| t.ends_with('Z'))),
        "{stamped}"
    );
    assert_eq!(condition(&done, "PodScheduled").as_deref(), Some("True"));
    assert_eq!(condition(&done, "Ready").as_deref(), Some("False"));
}

#[tokio::test]
async fn a_failing_pod_reports_its_exit_code_and_termination_message() {
    let h = cluster().await;
    create(
        &h,
        shell_pod(
            "fails",
            "echo 'disk full' > /dev/termination-log; exit 3",
            "Never",
        ),
    )
    .await;
    let failed = await_pod(&h, "fails", "fail", |p| phase(p) == "Failed").await;
    let terminated = &main_status(&failed)["state"]["terminated"];
    assert_eq!(terminated["exitCode"], 3);
    assert_eq!(terminated["reason"], "Error");
    assert_eq!(terminated["message"], "disk full\n");
    assert_eq!(main_status(&failed)["restartCount"], 0);
}

#[tokio::test]
async fn a_killed_process_is_restarted_and_its_previous_logs_kept() {
    let h = cluster().await;
    create(
        &h,
        shell_pod("restarts", "echo started; exec sleep 300", "Always"),
    )
    .await;
    let running = await_pod(&h, "restarts", "run", is_running).await;
    let pid = pid_of(&running);
    // Running is not yet printed: kill the first instance only once its line is in the log.
    assert_eq!(first_followed_line(&h, "restarts").await, "started");
    // SAFETY: signalling a process id read from the pod status; no memory is involved.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let restarted = await_pod(&h, "restarts", "restart", move |p| {
        main_status(p)["restartCount"] == 1 && is_running(p) && pid_of(p) != pid
    })
    .await;
    let last = &main_status(&restarted)["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 137, "{last}");
    assert_eq!(phase(&restarted), "Running");
    assert_eq!(
        h.kubectl_ok(&["logs", "restarts", "--previous"]).await,
        "started\n"
    );
    // The new instance may not have printed yet: follow its log for the first line.
    assert_eq!(first_followed_line(&h, "restarts").await, "started");
}

/// The first line `kubectl logs -f` shows for the pod.
async fn first_followed_line(h: &Harness, pod: &str) -> String {
    let mut follow = h.kubectl_command(&["logs", "-f", pod]);
    follow.stdout(std::process::Stdio::piped());
    let mut child = follow.spawn().expect("kubectl starts");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line()).await;
    let _ = child.kill().await;
    match line {
        Ok(Ok(Some(line))) => line,
        other => panic!("kubectl logs -f {pod} showed no line: {other:?}"),
    }
}

#[tokio::test]
async fn a_crashing_container_backs_off() {
    let h = cluster().await;
    create(&h, shell_pod("crashes", "exit 1", "OnFailure")).await;
    let backing_off = await_pod(&h, "crashes", "back off", |p| {
        main_status(p)["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })
    .await;
    assert!(main_status(&backing_off)["lastState"]["terminated"]["exitCode"] == 1);
    await_pod(&h, "crashes", "restart twice", |p| {
        main_status(p)["restartCount"].as_u64() >= Some(2)
    })
    .await;
}

#[tokio::test]
async fn a_readiness_probe_makes_an_http_server_ready() {
    let h = cluster().await;
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web"},
        "spec": {
            "nodeName": "local-cpu",
            "containers": [{
                "name": "web", "image": "python:3.12",
                "command": ["python3", "-m", "http.server", "8080", "--bind", "$(POD_IP)"],
                "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 30},
            }],
        },
    });
    create(&h, pod).await;
    let ready = await_pod(&h, "web", "become ready", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    assert_eq!(main_status(&ready)["ready"], true);
    let ip = ready.status.and_then(|s| s.pod_ip).expect("a pod IP");
    let mut stream = tokio::net::TcpStream::connect((ip.as_str(), 8080))
        .await
        .expect("the server listens on the pod IP");
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET / HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut response)
        .await
        .unwrap();
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
}

#[tokio::test]
async fn an_unknown_image_waits_with_err_image_pull() {
    let h = cluster().await;
    let mut pod = shell_pod("unknown", "true", "Never");
    pod["spec"]["containers"][0]["image"] = json!("registry.example/team/nginx:1.25");
    create(&h, pod).await;
    let waiting = await_pod(&h, "unknown", "report ErrImagePull", |p| {
        main_status(p)["state"]["waiting"]["reason"] == "ErrImagePull"
    })
    .await;
    assert_eq!(phase(&waiting), "Pending");
    let message = main_status(&waiting)["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        message.contains("registry.example/team/nginx:1.25") && message.contains("busybox"),
        "{message}"
    );
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(h.cluster.client(), "default");
    let mut failures = watcher(
        events,
        watcher::Config::default().fields("involvedObject.name=unknown"),
    )
    .applied_objects()
    .filter_map(|e| futures::future::ready(e.ok()))
    .filter(|e| futures::future::ready(e.reason.as_deref() == Some("Failed")))
    .boxed();
    let failed = tokio::time::timeout(WAIT, failures.next())
        .await
        .ok()
        .flatten()
        .expect("a Failed event is recorded");
    assert!(
        failed
            .message
            .unwrap_or_default()
            .starts_with("ErrImagePull: ")
    );
    let described = h.kubectl_ok(&["describe", "pod", "unknown"]).await;
    assert!(described.contains("ErrImagePull"), "{described}");
    h.kubectl_ok(&["delete", "pod", "unknown", "--timeout=60s"])
        .await;
}

#[tokio::test]
async fn deleting_a_pod_stops_its_processes_and_removes_it() {
    let h = cluster().await;
    create(&h, shell_pod("sleeper", "sleep 300 & sleep 301", "Always")).await;
    let running = await_pod(&h, "sleeper", "run", is_running).await;
    let pid = pid_of(&running);
    // The background sleep has started once the shell has forked the foreground one.
    assert!(!live_group_members(pid).is_empty());
    h.kubectl_ok(&["delete", "pod", "sleeper", "--timeout=60s"])
        .await;
    assert_eq!(live_group_members(pid), Vec::<u32>::new());
    assert!(pods(&h).get_opt("sleeper").await.unwrap().is_none());
}

#[tokio::test]
async fn a_process_ignoring_sigterm_is_killed_after_the_grace_period() {
    let h = cluster().await;
    create(
        &h,
        shell_pod(
            "stubborn",
            "trap '' TERM; echo trapped; sleep 300 & wait",
            "Always",
        ),
    )
    .await;
    let running = await_pod(&h, "stubborn", "run", is_running).await;
    let pid = pid_of(&running);
    let mut events = watcher(
        pods(&h),
        watcher::Config::default().fields("metadata.name=stubborn"),
    )
    .boxed();
    let listed = tokio::time::timeout(WAIT, async {
        while let Some(Ok(event)) = events.next().await {
            if matches!(event, watcher::Event::InitDone) {
                return true;
            }
        }
        false
    });
    assert_eq!(listed.await, Ok(true), "the pod watch starts");
    pods(&h)
        .delete("stubborn", &DeleteParams::default())
        .await
        .expect("delete accepted");
    let mut seen: Vec<Pod> = Vec::new();
    let deleted = tokio::time::timeout(WAIT, async {
        while let Some(Ok(event)) = events.next().await {
            match event {
                watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => seen.push(pod),
                watcher::Event::Delete(_) => return true,
                _ => {}
            }
        }
        false
    })
    .await;
    assert_eq!(deleted, Ok(true), "the pod was removed");
    let terminating = seen
        .iter()
        .find(|p| p.metadata.deletion_timestamp.is_some());
    assert!(
        terminating.is_some(),
        "the pod was never seen terminating: {seen:#?}"
    );
    assert_eq!(
        terminating.unwrap().metadata.deletion_grace_period_seconds,
        Some(2)
    );
    let last = seen.last().expect("events");
    assert_eq!(main_status(last)["state"]["terminated"]["exitCode"], 137);
    await_gone(&h, "stubborn").await;
    assert_eq!(live_group_members(pid), Vec::<u32>::new());
}

#[tokio::test]
async fn shutting_down_the_cluster_kills_every_process() {
    let h = cluster().await;
    create(&h, shell_pod("a", "sleep 300 & sleep 301", "Always")).await;
    create(&h, shell_pod("b", "exec sleep 302", "Never")).await;
    let a = pid_of(&await_pod(&h, "a", "run", is_running).await);
    let b = pid_of(&await_pod(&h, "b", "run", is_running).await);
    assert_eq!(h.cluster.running_processes(), 2);
    let Harness { cluster, .. } = h;
    cluster.shutdown().await.expect("the cluster stops");
    assert_eq!(live_group_members(a), Vec::<u32>::new());
    assert_eq!(live_group_members(b), Vec::<u32>::new());
}

#[tokio::test]
async fn a_gpu_pod_runs_on_the_gpu_node() {
    let h = cluster().await;
    let mut pod = shell_pod("gpu", "echo on $NODE with $GPUS gpus", "Never");
    pod["spec"]["nodeName"] = json!("local-gpu");
    pod["spec"]["tolerations"] =
        json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]);
    pod["spec"]["containers"][0]["resources"] = json!({"limits": {"nvidia.com/gpu": "1"}});
    pod["spec"]["containers"][0]["env"] = json!([
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "GPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.nvidia.com/gpu"}}},
    ]);
    create(&h, pod).await;
    await_pod(&h, "gpu", "succeed", |p| phase(p) == "Succeeded").await;
    assert_eq!(
        h.kubectl_ok(&["logs", "gpu"]).await,
        "on local-gpu with 1 gpus\n"
    );
}

#[tokio::test]
async fn env_sources_and_volume_files_reach_the_process() {
    let h = cluster().await;
    h.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=token=s3cr3t",
    ])
    .await;
    h.kubectl_ok(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=greeting=hello",
        "--from-literal=app.conf=mode=fast",
    ])
    .await;
    let script = "echo \"$GREETING $TOKEN cpu=$CPU out=$OUT\"; cat /etc/creds/token; echo; cat /etc/app/app.conf; echo; \
                  echo kept > /data/file; cat $(OUT)/file";
    let mut pod = shell_pod("env", script, "Never");
    pod["spec"]["volumes"] = json!([
        {"name": "creds", "secret": {"secretName": "creds"}},
        {"name": "app", "configMap": {"name": "settings", "items": [{"key": "app.conf", "path": "app.conf"}]}},
        {"name": "scratch", "emptyDir": {}},
    ]);
    pod["spec"]["containers"][0]["volumeMounts"] = json!([
        {"name": "creds", "mountPath": "/etc/creds"},
        {"name": "app", "mountPath": "/etc/app"},
        {"name": "scratch", "mountPath": "/data"},
    ]);
    pod["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "250m"}});
    pod["spec"]["containers"][0]["env"] = json!([
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
        {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
        {"name": "OUT", "value": "/data"},
    ]);
    create(&h, pod).await;
    let done = await_pod(&h, "env", "finish", |p| {
        matches!(phase(p), "Succeeded" | "Failed")
    })
    .await;
    let logs = h.kubectl_ok(&["logs", "env"]).await;
    assert_eq!(phase(&done), "Succeeded", "{logs}");
    let mut lines = logs.lines();
    let first = lines.next().unwrap_or_default();
    assert!(first.starts_with("hello s3cr3t cpu=250 out=/"), "{logs}");
    assert!(
        !first.ends_with("out=/data"),
        "the mount path was not rewritten: {logs}"
    );
    assert_eq!(
        lines.collect::<Vec<_>>(),
        ["s3cr3t", "mode=fast", "kept"],
        "{logs}"
    );
}

#[tokio::test]
async fn a_missing_secret_holds_the_container_until_it_exists() {
    let h = cluster().await;
    let mut pod = shell_pod("later", "echo $TOKEN", "Never");
    pod["spec"]["containers"][0]["env"] =
        json!([{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "token"}}}]);
    create(&h, pod).await;
    let waiting = await_pod(&h, "later", "report the missing secret", |p| {
        main_status(p)["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    })
    .await;
    let message = main_status(&waiting)["state"]["waiting"]["message"].to_string();
    assert!(
        message.contains("secret") && message.contains("late"),
        "{message}"
    );
    h.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "late",
        "--from-literal=token=now",
    ])
    .await;
    await_pod(&h, "later", "succeed", |p| phase(p) == "Succeeded").await;
    assert_eq!(h.kubectl_ok(&["logs", "later"]).await, "now\n");
}

#[tokio::test]
async fn kubectl_logs_follow_streams_new_lines() {
    let h = cluster().await;
    create(
        &h,
        shell_pod(
            "ticker",
            "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
            "Always",
        ),
    )
    .await;
    await_pod(&h, "ticker", "run", is_running).await;
    let mut follow = h.kubectl_command(&["logs", "-f", "ticker"]);
    follow
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = follow.spawn().expect("kubectl starts");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let streamed = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line.clone());
            if line == "tick 10" {
                return true;
            }
        }
        false
    })
    .await;
    let _ = child.kill().await;
    assert_eq!(streamed, Ok(true), "kubectl logs -f showed only {seen:?}");
    assert_eq!(seen.first().map(String::as_str), Some("tick 0"));
}

#[tokio::test]
async fn a_pod_bound_after_creation_runs() {
    let h = cluster().await;
    let mut pod = shell_pod("bound-later", "echo placed on $(NODE)", "Never");
    pod["spec"]["nodeName"] = Value::Null;
    // Nobody else places it: the test binds it by setting spec.nodeName, as a binding does.
    pod["spec"]["schedulerName"] = json!("manual");
    pod["spec"]["containers"][0]["env"] =
        json!([{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]);
    create(&h, pod).await;
    let unbound = pods(&h).get("bound-later").await.unwrap();
    assert_eq!(phase(&unbound), "", "an unbound pod is left alone");
    h.kubectl_ok(&[
        "patch",
        "pod",
        "bound-later",
        "-p",
        r#"{"spec":{"nodeName":"local-cpu"}}"#,
    ])
    .await;
    await_pod(&h, "bound-later", "succeed", |p| phase(p) == "Succeeded").await;
    assert_eq!(
        h.kubectl_ok(&["logs", "bound-later"]).await,
        "placed on local-cpu\n"
    );
}

#[tokio::test]
async fn a_persisted_cluster_runs_its_pods_again_after_a_restart() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let start = || async {
        let mut config = Config::new(dir.path().join("data"));
        config.persist = true;
        configure(&mut config);
        LocalCluster::start(config)
            .await
            .expect("the cluster starts")
    };
    let first = start().await;
    let api: Api<Pod> = Api::namespaced(first.client(), "default");
    let pod =
        serde_json::from_value(shell_pod("durable", "echo up; exec sleep 300", "Always")).unwrap();
    api.create(&PostParams::default(), &pod)
        .await
        .expect("created");
    let before = await_pod_in(api, "durable", "run", is_running).await;
    let old_pid = pid_of(&before);
    first.shutdown().await.expect("the cluster stops");
    assert_eq!(live_group_members(old_pid), Vec::<u32>::new());

    let second = start().await;
    let api: Api<Pod> = Api::namespaced(second.client(), "default");
    let after = await_pod_in(api, "durable", "run again", move |p| {
        is_running(p) && pid_of(p) != old_pid
    })
    .await;
    let ip = |p: &Pod| p.status.as_ref().and_then(|s| s.pod_ip.clone());
    assert_eq!(ip(&after), ip(&before), "the pod keeps its IP");
    let new_pid = pid_of(&after);
    second.shutdown().await.expect("the cluster stops");
    assert_eq!(live_group_members(new_pid), Vec::<u32>::new());
}

#[tokio::test]
async fn a_changed_node_config_replaces_the_saved_nodes() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = |nodes: Vec<aigc_local_cluster::NodeConfig>| {
        let mut config = Config::new(dir.path().join("data"));
        config.persist = true;
        config.nodes = nodes;
        config
    };
    let first = LocalCluster::start(config(vec![
        aigc_local_cluster::NodeConfig::gpu("local-cpu", 1),
        aigc_local_cluster::NodeConfig::cpu("other"),
    ]))
    .await
    .expect("the cluster starts");
    first.shutdown().await.expect("the cluster stops");
    let mut small = aigc_local_cluster::NodeConfig::cpu("local-cpu");
    small.capacity.insert("cpu".into(), "2".into());
    let second = LocalCluster::start(config(vec![small]))
        .await
        .expect("the cluster starts again");
    let nodes: Api<Node> = Api::all(second.client());
    let names: Vec<String> = nodes
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert_eq!(names, ["local-cpu"]);
    let node = nodes.get("local-cpu").await.unwrap();
    let capacity = node.status.unwrap().capacity.unwrap();
    assert_eq!(capacity["cpu"].0, "2");
    assert!(!capacity.contains_key("nvidia.com/gpu"), "{capacity:?}");
    let labels = node.metadata.labels.unwrap_or_default();
    assert!(!labels.contains_key("nvidia.com/gpu.product"), "{labels:?}");
    assert!(node.spec.unwrap().taints.unwrap_or_default().is_empty());
    second.shutdown().await.expect("the cluster stops");
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_container() {
    let h = cluster().await;
    let mut pod = shell_pod("unhealthy", "exec sleep 300", "Always");
    // Nothing listens on the port: every probe fails.
    pod["spec"]["containers"][0]["livenessProbe"] =
        json!({"tcpSocket": {"port": 9}, "periodSeconds": 1, "failureThreshold": 1});
    create(&h, pod).await;
    let restarted = await_pod(&h, "unhealthy", "be restarted", |p| {
        main_status(p)["restartCount"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(
        main_status(&restarted)["lastState"]["terminated"]["exitCode"],
        137
    );
    let events = h
        .kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=unhealthy,reason=Unhealthy",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .await;
    assert!(events.contains("Liveness probe failed"), "{events}");
}

#[tokio::test]
async fn an_exec_readiness_probe_sees_the_rewritten_volume_path() {
    let h = cluster().await;
    let mut pod = shell_pod("exec-ready", "touch /data/ready; exec sleep 300", "Always");
    pod["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    pod["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    pod["spec"]["containers"][0]["readinessProbe"] =
        json!({"exec": {"command": ["test", "-e", "/data/ready"]}, "periodSeconds": 1});
    create(&h, pod).await;
    await_pod(&h, "exec-ready", "become ready", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
}

#[tokio::test]
async fn init_containers_run_in_order_before_the_containers() {
    let h = cluster().await;
    let mut pod = shell_pod("initialized", "cat /work/steps", "Never");
    pod["spec"]["volumes"] = json!([{"name": "work", "emptyDir": {}}]);
    let mount = json!([{"name": "work", "mountPath": "/work"}]);
    pod["spec"]["containers"][0]["volumeMounts"] = mount.clone();
    pod["spec"]["initContainers"] = json!([
        {"name": "first", "image": "busybox", "command": ["sh", "-c", "echo first > /work/steps"], "volumeMounts": mount},
        {"name": "second", "image": "busybox", "command": ["sh", "-c", "echo second >> /work/steps; echo init log"], "volumeMounts": mount},
    ]);
    create(&h, pod).await;
    let done = await_pod(&h, "initialized", "succeed", |p| phase(p) == "Succeeded").await;
    assert_eq!(condition(&done, "Initialized").as_deref(), Some("True"));
    assert_eq!(
        h.kubectl_ok(&["logs", "initialized"]).await,
        "first\nsecond\n"
    );
    assert_eq!(
        h.kubectl_ok(&["logs", "initialized", "-c", "second"]).await,
        "init log\n"
    );
}

#[tokio::test]
async fn a_failed_init_container_fails_the_pod_without_starting_the_containers() {
    let h = cluster().await;
    let mut pod = shell_pod("init-fails", "echo never", "Never");
    pod["spec"]["initContainers"] =
        json!([{"name": "setup", "image": "busybox", "command": ["sh", "-c", "exit 4"]}]);
    create(&h, pod).await;
    let failed = await_pod(&h, "init-fails", "fail", |p| phase(p) == "Failed").await;
    assert_eq!(
        main_status(&failed)["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    assert_eq!(condition(&failed, "Initialized").as_deref(), Some("False"));
    let row = h
        .kubectl_ok(&["get", "pod", "init-fails", "--no-headers"])
        .await;
    assert_eq!(row.split_whitespace().nth(2), Some("Init:Error"), "{row}");
}
