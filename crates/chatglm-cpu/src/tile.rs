//! Register tiles: 4 weight rows × T activation rows per call.
//!
//! Each weight row is loaded (and, for quantized formats, unpacked) once per
//! tile and reused for T tokens; each activation row is reused for 4 weight
//! rows. Decode uses T = 1 (bandwidth-bound: the tile only amortises the
//! activation loads), prefill and batched decode use T = 2.
//!
//! Layout of every tile call: `w` holds 4 consecutive rows of `n` units
//! (elements, or blocks for quantized formats), `x` holds T consecutive rows
//! of `n` units, and `out[r * T + t] = dot(w[r], x[t])`.

use crate::dot::{scalar, BlockQ4_0, BlockQ8_0};
use half::{bf16, f16};

/// Weight rows per tile.
pub const TILE_ROWS: usize = 4;

/// A tile kernel: `(w, x, n, out)`.
pub type TileFn<W, X> = fn(&[W], &[X], usize, &mut [f32]);

/// The T = 1 and T = 2 tile kernels of one weight format.
#[derive(Clone, Copy)]
pub struct TileKernels<W: 'static, X: 'static> {
    pub t1: TileFn<W, X>,
    pub t2: TileFn<W, X>,
    /// 4 rows × 3 tokens (AVX2 f16: all 16 registers, in assembly).
    pub t3: Option<TileFn<W, X>>,
    /// 4 rows × 4 tokens, where the register file allows it (AVX-512).
    pub t4: Option<TileFn<W, X>>,
}

/// A reference dot product for a (weight, activation) element pair.
pub trait ScalarDot<X>: Sized {
    fn dot(w: &[Self], x: &[X]) -> f32;
}

impl ScalarDot<f32> for f32 {
    fn dot(w: &[f32], x: &[f32]) -> f32 {
        scalar::dot_f32(w, x)
    }
}
impl ScalarDot<f32> for f16 {
    fn dot(w: &[f16], x: &[f32]) -> f32 {
        scalar::dot_f16(w, x)
    }
}
impl ScalarDot<f32> for bf16 {
    fn dot(w: &[bf16], x: &[f32]) -> f32 {
        scalar::dot_bf16(w, x)
    }
}
impl ScalarDot<BlockQ8_0> for BlockQ8_0 {
    fn dot(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
        scalar::dot_q8_0(w, x)
    }
}
impl ScalarDot<BlockQ8_0> for BlockQ4_0 {
    fn dot(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
        scalar::dot_q4_0(w, x)
    }
}

/// The reference tile: one dot product per output.
pub fn scalar_tile<W: ScalarDot<X>, X, const T: usize>(w: &[W], x: &[X], n: usize, out: &mut [f32]) {
    for r in 0..TILE_ROWS {
        for t in 0..T {
            out[r * T + t] = W::dot(&w[r * n..(r + 1) * n], &x[t * n..(t + 1) * n]);
        }
    }
}

impl<W: ScalarDot<X> + 'static, X: 'static> TileKernels<W, X> {
    pub fn scalar() -> Self {
        Self { t1: scalar_tile::<W, X, 1>, t2: scalar_tile::<W, X, 2>, t3: None, t4: None }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    //! AVX2 + FMA + F16C tiles. Only reached through [`super::TileKernels`]
    //! tables built after a run-time feature check.

    use super::{TileKernels, TILE_ROWS};
    use crate::attention::{AttentionKernels, Scores, MAX_HEADS_PER_PASS, TILE};
    use crate::dot::avx2::hsum;
    use crate::dot::{BlockQ4_0, BlockQ8_0};
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    /// `d_w · d_x` (the f16 scales at the start of a weight and an
    /// activation block) broadcast to 8 lanes.
    ///
    /// Inline assembly because of two codegen traps met here: from
    /// intrinsics LLVM narrows a 2-byte scale load to `vpinsrw` merging into
    /// an arbitrary register (it picked an accumulator, chaining every block
    /// behind the previous FMA), and it widens `mulss` to `mulps`, whose upper
    /// lanes then multiply neighbouring quant bytes read as f16 — often
    /// subnormal, triggering a microcode assist per block (3× slower).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn scale<W, X>(w: &W, x: &X) -> __m256 {
        const { assert!(std::mem::size_of::<W>() >= 8 && std::mem::size_of::<X>() >= 8) };
        let dw: __m128;
        std::arch::asm!(
            "vcvtph2ps {dw}, qword ptr [{pw}]",
            "vcvtph2ps {dx}, qword ptr [{px}]",
            "vmulss {dw}, {dw}, {dx}",
            pw = in(reg) w as *const W,
            px = in(reg) x as *const X,
            dw = out(xmm_reg) dw,
            dx = out(xmm_reg) _,
            options(pure, readonly, nostack, preserves_flags)
        );
        _mm256_broadcastss_ps(dw)
    }

    /// How a float weight format loads 8 values as f32.
    trait Load8: Copy {
        unsafe fn load8(p: *const Self) -> __m256;
        fn to_f32(self) -> f32;
    }
    impl Load8 for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        fn to_f32(self) -> f32 {
            self
        }
    }
    impl Load8 for f16 {
        #[inline(always)]
        unsafe fn load8(p: *const f16) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }
        fn to_f32(self) -> f32 {
            f16::to_f32(self)
        }
    }
    impl Load8 for bf16 {
        #[inline(always)]
        unsafe fn load8(p: *const bf16) -> __m256 {
            let raw = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16))
        }
        fn to_f32(self) -> f32 {
            bf16::to_f32(self)
        }
    }

    #[inline(always)]
    unsafe fn float_tile<W: Load8, const T: usize>(w: &[W], x: &[f32], n: usize, out: &mut [f32]) {
        assert!(w.len() >= TILE_ROWS * n && x.len() >= T * n && out.len() >= TILE_ROWS * T);
        let (pw, px) = (w.as_ptr(), x.as_ptr());
        let mut acc = [[_mm256_setzero_ps(); T]; TILE_ROWS];
        let mut k = 0;
        while k + 8 <= n {
            let mut xv = [_mm256_setzero_ps(); T];
            for (t, v) in xv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(px.add(t * n + k));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let wv = W::load8(pw.add(r * n + k));
                for t in 0..T {
                    acc_r[t] = _mm256_fmadd_ps(wv, xv[t], acc_r[t]);
                }
            }
            k += 8;
        }
        for r in 0..TILE_ROWS {
            for t in 0..T {
                let mut s = hsum(acc[r][t]);
                for j in k..n {
                    s += w[r * n + j].to_f32() * x[t * n + j];
                }
                out[r * T + t] = s;
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn float_t<W: Load8, const T: usize>(w: &[W], x: &[f32], n: usize, out: &mut [f32]) {
        float_tile::<W, T>(w, x, n, out)
    }

    /// The T = 1 and T = 2 tiles of one float weight format.
    fn float_tiles<W: Load8>() -> TileKernels<W, f32> {
        TileKernels {
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            t1: |w, x, n, o| unsafe { float_t::<W, 1>(w, x, n, o) },
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            t2: |w, x, n, o| unsafe { float_t::<W, 2>(w, x, n, o) },
            t3: None,
            t4: None,
        }
    }

    /// 4 f16 rows × 3 tokens: 12 accumulators, the 3 activation vectors and
    /// one converted weight vector (reused for the 3 tokens, then the next
    /// row's) fill the 16 registers exactly, which compiled intrinsics spill;
    /// 7 loads per 12 FMAs against the 4×2 tile's 6 per 8. Each accumulator
    /// adds the same products in the same order as [`float_tile`], so the
    /// results are its bits.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_t3(w: &[f16], x: &[f32], n: usize, out: &mut [f32]) {
        assert!(w.len() >= TILE_ROWS * n && x.len() >= 3 * n && out.len() >= TILE_ROWS * 3);
        let n8 = n / 8 * 8;
        let mut acc = [[0.0f32; 8]; 12];
        if n8 > 0 {
            let (pw, px) = (w.as_ptr(), x.as_ptr());
            std::arch::asm!(
                "vxorps ymm4, ymm4, ymm4",
                "vxorps ymm5, ymm5, ymm5",
                "vxorps ymm6, ymm6, ymm6",
                "vxorps ymm7, ymm7, ymm7",
                "vxorps ymm8, ymm8, ymm8",
                "vxorps ymm9, ymm9, ymm9",
                "vxorps ymm10, ymm10, ymm10",
                "vxorps ymm11, ymm11, ymm11",
                "vxorps ymm12, ymm12, ymm12",
                "vxorps ymm13, ymm13, ymm13",
                "vxorps ymm14, ymm14, ymm14",
                "vxorps ymm15, ymm15, ymm15",
                "2:",
                "vmovups ymm0, ymmword ptr [{x0} + 4*{k}]",
                "vmovups ymm1, ymmword ptr [{x1} + 4*{k}]",
                "vmovups ymm2, ymmword ptr [{x2} + 4*{k}]",
                "vcvtph2ps ymm3, xmmword ptr [{w0} + 2*{k}]",
                "vfmadd231ps ymm4, ymm3, ymm0",
                "vfmadd231ps ymm5, ymm3, ymm1",
                "vfmadd231ps ymm6, ymm3, ymm2",
                "vcvtph2ps ymm3, xmmword ptr [{w1} + 2*{k}]",
                "vfmadd231ps ymm7, ymm3, ymm0",
                "vfmadd231ps ymm8, ymm3, ymm1",
                "vfmadd231ps ymm9, ymm3, ymm2",
                "vcvtph2ps ymm3, xmmword ptr [{w2} + 2*{k}]",
                "vfmadd231ps ymm10, ymm3, ymm0",
                "vfmadd231ps ymm11, ymm3, ymm1",
                "vfmadd231ps ymm12, ymm3, ymm2",
                "vcvtph2ps ymm3, xmmword ptr [{w3} + 2*{k}]",
                "vfmadd231ps ymm13, ymm3, ymm0",
                "vfmadd231ps ymm14, ymm3, ymm1",
                "vfmadd231ps ymm15, ymm3, ymm2",
                "add {k}, 8",
                "cmp {k}, {n8}",
                "jb 2b",
                "vmovups ymmword ptr [{acc}], ymm4",
                "vmovups ymmword ptr [{acc} + 32], ymm5",
                "vmovups ymmword ptr [{acc} + 64], ymm6",
                "vmovups ymmword ptr [{acc} + 96], ymm7",
                "vmovups ymmword ptr [{acc} + 128], ymm8",
                "vmovups ymmword ptr [{acc} + 160], ymm9",
                "vmovups ymmword ptr [{acc} + 192], ymm10",
                "vmovups ymmword ptr [{acc} + 224], ymm11",
                "vmovups ymmword ptr [{acc} + 256], ymm12",
                "vmovups ymmword ptr [{acc} + 288], ymm13",
                "vmovups ymmword ptr [{acc} + 320], ymm14",
                "vmovups ymmword ptr [{acc} + 352], ymm15",
                k = inout(reg) 0usize => _,
                n8 = in(reg) n8,
                x0 = in(reg) px,
                x1 = in(reg) px.add(n),
                x2 = in(reg) px.add(2 * n),
                w0 = in(reg) pw,
                w1 = in(reg) pw.add(n),
                w2 = in(reg) pw.add(2 * n),
                w3 = in(reg) pw.add(3 * n),
                acc = in(reg) acc.as_mut_ptr(),
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
                options(nostack)
            );
        }
        for r in 0..TILE_ROWS {
            for t in 0..3 {
                let mut s = hsum(_mm256_loadu_ps(acc[r * 3 + t].as_ptr()));
                for j in n8..n {
                    s += w[r * n + j].to_f32() * x[t * n + j];
                }
                out[r * 3 + t] = s;
            }
        }
    }

    /// q8_0 × q8_0. `maddubs` needs an unsigned operand, so the weight's sign
    /// is moved onto the activation: |w| · sign(x, w).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_t<const T: usize>(w: &[BlockQ8_0], x: &[BlockQ8_0], nb: usize, out: &mut [f32]) {
        assert!(w.len() >= TILE_ROWS * nb && x.len() >= T * nb && out.len() >= TILE_ROWS * T);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); T]; TILE_ROWS];
        for b in 0..nb {
            let mut xq = [_mm256_setzero_si256(); T];
            for (t, q) in xq.iter_mut().enumerate() {
                *q = _mm256_loadu_si256(x.get_unchecked(t * nb + b).qs.as_ptr() as *const __m256i);
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let wb = w.get_unchecked(r * nb + b);
                let wq = _mm256_loadu_si256(wb.qs.as_ptr() as *const __m256i);
                let aw = _mm256_sign_epi8(wq, wq);
                for t in 0..T {
                    let p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xq[t], wq));
                    let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                    acc_r[t] = _mm256_fmadd_ps(p, scale(wb, x.get_unchecked(t * nb + b)), acc_r[t]);
                }
            }
        }
        for r in 0..TILE_ROWS {
            for t in 0..T {
                out[r * T + t] = hsum(acc[r][t]);
            }
        }
    }

    /// q4_0 × q8_0. Nibbles stay unsigned (0..15) for `maddubs`; the −8
    /// offset is applied as `Σ q·x − Σ 8·x`, with `8·x` pair sums computed
    /// once per activation block and shared by the 4 rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_0_t<const T: usize>(w: &[BlockQ4_0], x: &[BlockQ8_0], nb: usize, out: &mut [f32]) {
        assert!(w.len() >= TILE_ROWS * nb && x.len() >= T * nb && out.len() >= TILE_ROWS * T);
        let ones = _mm256_set1_epi16(1);
        let eights = _mm256_set1_epi8(8);
        let low = _mm256_set1_epi8(0x0f);
        let mut acc = [[_mm256_setzero_ps(); T]; TILE_ROWS];
        for b in 0..nb {
            let mut xq = [_mm256_setzero_si256(); T];
            let mut x8 = [_mm256_setzero_si256(); T];
            for t in 0..T {
                xq[t] = _mm256_loadu_si256(x.get_unchecked(t * nb + b).qs.as_ptr() as *const __m256i);
                x8[t] = _mm256_maddubs_epi16(eights, xq[t]);
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let wb = w.get_unchecked(r * nb + b);
                let packed = _mm_loadu_si128(wb.qs.as_ptr() as *const __m128i);
                // Low nibbles are weights 0..16, high nibbles 16..32.
                let wu = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), low);
                for t in 0..T {
                    let p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(wu, xq[t]), x8[t]);
                    let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                    acc_r[t] = _mm256_fmadd_ps(p, scale(wb, x.get_unchecked(t * nb + b)), acc_r[t]);
                }
            }
        }
        for r in 0..TILE_ROWS {
            for t in 0..T {
                out[r * T + t] = hsum(acc[r][t]);
            }
        }
    }

    /// Attention scores over a tile of positions: 4 positions × 2 heads per
    /// inner step (8 accumulators), so each key chunk is converted once for
    /// two heads and each query chunk loaded once for four positions.
    #[inline(always)]
    unsafe fn scores<T: Load8>(
        k: &[T],
        stride: usize,
        len: usize,
        q: &[f32],
        nh: usize,
        hd: usize,
        scores: &mut Scores,
    ) {
        assert!(hd.is_multiple_of(8) && len <= TILE && nh <= MAX_HEADS_PER_PASS);
        assert!(len == 0 || k.len() >= (len - 1) * stride + hd);
        let (pk, pq) = (k.as_ptr(), q.as_ptr());
        let mut p = 0;
        while p < len {
            let np = (len - p).min(4);
            let mut h = 0;
            while h < nh {
                let nhh = (nh - h).min(2);
                let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                for d in (0..hd).step_by(8) {
                    let q0 = _mm256_loadu_ps(pq.add(h * hd + d));
                    let q1 = if nhh == 2 { _mm256_loadu_ps(pq.add((h + 1) * hd + d)) } else { _mm256_setzero_ps() };
                    for (i, acc_i) in acc.iter_mut().enumerate().take(np) {
                        let kv = T::load8(pk.add((p + i) * stride + d));
                        acc_i[0] = _mm256_fmadd_ps(kv, q0, acc_i[0]);
                        acc_i[1] = _mm256_fmadd_ps(kv, q1, acc_i[1]);
                    }
                }
                for i in 0..np {
                    scores[h][p + i] = hsum(acc[i][0]);
                    if nhh == 2 {
                        scores[h + 1][p + i] = hsum(acc[i][1]);
                    }
                }
                h += 2;
            }
            p += 4;
        }
    }

    /// `out[h] += Σ_p e[h][p]·v[p]`: 16 dimensions × 4 heads per pass (8
    /// accumulators), each value chunk converted once for four heads.
    #[inline(always)]
    unsafe fn weighted_sum<T: Load8>(
        e: &Scores,
        len: usize,
        v: &[T],
        stride: usize,
        nh: usize,
        hd: usize,
        out: &mut [f32],
    ) {
        assert!(hd.is_multiple_of(16) && out.len() >= nh * hd);
        assert!(len == 0 || v.len() >= (len - 1) * stride + hd);
        let (pv, po) = (v.as_ptr(), out.as_mut_ptr());
        let mut h = 0;
        while h < nh {
            let nhh = (nh - h).min(4);
            for d in (0..hd).step_by(16) {
                let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                #[allow(clippy::needless_range_loop)] // p indexes e's rows and v's positions
                for p in 0..len {
                    let v0 = T::load8(pv.add(p * stride + d));
                    let v1 = T::load8(pv.add(p * stride + d + 8));
                    for (i, acc_i) in acc.iter_mut().enumerate().take(nhh) {
                        let w = _mm256_set1_ps(e[h + i][p]);
                        acc_i[0] = _mm256_fmadd_ps(w, v0, acc_i[0]);
                        acc_i[1] = _mm256_fmadd_ps(w, v1, acc_i[1]);
                    }
                }
                for (i, acc_i) in acc.iter().enumerate().take(nhh) {
                    let o = po.add((h + i) * hd + d);
                    _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), acc_i[0]));
                    _mm256_storeu_ps(o.add(8), _mm256_add_ps(_mm256_loadu_ps(o.add(8)), acc_i[1]));
                }
            }
            h += 4;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores_avx2<T: Load8>(
        k: &[T],
        stride: usize,
        len: usize,
        q: &[f32],
        nh: usize,
        hd: usize,
        s: &mut Scores,
    ) {
        scores::<T>(k, stride, len, q, nh, hd, s)
    }
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn wsum_avx2<T: Load8>(
        e: &Scores,
        len: usize,
        v: &[T],
        stride: usize,
        nh: usize,
        hd: usize,
        out: &mut [f32],
    ) {
        weighted_sum::<T>(e, len, v, stride, nh, hd, out)
    }

    /// AVX2 attention kernels for a float cache (f32 or f16); the scalar ones
    /// when the head size is not a multiple of 16.
    fn float_attention<T: Load8 + crate::attention::KvElem + crate::attention::ToF32>() -> AttentionKernels<T> {
        AttentionKernels {
            group: None,
            scores: |k, st, len, q, nh, hd, s| {
                if hd % 16 == 0 {
                    // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
                    unsafe { scores_avx2::<T>(k, st, len, q, nh, hd, s) }
                } else {
                    (AttentionKernels::<T>::scalar().scores)(k, st, len, q, nh, hd, s)
                }
            },
            weighted_sum: |e, len, v, st, nh, hd, o| {
                if hd % 16 == 0 {
                    // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
                    unsafe { wsum_avx2::<T>(e, len, v, st, nh, hd, o) }
                } else {
                    (AttentionKernels::<T>::scalar().weighted_sum)(e, len, v, st, nh, hd, o)
                }
            },
        }
    }

    pub fn attention_f32() -> AttentionKernels<f32> {
        float_attention::<f32>()
    }

    pub fn attention_f16() -> AttentionKernels<f16> {
        float_attention::<f16>()
    }

    /// 8 signed bytes at `p` as f32.
    #[inline(always)]
    unsafe fn i8x8(p: *const i8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }

    /// Attention scores against a q8_0 key cache: per block, the int8 keys
    /// are widened once and multiplied with two heads' queries, then the
    /// block's scale is applied to the partial sums.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores_q8(
        k: &[BlockQ8_0],
        stride: usize,
        len: usize,
        q: &[f32],
        nh: usize,
        hd: usize,
        scores: &mut Scores,
    ) {
        let (stride_b, nb) = (stride / 32, hd / 32);
        assert!(len == 0 || k.len() >= (len - 1) * stride_b + nb);
        let pq = q.as_ptr();
        for p in 0..len {
            let kp = &k[p * stride_b..p * stride_b + nb];
            let mut h = 0;
            while h < nh {
                let two = nh - h >= 2;
                let mut acc = [_mm256_setzero_ps(); 2];
                for (b, block) in kp.iter().enumerate() {
                    let mut part = [_mm256_setzero_ps(); 2];
                    for c in 0..4 {
                        let kv = i8x8(block.qs.as_ptr().add(8 * c));
                        let off = 32 * b + 8 * c;
                        part[0] = _mm256_fmadd_ps(kv, _mm256_loadu_ps(pq.add(h * hd + off)), part[0]);
                        if two {
                            part[1] = _mm256_fmadd_ps(kv, _mm256_loadu_ps(pq.add((h + 1) * hd + off)), part[1]);
                        }
                    }
                    let d = _mm256_set1_ps(block.d.to_f32());
                    acc[0] = _mm256_fmadd_ps(part[0], d, acc[0]);
                    acc[1] = _mm256_fmadd_ps(part[1], d, acc[1]);
                }
                scores[h][p] = hsum(acc[0]);
                if two {
                    scores[h + 1][p] = hsum(acc[1]);
                }
                h += 2;
            }
        }
    }

    /// `out[h] += Σ_p e[h][p]·v[p]` for a q8_0 value cache: 16 dimensions
    /// (half a block) × 4 heads per pass, each value chunk widened once.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn wsum_q8(e: &Scores, len: usize, v: &[BlockQ8_0], stride: usize, nh: usize, hd: usize, out: &mut [f32]) {
        let (stride_b, nb) = (stride / 32, hd / 32);
        assert!(len == 0 || v.len() >= (len - 1) * stride_b + nb);
        assert!(out.len() >= nh * hd);
        let po = out.as_mut_ptr();
        let mut h = 0;
        while h < nh {
            let nhh = (nh - h).min(4);
            for b in 0..nb {
                for half in 0..2 {
                    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                    for p in 0..len {
                        let block = &v[p * stride_b + b];
                        let v0 = i8x8(block.qs.as_ptr().add(16 * half));
                        let v1 = i8x8(block.qs.as_ptr().add(16 * half + 8));
                        let d = block.d.to_f32();
                        for (i, acc_i) in acc.iter_mut().enumerate().take(nhh) {
                            let w = _mm256_set1_ps(e[h + i][p] * d);
                            acc_i[0] = _mm256_fmadd_ps(w, v0, acc_i[0]);
                            acc_i[1] = _mm256_fmadd_ps(w, v1, acc_i[1]);
                        }
                    }
                    for (i, acc_i) in acc.iter().enumerate().take(nhh) {
                        let o = po.add((h + i) * hd + 32 * b + 16 * half);
                        _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), acc_i[0]));
                        _mm256_storeu_ps(o.add(8), _mm256_add_ps(_mm256_loadu_ps(o.add(8)), acc_i[1]));
                    }
                }
            }
            h += 4;
        }
    }

    /// AVX2 attention kernels for a q8_0 cache.
    pub fn attention_q8_0() -> AttentionKernels<BlockQ8_0> {
        AttentionKernels {
            group: None,
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            scores: |k, st, len, q, nh, hd, s| unsafe { scores_q8(k, st, len, q, nh, hd, s) },
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            weighted_sum: |e, len, v, st, nh, hd, o| unsafe { wsum_q8(e, len, v, st, nh, hd, o) },
        }
    }

    pub fn f32_tiles() -> TileKernels<f32, f32> {
        float_tiles::<f32>()
    }
    pub fn f16_tiles() -> TileKernels<f16, f32> {
        TileKernels {
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            t3: Some(|w, x, n, o| unsafe { f16_t3(w, x, n, o) }),
            ..float_tiles::<f16>()
        }
    }
    pub fn bf16_tiles() -> TileKernels<bf16, f32> {
        float_tiles::<bf16>()
    }
    pub fn q8_0_tiles() -> TileKernels<BlockQ8_0, BlockQ8_0> {
        TileKernels {
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            t1: |w, x, n, o| unsafe { q8_0_t::<1>(w, x, n, o) },
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            t2: |w, x, n, o| unsafe { q8_0_t::<2>(w, x, n, o) },
            t3: None,
            t4: None,
        }
    }
    pub fn q4_0_tiles() -> TileKernels<BlockQ4_0, BlockQ8_0> {
        TileKernels {
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            t1: |w, x, n, o| unsafe { q4_0_t::<1>(w, x, n, o) },
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            t2: |w, x, n, o| unsafe { q4_0_t::<2>(w, x, n, o) },
            t3: None,
            t4: None,
        }
    }
}
