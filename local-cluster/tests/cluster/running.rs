//! The whole embedded cluster at once: the default scheduler, the Deployment and Job
//! controllers, the Service proxy and the process kubelet running real programs.

use std::time::Duration;

use serde_json::Value;

use crate::harness::Harness;
use aigc_local_cluster::{Config, ImageMapping};

const WAIT: Duration = Duration::from_secs(90);

/// The real interpreter behind `python3` (a shim would need the caller's environment).
fn python() -> String {
    let output = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is installed (scripts/install-test-deps.sh)");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

async fn cluster() -> Harness {
    Harness::start_with(|config: &mut Config| {
        config.images = vec![
            ImageMapping::new("python", python()),
            ImageMapping::new("busybox", "/bin/sh"),
        ];
        config.restart_backoff = Duration::from_secs(1);
    })
    .await
}

/// Poll `kubectl get ... -o json` until `check` returns a value.
async fn wait_for<T>(
    h: &Harness,
    args: &[&str],
    what: &str,
    check: impl Fn(&Value) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let output = h.kubectl(args).await;
        if output.status.success() {
            let value: Value = serde_json::from_slice(&output.stdout).expect("kubectl prints JSON");
            if let Some(found) = check(&value) {
                return found;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}: {value:#}");
            }
        } else if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn http_get(address: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET / HTTP/1.0\r\n\r\n")
        .await
        .expect("sending the request");
    let mut response = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut response)
        .await
        .expect("reading the response");
    response
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: web
          image: python:3.12
          command: ["python3", "-m", "http.server", "8080", "--bind", "$(POD_IP)"]
          env: [{name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
          ports: [{name: http, containerPort: 8080}]
          resources: {requests: {cpu: 100m, memory: 64Mi}}
          readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 8080, targetPort: http}]
"#;

#[tokio::test]
async fn a_deployment_is_scheduled_run_ready_and_served_through_its_service_then_cleaned_up() {
    let h = cluster().await;
    h.kubectl_stdin_ok(&["apply", "-f", "-"], Some(WEB)).await;
    wait_for(
        &h,
        &["get", "deployment", "web", "-o", "json"],
        "2 ready replicas",
        |d| (d["status"]["readyReplicas"] == 2).then_some(()),
    )
    .await;
    // The default scheduler placed both on the CPU node: the GPU node's taint is not tolerated.
    let pods = h.get_json(&["pods", "-l", "app=web"]).await;
    let items = pods["items"].as_array().expect("pods");
    assert_eq!(items.len(), 2);
    for pod in items {
        assert_eq!(pod["spec"]["nodeName"], "local-cpu", "{pod:#}");
    }
    let cluster_ip = wait_for(
        &h,
        &["get", "service", "web", "-o", "json"],
        "a cluster IP",
        |s| s["spec"]["clusterIP"].as_str().map(str::to_owned),
    )
    .await;
    wait_for(
        &h,
        &["get", "endpoints", "web", "-o", "json"],
        "two endpoints",
        |e| (e["subsets"][0]["addresses"].as_array().map(Vec::len) == Some(2)).then_some(()),
    )
    .await;
    for _ in 0..4 {
        let response = http_get(&format!("{cluster_ip}:8080")).await;
        assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    }
    assert_eq!(h.cluster.running_processes(), 2);

    h.kubectl_ok(&["delete", "deployment", "web", "--wait=true"])
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while h.cluster.running_processes() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "processes left after the Deployment went"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_for(
        &h,
        &["get", "pods", "-l", "app=web", "-o", "json"],
        "no pods",
        |p| {
            p["items"]
                .as_array()
                .is_some_and(Vec::is_empty)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_job_runs_its_pods_to_completion_and_a_failing_one_backs_off_to_failure() {
    let h = cluster().await;
    let jobs = r#"
apiVersion: batch/v1
kind: Job
metadata: {name: ok, namespace: default}
spec:
  completions: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: busybox, command: ["sh", "-c", "echo done"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: broken, namespace: default}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: busybox, command: ["sh", "-c", "exit 4"]}]
"#;
    h.kubectl_stdin_ok(&["apply", "-f", "-"], Some(jobs)).await;
    h.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/ok",
        "--timeout=90s",
    ])
    .await;
    let ok = h.get_json(&["job", "ok"]).await;
    assert_eq!(ok["status"]["succeeded"], 2);
    let logs = h.kubectl_ok(&["logs", "job/ok"]).await;
    assert_eq!(logs.trim(), "done");
    h.kubectl_ok(&[
        "wait",
        "--for=condition=failed",
        "job/broken",
        "--timeout=90s",
    ])
    .await;
    let broken = h.get_json(&["job", "broken"]).await;
    assert_eq!(broken["status"]["failed"], 2, "{:#}", broken["status"]);
    let failed = broken["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Failed"))
        .cloned()
        .expect("a Failed condition");
    assert_eq!(failed["reason"], "BackoffLimitExceeded");
    let pods = h.get_json(&["pods", "-l", "job-name=broken"]).await;
    for pod in pods["items"].as_array().expect("pods") {
        assert_eq!(
            pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 4,
            "{pod:#}"
        );
    }
}
