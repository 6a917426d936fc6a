//! aigc-operator as a library: the pure decision modules the controllers use.

pub mod tier_policy;
