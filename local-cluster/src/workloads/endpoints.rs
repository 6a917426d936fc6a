//! The endpoints controller: for every Service with a selector, the pods it selects that have
//! an IP and are not finishing become the Service's `Endpoints` (ready pods under
//! `addresses`, the others under `notReadyAddresses`) and `EndpointSlice`s, with each Service
//! port's `targetPort` resolved per pod (a number, or a container port's name). Services
//! without a selector keep whatever Endpoints their owner writes. Both objects are owned by
//! the Service, so they go with it. The grouping is [`subsets`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{controller_ref, is_active, is_ready, stopped};

/// Field manager of the endpoint writes.
const MANAGER: &str = "endpoint-controller";
/// Label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

struct Context {
    client: Client,
}

/// Run until `stop` turns true.
pub async fn run(client: Client, stop: watch::Receiver<bool>) {
    let controller = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let services = controller.store();
    controller
        .owns(
            Api::<Endpoints>::all(client.clone()),
            watcher::Config::default(),
        )
        // Any pod change may add or remove an endpoint of any Service in its namespace
        // (labels can move a pod out of a selector), so all of them look again.
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            move |pod: Pod| {
                let namespace = pod.namespace();
                services
                    .state()
                    .into_iter()
                    .filter(|s| s.namespace() == namespace)
                    .map(|s| ObjectRef::from_obj(s.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stopped(stop))
        .run(reconcile, error_policy, Arc::new(Context { client }))
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn error_policy(service: Arc<Service>, error: &kube::Error, _: Arc<Context>) -> Action {
    tracing::warn!(service = %service.name_any(), %error, "updating a Service's endpoints failed");
    Action::requeue(Duration::from_secs(1))
}

/// A Service port resolved for some pods: name, number on the pod, protocol.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResolvedPort {
    /// The Service port's name (may be empty when it has a single port).
    pub name: String,
    /// The port on the pod.
    pub port: i32,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

/// Pods that share the same resolved ports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Subset {
    /// The ports every pod here serves.
    pub ports: Vec<ResolvedPort>,
    /// Ready pods.
    pub ready: Vec<Pod>,
    /// Pods that are not Ready (yet).
    pub not_ready: Vec<Pod>,
}

/// The number a Service port reaches on `pod`, or `None` when a named target port is not
/// declared by any of its containers.
pub fn target_port(port: &k8s_openapi::api::core::v1::ServicePort, pod: &Pod) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
        }
    }
}

/// The Service's endpoints grouped by the ports they serve, in pod name order.
pub fn subsets(service: &Service, pods: &[Pod]) -> Vec<Subset> {
    let spec = service.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let mut groups: BTreeMap<Vec<ResolvedPort>, Subset> = BTreeMap::new();
    let mut sorted: Vec<&Pod> = pods.iter().collect();
    sorted.sort_by_key(|p| p.name_any());
    for pod in sorted {
        let has_ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .is_some_and(|ip| !ip.is_empty());
        if !has_ip || !is_active(pod) {
            continue;
        }
        let mut ports: Vec<ResolvedPort> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(ResolvedPort {
                    name: p.name.clone().unwrap_or_default(),
                    port: target_port(p, pod)?,
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                })
            })
            .collect();
        ports.sort();
        if ports.is_empty() && spec.ports.as_ref().is_some_and(|p| !p.is_empty()) {
            continue;
        }
        let group = groups.entry(ports.clone()).or_default();
        group.ports = ports;
        if publish_not_ready || is_ready(pod) {
            group.ready.push(pod.clone());
        } else {
            group.not_ready.push(pod.clone());
        }
    }
    groups.into_values().collect()
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

fn address(pod: &Pod) -> Value {
    let mut address = json!({
        "ip": pod_ip(pod),
        "targetRef": {"kind": "Pod", "name": pod.name_any(), "namespace": pod.namespace(), "uid": pod.uid()},
    });
    if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) {
        address["nodeName"] = json!(node);
    }
    address
}

fn port_json(port: &ResolvedPort) -> Value {
    let mut value = json!({"port": port.port, "protocol": port.protocol});
    if !port.name.is_empty() {
        value["name"] = json!(port.name);
    }
    value
}

/// The Endpoints object for `service`.
pub fn endpoints_object(service: &Service, groups: &[Subset]) -> Value {
    let subsets: Vec<Value> = groups
        .iter()
        .map(|g| {
            let mut subset = json!({"ports": g.ports.iter().map(port_json).collect::<Vec<_>>()});
            if !g.ready.is_empty() {
                subset["addresses"] = g.ready.iter().map(address).collect();
            }
            if !g.not_ready.is_empty() {
                subset["notReadyAddresses"] = g.not_ready.iter().map(address).collect();
            }
            subset
        })
        .collect();
    let mut object = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {
            "name": service.name_any(),
            "namespace": service.namespace(),
            "labels": service.labels(),
            "ownerReferences": [controller_ref(service)],
        },
    });
    if !subsets.is_empty() {
        object["subsets"] = json!(subsets);
    }
    object
}

/// The EndpointSlices for `service`, one per group of ports.
pub fn endpoint_slices(service: &Service, groups: &[Subset]) -> Vec<Value> {
    let name = service.name_any();
    let mut labels = service.labels().clone();
    labels.insert(SERVICE_NAME_LABEL.to_owned(), name.clone());
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
    let slice = |index: usize, group: Option<&Subset>| {
        let endpoint = |pod: &Pod, ready: bool| {
            let mut e = json!({
                "addresses": [pod_ip(pod)],
                "conditions": {"ready": ready, "serving": ready, "terminating": false},
                "targetRef": {"kind": "Pod", "name": pod.name_any(), "namespace": pod.namespace(), "uid": pod.uid()},
            });
            if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) {
                e["nodeName"] = json!(node);
            }
            e
        };
        let endpoints: Vec<Value> = group
            .map(|g| {
                g.ready
                    .iter()
                    .map(|p| endpoint(p, true))
                    .chain(g.not_ready.iter().map(|p| endpoint(p, false)))
                    .collect()
            })
            .unwrap_or_default();
        let ports: Vec<Value> = group
            .map(|g| g.ports.iter().map(port_json).collect())
            .unwrap_or_default();
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{name}-{index}"),
                "namespace": service.namespace(),
                "labels": labels,
                "ownerReferences": [controller_ref(service)],
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        })
    };
    if groups.is_empty() {
        return vec![slice(0, None)];
    }
    groups
        .iter()
        .enumerate()
        .map(|(i, g)| slice(i, Some(g)))
        .collect()
}

async fn reconcile(service: Arc<Service>, ctx: Arc<Context>) -> Result<Action, kube::Error> {
    let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.clone()) else {
        return Ok(Action::await_change());
    };
    if service.metadata.deletion_timestamp.is_some() || selector.is_empty() {
        return Ok(Action::await_change());
    }
    let namespace = service.namespace().unwrap_or_default();
    let query: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let selected = pods
        .list(&ListParams::default().labels(&query.join(",")))
        .await?
        .items;
    let groups = subsets(&service, &selected);
    let apply = PatchParams::apply(MANAGER).force();
    let endpoints: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &namespace);
    endpoints
        .patch(
            &service.name_any(),
            &apply,
            &Patch::Apply(endpoints_object(&service, &groups)),
        )
        .await?;
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &namespace);
    let wanted = endpoint_slices(&service, &groups);
    for slice in &wanted {
        let name = slice["metadata"]["name"].as_str().unwrap_or_default();
        slices.patch(name, &apply, &Patch::Apply(slice)).await?;
    }
    let existing = slices
        .list(&ListParams::default().labels(&format!(
            "{SERVICE_NAME_LABEL}={},{MANAGED_BY_LABEL}={MANAGED_BY}",
            service.name_any()
        )))
        .await?;
    for stale in existing.items {
        let name = stale.name_any();
        if !wanted
            .iter()
            .any(|w| w["metadata"]["name"] == name.as_str())
        {
            match slices.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(error) => return Err(error),
            }
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(ports: Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u"},
            "spec": {"selector": {"app": "web"}, "ports": ports},
        }))
        .unwrap()
    }

    fn pod(name: &str, ip: &str, ready: bool, container_ports: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "ports": container_ports}], "nodeName": "local-cpu"},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    #[test]
    fn ready_and_unready_pods_are_split_and_pods_without_an_ip_left_out() {
        let svc = service(json!([{"port": 80, "targetPort": 8080}]));
        let pods = [
            pod("a", "127.1.0.2", true, json!([])),
            pod("b", "127.1.0.3", false, json!([])),
            pod("c", "", true, json!([])),
        ];
        let groups = subsets(&svc, &pods);
        assert_eq!(groups.len(), 1);
        assert_eq!(
            groups[0].ports,
            vec![ResolvedPort {
                name: String::new(),
                port: 8080,
                protocol: "TCP".into()
            }]
        );
        assert_eq!(
            groups[0]
                .ready
                .iter()
                .map(|p| p.name_any())
                .collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(
            groups[0]
                .not_ready
                .iter()
                .map(|p| p.name_any())
                .collect::<Vec<_>>(),
            ["b"]
        );
        let endpoints = endpoints_object(&svc, &groups);
        assert_eq!(endpoints["subsets"][0]["addresses"][0]["ip"], "127.1.0.2");
        assert_eq!(
            endpoints["subsets"][0]["notReadyAddresses"][0]["ip"],
            "127.1.0.3"
        );
        assert_eq!(endpoints["subsets"][0]["ports"][0]["port"], 8080);
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let svc = service(json!([{"name": "http", "port": 80, "targetPort": "web"}]));
        let pods = [
            pod(
                "a",
                "127.1.0.2",
                true,
                json!([{"name": "web", "containerPort": 8080}]),
            ),
            pod(
                "b",
                "127.1.0.3",
                true,
                json!([{"name": "web", "containerPort": 9090}]),
            ),
            pod(
                "c",
                "127.1.0.4",
                true,
                json!([{"name": "other", "containerPort": 1}]),
            ),
        ];
        let groups = subsets(&svc, &pods);
        let ports: Vec<i32> = groups.iter().map(|g| g.ports[0].port).collect();
        assert_eq!(
            ports,
            [8080, 9090],
            "the pod without the named port is not an endpoint"
        );
        let slices = endpoint_slices(&svc, &groups);
        assert_eq!(slices.len(), 2);
        assert_eq!(slices[1]["ports"][0]["port"], 9090);
        assert_eq!(slices[1]["metadata"]["labels"][SERVICE_NAME_LABEL], "web");
    }

    #[test]
    fn a_service_without_endpoints_gets_one_empty_slice() {
        let svc = service(json!([{"port": 80}]));
        let slices = endpoint_slices(&svc, &[]);
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0]["endpoints"], json!([]));
        assert!(endpoints_object(&svc, &[])["subsets"].is_null());
    }
}
