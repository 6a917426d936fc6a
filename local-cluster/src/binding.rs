//! The `pods/binding` subresource: `POST .../pods/NAME/binding` with a `Binding` assigns an
//! unplaced pod to a node, setting `spec.nodeName` and the `PodScheduled=True` condition, as
//! a scheduler does. A pod that already has a node (or is being deleted) is a 409 Conflict.

use serde_json::{Value, json};

use crate::api::{Cluster, Part, WriteOptions, is_deleting};
use crate::resources::Resource;
use crate::schema::{Cause, FieldError};
use crate::status::{ApiError, Subject};

impl Cluster {
    /// Bind pod `name` to the node `binding.target.name`; returns the success `Status`.
    pub fn bind(
        &mut self,
        pods: &Resource,
        namespace: &str,
        name: &str,
        binding: &Value,
        options: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let node = binding["target"]["name"].as_str().unwrap_or("");
        if node.is_empty() {
            return Err(ApiError::invalid(
                "Binding",
                "",
                name,
                &[FieldError {
                    field: "target.name".to_owned(),
                    cause: Cause::Required,
                }],
            ));
        }
        let body_name = binding["metadata"]["name"].as_str().unwrap_or(name);
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the Binding ({body_name}) does not match the pod on the URL ({name})"
            )));
        }
        let subject = Subject {
            group: "",
            resource: "pods",
            name,
        };
        let mut pod = self.get(pods, namespace, name)?;
        if let Some(uid) = binding["metadata"]["uid"].as_str()
            && !uid.is_empty()
            && pod["metadata"]["uid"].as_str() != Some(uid)
        {
            return Err(ApiError::conflict(
                &subject,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    pod["metadata"]["uid"].as_str().unwrap_or("")
                ),
            ));
        }
        if is_deleting(&pod) {
            return Err(ApiError::conflict(
                &subject,
                &format!("pod {name} is being deleted, cannot be assigned to a host"),
            ));
        }
        if let Some(current) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict(
                &subject,
                &format!("pod {name} is already assigned to node \"{current}\""),
            ));
        }
        pod["spec"]["nodeName"] = json!(node);
        self.update(pods, namespace, name, pod.clone(), Part::Main, options)?;
        let mut status = pod["status"].clone();
        if !status.is_object() {
            status = json!({});
        }
        let mut conditions: Vec<Value> = status["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect();
        conditions.push(json!({
            "type": "PodScheduled",
            "status": "True",
            "lastProbeTime": null,
            "lastTransitionTime": crate::api::now(),
        }));
        status["conditions"] = json!(conditions);
        if status["phase"].is_null() {
            status["phase"] = json!("Pending");
        }
        let current = self.get(pods, namespace, name)?;
        let mut with_status = current;
        with_status["status"] = status;
        self.update(pods, namespace, name, with_status, Part::Status, options)?;
        Ok(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        }))
    }
}
