//! The service proxy: a TCP listener on `<clusterIP>:<port>` for every TCP port of every
//! Service with a cluster IP, forwarding each connection to the Service's ready endpoints in
//! turn (round robin, skipping one that refuses). Listeners follow their Service: rebound
//! when its address or port changes, closed when it goes. Connections that arrive while a
//! Service has no ready endpoint are closed at once. What to listen on is [`desired_listeners`].

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::stopped;

/// One Service port: namespace, Service name, port name (or number when unnamed).
pub type PortKey = (String, String, String);

/// Where to listen and where to forward, per Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// `<clusterIP>:<port>`.
    pub listen: SocketAddr,
    /// Ready endpoints (`<podIP>:<targetPort>`).
    pub backends: Vec<SocketAddr>,
}

/// The listeners the Services and Endpoints call for: every TCP port of a Service whose
/// `clusterIP` is an IP address (not `None`), with the ready addresses of the Endpoints
/// subset ports of the same name.
pub fn desired_listeners(
    services: &[Arc<Service>],
    endpoints: &[Arc<Endpoints>],
) -> BTreeMap<PortKey, Route> {
    let mut routes = BTreeMap::new();
    for service in services {
        let spec = service.spec.clone().unwrap_or_default();
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let namespace = service.namespace().unwrap_or_default();
        let name = service.name_any();
        let subsets = endpoints
            .iter()
            .find(|e| e.namespace().as_deref() == Some(namespace.as_str()) && e.name_any() == name)
            .and_then(|e| e.subsets.clone())
            .unwrap_or_default();
        for port in spec.ports.iter().flatten() {
            if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
                continue;
            }
            let port_name = port.name.clone().unwrap_or_default();
            let Ok(listen_port) = u16::try_from(port.port) else {
                continue;
            };
            let mut backends = Vec::new();
            for subset in &subsets {
                let Some(target) = subset
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.clone().unwrap_or_default() == port_name)
                    .and_then(|p| u16::try_from(p.port).ok())
                else {
                    continue;
                };
                for address in subset.addresses.iter().flatten() {
                    if let Ok(ip) = address.ip.parse::<IpAddr>() {
                        backends.push(SocketAddr::new(ip, target));
                    }
                }
            }
            let key_port = if port_name.is_empty() {
                port.port.to_string()
            } else {
                port_name
            };
            routes.insert(
                (namespace.clone(), name.clone(), key_port),
                Route {
                    listen: SocketAddr::new(ip, listen_port),
                    backends,
                },
            );
        }
    }
    routes
}

/// Backends of one listener and whose turn it is.
#[derive(Default)]
struct Backends {
    addresses: Vec<SocketAddr>,
    next: usize,
}

impl Backends {
    /// The backends in the order to try them for the next connection.
    fn rotation(&mut self) -> Vec<SocketAddr> {
        let count = self.addresses.len();
        if count == 0 {
            return Vec::new();
        }
        let start = self.next % count;
        self.next = (start + 1) % count;
        self.addresses[start..]
            .iter()
            .chain(&self.addresses[..start])
            .copied()
            .collect()
    }
}

struct Listener {
    listen: SocketAddr,
    backends: Arc<Mutex<Backends>>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(mut inbound: TcpStream, backends: Vec<SocketAddr>) {
    for backend in backends {
        if let Ok(mut outbound) = TcpStream::connect(backend).await {
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            return;
        }
    }
}

/// Accept and forward connections; they live in this task's set, so ending the task (the
/// Service went, or the cluster stops) closes them along with the listener.
async fn accept_loop(listener: TcpListener, backends: Arc<Mutex<Backends>>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, most likely: give connections in flight time to end.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let order = backends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .rotation();
        connections.spawn(forward(stream, order));
    }
}

/// Bring the open listeners in line with `wanted`. Returns whether some address could not be
/// bound (worth another try later).
async fn sync_listeners(
    open: &mut HashMap<PortKey, Listener>,
    wanted: BTreeMap<PortKey, Route>,
) -> bool {
    open.retain(|key, listener| wanted.get(key).is_some_and(|r| r.listen == listener.listen));
    let mut failed = false;
    for (key, route) in wanted {
        if let Some(listener) = open.get(&key) {
            let mut backends = listener
                .backends
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if backends.addresses != route.backends {
                backends.addresses = route.backends;
            }
            continue;
        }
        match TcpListener::bind(route.listen).await {
            Ok(socket) => {
                let backends = Arc::new(Mutex::new(Backends {
                    addresses: route.backends,
                    next: 0,
                }));
                let task = tokio::spawn(accept_loop(socket, backends.clone()));
                open.insert(
                    key,
                    Listener {
                        listen: route.listen,
                        backends,
                        task,
                    },
                );
            }
            Err(error) => {
                tracing::warn!(service = %format!("{}/{}", key.0, key.1), address = %route.listen, %error, "cannot listen for a Service");
                failed = true;
            }
        }
    }
    failed
}

/// Run until `stop` turns true; every listener closes then.
pub async fn run(client: Client, stop: watch::Receiver<bool>) {
    let (services, service_writer) = reflector::store::<Service>();
    let (endpoints, endpoint_writer) = reflector::store::<Endpoints>();
    let service_events = reflector(
        service_writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .map(|_| ());
    let endpoint_events = reflector(
        endpoint_writer,
        watcher(Api::<Endpoints>::all(client), watcher::Config::default()),
    )
    .default_backoff()
    .map(|_| ());
    let mut events = futures::stream::select(service_events, endpoint_events).boxed();
    let mut open: HashMap<PortKey, Listener> = HashMap::new();
    let mut retry = false;
    let shutdown = stopped(stop);
    tokio::pin!(shutdown);
    loop {
        let retry_due = async {
            if retry {
                tokio::time::sleep(Duration::from_secs(2)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            event = events.next() => {
                if event.is_none() {
                    break;
                }
                while let Some(Some(_)) = events.next().now_or_never() {}
            }
            _ = retry_due => {}
        }
        if services.wait_until_ready().now_or_never().is_none()
            || endpoints.wait_until_ready().now_or_never().is_none()
        {
            continue;
        }
        let wanted = desired_listeners(&services.state(), &endpoints.state());
        retry = sync_listeners(&mut open, wanted).await;
    }
    // Wait for every listener to be closed, so the ports are free once the cluster stopped.
    for (_, mut listener) in open.drain() {
        listener.task.abort();
        let _ = (&mut listener.task).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(ip: &str, ports: serde_json::Value) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"clusterIP": ip, "ports": ports},
            }))
            .unwrap(),
        )
    }

    fn endpoints(subsets: serde_json::Value) -> Arc<Endpoints> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "default"},
                "subsets": subsets,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn each_tcp_port_listens_on_the_cluster_ip_and_forwards_to_ready_addresses() {
        let services = [service(
            "127.2.0.9",
            json!([
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ]),
        )];
        let eps = [endpoints(json!([{
            "addresses": [{"ip": "127.1.0.2"}, {"ip": "127.1.0.3"}],
            "notReadyAddresses": [{"ip": "127.1.0.4"}],
            "ports": [{"name": "http", "port": 8080}],
        }]))];
        let routes = desired_listeners(&services, &eps);
        assert_eq!(routes.len(), 1);
        let route = &routes[&("default".into(), "web".into(), "http".into())];
        assert_eq!(route.listen, "127.2.0.9:80".parse().unwrap());
        assert_eq!(
            route.backends,
            vec![
                "127.1.0.2:8080".parse().unwrap(),
                "127.1.0.3:8080".parse().unwrap()
            ]
        );
    }

    #[test]
    fn headless_services_get_no_listener_and_missing_endpoints_no_backends() {
        assert!(desired_listeners(&[service("None", json!([{"port": 80}]))], &[]).is_empty());
        let routes = desired_listeners(&[service("127.2.0.9", json!([{"port": 80}]))], &[]);
        assert_eq!(
            routes[&("default".into(), "web".into(), "80".into())].backends,
            vec![]
        );
    }

    #[test]
    fn backends_take_turns() {
        let a: SocketAddr = "127.1.0.2:1".parse().unwrap();
        let b: SocketAddr = "127.1.0.3:1".parse().unwrap();
        let mut backends = Backends {
            addresses: vec![a, b],
            next: 0,
        };
        assert_eq!(backends.rotation(), vec![a, b]);
        assert_eq!(backends.rotation(), vec![b, a]);
        assert_eq!(backends.rotation(), vec![a, b]);
    }
}
