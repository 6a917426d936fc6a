//! The default scheduler's decision, as pure functions over plain objects: what a pod
//! requests, which nodes it fits (unschedulable flag, taints and tolerations, node selector
//! and required node affinity, requests against allocatable minus what the node's other pods
//! request), which fitting node is least allocated, and the kube-scheduler style message when
//! none fits. Filters run in kube-scheduler's order and a node is reported under the first
//! filter it fails. Nothing here talks to the API; [`super::scheduler`] does.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, Pod, Taint, Toleration};

use super::quantity::{self, Milli};

/// Amounts per resource name (`cpu`, `memory`, `nvidia.com/gpu`, ...).
pub type Resources = BTreeMap<String, Milli>;

/// The scheduler name pods get when they name none.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// Whether the default scheduler is responsible for placing `pod` now (scheduling gates hold
/// it back until they are removed).
pub fn wants_default_scheduler(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let unplaced = spec.node_name.as_deref().unwrap_or("").is_empty();
    let ours = matches!(
        spec.scheduler_name.as_deref(),
        None | Some("" | DEFAULT_SCHEDULER)
    );
    unplaced && ours && pod.metadata.deletion_timestamp.is_none() && !is_terminated(pod)
}

/// Whether a pod has finished (it no longer holds resources on its node).
pub fn is_terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn add_quantities(
    total: &mut Resources,
    amounts: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    whose: &str,
) -> Result<(), String> {
    for (name, amount) in amounts.into_iter().flatten() {
        let value = quantity::parse(&amount.0).ok_or_else(|| {
            format!(
                "{whose} requests {name}: {:?}, which is not a quantity (expected {})",
                amount.0,
                quantity::ACCEPTED
            )
        })?;
        *total.entry(name.clone()).or_default() += value;
    }
    Ok(())
}

fn container_requests(
    container: &k8s_openapi::api::core::v1::Container,
) -> Result<Resources, String> {
    let whose = format!("container {:?}", container.name);
    let resources = container.resources.as_ref();
    let mut requests = Resources::new();
    add_quantities(
        &mut requests,
        resources.and_then(|r| r.requests.as_ref()),
        &whose,
    )?;
    // A limit without a request defaults the request to the limit.
    let mut limits = Resources::new();
    add_quantities(
        &mut limits,
        resources.and_then(|r| r.limits.as_ref()),
        &whose,
    )?;
    for (name, limit) in limits {
        requests.entry(name).or_insert(limit);
    }
    Ok(requests)
}

/// What a pod needs on its node: the sum over its containers, at least the largest init
/// container (they run one at a time, before the others), plus the pod overhead.
pub fn pod_requests(pod: &Pod) -> Result<Resources, String> {
    let Some(spec) = &pod.spec else {
        return Ok(Resources::new());
    };
    let mut total = Resources::new();
    for container in &spec.containers {
        for (name, value) in container_requests(container)? {
            *total.entry(name).or_default() += value;
        }
    }
    for container in spec.init_containers.iter().flatten() {
        for (name, value) in container_requests(container)? {
            let entry = total.entry(name).or_default();
            *entry = (*entry).max(value);
        }
    }
    add_quantities(&mut total, spec.overhead.as_ref(), "the pod overhead")?;
    total.retain(|_, v| v.0 > 0);
    Ok(total)
}

/// A node as the scheduler sees it: what it offers and what its pods already take.
#[derive(Clone, Debug)]
pub struct NodeState {
    /// The Node object.
    pub node: Node,
    /// `status.allocatable` (or `capacity`), parsed; unparsable amounts count as zero.
    pub allocatable: Resources,
    /// Most pods the node takes (`pods` in allocatable).
    pub max_pods: i128,
    /// Sum of the requests of the non-terminated pods bound to it.
    pub requested: Resources,
    /// Number of non-terminated pods bound to it.
    pub pods: i128,
}

impl NodeState {
    /// A node with nothing on it yet.
    pub fn new(node: Node) -> Self {
        let status = node.status.as_ref();
        let offered = status
            .and_then(|s| s.allocatable.as_ref())
            .or_else(|| status.and_then(|s| s.capacity.as_ref()));
        let mut allocatable: Resources = offered
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), quantity::parse(&v.0).unwrap_or_default()))
            .collect();
        let max_pods = allocatable.remove("pods").map_or(0, |p| p.0 / 1000);
        Self {
            node,
            allocatable,
            max_pods,
            requested: Resources::new(),
            pods: 0,
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or("")
    }

    /// Account a pod placed on this node.
    pub fn add_pod(&mut self, requests: &Resources) {
        for (name, value) in requests {
            *self.requested.entry(name.clone()).or_default() += *value;
        }
        self.pods += 1;
    }
}

/// Why a pod does not fit a node, worded as kube-scheduler words it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Misfit {
    /// `spec.unschedulable` (cordoned) and not tolerated.
    Unschedulable,
    /// A NoSchedule/NoExecute taint the pod does not tolerate.
    UntoleratedTaint {
        /// Taint key.
        key: String,
        /// Taint value (may be empty).
        value: String,
    },
    /// `nodeSelector` or required node affinity does not match the node's labels.
    NodeAffinity,
    /// The node already runs as many pods as it allows.
    TooManyPods,
    /// Not enough of a resource is left.
    Insufficient(String),
}

impl std::fmt::Display for Misfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Misfit::Unschedulable => write!(f, "node(s) were unschedulable"),
            Misfit::UntoleratedTaint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Misfit::NodeAffinity => write!(f, "node(s) didn't match Pod's node affinity/selector"),
            Misfit::TooManyPods => write!(f, "Too many pods"),
            Misfit::Insufficient(resource) => write!(f, "Insufficient {resource}"),
        }
    }
}

/// Whether `toleration` tolerates `taint`.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect_ok = match toleration.effect.as_deref() {
        None | Some("") => true,
        Some(effect) => effect == taint.effect,
    };
    let key = toleration.key.as_deref().unwrap_or("");
    match toleration.operator.as_deref() {
        Some("Exists") => effect_ok && (key.is_empty() || key == taint.key),
        _ => {
            effect_ok
                && key == taint.key
                && toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[])
}

/// The first NoSchedule/NoExecute taint of `node` that `pod` does not tolerate.
pub fn untolerated_taint<'a>(pod: &Pod, node: &'a Node) -> Option<&'a Taint> {
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[]);
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|taint| !tolerations(pod).iter().any(|t| tolerates(t, taint)))
}

/// Whether one node selector requirement holds for `labels`.
pub fn requirement_matches(
    requirement: &NodeSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> bool {
    let values = requirement.values.as_deref().unwrap_or(&[]);
    let label = labels.get(&requirement.key);
    let as_integer = |text: &str| text.trim().parse::<i64>().ok();
    let compare = |ordering: std::cmp::Ordering| match (label, values) {
        (Some(label), [value]) => match (as_integer(label), as_integer(value)) {
            (Some(l), Some(v)) => l.cmp(&v) == ordering,
            _ => false,
        },
        _ => false,
    };
    match requirement.operator.as_str() {
        "In" => label.is_some_and(|l| values.contains(l)),
        "NotIn" => label.is_none_or(|l| !values.contains(l)),
        "Exists" => label.is_some(),
        "DoesNotExist" => label.is_none(),
        "Gt" => compare(std::cmp::Ordering::Greater),
        "Lt" => compare(std::cmp::Ordering::Less),
        _ => false,
    }
}

/// Whether `pod`'s `nodeSelector` and required node affinity accept `node`.
pub fn affinity_matches(pod: &Pod, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let Some(spec) = &pod.spec else { return true };
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let affinity_ok = required.is_none_or(|selector| {
        let name = node.metadata.name.clone().unwrap_or_default();
        let fields = BTreeMap::from([("metadata.name".to_owned(), name)]);
        selector.node_selector_terms.iter().any(|term| {
            let expressions = term.match_expressions.as_deref().unwrap_or(&[]);
            let field_terms = term.match_fields.as_deref().unwrap_or(&[]);
            (!expressions.is_empty() || !field_terms.is_empty())
                && expressions.iter().all(|r| requirement_matches(r, labels))
                && field_terms.iter().all(|r| requirement_matches(r, &fields))
        })
    });
    selector_ok && affinity_ok
}

/// Resources a node only accounts for when it advertises them: simulated nodes do not report
/// local disk, and a pod asking for scratch space should still run on them.
const CHECKED_WHEN_ADVERTISED: &[&str] = &["ephemeral-storage"];

/// Why `pod` (requesting `requests`) does not fit `node`; empty when it fits. Only the first
/// failing filter is reported, as kube-scheduler does; resources list every shortfall.
pub fn misfits(pod: &Pod, requests: &Resources, node: &NodeState) -> Vec<Misfit> {
    let cordoned = node
        .node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let cordon_taint = Taint {
        key: "node.kubernetes.io/unschedulable".to_owned(),
        effect: "NoSchedule".to_owned(),
        ..Taint::default()
    };
    if cordoned && !tolerations(pod).iter().any(|t| tolerates(t, &cordon_taint)) {
        return vec![Misfit::Unschedulable];
    }
    if let Some(taint) = untolerated_taint(pod, &node.node) {
        return vec![Misfit::UntoleratedTaint {
            key: taint.key.clone(),
            value: taint.value.clone().unwrap_or_default(),
        }];
    }
    if !affinity_matches(pod, &node.node) {
        return vec![Misfit::NodeAffinity];
    }
    let mut found = Vec::new();
    if node.pods + 1 > node.max_pods {
        found.push(Misfit::TooManyPods);
    }
    for (name, wanted) in requests {
        let Some(offered) = node.allocatable.get(name) else {
            if !CHECKED_WHEN_ADVERTISED.contains(&name.as_str()) {
                found.push(Misfit::Insufficient(name.clone()));
            }
            continue;
        };
        let used = node.requested.get(name).copied().unwrap_or_default();
        if used + *wanted > *offered {
            found.push(Misfit::Insufficient(name.clone()));
        }
    }
    found
}

/// kube-scheduler's least-allocated score (0-100): how much cpu and memory stays free after
/// placing the pod. Pods without requests count as 100m cpu and 200Mi memory here, so they
/// still spread.
pub fn least_allocated_score(requests: &Resources, node: &NodeState) -> i128 {
    let defaults = [
        ("cpu", Milli(100)),
        ("memory", Milli(200 * 1024 * 1024 * 1000)),
    ];
    let mut total = 0;
    let mut counted = 0;
    for (name, default) in defaults {
        let Some(offered) = node.allocatable.get(name).filter(|o| o.0 > 0) else {
            continue;
        };
        let wanted = requests.get(name).copied().unwrap_or(default);
        let used = node.requested.get(name).copied().unwrap_or_default() + wanted;
        total += ((offered.0 - used.0).max(0) * 100) / offered.0;
        counted += 1;
    }
    if counted == 0 { 0 } else { total / counted }
}

/// The node for `pod`: the least allocated of the nodes it fits (ties go to the first name),
/// or the message kube-scheduler would give when none fits.
pub fn choose_node(pod: &Pod, requests: &Resources, nodes: &[NodeState]) -> Result<String, String> {
    let mut best: Option<(i128, &str)> = None;
    let mut rejected = Vec::new();
    for node in nodes {
        let reasons = misfits(pod, requests, node);
        if !reasons.is_empty() {
            rejected.push(reasons);
            continue;
        }
        let score = least_allocated_score(requests, node);
        let better = match best {
            None => true,
            Some((top, name)) => score > top || (score == top && node.name() < name),
        };
        if better {
            best = Some((score, node.name()));
        }
    }
    match best {
        Some((_, name)) => Ok(name.to_owned()),
        None => Err(unschedulable_message(nodes.len(), &rejected)),
    }
}

/// `0/2 nodes are available: 1 Insufficient nvidia.com/gpu, 1 node(s) had untolerated taint
/// {nvidia.com/gpu: present}.`: each reason with how many nodes gave it, sorted.
pub fn unschedulable_message(node_count: usize, rejected: &[Vec<Misfit>]) -> String {
    if node_count == 0 {
        return "no nodes available to schedule pods".to_owned();
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for reasons in rejected {
        for reason in reasons {
            *counts.entry(reason.to_string()).or_default() += 1;
        }
    }
    let mut parts: Vec<String> = counts
        .into_iter()
        .map(|(reason, count)| format!("{count} {reason}"))
        .collect();
    parts.sort();
    format!("0/{node_count} nodes are available: {}.", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, extra: serde_json::Value) -> NodeState {
        let mut node = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {"allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"}},
        });
        json_patch::merge(&mut node, &extra);
        NodeState::new(serde_json::from_value(node).unwrap())
    }

    fn gpu_node() -> NodeState {
        node(
            "local-gpu",
            json!({
                "metadata": {"labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.count": "2"}},
                "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
                "status": {"allocatable": {"nvidia.com/gpu": "2"}},
            }),
        )
    }

    fn pod(spec: serde_json::Value) -> Pod {
        let mut full = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}});
        json_patch::merge(&mut full, &json!({"spec": spec}));
        serde_json::from_value(full).unwrap()
    }

    fn with_requests(requests: serde_json::Value, rest: serde_json::Value) -> Pod {
        let mut spec = json!({"containers": [{"name": "c", "resources": {"requests": requests}}]});
        json_patch::merge(&mut spec, &rest);
        pod(spec)
    }

    fn gpu_toleration() -> serde_json::Value {
        json!({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]})
    }

    #[test]
    fn requests_add_containers_take_the_largest_init_container_and_default_to_limits() {
        let p = pod(json!({
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "250m", "memory": "1Gi"}}},
            ],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
        }));
        let requests = pod_requests(&p).unwrap();
        assert_eq!(requests["cpu"], Milli(2000));
        assert_eq!(requests["memory"], quantity::parse("2Gi").unwrap());
    }

    #[test]
    fn an_unparsable_request_is_named() {
        let p = with_requests(json!({"cpu": "lots"}), json!({}));
        let error = pod_requests(&p).unwrap_err();
        assert!(
            error.contains("container \"c\" requests cpu: \"lots\""),
            "{error}"
        );
    }

    #[test]
    fn a_gpu_pod_goes_to_the_gpu_node_only_when_it_tolerates_the_taint() {
        let nodes = [node("local-cpu", json!({})), gpu_node()];
        let tolerant = with_requests(json!({"nvidia.com/gpu": "1"}), gpu_toleration());
        let requests = pod_requests(&tolerant).unwrap();
        assert_eq!(
            choose_node(&tolerant, &requests, &nodes),
            Ok("local-gpu".to_owned())
        );

        let intolerant = with_requests(json!({"nvidia.com/gpu": "1"}), json!({}));
        assert_eq!(
            choose_node(&intolerant, &requests, &nodes),
            Err("0/2 nodes are available: 1 Insufficient nvidia.com/gpu, 1 node(s) had untolerated taint {nvidia.com/gpu: present}.".to_owned())
        );
    }

    #[test]
    fn resources_already_requested_on_a_node_are_not_offered_again() {
        let mut gpu = gpu_node();
        let pod = with_requests(json!({"nvidia.com/gpu": "2"}), gpu_toleration());
        let requests = pod_requests(&pod).unwrap();
        assert!(misfits(&pod, &requests, &gpu).is_empty());
        gpu.add_pod(&requests);
        assert_eq!(
            misfits(&pod, &requests, &gpu),
            vec![Misfit::Insufficient("nvidia.com/gpu".to_owned())]
        );
    }

    #[test]
    fn every_short_resource_and_the_pod_count_are_reported() {
        let mut small = node(
            "small",
            json!({"status": {"allocatable": {"cpu": "1", "memory": "1Gi", "pods": "1"}}}),
        );
        small.add_pod(&Resources::new());
        let p = with_requests(json!({"cpu": "2", "memory": "2Gi"}), json!({}));
        let requests = pod_requests(&p).unwrap();
        let message = choose_node(&p, &requests, &[small]).unwrap_err();
        assert_eq!(
            message,
            "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory, 1 Too many pods."
        );
    }

    #[test]
    fn node_selector_and_required_affinity_filter_nodes() {
        let nodes = [
            node(
                "a",
                json!({"metadata": {"labels": {"zone": "x", "cores": "4"}}}),
            ),
            node(
                "b",
                json!({"metadata": {"labels": {"zone": "y", "cores": "16"}}}),
            ),
        ];
        let requests = Resources::new();
        let by_selector = pod(json!({"nodeSelector": {"zone": "y"}}));
        assert_eq!(
            choose_node(&by_selector, &requests, &nodes),
            Ok("b".to_owned())
        );

        let expressions = |exprs: serde_json::Value| {
            pod(
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": exprs}]}}}}),
            )
        };
        let cases = [
            (
                json!([{"key": "zone", "operator": "In", "values": ["x"]}]),
                Ok("a"),
            ),
            (
                json!([{"key": "zone", "operator": "NotIn", "values": ["x"]}]),
                Ok("b"),
            ),
            (
                json!([{"key": "cores", "operator": "Gt", "values": ["8"]}]),
                Ok("b"),
            ),
            (
                json!([{"key": "cores", "operator": "Lt", "values": ["8"]}]),
                Ok("a"),
            ),
            (
                json!([{"key": "zone", "operator": "Exists"}, {"key": "gpu", "operator": "DoesNotExist"}]),
                Ok("a"),
            ),
            (json!([{"key": "gpu", "operator": "Exists"}]), Err(())),
        ];
        for (exprs, expected) in cases {
            let p = expressions(exprs.clone());
            let chosen = choose_node(&p, &requests, &nodes);
            match expected {
                Ok(name) => assert_eq!(chosen, Ok(name.to_owned()), "{exprs}"),
                Err(()) => assert_eq!(
                    chosen,
                    Err("0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.".to_owned()),
                    "{exprs}"
                ),
            }
        }
        let by_field = pod(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]}}}}),
        );
        assert_eq!(
            choose_node(&by_field, &requests, &nodes),
            Ok("b".to_owned())
        );
    }

    #[test]
    fn tolerations_match_by_key_value_and_effect() {
        let taint = Taint {
            key: "k".into(),
            value: Some("v".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let toleration =
            |t: serde_json::Value| -> Toleration { serde_json::from_value(t).unwrap() };
        assert!(tolerates(
            &toleration(json!({"key": "k", "value": "v"})),
            &taint
        ));
        assert!(tolerates(
            &toleration(json!({"key": "k", "operator": "Exists", "effect": "NoSchedule"})),
            &taint
        ));
        assert!(tolerates(
            &toleration(json!({"operator": "Exists"})),
            &taint
        ));
        assert!(!tolerates(
            &toleration(json!({"key": "k", "value": "w"})),
            &taint
        ));
        assert!(!tolerates(
            &toleration(json!({"key": "k", "operator": "Exists", "effect": "NoExecute"})),
            &taint
        ));
    }

    #[test]
    fn cordoned_nodes_take_no_new_pods_and_prefer_no_schedule_is_ignored() {
        let cordoned = node("a", json!({"spec": {"unschedulable": true}}));
        let soft = node(
            "b",
            json!({"spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}}),
        );
        let p = pod(json!({}));
        assert_eq!(
            misfits(&p, &Resources::new(), &cordoned),
            vec![Misfit::Unschedulable]
        );
        assert_eq!(
            choose_node(&p, &Resources::new(), &[cordoned, soft]),
            Ok("b".to_owned())
        );
    }

    #[test]
    fn the_least_allocated_node_wins() {
        let mut busy = node("a", json!({}));
        busy.add_pod(&BTreeMap::from([("cpu".to_owned(), Milli(6000))]));
        let idle = node("b", json!({}));
        let p = with_requests(json!({"cpu": "1"}), json!({}));
        let requests = pod_requests(&p).unwrap();
        assert_eq!(
            choose_node(&p, &requests, &[busy, idle]),
            Ok("b".to_owned())
        );
    }

    #[test]
    fn no_nodes_is_said_plainly() {
        assert_eq!(
            choose_node(&pod(json!({})), &Resources::new(), &[]),
            Err("no nodes available to schedule pods".to_owned())
        );
    }

    #[test]
    fn only_unplaced_pods_for_the_default_scheduler_are_taken() {
        assert!(wants_default_scheduler(&pod(json!({}))));
        assert!(wants_default_scheduler(&pod(
            json!({"schedulerName": "default-scheduler"})
        )));
        assert!(!wants_default_scheduler(&pod(
            json!({"schedulerName": "other"})
        )));
        assert!(!wants_default_scheduler(&pod(
            json!({"nodeName": "pinned"})
        )));
    }
}
