//! Causal multi-query attention of one token over its sequence's KV cache.
//!
//! Flash-attention style: positions are visited in tiles with an online
//! softmax, so no `n × n` (or even `1 × n`) score matrix is materialised and
//! any context length fits in a fixed stack buffer. Each KV group's key and
//! value rows are loaded once per tile for all the query heads sharing them.

use crate::dot::BlockQ8_0;
use crate::features::Kernels;
use half::f16;

/// Positions per tile; `TILE × 4` bytes of scores per head stay in L1.
pub const TILE: usize = 64;
/// Query heads processed together against one KV group.
pub const MAX_HEADS_PER_PASS: usize = 16;

/// An element type the KV cache can be stored in.
pub trait KvElem: bytemuck::Pod + Send + Sync {
    /// Values per stored unit (1 for floats, 32 for a q8_0 block). Strides
    /// and head sizes passed to the kernels are in values.
    const VALUES_PER_UNIT: usize = 1;
    /// Stores `src` (a whole number of units) into `dst`.
    fn from_f32_slice(src: &[f32], dst: &mut [Self]);
    /// The attention block kernels for this element type.
    fn block_kernels(kernels: &Kernels) -> &AttentionKernels<Self>;
}

/// `scores[h][p] = k[p·stride ..][..hd] · q[h]` for `p < len`, `h < nh`.
pub type ScoresFn<T> = fn(k: &[T], stride: usize, len: usize, q: &[f32], nh: usize, hd: usize, scores: &mut Scores);
/// `out[h] += Σ_p e[h][p] · v[p·stride ..][..hd]` for `p < len`, `h < nh`.
pub type WeightedSumFn<T> = fn(e: &Scores, len: usize, v: &[T], stride: usize, nh: usize, hd: usize, out: &mut [f32]);
/// Scores of up to [`MAX_HEADS_PER_PASS`] heads over one tile of positions.
pub type Scores = [[f32; TILE]; MAX_HEADS_PER_PASS];

/// A whole group's attention in one kernel (what [`attend_group`] computes),
/// for instruction sets with a better shape than the tile kernels. Returns
/// false, having done nothing, for shapes it does not handle.
pub type GroupFn<T> =
    fn(shape: AttentionShape, group: usize, q: &[f32], keys: &[T], values: &[T], n_ctx: usize, out: &mut [f32]) -> bool;

/// Block kernels over a tile of positions for one KV element type.
#[derive(Clone, Copy)]
pub struct AttentionKernels<T: 'static> {
    pub scores: ScoresFn<T>,
    pub weighted_sum: WeightedSumFn<T>,
    /// Used instead of the tile kernels when present and the shape fits.
    pub group: Option<GroupFn<T>>,
}

impl KvElem for BlockQ8_0 {
    const VALUES_PER_UNIT: usize = 32;
    fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
        for (block, chunk) in dst.iter_mut().zip(src.chunks_exact(32)) {
            *block = chatglm_weights::quant::QuantBlock::quantize(chunk);
        }
    }
    fn block_kernels(kernels: &Kernels) -> &AttentionKernels<Self> {
        &kernels.attention_q8_0
    }
}

impl AttentionKernels<BlockQ8_0> {
    /// The reference q8_0 KV kernels (keys and values dequantized on the fly).
    pub const fn scalar_q8_0() -> Self {
        Self { scores: scalar_scores_q8, weighted_sum: scalar_weighted_sum_q8, group: None }
    }
}

fn scalar_scores_q8(k: &[BlockQ8_0], stride: usize, len: usize, q: &[f32], nh: usize, hd: usize, scores: &mut Scores) {
    let (stride_b, nb) = (stride / 32, hd / 32);
    for p in 0..len {
        let kp = &k[p * stride_b..p * stride_b + nb];
        for (h, row) in scores.iter_mut().enumerate().take(nh) {
            let qh = &q[h * hd..(h + 1) * hd];
            row[p] = kp
                .iter()
                .zip(qh.chunks_exact(32))
                .map(|(b, qc)| b.d.to_f32() * b.qs.iter().zip(qc).map(|(&v, &x)| v as f32 * x).sum::<f32>())
                .sum();
        }
    }
}

fn scalar_weighted_sum_q8(
    e: &Scores,
    len: usize,
    v: &[BlockQ8_0],
    stride: usize,
    nh: usize,
    hd: usize,
    out: &mut [f32],
) {
    let (stride_b, nb) = (stride / 32, hd / 32);
    for p in 0..len {
        let vp = &v[p * stride_b..p * stride_b + nb];
        for h in 0..nh {
            let oh = &mut out[h * hd..(h + 1) * hd];
            for (b, oc) in vp.iter().zip(oh.chunks_exact_mut(32)) {
                let w = e[h][p] * b.d.to_f32();
                for (o, &val) in oc.iter_mut().zip(&b.qs) {
                    *o += w * val as f32;
                }
            }
        }
    }
}

impl<T: KvElem + ToF32> AttentionKernels<T> {
    pub const fn scalar() -> Self {
        Self { scores: scalar_scores::<T>, weighted_sum: scalar_weighted_sum::<T>, group: None }
    }
}

/// Element → f32 for the scalar reference kernels.
pub trait ToF32: Copy {
    fn f32(self) -> f32;
}
impl ToF32 for f32 {
    fn f32(self) -> f32 {
        self
    }
}
impl ToF32 for f16 {
    fn f32(self) -> f32 {
        self.to_f32()
    }
}

fn scalar_scores<T: ToF32>(k: &[T], stride: usize, len: usize, q: &[f32], nh: usize, hd: usize, scores: &mut Scores) {
    for p in 0..len {
        let kp = &k[p * stride..p * stride + hd];
        for (h, row) in scores.iter_mut().enumerate().take(nh) {
            row[p] = kp.iter().zip(&q[h * hd..(h + 1) * hd]).map(|(a, b)| a.f32() * b).sum();
        }
    }
}

fn scalar_weighted_sum<T: ToF32>(
    e: &Scores,
    len: usize,
    v: &[T],
    stride: usize,
    nh: usize,
    hd: usize,
    out: &mut [f32],
) {
    for p in 0..len {
        let vp = &v[p * stride..p * stride + hd];
        for h in 0..nh {
            let w = e[h][p];
            for (o, x) in out[h * hd..(h + 1) * hd].iter_mut().zip(vp) {
                *o += w * x.f32();
            }
        }
    }
}

impl KvElem for f32 {
    fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
    fn block_kernels(kernels: &Kernels) -> &AttentionKernels<Self> {
        &kernels.attention_f32
    }
}

impl KvElem for f16 {
    fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = f16::from_f32(s);
        }
    }
    fn block_kernels(kernels: &Kernels) -> &AttentionKernels<Self> {
        &kernels.attention_f16
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
    // The SIMD kernels below read keys and values through raw pointers: the
    // lengths they rely on are checked here, in release builds too.
    let hd = shape.head_dim;
    assert!(hd > 0 && group < shape.n_groups, "attend_group: group {group} of {} (head_dim {hd})", shape.n_groups);
    assert!(
        q.len().is_multiple_of(hd) && out.len() >= q.len(),
        "attend_group: q {} / out {} values",
        q.len(),
        out.len()
    );
    let needed_values = if n_ctx == 0 { 0 } else { (n_ctx - 1) * shape.n_groups * hd + (group + 1) * hd };
    let needed = needed_values.div_ceil(T::VALUES_PER_UNIT);
    assert!(
        keys.len() >= needed && values.len() >= needed,
        "attend_group: {n_ctx} positions need {needed} cached units, got {} keys / {} values",
        keys.len(),
        values.len()
    );
    let block = T::block_kernels(kernels);
    if let Some(group_kernel) = block.group {
        if group_kernel(shape, group, q, keys, values, n_ctx, out) {
            return;
        }
    }
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
        let q = &q[h0 * hd..(h0 + nh) * hd];
        for start in (0..n_ctx).step_by(TILE) {
            let len = (n_ctx - start).min(TILE);
            let off = (start * kv_stride + group * hd) / T::VALUES_PER_UNIT;
            (block.scores)(&keys[off..], kv_stride, len, q, nh, hd, &mut scores);
            for h in 0..nh {
                let s = &mut scores[h][..len];
                let tile_max = (kernels.vmath.scale_max)(s, scale);
                let new_max = max[h].max(tile_max);
                let correction = (max[h] - new_max).exp();
                max[h] = new_max;
                denom[h] *= correction;
                if correction != 1.0 {
                    out[h * hd..(h + 1) * hd].iter_mut().for_each(|v| *v *= correction);
                }
                denom[h] += (kernels.vmath.exp_sub_sum)(s, new_max);
            }
            (block.weighted_sum)(&scores, len, &values[off..], kv_stride, nh, hd, out);
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
