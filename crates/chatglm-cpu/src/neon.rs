//! NEON kernels (aarch64) for the decode hot paths: packed q4_0 and q8_0
//! mat-vec and 4×2 tiles, f32/f16 dot products. Everything else keeps the
//! scalar reference, which the compiler vectorises for NEON on its own.
//!
//! Integer products use `sdot` where the CPU has the dot-product extension
//! (Armv8.2+: Graviton 2+, Apple M, Cortex-A76+), else `smull` + pairwise
//! adds. `sdot` and the f16 → f32 conversion are written as inline assembly
//! because their Rust intrinsics are not stable yet. Only reached through
//! tables built after a run-time feature check.

use crate::features::Kernels;
use crate::packed::{PackedKernels, Q8Quad};
use crate::packed_q8::{PackedQ8_0Kernels, Q8WeightQuad};
use half::f16;
use std::arch::aarch64::*;

/// The NEON table; `dotprod`: the CPU has `sdot`.
pub(crate) fn kernels(dotprod: bool) -> Kernels {
    let scalar = Kernels::scalar();
    let (packed_q4_0, packed_q8_0): (PackedKernels<[u8; 16]>, PackedQ8_0Kernels) = if dotprod {
        (
            PackedKernels {
                dot: |s, q, x| unsafe { q4_dot::<true>(s, q, x) },
                t2: |s, q, x, n, o| unsafe { q4_t2::<true>(s, q, x, n, o) },
            },
            PackedKernels {
                dot: |s, q, x| unsafe { q8_dot::<true>(s, q, x) },
                t2: |s, q, x, n, o| unsafe { q8_t2::<true>(s, q, x, n, o) },
            },
        )
    } else {
        (
            PackedKernels {
                dot: |s, q, x| unsafe { q4_dot::<false>(s, q, x) },
                t2: |s, q, x, n, o| unsafe { q4_t2::<false>(s, q, x, n, o) },
            },
            PackedKernels {
                dot: |s, q, x| unsafe { q8_dot::<false>(s, q, x) },
                t2: |s, q, x, n, o| unsafe { q8_t2::<false>(s, q, x, n, o) },
            },
        )
    };
    Kernels {
        name: if dotprod { "neon-dotprod" } else { "neon" },
        dot_f32: |w, x| unsafe { dot_f32(w, x) },
        dot_f16: |w, x| unsafe { dot_f16(w, x) },
        packed_q4_0,
        packed_q8_0,
        vmath: crate::vmath::neon::vmath(),
        ..scalar
    }
}

/// `acc + Σ a·b` over 16 signed bytes, in 4 lanes (which lane holds which
/// bytes differs between the two paths; callers only use the lane total).
#[inline(always)]
unsafe fn dot16<const DOT: bool>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    if DOT {
        let mut r = acc;
        // SAFETY: only called from kernels selected when the CPU reports dotprod.
        std::arch::asm!(
            ".arch_extension dotprod",
            "sdot {r:v}.4s, {a:v}.16b, {b:v}.16b",
            r = inout(vreg) r,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
        r
    } else {
        let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let hi = vmull_high_s8(a, b);
        vpadalq_s16(vpadalq_s16(acc, lo), hi)
    }
}

/// 4 f16 values at `p` as f32.
#[inline(always)]
unsafe fn f16x4(p: *const f16) -> float32x4_t {
    let h = vld1_u16(p as *const u16);
    let r: float32x4_t;
    std::arch::asm!("fcvtl {r:v}.4s, {h:v}.4h", r = out(vreg) r, h = in(vreg) h, options(pure, nomem, nostack, preserves_flags));
    r
}

/// `[Σ lanes of v0, of v1, of v2, of v3]`.
#[inline(always)]
unsafe fn block_sums(v: [int32x4_t; 4]) -> float32x4_t {
    vcvtq_f32_s32(vpaddq_s32(vpaddq_s32(v[0], v[1]), vpaddq_s32(v[2], v[3])))
}

/// Weight bytes of one quad as signed values: `[lo of block 0..4, hi of block 0..4]`.
type QuadWeights = [int8x16_t; 8];

#[inline(always)]
unsafe fn q4_weights(qs: *const [u8; 16]) -> QuadWeights {
    let mask = vdupq_n_u8(0x0f);
    let mut w = [vdupq_n_s8(0); 8];
    for m in 0..4 {
        let v = vld1q_u8((*qs.add(m)).as_ptr());
        w[m] = vreinterpretq_s8_u8(vandq_u8(v, mask));
        w[4 + m] = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
    }
    w
}

#[inline(always)]
unsafe fn q8_weights(quad: &Q8WeightQuad) -> QuadWeights {
    let flip = vdupq_n_u8(0x80);
    let mut w = [vdupq_n_s8(0); 8];
    for (k, wk) in w.iter_mut().enumerate() {
        *wk = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(quad.as_ptr().add(16 * k)), flip));
    }
    w
}

/// The 4 block sums `Σ w·x` of a quad, times the activation scales.
#[inline(always)]
unsafe fn quad_products<const DOT: bool>(w: &QuadWeights, x: &Q8Quad) -> float32x4_t {
    let mut s = [vdupq_n_s32(0); 4];
    for (m, sm) in s.iter_mut().enumerate() {
        *sm = dot16::<DOT>(*sm, w[m], vld1q_s8(x.lo.as_ptr().add(16 * m)));
        *sm = dot16::<DOT>(*sm, w[4 + m], vld1q_s8(x.hi.as_ptr().add(16 * m)));
    }
    vmulq_f32(block_sums(s), vld1q_f32(x.d.as_ptr()))
}

#[target_feature(enable = "neon")]
unsafe fn q4_dot<const DOT: bool>(scales: &[f16], qs: &[[u8; 16]], x: &[Q8Quad]) -> f32 {
    let nq = x.len().min(qs.len() / 4);
    assert!(scales.len() >= 4 * nq);
    let (mut acc, mut corr) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    for q in 0..nq {
        let xq = x.get_unchecked(q);
        crate::prefetch::ahead(qs.as_ptr().add(4 * q));
        let dw = f16x4(scales.as_ptr().add(4 * q));
        acc = vfmaq_f32(acc, quad_products::<DOT>(&q4_weights(qs.as_ptr().add(4 * q)), xq), dw);
        corr = vfmaq_f32(corr, dw, vld1q_f32(xq.dsum.as_ptr()));
    }
    vaddvq_f32(acc) - 8.0 * vaddvq_f32(corr)
}

#[target_feature(enable = "neon")]
unsafe fn q4_t2<const DOT: bool>(scales: &[f16], qs: &[[u8; 16]], x: &[Q8Quad], nq: usize, out: &mut [f32]) {
    let nb = 4 * nq;
    assert!(qs.len() >= 4 * nb && scales.len() >= 4 * nb && x.len() >= 2 * nq && out.len() >= 8);
    let mut acc = [[vdupq_n_f32(0.0); 2]; 4];
    let mut corr = [[vdupq_n_f32(0.0); 2]; 4];
    for q in 0..nq {
        let xs = [x.get_unchecked(q), x.get_unchecked(nq + q)];
        for r in 0..4 {
            let b = r * nb + 4 * q;
            let w = q4_weights(qs.as_ptr().add(b));
            let dw = f16x4(scales.as_ptr().add(b));
            for t in 0..2 {
                acc[r][t] = vfmaq_f32(acc[r][t], quad_products::<DOT>(&w, xs[t]), dw);
                corr[r][t] = vfmaq_f32(corr[r][t], dw, vld1q_f32(xs[t].dsum.as_ptr()));
            }
        }
    }
    for r in 0..4 {
        for t in 0..2 {
            out[r * 2 + t] = vaddvq_f32(acc[r][t]) - 8.0 * vaddvq_f32(corr[r][t]);
        }
    }
}

#[target_feature(enable = "neon")]
unsafe fn q8_dot<const DOT: bool>(scales: &[f16], qs: &[Q8WeightQuad], x: &[Q8Quad]) -> f32 {
    let nq = x.len().min(qs.len());
    assert!(scales.len() >= 4 * nq);
    let mut acc = vdupq_n_f32(0.0);
    for q in 0..nq {
        let p = qs.as_ptr().add(q);
        crate::prefetch::ahead(p);
        crate::prefetch::ahead(p.cast::<u8>().wrapping_add(64));
        let dw = f16x4(scales.as_ptr().add(4 * q));
        acc = vfmaq_f32(acc, quad_products::<DOT>(&q8_weights(qs.get_unchecked(q)), x.get_unchecked(q)), dw);
    }
    vaddvq_f32(acc)
}

#[target_feature(enable = "neon")]
unsafe fn q8_t2<const DOT: bool>(scales: &[f16], qs: &[Q8WeightQuad], x: &[Q8Quad], nq: usize, out: &mut [f32]) {
    assert!(qs.len() >= 4 * nq && scales.len() >= 16 * nq && x.len() >= 2 * nq && out.len() >= 8);
    let mut acc = [[vdupq_n_f32(0.0); 2]; 4];
    for q in 0..nq {
        let xs = [x.get_unchecked(q), x.get_unchecked(nq + q)];
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let w = q8_weights(qs.get_unchecked(r * nq + q));
            let dw = f16x4(scales.as_ptr().add(4 * (r * nq + q)));
            for t in 0..2 {
                acc_r[t] = vfmaq_f32(acc_r[t], quad_products::<DOT>(&w, xs[t]), dw);
            }
        }
    }
    for r in 0..4 {
        for t in 0..2 {
            out[r * 2 + t] = vaddvq_f32(acc[r][t]);
        }
    }
}

/// A float weight type the NEON dot loads 4 at a time as f32.
trait Load4: Copy {
    unsafe fn load4(p: *const Self) -> float32x4_t;
    fn f32(self) -> f32;
}
impl Load4 for f32 {
    #[inline(always)]
    unsafe fn load4(p: *const f32) -> float32x4_t {
        vld1q_f32(p)
    }
    fn f32(self) -> f32 {
        self
    }
}
impl Load4 for f16 {
    #[inline(always)]
    unsafe fn load4(p: *const f16) -> float32x4_t {
        f16x4(p)
    }
    fn f32(self) -> f32 {
        self.to_f32()
    }
}

#[inline(always)]
unsafe fn dot_float<W: Load4>(w: &[W], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (pw, px) = (w.as_ptr(), x.as_ptr());
    // 8 chains of 4 lanes: enough independent sums to hide the FMA latency
    // and to keep the f32 rounding of each partial sum small.
    let mut acc = [vdupq_n_f32(0.0); 8];
    let mut i = 0;
    while i + 32 <= n {
        crate::prefetch::ahead(pw.add(i));
        for (k, a) in acc.iter_mut().enumerate() {
            *a = vfmaq_f32(*a, W::load4(pw.add(i + 4 * k)), vld1q_f32(px.add(i + 4 * k)));
        }
        i += 32;
    }
    let mut v = acc[0];
    for a in &acc[1..] {
        v = vaddq_f32(v, *a);
    }
    let mut s = vaddvq_f32(v);
    while i < n {
        s += w[i].f32() * x[i];
        i += 1;
    }
    s
}

#[target_feature(enable = "neon")]
unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    dot_float(w, x)
}

#[target_feature(enable = "neon")]
unsafe fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    dot_float(w, x)
}
