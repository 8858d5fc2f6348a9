//! Portable reference kernels. Accumulate in f32 in index order except where
//! noted; SIMD variants reorder sums, so tests compare with a tolerance.

use super::{BlockQ4_0, BlockQ8_0, QK8_0};
use chatglm_weights::quant::QuantBlock;
use half::{bf16, f16};

pub fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    w.iter().zip(x).map(|(a, b)| a * b).sum()
}

pub fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    w.iter().zip(x).map(|(a, b)| a.to_f32() * b).sum()
}

pub fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    w.iter().zip(x).map(|(a, b)| a.to_f32() * b).sum()
}

/// Quantizes activations to q8_0 blocks (ggml's `quantize_row_q8_0`):
/// `d = max|x| / 127`, `q = round(x / d)`.
pub fn quantize_row_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    debug_assert_eq!(x.len(), out.len() * QK8_0);
    for (chunk, block) in x.chunks_exact(QK8_0).zip(out.iter_mut()) {
        *block = BlockQ8_0::quantize(chunk);
    }
}

pub fn dot_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut sum = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let isum: i32 =
            a.qs.iter()
                .zip(&b.qs)
                .map(|(&p, &q)| p as i32 * q as i32)
                .sum();
        sum += isum as f32 * (a.d.to_f32() * b.d.to_f32());
    }
    sum
}

pub fn dot_q4_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    let mut sum = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let mut isum = 0i32;
        for j in 0..16 {
            let lo = (a.qs[j] & 0x0f) as i32 - 8;
            let hi = (a.qs[j] >> 4) as i32 - 8;
            isum += lo * b.qs[j] as i32 + hi * b.qs[j + 16] as i32;
        }
        sum += isum as f32 * (a.d.to_f32() * b.d.to_f32());
    }
    sum
}
