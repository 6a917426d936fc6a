//! The thin edge between Kubernetes objects and the scheduler's plain input: Nodes, Pods
//! and tolerations from k8s-openapi types. Nothing else in the scheduler sees them.

use std::collections::BTreeMap;

use aigc_crds::common::Quantity;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

use super::model::{
    Node, PodOwner, RunningPod, Taint, TaintEffect, Toleration, TolerationOperator,
};
use super::resources::{Amounts, Bytes, Gpus, Millicores};
use crate::Error;

/// The extended resource name of NVIDIA GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// cpu, memory and `nvidia.com/gpu` from a resource list; other resources are ignored.
fn amounts(field: &str, list: Option<&BTreeMap<String, K8sQuantity>>) -> Result<Amounts, Error> {
    let mut amounts = Amounts::ZERO;
    let Some(list) = list else { return Ok(amounts) };
    let quantity = |name: &str| list.get(name).map(|q| Quantity(q.0.clone()));
    if let Some(cpu) = quantity("cpu") {
        amounts.cpu = Millicores::parse(&format!("{field}.cpu"), &cpu)?;
    }
    if let Some(memory) = quantity("memory") {
        amounts.memory = Bytes::parse(&format!("{field}.memory"), &memory)?;
    }
    if let Some(gpu) = quantity(GPU_RESOURCE) {
        amounts.gpu = Gpus::parse(&format!("{field}[{GPU_RESOURCE}]"), &gpu)?;
    }
    Ok(amounts)
}

fn taint_effect(field: &str, effect: &str) -> Result<TaintEffect, Error> {
    match effect {
        "NoSchedule" => Ok(TaintEffect::NoSchedule),
        "PreferNoSchedule" => Ok(TaintEffect::PreferNoSchedule),
        "NoExecute" => Ok(TaintEffect::NoExecute),
        other => Err(Error::UnknownValue {
            field: field.to_owned(),
            value: other.to_owned(),
            accepted: "NoSchedule, PreferNoSchedule, NoExecute",
        }),
    }
}

impl Node {
    /// A node's name, labels, taints, cordon and allocatable capacity. Hot-tier datasets
    /// are not on the Node object; the caller adds them.
    pub fn from_k8s(node: &core::Node) -> Result<Node, Error> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let spec = node.spec.as_ref();
        let taints = spec
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .map(|taint| {
                Ok(Taint {
                    key: taint.key.clone(),
                    value: taint.value.clone(),
                    effect: taint_effect(
                        &format!("node {name} spec.taints[{}].effect", taint.key),
                        &taint.effect,
                    )?,
                })
            })
            .collect::<Result<_, Error>>()?;
        let allocatable = amounts(
            &format!("node {name} status.allocatable"),
            node.status.as_ref().and_then(|s| s.allocatable.as_ref()),
        )?;
        Ok(Node {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints,
            allocatable,
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            hot_datasets: Default::default(),
            name,
        })
    }
}

impl RunningPod {
    /// A pod that holds node capacity: bound to a node and not finished. Its requests are
    /// what kube-scheduler counts: the larger of the containers' sum and any one init
    /// container, plus the pod overhead. `None` for unbound or finished pods.
    pub fn from_k8s(pod: &core::Pod, owner: Option<PodOwner>) -> Result<Option<RunningPod>, Error> {
        let Some(spec) = &pod.spec else {
            return Ok(None);
        };
        let Some(node) = spec.node_name.clone() else {
            return Ok(None);
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return Ok(None);
        }
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let field = |kind: &str, container: &str| {
            format!("pod {namespace}/{name} {kind} {container} requests")
        };
        let mut requests = Amounts::ZERO;
        for container in &spec.containers {
            let list = container
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref());
            requests += amounts(&field("container", &container.name), list)?;
        }
        for container in spec.init_containers.iter().flatten() {
            let list = container
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref());
            let init = amounts(&field("init container", &container.name), list)?;
            requests = Amounts {
                cpu: requests.cpu.max(init.cpu),
                memory: requests.memory.max(init.memory),
                gpu: requests.gpu.max(init.gpu),
            };
        }
        requests += amounts(
            &format!("pod {namespace}/{name} spec.overhead"),
            spec.overhead.as_ref(),
        )?;
        Ok(Some(RunningPod {
            namespace,
            name,
            node,
            requests,
            owner,
        }))
    }
}

/// Required node affinity pinning a pod to `node`, so that kube-scheduler and the kubelet
/// still check the scheduler's placement.
pub fn pinned_to(node: &str) -> core::Affinity {
    pinned_to_any(&[node.to_owned()])
}

/// Required node affinity restricting a pod to `nodes` (e.g. the pods of a Deployment to the
/// nodes its replicas were placed on).
pub fn pinned_to_any(nodes: &[String]) -> core::Affinity {
    let mut values = nodes.to_vec();
    values.sort();
    values.dedup();
    core::Affinity {
        node_affinity: Some(core::NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(core::NodeSelector {
                node_selector_terms: vec![core::NodeSelectorTerm {
                    match_fields: Some(vec![core::NodeSelectorRequirement {
                        key: "metadata.name".to_owned(),
                        operator: "In".to_owned(),
                        values: Some(values),
                    }]),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Toleration {
    /// A toleration from a pod spec.
    pub fn from_k8s(toleration: &core::Toleration) -> Result<Toleration, Error> {
        let operator = match toleration.operator.as_deref() {
            None | Some("Equal") => TolerationOperator::Equal,
            Some("Exists") => TolerationOperator::Exists,
            Some(other) => {
                return Err(Error::UnknownValue {
                    field: "toleration operator".to_owned(),
                    value: other.to_owned(),
                    accepted: "Equal, Exists",
                });
            }
        };
        let effect = match toleration.effect.as_deref() {
            None | Some("") => None,
            Some(effect) => Some(taint_effect("toleration effect", effect)?),
        };
        Ok(Toleration {
            key: toleration.key.clone().filter(|k| !k.is_empty()),
            operator,
            value: toleration.value.clone(),
            effect,
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn list(items: &[(&str, &str)]) -> BTreeMap<String, K8sQuantity> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), K8sQuantity((*v).to_owned())))
            .collect()
    }

    fn container(name: &str, requests: &[(&str, &str)]) -> core::Container {
        core::Container {
            name: name.into(),
            resources: Some(core::ResourceRequirements {
                requests: Some(list(requests)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn nodes_carry_allocatable_taints_and_cordon() {
        let node = core::Node {
            metadata: ObjectMeta {
                name: Some("gpu-1".into()),
                ..Default::default()
            },
            spec: Some(core::NodeSpec {
                unschedulable: Some(true),
                taints: Some(vec![core::Taint {
                    key: GPU_RESOURCE.into(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: Some(core::NodeStatus {
                allocatable: Some(list(&[
                    ("cpu", "7500m"),
                    ("memory", "62Gi"),
                    (GPU_RESOURCE, "8"),
                    ("pods", "110"),
                ])),
                ..Default::default()
            }),
        };
        let node = Node::from_k8s(&node).unwrap();
        assert_eq!(node.allocatable, Amounts::new(7500, 62 << 30, 8));
        assert_eq!(node.taints[0].effect, TaintEffect::NoSchedule);
        assert!(node.unschedulable);
    }

    #[test]
    fn pod_requests_count_init_containers_and_overhead_like_kube_scheduler() {
        let pod = core::Pod {
            metadata: ObjectMeta {
                name: Some("worker-0".into()),
                namespace: Some("ml".into()),
                ..Default::default()
            },
            spec: Some(core::PodSpec {
                node_name: Some("gpu-1".into()),
                containers: vec![
                    container("a", &[("cpu", "1"), (GPU_RESOURCE, "2")]),
                    container("b", &[("cpu", "500m")]),
                ],
                init_containers: Some(vec![container("fetch", &[("cpu", "2"), ("memory", "1Gi")])]),
                overhead: Some(list(&[("cpu", "100m")])),
                ..Default::default()
            }),
            status: None,
        };
        let running = RunningPod::from_k8s(&pod, None).unwrap().unwrap();
        assert_eq!(running.requests, Amounts::new(2100, 1 << 30, 2));
        assert_eq!(running.node, "gpu-1");
    }

    #[test]
    fn pinning_uses_a_required_match_on_the_node_name() {
        let affinity = pinned_to("gpu-1");
        let json = serde_json::to_value(&affinity).unwrap();
        let term = &json["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0];
        assert_eq!(
            term["matchFields"][0],
            serde_json::json!({"key": "metadata.name", "operator": "In", "values": ["gpu-1"]})
        );
    }

    #[test]
    fn unbound_and_finished_pods_hold_no_capacity() {
        let mut pod = core::Pod {
            spec: Some(core::PodSpec::default()),
            ..Default::default()
        };
        assert_eq!(RunningPod::from_k8s(&pod, None).unwrap(), None);
        pod.spec.as_mut().unwrap().node_name = Some("n".into());
        pod.status = Some(core::PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        assert_eq!(RunningPod::from_k8s(&pod, None).unwrap(), None);
    }

    #[test]
    fn bad_quantities_and_effects_name_the_object() {
        let pod = core::Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ml".into()),
                ..Default::default()
            },
            spec: Some(core::PodSpec {
                node_name: Some("n".into()),
                containers: vec![container("main", &[(GPU_RESOURCE, "0.5")])],
                ..Default::default()
            }),
            status: None,
        };
        let err = RunningPod::from_k8s(&pod, None).unwrap_err().to_string();
        assert!(
            err.contains("pod ml/p container main") && err.contains("whole"),
            "{err}"
        );
        let toleration = core::Toleration {
            operator: Some("Maybe".into()),
            ..Default::default()
        };
        let err = Toleration::from_k8s(&toleration).unwrap_err().to_string();
        assert!(
            err.contains("\"Maybe\"") && err.contains("Equal, Exists"),
            "{err}"
        );
    }
}
