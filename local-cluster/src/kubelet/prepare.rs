//! Everything a pod needs before its processes start, as host paths and values: volumes
//! (emptyDir, PVC, hostPath, secret and configMap files), each container's environment
//! (`valueFrom`, `envFrom`, `$(VAR)` expansion), its program from the image, and the mount
//! path rewrites of its command, args and env.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, PersistentVolumeClaim, Pod, Probe, Secret, Volume,
};
use kube::Api;

use super::expand::{PathRewrites, expand};
use super::images::Images;
use super::probes::ProbeTarget;
use super::process::Launch;

/// Where the kubelet keeps pod directories.
#[derive(Clone, Debug)]
pub struct Dirs {
    /// Per-pod directories: `<pods>/<uid>/{work,volumes,termination}`.
    pub pods: PathBuf,
    /// Persistent directories of claims: `<claims>/<namespace>/<claim>`.
    pub claims: PathBuf,
    /// Root of hostPath volumes, when set.
    pub host_path_root: Option<PathBuf>,
}

impl Dirs {
    /// The directory of one pod.
    pub fn pod(&self, uid: &str) -> PathBuf {
        self.pods.join(uid)
    }
}

/// One container, ready to start.
#[derive(Clone, Debug)]
pub struct ContainerPlan {
    /// Container name.
    pub name: String,
    /// Image as written in the pod.
    pub image: String,
    /// What to run.
    pub launch: Launch,
    /// The host file behind `terminationMessagePath`.
    pub termination_file: PathBuf,
    /// `terminationMessagePolicy: FallbackToLogsOnError`.
    pub fallback_to_logs: bool,
    /// `readinessProbe`.
    pub readiness: Option<Probe>,
    /// `livenessProbe`.
    pub liveness: Option<Probe>,
    /// Where probes go.
    pub probe_target: ProbeTarget,
}

/// A container that cannot run, with the waiting reason and message to report.
#[derive(Clone, Debug)]
pub struct Blocked {
    /// `ErrImagePull` or `CreateContainerConfigError`.
    pub reason: &'static str,
    /// What is wrong.
    pub message: String,
}

/// What the kubelet needs to look up in the API and on the node.
pub struct Environment<'a> {
    /// API client.
    pub client: &'a kube::Client,
    /// Directories.
    pub dirs: &'a Dirs,
    /// Image resolution.
    pub images: &'a Images,
    /// The node's capacity, for `resourceFieldRef` of containers without limits.
    pub node_capacity: &'a BTreeMap<String, String>,
    /// The pod IP.
    pub pod_ip: &'a str,
}

fn io_message(action: &str, path: &Path, error: &std::io::Error) -> String {
    format!("{action} {}: {error}", path.display())
}

fn create_dir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| io_message("creating", path, &e))
}

fn write_file(dir: &Path, relative: &str, bytes: &[u8]) -> Result<(), String> {
    let relative = relative.trim_start_matches('/');
    if relative.split('/').any(|part| part == "..") {
        return Err(format!(
            "volume item path {relative:?} must not contain '..'"
        ));
    }
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        create_dir(parent)?;
    }
    std::fs::write(&path, bytes).map_err(|e| io_message("writing", &path, &e))
}

/// Files of a secret or configMap volume: every key, or only the listed items.
fn write_items(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[(String, String)]>,
    source: &str,
) -> Result<(), String> {
    create_dir(dir)?;
    match items {
        None => {
            for (key, bytes) in data {
                write_file(dir, key, bytes)?;
            }
        }
        Some(items) => {
            for (key, path) in items {
                let bytes = data
                    .get(key)
                    .ok_or_else(|| format!("{source} has no key {key:?}"))?;
                write_file(dir, path, bytes)?;
            }
        }
    }
    Ok(())
}

async fn secret_data(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading secret {namespace}/{name}: {e}"))?;
    Ok(secret.map(|s| {
        let mut data: BTreeMap<String, Vec<u8>> = s
            .string_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        data.extend(
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        data
    }))
}

async fn config_map_data(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let config_map = api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading configmap {namespace}/{name}: {e}"))?;
    Ok(config_map.map(|c| {
        let mut data: BTreeMap<String, Vec<u8>> = c
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        data.extend(
            c.binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        data
    }))
}

/// Create the host directory of one volume and fill it.
async fn volume_dir(
    volume: &Volume,
    pod_dir: &Path,
    namespace: &str,
    env: &Environment<'_>,
) -> Result<PathBuf, String> {
    let own = pod_dir.join("volumes").join(&volume.name);
    if volume.empty_dir.is_some() {
        create_dir(&own)?;
        return Ok(own);
    }
    if let Some(claim) = &volume.persistent_volume_claim {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), namespace);
        let exists = api
            .get_opt(&claim.claim_name)
            .await
            .map_err(|e| {
                format!(
                    "reading persistentvolumeclaim {namespace}/{}: {e}",
                    claim.claim_name
                )
            })?
            .is_some();
        if !exists {
            return Err(format!(
                "volume {:?}: persistentvolumeclaim {:?} not found in namespace {namespace}",
                volume.name, claim.claim_name
            ));
        }
        let dir = env.dirs.claims.join(namespace).join(&claim.claim_name);
        create_dir(&dir)?;
        return Ok(dir);
    }
    if let Some(host) = &volume.host_path {
        let dir = match &env.dirs.host_path_root {
            Some(root) => {
                let dir = root.join(host.path.trim_start_matches('/'));
                create_dir(&dir)?;
                dir
            }
            None => PathBuf::from(&host.path),
        };
        return Ok(dir);
    }
    if let Some(source) = &volume.secret {
        let name = source.secret_name.clone().unwrap_or_default();
        let items: Option<Vec<(String, String)>> = source.items.as_ref().map(|items| {
            items
                .iter()
                .map(|i| (i.key.clone(), i.path.clone()))
                .collect()
        });
        match secret_data(env.client, namespace, &name).await? {
            Some(data) => write_items(&own, &data, items.as_deref(), &format!("secret {name:?}"))?,
            None if source.optional == Some(true) => create_dir(&own)?,
            None => {
                return Err(format!(
                    "volume {:?}: secret {name:?} not found",
                    volume.name
                ));
            }
        }
        return Ok(own);
    }
    if let Some(source) = &volume.config_map {
        let name = source.name.clone();
        let items: Option<Vec<(String, String)>> = source.items.as_ref().map(|items| {
            items
                .iter()
                .map(|i| (i.key.clone(), i.path.clone()))
                .collect()
        });
        match config_map_data(env.client, namespace, &name).await? {
            Some(data) => write_items(
                &own,
                &data,
                items.as_deref(),
                &format!("configmap {name:?}"),
            )?,
            None if source.optional == Some(true) => create_dir(&own)?,
            None => {
                return Err(format!(
                    "volume {:?}: configmap {name:?} not found",
                    volume.name
                ));
            }
        }
        return Ok(own);
    }
    Err(format!(
        "volume {:?} has a type the process kubelet does not support: supported are emptyDir, persistentVolumeClaim, hostPath, secret and configMap",
        volume.name
    ))
}

/// A quantity such as `500m`, `2`, `1.5Gi` as a number.
pub fn quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        _ => return None,
    };
    Some(number * factor)
}

fn field_value(pod: &Pod, path: &str, pod_ip: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix("']"))
            .map(|key| map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(value) = keyed("metadata.labels['", meta.labels.as_ref()) {
        return Ok(value);
    }
    if let Some(value) = keyed("metadata.annotations['", meta.annotations.as_ref()) {
        return Ok(value);
    }
    let spec = pod.spec.as_ref();
    let text = |value: Option<&String>| value.cloned().unwrap_or_default();
    Ok(match path {
        "metadata.name" => text(meta.name.as_ref()),
        "metadata.namespace" => text(meta.namespace.as_ref()),
        "metadata.uid" => text(meta.uid.as_ref()),
        "metadata.labels" | "metadata.annotations" => {
            let map = if path == "metadata.labels" {
                &meta.labels
            } else {
                &meta.annotations
            };
            map.iter()
                .flatten()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        "spec.nodeName" => text(spec.and_then(|s| s.node_name.as_ref())),
        "spec.serviceAccountName" => text(spec.and_then(|s| s.service_account_name.as_ref())),
        "status.podIP" | "status.podIPs" => pod_ip.to_owned(),
        "status.hostIP" | "status.hostIPs" => "127.0.0.1".to_owned(),
        other => {
            return Err(format!(
                "fieldRef {other:?} is not supported: use metadata.name, metadata.namespace, metadata.uid, metadata.labels['KEY'], metadata.annotations['KEY'], spec.nodeName, spec.serviceAccountName, status.podIP or status.hostIP"
            ));
        }
    })
}

fn resource_value(
    container: &Container,
    resource: &str,
    divisor: Option<&str>,
    node: &BTreeMap<String, String>,
) -> Result<String, String> {
    let (kind, name) = resource.split_once('.').ok_or_else(|| {
        format!("resourceFieldRef {resource:?} must be limits.NAME or requests.NAME")
    })?;
    let resources = container.resources.as_ref();
    let declared = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => {
            return Err(format!(
                "resourceFieldRef {resource:?} must start with limits. or requests."
            ));
        }
    }
    .and_then(|m| m.get(name))
    .map(|q| q.0.clone());
    let text = match (declared, kind) {
        (Some(text), _) => text,
        (None, "limits") => node.get(name).cloned().unwrap_or_else(|| "0".into()),
        (None, _) => "0".into(),
    };
    let value = quantity(&text)
        .ok_or_else(|| format!("resource {resource}: {text:?} is not a quantity"))?;
    let divisor = quantity(divisor.unwrap_or("1"))
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    Ok(format!("{}", (value / divisor).ceil() as i64))
}

async fn env_var_value(
    var: &EnvVar,
    pod: &Pod,
    container: &Container,
    env: &Environment<'_>,
    vars: &HashMap<String, String>,
) -> Result<Option<String>, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let Some(from) = &var.value_from else {
        return Ok(Some(expand(var.value.as_deref().unwrap_or(""), vars)));
    };
    if let Some(field) = &from.field_ref {
        return field_value(pod, &field.field_path, env.pod_ip).map(Some);
    }
    if let Some(resource) = &from.resource_field_ref {
        let divisor = resource.divisor.as_ref().map(|q| q.0.as_str());
        return resource_value(container, &resource.resource, divisor, env.node_capacity).map(Some);
    }
    let (kind, name, key, optional, data) = if let Some(key_ref) = &from.secret_key_ref {
        let data = secret_data(env.client, namespace, &key_ref.name).await?;
        (
            "secret",
            key_ref.name.clone(),
            key_ref.key.clone(),
            key_ref.optional,
            data,
        )
    } else if let Some(key_ref) = &from.config_map_key_ref {
        let data = config_map_data(env.client, namespace, &key_ref.name).await?;
        (
            "configmap",
            key_ref.name.clone(),
            key_ref.key.clone(),
            key_ref.optional,
            data,
        )
    } else {
        return Err(format!("env {:?}: valueFrom names no source", var.name));
    };
    match data.map(|d| d.get(&key).cloned()) {
        Some(Some(bytes)) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        _ if optional == Some(true) => Ok(None),
        None => Err(format!("env {:?}: {kind} {name:?} not found", var.name)),
        Some(None) => Err(format!(
            "env {:?}: couldn't find key {key} in {kind} {namespace}/{name}",
            var.name
        )),
    }
}

async fn container_env(
    pod: &Pod,
    container: &Container,
    env: &Environment<'_>,
    workdir: &Path,
) -> Result<Vec<(String, String)>, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut order: Vec<String> = Vec::new();
    let mut vars: HashMap<String, String> = HashMap::new();
    let set = |name: String,
               value: String,
               order: &mut Vec<String>,
               vars: &mut HashMap<String, String>| {
        if vars.insert(name.clone(), value).is_none() {
            order.push(name);
        }
    };
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    set("PATH".into(), path, &mut order, &mut vars);
    set(
        "HOSTNAME".into(),
        pod.metadata.name.clone().unwrap_or_default(),
        &mut order,
        &mut vars,
    );
    set(
        "HOME".into(),
        workdir.display().to_string(),
        &mut order,
        &mut vars,
    );
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let (data, optional, what) = if let Some(r) = &source.config_map_ref {
            (
                config_map_data(env.client, namespace, &r.name).await?,
                r.optional,
                format!("configmap {:?}", r.name),
            )
        } else if let Some(r) = &source.secret_ref {
            (
                secret_data(env.client, namespace, &r.name).await?,
                r.optional,
                format!("secret {:?}", r.name),
            )
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (key, bytes) in data {
                    set(
                        format!("{prefix}{key}"),
                        String::from_utf8_lossy(&bytes).into_owned(),
                        &mut order,
                        &mut vars,
                    );
                }
            }
            None if optional == Some(true) => {}
            None => return Err(format!("envFrom: {what} not found")),
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(value) = env_var_value(var, pod, container, env, &vars).await? {
            set(var.name.clone(), value, &mut order, &mut vars);
        }
    }
    Ok(order
        .into_iter()
        .map(|name| {
            let value = vars.remove(&name).unwrap_or_default();
            (name, value)
        })
        .collect())
}

/// Create the pod's directories and volumes; the host directory of each volume by name.
pub async fn pod_volumes(
    pod: &Pod,
    env: &Environment<'_>,
) -> Result<HashMap<String, PathBuf>, String> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let pod_dir = env.dirs.pod(uid);
    create_dir(&pod_dir.join("work"))?;
    create_dir(&pod_dir.join("termination"))?;
    let mut volumes = HashMap::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        volumes.insert(
            volume.name.clone(),
            volume_dir(volume, &pod_dir, namespace, env).await?,
        );
    }
    Ok(volumes)
}

/// The plan of one container, or why it cannot run.
pub async fn container_plan(
    pod: &Pod,
    container: &Container,
    volumes: &HashMap<String, PathBuf>,
    env: &Environment<'_>,
) -> Result<ContainerPlan, Blocked> {
    let image = container.image.clone().unwrap_or_default();
    let program = env.images.resolve(&image).map_err(|message| Blocked {
        reason: "ErrImagePull",
        message,
    })?;
    let config_error = |message: String| Blocked {
        reason: "CreateContainerConfigError",
        message,
    };
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let pod_dir = env.dirs.pod(uid);
    let termination_file = pod_dir.join("termination").join(&container.name);
    let mut pairs = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let dir = volumes.get(&mount.name).ok_or_else(|| {
            config_error(format!(
                "volumeMount {:?} names no volume of the pod",
                mount.name
            ))
        })?;
        let host = match mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) if sub.split('/').any(|p| p == "..") => {
                return Err(config_error(format!(
                    "subPath {sub:?} must not contain '..'"
                )));
            }
            Some(sub) => {
                let host = dir.join(sub);
                if !host.exists() {
                    create_dir(&host).map_err(config_error)?;
                }
                host
            }
            None => dir.clone(),
        };
        pairs.push((mount.mount_path.clone(), host.display().to_string()));
    }
    let message_path = container
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".into());
    pairs.push((message_path, termination_file.display().to_string()));
    let rewrites = PathRewrites::new(pairs);
    let pod_workdir = pod_dir.join("work");
    let raw_env = container_env(pod, container, env, &pod_workdir)
        .await
        .map_err(config_error)?;
    let vars: HashMap<String, String> = raw_env.iter().cloned().collect();
    let command: Vec<String> = container
        .command
        .iter()
        .flatten()
        .map(|a| rewrites.rewrite(&expand(a, &vars)))
        .collect();
    let args: Vec<String> = container
        .args
        .iter()
        .flatten()
        .map(|a| rewrites.rewrite(&expand(a, &vars)))
        .collect();
    let (argv0, args) = match command.split_first() {
        Some((first, rest)) => (first.clone(), rest.iter().chain(&args).cloned().collect()),
        None => (
            program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            args,
        ),
    };
    let env_values: Vec<(String, String)> = raw_env
        .into_iter()
        .map(|(k, v)| {
            let v = rewrites.rewrite(&v);
            (k, v)
        })
        .collect();
    let workdir = container
        .working_dir
        .as_deref()
        .map(|w| PathBuf::from(rewrites.rewrite(w)))
        .filter(|w| w.is_dir())
        .unwrap_or_else(|| pod_workdir.clone());
    let ports = container
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.name.clone().map(|n| (n, p.container_port)))
        .collect();
    Ok(ContainerPlan {
        name: container.name.clone(),
        image,
        launch: Launch {
            program,
            argv0,
            args,
            env: env_values.clone(),
            workdir: workdir.clone(),
        },
        termination_file,
        fallback_to_logs: container.termination_message_policy.as_deref()
            == Some("FallbackToLogsOnError"),
        readiness: container.readiness_probe.clone(),
        liveness: container.liveness_probe.clone(),
        probe_target: ProbeTarget {
            pod_ip: env.pod_ip.to_owned(),
            ports,
            env: env_values,
            rewrites,
            workdir,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_with_decimal_and_binary_suffixes() {
        assert_eq!(quantity("500m"), Some(0.5));
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("1Gi"), Some(1024.0 * 1024.0 * 1024.0));
        assert_eq!(quantity("1.5k"), Some(1500.0));
        assert_eq!(quantity("3x"), None);
    }

    #[test]
    fn resource_field_refs_fall_back_to_the_node_for_missing_limits() {
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}
        }))
        .unwrap();
        let node: BTreeMap<String, String> = [("cpu".to_owned(), "8".to_owned())].into();
        assert_eq!(
            resource_value(&container, "requests.cpu", None, &node).unwrap(),
            "1"
        );
        assert_eq!(
            resource_value(&container, "requests.cpu", Some("1m"), &node).unwrap(),
            "250"
        );
        assert_eq!(
            resource_value(&container, "requests.memory", Some("1Mi"), &node).unwrap(),
            "64"
        );
        assert_eq!(
            resource_value(&container, "limits.cpu", None, &node).unwrap(),
            "8"
        );
    }
}
