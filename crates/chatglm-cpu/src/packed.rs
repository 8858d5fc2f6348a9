//! q4_0 weights repacked for speed: each row's f16 scales in one array and
//! its nibbles in another, so 32 consecutive bytes hold two whole blocks.
//!
//! With the nibbles of blocks `2p` and `2p+1` side by side, one 32-byte load
//! masked with 0x0F yields weights 0..16 of both blocks and the shifted copy
//! yields weights 16..32 of both; activations are rearranged once per call
//! into the matching [`Q8Pair`] layout. A pair of blocks then costs one
//! multiply-add chain instead of two, which is what decode (compute-bound
//! at q4_0 on AVX2) needs. Bits per weight are unchanged (4.5).

use crate::dot::{BlockQ4_0, BlockQ8_0};
use half::f16;

/// A q4_0 matrix in the split layout. Rows are padded to an even number of
/// blocks with zero-scale, zero-weight blocks.
#[derive(Clone, Debug)]
pub struct PackedQ4_0 {
    pub rows: usize,
    /// Blocks per row, padded to even.
    pub blocks_per_row: usize,
    /// `(rows, blocks_per_row)` scales, plus 4 zero entries so kernels may
    /// load 4 scales at the last pair.
    pub scales: Vec<f16>,
    /// `(rows, blocks_per_row)` × 16 bytes, ggml nibble order per block
    /// (byte j: weight j in the low nibble, weight j+16 in the high one).
    pub qs: Vec<[u8; 16]>,
}

/// Blocks per row once padded to an even count.
pub fn padded_blocks(cols: usize) -> usize {
    (cols / 32).div_ceil(2) * 2
}

impl PackedQ4_0 {
    /// Repacks ggml blocks, `cols / 32` per row.
    pub fn from_blocks(blocks: &[BlockQ4_0], rows: usize, cols: usize) -> Self {
        let nb = cols / 32;
        let nbp = padded_blocks(cols);
        let mut scales = Vec::with_capacity(rows * nbp + 4);
        let mut qs = Vec::with_capacity(rows * nbp);
        for row in blocks.chunks_exact(nb).take(rows) {
            for b in row {
                scales.push(b.d);
                qs.push(b.qs);
            }
            for _ in nb..nbp {
                scales.push(f16::ZERO);
                qs.push([0x88; 16]); // q = 8 → weight 0
            }
        }
        scales.extend([f16::ZERO; 4]);
        Self { rows, blocks_per_row: nbp, scales, qs }
    }

    /// Bytes of weights (what a mat-vec streams).
    pub fn size_bytes(&self) -> usize {
        self.scales.len() * 2 + self.qs.len() * 16
    }

    /// Row `r` as f32 (`out.len()` = cols).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let nbp = self.blocks_per_row;
        for (b, o) in out.chunks_exact_mut(32).enumerate() {
            let block = BlockQ4_0 { d: self.scales[r * nbp + b], qs: self.qs[r * nbp + b] };
            chatglm_weights::quant::QuantBlock::dequantize(&block, o);
        }
    }

    /// Scales and nibbles of rows `r0..r0 + n`.
    pub fn rows_data(&self, r0: usize, n: usize) -> (&[f16], &[[u8; 16]]) {
        let nbp = self.blocks_per_row;
        // Scales keep their 4-entry tail so the last pair's 4-scale load stays in bounds.
        (&self.scales[r0 * nbp..(r0 + n) * nbp + 4], &self.qs[r0 * nbp..(r0 + n) * nbp])
    }
}

/// Two q8_0 activation blocks rearranged to match [`PackedQ4_0`]'s pairs.
#[repr(C, align(32))]
#[derive(Clone, Copy, Debug)]
pub struct Q8Pair {
    /// Values 0..16 of block `2p`, then values 0..16 of block `2p+1`.
    pub lo: [i8; 32],
    /// Values 16..32 of block `2p`, then of block `2p+1`.
    pub hi: [i8; 32],
    /// `8·(lo[2i] + lo[2i+1] + hi[2i] + hi[2i+1])`: the q4_0 offset (−8)
    /// applied once per activation instead of once per weight row.
    pub x8: [i16; 16],
    /// `d_{2p}` in lanes 0..4, `d_{2p+1}` in lanes 4..8.
    pub d: [f32; 8],
}

impl Default for Q8Pair {
    fn default() -> Self {
        Self { lo: [0; 32], hi: [0; 32], x8: [0; 16], d: [0.0; 8] }
    }
}

/// Rearranges one activation row's q8_0 blocks into pairs (`out.len()` =
/// padded blocks / 2; a missing odd block is zero).
pub fn pair_q8_blocks(x: &[BlockQ8_0], out: &mut [Q8Pair]) {
    for (p, pair) in out.iter_mut().enumerate() {
        let zero = BlockQ8_0 { d: f16::ZERO, qs: [0; 32] };
        let a = x.get(2 * p).unwrap_or(&zero);
        let b = x.get(2 * p + 1).unwrap_or(&zero);
        pair.lo[..16].copy_from_slice(&a.qs[..16]);
        pair.lo[16..].copy_from_slice(&b.qs[..16]);
        pair.hi[..16].copy_from_slice(&a.qs[16..]);
        pair.hi[16..].copy_from_slice(&b.qs[16..]);
        for i in 0..16 {
            let s =
                pair.lo[2 * i] as i16 + pair.lo[2 * i + 1] as i16 + pair.hi[2 * i] as i16 + pair.hi[2 * i + 1] as i16;
            pair.x8[i] = 8 * s;
        }
        let (da, db) = (a.d.to_f32(), b.d.to_f32());
        pair.d = [da, da, da, da, db, db, db, db];
    }
}

/// Reference dot of one packed row (`scales`, `qs`: one row's blocks) with paired activations.
pub fn dot_packed_scalar(scales: &[f16], qs: &[[u8; 16]], x: &[Q8Pair]) -> f32 {
    let mut sum = 0.0f32;
    for (p, pair) in x.iter().enumerate() {
        for half in 0..2 {
            let b = 2 * p + half;
            let mut isum = 0i32;
            for (j, &byte) in qs[b].iter().enumerate() {
                let lo = (byte & 0x0f) as i32 - 8;
                let hi = (byte >> 4) as i32 - 8;
                isum += lo * pair.lo[half * 16 + j] as i32 + hi * pair.hi[half * 16 + j] as i32;
            }
            sum += isum as f32 * scales[b].to_f32() * pair.d[half * 4];
        }
    }
    sum
}

/// A packed-q4_0 tile kernel: `(scales, qs, x, pairs_per_row, out)` over 4
/// rows and T tokens (`x`: T rows of `pairs_per_row` pairs), `out[r*T + t]`.
pub type PackedTileFn = fn(&[f16], &[[u8; 16]], &[Q8Pair], usize, &mut [f32]);
/// Dot of one packed row with one paired activation row.
pub type PackedDotFn = fn(&[f16], &[[u8; 16]], &[Q8Pair]) -> f32;

/// The packed-q4_0 kernels of one instruction set.
#[derive(Clone, Copy)]
pub struct PackedQ4_0Kernels {
    pub dot: PackedDotFn,
    pub t2: PackedTileFn,
}

fn scalar_t2(scales: &[f16], qs: &[[u8; 16]], x: &[Q8Pair], np: usize, out: &mut [f32]) {
    let nb = 2 * np;
    for r in 0..4 {
        for t in 0..2 {
            out[r * 2 + t] = dot_packed_scalar(&scales[r * nb..], &qs[r * nb..(r + 1) * nb], &x[t * np..(t + 1) * np]);
        }
    }
}

impl PackedQ4_0Kernels {
    pub fn scalar() -> Self {
        Self { dot: dot_packed_scalar, t2: scalar_t2 }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    //! AVX2 packed-q4_0 kernels; reached only through tables built after a
    //! run-time feature check.

    use super::{PackedQ4_0Kernels, Q8Pair};
    use half::f16;
    use std::arch::x86_64::*;

    pub fn kernels() -> PackedQ4_0Kernels {
        PackedQ4_0Kernels {
            dot: |s, q, x| unsafe { dot(s, q, x) },
            t2: |s, q, x, np, o| unsafe { tile_4x2(s, q, x, np, o) },
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// `[d_{2p} ×4, d_{2p+1} ×4]` from the f16 scales at `s` (reads 4).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pair_scales(s: *const f16) -> __m256 {
        let four = _mm_cvtph_ps(_mm_loadl_epi64(s as *const __m128i));
        _mm256_permutevar8x32_ps(_mm256_castps128_ps256(four), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1))
    }

    /// Σ over one pair of blocks: 8 f32 lanes (4 per block) still to be
    /// scaled by the weight scales.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pair_products(lo: __m256i, hi: __m256i, x: &Q8Pair, ones: __m256i) -> __m256 {
        let s16 = _mm256_add_epi16(
            _mm256_maddubs_epi16(lo, _mm256_load_si256(x.lo.as_ptr() as *const __m256i)),
            _mm256_maddubs_epi16(hi, _mm256_load_si256(x.hi.as_ptr() as *const __m256i)),
        );
        let s16 = _mm256_sub_epi16(s16, _mm256_load_si256(x.x8.as_ptr() as *const __m256i));
        let f = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16, ones));
        _mm256_mul_ps(f, _mm256_load_ps(x.d.as_ptr()))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nibbles(q: *const [u8; 16], mask: __m256i) -> (__m256i, __m256i) {
        let v = _mm256_loadu_si256(q as *const __m256i);
        (_mm256_and_si256(v, mask), _mm256_and_si256(_mm256_srli_epi16(v, 4), mask))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot(scales: &[f16], qs: &[[u8; 16]], x: &[Q8Pair]) -> f32 {
        let np = x.len().min(qs.len() / 2);
        debug_assert!(scales.len() >= 2 * np + 2);
        let ones = _mm256_set1_epi16(1);
        let mask = _mm256_set1_epi8(0x0f);
        let mut acc = [_mm256_setzero_ps(); 2];
        for p in 0..np {
            let (lo, hi) = nibbles(qs.as_ptr().add(2 * p), mask);
            let prod = pair_products(lo, hi, x.get_unchecked(p), ones);
            acc[p & 1] = _mm256_fmadd_ps(prod, pair_scales(scales.as_ptr().add(2 * p)), acc[p & 1]);
        }
        hsum(_mm256_add_ps(acc[0], acc[1]))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_4x2(scales: &[f16], qs: &[[u8; 16]], x: &[Q8Pair], np: usize, out: &mut [f32]) {
        let nb = 2 * np;
        debug_assert!(qs.len() >= 4 * nb && scales.len() >= 4 * nb + 2 && x.len() >= 2 * np && out.len() >= 8);
        let ones = _mm256_set1_epi16(1);
        let mask = _mm256_set1_epi8(0x0f);
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        for p in 0..np {
            let (x0, x1) = (x.get_unchecked(p), x.get_unchecked(np + p));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let (lo, hi) = nibbles(qs.as_ptr().add(r * nb + 2 * p), mask);
                let dw = pair_scales(scales.as_ptr().add(r * nb + 2 * p));
                acc_r[0] = _mm256_fmadd_ps(pair_products(lo, hi, x0, ones), dw, acc_r[0]);
                acc_r[1] = _mm256_fmadd_ps(pair_products(lo, hi, x1, ones), dw, acc_r[1]);
            }
        }
        for r in 0..4 {
            out[r * 2] = hsum(acc[r][0]);
            out[r * 2 + 1] = hsum(acc[r][1]);
        }
    }
}
