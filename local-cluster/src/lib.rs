//! An embedded Kubernetes API server for local use and end-to-end tests.
//!
//! It is held to the behaviour of the real API server as seen by real clients (kubectl,
//! kube-rs, Helm). Today it provides CRD schema enforcement ([`schema`]); the server, storage
//! and watch follow. It depends on no other crate of this workspace.

pub mod schema;
