//! The HTTP(S) front of the API server: connection handling, routing of requests to discovery,
//! OpenAPI and the resource verbs, body limits and media types, and rendering of results and
//! errors. Every request ends in a response; a fault in a handler becomes a 500 `Status`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::api::{Cluster, DeleteOptions, FieldValidation, Part, Propagation, WriteOptions};
use crate::managed;
use crate::patch::{self, PATCH_MEDIA_TYPES, PatchType};
use crate::request::{self, Representation, ResourcePath, Route};
use crate::resources::Resource;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{ApiError, Subject};
use crate::store::{Stored, encode};
use crate::table::{IncludeObject, table};
use crate::{discovery, openapi, watch as watches};

mod pod_logs;

type Body = BoxBody<Bytes, Infallible>;

/// Limits and timings of the server.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Largest request body accepted (the API server's is 3 MiB).
    pub max_body_bytes: usize,
    /// How often watches with `allowWatchBookmarks` get a bookmark.
    pub bookmark_interval: Duration,
    /// Address advertised in `/api`.
    pub advertised_address: String,
    /// Where the kubelet keeps container logs, for `pods/log`.
    pub pod_logs: crate::kubelet::logs::LogDir,
}

/// State shared by all connections.
pub struct Shared {
    cluster: Mutex<Cluster>,
    expire: watch::Sender<u64>,
    settings: Settings,
}

impl Shared {
    /// Wrap a cluster for serving.
    pub fn new(cluster: Cluster, settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            cluster: Mutex::new(cluster),
            expire: watch::channel(0).0,
            settings,
        })
    }

    /// Lock the cluster state. A panic elsewhere never leaves it unusable: every write
    /// completes its store update before anything can fail.
    pub fn lock(&self) -> MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// End every open watch with `410 Expired` and forget the change history, as an API server
    /// restart or etcd compaction does; watchers must re-list.
    pub fn expire_watches(&self) {
        self.lock().store.compact();
        self.expire.send_modify(|epoch| *epoch += 1);
    }
}

/// Accept connections until `shutdown` turns true; TLS when an acceptor is given.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        // Watch events are small writes that must leave at once; Nagle would hold them back
        // waiting for delayed ACKs.
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        let mut stop = shutdown.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(respond(shared, req, peer).await) }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                }
                None => {
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json_response(code: u16, value: &Value, warnings: &[String]) -> Response<Body> {
    let mut response = Response::new(full(encode(value)));
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for warning in warnings {
        let escaped = warning.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(value) = HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            response.headers_mut().append("warning", value);
        }
    }
    response
}

fn json_bytes_response(body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(full(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A list response spliced from the stored objects' cached encodings; only objects stored
/// under another version are serialized here.
fn list_json(resource: &Resource, metadata: &Value, items: &[Stored]) -> Vec<u8> {
    let api_version = resource.api_version();
    let size: usize = items.iter().map(|s| s.encoded().len() + 1).sum();
    let mut out = Vec::with_capacity(256 + size);
    out.extend_from_slice(b"{\"kind\":");
    out.extend_from_slice(&encode(&json!(resource.list_kind)));
    out.extend_from_slice(b",\"apiVersion\":");
    out.extend_from_slice(&encode(&json!(api_version)));
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(&encode(metadata));
    out.extend_from_slice(b",\"items\":[");
    for (i, stored) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if stored.object()["apiVersion"].as_str() == Some(api_version.as_str()) {
            out.extend_from_slice(stored.encoded());
        } else {
            out.extend_from_slice(&encode(&crate::api::present(resource, stored.object())));
        }
    }
    out.extend_from_slice(b"]}");
    out
}

fn error_response(error: &ApiError) -> Response<Body> {
    json_response(error.code, &error.to_status(), &[])
}

fn render(
    code: u16,
    value: &Value,
    representation: Representation,
    warnings: &[String],
) -> Response<Body> {
    if representation == Representation::Yaml
        && let Ok(text) = serde_yaml::to_string(value)
    {
        let mut response = json_response(code, &Value::Null, warnings);
        *response.body_mut() = full(text);
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
        return response;
    }
    json_response(code, value, warnings)
}

async fn respond(shared: Arc<Shared>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let outcome = std::panic::AssertUnwindSafe(handle(shared, req))
        .catch_unwind()
        .await;
    let response = match outcome {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => error_response(&error),
        Err(_) => error_response(&ApiError::internal(format!(
            "the server failed to handle {method} {path}"
        ))),
    };
    tracing::debug!(%peer, %method, %path, status = response.status().as_u16(), "request");
    response
}

fn header(req: &Request<Incoming>, name: hyper::header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::too_large(limit))
        }
        Err(error) => Err(ApiError::bad_request(format!(
            "reading the request body: {error}"
        ))),
    }
}

/// How a request body is encoded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Json,
    Yaml,
    Protobuf,
}

/// Decode a JSON, YAML or protobuf request body into an object.
/// The body of a create or update, read within the size limit and decoded by its media type.
async fn decoded_body(req: Request<Incoming>, shared: &Shared) -> Result<Value, ApiError> {
    let encoding = body_media(header(&req, CONTENT_TYPE))?;
    decode(
        &read_body(req, shared.settings.max_body_bytes).await?,
        encoding,
    )
}

fn decode(bytes: &[u8], encoding: Encoding) -> Result<Value, ApiError> {
    if encoding == Encoding::Protobuf {
        return crate::protobuf::decode(bytes);
    }
    let value: Value = if encoding == Encoding::Yaml {
        serde_yaml::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}")))?
    } else {
        serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })?
    };
    Ok(value)
}

fn body_media(content_type: Option<&str>) -> Result<Encoding, ApiError> {
    let media = content_type
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    match media {
        "application/json" | "" => Ok(Encoding::Json),
        "application/yaml" => Ok(Encoding::Yaml),
        crate::protobuf::MEDIA_TYPE => Ok(Encoding::Protobuf),
        other => Err(ApiError::unsupported_media_type(
            other,
            &[
                "application/json",
                "application/yaml",
                crate::protobuf::MEDIA_TYPE,
            ],
        )),
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let route = request::route(req.uri().path());
    let params = request::query_params(req.uri().query());
    let representation = request::representation(header(&req, ACCEPT)).ok_or_else(|| {
        ApiError::not_acceptable(
            "only the following media types are accepted: application/json, application/yaml, application/json;as=Table;v=v1;g=meta.k8s.io",
        )
    })?;
    let document = |value: Option<Value>| match value {
        Some(value) => Ok(json_response(200, &value, &[])),
        None => Err(ApiError::no_route()),
    };
    if req.method() == Method::GET {
        match &route {
            Route::Health => {
                let mut response = Response::new(full("ok"));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                return Ok(response);
            }
            Route::Version => return document(Some(discovery::version())),
            Route::CoreVersions => {
                return document(Some(discovery::core_versions(
                    &shared.settings.advertised_address,
                )));
            }
            Route::Groups => return document(Some(discovery::groups(&shared.lock().registry))),
            Route::Group(g) => return document(discovery::group(&shared.lock().registry, g)),
            Route::ResourceList(g, v) => {
                return document(discovery::resource_list(&shared.lock().registry, g, v));
            }
            Route::OpenApiV2 => {
                return document(Some(openapi::v2_document(&shared.lock().registry)));
            }
            Route::OpenApiV3Index => {
                return document(Some(openapi::v3_index(&shared.lock().registry)));
            }
            Route::OpenApiV3(g, v) => {
                return document(openapi::v3_document(&shared.lock().registry, g, v));
            }
            Route::Resource(_) | Route::Unknown => {}
        }
    }
    let Route::Resource(path) = route else {
        return Err(match route {
            Route::Unknown => ApiError::no_route(),
            _ => ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource: {}",
                req.method()
            )),
        });
    };
    let resource = shared
        .lock()
        .registry
        .get(&path.group, &path.version, &path.plural)
        .ok_or_else(ApiError::no_route)?;
    if path.namespace.is_some() && !resource.namespaced {
        return Err(ApiError::no_route());
    }
    if let Some(sub) = &path.subresource {
        let pod_log = sub == "log" && resource.group.is_empty() && resource.plural == "pods";
        let served = (sub == "status" && resource.status_subresource)
            || (sub == "scale" && resource.scale.is_some())
            || (sub == "binding" && resource.group.is_empty() && resource.plural == "pods")
            || pod_log;
        if !served {
            return Err(ApiError::no_route());
        }
        if pod_log {
            if req.method() != Method::GET {
                return Err(ApiError::method_not_allowed(format!(
                    "the server does not allow this method on the requested resource: {}",
                    req.method()
                )));
            }
            return pod_logs::respond(&shared, &path, &params);
        }
    }
    let manager = params.get("fieldManager").cloned().unwrap_or_else(|| {
        header(&req, USER_AGENT)
            .unwrap_or("unknown")
            .split('/')
            .next()
            .unwrap_or("unknown")
            .to_owned()
    });
    let validation = match params.get("fieldValidation").map(String::as_str) {
        Some("Strict") => FieldValidation::Strict,
        Some("Ignore") => FieldValidation::Ignore,
        None | Some("Warn") | Some("") => FieldValidation::Warn,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation: Unsupported value: \"{other}\": supported values: \"Ignore\", \"Strict\", \"Warn\""
            )));
        }
    };
    let options = WriteOptions {
        dry_run: params.get("dryRun").is_some_and(|d| d == "All"),
        field_manager: manager,
        validation,
        apply: false,
    };
    let request = Call {
        shared: shared.clone(),
        resource,
        path,
        params,
        representation,
        options,
    };
    let method = req.method().clone();
    match (method, request.path.name.is_some()) {
        (Method::GET, false) if request.flag("watch") => request.watch(),
        (Method::GET, false) => request.list(),
        (Method::GET, true) => request.get(),
        (Method::POST, false) => request.create(decoded_body(req, &shared).await?),
        (method, true)
            if request.path.subresource.as_deref() == Some("binding") && method != Method::POST =>
        {
            Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource: {method}"
            )))
        }
        (Method::POST, true) if request.path.subresource.as_deref() == Some("binding") => {
            request.bind(&decoded_body(req, &shared).await?)
        }
        (Method::PUT, true) => request.update(decoded_body(req, &shared).await?),
        (Method::PATCH, true) => {
            let content_type = header(&req, CONTENT_TYPE).unwrap_or("").to_owned();
            let patch_type = PatchType::from_content_type(&content_type).ok_or_else(|| {
                ApiError::unsupported_media_type(&content_type, &PATCH_MEDIA_TYPES)
            })?;
            let bytes = read_body(req, shared.settings.max_body_bytes).await?;
            let encoding = if patch_type == PatchType::Apply {
                Encoding::Yaml
            } else {
                Encoding::Json
            };
            let body = decode(&bytes, encoding)?;
            request.patch(patch_type, body)
        }
        (Method::DELETE, item) => {
            let encoding = body_media(header(&req, CONTENT_TYPE))?;
            let bytes = read_body(req, shared.settings.max_body_bytes).await?;
            let body = if bytes.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                decode(&bytes, encoding)?
            };
            if item {
                request.delete(&body)
            } else {
                request.delete_collection(&body)
            }
        }
        (method, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: {method}"
        ))),
    }
}

/// One resource request, parsed.
struct Call {
    shared: Arc<Shared>,
    resource: Arc<Resource>,
    path: ResourcePath,
    params: HashMap<String, String>,
    representation: Representation,
    options: WriteOptions,
}

fn dotted_pointer(path: &str) -> String {
    path.trim_start_matches('.')
        .split('.')
        .fold(String::new(), |mut acc, part| {
            acc.push('/');
            acc.push_str(part);
            acc
        })
}

impl Call {
    fn flag(&self, name: &str) -> bool {
        self.params
            .get(name)
            .is_some_and(|v| v == "true" || v == "1")
    }

    fn namespace(&self) -> &str {
        self.path.namespace.as_deref().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.path.name.as_deref().unwrap_or("")
    }

    fn part(&self) -> Part {
        match self.path.subresource.as_deref() {
            Some("status") => Part::Status,
            _ => Part::Main,
        }
    }

    fn selectors(&self) -> Result<(LabelSelector, FieldSelector), ApiError> {
        Ok((
            LabelSelector::parse(self.params.get("labelSelector").map_or("", String::as_str))?,
            FieldSelector::parse(self.params.get("fieldSelector").map_or("", String::as_str))?,
        ))
    }

    fn include_object(&self) -> IncludeObject {
        match self.params.get("includeObject").map(String::as_str) {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }

    fn single(&self, code: u16, object: &Value, warnings: &[String]) -> Response<Body> {
        match self.representation {
            Representation::Table => render(
                code,
                &table(
                    &self.resource,
                    &[Arc::new(object.clone())],
                    true,
                    self.include_object(),
                    json!({"resourceVersion": object["metadata"]["resourceVersion"]}),
                ),
                Representation::Json,
                warnings,
            ),
            Representation::Metadata => render(
                code,
                &json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]}),
                Representation::Json,
                warnings,
            ),
            other => render(code, object, other, warnings),
        }
    }

    fn get(&self) -> Result<Response<Body>, ApiError> {
        let cluster = self.shared.lock();
        let object = cluster.get(&self.resource, self.namespace(), self.name())?;
        if self.path.subresource.as_deref() == Some("scale") {
            return Ok(render(
                200,
                &self.scale_of(&object),
                Representation::Json,
                &[],
            ));
        }
        Ok(self.single(200, &object, &[]))
    }

    fn scale_of(&self, object: &Value) -> Value {
        let paths = self
            .resource
            .scale
            .clone()
            .unwrap_or_else(|| crate::resources::ScalePaths {
                spec_replicas: ".spec.replicas".into(),
                status_replicas: ".status.replicas".into(),
                label_selector: None,
            });
        let meta = &object["metadata"];
        let mut scale = json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
            },
            "spec": {"replicas": object.pointer(&dotted_pointer(&paths.spec_replicas)).cloned().unwrap_or(json!(0))},
            "status": {"replicas": object.pointer(&dotted_pointer(&paths.status_replicas)).cloned().unwrap_or(json!(0))},
        });
        if let Some(selector) = paths
            .label_selector
            .as_deref()
            .and_then(|p| object.pointer(&dotted_pointer(p)))
        {
            scale["status"]["selector"] = selector.clone();
        }
        scale
    }

    /// Write a Scale's `spec.replicas` into the object and store it.
    fn write_scale(
        &self,
        cluster: &mut Cluster,
        scale: &Value,
    ) -> Result<Response<Body>, ApiError> {
        let current = cluster.get(&self.resource, self.namespace(), self.name())?;
        let replicas = scale["spec"]["replicas"].clone();
        if !replicas.is_i64() || replicas.as_i64().unwrap_or(-1) < 0 {
            return Err(ApiError::invalid(
                "Scale",
                "autoscaling",
                self.name(),
                &[crate::schema::FieldError {
                    field: "spec.replicas".into(),
                    cause: crate::schema::Cause::Invalid {
                        value: replicas,
                        detail: "must be greater than or equal to 0".into(),
                    },
                }],
            ));
        }
        if let Some(version) = scale["metadata"]["resourceVersion"].as_str()
            && !version.is_empty()
            && Some(version) != current["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::conflict(
                &Subject {
                    group: &self.resource.group,
                    resource: &self.resource.plural,
                    name: self.name(),
                },
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let paths = self.resource.scale.clone().ok_or_else(ApiError::no_route)?;
        let mut updated = current.clone();
        let pointer = dotted_pointer(&paths.spec_replicas);
        set_pointer(&mut updated, &pointer, replicas);
        let written = cluster.update(
            &self.resource,
            self.namespace(),
            self.name(),
            updated,
            Part::Main,
            &self.options,
        )?;
        cluster.collect_garbage();
        Ok(render(
            200,
            &self.scale_of(&written.object),
            Representation::Json,
            &written.warnings,
        ))
    }

    fn list(&self) -> Result<Response<Body>, ApiError> {
        let (labels, fields) = self.selectors()?;
        let limit = self
            .params
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0);
        let resumed = match self.params.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => Some(decode_continue(token)?),
            None => None,
        };
        let (items, metadata) = {
            let cluster = self.shared.lock();
            let key = self.resource.key();
            let namespace = self.path.namespace.as_deref();
            // Every page of a paged list shows the cluster as it was at the first page.
            let (revision, after) = match &resumed {
                Some((revision, after)) => (*revision, Some(after)),
                None => (cluster.store.revision(), None),
            };
            let snapshot: Box<dyn Iterator<Item = Stored>> = match &resumed {
                None => Box::new(cluster.store.list_stored(&key, namespace, None).cloned()),
                Some(_) => Box::new(
                    cluster
                        .store
                        .list_at(&key, namespace, after, revision)
                        .map_err(|_| {
                            ApiError::gone(
                                "The provided continue parameter is too old to display a \
                                 consistent list result. You can start a new list without \
                                 the continue parameter.",
                            )
                        })?,
                ),
            };
            let mut matching =
                snapshot.filter(|s| labels.matches(s.object()) && fields.matches(s.object()));
            let mut items: Vec<Stored> = Vec::new();
            let mut more = false;
            for object in matching.by_ref() {
                if limit.is_some_and(|l| items.len() >= l) {
                    more = true;
                    break;
                }
                items.push(object);
            }
            let mut metadata = json!({"resourceVersion": revision.to_string()});
            if more && let Some(last) = items.last() {
                let remaining = 1 + matching.count();
                metadata["continue"] = json!(encode_continue(
                    revision,
                    &crate::store::object_key(last.object())
                ));
                metadata["remainingItemCount"] = json!(remaining);
            }
            (items, metadata)
        };
        if self.representation == Representation::Json {
            return Ok(json_bytes_response(list_json(
                &self.resource,
                &metadata,
                &items,
            )));
        }
        let items: Vec<Arc<Value>> = items.into_iter().map(|s| s.object().clone()).collect();
        let body = match self.representation {
            Representation::Table => table(
                &self.resource,
                &items,
                true,
                self.include_object(),
                metadata,
            ),
            Representation::Metadata => {
                let items: Vec<Value> = items
                    .iter()
                    .map(|o| json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}))
                    .collect();
                json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "items": items})
            }
            Representation::Json | Representation::Yaml => {
                let items: Vec<Value> = items
                    .iter()
                    .map(|o| crate::api::present(&self.resource, o))
                    .collect();
                json!({"kind": self.resource.list_kind, "apiVersion": self.resource.api_version(), "metadata": metadata, "items": items})
            }
        };
        Ok(render(200, &body, self.representation, &[]))
    }

    fn watch(&self) -> Result<Response<Body>, ApiError> {
        let (labels, fields) = self.selectors()?;
        let timeout = self
            .params
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(1800)
            .min(1800);
        let bookmarks = self.flag("allowWatchBookmarks");
        let send_initial = self.flag("sendInitialEvents");
        let requested = self
            .params
            .get("resourceVersion")
            .filter(|v| !v.is_empty())
            .cloned();
        let spec = watches::WatchSpec {
            resource: self.resource.clone(),
            namespace: self.path.namespace.clone(),
            labels,
            fields,
            bookmarks,
            timeout: Duration::from_secs(timeout),
            bookmark_interval: self.shared.settings.bookmark_interval,
            table: (self.representation == Representation::Table).then(|| self.include_object()),
        };
        let expire = self.shared.expire.subscribe();
        let cluster = self.shared.lock();
        let key = self.resource.key();
        let (start, receiver) = match requested.as_deref() {
            None | Some("0") => {
                let (_, receiver) = cluster
                    .store
                    .watch_from(cluster.store.revision())
                    .map_err(|_| ApiError::internal("the watch history is unavailable"))?;
                let objects: Vec<Stored> = cluster
                    .store
                    .list_stored(&key, self.path.namespace.as_deref(), None)
                    .cloned()
                    .collect();
                (
                    watches::Start::Initial {
                        objects,
                        revision: cluster.store.revision(),
                        end_bookmark: send_initial && bookmarks,
                    },
                    receiver,
                )
            }
            Some(version) => {
                let revision: u64 = version.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version: {version:?}"))
                })?;
                let current = cluster.store.revision();
                match cluster.store.watch_from(revision) {
                    Ok((changes, receiver)) if send_initial => {
                        drop(changes);
                        let objects: Vec<Stored> = cluster
                            .store
                            .list_stored(&key, self.path.namespace.as_deref(), None)
                            .cloned()
                            .collect();
                        (
                            watches::Start::Initial {
                                objects,
                                revision: current,
                                end_bookmark: bookmarks,
                            },
                            receiver,
                        )
                    }
                    Ok((changes, receiver)) => {
                        (watches::Start::Replay { changes, revision }, receiver)
                    }
                    Err(too_old) => {
                        let (_, receiver) = cluster
                            .store
                            .watch_from(current)
                            .map_err(|_| ApiError::internal("the watch history is unavailable"))?;
                        (
                            watches::Start::Expired(ApiError::gone(format!(
                                "too old resource version: {revision} ({})",
                                too_old.oldest
                            ))),
                            receiver,
                        )
                    }
                }
            }
        };
        drop(cluster);
        let events = watches::stream(spec, start, receiver, expire)
            .map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
        let mut response = Response::new(BodyExt::boxed(StreamBody::new(events)));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
            .headers_mut()
            .insert("transfer-encoding", HeaderValue::from_static("chunked"));
        Ok(response)
    }

    fn create(&self, body: Value) -> Result<Response<Body>, ApiError> {
        let mut cluster = self.shared.lock();
        let written = cluster.create(&self.resource, self.namespace(), body, &self.options)?;
        cluster.collect_garbage();
        Ok(self.single(201, &written.object, &written.warnings))
    }

    fn bind(&self, binding: &Value) -> Result<Response<Body>, ApiError> {
        let mut cluster = self.shared.lock();
        let status = cluster.bind(
            &self.resource,
            self.namespace(),
            self.name(),
            binding,
            &self.options,
        )?;
        Ok(render(201, &status, Representation::Json, &[]))
    }

    fn update(&self, body: Value) -> Result<Response<Body>, ApiError> {
        let mut cluster = self.shared.lock();
        if self.path.subresource.as_deref() == Some("scale") {
            return self.write_scale(&mut cluster, &body);
        }
        let written = cluster.update(
            &self.resource,
            self.namespace(),
            self.name(),
            body,
            self.part(),
            &self.options,
        )?;
        cluster.collect_garbage();
        Ok(self.single(200, &written.object, &written.warnings))
    }

    fn patch(&self, patch_type: PatchType, body: Value) -> Result<Response<Body>, ApiError> {
        let mut cluster = self.shared.lock();
        if patch_type == PatchType::Apply {
            return self.apply(&mut cluster, body);
        }
        let current = cluster.get(&self.resource, self.namespace(), self.name())?;
        let target = if self.path.subresource.as_deref() == Some("scale") {
            self.scale_of(&current)
        } else {
            current
        };
        let patched = match patch_type {
            PatchType::Json => patch::json_patch(&target, &body)?,
            PatchType::Merge => patch::merge_patch(&target, &body)?,
            PatchType::Strategic if self.resource.builtin => {
                patch::strategic_merge_patch(&target, &body)?
            }
            PatchType::Strategic => {
                return Err(ApiError::unsupported_media_type(
                    "application/strategic-merge-patch+json",
                    &[
                        "application/json-patch+json",
                        "application/merge-patch+json",
                        "application/apply-patch+yaml",
                    ],
                ));
            }
            PatchType::Apply => unreachable!("handled above"),
        };
        if self.path.subresource.as_deref() == Some("scale") {
            return self.write_scale(&mut cluster, &patched);
        }
        let written = cluster.update(
            &self.resource,
            self.namespace(),
            self.name(),
            patched,
            self.part(),
            &self.options,
        )?;
        cluster.collect_garbage();
        Ok(self.single(200, &written.object, &written.warnings))
    }

    fn apply(&self, cluster: &mut Cluster, config: Value) -> Result<Response<Body>, ApiError> {
        if !self.params.contains_key("fieldManager") {
            return Err(ApiError::invalid(
                "PatchOptions",
                "meta.k8s.io",
                "",
                &[crate::schema::FieldError {
                    field: "fieldManager".into(),
                    cause: crate::schema::Cause::Required,
                }],
            ));
        }
        if !config.is_object() {
            return Err(ApiError::bad_request(
                "error decoding YAML: the applied configuration must be an object",
            ));
        }
        let force = self.flag("force");
        let options = WriteOptions {
            apply: true,
            ..self.options.clone()
        };
        let part = self.part();
        let current = cluster
            .get(&self.resource, self.namespace(), self.name())
            .ok();
        let name = self.name().to_owned();
        let subject = Subject {
            group: &self.resource.group,
            resource: &self.resource.plural,
            name: &name,
        };
        let Some(current) = current else {
            if part == Part::Status {
                return Err(ApiError::not_found(&subject));
            }
            let mut config = config;
            if config["metadata"]["name"].is_null() {
                config["metadata"]["name"] = json!(name);
            }
            let written = cluster.create(&self.resource, self.namespace(), config, &options)?;
            cluster.collect_garbage();
            return Ok(self.single(201, &written.object, &written.warnings));
        };
        let merged = managed::apply(
            Some(&current),
            &config,
            &options.field_manager,
            force,
            &self.resource,
            part,
        )
        .map_err(|conflicts| ApiError::apply_conflict(&subject, &conflicts))?;
        let written = cluster.update(
            &self.resource,
            self.namespace(),
            self.name(),
            merged,
            part,
            &options,
        )?;
        cluster.collect_garbage();
        Ok(self.single(200, &written.object, &written.warnings))
    }

    fn delete_options(&self, body: &Value) -> Result<DeleteOptions, ApiError> {
        let policy = self
            .params
            .get("propagationPolicy")
            .cloned()
            .or_else(|| body["propagationPolicy"].as_str().map(str::to_owned))
            .or_else(|| match body["orphanDependents"].as_bool() {
                Some(true) => Some("Orphan".to_owned()),
                _ => None,
            });
        let propagation = match policy.as_deref() {
            None | Some("Background") => Propagation::Background,
            Some("Foreground") => Propagation::Foreground,
            Some("Orphan") => Propagation::Orphan,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "propagationPolicy: Unsupported value: \"{other}\": supported values: \"Background\", \"Foreground\", \"Orphan\""
                )));
            }
        };
        let dry_run = self.options.dry_run
            || body["dryRun"]
                .as_array()
                .is_some_and(|d| d.iter().any(|v| v == "All"));
        Ok(DeleteOptions {
            propagation,
            uid: body["preconditions"]["uid"].as_str().map(str::to_owned),
            resource_version: body["preconditions"]["resourceVersion"]
                .as_str()
                .map(str::to_owned),
            dry_run,
            grace_period_seconds: self
                .params
                .get("gracePeriodSeconds")
                .and_then(|g| g.parse().ok())
                .or_else(|| body["gracePeriodSeconds"].as_i64()),
        })
    }

    fn delete(&self, body: &Value) -> Result<Response<Body>, ApiError> {
        if self.path.subresource.is_some() {
            return Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            ));
        }
        let options = self.delete_options(body)?;
        let mut cluster = self.shared.lock();
        let object = cluster.delete(&self.resource, self.namespace(), self.name(), &options)?;
        cluster.collect_garbage();
        Ok(self.single(200, &object, &[]))
    }

    fn delete_collection(&self, body: &Value) -> Result<Response<Body>, ApiError> {
        let (labels, fields) = self.selectors()?;
        let options = self.delete_options(body)?;
        let mut cluster = self.shared.lock();
        let targets: Vec<(String, String)> = cluster
            .store
            .list(&self.resource.key(), self.path.namespace.as_deref(), None)
            .filter(|o| labels.matches(o) && fields.matches(o))
            .map(|o| crate::store::object_key(o))
            .collect();
        let mut items = Vec::new();
        for (namespace, name) in targets {
            items.push(cluster.delete(&self.resource, &namespace, &name, &options)?);
        }
        cluster.collect_garbage();
        let revision = cluster.store.revision();
        Ok(render(
            200,
            &json!({"kind": self.resource.list_kind, "apiVersion": self.resource.api_version(),
                    "metadata": {"resourceVersion": revision.to_string()}, "items": items}),
            Representation::Json,
            &[],
        ))
    }
}

fn set_pointer(target: &mut Value, pointer: &str, value: Value) {
    let mut current = target;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if !current.is_object() {
            *current = json!({});
        }
        if i == parts.len() - 1 {
            current[*part] = value;
            return;
        }
        current = &mut current[*part];
    }
}

/// A continue token: the revision the list is read at and the last key served.
fn encode_continue(revision: u64, key: &(String, String)) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        json!({"resourceVersion": revision.to_string(), "namespace": key.0, "name": key.1})
            .to_string(),
    )
}

fn decode_continue(token: &str) -> Result<(u64, (String, String)), ApiError> {
    use base64::Engine;
    let invalid =
        || ApiError::bad_request("continue key is not valid: the token cannot be decoded");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    let revision = value["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .ok_or_else(invalid)?;
    Ok((
        revision,
        (
            value["namespace"].as_str().ok_or_else(invalid)?.to_owned(),
            value["name"].as_str().ok_or_else(invalid)?.to_owned(),
        ),
    ))
}
