//! AVX2 + FMA + F16C kernels (x86-64). Only reached through [`kernels`],
//! which the caller selects after checking the features at run time.

use super::{BlockQ4_0, BlockQ8_0};
use crate::features::Kernels;
use crate::tile::avx2::scale;
use half::{bf16, f16};
use std::arch::x86_64::*;

/// The AVX2 kernel table. Callers must have checked avx2, fma and f16c.
pub(crate) fn kernels() -> Kernels {
    Kernels {
        name: "avx2",
        // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
        dot_f32: |w, x| unsafe { dot_f32(w, x) },
        // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
        dot_f16: |w, x| unsafe { dot_f16(w, x) },
        // SAFETY: as above.
        dot_f16_h: Some(if f16_prefetch() {
            |w, x| unsafe { dot_f16_h::<true>(w, x) }
        } else {
            |w, x| unsafe { dot_f16_h::<false>(w, x) }
        }),
        // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
        dot_bf16: |w, x| unsafe { dot_bf16(w, x) },
        // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
        dot_q8_0: |w, x| unsafe { dot_q8_0(w, x) },
        // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
        dot_q4_0: |w, x| unsafe { dot_q4_0(w, x) },
        // 4.5-6-bit variants: the scalar loops auto-vectorise well enough for
        // formats chosen for quality rather than speed.
        dot_q4_1: super::scalar::dot_q4_1,
        dot_q5_0: super::scalar::dot_q5_0,
        dot_q5_1: super::scalar::dot_q5_1,
        // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
        quantize_row_q8_0: |x, out| unsafe { quantize_row_q8_0(x, out) },
        // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
        axpy_f32: |a, v, acc| unsafe { axpy_f32(a, v, acc) },
        // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
        axpy_f16: |a, v, acc| unsafe { axpy_f16(a, v, acc) },
        tiles_f32: crate::tile::avx2::f32_tiles(),
        tiles_f16: crate::tile::avx2::f16_tiles(),
        tiles_bf16: crate::tile::avx2::bf16_tiles(),
        tiles_q8_0: crate::tile::avx2::q8_0_tiles(),
        tiles_q4_0: crate::tile::avx2::q4_0_tiles(),
        packed_q4_0: crate::packed::avx2::kernels(),
        packed_q8_0: crate::packed_q8::avx2::kernels(),
        packed_q8_0_signed: crate::packed_q8::avx2::signed_kernels(),
        q8_0_signed: true,
        attention_f32: crate::tile::avx2::attention_f32(),
        attention_f16: crate::tile::avx2::attention_f16(),
        attention_q8_0: crate::tile::avx2::attention_q8_0(),
        vmath: crate::vmath::avx2::vmath(),
    }
}

/// Sum of the 8 lanes (shared by every AVX2 kernel).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (pw, px) = (w.as_ptr(), x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        crate::prefetch::ahead(pw.add(i));
        crate::prefetch::ahead(pw.add(i + 16));
        for (k, a) in acc.iter_mut().enumerate() {
            let o = i + 8 * k;
            *a = _mm256_fmadd_ps(_mm256_loadu_ps(pw.add(o)), _mm256_loadu_ps(px.add(o)), *a);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pw.add(i)), _mm256_loadu_ps(px.add(i)), acc[0]);
        i += 8;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut sum = hsum(s);
    while i < n {
        sum += w[i] * x[i];
        i += 1;
    }
    sum
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (pw, px) = (w.as_ptr() as *const __m128i, x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        crate::prefetch::ahead(pw.add(i / 8));
        for (k, a) in acc.iter_mut().enumerate() {
            let o = i + 8 * k;
            let wv = _mm256_cvtph_ps(_mm_loadu_si128(pw.add(o / 8)));
            *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(px.add(o)), *a);
        }
        i += 32;
    }
    while i + 8 <= n {
        let wv = _mm256_cvtph_ps(_mm_loadu_si128(pw.add(i / 8)));
        acc[0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(px.add(i)), acc[0]);
        i += 8;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut sum = hsum(s);
    while i < n {
        sum += w[i].to_f32() * x[i];
        i += 1;
    }
    sum
}

/// Whether the one-token f16 product prefetches its weight stream
/// (`CHATGLM_CPU_F16_PREFETCH=0` turns it off, for measurements).
fn f16_prefetch() -> bool {
    std::env::var("CHATGLM_CPU_F16_PREFETCH").map_or(true, |v| v != "0")
}

/// f16 weights against f16 activations (half the activation bytes of
/// `dot_f16`: the mat-vec's x stays in L1 beside the weight stream).
/// PREFETCH: the weight stream's software prefetch (`crate::prefetch`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_h<const PREFETCH: bool>(w: &[f16], x: &[f16]) -> f32 {
    let n = w.len().min(x.len());
    let (pw, px) = (w.as_ptr() as *const __m128i, x.as_ptr() as *const __m128i);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        if PREFETCH {
            crate::prefetch::ahead(pw.add(i / 8));
        }
        for (k, a) in acc.iter_mut().enumerate() {
            let o = (i + 8 * k) / 8;
            let wv = _mm256_cvtph_ps(_mm_loadu_si128(pw.add(o)));
            let xv = _mm256_cvtph_ps(_mm_loadu_si128(px.add(o)));
            *a = _mm256_fmadd_ps(wv, xv, *a);
        }
        i += 32;
    }
    while i + 8 <= n {
        let wv = _mm256_cvtph_ps(_mm_loadu_si128(pw.add(i / 8)));
        let xv = _mm256_cvtph_ps(_mm_loadu_si128(px.add(i / 8)));
        acc[0] = _mm256_fmadd_ps(wv, xv, acc[0]);
        i += 8;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut sum = hsum(s);
    while i < n {
        sum += w[i].to_f32() * x[i].to_f32();
        i += 1;
    }
    sum
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load_bf16x8(p: *const bf16) -> __m256 {
    let raw = _mm_loadu_si128(p as *const __m128i);
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16))
}

#[target_feature(enable = "avx2,fma")]
unsafe fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (pw, px) = (w.as_ptr(), x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut i = 0;
    while i + 16 <= n {
        crate::prefetch::ahead(pw.add(i));
        acc[0] = _mm256_fmadd_ps(load_bf16x8(pw.add(i)), _mm256_loadu_ps(px.add(i)), acc[0]);
        acc[1] = _mm256_fmadd_ps(load_bf16x8(pw.add(i + 8)), _mm256_loadu_ps(px.add(i + 8)), acc[1]);
        i += 16;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(load_bf16x8(pw.add(i)), _mm256_loadu_ps(px.add(i)), acc[0]);
        i += 8;
    }
    let mut sum = hsum(_mm256_add_ps(acc[0], acc[1]));
    while i < n {
        sum += w[i].to_f32() * x[i];
        i += 1;
    }
    sum
}

// The quantized dots stream one weight row front to back (the pattern the
// hardware prefetcher follows best; interleaving several rows measured slower
// for mat-vec) and keep two accumulators so consecutive blocks do not wait on
// each other's FMA.

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 2];
    let n = w.len().min(x.len());
    for i in 0..n {
        let (a, b) = (w.get_unchecked(i), x.get_unchecked(i));
        let qa = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
        let qb = _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i);
        let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(qa, qa), _mm256_sign_epi8(qb, qa));
        let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
        acc[i & 1] = _mm256_fmadd_ps(p, scale(a, b), acc[i & 1]);
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    let ones = _mm256_set1_epi16(1);
    let low = _mm256_set1_epi8(0x0f);
    let eights = _mm256_set1_epi8(8);
    let mut acc = [_mm256_setzero_ps(); 2];
    let n = w.len().min(x.len());
    for i in 0..n {
        let (a, b) = (w.get_unchecked(i), x.get_unchecked(i));
        let packed = _mm_loadu_si128(a.qs.as_ptr() as *const __m128i);
        // Low nibbles are weights 0..16, high nibbles 16..32; kept unsigned for
        // maddubs, with the −8 offset subtracted as Σ 8·x.
        let wu = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), low);
        let qb = _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i);
        let p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(wu, qb), _mm256_maddubs_epi16(eights, qb));
        let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
        acc[i & 1] = _mm256_fmadd_ps(p, scale(a, b), acc[i & 1]);
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_row_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    let sign_mask = _mm256_set1_ps(-0.0);
    for (chunk, block) in x.chunks_exact(32).zip(out.iter_mut()) {
        let p = chunk.as_ptr();
        let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
        let mut amax = _mm256_andnot_ps(sign_mask, v[0]);
        for vi in &v[1..] {
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_mask, *vi));
        }
        let m128 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        let m128 = _mm_max_ps(m128, _mm_movehl_ps(m128, m128));
        let m128 = _mm_max_ss(m128, _mm_movehdup_ps(m128));
        let max = _mm_cvtss_f32(m128);
        let d = max / 127.0;
        let id = _mm256_set1_ps(if max != 0.0 { 127.0 / max } else { 0.0 });
        let mut ints = [_mm256_setzero_si256(); 4];
        for (i, vi) in v.iter().enumerate() {
            let r = _mm256_round_ps(_mm256_mul_ps(*vi, id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            ints[i] = _mm256_cvtps_epi32(r);
        }
        // Pack i32 → i16 → i8; packs interleave 128-bit lanes, so permute back.
        let i16a = _mm256_packs_epi32(ints[0], ints[1]);
        let i16b = _mm256_packs_epi32(ints[2], ints[3]);
        let i8s = _mm256_packs_epi16(i16a, i16b);
        let ordered = _mm256_permutevar8x32_epi32(i8s, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(block.qs.as_mut_ptr() as *mut __m256i, ordered);
        block.d = f16::from_f32(d);
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_f32(a: f32, v: &[f32], acc: &mut [f32]) {
    let n = v.len().min(acc.len());
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        let p = acc.as_mut_ptr().add(i);
        _mm256_storeu_ps(p, _mm256_fmadd_ps(av, _mm256_loadu_ps(v.as_ptr().add(i)), _mm256_loadu_ps(p)));
        i += 8;
    }
    for j in i..n {
        acc[j] += a * v[j];
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_f16(a: f32, v: &[f16], acc: &mut [f32]) {
    let n = v.len().min(acc.len());
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        let p = acc.as_mut_ptr().add(i);
        let x = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i) as *const __m128i));
        _mm256_storeu_ps(p, _mm256_fmadd_ps(av, x, _mm256_loadu_ps(p)));
        i += 8;
    }
    for j in i..n {
        acc[j] += a * v[j].to_f32();
    }
}
