//! q8_0 weights repacked to share the [`Q8Quad`] activation layout of
//! packed q4_0: per row, the f16 scales in one array and the values in
//! 128-byte quads (4 blocks), bytes `16m + j` = value `j` of block `m` and
//! `64 + 16m + j` = value `16 + j`.
//!
//! Values are stored with their sign bit flipped (`w + 128`, unsigned), the
//! operand `vpdpbusd` needs unsigned, so one VNNI instruction multiplies 64
//! weights without the abs/sign trick (AVX-512 has no `vpsignb`); the
//! `128 · Σx` this adds is subtracted once per block from the quad's `dsum`.
//! Where the kernels take the weights signed (AVX2 without VNNI, whose
//! `maddubs` products need `|w|` and `sign(w)` anyway) they are stored as
//! they are (`PackedQ8_0::signed`), so no kernel flips the bit back: the
//! layout each process packs in is its kernel table's
//! ([`crate::Kernels::q8_0_signed`]). Bits per weight are unchanged (8.5).

use crate::dot::BlockQ8_0;
use crate::packed::{padded_blocks, PackRows, PackedKernels, PackedRows, Q8Quad};
use half::f16;

/// One quad of weights: 4 blocks of 32 sign-flipped values.
pub type Q8WeightQuad = [u8; 128];

/// A q8_0 matrix in the quad layout. Rows are padded to a multiple of 4
/// blocks with zero-scale, zero-weight blocks.
#[derive(Clone, Debug)]
pub struct PackedQ8_0 {
    pub rows: usize,
    /// Blocks per row, padded to a multiple of 4.
    pub blocks_per_row: usize,
    /// `(rows, blocks_per_row)` scales, plus 4 zero entries of slack.
    pub scales: Vec<f16>,
    /// `(rows, blocks_per_row / 4)` quads.
    pub qs: Vec<Q8WeightQuad>,
    /// Values stored as signed bytes (else `w + 128`).
    pub signed: bool,
}

/// Byte of a weight quad that holds value `i` (0..32) of block `m` (0..4).
fn quad_offset(m: usize, i: usize) -> usize {
    if i < 16 {
        16 * m + i
    } else {
        64 + 16 * m + (i - 16)
    }
}

impl PackRows for PackedQ8_0 {
    type Block = BlockQ8_0;

    fn with_capacity(rows: usize, cols: usize) -> Self {
        Self::with_layout(rows, cols, crate::Kernels::detect().q8_0_signed)
    }

    fn push_row(&mut self, row: &[BlockQ8_0]) {
        let flip = self.flip();
        for b0 in (0..self.blocks_per_row).step_by(4) {
            let mut quad = [flip; 128]; // weight 0
            for m in 0..4 {
                match row.get(b0 + m) {
                    Some(block) => {
                        self.scales.push(block.d);
                        for (i, &v) in block.qs.iter().enumerate() {
                            quad[quad_offset(m, i)] = (v as u8) ^ flip;
                        }
                    }
                    None => self.scales.push(f16::ZERO),
                }
            }
            self.qs.push(quad);
        }
        self.rows += 1;
    }

    fn finish(mut self) -> Self {
        self.scales.extend([f16::ZERO; 4]);
        self
    }
}

impl PackedQ8_0 {
    /// An empty matrix for `rows` rows of `cols` values in the given layout.
    fn with_layout(rows: usize, cols: usize, signed: bool) -> Self {
        let nbp = padded_blocks(cols);
        Self {
            rows: 0,
            blocks_per_row: nbp,
            scales: crate::memory::huge_vec(rows * nbp + 4),
            qs: crate::memory::huge_vec(rows * nbp / 4),
            signed,
        }
    }

    /// The byte a stored value is xor-ed with: 0x80 for `w + 128`.
    fn flip(&self) -> u8 {
        if self.signed {
            0
        } else {
            0x80
        }
    }

    /// Repacks ggml blocks in the given layout (see [`PackedQ8_0::signed`]),
    /// whatever this process's kernels pack in.
    pub fn from_blocks_in_layout(blocks: &[BlockQ8_0], rows: usize, cols: usize, signed: bool) -> Self {
        Self::with_layout(rows, cols, signed).push_rows(blocks, rows, cols)
    }

    /// Repacks ggml blocks, `cols / 32` per row.
    pub fn from_blocks(blocks: &[BlockQ8_0], rows: usize, cols: usize) -> Self {
        <Self as PackRows>::from_blocks(blocks, rows, cols)
    }

    /// Bytes of weights (what a mat-vec streams).
    pub fn size_bytes(&self) -> usize {
        self.scales.len() * 2 + self.qs.len() * 128
    }

    /// Block `b` of row `r` back in ggml form.
    fn block(&self, r: usize, b: usize) -> BlockQ8_0 {
        let nbp = self.blocks_per_row;
        let quad = &self.qs[(r * nbp + b) / 4];
        let flip = self.flip();
        let mut qs = [0i8; 32];
        for (i, q) in qs.iter_mut().enumerate() {
            *q = (quad[quad_offset(b % 4, i)] ^ flip) as i8;
        }
        BlockQ8_0 { d: self.scales[r * nbp + b], qs }
    }

    /// Row `r` as f32 (`out.len()` = cols).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        for (b, o) in out.chunks_exact_mut(32).enumerate() {
            chatglm_weights::quant::QuantBlock::dequantize(&self.block(r, b), o);
        }
    }

    /// Scales and quads of rows `r0..r0 + n`.
    pub fn rows_data(&self, r0: usize, n: usize) -> (&[f16], &[Q8WeightQuad]) {
        let nbp = self.blocks_per_row;
        (&self.scales[r0 * nbp..(r0 + n) * nbp + 4], &self.qs[r0 * nbp / 4..(r0 + n) * nbp / 4])
    }
}

impl PackedRows for PackedQ8_0 {
    type Q = Q8WeightQuad;
    fn rows_data(&self, r0: usize, n: usize) -> (&[f16], &[Q8WeightQuad]) {
        PackedQ8_0::rows_data(self, r0, n)
    }
}

pub type PackedQ8_0Kernels = PackedKernels<Q8WeightQuad>;

/// Reference dot of one packed row (`scales`, `qs`: one row's quads) with quad activations.
pub fn dot_scalar(scales: &[f16], qs: &[Q8WeightQuad], x: &[Q8Quad]) -> f32 {
    dot_reference::<0x80>(scales, qs, x)
}

/// [`dot_scalar`] of the signed layout.
pub fn dot_scalar_signed(scales: &[f16], qs: &[Q8WeightQuad], x: &[Q8Quad]) -> f32 {
    dot_reference::<0>(scales, qs, x)
}

fn dot_reference<const FLIP: u8>(scales: &[f16], qs: &[Q8WeightQuad], x: &[Q8Quad]) -> f32 {
    let mut sum = 0.0f32;
    for (q, (quad, xq)) in qs.iter().zip(x).enumerate() {
        for m in 0..4 {
            let mut isum = 0i32;
            for j in 0..16 {
                let lo = (quad[16 * m + j] ^ FLIP) as i8 as i32;
                let hi = (quad[64 + 16 * m + j] ^ FLIP) as i8 as i32;
                isum += lo * xq.lo[16 * m + j] as i32 + hi * xq.hi[16 * m + j] as i32;
            }
            sum += isum as f32 * scales[4 * q + m].to_f32() * xq.d[m];
        }
    }
    sum
}

fn scalar_t2<const FLIP: u8>(scales: &[f16], qs: &[Q8WeightQuad], x: &[Q8Quad], nq: usize, out: &mut [f32]) {
    for r in 0..4 {
        for t in 0..2 {
            let row = &qs[r * nq..(r + 1) * nq];
            out[r * 2 + t] = dot_reference::<FLIP>(&scales[4 * r * nq..], row, &x[t * nq..(t + 1) * nq]);
        }
    }
}

impl PackedQ8_0Kernels {
    pub fn scalar() -> Self {
        Self { dot: dot_scalar, t2: scalar_t2::<0x80> }
    }

    /// The reference kernels of the signed layout.
    pub fn scalar_signed() -> Self {
        Self { dot: dot_scalar_signed, t2: scalar_t2::<0> }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    //! AVX2: `maddubs` would saturate on unsigned `w + 128`, so the usual
    //! `|w| · sign(x, w)` products are used, on the signed layout as stored
    //! (`SIGNED`) or with the sign bit flipped back (two xors a half quad).

    use super::{PackedQ8_0Kernels, Q8WeightQuad};
    use crate::dot::avx2::hsum;
    use crate::packed::avx2::{quad_scales, spread};
    use crate::packed::Q8Quad;
    use crate::prefetch;
    use half::f16;
    use std::arch::x86_64::*;

    /// The kernels of the `w + 128` layout.
    pub(crate) fn kernels() -> PackedQ8_0Kernels {
        PackedQ8_0Kernels {
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            dot: |s, q, x| unsafe { dot::<false>(s, q, x) },
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            t2: |s, q, x, nq, o| unsafe { tile_4x2::<false>(s, q, x, nq, o) },
        }
    }

    /// The kernels of the signed layout.
    pub(crate) fn signed_kernels() -> PackedQ8_0Kernels {
        PackedQ8_0Kernels {
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            dot: |s, q, x| unsafe { dot::<true>(s, q, x) },
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            t2: |s, q, x, nq, o| unsafe { tile_4x2::<true>(s, q, x, nq, o) },
        }
    }

    /// Half `k` of a weight quad (blocks 2k, 2k+1): the signed weights of
    /// values 0..16 and 16..32, and their magnitudes (shared by every token).
    struct Half {
        w: [__m256i; 2],
        abs: [__m256i; 2],
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn weights<const SIGNED: bool>(quad: &Q8WeightQuad, k: usize) -> Half {
        let p = quad.as_ptr();
        let (mut wlo, mut whi) = (
            _mm256_loadu_si256(p.add(32 * k) as *const __m256i),
            _mm256_loadu_si256(p.add(64 + 32 * k) as *const __m256i),
        );
        if !SIGNED {
            let flip = _mm256_set1_epi8(-128);
            wlo = _mm256_xor_si256(wlo, flip);
            whi = _mm256_xor_si256(whi, flip);
        }
        Half { w: [wlo, whi], abs: [_mm256_sign_epi8(wlo, wlo), _mm256_sign_epi8(whi, whi)] }
    }

    /// `half` against one token's quad as 8 f32 lanes (4 per block) of `Σ w·x`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn isums(h: &Half, x: &Q8Quad, k: usize, ones: __m256i) -> __m256 {
        let xlo = _mm256_load_si256(x.lo.as_ptr().add(32 * k) as *const __m256i);
        let xhi = _mm256_load_si256(x.hi.as_ptr().add(32 * k) as *const __m256i);
        let plo = _mm256_maddubs_epi16(h.abs[0], _mm256_sign_epi8(xlo, h.w[0]));
        let phi = _mm256_maddubs_epi16(h.abs[1], _mm256_sign_epi8(xhi, h.w[1]));
        // Each i16 is at most 2·127·127, so the two are widened before adding.
        let s = _mm256_add_epi32(_mm256_madd_epi16(plo, ones), _mm256_madd_epi16(phi, ones));
        _mm256_cvtepi32_ps(s)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot<const SIGNED: bool>(scales: &[f16], qs: &[Q8WeightQuad], x: &[Q8Quad]) -> f32 {
        let nq = x.len().min(qs.len());
        assert!(scales.len() >= 4 * nq);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 2];
        for q in 0..nq {
            let (xq, wq) = (x.get_unchecked(q), qs.get_unchecked(q));
            prefetch::ahead(wq.as_ptr());
            prefetch::ahead(wq.as_ptr().wrapping_add(64));
            // One product of the scales a quad (packed.rs's q4_0 dot: the
            // mat-vecs are instruction-bound when memory keeps up).
            let dwdx = _mm_mul_ps(quad_scales(scales.as_ptr().add(4 * q)), _mm_loadu_ps(xq.d.as_ptr()));
            for (k, acc_k) in acc.iter_mut().enumerate() {
                *acc_k = _mm256_fmadd_ps(isums(&weights::<SIGNED>(wq, k), xq, k, ones), spread(dwdx, k), *acc_k);
            }
        }
        hsum(_mm256_add_ps(acc[0], acc[1]))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_4x2<const SIGNED: bool>(
        scales: &[f16],
        qs: &[Q8WeightQuad],
        x: &[Q8Quad],
        nq: usize,
        out: &mut [f32],
    ) {
        assert!(qs.len() >= 4 * nq && scales.len() >= 16 * nq && x.len() >= 2 * nq && out.len() >= 8);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        for q in 0..nq {
            let (x0, x1) = (x.get_unchecked(q), x.get_unchecked(nq + q));
            let (dx0, dx1) = (_mm_loadu_ps(x0.d.as_ptr()), _mm_loadu_ps(x1.d.as_ptr()));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let wq = qs.get_unchecked(r * nq + q);
                let dw = quad_scales(scales.as_ptr().add(4 * (r * nq + q)));
                // The two scales' product once a (row, token, quad), as `dot`
                // takes it: a multiply a half and token fewer than scaling the
                // sums by each in turn.
                let (s0, s1) = (_mm_mul_ps(dw, dx0), _mm_mul_ps(dw, dx1));
                for k in 0..2 {
                    let h = weights::<SIGNED>(wq, k);
                    acc_r[0] = _mm256_fmadd_ps(isums(&h, x0, k, ones), spread(s0, k), acc_r[0]);
                    acc_r[1] = _mm256_fmadd_ps(isums(&h, x1, k, ones), spread(s1, k), acc_r[1]);
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
    //! AVX-VNNI (no AVX-512): the stored `w + 128` is the unsigned operand
    //! `vpdpbusd` takes, so a half quad is two loads and two `vpdpbusd`
    //! where AVX2 flips the sign bit back and takes two `vpsignb`, two
    //! `maddubs`, two `madd` and an add. Only the tile: the one-token dot
    //! streamed 5–15% slower this way than AVX2's (27,392 × 4,096, 2 threads,
    //! `kernel_bench`), so the table keeps AVX2's.

    use super::{PackedQ8_0Kernels, Q8WeightQuad};
    use crate::packed::avxvnni::tile_halves;
    use crate::packed::Q8Quad;
    use half::f16;
    use std::arch::x86_64::*;

    pub(crate) fn kernels() -> PackedQ8_0Kernels {
        PackedQ8_0Kernels {
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            t2: |s, q, x, nq, o| unsafe { tile_4x2(s, q, x, nq, o) },
            ..super::avx2::kernels()
        }
    }

    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn tile_4x2(scales: &[f16], qs: &[Q8WeightQuad], x: &[Q8Quad], nq: usize, out: &mut [f32]) {
        assert!(qs.len() >= 4 * nq);
        tile_halves(scales, x, nq, 128, out, |r, q, k| {
            let p = qs.get_unchecked(r * nq + q).as_ptr();
            (
                _mm256_loadu_si256(p.add(32 * k) as *const __m256i),
                _mm256_loadu_si256(p.add(64 + 32 * k) as *const __m256i),
            )
        })
    }
}

#[cfg(target_arch = "x86_64")]
pub mod avx512 {
    //! AVX-512 VNNI: a quad is two 512-bit loads and two `vpdpbusd`.

    use super::{PackedQ8_0Kernels, Q8WeightQuad};
    use crate::packed::avx512::{dot_quads, int_products, tile_quads};
    use crate::packed::Q8Quad;
    use crate::prefetch;
    use half::f16;
    use std::arch::x86_64::*;

    pub(crate) fn kernels() -> PackedQ8_0Kernels {
        PackedQ8_0Kernels {
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            dot: |s, q, x| unsafe { dot(s, q, x) },
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            t2: |s, q, x, nq, o| unsafe { tile_4x2(s, q, x, nq, o) },
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn halves(quad: &Q8WeightQuad) -> (__m512i, __m512i) {
        let p = quad.as_ptr();
        (_mm512_loadu_si512(p as *const _), _mm512_loadu_si512(p.add(64) as *const _))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn dot(scales: &[f16], qs: &[Q8WeightQuad], x: &[Q8Quad]) -> f32 {
        let nq = x.len().min(qs.len());
        assert!(scales.len() >= 4 * nq);
        dot_quads(scales, x, nq, 128.0, |q| {
            let p = qs.as_ptr().add(q).cast::<u8>();
            prefetch::ahead(p);
            prefetch::ahead(p.wrapping_add(64));
            let (lo, hi) = halves(qs.get_unchecked(q));
            int_products(lo, hi, x.get_unchecked(q))
        })
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
    unsafe fn tile_4x2(scales: &[f16], qs: &[Q8WeightQuad], x: &[Q8Quad], nq: usize, out: &mut [f32]) {
        assert!(qs.len() >= 4 * nq);
        tile_quads(scales, x, nq, 128.0, out, |r, q| halves(qs.get_unchecked(r * nq + q)))
    }
}
