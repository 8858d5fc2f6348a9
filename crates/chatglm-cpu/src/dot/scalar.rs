//! Portable reference kernels. Accumulate in f32 in index order except where
//! noted; SIMD variants reorder sums, so tests compare with a tolerance.

use super::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QK8_0};
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

/// The reference of [`crate::features::DotF16H`]: both sides widened to f32.
pub fn dot_f16_h(w: &[f16], x: &[f16]) -> f32 {
    debug_assert_eq!(w.len(), x.len());
    w.iter().zip(x).map(|(a, b)| a.to_f32() * b.to_f32()).sum()
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
        let isum: i32 = a.qs.iter().zip(&b.qs).map(|(&p, &q)| p as i32 * q as i32).sum();
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

fn sum_q8(b: &BlockQ8_0) -> i32 {
    b.qs.iter().map(|&q| q as i32).sum()
}

fn unpack5(qh: [u8; 4], qs: &[u8; 16]) -> [i32; 32] {
    let qh = u32::from_le_bytes(qh);
    let mut q = [0i32; 32];
    for j in 0..16 {
        q[j] = ((qs[j] & 0x0f) as u32 | (((qh >> j) & 1) << 4)) as i32;
        q[j + 16] = ((qs[j] >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4)) as i32;
    }
    q
}

/// q4_1 weights (`d·q + m`) against q8_0 activations: `d·dx·Σq·qx + m·dx·Σqx`.
pub fn dot_q4_1(w: &[BlockQ4_1], x: &[BlockQ8_0]) -> f32 {
    let mut sum = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let mut isum = 0i32;
        for j in 0..16 {
            isum += (a.qs[j] & 0x0f) as i32 * b.qs[j] as i32 + (a.qs[j] >> 4) as i32 * b.qs[j + 16] as i32;
        }
        let dx = b.d.to_f32();
        sum += isum as f32 * a.d.to_f32() * dx + a.m.to_f32() * dx * sum_q8(b) as f32;
    }
    sum
}

pub fn dot_q5_0(w: &[BlockQ5_0], x: &[BlockQ8_0]) -> f32 {
    let mut sum = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let q = unpack5(a.qh, &a.qs);
        let isum: i32 = q.iter().zip(&b.qs).map(|(&q, &y)| (q - 16) * y as i32).sum();
        sum += isum as f32 * a.d.to_f32() * b.d.to_f32();
    }
    sum
}

pub fn dot_q5_1(w: &[BlockQ5_1], x: &[BlockQ8_0]) -> f32 {
    let mut sum = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        let q = unpack5(a.qh, &a.qs);
        let isum: i32 = q.iter().zip(&b.qs).map(|(&q, &y)| q * y as i32).sum();
        let dx = b.d.to_f32();
        sum += isum as f32 * a.d.to_f32() * dx + a.m.to_f32() * dx * sum_q8(b) as f32;
    }
    sum
}

pub fn axpy_f32(a: f32, v: &[f32], acc: &mut [f32]) {
    for (o, &x) in acc.iter_mut().zip(v) {
        *o += a * x;
    }
}

pub fn axpy_f16(a: f32, v: &[f16], acc: &mut [f32]) {
    for (o, &x) in acc.iter_mut().zip(v) {
        *o += a * x.to_f32();
    }
}
