//! The aigc operator as a library: the pure parts the binary and its tests build on.

pub mod error;
pub mod scheduler;

pub use error::Error;
