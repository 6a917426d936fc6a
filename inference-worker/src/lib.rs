//! aigc-worker: the data-plane worker run in `aigc-worker` pods. `serve` runs candle inference
//! behind an OpenAI-compatible HTTP API; `prepare` governs datasets; `train` trains models
//! that `serve` loads; `inspect` checks a model artifact; `transfer` moves data between tiers.
//!
//! This crate moves and transforms data and weights; it never talks to the Kubernetes API.
//! Training and preparation read and write objects through [`objects`], the one place that
//! knows where their bytes live.

pub mod api;
pub mod device;
pub mod error;
pub mod inspect;
pub mod models;
pub mod objects;
pub mod prepare;
pub mod rng;
pub mod sampling;
pub mod serve;
pub mod summary;
pub mod tokenizer;
pub mod train;
pub mod transfer;

pub use error::{Result, WorkerError};
