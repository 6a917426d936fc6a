//! The aigc operator as a library: controllers, the tier layout, and the worker pod template
//! the binary and its tests build on.

pub mod controllers;
pub mod error;
pub mod layout;
pub mod worker_pod;

pub use error::Error;
