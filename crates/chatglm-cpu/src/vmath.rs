//! Vectorised transcendental row operations: the exponentials of attention's
//! softmax (one per head per context position per layer: 29 million per token
//! at a 32K context) and SwiGLU's sigmoid.
//!
//! `exp` is the Cephes single-precision scheme: `x = n·ln2 + r` with
//! `|r| ≤ ln2/2`, a degree-5 polynomial for `e^r`, and `2^n` put in the
//! exponent field. Relative error ≤ 2e-7 on the whole range; inputs below
//! `ln(2^-126)` give about 1e-38 instead of a subnormal or 0, which no sum of
//! exponentials here can notice. Every SIMD variant is tested against `f64`.

/// `x[i] = exp(x[i] - sub)`; returns `Σ x[i]`.
pub type ExpSubSumFn = fn(&mut [f32], f32) -> f32;
/// `x[i] *= scale`; returns `max x[i]` (−∞ for an empty row).
pub type ScaleMaxFn = fn(&mut [f32], f32) -> f32;
/// `out[i] = silu(a[i]) · b[i]`, `silu(v) = v / (1 + e^-v)`.
pub type SwigluFn = fn(&[f32], &[f32], &mut [f32]);

/// The row operations of one instruction set.
#[derive(Clone, Copy)]
pub struct VMath {
    pub exp_sub_sum: ExpSubSumFn,
    pub scale_max: ScaleMaxFn,
    pub swiglu: SwigluFn,
}

const EXP_HI: f32 = 88.376_26;
const EXP_LO: f32 = -87.336_55;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two so `x - n·ln2` stays exact for |n| ≤ 128.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];

/// The same scheme one value at a time (the reference the SIMD lanes match).
pub fn exp_scalar(x: f32) -> f32 {
    let x = x.clamp(EXP_LO, EXP_HI);
    let n = (x * LOG2E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut y = P[0];
    for &p in &P[1..] {
        y = y * r + p;
    }
    let y = y * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

impl VMath {
    pub fn scalar() -> Self {
        Self { exp_sub_sum: scalar::exp_sub_sum, scale_max: scalar::scale_max, swiglu: scalar::swiglu }
    }
}

pub mod scalar {
    use super::exp_scalar;

    pub fn exp_sub_sum(x: &mut [f32], sub: f32) -> f32 {
        let mut sum = 0.0;
        for v in x {
            *v = exp_scalar(*v - sub);
            sum += *v;
        }
        sum
    }

    pub fn scale_max(x: &mut [f32], scale: f32) -> f32 {
        let mut max = f32::NEG_INFINITY;
        for v in x {
            *v *= scale;
            max = max.max(*v);
        }
        max
    }

    pub fn swiglu(a: &[f32], b: &[f32], out: &mut [f32]) {
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            *o = a / (1.0 + exp_scalar(-a)) * b;
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    //! 8 lanes with AVX2 + FMA; reached only through tables built after a
    //! run-time feature check.

    use super::{VMath, EXP_HI, EXP_LO, LN2_HI, LN2_LO, LOG2E, P};
    use std::arch::x86_64::*;

    pub fn vmath() -> VMath {
        VMath {
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            exp_sub_sum: |x, s| unsafe { exp_sub_sum(x, s) },
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            scale_max: |x, s| unsafe { scale_max(x, s) },
            // SAFETY: this table is only handed out for a CPU with the instructions the kernel uses (Kernels::for_features), and the kernel asserts the lengths it reads.
            swiglu: |a, b, o| unsafe { swiglu(a, b, o) },
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_LO)), _mm256_set1_ps(EXP_HI));
        let n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut y = _mm256_set1_ps(P[0]);
        for &p in &P[1..] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(p));
        }
        let y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        _mm256_mul_ps(y, _mm256_castsi256_ps(pow2))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        crate::dot::avx2::hsum(v)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp_sub_sum(x: &mut [f32], sub: f32) -> f32 {
        let n = x.len();
        let p = x.as_mut_ptr();
        let s = _mm256_set1_ps(sub);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), s));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        hsum(acc) + super::scalar::exp_sub_sum(&mut x[i..], sub)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn scale_max(x: &mut [f32], scale: f32) -> f32 {
        let n = x.len();
        let p = x.as_mut_ptr();
        let sc = _mm256_set1_ps(scale);
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i + 8 <= n {
            let v = _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), sc);
            _mm256_storeu_ps(p.add(i), v);
            m = _mm256_max_ps(m, v);
            i += 8;
        }
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
        let tail = super::scalar::scale_max(&mut x[i..], scale);
        lanes.iter().copied().fold(tail, f32::max)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn swiglu(a: &[f32], b: &[f32], out: &mut [f32]) {
        let n = out.len().min(a.len()).min(b.len());
        let (pa, pb, po) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i + 8 <= n {
            let va = _mm256_loadu_ps(pa.add(i));
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), va));
            let v = _mm256_div_ps(_mm256_mul_ps(va, _mm256_loadu_ps(pb.add(i))), _mm256_add_ps(one, e));
            _mm256_storeu_ps(po.add(i), v);
            i += 8;
        }
        super::scalar::swiglu(&a[i..n], &b[i..n], &mut out[i..n]);
    }
}

#[cfg(target_arch = "x86_64")]
pub mod avx512 {
    //! 16 lanes; used inside other AVX-512 kernels (attention).

    use super::{EXP_HI, EXP_LO, LN2_HI, LN2_LO, LOG2E, P};
    use std::arch::x86_64::*;

    /// `exp` of 16 lanes (same scheme and accuracy as the scalar reference).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn exp16(x: __m512) -> __m512 {
        let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_LO)), _mm512_set1_ps(EXP_HI));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(LOG2E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut y = _mm512_set1_ps(P[0]);
        for &p in &P[1..] {
            y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(p));
        }
        let y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        let pow2 = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)));
        _mm512_mul_ps(y, _mm512_castsi512_ps(pow2))
    }
}

#[cfg(target_arch = "aarch64")]
pub mod neon {
    //! 4 lanes with NEON (always present on aarch64).

    use super::{VMath, EXP_HI, EXP_LO, LN2_HI, LN2_LO, LOG2E, P};
    use std::arch::aarch64::*;

    pub fn vmath() -> VMath {
        VMath {
            exp_sub_sum: |x, s| unsafe { exp_sub_sum(x, s) },
            scale_max: |x, s| unsafe { scale_max(x, s) },
            swiglu: |a, b, o| unsafe { swiglu(a, b, o) },
        }
    }

    #[inline(always)]
    unsafe fn exp4(x: float32x4_t) -> float32x4_t {
        let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(EXP_LO)), vdupq_n_f32(EXP_HI));
        let n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(LOG2E)));
        let r = vfmsq_f32(x, n, vdupq_n_f32(LN2_HI));
        let r = vfmsq_f32(r, n, vdupq_n_f32(LN2_LO));
        let mut y = vdupq_n_f32(P[0]);
        for &p in &P[1..] {
            y = vfmaq_f32(vdupq_n_f32(p), y, r);
        }
        let y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), y, vmulq_f32(r, r));
        let pow2 = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
        vmulq_f32(y, vreinterpretq_f32_s32(pow2))
    }

    #[target_feature(enable = "neon")]
    unsafe fn exp_sub_sum(x: &mut [f32], sub: f32) -> f32 {
        let n = x.len();
        let p = x.as_mut_ptr();
        let s = vdupq_n_f32(sub);
        let mut acc = vdupq_n_f32(0.0);
        let mut i = 0;
        while i + 4 <= n {
            let e = exp4(vsubq_f32(vld1q_f32(p.add(i)), s));
            vst1q_f32(p.add(i), e);
            acc = vaddq_f32(acc, e);
            i += 4;
        }
        vaddvq_f32(acc) + super::scalar::exp_sub_sum(&mut x[i..], sub)
    }

    #[target_feature(enable = "neon")]
    unsafe fn scale_max(x: &mut [f32], scale: f32) -> f32 {
        let n = x.len();
        let p = x.as_mut_ptr();
        let mut m = vdupq_n_f32(f32::NEG_INFINITY);
        let mut i = 0;
        while i + 4 <= n {
            let v = vmulq_n_f32(vld1q_f32(p.add(i)), scale);
            vst1q_f32(p.add(i), v);
            m = vmaxq_f32(m, v);
            i += 4;
        }
        vmaxvq_f32(m).max(super::scalar::scale_max(&mut x[i..], scale))
    }

    #[target_feature(enable = "neon")]
    unsafe fn swiglu(a: &[f32], b: &[f32], out: &mut [f32]) {
        let n = out.len().min(a.len()).min(b.len());
        let (pa, pb, po) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
        let mut i = 0;
        while i + 4 <= n {
            let va = vld1q_f32(pa.add(i));
            let e = exp4(vnegq_f32(va));
            let v = vdivq_f32(vmulq_f32(va, vld1q_f32(pb.add(i))), vaddq_f32(vdupq_n_f32(1.0), e));
            vst1q_f32(po.add(i), v);
            i += 4;
        }
        super::scalar::swiglu(&a[i..n], &b[i..n], &mut out[i..n]);
    }
}
