//! Simulated Nodes: what each advertises (capacity, allocatable, labels, taints), their
//! registration when the cluster starts, and their heartbeats (the `Ready` condition's
//! `lastHeartbeatTime` and a Lease in `kube-node-lease`). Running pods is the kubelet's job
//! ([`crate::kubelet`]); placing them is the scheduler's.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::Error;

/// Label every simulated node carries.
pub const SIMULATED_LABEL: &str = "node.aigc.dev/simulated";
/// Field manager of node and lease writes.
pub const FIELD_MANAGER: &str = "aigc-kubelet";
/// How often nodes renew their lease and heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
const LEASE_SECONDS: i32 = 40;

/// A taint on a simulated node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTaint {
    /// Taint key.
    pub key: String,
    /// Taint value (may be empty).
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// One simulated node: its name, what it advertises and how it is labelled and tainted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// `metadata.name` (also the `kubernetes.io/hostname` label).
    pub name: String,
    /// `status.capacity` (and `allocatable`): resource name to quantity, e.g. `cpu: "8"`.
    pub capacity: BTreeMap<String, String>,
    /// Labels beyond the ones every simulated node gets.
    pub labels: BTreeMap<String, String>,
    /// `spec.taints`.
    pub taints: Vec<NodeTaint>,
}

fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl NodeConfig {
    /// A CPU node with 8 cpu, 32Gi memory and room for 110 pods.
    pub fn cpu(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            capacity: strings(&[("cpu", "8"), ("memory", "32Gi"), ("pods", "110")]),
            labels: BTreeMap::new(),
            taints: Vec::new(),
        }
    }

    /// A CPU node plus `gpus` NVIDIA H100 GPUs (`nvidia.com/gpu`), product labels and the
    /// `nvidia.com/gpu=present:NoSchedule` taint.
    pub fn gpu(name: impl Into<String>, gpus: u32) -> Self {
        let mut node = Self::cpu(name);
        node.capacity
            .insert("nvidia.com/gpu".into(), gpus.to_string());
        node.labels.insert(
            "nvidia.com/gpu.product".into(),
            "NVIDIA-H100-80GB-HBM3".into(),
        );
        node.labels
            .insert("nvidia.com/gpu.count".into(), gpus.to_string());
        node.taints.push(NodeTaint {
            key: "nvidia.com/gpu".into(),
            value: "present".into(),
            effect: "NoSchedule".into(),
        });
        node
    }

    /// The default pair: `local-cpu` and `local-gpu` (2 GPUs).
    pub fn defaults() -> Vec<Self> {
        vec![Self::cpu("local-cpu"), Self::gpu("local-gpu", 2)]
    }

    /// All labels of the node: the configured ones plus hostname, OS and the simulated mark.
    pub fn all_labels(&self) -> BTreeMap<String, String> {
        let mut labels = strings(&[
            ("kubernetes.io/hostname", &self.name),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", std::env::consts::ARCH),
            (SIMULATED_LABEL, "true"),
        ]);
        labels.extend(self.labels.clone());
        labels
    }

    /// The Node object (metadata and spec) as applied by the kubelet.
    pub fn node_object(&self) -> Value {
        let taints: Vec<Value> = self
            .taints
            .iter()
            .map(|t| json!({"key": t.key, "value": t.value, "effect": t.effect}))
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": self.all_labels()},
            "spec": {"taints": taints},
        })
    }

    /// `status` at `now`: capacity, allocatable, a Ready condition heartbeating at `now`.
    pub fn node_status(&self, now: &str, ready_since: &str) -> Value {
        let condition = |kind: &str, status: &str, reason: &str, message: &str| {
            json!({"type": kind, "status": status, "reason": reason, "message": message,
                   "lastHeartbeatTime": now, "lastTransitionTime": ready_since})
        };
        json!({
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "simulated kubelet is posting ready status; pods run as local processes"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.name},
            ],
            "nodeInfo": {
                "architecture": std::env::consts::ARCH,
                "operatingSystem": "linux",
                "osImage": "aigc local cluster",
                "kernelVersion": "",
                "containerRuntimeVersion": "process://local",
                "kubeletVersion": "v1.33.0-aigc-local",
                "kubeProxyVersion": "",
                "machineID": "", "systemUUID": "", "bootID": "",
            },
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        })
    }
}

/// The configured node of this name.
pub fn find<'a>(nodes: &'a [NodeConfig], name: &str) -> Option<&'a NodeConfig> {
    nodes.iter().find(|n| n.name == name)
}

fn client_error(context: &str) -> impl Fn(kube::Error) -> Error + '_ {
    move |e| Error::Client(format!("{context}: {e}"))
}

/// Replace the node's whole status (so capacities dropped from the config disappear).
async fn post_status(
    api: &Api<Node>,
    node: &NodeConfig,
    now: &str,
    ready_since: &str,
) -> Result<Node, kube::Error> {
    let mut current = api.get_status(&node.name).await?;
    current.status = serde_json::from_value(node.node_status(now, ready_since)).ok();
    current.metadata.managed_fields = None;
    api.replace_status(&node.name, &PostParams::default(), &current)
        .await
}

/// Create or update every configured node, and remove simulated nodes no longer configured.
pub async fn register(client: &kube::Client, nodes: &[NodeConfig]) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let now = crate::api::now();
    for node in nodes {
        api.patch(&node.name, &params, &Patch::Apply(node.node_object()))
            .await
            .map_err(client_error(&format!("registering node {}", node.name)))?;
        post_status(&api, node, &now, &now)
            .await
            .map_err(client_error(&format!(
                "posting the status of node {}",
                node.name
            )))?;
    }
    let simulated = api
        .list_metadata(&ListParams::default().labels(&format!("{SIMULATED_LABEL}=true")))
        .await
        .map_err(client_error("listing simulated nodes"))?;
    for stale in simulated.items {
        let name = stale.metadata.name.unwrap_or_default();
        if find(nodes, &name).is_none() {
            api.delete(&name, &DeleteParams::default())
                .await
                .map_err(client_error(&format!(
                    "removing the unconfigured node {name}"
                )))?;
        }
    }
    heartbeat(client, nodes, &now).await;
    Ok(())
}

/// Renew each node's lease and `Ready` heartbeat once; failures are logged and retried on
/// the next beat.
pub async fn heartbeat(client: &kube::Client, nodes: &[NodeConfig], ready_since: &str) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let api: Api<Node> = Api::all(client.clone());
    let renew = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let now = crate::api::now();
    for node in nodes {
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": node.name},
            "spec": {"holderIdentity": node.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": renew},
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        if let Err(e) = leases
            .patch(&node.name, &params, &Patch::Apply(lease))
            .await
        {
            tracing::warn!(node = %node.name, error = %e, "renewing the node lease failed");
        }
        if let Err(e) = post_status(&api, node, &now, ready_since).await {
            tracing::warn!(node = %node.name, error = %e, "posting the node heartbeat failed");
        }
    }
}

/// Heartbeat every [`HEARTBEAT_INTERVAL`] until `stop` turns true.
pub async fn run_heartbeats(
    client: kube::Client,
    nodes: Vec<NodeConfig>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let ready_since = crate::api::now();
    let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => heartbeat(&client, &nodes, &ready_since).await,
            _ = crate::until_stopped(&mut stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gpu_node_advertises_gpus_labels_and_a_taint() {
        let node = NodeConfig::gpu("local-gpu", 2);
        let object = node.node_object();
        assert_eq!(object["metadata"]["labels"]["nvidia.com/gpu.count"], "2");
        assert_eq!(
            object["metadata"]["labels"]["kubernetes.io/hostname"],
            "local-gpu"
        );
        assert_eq!(object["metadata"]["labels"][SIMULATED_LABEL], "true");
        assert_eq!(object["spec"]["taints"][0]["effect"], "NoSchedule");
        let status = node.node_status("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z");
        assert_eq!(status["allocatable"]["nvidia.com/gpu"], "2");
        assert_eq!(status["capacity"]["cpu"], "8");
    }
}
