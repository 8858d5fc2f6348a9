//! Dot products between one weight row and one activation row.
//!
//! `scalar` is the reference every SIMD variant is tested against.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
pub mod scalar;

pub use crate::quant_blocks::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QK4_0, QK8_0};
