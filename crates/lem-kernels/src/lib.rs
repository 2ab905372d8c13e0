//! CPU compute kernels for lem.
//!
//! Everything on the forward pass's hot path that is not model wiring lives here:
//! quantized weight matrices and their matrix products ([`QMatrix`]), the thread pool
//! they run on ([`Threads`]), and the small f32 operations between them ([`ops`]).
//!
//! Block layouts and the scalar reference arithmetic come from candle's GGML block types
//! (`candle_core::quantized::k_quants`); the parallel scheduling, activation quantization
//! and (later) SIMD dot products are lem's own, because candle's CPU path is the measured
//! bottleneck (see docs/performance.md).

mod attention;
mod dot;
pub mod kvq;
mod qmatrix;
mod quant_act;
pub mod simd;
mod threads;

pub mod ops;

/// MXFP4 blocks and their dot products with Q8_0 activations.
pub use dot::mxfp4;
pub use qmatrix::{GgmlType, QMatrix, QuantError, Scratch};
pub use threads::Threads;
