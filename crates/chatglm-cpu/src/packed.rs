//! q4_0 weights repacked for speed: each row's f16 scales in one array and
//! its nibbles in another, so 32 consecutive bytes hold two whole blocks.
//!
//! With the nibbles of consecutive blocks side by side, one load masked with
//! 0x0F yields weights 0..16 of several blocks and the shifted copy weights
//! 16..32; activations are rearranged once per call into the matching
//! [`Q8Quad`] layout (4 blocks: 2 pairs for 256-bit AVX2, one 512-bit
//! AVX-512 register). Several blocks then share one multiply-add chain,
//! which is what decode (compute-bound at q4_0) needs. Bits per weight are
//! unchanged (4.5).

use crate::dot::{BlockQ4_0, BlockQ8_0};
use half::f16;

/// A q4_0 matrix in the split layout. Rows are padded to a multiple of 4
/// blocks with zero-scale, zero-weight blocks.
#[derive(Clone, Debug)]
pub struct PackedQ4_0 {
    pub rows: usize,
    /// Blocks per row, padded to a multiple of 4.
    pub blocks_per_row: usize,
    /// `(rows, blocks_per_row)` scales, plus 4 zero entries of slack.
    pub scales: Vec<f16>,
    /// `(rows, blocks_per_row)` × 16 bytes, ggml nibble order per block
    /// (byte j: weight j in the low nibble, weight j+16 in the high one).
    pub qs: Vec<[u8; 16]>,
}

/// Blocks per row once padded to a multiple of 4.
pub fn padded_blocks(cols: usize) -> usize {
    (cols / 32).div_ceil(4) * 4
}

/// A packed layout built one row of ggml blocks at a time, so a loader never
/// holds the whole matrix twice (the 65024-row output layer is 283 MB at q8_0).
pub trait PackRows: Sized {
    type Block: bytemuck::Pod;
    /// An empty matrix with room for `rows` rows of `cols` columns.
    fn with_capacity(rows: usize, cols: usize) -> Self;
    /// Appends one row (`cols / 32` blocks).
    fn push_row(&mut self, row: &[Self::Block]);
    /// Adds the slack entries the kernels may read past the last row.
    fn finish(self) -> Self;

    /// Repacks `rows` rows of `cols / 32` ggml blocks.
    fn from_blocks(blocks: &[Self::Block], rows: usize, cols: usize) -> Self {
        Self::with_capacity(rows, cols).push_rows(blocks, rows, cols)
    }

    /// Appends `rows` rows of `cols / 32` blocks and finishes.
    fn push_rows(mut self, blocks: &[Self::Block], rows: usize, cols: usize) -> Self {
        for row in blocks.chunks_exact(cols / 32).take(rows) {
            self.push_row(row);
        }
        self.finish()
    }
}

impl PackRows for PackedQ4_0 {
    type Block = BlockQ4_0;

    fn with_capacity(rows: usize, cols: usize) -> Self {
        let nbp = padded_blocks(cols);
        Self {
            rows: 0,
            blocks_per_row: nbp,
            scales: crate::memory::huge_vec(rows * nbp + 4),
            qs: crate::memory::huge_vec(rows * nbp),
        }
    }

    fn push_row(&mut self, row: &[BlockQ4_0]) {
        for b in row {
            self.scales.push(b.d);
            self.qs.push(b.qs);
        }
        for _ in row.len()..self.blocks_per_row {
            self.scales.push(f16::ZERO);
            self.qs.push([0x88; 16]); // q = 8 → weight 0
        }
        self.rows += 1;
    }

    fn finish(mut self) -> Self {
        self.scales.extend([f16::ZERO; 4]);
        self
    }
}

impl PackedQ4_0 {
    /// Repacks ggml blocks, `cols / 32` per row.
    pub fn from_blocks(blocks: &[BlockQ4_0], rows: usize, cols: usize) -> Self {
        <Self as PackRows>::from_blocks(blocks, rows, cols)
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
        (&self.scales[r0 * nbp..(r0 + n) * nbp + 4], &self.qs[r0 * nbp..(r0 + n) * nbp])
    }
}

/// Four q8_0 activation blocks rearranged to match [`PackedQ4_0`].
///
/// Byte `16m + j` of `lo` is value `j` of block `m`, of `hi` value `16 + j`;
/// so 32-bit lane `i` of a 4-byte dot product (`maddubs`+`madd` on AVX2,
/// `vpdpbusd` with VNNI) belongs to block `i / 4`. 160 bytes per 128 values:
/// kept small because a 13696-wide activation row must share L1 with the
/// weights streaming past it.
#[repr(C, align(32))]
#[derive(Clone, Copy, Debug)]
pub struct Q8Quad {
    pub lo: [i8; 64],
    pub hi: [i8; 64],
    /// Scale of each block.
    pub d: [f32; 4],
    /// `d · Σ values` of each block: weights stored with an offset (q4_0's
    /// 8, packed q8_0's 128) contribute `offset · d · Σ values` too much,
    /// which kernels subtract once per block instead of per weight.
    pub dsum: [f32; 4],
    /// Half k's q4_0 offset in the integer domain: lane j of `x8[16k..16k+16]`
    /// is 8 · (lo[32k+2j] + lo[32k+2j+1] + hi[32k+2j] + hi[32k+2j+1]), what
    /// the AVX2 tile's `maddubs` pair sums over codes 0..15 take too much, so
    /// it subtracts it before widening (|Σ (q − 8)·x| ≤ 4,064 fits i16) and
    /// keeps no correction accumulators (they spilled its registers).
    pub x8: [i16; 32],
}

impl Default for Q8Quad {
    fn default() -> Self {
        Self { lo: [0; 64], hi: [0; 64], d: [0.0; 4], dsum: [0.0; 4], x8: [0; 32] }
    }
}

/// Rearranges one activation row's q8_0 blocks into quads (`out.len()` =
/// padded blocks / 4; missing blocks are zero).
pub fn quad_q8_blocks(x: &[BlockQ8_0], out: &mut [Q8Quad]) {
    let zero = BlockQ8_0 { d: f16::ZERO, qs: [0; 32] };
    for (q, quad) in out.iter_mut().enumerate() {
        for m in 0..4 {
            let b = x.get(4 * q + m).unwrap_or(&zero);
            quad.lo[16 * m..16 * m + 16].copy_from_slice(&b.qs[..16]);
            quad.hi[16 * m..16 * m + 16].copy_from_slice(&b.qs[16..]);
            let d = b.d.to_f32();
            let sum: i32 = b.qs.iter().map(|&v| v as i32).sum();
            quad.d[m] = d;
            quad.dsum[m] = d * sum as f32;
        }
        for (j, v) in quad.x8.iter_mut().enumerate() {
            let i = 2 * j;
            let s = quad.lo[i] as i16 + quad.lo[i + 1] as i16 + quad.hi[i] as i16 + quad.hi[i + 1] as i16;
            *v = 8 * s;
        }
    }
}

/// Reference dot of one packed row (`scales`, `qs`: one row's blocks) with quad activations.
pub fn dot_packed_scalar(scales: &[f16], qs: &[[u8; 16]], x: &[Q8Quad]) -> f32 {
    let mut sum = 0.0f32;
    for (q, quad) in x.iter().enumerate() {
        for m in 0..4 {
            let b = 4 * q + m;
            let mut isum = 0i32;
            for (j, &byte) in qs[b].iter().enumerate() {
                let lo = (byte & 0x0f) as i32 - 8;
                let hi = (byte >> 4) as i32 - 8;
                isum += lo * quad.lo[16 * m + j] as i32 + hi * quad.hi[16 * m + j] as i32;
            }
            sum += isum as f32 * scales[b].to_f32() * quad.d[m];
        }
    }
    sum
}

/// A packed tile kernel: `(scales, qs, x, quads_per_row, out)` over 4 rows
/// and 2 tokens (`x`: 2 rows of `quads_per_row` quads), `out[r*2 + t]`.
pub type PackedTileFn<Q> = fn(&[f16], &[Q], &[Q8Quad], usize, &mut [f32]);
/// Dot of one packed row with one quad activation row.
pub type PackedDotFn<Q> = fn(&[f16], &[Q], &[Q8Quad]) -> f32;

/// The kernels of one packed format (`Q`: its unit of quantized bytes) for
/// one instruction set.
pub struct PackedKernels<Q: 'static> {
    pub dot: PackedDotFn<Q>,
    pub t2: PackedTileFn<Q>,
}

impl<Q> Clone for PackedKernels<Q> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<Q> Copy for PackedKernels<Q> {}

pub type PackedQ4_0Kernels = PackedKernels<[u8; 16]>;

/// A packed matrix: per-row scales plus quantized units `Q`.
pub trait PackedRows {
    type Q: 'static;
    /// Scales and quantized units of rows `r0..r0 + n`.
    fn rows_data(&self, r0: usize, n: usize) -> (&[f16], &[Self::Q]);
}

impl PackedRows for PackedQ4_0 {
    type Q = [u8; 16];
    fn rows_data(&self, r0: usize, n: usize) -> (&[f16], &[[u8; 16]]) {
        PackedQ4_0::rows_data(self, r0, n)
    }
}

fn scalar_t2(scales: &[f16], qs: &[[u8; 16]], x: &[Q8Quad], nq: usize, out: &mut [f32]) {
    let nb = 4 * nq;
    for r in 0..4 {
        for t in 0..2 {
            out[r * 2 + t] = dot_packed_scalar(&scales[r * nb..], &qs[r * nb..(r + 1) * nb], &x[t * nq..(t + 1) * nq]);
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
    //! AVX2 packed-q4_0 kernels (a quad as two 256-bit halves); reached only
    //! through tables built after a run-time feature check.

    use super::{PackedQ4_0Kernels, Q8Quad};
    use crate::dot::avx2::hsum;
    use half::f16;
    use std::arch::x86_64::*;

    pub(crate) fn kernels() -> PackedQ4_0Kernels {
        PackedQ4_0Kernels {
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            dot: |s, q, x| unsafe { dot(s, q, x) },
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            t2: |s, q, x, nq, o| unsafe { tile_4x2(s, q, x, nq, o) },
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn hsum4(v: __m128) -> f32 {
        let s = _mm_add_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// The 4 weight scales of a quad (reads 4 f16 at `s`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn quad_scales(s: *const f16) -> __m128 {
        _mm_cvtph_ps(_mm_loadl_epi64(s as *const __m128i))
    }

    /// Lanes 0..4 = `v[2k]`, lanes 4..8 = `v[2k+1]`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn spread(v: __m128, k: usize) -> __m256 {
        let idx =
            if k == 0 { _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1) } else { _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3) };
        _mm256_permutevar8x32_ps(_mm256_castps128_ps256(v), idx)
    }

    /// Half `k` of a quad (blocks 2k, 2k+1): 8 f32 lanes (4 per block) of `Σ q·x`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn half_isums(lo: __m256i, hi: __m256i, x: &Q8Quad, k: usize, ones: __m256i) -> __m256 {
        let s16 = _mm256_add_epi16(
            _mm256_maddubs_epi16(lo, _mm256_load_si256(x.lo.as_ptr().add(32 * k) as *const __m256i)),
            _mm256_maddubs_epi16(hi, _mm256_load_si256(x.hi.as_ptr().add(32 * k) as *const __m256i)),
        );
        _mm256_cvtepi32_ps(_mm256_madd_epi16(s16, ones))
    }

    /// Codes 0..16 of a half quad (two blocks): low nibbles, high nibbles.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn nibbles(q: *const [u8; 16], mask: __m256i) -> (__m256i, __m256i) {
        let v = _mm256_loadu_si256(q as *const __m256i);
        (_mm256_and_si256(v, mask), _mm256_and_si256(_mm256_srli_epi16(v, 4), mask))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot(scales: &[f16], qs: &[[u8; 16]], x: &[Q8Quad]) -> f32 {
        let ones = _mm256_set1_epi16(1);
        dot_halves(scales, qs, x, |lo, hi, xq, k| half_isums(lo, hi, xq, k, ones))
    }

    /// One packed q4_0 row against one token's quads, given `isums(lo, hi,
    /// x, k)`: half `k`'s Σ q·x as 8 f32 lanes (4 per block) from its codes.
    #[inline(always)]
    pub(crate) unsafe fn dot_halves(
        scales: &[f16],
        qs: &[[u8; 16]],
        x: &[Q8Quad],
        isums: impl Fn(__m256i, __m256i, &Q8Quad, usize) -> __m256,
    ) -> f32 {
        let nq = x.len().min(qs.len() / 4);
        assert!(scales.len() >= 4 * nq);
        let mask = _mm256_set1_epi8(0x0f);
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut corr = _mm_setzero_ps();
        for q in 0..nq {
            let xq = x.get_unchecked(q);
            crate::prefetch::ahead(qs.as_ptr().add(4 * q));
            let dw = quad_scales(scales.as_ptr().add(4 * q));
            // One product of the quad's weight and activation scales, spread
            // once a half: the mat-vec runs as fast from L2 as from memory
            // (13.5 GB/s a thread on the 2-core EPYC either way), so it is
            // instructions, not bytes, that bound decode.
            let dwdx = _mm_mul_ps(dw, _mm_loadu_ps(xq.d.as_ptr()));
            for (k, acc_k) in acc.iter_mut().enumerate() {
                let (lo, hi) = nibbles(qs.as_ptr().add(4 * q + 2 * k), mask);
                *acc_k = _mm256_fmadd_ps(isums(lo, hi, xq, k), spread(dwdx, k), *acc_k);
            }
            corr = _mm_fmadd_ps(dw, _mm_loadu_ps(xq.dsum.as_ptr()), corr);
        }
        hsum(_mm256_add_ps(acc[0], acc[1])) - 8.0 * hsum4(corr)
    }

    /// 4 rows × 2 tokens with the q4_0 offset taken in the integer domain
    /// (`Q8Quad::x8`): no correction accumulators, so the 8 accumulators,
    /// the half-quad's activations and scales fit the 16 registers.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_4x2(scales: &[f16], qs: &[[u8; 16]], x: &[Q8Quad], nq: usize, out: &mut [f32]) {
        let nb = 4 * nq;
        assert!(qs.len() >= 4 * nb && scales.len() >= 3 * nb + 4 * nq && x.len() >= 2 * nq && out.len() >= 8);
        let ones = _mm256_set1_epi16(1);
        let mask = _mm256_set1_epi8(0x0f);
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        for q in 0..nq {
            let xs = [x.get_unchecked(q), x.get_unchecked(nq + q)];
            let dx = [_mm_loadu_ps(xs[0].d.as_ptr()), _mm_loadu_ps(xs[1].d.as_ptr())];
            for k in 0..2 {
                let dxk = [spread(dx[0], k), spread(dx[1], k)];
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let dwk = spread(quad_scales(scales.as_ptr().add(r * nb + 4 * q)), k);
                    let (lo, hi) = nibbles(qs.as_ptr().add(r * nb + 4 * q + 2 * k), mask);
                    for (t, acc_rt) in acc_r.iter_mut().enumerate() {
                        let xt = xs[t];
                        let s16 = _mm256_sub_epi16(
                            _mm256_add_epi16(
                                _mm256_maddubs_epi16(
                                    lo,
                                    _mm256_load_si256(xt.lo.as_ptr().add(32 * k) as *const __m256i),
                                ),
                                _mm256_maddubs_epi16(
                                    hi,
                                    _mm256_load_si256(xt.hi.as_ptr().add(32 * k) as *const __m256i),
                                ),
                            ),
                            _mm256_load_si256(xt.x8.as_ptr().add(16 * k) as *const __m256i),
                        );
                        let p = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(s16, ones)), dxk[t]);
                        *acc_rt = _mm256_fmadd_ps(p, dwk, *acc_rt);
                    }
                }
            }
        }
        for r in 0..4 {
            out[r * 2] = hsum(acc[r][0]);
            out[r * 2 + 1] = hsum(acc[r][1]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod avxvnni {
    //! AVX-VNNI packed-q4_0 kernels (CPUs with the 256-bit `vpdpbusd` but no
    //! AVX-512): the AVX2 layout, a quad as two 256-bit halves, with one
    //! `vpdpbusd` summing four code × activation products into each i32 lane
    //! where AVX2 takes `maddubs`, `madd` and an add. Reached only through
    //! tables built after a run-time feature check.

    use super::avx2::{dot_halves, nibbles, quad_scales, spread};
    use super::{PackedQ4_0Kernels, Q8Quad};
    use crate::dot::avx2::hsum;
    use half::f16;
    use std::arch::x86_64::*;

    pub(crate) fn kernels() -> PackedQ4_0Kernels {
        PackedQ4_0Kernels {
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            dot: |s, q, x| unsafe { dot(s, q, x) },
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            t2: |s, q, x, nq, o| unsafe { tile_4x2(s, q, x, nq, o) },
        }
    }

    /// `init` + Σ w·x of half `k` of a quad (blocks 2k, 2k+1) in 8 i32 lanes,
    /// 4 per block: `lo`, `hi` are the half's unsigned weights of values
    /// 0..16 and 16..32 (exact: |Σ| ≤ 8 · 255 · 128 a lane).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    pub(crate) unsafe fn half_isums(init: __m256i, lo: __m256i, hi: __m256i, x: &Q8Quad, k: usize) -> __m256i {
        let s = _mm256_dpbusd_avx_epi32(init, lo, _mm256_load_si256(x.lo.as_ptr().add(32 * k) as *const __m256i));
        _mm256_dpbusd_avx_epi32(s, hi, _mm256_load_si256(x.hi.as_ptr().add(32 * k) as *const __m256i))
    }

    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn dot(scales: &[f16], qs: &[[u8; 16]], x: &[Q8Quad]) -> f32 {
        let zero = _mm256_setzero_si256();
        dot_halves(scales, qs, x, |lo, hi, xq, k| _mm256_cvtepi32_ps(half_isums(zero, lo, hi, xq, k)))
    }

    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn tile_4x2(scales: &[f16], qs: &[[u8; 16]], x: &[Q8Quad], nq: usize, out: &mut [f32]) {
        let nb = 4 * nq;
        assert!(qs.len() >= 4 * nb);
        let mask = _mm256_set1_epi8(0x0f);
        tile_halves(scales, x, nq, 8, out, |r, q, k| nibbles(qs.as_ptr().add(r * nb + 4 * q + 2 * k), mask))
    }

    /// A packed 4-row × 2-token tile given `weights(r, q, k)`, half `k` of row
    /// `r`'s quad `q` as unsigned values 0..16 and 16..32, stored with
    /// `offset` added: each lane's sum starts at −offset × its activations'
    /// sum (`Q8Quad::x8` is 8 × the pair sums, added once per token and
    /// half), so the two `vpdpbusd` leave Σ w·x exactly and no correction
    /// accumulators are kept.
    #[inline(always)]
    pub(crate) unsafe fn tile_halves(
        scales: &[f16],
        x: &[Q8Quad],
        nq: usize,
        offset: i16,
        out: &mut [f32],
        weights: impl Fn(usize, usize, usize) -> (__m256i, __m256i),
    ) {
        assert!(scales.len() >= 16 * nq && x.len() >= 2 * nq && out.len() >= 8);
        let minus_offset_8ths = _mm256_set1_epi16(-offset / 8);
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        for q in 0..nq {
            let xs = [x.get_unchecked(q), x.get_unchecked(nq + q)];
            let dx = [_mm_loadu_ps(xs[0].d.as_ptr()), _mm_loadu_ps(xs[1].d.as_ptr())];
            for k in 0..2 {
                let dxk = [spread(dx[0], k), spread(dx[1], k)];
                let init = xs.map(|xt| {
                    let x8 = _mm256_load_si256(xt.x8.as_ptr().add(16 * k) as *const __m256i);
                    _mm256_madd_epi16(x8, minus_offset_8ths)
                });
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let dwk = spread(quad_scales(scales.as_ptr().add(4 * (r * nq + q))), k);
                    let (lo, hi) = weights(r, q, k);
                    for (t, acc_rt) in acc_r.iter_mut().enumerate() {
                        let p = _mm256_mul_ps(_mm256_cvtepi32_ps(half_isums(init[t], lo, hi, xs[t], k)), dxk[t]);
                        *acc_rt = _mm256_fmadd_ps(p, dwk, *acc_rt);
                    }
                }
            }
        }
        for r in 0..4 {
            out[r * 2] = hsum(acc[r][0]);
            out[r * 2 + 1] = hsum(acc[r][1]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod avx512 {
    //! AVX-512 (F, BW, VL, VNNI) packed-q4_0 kernels: a quad of blocks per
    //! 512-bit register, `vpdpbusd` for the 4-byte dot products. Reached only
    //! through tables built after a run-time feature check.

    use super::{PackedQ4_0Kernels, Q8Quad};
    use half::f16;
    use std::arch::x86_64::*;

    pub(crate) fn kernels() -> PackedQ4_0Kernels {
        PackedQ4_0Kernels {
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            dot: |s, q, x| unsafe { dot(s, q, x) },
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            t2: |s, q, x, nq, o| unsafe { tile_4x2(s, q, x, nq, o) },
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn hsum4(v: __m128) -> f32 {
        let s = _mm_add_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// `[v0 ×4, v1 ×4, v2 ×4, v3 ×4]`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn spread(v: __m128) -> __m512 {
        let idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v))
    }

    /// 16 f32 lanes (4 per block) of `Σ q·x` of a quad.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn int_products(lo: __m512i, hi: __m512i, x: &Q8Quad) -> __m512 {
        let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512(x.lo.as_ptr() as *const _));
        let s = _mm512_dpbusd_epi32(s, hi, _mm512_loadu_si512(x.hi.as_ptr() as *const _));
        _mm512_cvtepi32_ps(s)
    }

    /// [`int_products`] times the activation scales.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn products(lo: __m512i, hi: __m512i, x: &Q8Quad) -> __m512 {
        _mm512_mul_ps(int_products(lo, hi, x), spread(_mm_loadu_ps(x.d.as_ptr())))
    }

    /// `[v(q), v(q+1), v(q+2), v(q+3)]`: 4 floats from each of 4 quads.
    #[inline(always)]
    unsafe fn gather4(x: &[Q8Quad], q: usize, field: impl Fn(&Q8Quad) -> &[f32; 4]) -> __m512 {
        let v = _mm512_castps128_ps512(_mm_loadu_ps(field(x.get_unchecked(q)).as_ptr()));
        let v = _mm512_insertf32x4(v, _mm_loadu_ps(field(x.get_unchecked(q + 1)).as_ptr()), 1);
        let v = _mm512_insertf32x4(v, _mm_loadu_ps(field(x.get_unchecked(q + 2)).as_ptr()), 2);
        _mm512_insertf32x4(v, _mm_loadu_ps(field(x.get_unchecked(q + 3)).as_ptr()), 3)
    }

    /// A packed row's dot product given `products(q)`, the 16 lanes (4 per
    /// block) of integer sums `Σ w·x` of quad `q` as f32, for weights stored
    /// with `offset` added.
    ///
    /// Scales are handled 4 quads (16 blocks) at a time: one conversion of
    /// 16 f16 weight scales, one multiply by the activation scales, one
    /// offset-correction FMA, then one permute per quad to spread its 4
    /// scales over its lanes. Per quad that is half the scale work of the
    /// one-quad loop, which made one thread's q4_0 mat-vec 36 → 47 GB/s
    /// (compute-bound before; `kernel_bench`, bench/RESULTS.md).
    #[inline(always)]
    pub(crate) unsafe fn dot_quads(
        scales: &[f16],
        x: &[Q8Quad],
        nq: usize,
        offset: f32,
        products: impl Fn(usize) -> __m512,
    ) -> f32 {
        assert!(scales.len() >= 4 * nq && x.len() >= nq);
        let idx = [
            _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
            _mm512_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7),
            _mm512_setr_epi32(8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11),
            _mm512_setr_epi32(12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15),
        ];
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut corr = _mm512_setzero_ps();
        let mut q = 0;
        while q + 4 <= nq {
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(scales.as_ptr().add(4 * q) as *const __m256i));
            let d = _mm512_mul_ps(dw, gather4(x, q, |xq| &xq.d));
            corr = _mm512_fmadd_ps(dw, gather4(x, q, |xq| &xq.dsum), corr);
            for (k, idx_k) in idx.iter().enumerate() {
                acc[k & 1] = _mm512_fmadd_ps(products(q + k), _mm512_permutexvar_ps(*idx_k, d), acc[k & 1]);
            }
            q += 4;
        }
        let mut tail_corr = _mm_setzero_ps();
        while q < nq {
            let xq = x.get_unchecked(q);
            let dw = quad_scales(scales.as_ptr().add(4 * q));
            let d = spread(_mm_mul_ps(dw, _mm_loadu_ps(xq.d.as_ptr())));
            acc[q & 1] = _mm512_fmadd_ps(products(q), d, acc[q & 1]);
            tail_corr = _mm_fmadd_ps(dw, _mm_loadu_ps(xq.dsum.as_ptr()), tail_corr);
            q += 1;
        }
        let corr = _mm512_reduce_add_ps(corr) + hsum4(tail_corr);
        _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1])) - offset * corr
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn nibbles(q: *const [u8; 16], mask: __m512i) -> (__m512i, __m512i) {
        let v = _mm512_loadu_si512(q as *const _);
        (_mm512_and_si512(v, mask), _mm512_and_si512(_mm512_srli_epi16(v, 4), mask))
    }

    /// The 4 weight scales of a quad (reads 4 f16 at `s`).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    pub(crate) unsafe fn quad_scales(s: *const f16) -> __m128 {
        _mm_cvtph_ps(_mm_loadl_epi64(s as *const __m128i))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn dot(scales: &[f16], qs: &[[u8; 16]], x: &[Q8Quad]) -> f32 {
        let nq = x.len().min(qs.len() / 4);
        assert!(scales.len() >= 4 * nq);
        let mask = _mm512_set1_epi8(0x0f);
        dot_quads(scales, x, nq, 8.0, |q| {
            crate::prefetch::ahead(qs.as_ptr().add(4 * q));
            let (lo, hi) = nibbles(qs.as_ptr().add(4 * q), mask);
            int_products(lo, hi, x.get_unchecked(q))
        })
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn tile_4x2(scales: &[f16], qs: &[[u8; 16]], x: &[Q8Quad], nq: usize, out: &mut [f32]) {
        let nb = 4 * nq;
        assert!(qs.len() >= 4 * nb);
        let mask = _mm512_set1_epi8(0x0f);
        tile_quads(scales, x, nq, 8.0, out, |r, q| nibbles(qs.as_ptr().add(r * nb + 4 * q), mask))
    }

    /// A packed 4-row × 2-token tile given `weights(r, q)`, the two 64-byte
    /// halves of row `r`'s quad `q`, for weights stored with `offset` added.
    #[inline(always)]
    pub(crate) unsafe fn tile_quads(
        scales: &[f16],
        x: &[Q8Quad],
        nq: usize,
        offset: f32,
        out: &mut [f32],
        weights: impl Fn(usize, usize) -> (__m512i, __m512i),
    ) {
        assert!(scales.len() >= 16 * nq && x.len() >= 2 * nq && out.len() >= 8);
        let mut acc = [[_mm512_setzero_ps(); 2]; 4];
        let mut corr = [[_mm_setzero_ps(); 2]; 4];
        for q in 0..nq {
            let (x0, x1) = (x.get_unchecked(q), x.get_unchecked(nq + q));
            let (c0, c1) = (_mm_loadu_ps(x0.dsum.as_ptr()), _mm_loadu_ps(x1.dsum.as_ptr()));
            for r in 0..4 {
                let (lo, hi) = weights(r, q);
                let dw = quad_scales(scales.as_ptr().add(4 * (r * nq + q)));
                let dw16 = spread(dw);
                acc[r][0] = _mm512_fmadd_ps(products(lo, hi, x0), dw16, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(products(lo, hi, x1), dw16, acc[r][1]);
                corr[r][0] = _mm_fmadd_ps(dw, c0, corr[r][0]);
                corr[r][1] = _mm_fmadd_ps(dw, c1, corr[r][1]);
            }
        }
        for r in 0..4 {
            out[r * 2] = _mm512_reduce_add_ps(acc[r][0]) - offset * hsum4(corr[r][0]);
            out[r * 2 + 1] = _mm512_reduce_add_ps(acc[r][1]) - offset * hsum4(corr[r][1]);
        }
    }
}
