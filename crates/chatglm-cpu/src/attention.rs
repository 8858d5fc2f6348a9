//! Causal multi-query attention of one token over its sequence's KV cache.
//!
//! Flash-attention style: positions are visited in tiles with an online
//! softmax, so no `n × n` (or even `1 × n`) score matrix is materialised and
//! any context length fits in a fixed stack buffer. Each KV group's key and
//! value rows are loaded once per tile for all the query heads sharing them.

use crate::features::Kernels;
use half::f16;

/// Positions per tile; `TILE × 4` bytes of scores per head stay in L1.
const TILE: usize = 64;
/// Query heads processed together against one KV group.
const MAX_HEADS_PER_PASS: usize = 16;

/// An element type the KV cache can be stored in.
pub trait KvElem: bytemuck::Pod + Send + Sync {
    fn from_f32_slice(src: &[f32], dst: &mut [Self]);
    fn dot(kernels: &Kernels, k: &[Self], q: &[f32]) -> f32;
    /// `acc += a · v`.
    fn axpy(kernels: &Kernels, a: f32, v: &[Self], acc: &mut [f32]);
}

impl KvElem for f32 {
    fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
    fn dot(kernels: &Kernels, k: &[Self], q: &[f32]) -> f32 {
        (kernels.dot_f32)(k, q)
    }
    fn axpy(kernels: &Kernels, a: f32, v: &[Self], acc: &mut [f32]) {
        (kernels.axpy_f32)(a, v, acc)
    }
}

impl KvElem for f16 {
    fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = f16::from_f32(s);
        }
    }
    fn dot(kernels: &Kernels, k: &[Self], q: &[f32]) -> f32 {
        (kernels.dot_f16)(k, q)
    }
    fn axpy(kernels: &Kernels, a: f32, v: &[Self], acc: &mut [f32]) {
        (kernels.axpy_f16)(a, v, acc)
    }
}

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_groups: usize,
    pub head_dim: usize,
}

/// Attention output of one KV group's query heads.
///
/// `q`: `(heads_in_group, head_dim)` for this token; `keys`/`values`:
/// `(n_ctx, n_groups, head_dim)` of the sequence (already holding this token);
/// only positions `0..n_ctx` are attended (the causal prefix). `out`:
/// `(heads_in_group, head_dim)`.
#[allow(clippy::too_many_arguments)]
pub fn attend_group<T: KvElem>(
    kernels: &Kernels,
    shape: AttentionShape,
    group: usize,
    q: &[f32],
    keys: &[T],
    values: &[T],
    n_ctx: usize,
    out: &mut [f32],
) {
    let hd = shape.head_dim;
    let kv_stride = shape.n_groups * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let heads = q.len() / hd;
    for h0 in (0..heads).step_by(MAX_HEADS_PER_PASS) {
        let nh = (heads - h0).min(MAX_HEADS_PER_PASS);
        let mut max = [f32::NEG_INFINITY; MAX_HEADS_PER_PASS];
        let mut denom = [0.0f32; MAX_HEADS_PER_PASS];
        let mut scores = [[0.0f32; TILE]; MAX_HEADS_PER_PASS];
        let out = &mut out[h0 * hd..(h0 + nh) * hd];
        out.fill(0.0);
        for start in (0..n_ctx).step_by(TILE) {
            let len = (n_ctx - start).min(TILE);
            #[allow(clippy::needless_range_loop)]
            for p in 0..len {
                let off = (start + p) * kv_stride + group * hd;
                let k = &keys[off..off + hd];
                for h in 0..nh {
                    let qh = &q[(h0 + h) * hd..(h0 + h + 1) * hd];
                    scores[h][p] = T::dot(kernels, k, qh) * scale;
                }
            }
            for h in 0..nh {
                let s = &mut scores[h][..len];
                let tile_max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let new_max = max[h].max(tile_max);
                let correction = (max[h] - new_max).exp();
                max[h] = new_max;
                denom[h] *= correction;
                let acc = &mut out[h * hd..(h + 1) * hd];
                if correction != 1.0 {
                    acc.iter_mut().for_each(|v| *v *= correction);
                }
                for (p, sp) in s.iter_mut().enumerate() {
                    let e = (*sp - new_max).exp();
                    denom[h] += e;
                    let off = (start + p) * kv_stride + group * hd;
                    T::axpy(kernels, e, &values[off..off + hd], acc);
                }
            }
        }
        for h in 0..nh {
            let inv = 1.0 / denom[h];
            out[h * hd..(h + 1) * hd].iter_mut().for_each(|v| *v *= inv);
        }
    }
}

/// Reference attention in f64 with an explicit softmax, for tests.
pub fn attend_group_reference(
    shape: AttentionShape,
    group: usize,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    n_ctx: usize,
    out: &mut [f32],
) {
    let hd = shape.head_dim;
    let kv_stride = shape.n_groups * hd;
    let scale = 1.0 / (hd as f64).sqrt();
    for (h, qh) in q.chunks_exact(hd).enumerate() {
        let scores: Vec<f64> = (0..n_ctx)
            .map(|p| {
                let k = &keys[p * kv_stride + group * hd..][..hd];
                k.iter().zip(qh).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale
            })
            .collect();
        let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for d in 0..hd {
            let v: f64 = (0..n_ctx).map(|p| e[p] * values[p * kv_stride + group * hd + d] as f64).sum();
            out[h * hd + d] = (v / z) as f32;
        }
    }
}
