//! The Kubernetes permissions the operator needs, declared next to the parts that use them and
//! aggregated here into the ClusterRole and leader-election Role rules the Helm chart installs.
//!
//! Each component declares a `&[Permission]` beside the code that makes the API calls (a
//! controller in its module, e.g. `controllers::dataset::PERMISSIONS`) and is listed once in
//! [`DECLARED`]. The chart's rules are generated from [`cluster_rules`] and
//! [`leader_election_rules`] (`aigc-operator rbac --write-dir charts/aigc-operator/files`), so
//! the RBAC a cluster grants is exactly what the code asks for, with no wildcard verbs or
//! resources. This module owns the aggregation; it must not grant anything no component
//! declares.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::rbac::v1::PolicyRule;

/// File name, in the chart's `files/`, of the generated ClusterRole rules.
pub const CLUSTER_RULES_FILE: &str = "clusterrole-rules.yaml";
/// File name, in the chart's `files/`, of the generated leader-election Role rules.
pub const LEADER_ELECTION_RULES_FILE: &str = "role-rules.yaml";
/// File name, in the chart's `files/`, of the rules aggregated into the `view` role.
pub const USER_VIEW_RULES_FILE: &str = "aggregate-to-view-rules.yaml";
/// File name, in the chart's `files/`, of the rules aggregated into the `edit` role.
pub const USER_EDIT_RULES_FILE: &str = "aggregate-to-edit-rules.yaml";

/// A Kubernetes API verb. A closed set, so a wildcard cannot be granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    /// Read one object.
    Get,
    /// Read a collection.
    List,
    /// Stream changes (reflectors, controllers).
    Watch,
    Create,
    /// Replace a whole object (PUT).
    Update,
    /// Partial change, including server-side apply.
    Patch,
    Delete,
    /// Delete every object matching a selector (people's `edit` role; the operator never).
    DeleteCollection,
}

impl Verb {
    /// The verb as RBAC spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

/// Where a permission is granted: across the cluster (ClusterRole) or only in the namespace the
/// operator runs in (Role).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    OperatorNamespace,
}

/// Some verbs on some resources of one API group, as one component of the operator uses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    /// API group; `""` is the core group.
    pub api_group: &'static str,
    /// Plural resource names, with `/subresource` where one is meant, e.g. `datasets/status`.
    pub resources: &'static [&'static str],
    /// What may be done to them.
    pub verbs: &'static [Verb],
    /// Where it is granted.
    pub scope: Scope,
}

use Verb::{Create, Delete, DeleteCollection, Get, List, Patch, Update, Watch};

const READ: &[Verb] = &[Get, List, Watch];
const OWN_CHILDREN: &[Verb] = &[Get, List, Watch, Create, Patch, Delete];

/// The five aigc.dev kinds: every controller watches its kind and the kinds it refers to, adds
/// finalizers by patch and owns its status. TrainingJobs register their output as a new Model.
pub const CUSTOM_RESOURCES: &[Permission] = &[
    Permission {
        api_group: "aigc.dev",
        resources: &[
            "datasets",
            "inferenceservices",
            "models",
            "storagetiers",
            "trainingjobs",
        ],
        verbs: &[Get, List, Watch, Patch],
        scope: Scope::Cluster,
    },
    Permission {
        api_group: "aigc.dev",
        resources: &["models"],
        verbs: &[Create],
        scope: Scope::Cluster,
    },
    Permission {
        api_group: "aigc.dev",
        resources: &[
            "datasets/status",
            "inferenceservices/status",
            "models/status",
            "storagetiers/status",
            "trainingjobs/status",
        ],
        verbs: &[Get, Patch],
        scope: Scope::Cluster,
    },
    // Setting an owner reference with blockOwnerDeletion on a child needs update on the
    // owner's finalizers subresource (OwnerReferencesPermissionEnforcement).
    Permission {
        api_group: "aigc.dev",
        resources: &[
            "datasets/finalizers",
            "inferenceservices/finalizers",
            "models/finalizers",
            "storagetiers/finalizers",
            "trainingjobs/finalizers",
        ],
        verbs: &[Update],
        scope: Scope::Cluster,
    },
];

/// Worker pods, mover and prepare Jobs, inference Deployments with their Services and
/// autoscalers, hot-tier PVCs and the config the workers mount.
pub const WORKLOADS: &[Permission] = &[
    Permission {
        api_group: "",
        resources: &["configmaps", "persistentvolumeclaims", "pods", "services"],
        verbs: OWN_CHILDREN,
        scope: Scope::Cluster,
    },
    Permission {
        api_group: "apps",
        resources: &["deployments"],
        verbs: OWN_CHILDREN,
        scope: Scope::Cluster,
    },
    Permission {
        api_group: "batch",
        resources: &["jobs"],
        verbs: OWN_CHILDREN,
        scope: Scope::Cluster,
    },
    Permission {
        api_group: "autoscaling",
        resources: &["horizontalpodautoscalers"],
        verbs: OWN_CHILDREN,
        scope: Scope::Cluster,
    },
    // Readiness of inference replicas behind their Service.
    Permission {
        api_group: "",
        resources: &["endpoints"],
        verbs: READ,
        scope: Scope::Cluster,
    },
    // Credentials are only ever referenced from specs and read, never written.
    Permission {
        api_group: "",
        resources: &["secrets"],
        verbs: READ,
        scope: Scope::Cluster,
    },
];

/// The resource scheduler's view of capacity: nodes (pods are read through [`WORKLOADS`]).
pub const SCHEDULER: &[Permission] = &[Permission {
    api_group: "",
    resources: &["nodes"],
    verbs: READ,
    scope: Scope::Cluster,
}];

/// Events for every status transition, through the events.k8s.io API.
pub const EVENTS: &[Permission] = &[Permission {
    api_group: "events.k8s.io",
    resources: &["events"],
    verbs: &[Create, Patch],
    scope: Scope::Cluster,
}];

/// Leader election on a Lease in the operator's own namespace.
pub const LEADER_ELECTION: &[Permission] = &[Permission {
    api_group: "coordination.k8s.io",
    resources: &["leases"],
    verbs: &[Get, Create, Update],
    scope: Scope::OperatorNamespace,
}];

/// Every permission any part of the operator declares.
pub fn operator_permissions() -> impl Iterator<Item = &'static Permission> {
    [
        CUSTOM_RESOURCES,
        WORKLOADS,
        SCHEDULER,
        EVENTS,
        LEADER_ELECTION,
    ]
    .into_iter()
    .flatten()
}

/// The ClusterRole rules: every cluster-scoped permission, merged.
pub fn cluster_rules() -> Vec<PolicyRule> {
    merged_rules(
        operator_permissions()
            .filter(|p| p.scope == Scope::Cluster)
            .flat_map(Permission::grants),
    )
}

/// The leader-election Role rules for the operator's namespace.
pub fn leader_election_rules() -> Vec<PolicyRule> {
    merged_rules(
        operator_permissions()
            .filter(|p| p.scope == Scope::OperatorNamespace)
            .flat_map(Permission::grants),
    )
}

const USER_VIEW: &[Verb] = &[Get, List, Watch];
const USER_EDIT: &[Verb] = &[Create, Update, Patch, Delete, DeleteCollection];

/// Rules for people rather than the operator: read access to every aigc.dev kind and its
/// status, aggregated into Kubernetes' `view` role (and through it `edit` and `admin`).
pub fn user_view_rules() -> Vec<PolicyRule> {
    let crds = aigc_crds::all_crds();
    let resources: Vec<(String, String)> = crds
        .iter()
        .flat_map(|crd| {
            let (group, plural) = (&crd.spec.group, &crd.spec.names.plural);
            [
                (group.clone(), plural.clone()),
                (group.clone(), format!("{plural}/status")),
            ]
        })
        .collect();
    merged_rules(
        resources
            .iter()
            .map(|(group, resource)| (group.as_str(), resource.as_str(), USER_VIEW)),
    )
}

/// Rules for people: changing the namespaced aigc.dev kinds (not their status, which the
/// operator owns, nor the cluster-wide StorageTiers), aggregated into Kubernetes' `edit` role.
pub fn user_edit_rules() -> Vec<PolicyRule> {
    let crds = aigc_crds::all_crds();
    merged_rules(
        crds.iter()
            .filter(|crd| crd.spec.scope == "Namespaced")
            .map(|crd| {
                (
                    crd.spec.group.as_str(),
                    crd.spec.names.plural.as_str(),
                    USER_EDIT,
                )
            }),
    )
}

/// Every rules file the chart embeds, by file name under `charts/aigc-operator/files/`.
pub fn chart_rule_files() -> Vec<(&'static str, Vec<PolicyRule>)> {
    vec![
        (CLUSTER_RULES_FILE, cluster_rules()),
        (LEADER_ELECTION_RULES_FILE, leader_election_rules()),
        (USER_VIEW_RULES_FILE, user_view_rules()),
        (USER_EDIT_RULES_FILE, user_edit_rules()),
    ]
}

/// Rules as the YAML list the chart embeds under `rules:`.
pub fn rules_yaml(rules: &[PolicyRule]) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(rules)
}

impl Permission {
    /// (group, resource, verbs) for each resource it names.
    fn grants(&self) -> impl Iterator<Item = (&'static str, &'static str, &'static [Verb])> {
        let (group, verbs) = (self.api_group, self.verbs);
        self.resources
            .iter()
            .map(move |resource| (group, *resource, verbs))
    }
}

/// Union the verbs per (group, resource), then put the resources of a group that share the
/// same verbs into one rule. The result is deterministic: groups, resources and verbs sorted.
fn merged_rules<'a>(
    grants: impl IntoIterator<Item = (&'a str, &'a str, &'a [Verb])>,
) -> Vec<PolicyRule> {
    let mut verbs_by_resource: BTreeMap<(&str, &str), BTreeSet<Verb>> = BTreeMap::new();
    for (group, resource, verbs) in grants {
        verbs_by_resource
            .entry((group, resource))
            .or_default()
            .extend(verbs);
    }
    let mut resources_by_grant: BTreeMap<(&str, BTreeSet<Verb>), Vec<&str>> = BTreeMap::new();
    for ((group, resource), verbs) in verbs_by_resource {
        resources_by_grant
            .entry((group, verbs))
            .or_default()
            .push(resource);
    }
    resources_by_grant
        .into_iter()
        .map(|((group, verbs), resources)| PolicyRule {
            api_groups: Some(vec![group.to_owned()]),
            resources: Some(resources.into_iter().map(str::to_owned).collect()),
            verbs: verbs.into_iter().map(|v| v.as_str().to_owned()).collect(),
            ..PolicyRule::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(rules: &[PolicyRule], group: &str, resource: &str) -> Vec<String> {
        rules
            .iter()
            .filter(|r| r.api_groups.as_deref() == Some(&[group.to_owned()][..]))
            .filter(|r| r.resources.iter().flatten().any(|res| res == resource))
            .flat_map(|r| r.verbs.clone())
            .collect()
    }

    #[test]
    fn no_wildcards_and_no_empty_grants() {
        for permission in operator_permissions() {
            assert!(!permission.resources.is_empty(), "{permission:?}");
            assert!(!permission.verbs.is_empty(), "{permission:?}");
            assert_ne!(permission.api_group, "*", "{permission:?}");
            for resource in permission.resources {
                assert!(
                    !resource.contains('*') && !resource.is_empty(),
                    "{permission:?}"
                );
            }
        }
    }

    #[test]
    fn verbs_of_one_resource_are_merged_into_one_rule() {
        let rules = cluster_rules();
        assert_eq!(
            granted(&rules, "aigc.dev", "models"),
            ["get", "list", "watch", "create", "patch"]
        );
        assert_eq!(
            granted(&rules, "aigc.dev", "datasets"),
            ["get", "list", "watch", "patch"]
        );
        let mut seen = BTreeSet::new();
        for rule in &rules {
            for resource in rule.resources.iter().flatten() {
                assert!(
                    seen.insert((rule.api_groups.clone(), resource.clone())),
                    "{resource} appears in two rules"
                );
            }
        }
    }

    #[test]
    fn secrets_and_nodes_are_read_only_and_events_are_append_only() {
        let rules = cluster_rules();
        assert_eq!(granted(&rules, "", "secrets"), ["get", "list", "watch"]);
        assert_eq!(granted(&rules, "", "nodes"), ["get", "list", "watch"]);
        assert_eq!(
            granted(&rules, "events.k8s.io", "events"),
            ["create", "patch"]
        );
    }

    #[test]
    fn leases_are_granted_only_in_the_operator_namespace() {
        assert!(granted(&cluster_rules(), "coordination.k8s.io", "leases").is_empty());
        assert_eq!(
            granted(&leader_election_rules(), "coordination.k8s.io", "leases"),
            ["get", "create", "update"]
        );
    }

    #[test]
    fn the_operator_never_deletes_collections() {
        for permission in operator_permissions() {
            assert!(
                !permission.verbs.contains(&DeleteCollection),
                "{permission:?}"
            );
        }
    }

    #[test]
    fn people_may_read_every_kind_and_edit_the_namespaced_ones_but_not_status() {
        let view = user_view_rules();
        let edit = user_edit_rules();
        assert_eq!(
            granted(&view, "aigc.dev", "storagetiers"),
            ["get", "list", "watch"]
        );
        assert_eq!(
            granted(&view, "aigc.dev", "trainingjobs/status"),
            ["get", "list", "watch"]
        );
        assert_eq!(
            granted(&edit, "aigc.dev", "trainingjobs"),
            ["create", "update", "patch", "delete", "deletecollection"]
        );
        assert!(granted(&edit, "aigc.dev", "storagetiers").is_empty());
        assert!(granted(&edit, "aigc.dev", "trainingjobs/status").is_empty());
    }

    #[test]
    fn every_kind_has_its_status_and_finalizers_subresources() {
        let rules = cluster_rules();
        for crd in aigc_crds::all_crds() {
            let plural = &crd.spec.names.plural;
            assert_eq!(
                granted(&rules, "aigc.dev", &format!("{plural}/status")),
                ["get", "patch"]
            );
            assert_eq!(
                granted(&rules, "aigc.dev", &format!("{plural}/finalizers")),
                ["update"]
            );
            assert!(!granted(&rules, "aigc.dev", plural).is_empty());
        }
    }
}
