//! The aigc operator as a library: controllers, the resource scheduler, the tier policy engine,
//! RBAC derived from the code, the tier layout, the worker pod template, and the `run`
//! process (configuration, leader election, metrics and probes) the binary and its tests
//! build on.

pub mod config;
pub mod controllers;
pub mod error;
pub mod health;
pub mod layout;
pub mod leader;
pub mod local;
pub mod metrics;
pub mod process;
pub mod rbac;
pub mod scheduler;
pub mod tier_policy;
pub mod worker_pod;

pub use error::Error;
