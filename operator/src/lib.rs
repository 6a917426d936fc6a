//! The aigc-operator library: what the `aigc-operator` binary is made of.

pub mod rbac;
