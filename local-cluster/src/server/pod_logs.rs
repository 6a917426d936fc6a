//! `GET .../pods/NAME/log`: a container's output as the kubelet stored it, with `container`,
//! `previous`, `tailLines`, `timestamps` and `follow` (which streams new lines until the
//! instance exits or the pod is gone).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use hyper::body::Frame;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde_json::Value;

use super::{Body, Shared, full};
use crate::kubelet::logs::{self, InstanceLog};
use crate::request::ResourcePath;
use crate::resources::ResourceKey;
use crate::status::{ApiError, Subject};

/// How often a follow looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

fn pods() -> ResourceKey {
    ResourceKey {
        group: String::new(),
        plural: "pods".to_owned(),
    }
}

fn names(pod: &Value, field: &str) -> Vec<String> {
    pod["spec"][field]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The container whose log is asked for.
fn container_of(pod: &Value, name: &str, requested: Option<&str>) -> Result<String, ApiError> {
    let containers = names(pod, "containers");
    match requested.filter(|c| !c.is_empty()) {
        Some(container) => {
            let all: Vec<String> = containers
                .iter()
                .chain(&names(pod, "initContainers"))
                .cloned()
                .collect();
            if all.iter().any(|c| c == container) {
                Ok(container.to_owned())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {container} is not valid for pod {name}"
                )))
            }
        }
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            containers.join(" ")
        ))),
    }
}

/// Serve one log request.
pub fn respond(
    shared: &Arc<Shared>,
    path: &ResourcePath,
    params: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let namespace = path.namespace.clone().unwrap_or_default();
    let name = path.name.clone().unwrap_or_default();
    let pod = shared
        .lock()
        .store
        .get(&pods(), &namespace, &name)
        .ok_or_else(|| {
            ApiError::not_found(&Subject {
                group: "",
                resource: "pods",
                name: &name,
            })
        })?;
    let container = container_of(&pod, &name, params.get("container").map(String::as_str))?;
    let flag = |key: &str| params.get(key).is_some_and(|v| v == "true" || v == "1");
    let status = ["containerStatuses", "initContainerStatuses"]
        .iter()
        .filter_map(|field| pod["status"][field].as_array())
        .flatten()
        .find(|c| c["name"] == container.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    let restarts = status["restartCount"]
        .as_u64()
        .and_then(|r| u32::try_from(r).ok())
        .unwrap_or(0);
    let instance = if flag("previous") {
        if restarts == 0 {
            return Err(ApiError::bad_request(format!(
                "previous terminated container \"{container}\" in pod \"{name}\" not found"
            )));
        }
        restarts - 1
    } else {
        restarts
    };
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_owned();
    let log = shared
        .settings
        .pod_logs
        .instance(&namespace, &name, &uid, &container, instance);
    let Ok(stored) = std::fs::read(&log.path) else {
        let reason = status["state"]["waiting"]["reason"]
            .as_str()
            .unwrap_or("ContainerCreating");
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
        )));
    };
    let timestamps = flag("timestamps");
    let complete = logs::complete_lines(&stored);
    let shown = match params.get("tailLines").and_then(|t| t.parse::<i64>().ok()) {
        Some(lines) if lines >= 0 => logs::tail(complete, usize::try_from(lines).unwrap_or(0)),
        _ => complete,
    };
    let since = match (params.get("sinceSeconds"), params.get("sinceTime")) {
        (Some(seconds), _) => {
            let seconds: i64 = seconds.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "sinceSeconds: Invalid value: {seconds:?}: must be a positive integer"
                ))
            })?;
            Some(chrono::Utc::now() - chrono::Duration::seconds(seconds))
        }
        (None, Some(time)) => Some(
            chrono::DateTime::parse_from_rfc3339(time)
                .map_err(|_| {
                    ApiError::bad_request(format!(
                        "sinceTime: Invalid value: {time:?}: must be an RFC 3339 time"
                    ))
                })?
                .with_timezone(&chrono::Utc),
        ),
        (None, None) => None,
    };
    let shown = match since {
        Some(since) => logs::since(shown, since),
        None => shown.to_vec(),
    };
    let limit =
        match params.get("limitBytes") {
            Some(limit) => Some(limit.parse::<usize>().ok().filter(|l| *l > 0).ok_or_else(
                || {
                    ApiError::bad_request(format!(
                        "limitBytes: Invalid value: {limit:?}: must be a positive integer"
                    ))
                },
            )?),
            None => None,
        };
    let mut first = logs::render(&shown, timestamps);
    if let Some(limit) = limit {
        first.truncate(limit);
    }
    let first = Bytes::from(first);
    let mut response = if flag("follow") {
        let follow = Follow {
            shared: shared.clone(),
            namespace,
            name,
            uid,
            log,
            offset: complete.len() as u64,
            timestamps,
            remaining: limit.map(|l| l - first.len()),
            pending: Some(first),
            ended: false,
        };
        let chunks = futures::stream::unfold(follow, |mut follow| async move {
            follow.next_chunk().await.map(|chunk| (chunk, follow))
        })
        .map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
        Response::new(BodyExt::boxed(StreamBody::new(chunks)))
    } else {
        Response::new(full(first))
    };
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}

/// A followed log: what was sent so far and when to stop.
struct Follow {
    shared: Arc<Shared>,
    namespace: String,
    name: String,
    uid: String,
    log: InstanceLog,
    offset: u64,
    timestamps: bool,
    /// What `limitBytes` still allows.
    remaining: Option<usize>,
    pending: Option<Bytes>,
    ended: bool,
}

impl Follow {
    /// Complete lines written since `offset`.
    fn read_new(&mut self) -> Vec<u8> {
        let Ok(mut file) = std::fs::File::open(&self.log.path) else {
            return Vec::new();
        };
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() || file.read_to_end(&mut bytes).is_err()
        {
            return Vec::new();
        }
        let complete = logs::complete_lines(&bytes).len();
        bytes.truncate(complete);
        self.offset += complete as u64;
        logs::render(&bytes, self.timestamps)
    }

    fn pod_exists(&self) -> bool {
        self.shared
            .lock()
            .store
            .get(&pods(), &self.namespace, &self.name)
            .is_some_and(|p| p["metadata"]["uid"].as_str() == Some(self.uid.as_str()))
    }

    /// `chunk` cut to what `limitBytes` still allows; the follow ends at the limit.
    fn limited(&mut self, mut chunk: Vec<u8>) -> Bytes {
        if let Some(remaining) = self.remaining.as_mut() {
            chunk.truncate(*remaining);
            *remaining -= chunk.len();
            if *remaining == 0 {
                self.ended = true;
            }
        }
        Bytes::from(chunk)
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(first) = self.pending.take()
            && !first.is_empty()
        {
            return Some(first);
        }
        if self.remaining == Some(0) {
            return None;
        }
        loop {
            if self.ended {
                return None;
            }
            // Read the marker before the data: output written before the marker is then read.
            let finished = self.log.is_done() || !self.pod_exists();
            let new = self.read_new();
            if finished {
                self.ended = true;
            }
            if !new.is_empty() {
                return Some(self.limited(new));
            }
            if !finished {
                tokio::time::sleep(FOLLOW_POLL).await;
            }
        }
    }
}
