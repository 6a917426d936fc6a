//! End-to-end tests of the embedded API server with real clients: kubectl, kube-rs (Api,
//! watcher, Controller), Helm, and raw HTTP for malformed requests.

mod bad_input;
mod harness;
mod helm;
mod kube_client;
mod kubectl;
mod kubelet;
mod request_path;
mod running;
mod workloads;
