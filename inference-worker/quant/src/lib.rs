//! Quantized matrix products for GGUF weights on the CPU, and a llama forward built on them.
//!
//! candle's CPU path multiplies `Q4_1` weights with a scalar loop; this crate quantizes each
//! activation row once (to llama.cpp's `Q8_1` blocks), then multiplies with AVX2 / AVX-512
//! VNNI kernels chosen at run time (what the CPU has, [`Isa::available`]; the fastest of
//! them on the model's own matrices, [`QMatrix::fastest_isa`]) or a portable scalar
//! reference that gives bit-identical results, several activation rows per weight-row load
//! (prompt processing, and decode steps of many sequences fed together through
//! [`llama::Llama::forward_many`]) and weight rows spread over rayon's threads.

pub mod formats;
pub mod kernels;
pub mod llama;
pub mod matmul;

pub use formats::WeightFormat;
pub use kernels::Isa;
pub use matmul::{Activations, QMatrix};

/// What can go wrong; every message names the tensor or shape involved.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("llama model: {0}")]
    Model(String),
}
