//! The embedded cluster's workload control plane driven by kubectl and kube-rs: the default
//! scheduler against simulated Nodes, Deployments, Jobs and Services with their proxy. No
//! kubelet runs here, so the tests create the Nodes and play the kubelet themselves by
//! writing pod status (phase, podIP, Ready, container states) through the API.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::Harness;

const PATIENCE: Duration = Duration::from_secs(60);

/// Poll `probe` until it yields a value, failing the test after [`PATIENCE`].
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The two simulated nodes of the embedded cluster's default configuration.
async fn create_nodes(client: &Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    // Not labelled simulated: no kubelet runs their pods, the test plays it.
    let base_labels =
        |name: &str| json!({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"});
    let mut gpu_labels = base_labels("local-gpu");
    gpu_labels["nvidia.com/gpu.product"] = json!("NVIDIA-H100-80GB-HBM3");
    gpu_labels["nvidia.com/gpu.count"] = json!("2");
    let specs = [
        (
            "local-cpu",
            base_labels("local-cpu"),
            json!({}),
            json!({"cpu": "8", "memory": "32Gi", "pods": "110"}),
        ),
        (
            "local-gpu",
            gpu_labels,
            json!({"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]}),
            json!({"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": "2"}),
        ),
    ];
    for (name, labels, spec, resources) in specs {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": spec,
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
        let status = json!({"status": {
            "capacity": resources, "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        }});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
    }
}

fn pod(name: &str, spec: Value) -> Pod {
    let mut full = json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "main", "image": "aigc-worker"}]}});
    json_patch::merge(&mut full["spec"], &spec);
    serde_json::from_value(full).unwrap()
}

fn gpu_request() -> Value {
    json!({"containers": [{"name": "main", "image": "aigc-worker", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]})
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

fn scheduled_condition(pod: &Pod) -> Option<(String, String, String)> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")?;
    Some((
        condition.status.clone(),
        condition.reason.clone().unwrap_or_default(),
        condition.message.clone().unwrap_or_default(),
    ))
}

/// Write what a kubelet writes for a running, Ready pod.
async fn mark_running(pods: &Api<Pod>, name: &str, ip: &str) {
    let now = k8s_now();
    let status = json!({"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1", "startTime": now,
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now},
                       {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}],
        "containerStatuses": [{"name": "main", "image": "aigc-worker", "imageID": "", "ready": true,
                               "restartCount": 0, "started": true, "state": {"running": {"startedAt": now}}}],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

/// Write what a kubelet writes when the pod's only container exited with `exit_code`.
async fn mark_exited(pods: &Api<Pod>, name: &str, exit_code: i32) {
    let now = k8s_now();
    let phase = if exit_code == 0 {
        "Succeeded"
    } else {
        "Failed"
    };
    let reason = if exit_code == 0 { "Completed" } else { "Error" };
    let status = json!({"status": {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}],
        "containerStatuses": [{"name": "main", "image": "aigc-worker", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "reason": reason, "startedAt": now, "finishedAt": now}}}],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

fn k8s_now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Play the kubelet for every pod bound to a node: Running and Ready with an IP from
/// 127.1.`subnet`.0/24. Ends with the test's runtime.
fn run_fake_kubelet(client: Client, subnet: u8) {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::all(client.clone());
        let mut next = 2u8;
        let mut events = watcher(pods, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(pod)) = events.next().await {
            let placed = !node_of(&pod).is_empty();
            let started = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_ref())
                .is_some();
            if placed && !started && pod.metadata.deletion_timestamp.is_none() {
                let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap());
                mark_running(&api, &pod.name_any(), &format!("127.1.{subnet}.{next}")).await;
                next = next.wrapping_add(1).max(2);
            }
        }
    });
}

#[tokio::test]
async fn gpu_pods_go_to_the_gpu_node_only_when_they_tolerate_its_taint() {
    let h = Harness::start_with(|c| c.nodes.clear()).await;
    let client = h.cluster.client();
    create_nodes(&client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // Pinned by its creator: never moved, never marked, although it does not fit there.
    let mut pinned_spec = gpu_request();
    pinned_spec["nodeName"] = json!("local-cpu");
    pods.create(&PostParams::default(), &pod("pinned", pinned_spec))
        .await
        .unwrap();

    let mut tolerant = gpu_request();
    tolerant["tolerations"] =
        json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]);
    pods.create(&PostParams::default(), &pod("trainer", tolerant))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("careless", gpu_request()))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("plain", json!({})))
        .await
        .unwrap();

    let trainer = eventually("the tolerating GPU pod to be bound", || async {
        Some(pods.get("trainer").await.unwrap()).filter(|p| !node_of(p).is_empty())
    })
    .await;
    assert_eq!(node_of(&trainer), "local-gpu");
    assert_eq!(
        scheduled_condition(&trainer).map(|c| c.0),
        Some("True".to_owned())
    );
    let plain = eventually("the CPU pod to be bound", || async {
        Some(pods.get("plain").await.unwrap()).filter(|p| !node_of(p).is_empty())
    })
    .await;
    assert_eq!(
        node_of(&plain),
        "local-cpu",
        "untolerated taints keep CPU pods off the GPU node"
    );

    let expected = "0/2 nodes are available: 1 Insufficient nvidia.com/gpu, 1 node(s) had untolerated taint {nvidia.com/gpu: present}.";
    eventually("the intolerant GPU pod to be explained", || async {
        let careless = pods.get("careless").await.unwrap();
        (scheduled_condition(&careless)
            == Some(("False".into(), "Unschedulable".into(), expected.into())))
        .then_some(())
    })
    .await;
    let shown = h
        .kubectl_ok(&[
            "get",
            "pod",
            "careless",
            "-o",
            "jsonpath={.status.phase} {.status.conditions[0].message}",
        ])
        .await;
    assert_eq!(shown, format!("Pending {expected}"));
    assert_eq!(node_of(&pods.get("careless").await.unwrap()), "");
    let described = h.kubectl_ok(&["describe", "pod", "careless"]).await;
    assert!(
        described.contains("FailedScheduling") && described.contains(expected),
        "{described}"
    );

    let pinned = pods.get("pinned").await.unwrap();
    assert_eq!(node_of(&pinned), "local-cpu");
    assert_eq!(
        scheduled_condition(&pinned),
        None,
        "the scheduler leaves pinned pods alone"
    );

    // A bound pod cannot be bound again.
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "trainer"},
                         "target": {"apiVersion": "v1", "kind": "Node", "name": "local-cpu"}});
    let response = h
        .http(
            "POST",
            "/api/v1/namespaces/default/pods/trainer/binding",
            &[("Content-Type", "application/json")],
            binding.to_string().as_bytes(),
        )
        .await;
    assert_eq!(response.status, 409, "{}", response.body);
    assert_eq!(
        response.body["message"],
        "Operation cannot be fulfilled on pods \"trainer\": pod trainer is already assigned to node \"local-gpu\""
    );

    // Nodes changing is a reason to try again: lifting the taint lets the pod in.
    h.kubectl_ok(&[
        "taint",
        "node",
        "local-gpu",
        "nvidia.com/gpu=present:NoSchedule-",
    ])
    .await;
    let careless = eventually(
        "the intolerant GPU pod to be bound once the taint is gone",
        || async { Some(pods.get("careless").await.unwrap()).filter(|p| !node_of(p).is_empty()) },
    )
    .await;
    assert_eq!(node_of(&careless), "local-gpu");

    // Both GPUs are taken now; a third GPU pod waits until one is freed.
    pods.create(&PostParams::default(), &pod("third", gpu_request()))
        .await
        .unwrap();
    eventually("the third GPU pod to be unschedulable", || async {
        let third = pods.get("third").await.unwrap();
        scheduled_condition(&third)
            .filter(|c| c.2 == "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.")
    })
    .await;
    mark_exited(&pods, "trainer", 0).await;
    let third = eventually("the third GPU pod to get the freed GPU", || async {
        Some(pods.get("third").await.unwrap()).filter(|p| !node_of(p).is_empty())
    })
    .await;
    assert_eq!(node_of(&third), "local-gpu");
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  strategy:
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: main, image: 'aigc-worker:1'}
";

async fn owned_pods(client: &Client, selector: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
}

fn image_of(pod: &Pod) -> String {
    pod.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

#[tokio::test]
async fn deployments_roll_out_scale_and_go_with_their_replica_sets_and_pods() {
    let h = Harness::start_with(|c| c.nodes.clear()).await;
    let client = h.cluster.client();
    create_nodes(&client).await;
    run_fake_kubelet(client.clone(), 10);
    h.kubectl_stdin_ok(&["apply", "-f", "-"], Some(DEPLOYMENT))
        .await;
    let out = h
        .kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    h.kubectl_ok(&[
        "wait",
        "--for=condition=Available",
        "deployment/web",
        "--timeout=60s",
    ])
    .await;

    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let first = replica_sets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(first.len(), 1);
    let rs = &first[0];
    let hash = rs.labels()["pod-template-hash"].clone();
    assert_eq!(rs.name_any(), format!("web-{hash}"));
    assert_eq!(rs.owner_references()[0].kind, "Deployment");
    assert_eq!(rs.annotations()["deployment.kubernetes.io/revision"], "1");
    let pods = owned_pods(&client, "app=web").await;
    assert_eq!(pods.len(), 2);
    for pod in &pods {
        assert_eq!(pod.owner_references()[0].name, rs.name_any());
        assert_eq!(pod.labels()["pod-template-hash"], hash);
        assert_eq!(node_of(pod), "local-cpu");
    }
    let deployment = h.get_json(&["deployment", "web"]).await;
    assert_eq!(deployment["status"]["readyReplicas"], 2);
    assert_eq!(deployment["status"]["updatedReplicas"], 2);
    assert_eq!(deployment["status"]["observedGeneration"], 1);

    // A template change rolls every pod over to a new ReplicaSet.
    h.kubectl_ok(&["set", "image", "deployment/web", "main=aigc-worker:2"])
        .await;
    let out = h
        .kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let pods = eventually("the old pods to be gone", || async {
        let pods = owned_pods(&client, "app=web").await;
        (pods.len() == 2).then_some(pods)
    })
    .await;
    assert!(
        pods.iter().all(|p| image_of(p) == "aigc-worker:2"),
        "{pods:?}"
    );
    let sets = replica_sets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(sets.len(), 2);
    let replicas: BTreeSet<(String, i32)> = sets
        .iter()
        .map(|rs| {
            (
                rs.annotations()["deployment.kubernetes.io/revision"].clone(),
                rs.spec.as_ref().unwrap().replicas.unwrap(),
            )
        })
        .collect();
    assert_eq!(
        replicas,
        BTreeSet::from([("1".to_owned(), 0), ("2".to_owned(), 2)])
    );

    h.kubectl_ok(&["scale", "deployment/web", "--replicas=3"])
        .await;
    h.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    eventually("three ready replicas", || async {
        let d = h.get_json(&["deployment", "web"]).await;
        (d["status"]["readyReplicas"] == 3 && d["status"]["availableReplicas"] == 3).then_some(())
    })
    .await;

    let described = h.kubectl_ok(&["describe", "deployment", "web"]).await;
    assert!(
        described.contains("ScalingReplicaSet") && described.contains("Scaled up replica set web-"),
        "{described}"
    );

    // A selector that misses its own template would make pods nobody counts: refused.
    let stray = DEPLOYMENT
        .replace("name: web\n", "name: stray\n")
        .replace("matchLabels: {app: web}", "matchLabels: {app: other}");
    let output = h.kubectl_with(&["apply", "-f", "-"], Some(&stray)).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`selector` does not match template `labels`"),
        "{stderr}"
    );

    // Orphaned ReplicaSets are adopted by the next Deployment that selects them.
    h.kubectl_ok(&["delete", "deployment", "web", "--cascade=orphan"])
        .await;
    assert_eq!(
        replica_sets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    h.kubectl_stdin_ok(&["apply", "-f", "-"], Some(DEPLOYMENT))
        .await;
    h.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    let uid = h.get_json(&["deployment", "web"]).await["metadata"]["uid"].clone();
    let sets = eventually("both ReplicaSets to be adopted", || async {
        let sets = replica_sets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        sets.iter()
            .all(|rs| rs.owner_references().iter().any(|r| r.uid == uid))
            .then_some(sets)
    })
    .await;
    assert_eq!(sets.len(), 2, "adopted, not duplicated");

    h.kubectl_ok(&["delete", "deployment", "web"]).await;
    eventually("the ReplicaSets and pods to be collected", || async {
        let sets = replica_sets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        (sets.is_empty() && owned_pods(&client, "app=web").await.is_empty()).then_some(())
    })
    .await;
}

fn job(name: &str, spec: Value) -> String {
    let mut job = json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "aigc-worker"}]}}},
    });
    json_patch::merge(&mut job["spec"], &spec);
    job.to_string()
}

/// The job's pods not yet finished, once the scheduler placed them.
async fn running_job_pods(client: &Client, job: &str) -> Vec<Pod> {
    owned_pods(client, &format!("batch.kubernetes.io/job-name={job}"))
        .await
        .into_iter()
        .filter(|p| {
            !node_of(p).is_empty()
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
        })
        .collect()
}

#[tokio::test]
async fn jobs_complete_and_fail_after_their_backoff_limit_or_deadline() {
    let h = Harness::start_with(|c| c.nodes.clear()).await;
    let client = h.cluster.client();
    create_nodes(&client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    h.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        Some(&job("ok", json!({"completions": 2, "parallelism": 1}))),
    )
    .await;
    for round in 0..2 {
        let running = eventually("a pod of the completing Job", || async {
            let running = running_job_pods(&client, "ok").await;
            (!running.is_empty()).then_some(running)
        })
        .await;
        assert_eq!(running.len(), 1, "parallelism 1 (round {round})");
        mark_exited(&pods, &running[0].name_any(), 0).await;
    }
    h.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/ok",
        "--timeout=60s",
    ])
    .await;
    let ok = h.get_json(&["job", "ok"]).await;
    assert_eq!(ok["status"]["succeeded"], 2);
    assert!(ok["status"]["completionTime"].is_string());
    assert!(ok["status"]["startTime"].is_string());
    assert_eq!(
        ok["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        ok["metadata"]["uid"]
    );

    // An Indexed Job runs one pod per index, each with its index.
    let indexed = json!({"completions": 2, "parallelism": 2, "completionMode": "Indexed"});
    h.kubectl_stdin_ok(&["apply", "-f", "-"], Some(&job("gang", indexed)))
        .await;
    let gang = eventually("both pods of the Indexed Job", || async {
        let running = running_job_pods(&client, "gang").await;
        (running.len() == 2).then_some(running)
    })
    .await;
    let indexes: BTreeSet<String> = gang
        .iter()
        .map(|p| p.annotations()["batch.kubernetes.io/job-completion-index"].clone())
        .collect();
    assert_eq!(indexes, BTreeSet::from(["0".to_owned(), "1".to_owned()]));
    for pod in &gang {
        mark_exited(&pods, &pod.name_any(), 0).await;
    }
    h.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/gang",
        "--timeout=60s",
    ])
    .await;
    assert_eq!(
        h.get_json(&["job", "gang"]).await["status"]["completedIndexes"],
        "0-1"
    );

    // ttlSecondsAfterFinished: 0 removes a finished Job and its pods.
    h.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        Some(&job("brief", json!({"ttlSecondsAfterFinished": 0}))),
    )
    .await;
    let brief = eventually("the pod of the short-lived Job", || async {
        running_job_pods(&client, "brief").await.into_iter().next()
    })
    .await;
    mark_exited(&pods, &brief.name_any(), 0).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    eventually("the finished Job to be deleted after its TTL", || async {
        let gone = jobs.get_opt("brief").await.unwrap().is_none();
        let pods_gone = owned_pods(&client, "batch.kubernetes.io/job-name=brief")
            .await
            .is_empty();
        (gone && pods_gone).then_some(())
    })
    .await;

    // backoffLimit 1: the second failure ends it, after one back-off.
    h.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        Some(&job("flaky", json!({"backoffLimit": 1}))),
    )
    .await;
    for attempt in 0..2 {
        let running = eventually("a pod of the failing Job", || async {
            let running = running_job_pods(&client, "flaky").await;
            (!running.is_empty()).then_some(running)
        })
        .await;
        assert_eq!(running.len(), 1, "attempt {attempt}");
        mark_exited(&pods, &running[0].name_any(), 1).await;
    }
    h.kubectl_ok(&[
        "wait",
        "--for=condition=failed",
        "job/flaky",
        "--timeout=60s",
    ])
    .await;
    let flaky = h.get_json(&["job", "flaky"]).await;
    assert_eq!(flaky["status"]["failed"], 2);
    let failed = flaky["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .unwrap()
        .clone();
    assert_eq!(failed["reason"], "BackoffLimitExceeded");
    assert_eq!(
        failed["message"],
        "Job has reached the specified backoff limit"
    );
    let all = owned_pods(&client, "batch.kubernetes.io/job-name=flaky").await;
    assert_eq!(all.len(), 2, "no third attempt");

    // A deadline ends a Job whose pod never finishes, and its pod goes.
    h.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        Some(&job("slow", json!({"activeDeadlineSeconds": 1}))),
    )
    .await;
    h.kubectl_ok(&[
        "wait",
        "--for=condition=failed",
        "job/slow",
        "--timeout=60s",
    ])
    .await;
    let slow: Api<Job> = Api::namespaced(client.clone(), "default");
    let slow = slow.get("slow").await.unwrap();
    let conditions = slow.status.unwrap().conditions.unwrap();
    assert_eq!(conditions[0].reason.as_deref(), Some("DeadlineExceeded"));
    eventually("the deadline-exceeded Job's pod to be deleted", || async {
        owned_pods(&client, "batch.kubernetes.io/job-name=slow")
            .await
            .is_empty()
            .then_some(())
    })
    .await;

    // A Job that restarts its pods `Always` is refused, naming the field.
    let always = job(
        "bad",
        json!({"template": {"spec": {"restartPolicy": "Always"}}}),
    );
    let output = h.kubectl_with(&["apply", "-f", "-"], Some(&always)).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""),
        "{stderr}"
    );
}

/// A TCP server answering every connection with `name`, on 127.1.`subnet`.`host`.
async fn tiny_server(subnet: u8, host: u8, name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind(("127.1.".to_owned() + &format!("{subnet}.{host}"), 0))
        .await
        .expect("binding a loopback address in 127.1.0.0/16");
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 64];
                let n = stream.read(&mut request).await.unwrap_or(0);
                let reply = format!("{name}:{}", String::from_utf8_lossy(&request[..n]));
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    address
}

/// Send `message` to `address` and read the reply; `None` if the connection is refused or
/// closed without one.
async fn exchange(address: &str, message: &str) -> Option<String> {
    let mut stream = TcpStream::connect(address).await.ok()?;
    stream.write_all(message.as_bytes()).await.ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.ok()?;
    (!reply.is_empty()).then_some(reply)
}

#[tokio::test]
async fn services_get_a_cluster_ip_endpoints_and_a_proxy_to_ready_pods() {
    let h = Harness::start_with(|c| c.nodes.clear()).await;
    let client = h.cluster.client();
    create_nodes(&client).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let blue = tiny_server(77, 1, "blue").await;
    let green = tiny_server(77, 2, "green").await;
    // Both servers listen on their own port; a named target port resolves per pod.
    for (name, address) in [("blue", blue), ("green", green)] {
        let spec = json!({
            "nodeName": "local-cpu",
            "containers": [{"name": "main", "image": "aigc-worker",
                            "ports": [{"name": "echo", "containerPort": address.port()}]}],
        });
        let mut p = pod(name, spec);
        p.metadata.labels = Some([("app".to_owned(), "echo".to_owned())].into());
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    mark_running(&pods, "blue", &blue.ip().to_string()).await;

    let service = "apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports:
  - {name: tcp, port: 18080, targetPort: echo}
";
    h.kubectl_stdin_ok(&["apply", "-f", "-"], Some(service))
        .await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let ip = services
        .get("echo")
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip
        .unwrap();
    assert!(ip.starts_with("127.2."), "{ip}");

    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    eventually("the ready pod as an endpoint", || async {
        let e = endpoints.get_opt("echo").await.unwrap()?;
        let subsets = e.subsets.unwrap_or_default();
        let subset = subsets.first()?;
        let ready = subset.addresses.as_ref()?.first()?;
        (ready.ip == blue.ip().to_string()
            && subset.ports.as_ref()?[0].port == i32::from(blue.port()))
        .then_some(())
    })
    .await;
    let listen = format!("{ip}:18080");
    let reply = eventually("the proxy to forward to the ready pod", || async {
        exchange(&listen, "hello").await
    })
    .await;
    assert_eq!(reply, "blue:hello");

    // A second Ready pod takes turns with the first.
    mark_running(&pods, "green", &green.ip().to_string()).await;
    let seen = std::sync::Mutex::new(BTreeSet::new());
    eventually("both pods to answer through the proxy", || async {
        let reply = exchange(&listen, "x").await?;
        let mut seen = seen.lock().unwrap();
        seen.insert(reply);
        (seen.len() == 2).then_some(())
    })
    .await;
    let seen = seen.into_inner().unwrap();
    assert_eq!(
        seen,
        BTreeSet::from(["blue:x".to_owned(), "green:x".to_owned()])
    );
    let slices = h
        .get_json(&["endpointslices", "-l", "kubernetes.io/service-name=echo"])
        .await;
    let slice_ips: BTreeSet<String> = slices["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["endpoints"].as_array().unwrap().iter())
        .map(|e| e["addresses"][0].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        slice_ips,
        BTreeSet::from([blue.ip().to_string(), green.ip().to_string()])
    );

    // A changed port moves the listener.
    h.kubectl_ok(&[
        "patch",
        "service",
        "echo",
        "--type=json",
        "-p",
        r#"[{"op": "replace", "path": "/spec/ports/0/port", "value": 18081}]"#,
    ])
    .await;
    let moved = format!("{ip}:18081");
    eventually("the proxy on the new port", || async {
        exchange(&moved, "y").await
    })
    .await;
    eventually("the old port to close", || async {
        TcpStream::connect(&listen).await.is_err().then_some(())
    })
    .await;

    // An address outside the range is refused; deleting the Service closes its listener.
    let outside = service
        .replace("metadata: {name: echo}", "metadata: {name: other}")
        .replace("spec:\n", "spec:\n  clusterIP: 10.0.0.1\n");
    let output = h.kubectl_with(&["apply", "-f", "-"], Some(&outside)).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("spec.clusterIP: Invalid value: \"10.0.0.1\": provided IP is not in the valid range. The range of valid IPs is 127.2.0.0/16"), "{stderr}");
    h.kubectl_ok(&["delete", "service", "echo"]).await;
    eventually("the listener to close with its Service", || async {
        TcpStream::connect(&moved).await.is_err().then_some(())
    })
    .await;
    assert!(
        endpoints.get_opt("echo").await.unwrap().is_none(),
        "Endpoints go with their Service"
    );
}

#[tokio::test]
async fn service_listeners_close_when_the_cluster_shuts_down() {
    let h = Harness::start_with(|c| c.nodes.clear()).await;
    let client = h.cluster.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let server = tiny_server(78, 1, "only").await;
    let mut p = pod("only", json!({"nodeName": "local-cpu"}));
    p.metadata.labels = Some([("app".to_owned(), "only".to_owned())].into());
    pods.create(&PostParams::default(), &p).await.unwrap();
    mark_running(&pods, "only", &server.ip().to_string()).await;
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "only"},
        "spec": {"selector": {"app": "only"}, "ports": [{"port": 18090, "targetPort": server.port()}]},
    }))
    .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let ip = services
        .create(&PostParams::default(), &service)
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip
        .unwrap();
    let listen = format!("{ip}:18090");
    let reply = eventually("the proxy to forward", || async {
        exchange(&listen, "hi").await
    })
    .await;
    assert_eq!(reply, "only:hi");

    h.cluster.shutdown().await.unwrap();
    assert!(
        TcpStream::connect(&listen).await.is_err(),
        "the listener is closed once shutdown returns"
    );
}

#[tokio::test]
async fn a_rollout_that_makes_no_progress_exceeds_its_deadline() {
    let h = Harness::start_with(|c| c.nodes.clear()).await;
    create_nodes(&h.cluster.client()).await;
    // Nobody makes these pods Ready, so the rollout cannot progress.
    let stuck = DEPLOYMENT.replace(
        "  replicas: 2\n",
        "  replicas: 1\n  progressDeadlineSeconds: 1\n",
    );
    h.kubectl_stdin_ok(&["apply", "-f", "-"], Some(&stuck))
        .await;
    let output = h
        .kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"])
        .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("deployment \"web\" exceeded its progress deadline"),
        "{stderr}"
    );
    let deployment = h.get_json(&["deployment", "web"]).await;
    let progressing = deployment["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .unwrap()
        .clone();
    assert_eq!(progressing["status"], "False");
    assert_eq!(progressing["reason"], "ProgressDeadlineExceeded");
}
