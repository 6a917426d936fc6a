//! Defaults and checks the API server applies to the built-in workload kinds on every write,
//! as a real one does: Services get a cluster IP from 127.2.0.0/16 (unless they ask for one
//! in that range or for `None`; it cannot change afterwards) and defaulted ports; Jobs get a
//! selector on their uid, the matching template labels and defaulted counts, and must not
//! restart their pods `Always`; Deployments and ReplicaSets get their replica count and
//! rollout defaults. Loopback cluster IPs are what let the service proxy listen on them.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::api::{Cluster, name_of};
use crate::resources::Resource;
use crate::schema::{Cause, FieldError};
use crate::status::ApiError;

/// The range cluster IPs come from: 127.2.0.0/16 (loopback, so the host reaches them).
pub const CLUSTER_IP_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(127, 2, 0, 0), 16);

fn in_cluster_range(ip: Ipv4Addr) -> bool {
    let (base, bits) = CLUSTER_IP_RANGE;
    let mask = u32::MAX << (32 - bits);
    u32::from(ip) & mask == u32::from(base) & mask
}

fn invalid(resource: &Resource, object: &Value, field: &str, cause: Cause) -> ApiError {
    ApiError::invalid(
        &resource.kind,
        &resource.group,
        name_of(object),
        &[FieldError {
            field: field.to_owned(),
            cause,
        }],
    )
}

/// A free address in the cluster IP range, picked at random so that clusters running side by
/// side (tests, `local up`) rarely pick the same one.
fn allocate_cluster_ip(used: &HashSet<String>) -> Option<String> {
    let (base, bits) = CLUSTER_IP_RANGE;
    let size = 1u32 << (32 - bits);
    let start = u32::from_le_bytes(
        uuid::Uuid::new_v4().as_bytes()[..4]
            .try_into()
            .unwrap_or([0; 4]),
    ) % size;
    (0..size)
        .map(|i| (start + i) % size)
        // Skip the network and broadcast addresses of the range.
        .filter(|offset| *offset != 0 && *offset != size - 1)
        .map(|offset| Ipv4Addr::from(u32::from(base) + offset).to_string())
        .find(|ip| !used.contains(ip))
}

impl Cluster {
    /// Cluster IPs held by Services other than `namespace/name`.
    fn cluster_ips_in_use(&self, namespace: &str, name: &str) -> HashSet<String> {
        let key = crate::resources::ResourceKey {
            group: String::new(),
            plural: "services".to_owned(),
        };
        self.store
            .list(&key, None, None)
            .filter(|s| !(crate::api::namespace_of(s) == namespace && name_of(s) == name))
            .filter_map(|s| s["spec"]["clusterIP"].as_str().map(str::to_owned))
            .collect()
    }

    /// Default and check a built-in object about to be stored (`old` on updates).
    pub(crate) fn default_builtin(
        &self,
        resource: &Resource,
        object: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        if !resource.builtin {
            return Ok(());
        }
        match (resource.group.as_str(), resource.plural.as_str()) {
            ("", "services") => self.default_service(resource, object, old),
            ("batch", "jobs") => default_job(resource, object, old),
            ("apps", "deployments") => {
                default_deployment(object);
                check_selector(resource, object)
            }
            ("apps", "replicasets") => {
                if !object["spec"].is_object() {
                    object["spec"] = json!({});
                }
                if object["spec"]["replicas"].is_null() {
                    object["spec"]["replicas"] = json!(1);
                }
                check_selector(resource, object)
            }
            _ => Ok(()),
        }
    }

    fn default_service(
        &self,
        resource: &Resource,
        object: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        if !object["spec"].is_object() {
            object["spec"] = json!({});
        }
        let spec_type = object["spec"]["type"]
            .as_str()
            .unwrap_or("ClusterIP")
            .to_owned();
        object["spec"]["type"] = json!(spec_type);
        if object["spec"]["sessionAffinity"].is_null() {
            object["spec"]["sessionAffinity"] = json!("None");
        }
        if let Some(ports) = object["spec"]["ports"].as_array_mut() {
            for port in ports {
                if port["protocol"].is_null() {
                    port["protocol"] = json!("TCP");
                }
                if port["targetPort"].is_null() {
                    port["targetPort"] = port["port"].clone();
                }
            }
        }
        if spec_type == "ExternalName" {
            return Ok(());
        }
        let requested = object["spec"]["clusterIP"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let previous = old
            .and_then(|o| o["spec"]["clusterIP"].as_str())
            .unwrap_or("")
            .to_owned();
        let field = "spec.clusterIP";
        let ip = if !previous.is_empty() {
            if !requested.is_empty() && requested != previous {
                return Err(invalid(
                    resource,
                    object,
                    field,
                    Cause::Invalid {
                        value: json!(requested),
                        detail: "field is immutable".to_owned(),
                    },
                ));
            }
            previous
        } else if requested == "None" {
            requested
        } else {
            let namespace = crate::api::namespace_of(object).to_owned();
            let used = self.cluster_ips_in_use(&namespace, name_of(object));
            if requested.is_empty() {
                allocate_cluster_ip(&used).ok_or_else(|| {
                    ApiError::internal(format!(
                        "failed to allocate a serviceIP: range is full ({}/{})",
                        CLUSTER_IP_RANGE.0, CLUSTER_IP_RANGE.1
                    ))
                })?
            } else {
                let detail = match requested.parse::<Ipv4Addr>() {
                    Err(_) => Some(
                        "must be a valid IPv4 address (e.g. 127.2.0.10) or \"None\"".to_owned(),
                    ),
                    Ok(ip) if !in_cluster_range(ip) => Some(format!(
                        "provided IP is not in the valid range. The range of valid IPs is {}/{}",
                        CLUSTER_IP_RANGE.0, CLUSTER_IP_RANGE.1
                    )),
                    Ok(_) if used.contains(&requested) => {
                        Some("provided IP is already allocated".to_owned())
                    }
                    Ok(_) => None,
                };
                if let Some(detail) = detail {
                    return Err(invalid(
                        resource,
                        object,
                        field,
                        Cause::Invalid {
                            value: json!(requested),
                            detail,
                        },
                    ));
                }
                requested
            }
        };
        object["spec"]["clusterIP"] = json!(ip);
        object["spec"]["clusterIPs"] = json!([ip]);
        if ip != "None" {
            object["spec"]["ipFamilies"] = json!(["IPv4"]);
            object["spec"]["ipFamilyPolicy"] = json!("SingleStack");
        }
        Ok(())
    }
}

/// A workload's `spec.selector` must be given and select its own template's pods; otherwise
/// its controller would create pods it never counts.
fn check_selector(resource: &Resource, object: &Value) -> Result<(), ApiError> {
    let selector = &object["spec"]["selector"];
    let labels = &object["spec"]["template"]["metadata"]["labels"];
    let match_labels = selector["matchLabels"].as_object();
    let expressions = selector["matchExpressions"].as_array();
    if match_labels.is_none_or(|m| m.is_empty()) && expressions.is_none_or(|e| e.is_empty()) {
        return Err(invalid(resource, object, "spec.selector", Cause::Required));
    }
    let label = |key: &str| labels[key].as_str();
    let by_labels = match_labels
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k) == v.as_str());
    let by_expressions = expressions.into_iter().flatten().all(|e| {
        let key = e["key"].as_str().unwrap_or("");
        let values: Vec<&str> = e["values"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match e["operator"].as_str() {
            Some("In") => label(key).is_some_and(|l| values.contains(&l)),
            Some("NotIn") => label(key).is_none_or(|l| !values.contains(&l)),
            Some("Exists") => label(key).is_some(),
            Some("DoesNotExist") => label(key).is_none(),
            _ => false,
        }
    });
    if by_labels && by_expressions {
        return Ok(());
    }
    Err(invalid(
        resource,
        object,
        "spec.template.metadata.labels",
        Cause::Invalid {
            value: labels.clone(),
            detail: "`selector` does not match template `labels`".to_owned(),
        },
    ))
}

/// Labels the API server puts on a Job's pod template (and selects its pods by).
fn job_labels(object: &Value) -> Value {
    let uid = object["metadata"]["uid"].clone();
    let name = object["metadata"]["name"].clone();
    json!({
        "batch.kubernetes.io/controller-uid": uid,
        "controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "job-name": name,
    })
}

fn default_job(
    resource: &Resource,
    object: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if !object["spec"].is_object() {
        object["spec"] = json!({});
    }
    let restart = object["spec"]["template"]["spec"]["restartPolicy"].clone();
    if restart != "Never" && restart != "OnFailure" {
        let cause = if restart.is_null() {
            Cause::Required
        } else {
            Cause::NotSupported {
                value: restart,
                supported: vec![json!("OnFailure"), json!("Never")],
            }
        };
        return Err(invalid(
            resource,
            object,
            "spec.template.spec.restartPolicy",
            cause,
        ));
    }
    if object["spec"]["completionMode"] == "Indexed" && object["spec"]["completions"].is_null() {
        return Err(invalid(
            resource,
            object,
            "spec.completions",
            Cause::Invalid {
                value: Value::Null,
                detail:
                    "must be greater than or equal to 0 and set when completion mode is Indexed"
                        .to_owned(),
            },
        ));
    }
    let labels = job_labels(object);
    let spec = &mut object["spec"];
    match old {
        Some(old) if spec["selector"].is_null() => {
            spec["selector"] = old["spec"]["selector"].clone()
        }
        None if spec["manualSelector"] != true && spec["selector"].is_null() => {
            let uid = labels["batch.kubernetes.io/controller-uid"].clone();
            spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
            let template_labels = &mut spec["template"]["metadata"]["labels"];
            if !template_labels.is_object() {
                *template_labels = json!({});
            }
            if let (Some(target), Some(added)) =
                (template_labels.as_object_mut(), labels.as_object())
            {
                for (k, v) in added {
                    target.insert(k.clone(), v.clone());
                }
            }
        }
        _ => {}
    }
    let spec = &mut object["spec"];
    if spec["completions"].is_null() && spec["parallelism"].is_null() {
        spec["completions"] = json!(1);
    }
    for (field, value) in [
        ("parallelism", json!(1)),
        ("backoffLimit", json!(6)),
        ("completionMode", json!("NonIndexed")),
        ("suspend", json!(false)),
    ] {
        if spec[field].is_null() {
            spec[field] = value;
        }
    }
    Ok(())
}

fn default_deployment(object: &mut Value) {
    if !object["spec"].is_object() {
        object["spec"] = json!({});
    }
    let spec = &mut object["spec"];
    if spec["replicas"].is_null() {
        spec["replicas"] = json!(1);
    }
    if spec["strategy"]["type"].is_null() {
        spec["strategy"]["type"] = json!("RollingUpdate");
    }
    if spec["strategy"]["type"] == "RollingUpdate" {
        for field in ["maxSurge", "maxUnavailable"] {
            if spec["strategy"]["rollingUpdate"][field].is_null() {
                spec["strategy"]["rollingUpdate"][field] = json!("25%");
            }
        }
    }
    for (field, value) in [
        ("revisionHistoryLimit", 10),
        ("progressDeadlineSeconds", 600),
    ] {
        if spec[field].is_null() {
            spec[field] = json!(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selector_must_select_the_template() {
        let resource = crate::resources::Registry::with_builtins()
            .get("apps", "v1", "deployments")
            .unwrap();
        let deployment = |selector: Value| {
            json!({"metadata": {"name": "d"}, "spec": {"selector": selector,
                   "template": {"metadata": {"labels": {"app": "web", "tier": "a"}}}}})
        };
        assert!(
            check_selector(
                &resource,
                &deployment(json!({"matchLabels": {"app": "web"}}))
            )
            .is_ok()
        );
        let expressions =
            json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]});
        assert!(check_selector(&resource, &deployment(expressions)).is_ok());
        let error = check_selector(
            &resource,
            &deployment(json!({"matchLabels": {"app": "db"}})),
        )
        .unwrap_err();
        assert!(
            error
                .message
                .contains("`selector` does not match template `labels`"),
            "{}",
            error.message
        );
        let error = check_selector(&resource, &deployment(json!(null))).unwrap_err();
        assert!(
            error.message.contains("spec.selector: Required value"),
            "{}",
            error.message
        );
    }

    #[test]
    fn allocated_cluster_ips_are_in_range_and_free() {
        let used: HashSet<String> = (1..=255).map(|i| format!("127.2.0.{i}")).collect();
        for _ in 0..50 {
            let ip: Ipv4Addr = allocate_cluster_ip(&used).unwrap().parse().unwrap();
            assert!(in_cluster_range(ip), "{ip}");
            assert!(!used.contains(&ip.to_string()));
            assert_ne!(ip, Ipv4Addr::new(127, 2, 255, 255));
        }
        assert!(!in_cluster_range(Ipv4Addr::new(127, 3, 0, 1)));
    }
}
