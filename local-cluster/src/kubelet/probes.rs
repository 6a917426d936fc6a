//! Readiness and liveness probes against a container's process: `httpGet` (plain HTTP to the
//! pod IP; an `HTTPS` probe only checks that the port accepts connections), `tcpSocket`, and
//! `exec` (the command runs as a local process with the container's environment).

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Probe;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::expand::PathRewrites;

/// What a probe of one container needs to know.
#[derive(Clone, Debug)]
pub struct ProbeTarget {
    /// The pod IP probes connect to (unless a probe names a host).
    pub pod_ip: String,
    /// Named container ports.
    pub ports: HashMap<String, i32>,
    /// The container's environment, for exec probes.
    pub env: Vec<(String, String)>,
    /// Mount path rewrites, for exec probes.
    pub rewrites: PathRewrites,
    /// Working directory, for exec probes.
    pub workdir: std::path::PathBuf,
}

fn seconds(value: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(value.and_then(|v| u64::try_from(v).ok()).unwrap_or(default))
}

/// `initialDelaySeconds`.
pub fn initial_delay(probe: &Probe) -> Duration {
    seconds(probe.initial_delay_seconds, 0)
}

/// `periodSeconds` (at least one second).
pub fn period(probe: &Probe) -> Duration {
    seconds(probe.period_seconds, 10).max(Duration::from_secs(1))
}

/// `failureThreshold`.
pub fn failure_threshold(probe: &Probe) -> u32 {
    probe
        .failure_threshold
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(3)
        .max(1)
}

/// `successThreshold`.
pub fn success_threshold(probe: &Probe) -> u32 {
    probe
        .success_threshold
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(1)
        .max(1)
}

fn port(port: &IntOrString, target: &ProbeTarget) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => name
            .parse()
            .ok()
            .or_else(|| target.ports.get(name).and_then(|n| u16::try_from(*n).ok())),
    }
}

/// Run the probe once: whether it succeeded.
pub async fn check(probe: &Probe, target: &ProbeTarget) -> bool {
    let timeout = seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    let attempt = async {
        if let Some(http) = &probe.http_get {
            let host = http.host.clone().unwrap_or_else(|| target.pod_ip.clone());
            let Some(port) = port(&http.port, target) else {
                return false;
            };
            let path = http.path.clone().unwrap_or_else(|| "/".into());
            let https = http.scheme.as_deref() == Some("HTTPS");
            let headers: Vec<(String, String)> = http
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect();
            return http_get(&host, port, &path, &headers, https).await;
        }
        if let Some(tcp) = &probe.tcp_socket {
            let host = tcp.host.clone().unwrap_or_else(|| target.pod_ip.clone());
            let Some(port) = port(&tcp.port, target) else {
                return false;
            };
            return tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .is_ok();
        }
        if let Some(exec) = &probe.exec {
            return exec_succeeds(exec.command.as_deref().unwrap_or_default(), target).await;
        }
        false
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(false)
}

async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    https: bool,
) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect((host, port)).await else {
        return false;
    };
    if https {
        return true;
    }
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = Vec::new();
    let mut buffer = [0_u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .is_some_and(|code| (200..400).contains(&code))
}

async fn exec_succeeds(command: &[String], target: &ProbeTarget) -> bool {
    let Some((program, args)) = command.split_first() else {
        return false;
    };
    let status = tokio::process::Command::new(target.rewrites.rewrite(program))
        .args(args.iter().map(|a| target.rewrites.rewrite(a)))
        .env_clear()
        .envs(target.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&target.workdir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status()
        .await;
    status.is_ok_and(|s| s.success())
}

/// Probe every period; returns once `failureThreshold` consecutive probes failed.
pub async fn until_failed(probe: &Probe, target: &ProbeTarget) {
    tokio::time::sleep(initial_delay(probe)).await;
    let mut failures = 0;
    loop {
        if check(probe, target).await {
            failures = 0;
        } else {
            failures += 1;
            if failures >= failure_threshold(probe) {
                return;
            }
        }
        tokio::time::sleep(period(probe)).await;
    }
}

/// Probe every period forever, calling `report` with the readiness whenever it changes
/// (after `successThreshold` successes or `failureThreshold` failures in a row).
pub async fn report_readiness(probe: &Probe, target: &ProbeTarget, report: impl Fn(bool)) {
    tokio::time::sleep(initial_delay(probe)).await;
    let (mut ready, mut successes, mut failures) = (false, 0, 0);
    loop {
        if check(probe, target).await {
            successes += 1;
            failures = 0;
            if !ready && successes >= success_threshold(probe) {
                ready = true;
                report(true);
            }
        } else {
            failures += 1;
            successes = 0;
            if ready && failures >= failure_threshold(probe) {
                ready = false;
                report(false);
            }
        }
        tokio::time::sleep(period(probe)).await;
    }
}
