//! aigc-worker: the data-plane worker. `serve` runs candle inference behind an
//! OpenAI-compatible HTTP API.

pub mod api;
pub mod device;
pub mod error;
pub mod models;
pub mod sampling;
pub mod serve;
pub mod tokenizer;

pub use error::WorkerError;
