//! The resource types this server serves: the built-in kinds our workloads use and every
//! custom resource whose CRD has been created. Discovery, OpenAPI, routing and storage all read
//! from this registry; it holds no objects.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::status::ApiError;

/// Where a scalable resource keeps its replica counts (the `scale` subresource).
#[derive(Clone, Debug, PartialEq)]
pub struct ScalePaths {
    /// JSON path of the desired replicas, e.g. `.spec.replicas`.
    pub spec_replicas: String,
    /// JSON path of the observed replicas, e.g. `.status.replicas`.
    pub status_replicas: String,
    /// JSON path of the label selector string, if any.
    pub label_selector: Option<String>,
}

/// One `additionalPrinterColumns` entry (or a built-in equivalent).
#[derive(Clone, Debug, PartialEq)]
pub struct PrinterColumn {
    /// Column header.
    pub name: String,
    /// OpenAPI type: `string`, `integer`, `number`, `boolean`, `date`.
    pub type_: String,
    /// Optional format (`name`, `int32`, ...).
    pub format: String,
    /// Shown in `kubectl explain`-like help.
    pub description: String,
    /// 0 for default columns, more for `-o wide` only.
    pub priority: i64,
    /// Simple JSON path into the object.
    pub json_path: String,
}

/// A served resource at one group/version.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// API group, empty for the core group.
    pub group: String,
    /// Version (`v1`, `v1alpha1`).
    pub version: String,
    /// Kind, e.g. `Dataset`.
    pub kind: String,
    /// `listKind`, e.g. `DatasetList`.
    pub list_kind: String,
    /// Plural resource name used in URLs.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// `kubectl` short names.
    pub short_names: Vec<String>,
    /// Categories (`all`, `aigc`).
    pub categories: Vec<String>,
    /// Whether `/status` is a separate subresource.
    pub status_subresource: bool,
    /// The `scale` subresource, when the kind has one.
    pub scale: Option<ScalePaths>,
    /// The CRD's `openAPIV3Schema` for this version; `None` for built-ins.
    pub schema: Option<Value>,
    /// The schema's CEL rules, compiled.
    pub cel_rules: crate::schema::CelRules,
    /// Extra columns for `kubectl get`.
    pub printer_columns: Vec<PrinterColumn>,
    /// Whether `metadata.generation` tracks spec changes.
    pub tracks_generation: bool,
    /// Whether the kind is compiled into clients (strategic merge patch applies).
    pub builtin: bool,
}

impl Resource {
    /// `apiVersion` as written in objects.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `group/version` as written in discovery paths (`v1` for the core group).
    pub fn group_version(&self) -> String {
        self.api_version()
    }

    /// Storage identity: all versions of a resource share one set of objects.
    pub fn key(&self) -> ResourceKey {
        ResourceKey {
            group: self.group.clone(),
            plural: self.plural.clone(),
        }
    }

    /// The collection URL prefix (`/api/v1`, `/apis/apps/v1`).
    pub fn prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }
}

/// Identity of a stored resource type: group and plural.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    /// API group.
    pub group: String,
    /// Plural resource name.
    pub plural: String,
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    status: bool,
    scalable: bool,
    generation: bool,
}

const fn builtin(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
) -> Builtin {
    Builtin {
        group,
        version,
        kind,
        plural,
        namespaced,
        short_names,
        categories: &[],
        status: false,
        scalable: false,
        generation: false,
    }
}

impl Builtin {
    const fn with_status(mut self) -> Self {
        self.status = true;
        self
    }
    const fn in_all(mut self) -> Self {
        self.categories = &["all"];
        self
    }
    const fn scalable(mut self) -> Self {
        self.scalable = true;
        self.generation = true;
        self
    }
    const fn generational(mut self) -> Self {
        self.generation = true;
        self
    }
}

/// The built-in kinds the project's workloads and tools use.
const BUILTINS: &[Builtin] = &[
    builtin("", "v1", "Namespace", "namespaces", false, &["ns"]).with_status(),
    builtin("", "v1", "Pod", "pods", true, &["po"])
        .with_status()
        .in_all(),
    builtin("", "v1", "Service", "services", true, &["svc"])
        .with_status()
        .in_all(),
    builtin("", "v1", "Endpoints", "endpoints", true, &["ep"]),
    builtin(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        true,
        &[],
    ),
    builtin("", "v1", "ConfigMap", "configmaps", true, &["cm"]),
    builtin("", "v1", "Secret", "secrets", true, &[]),
    builtin("", "v1", "ServiceAccount", "serviceaccounts", true, &["sa"]),
    builtin("", "v1", "Event", "events", true, &["ev"]),
    builtin("", "v1", "Node", "nodes", false, &["no"]).with_status(),
    builtin(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        true,
        &["pvc"],
    )
    .with_status(),
    builtin("apps", "v1", "Deployment", "deployments", true, &["deploy"])
        .with_status()
        .in_all()
        .scalable(),
    builtin("apps", "v1", "ReplicaSet", "replicasets", true, &["rs"])
        .with_status()
        .in_all()
        .scalable(),
    builtin("batch", "v1", "Job", "jobs", true, &[])
        .with_status()
        .in_all()
        .generational(),
    builtin("coordination.k8s.io", "v1", "Lease", "leases", true, &[]),
    builtin("events.k8s.io", "v1", "Event", "events", true, &["ev"]),
    builtin(
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        true,
        &[],
    ),
    builtin(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        false,
        &[],
    ),
    builtin(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        true,
        &[],
    ),
    builtin(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
        &[],
    ),
    builtin(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        true,
        &["hpa"],
    )
    .with_status()
    .in_all()
    .generational(),
    // Rendered by the operator's Helm chart.
    builtin(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
        &["pdb"],
    )
    .with_status()
    .generational(),
    builtin(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        true,
        &["netpol"],
    )
    .generational(),
    builtin(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        &["crd", "crds"],
    )
    .with_status()
    .generational(),
];

impl From<&Builtin> for Resource {
    fn from(b: &Builtin) -> Self {
        Resource {
            group: b.group.to_owned(),
            version: b.version.to_owned(),
            kind: b.kind.to_owned(),
            list_kind: format!("{}List", b.kind),
            plural: b.plural.to_owned(),
            singular: b.kind.to_lowercase(),
            namespaced: b.namespaced,
            short_names: b.short_names.iter().map(|s| (*s).to_owned()).collect(),
            categories: b.categories.iter().map(|s| (*s).to_owned()).collect(),
            status_subresource: b.status,
            scale: b.scalable.then(|| ScalePaths {
                spec_replicas: ".spec.replicas".to_owned(),
                status_replicas: ".status.replicas".to_owned(),
                label_selector: None,
            }),
            schema: None,
            cel_rules: crate::schema::CelRules::default(),
            printer_columns: Vec::new(),
            tracks_generation: b.generation,
            builtin: true,
        }
    }
}

/// Every served resource, by group, version and plural.
#[derive(Clone, Default)]
pub struct Registry {
    by_path: BTreeMap<(String, String, String), Arc<Resource>>,
    /// Version order per group as declared (CRD version order, preferred first).
    group_versions: BTreeMap<String, Vec<String>>,
}

impl Registry {
    /// A registry holding the built-in kinds.
    pub fn with_builtins() -> Self {
        let mut registry = Self::default();
        for b in BUILTINS {
            registry.insert(Resource::from(b));
        }
        registry
    }

    fn insert(&mut self, resource: Resource) {
        let versions = self
            .group_versions
            .entry(resource.group.clone())
            .or_default();
        if !versions.contains(&resource.version) {
            versions.push(resource.version.clone());
        }
        self.by_path.insert(
            (
                resource.group.clone(),
                resource.version.clone(),
                resource.plural.clone(),
            ),
            Arc::new(resource),
        );
    }

    /// The resource served at `group/version/plural`.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<Resource>> {
        self.by_path
            .get(&(group.to_owned(), version.to_owned(), plural.to_owned()))
            .cloned()
    }

    /// The resource for an `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<Resource>> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.by_path
            .values()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
            .cloned()
    }

    /// All served versions of one stored resource, preferred first.
    pub fn versions_of(&self, key: &ResourceKey) -> Vec<Arc<Resource>> {
        let order = self.group_versions.get(&key.group);
        let mut found: Vec<Arc<Resource>> = self
            .by_path
            .values()
            .filter(|r| r.group == key.group && r.plural == key.plural)
            .cloned()
            .collect();
        found.sort_by_key(|r| {
            order
                .and_then(|o| o.iter().position(|v| *v == r.version))
                .unwrap_or(usize::MAX)
        });
        found
    }

    /// Groups with their versions, preferred version first; the core group is `""`.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = self
            .group_versions
            .iter()
            .map(|(g, v)| (g.clone(), v.clone()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        // Built-in groups first, in a stable order, then custom groups.
        groups.sort_by_key(|(g, _)| (!BUILTINS.iter().any(|b| b.group == g), g.clone()));
        groups
    }

    /// Resources served at one group/version.
    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<Arc<Resource>> {
        self.by_path
            .values()
            .filter(|r| r.group == group && r.version == version)
            .cloned()
            .collect()
    }

    /// Serve the versions of a custom resource described by a CRD object, replacing any
    /// previous registration of that CRD.
    pub fn register_crd(&mut self, crd: &Value) -> Result<(), ApiError> {
        let resources = resources_of_crd(crd)?;
        if let Some(first) = resources.first() {
            self.unregister(&first.key());
        }
        for resource in resources {
            self.insert(resource);
        }
        Ok(())
    }

    /// Stop serving every version of a resource.
    pub fn unregister(&mut self, key: &ResourceKey) {
        self.by_path
            .retain(|(g, _, p), _| !(*g == key.group && *p == key.plural));
        let group = &key.group;
        let remaining: Vec<String> = self
            .by_path
            .keys()
            .filter(|(g, _, _)| g == group)
            .map(|(_, v, _)| v.clone())
            .collect();
        if let Some(versions) = self.group_versions.get_mut(group) {
            versions.retain(|v| remaining.contains(v));
        }
    }
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The strings of the array at `pointer` (empty when absent).
pub(crate) fn strings_at(value: &Value, pointer: &str) -> Vec<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The served versions of a (validated) CRD as resources.
pub fn resources_of_crd(crd: &Value) -> Result<Vec<Resource>, ApiError> {
    let group = str_at(crd, "/spec/group");
    let kind = str_at(crd, "/spec/names/kind");
    let plural = str_at(crd, "/spec/names/plural");
    let singular = match str_at(crd, "/spec/names/singular") {
        "" => kind.to_lowercase(),
        s => s.to_owned(),
    };
    let list_kind = match str_at(crd, "/spec/names/listKind") {
        "" => format!("{kind}List"),
        s => s.to_owned(),
    };
    let namespaced = str_at(crd, "/spec/scope") != "Cluster";
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut resources = Vec::new();
    for version in versions.iter().filter(|v| v["served"] == Value::Bool(true)) {
        let scale = version.pointer("/subresources/scale").map(|s| ScalePaths {
            spec_replicas: str_at(s, "/specReplicasPath").to_owned(),
            status_replicas: str_at(s, "/statusReplicasPath").to_owned(),
            label_selector: s
                .get("labelSelectorPath")
                .and_then(Value::as_str)
                .map(str::to_owned),
        });
        let printer_columns = version
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|columns| {
                columns
                    .iter()
                    .map(|c| PrinterColumn {
                        name: str_at(c, "/name").to_owned(),
                        type_: str_at(c, "/type").to_owned(),
                        format: str_at(c, "/format").to_owned(),
                        description: str_at(c, "/description").to_owned(),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        json_path: str_at(c, "/jsonPath").to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        resources.push(Resource {
            group: group.to_owned(),
            version: str_at(version, "/name").to_owned(),
            kind: kind.to_owned(),
            list_kind: list_kind.clone(),
            plural: plural.to_owned(),
            singular: singular.clone(),
            namespaced,
            short_names: strings_at(crd, "/spec/names/shortNames"),
            categories: strings_at(crd, "/spec/names/categories"),
            status_subresource: version.pointer("/subresources/status").is_some(),
            scale,
            cel_rules: crate::schema::CelRules::compile(version.pointer("/schema/openAPIV3Schema")),
            schema: version.pointer("/schema/openAPIV3Schema").cloned(),
            printer_columns,
            tracks_generation: true,
            builtin: false,
        });
    }
    Ok(resources)
}
