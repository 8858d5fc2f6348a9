//! Quantized block formats, bit-compatible with ggml (so GGUF files interoperate).
//!
//! Each format is one `#[repr(C)]` block of 32 weights with a size assert; the
//! scalar `quantize`/`dequantize` here are the reference the CPU and CUDA
//! kernels are tested against. Layouts are documented in `docs/quant-formats.md`.

use half::f16;

/// Weights per q8_0 block.
pub const QK8_0: usize = 32;
/// Weights per q4_0 block.
pub const QK4_0: usize = 32;
/// Weights per q4_1 / q5_0 / q5_1 block.
pub const QK: usize = 32;

/// q8_0: `x = d * q`, `q` in -127..=127. 34 bytes per 32 weights (8.5 bits/weight).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK8_0],
}

/// q4_0: `x = d * (q - 8)`, `q` in 0..=15; byte `j` holds weight `j` in its
/// low nibble and weight `j + 16` in its high nibble. 18 bytes (4.5 bits/weight).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; QK4_0 / 2],
}

/// q4_1: `x = d * q + m`, `q` in 0..=15, nibbles as q4_0. 20 bytes (5 bits/weight).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}

/// q5_0: `x = d * (q - 16)`, `q` in 0..=31; low 4 bits as q4_0, bit 4 of
/// weight `j` in bit `j` of the little-endian u32 `qh`. 22 bytes (5.5 bits/weight).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

/// q5_1: `x = d * q + m`, `q` in 0..=31, bits as q5_0. 24 bytes (6 bits/weight).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

/// A quantized block type: 32 weights, scalar reference conversions.
pub trait QuantBlock: bytemuck::Pod + Send + Sync {
    /// Quantizes exactly 32 values.
    fn quantize(x: &[f32]) -> Self;
    /// Dequantizes into exactly 32 values.
    fn dequantize(&self, out: &mut [f32]);
}

fn abs_max_signed(x: &[f32]) -> f32 {
    // The value with the largest magnitude, keeping its sign (ggml picks the
    // sign so the extreme maps exactly to -8 / -16).
    let mut max = 0.0f32;
    for &v in x {
        if v.abs() > max.abs() {
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

impl QuantBlock for BlockQ8_0 {
    fn quantize(x: &[f32]) -> Self {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; QK8_0];
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
        Self { d: f16::from_f32(d), qs }
    }
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }
}

impl QuantBlock for BlockQ4_0 {
    fn quantize(x: &[f32]) -> Self {
        let max = abs_max_signed(x);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0u8; QK4_0 / 2];
        for (j, q) in qs.iter_mut().enumerate() {
            let lo = ((x[j] * id + 8.5) as i32).clamp(0, 15) as u8;
            let hi = ((x[j + 16] * id + 8.5) as i32).clamp(0, 15) as u8;
            *q = lo | (hi << 4);
        }
        Self { d: f16::from_f32(d), qs }
    }
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (j, &q) in self.qs.iter().enumerate() {
            out[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
            out[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

impl QuantBlock for BlockQ4_1 {
    fn quantize(x: &[f32]) -> Self {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0u8; QK / 2];
        for (j, q) in qs.iter_mut().enumerate() {
            let lo = (((x[j] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
            let hi = (((x[j + 16] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
            *q = lo | (hi << 4);
        }
        Self { d: f16::from_f32(d), m: f16::from_f32(min), qs }
    }
    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (j, &q) in self.qs.iter().enumerate() {
            out[j] = (q & 0x0f) as f32 * d + m;
            out[j + 16] = (q >> 4) as f32 * d + m;
        }
    }
}

fn pack5(q: &[u8; 32]) -> ([u8; 4], [u8; 16]) {
    let mut qh = 0u32;
    let mut qs = [0u8; 16];
    for j in 0..16 {
        qs[j] = (q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4);
        qh |= (((q[j] >> 4) & 1) as u32) << j;
        qh |= (((q[j + 16] >> 4) & 1) as u32) << (j + 16);
    }
    (qh.to_le_bytes(), qs)
}

/// The 32 five-bit codes (0..=31) of a q5_0 / q5_1 block, in weight order.
pub fn unpack5(qh: [u8; 4], qs: &[u8; 16]) -> [u8; 32] {
    let qh = u32::from_le_bytes(qh);
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = (qs[j] & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
        q[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    q
}

impl QuantBlock for BlockQ5_0 {
    fn quantize(x: &[f32]) -> Self {
        let max = abs_max_signed(x);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut q = [0u8; 32];
        for (q, &v) in q.iter_mut().zip(x) {
            *q = ((v * id + 16.5) as i32).clamp(0, 31) as u8;
        }
        let (qh, qs) = pack5(&q);
        Self { d: f16::from_f32(d), qh, qs }
    }
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (o, q) in out.iter_mut().zip(unpack5(self.qh, &self.qs)) {
            *o = (q as i32 - 16) as f32 * d;
        }
    }
}

impl QuantBlock for BlockQ5_1 {
    fn quantize(x: &[f32]) -> Self {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut q = [0u8; 32];
        for (q, &v) in q.iter_mut().zip(x) {
            *q = (((v - min) * id + 0.5) as i32).clamp(0, 31) as u8;
        }
        let (qh, qs) = pack5(&q);
        Self { d: f16::from_f32(d), m: f16::from_f32(min), qh, qs }
    }
    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (o, q) in out.iter_mut().zip(unpack5(self.qh, &self.qs)) {
            *o = q as f32 * d + m;
        }
    }
}

/// Quantizes a row whose length is a multiple of 32.
pub fn quantize_row<B: QuantBlock>(x: &[f32]) -> Vec<B> {
    x.chunks_exact(QK).map(B::quantize).collect()
}

/// Dequantizes a row of blocks.
pub fn dequantize_row<B: QuantBlock>(blocks: &[B], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        b.dequantize(o);
    }
}

/// Dequantizes raw (possibly unaligned) block bytes; `out.len()` must be
/// 32 × the number of whole blocks in `bytes`.
pub fn dequantize_bytes<B: QuantBlock>(bytes: &[u8], out: &mut [f32]) {
    let size = std::mem::size_of::<B>();
    for (chunk, o) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(QK)) {
        bytemuck::pod_read_unaligned::<B>(chunk).dequantize(o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn check<B: QuantBlock>(levels: f32, symmetric: bool) {
        let mut seed = 7;
        for scale in [1e-3f32, 1.0, 37.0] {
            for _ in 0..200 {
                let x: Vec<f32> = (0..32).map(|_| lcg(&mut seed) * scale).collect();
                let b = B::quantize(&x);
                let mut y = [0.0f32; 32];
                b.dequantize(&mut y);
                let (lo, hi) = min_max(&x);
                let range = if symmetric { 2.0 * lo.abs().max(hi.abs()) } else { hi - lo };
                // Half a step, plus f16 rounding of the scale (and min) applied to every level.
                let bound = range / levels * 0.5 + range * 2e-3 + 1e-6;
                for (a, b) in x.iter().zip(&y) {
                    assert!((a - b).abs() <= bound, "{a} vs {b}, bound {bound}");
                }
            }
        }
    }

    #[test]
    fn round_trips_within_half_a_step() {
        check::<BlockQ8_0>(254.0, true);
        check::<BlockQ4_0>(8.0, true); // the side opposite the extreme can clamp a full step
        check::<BlockQ4_1>(15.0, false);
        check::<BlockQ5_0>(16.0, true);
        check::<BlockQ5_1>(31.0, false);
    }
}
