//! CPU kernels for ChatGLM inference.
//!
//! Principal types: [`Matrix`] (a weight matrix in one of the storage formats,
//! row-major `(rows, cols)` = `(out_features, in_features)` as PyTorch stores
//! `nn.Linear` weights) and [`Kernels`] (the instruction-set-specific function
//! table, chosen once at start-up by [`Kernels::detect`]).
//!
//! What comes in: weight matrices and f32 activations. What goes out: f32
//! activations. Every SIMD kernel sits beside a scalar reference in
//! [`dot::scalar`] and is tested against it on awkward sizes.
//!
//! Threads: mat-vec / mat-mat work is split by output rows over the rayon
//! pool (persistent threads; the binary sizes the pool once).

pub mod attention;
#[cfg(target_arch = "x86_64")]
mod attention512;
pub mod dot;
pub mod features;
pub mod matmul;
pub mod matrix;
pub mod memory;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod ops;
pub mod packed;
pub mod packed_q8;
mod prefetch;
mod quant_blocks;
pub mod read_probe;
pub mod tile;
#[cfg(target_arch = "x86_64")]
pub mod tile512;
pub mod vmath;

pub use features::{CpuFeatures, Kernels};
pub use matrix::{Matrix, MatrixData, Storage};
