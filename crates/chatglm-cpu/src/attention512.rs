//! AVX-512 multi-query attention with the query heads in the vector lanes.
//!
//! ChatGLM2 has 16 query heads per KV group: one 512-bit register holds one
//! value for each of them. Scores of a position are `Σ_d Qᵀ[d] · k[d]` (a
//! broadcast key value times the 16 heads' query values) and the output is
//! `Σ_p e[p] · v[p][d]` (the 16 heads' weights times a broadcast value), so
//! every key and value element is read and converted once for all the heads
//! and no horizontal sums are needed; the online softmax runs on 16 heads at
//! once too. Only reached through tables built after a run-time feature check.

use crate::attention::{AttentionShape, KvElem};
use crate::dot::BlockQ8_0;
use crate::tile512::Load16;
use crate::vmath::avx512::exp16;
use half::f16;
use std::arch::x86_64::*;

/// Positions converted to f32 per tile (keys and values: 2 × 32 × 128 × 4 B
/// = 32 KiB at head size 128, within L1).
const PT: usize = 32;
/// Largest head size handled (the stack buffers are sized for it).
const MAX_HD: usize = 256;
const LANES: usize = 16;
/// How many positions ahead the key and value rows are prefetched.
const PREFETCH_POSITIONS: usize = 2 * PT;

/// A cache element type whose rows the kernel converts to f32.
trait KvRow: KvElem {
    /// Writes values `first..first + n` of `src` (counted in values, `n` a
    /// multiple of 16 and of the unit) as f32 to `dst`.
    unsafe fn row_to_f32(src: *const Self, first: usize, n: usize, dst: *mut f32);
}

impl<T: Load16 + KvElem> KvRow for T {
    #[inline(always)]
    unsafe fn row_to_f32(src: *const T, first: usize, n: usize, dst: *mut f32) {
        for d in (0..n).step_by(LANES) {
            _mm512_store_ps(dst.add(d), T::load16(src.add(first + d)));
        }
    }
}

impl KvRow for BlockQ8_0 {
    #[inline(always)]
    unsafe fn row_to_f32(src: *const BlockQ8_0, first: usize, n: usize, dst: *mut f32) {
        for b in 0..n / 32 {
            let block = &*src.add(first / 32 + b);
            let d = _mm512_set1_ps(block.d.to_f32());
            let q = _mm256_loadu_si256(block.qs.as_ptr() as *const __m256i);
            let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)));
            let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(q)));
            _mm512_store_ps(dst.add(32 * b), _mm512_mul_ps(lo, d));
            _mm512_store_ps(dst.add(32 * b + 16), _mm512_mul_ps(hi, d));
        }
    }
}

/// The group kernel for a cache of `T`; declines (returns false) when the
/// group has more than 16 heads or the head size does not fit the lanes and
/// the element's unit.
fn group_fn<T: KvRow>() -> crate::attention::GroupFn<T> {
    |shape, group, q, keys, values, n_ctx, out| {
        let hd = shape.head_dim;
        let heads = q.len() / hd.max(1);
        let unit = LANES.max(T::VALUES_PER_UNIT);
        if n_ctx == 0 || hd == 0 || !hd.is_multiple_of(unit) || hd > MAX_HD || heads > LANES || heads == 0 {
            return false;
        }
        let last = ((n_ctx - 1) * shape.n_groups * hd + group * hd + hd) / T::VALUES_PER_UNIT;
        assert!(
            keys.len() >= last && values.len() >= last && out.len() >= heads * hd,
            "invariant: attention buffers hold n_ctx positions and every head"
        );
        // SAFETY: the table holding this kernel is built only after the
        // AVX-512 feature check; shapes were checked above.
        unsafe { group_attention::<T>(shape, group, q, keys, values, n_ctx, out) };
        true
    }
}

#[repr(C, align(64))]
struct Rows([[f32; MAX_HD]; PT]);

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
unsafe fn group_attention<T: KvRow>(
    shape: AttentionShape,
    group: usize,
    q: &[f32],
    keys: &[T],
    values: &[T],
    n_ctx: usize,
    out: &mut [f32],
) {
    let hd = shape.head_dim;
    let heads = q.len() / hd;
    let stride = shape.n_groups * hd;
    let base = group * hd;
    // Qᵀ with the softmax scale folded in; lanes ≥ heads stay 0.
    let scale = 1.0 / (hd as f32).sqrt();
    let mut qt = [[0.0f32; LANES]; MAX_HD];
    for h in 0..heads {
        for d in 0..hd {
            qt[d][h] = q[h * hd + d] * scale;
        }
    }
    let mut acc = [_mm512_setzero_ps(); MAX_HD];
    let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut l = _mm512_setzero_ps();
    let mut kb = Rows([[0.0; MAX_HD]; PT]);
    let mut vb = Rows([[0.0; MAX_HD]; PT]);
    let mut s = [_mm512_setzero_ps(); PT];
    let (pk, pv) = (keys.as_ptr(), values.as_ptr());
    for start in (0..n_ctx).step_by(PT) {
        let len = (n_ctx - start).min(PT);
        for p in 0..len {
            let row = (start + p) * stride + base;
            // The cache is streamed once per token with a stride (the other
            // groups' slices sit in between), which the hardware prefetchers
            // follow poorly: ask for the rows a tile ahead.
            let ahead = (row + PREFETCH_POSITIONS * stride) / T::VALUES_PER_UNIT;
            let row_bytes = hd / T::VALUES_PER_UNIT * std::mem::size_of::<T>();
            for line in (0..row_bytes).step_by(64) {
                _mm_prefetch(pk.wrapping_add(ahead).cast::<i8>().wrapping_add(line), _MM_HINT_T0);
                _mm_prefetch(pv.wrapping_add(ahead).cast::<i8>().wrapping_add(line), _MM_HINT_T0);
            }
            T::row_to_f32(pk, row, hd, kb.0[p].as_mut_ptr());
            T::row_to_f32(pv, row, hd, vb.0[p].as_mut_ptr());
        }
        // Scores, 4 positions per pass so each Qᵀ row is loaded once for 4.
        for p0 in (0..len).step_by(4) {
            let mut a = [_mm512_setzero_ps(); 4];
            for (d, qd) in qt.iter().enumerate().take(hd) {
                let qd = _mm512_loadu_ps(qd.as_ptr());
                for (i, ai) in a.iter_mut().enumerate() {
                    *ai = _mm512_fmadd_ps(qd, _mm512_set1_ps(kb.0[p0 + i][d]), *ai);
                }
            }
            for (i, ai) in a.iter().enumerate() {
                if p0 + i < len {
                    s[p0 + i] = *ai;
                }
            }
        }
        // Online softmax for the 16 heads at once.
        let tile_max = s[1..len].iter().fold(s[0], |mx, v| _mm512_max_ps(mx, *v));
        let new_m = _mm512_max_ps(m, tile_max);
        let correction = exp16(_mm512_sub_ps(m, new_m));
        m = new_m;
        l = _mm512_mul_ps(l, correction);
        for a in acc.iter_mut().take(hd) {
            *a = _mm512_mul_ps(*a, correction);
        }
        for e in s.iter_mut().take(len) {
            *e = exp16(_mm512_sub_ps(*e, new_m));
            l = _mm512_add_ps(l, *e);
        }
        // Weighted sum of values, 8 dimensions per pass in registers.
        for d0 in (0..hd).step_by(8) {
            let mut a: [__m512; 8] = std::array::from_fn(|j| acc[d0 + j]);
            for (p, e) in s.iter().enumerate().take(len) {
                let vrow = &vb.0[p];
                for (j, aj) in a.iter_mut().enumerate() {
                    *aj = _mm512_fmadd_ps(*e, _mm512_set1_ps(vrow[d0 + j]), *aj);
                }
            }
            acc[d0..d0 + 8].copy_from_slice(&a);
        }
    }
    let inv = _mm512_div_ps(_mm512_set1_ps(1.0), l);
    let mut lanes = [0.0f32; LANES];
    for (d, a) in acc.iter().enumerate().take(hd) {
        _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_mul_ps(*a, inv));
        for (h, &v) in lanes.iter().enumerate().take(heads) {
            out[h * hd + d] = v;
        }
    }
}

/// The AVX-512 group kernels for each cache type.
pub(crate) fn f16_group() -> crate::attention::GroupFn<f16> {
    group_fn::<f16>()
}
pub(crate) fn f32_group() -> crate::attention::GroupFn<f32> {
    group_fn::<f32>()
}
pub(crate) fn q8_0_group() -> crate::attention::GroupFn<BlockQ8_0> {
    group_fn::<BlockQ8_0>()
}
