//! The process kubelet: runs the pods bound to simulated nodes as local processes.
//!
//! It watches all pods through the cluster's own API (so it sees a pod whose `spec.nodeName`
//! is set later by a binding) and gives each pod on one of its nodes a worker
//! ([`pod_worker`]). What it does, and where it differs from a real kubelet:
//!
//! - **Images** name programs ([`images`]): `aigc-worker`/`aigc-operator` images run those
//!   binaries from the binary directory, configured mappings add others; an unknown image
//!   leaves the container waiting with `ErrImagePull` and a message listing the known images.
//!   The mapped executable replaces the image's entrypoint: a container's `command[0]` becomes
//!   the process's `argv[0]` and the rest of `command` plus `args` its arguments.
//! - **Processes** get a clean environment (`PATH`, `HOSTNAME`, `HOME` = the pod's working
//!   directory, then the container's `envFrom` and `env` with `valueFrom` and `$(VAR)`
//!   expansion), run in their own process group with `PR_SET_PDEATHSIG`, and are killed with
//!   their pod, on [`crate::LocalCluster::shutdown`] and when the cluster is dropped. There is
//!   no isolation: no namespaces, cgroups or resource limits.
//! - **Networking**: each pod gets an IP from 127.1.0.0/16 (`status.podIP`); programs must
//!   listen on it (e.g. `--listen $(POD_IP):8080`). Ports are not isolated between pods.
//! - **Volumes** are host directories ([`prepare`]): emptyDir per pod, a persistent directory
//!   per PersistentVolumeClaim, hostPath under the configured root, secret and configMap keys
//!   as files. Since a process sees no mounts, every occurrence of a `mountPath` (and the
//!   `terminationMessagePath`) in command, args and env values is rewritten to the host path
//!   ([`expand`]).
//! - **Status**: container states with exit codes, termination messages (max 4096 bytes,
//!   `FallbackToLogsOnError`), restart counts and last states; readiness and liveness probes
//!   (`httpGet`, `tcpSocket`, `exec`; HTTPS probes only check the connection); pod phase and
//!   the `PodScheduled`, `Initialized`, `ContainersReady` and `Ready` conditions. Restarts
//!   follow `restartPolicy`: the first at once, then 10s (configurable), doubling to 5 minutes,
//!   reported as `CrashLoopBackOff`. Init containers run one after another before the
//!   containers, each until it succeeds (once, with `restartPolicy: Never`; a failure then
//!   fails the pod). Startup probes, sidecar (restartable init) containers and ephemeral
//!   containers are not supported.
//! - **Deletion**: a pod deleted with a grace period keeps running with its
//!   `deletionTimestamp` until its processes exit after SIGTERM (SIGKILL when the grace period
//!   runs out); then the kubelet deletes it with grace 0 (finalizers still hold it).
//! - **Events** (`Started`, `Failed` for unresolvable images or config, `BackOff`,
//!   `Unhealthy`, `Killing`) are recorded on the pod for `kubectl describe`.
//! - **Logs** go to files per container instance ([`logs`]), served by the `pods/log`
//!   subresource.

pub mod container;
pub mod events;
pub mod expand;
pub mod images;
pub mod logs;
pub mod pod_worker;
pub mod prepare;
pub mod probes;
pub mod process;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use crate::nodes::NodeConfig;

/// Pod IPs: 127.1.0.1 to 127.1.255.254, handed out in turn so an address is not reused at once.
#[derive(Debug, Default)]
pub struct IpPool {
    inner: Mutex<IpPoolState>,
}

#[derive(Debug, Default)]
struct IpPoolState {
    by_pod: HashMap<String, u16>,
    taken: HashSet<u16>,
    next: u16,
}

const POOL_PREFIX: [u8; 2] = [127, 1];

fn address(host: u16) -> String {
    let [high, low] = host.to_be_bytes();
    Ipv4Addr::new(POOL_PREFIX[0], POOL_PREFIX[1], high, low).to_string()
}

fn host_part(ip: &str) -> Option<u16> {
    let ip: Ipv4Addr = ip.parse().ok()?;
    let [a, b, high, low] = ip.octets();
    let host = u16::from_be_bytes([high, low]);
    ([a, b] == POOL_PREFIX && host != 0 && host != u16::MAX).then_some(host)
}

impl IpPool {
    /// The pod's address: the one it has, `preferred` when free and in the pool, else the next free.
    pub fn allocate(&self, pod_uid: &str, preferred: Option<&str>) -> String {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(host) = state.by_pod.get(pod_uid) {
            return address(*host);
        }
        let host = preferred
            .and_then(host_part)
            .filter(|h| !state.taken.contains(h))
            .unwrap_or_else(|| {
                loop {
                    state.next = state.next.wrapping_add(1);
                    let candidate = state.next;
                    if candidate != 0 && candidate != u16::MAX && !state.taken.contains(&candidate)
                    {
                        break candidate;
                    }
                }
            });
        state.taken.insert(host);
        state.by_pod.insert(pod_uid.to_owned(), host);
        address(host)
    }

    /// Return the pod's address to the pool.
    pub fn release(&self, pod_uid: &str) {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(host) = state.by_pod.remove(pod_uid) {
            state.taken.remove(&host);
        }
    }
}

/// What every pod worker shares.
pub struct Context {
    /// Client of the cluster's own API.
    pub client: kube::Client,
    /// The simulated nodes this kubelet runs pods for.
    pub nodes: Vec<NodeConfig>,
    /// Image resolution.
    pub images: images::Images,
    /// Pod, claim and hostPath directories.
    pub dirs: prepare::Dirs,
    /// Container logs.
    pub logs: logs::LogDir,
    /// Pod IPs.
    pub ips: IpPool,
    /// Running process groups.
    pub processes: Arc<process::ProcessTable>,
    /// First non-zero restart back-off.
    pub backoff_base: Duration,
}

fn runs_here(ctx: &Context, pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|node| crate::nodes::find(&ctx.nodes, node).is_some())
}

/// Watch pods and run those on the simulated nodes until `stop` turns true; then stop every
/// container and return once all are gone.
pub async fn run(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let events = watcher(pods, watcher::Config::default()).default_backoff();
    let mut events = std::pin::pin!(events);
    let mut workers: HashMap<String, watch::Sender<Arc<Pod>>> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut relisted: Option<HashSet<String>> = None;
    loop {
        let event = tokio::select! {
            _ = crate::until_stopped(&mut stop) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            event = events.next() => event,
        };
        let pod = match event {
            None => break,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watching pods failed; retrying");
                continue;
            }
            Some(Ok(watcher::Event::Init)) => {
                relisted = Some(HashSet::new());
                continue;
            }
            Some(Ok(watcher::Event::InitDone)) => {
                if let Some(seen) = relisted.take() {
                    workers.retain(|uid, _| seen.contains(uid));
                }
                continue;
            }
            Some(Ok(watcher::Event::Delete(pod))) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    workers.remove(uid);
                }
                continue;
            }
            Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => pod,
        };
        let Some(uid) = pod.metadata.uid.clone() else {
            continue;
        };
        if let Some(seen) = relisted.as_mut() {
            seen.insert(uid.clone());
        }
        if !runs_here(&ctx, &pod) {
            continue;
        }
        let pod = Arc::new(pod);
        match workers.get(&uid) {
            Some(sender) => {
                sender.send_replace(pod);
            }
            None => {
                let (sender, receiver) = watch::channel(pod);
                workers.insert(uid, sender);
                tasks.spawn(pod_worker::run(ctx.clone(), receiver, stop.clone()));
            }
        }
    }
    // Workers see the stop themselves; their senders stay until they are done, so none
    // mistakes the shutdown for its pod's removal.
    while tasks.join_next().await.is_some() {}
    drop(workers);
    ctx.processes.kill_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ips_are_unique_loopback_addresses_and_kept_per_pod() {
        let pool = IpPool::default();
        let a = pool.allocate("a", None);
        let b = pool.allocate("b", None);
        assert_eq!(a, "127.1.0.1");
        assert_eq!(b, "127.1.0.2");
        assert_eq!(pool.allocate("a", None), a);
        assert_eq!(pool.allocate("c", Some("127.1.0.2")), "127.1.0.3");
        assert_eq!(pool.allocate("d", Some("127.1.7.7")), "127.1.7.7");
        assert_eq!(pool.allocate("e", Some("10.0.0.1")), "127.1.0.4");
        pool.release("a");
        assert_eq!(pool.allocate("f", Some("127.1.0.1")), "127.1.0.1");
    }
}
