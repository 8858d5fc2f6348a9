//! AVX-512 register tiles for prefill and batched decode: 4 weight rows × 4
//! tokens (16 accumulators; AVX-512 has 32 vector registers). Same contract
//! as [`crate::tile`]: `w` holds 4 rows of `n` units, `x` 4 rows of `n`
//! units, `out[r * 4 + t] = dot(w[r], x[t])`. Only reached through tables
//! built after a run-time feature check.

use crate::dot::BlockQ8_0;
use crate::tile::TILE_ROWS;
use half::{bf16, f16};
use std::arch::x86_64::*;

const T: usize = 4;

/// How a float weight format loads 16 values as f32.
pub(crate) trait Load16: Copy {
    unsafe fn load16(p: *const Self) -> __m512;
    fn to_f32(self) -> f32;
}
impl Load16 for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    fn to_f32(self) -> f32 {
        self
    }
}
impl Load16 for f16 {
    #[inline(always)]
    unsafe fn load16(p: *const f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}
impl Load16 for bf16 {
    #[inline(always)]
    unsafe fn load16(p: *const bf16) -> __m512 {
        let raw = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16))
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

#[inline(always)]
unsafe fn float_tile<W: Load16>(w: &[W], x: &[f32], n: usize, out: &mut [f32]) {
    assert!(w.len() >= TILE_ROWS * n && x.len() >= T * n && out.len() >= TILE_ROWS * T);
    let (pw, px) = (w.as_ptr(), x.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); T]; TILE_ROWS];
    let mut k = 0;
    while k + 16 <= n {
        let mut xv = [_mm512_setzero_ps(); T];
        for (t, v) in xv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(px.add(t * n + k));
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let wv = W::load16(pw.add(r * n + k));
            for t in 0..T {
                acc_r[t] = _mm512_fmadd_ps(wv, xv[t], acc_r[t]);
            }
        }
        k += 16;
    }
    for r in 0..TILE_ROWS {
        for t in 0..T {
            let mut s = _mm512_reduce_add_ps(acc[r][t]);
            for j in k..n {
                s += w[r * n + j].to_f32() * x[t * n + j];
            }
            out[r * T + t] = s;
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
unsafe fn f32_t4(w: &[f32], x: &[f32], n: usize, out: &mut [f32]) {
    float_tile::<f32>(w, x, n, out)
}
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
unsafe fn f16_t4(w: &[f16], x: &[f32], n: usize, out: &mut [f32]) {
    float_tile::<f16>(w, x, n, out)
}
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
unsafe fn bf16_t4(w: &[bf16], x: &[f32], n: usize, out: &mut [f32]) {
    float_tile::<bf16>(w, x, n, out)
}

/// The f16 scale at the start of a block, broadcast to 8 lanes (see
/// `tile::avx2::scale` for why this is inline assembly).
#[inline]
#[target_feature(enable = "avx512f,avx512vl,f16c")]
unsafe fn block_scale8(block: &BlockQ8_0) -> __m256 {
    let d: __m128;
    std::arch::asm!(
        "vcvtph2ps {d}, qword ptr [{p}]",
        p = in(reg) block as *const BlockQ8_0,
        d = out(xmm_reg) d,
        options(pure, readonly, nostack, preserves_flags)
    );
    _mm256_broadcastss_ps(d)
}

/// q8_0 × q8_0 with VNNI: weights made unsigned by flipping their sign bit
/// (`w + 128`), so `vpdpbusd` gives `Σ (w+128)·x` exactly in i32; the
/// `128·Σx` term is computed once per activation block and shared by the 4 rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
unsafe fn q8_0_t4(w: &[BlockQ8_0], x: &[BlockQ8_0], nb: usize, out: &mut [f32]) {
    assert!(w.len() >= TILE_ROWS * nb && x.len() >= T * nb && out.len() >= TILE_ROWS * T);
    let flip = _mm256_set1_epi8(-128);
    let bias = _mm256_set1_epi8(-128); // as u8: 128
    let mut acc = [[_mm256_setzero_ps(); T]; TILE_ROWS];
    for b in 0..nb {
        let mut xq = [_mm256_setzero_si256(); T];
        let mut xc = [_mm256_setzero_si256(); T];
        let mut dx = [_mm256_setzero_ps(); T];
        for t in 0..T {
            let xb = x.get_unchecked(t * nb + b);
            xq[t] = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            xc[t] = _mm256_dpbusd_epi32(_mm256_setzero_si256(), bias, xq[t]);
            dx[t] = block_scale8(xb);
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let wb = w.get_unchecked(r * nb + b);
            let wu = _mm256_xor_si256(_mm256_loadu_si256(wb.qs.as_ptr() as *const __m256i), flip);
            let dw = block_scale8(wb);
            for t in 0..T {
                let s = _mm256_sub_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), wu, xq[t]), xc[t]);
                let p = _mm256_mul_ps(_mm256_cvtepi32_ps(s), dx[t]);
                acc_r[t] = _mm256_fmadd_ps(p, dw, acc_r[t]);
            }
        }
    }
    for r in 0..TILE_ROWS {
        for t in 0..T {
            let v = acc[r][t];
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            out[r * T + t] = _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
        }
    }
}

pub(crate) fn f32_t4_fn() -> crate::tile::TileFn<f32, f32> {
    // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
    |w, x, n, o| unsafe { f32_t4(w, x, n, o) }
}
pub(crate) fn f16_t4_fn() -> crate::tile::TileFn<f16, f32> {
    // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
    |w, x, n, o| unsafe { f16_t4(w, x, n, o) }
}
pub(crate) fn bf16_t4_fn() -> crate::tile::TileFn<bf16, f32> {
    // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
    |w, x, n, o| unsafe { bf16_t4(w, x, n, o) }
}
pub(crate) fn q8_0_t4_fn() -> crate::tile::TileFn<BlockQ8_0, BlockQ8_0> {
    // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
    |w, x, n, o| unsafe { q8_0_t4(w, x, n, o) }
}

/// Mat-vec dot for f16 weights: 64 weights per iteration in four
/// independent 16-lane chains (decode streams the row; fewer, wider
/// conversions than AVX2 keep one core closer to its share of bandwidth).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
unsafe fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (pw, px) = (w.as_ptr(), x.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        crate::prefetch::ahead(pw.add(i));
        crate::prefetch::ahead(pw.add(i + 32));
        for (k, a) in acc.iter_mut().enumerate() {
            let o = i + 16 * k;
            *a = _mm512_fmadd_ps(f16::load16(pw.add(o)), _mm512_loadu_ps(px.add(o)), *a);
        }
        i += 64;
    }
    while i + 16 <= n {
        acc[0] = _mm512_fmadd_ps(f16::load16(pw.add(i)), _mm512_loadu_ps(px.add(i)), acc[0]);
        i += 16;
    }
    let mut s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
    while i < n {
        s += w[i].to_f32() * x[i];
        i += 1;
    }
    s
}

pub(crate) fn dot_f16_fn() -> crate::features::DotF16 {
    // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
    |w, x| unsafe { dot_f16(w, x) }
}
