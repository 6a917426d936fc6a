//! The aigc operator as a library: controllers, the resource scheduler, the tier policy engine,
//! RBAC derived from the code, the tier layout, and the worker pod template the binary and its
//! tests build on.

pub mod controllers;
pub mod error;
pub mod layout;
pub mod local;
pub mod rbac;
pub mod scheduler;
pub mod tier_policy;
pub mod worker_pod;

pub use error::Error;
