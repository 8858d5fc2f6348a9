//! Run-time instruction-set detection and the kernel table it selects.

use crate::dot;
use crate::tile::TileKernels;
use std::sync::OnceLock;

/// Instruction-set extensions the kernels care about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuFeatures {
    pub avx2: bool,
    pub fma: bool,
    pub f16c: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vl: bool,
    pub avx512vnni: bool,
    /// AVX-VNNI: the 256-bit, VEX-encoded `vpdpbusd` of CPUs that may lack
    /// AVX-512 (Intel cores since Alder Lake).
    pub avxvnni: bool,
    pub neon: bool,
    /// Armv8.2 `sdot`/`udot`.
    pub dotprod: bool,
}

impl CpuFeatures {
    /// The features present in both `self` and `other`.
    pub fn and(self, other: Self) -> Self {
        Self {
            avx2: self.avx2 && other.avx2,
            fma: self.fma && other.fma,
            f16c: self.f16c && other.f16c,
            avx512f: self.avx512f && other.avx512f,
            avx512bw: self.avx512bw && other.avx512bw,
            avx512vl: self.avx512vl && other.avx512vl,
            avx512vnni: self.avx512vnni && other.avx512vnni,
            avxvnni: self.avxvnni && other.avxvnni,
            neon: self.neon && other.neon,
            dotprod: self.dotprod && other.dotprod,
        }
    }

    /// Detects the running CPU's features.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            Self {
                avx2: is_x86_feature_detected!("avx2"),
                fma: is_x86_feature_detected!("fma"),
                f16c: is_x86_feature_detected!("f16c"),
                avx512f: is_x86_feature_detected!("avx512f"),
                avx512bw: is_x86_feature_detected!("avx512bw"),
                avx512vl: is_x86_feature_detected!("avx512vl"),
                avx512vnni: is_x86_feature_detected!("avx512vnni"),
                avxvnni: is_x86_feature_detected!("avxvnni"),
                neon: false,
                dotprod: false,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            Self {
                neon: std::arch::is_aarch64_feature_detected!("neon"),
                dotprod: std::arch::is_aarch64_feature_detected!("dotprod"),
                ..Self::default()
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            Self::default()
        }
    }

    /// These features without the sets above `cap` (`scalar`, `avx2`,
    /// `avx2-vnni`, `neon`; anything else leaves them all).
    pub fn capped(self, cap: &str) -> Self {
        let no512 = Self { avx512f: false, avx512bw: false, avx512vl: false, avx512vnni: false, ..self };
        match cap {
            "scalar" => Self::default(),
            "avx2" => Self { avxvnni: false, ..no512 },
            "avx2-vnni" => no512,
            "neon" => Self { dotprod: false, ..self },
            _ => self,
        }
    }

    /// True when the AVX-512 VNNI kernels can run (on top of the AVX2 set).
    pub fn has_avx512_vnni_set(&self) -> bool {
        self.has_avx2_set() && self.avx512f && self.avx512bw && self.avx512vl && self.avx512vnni
    }

    /// True when the AVX-VNNI kernels can run (on top of the AVX2 set).
    pub fn has_avx_vnni_set(&self) -> bool {
        self.has_avx2_set() && self.avxvnni
    }

    /// True when the AVX2 kernels (which also need FMA and F16C) can run.
    pub fn has_avx2_set(&self) -> bool {
        self.avx2 && self.fma && self.f16c
    }
}

/// Dot-product kernels: `f(weights_row, activations) -> f32`.
pub type DotF32 = fn(&[f32], &[f32]) -> f32;
pub type DotF16 = fn(&[half::f16], &[f32]) -> f32;
/// f16 weights against f16 activations (the mat-vec of f16 matrices where it
/// streams faster than with f32 activations).
pub type DotF16H = fn(&[half::f16], &[half::f16]) -> f32;
pub type DotBf16 = fn(&[half::bf16], &[f32]) -> f32;
pub type DotQ8_0 = fn(&[dot::BlockQ8_0], &[dot::BlockQ8_0]) -> f32;
pub type DotQ4_0 = fn(&[dot::BlockQ4_0], &[dot::BlockQ8_0]) -> f32;
pub type DotQ4_1 = fn(&[dot::BlockQ4_1], &[dot::BlockQ8_0]) -> f32;
pub type DotQ5_0 = fn(&[dot::BlockQ5_0], &[dot::BlockQ8_0]) -> f32;
pub type DotQ5_1 = fn(&[dot::BlockQ5_1], &[dot::BlockQ8_0]) -> f32;
/// `acc += a · v` (attention's weighted sum of values).
pub type AxpyF32 = fn(f32, &[f32], &mut [f32]);
pub type AxpyF16 = fn(f32, &[half::f16], &mut [f32]);
pub type QuantizeRowQ8_0 = fn(&[f32], &mut [dot::BlockQ8_0]);

/// The function table for one instruction set. Chosen once; the hot loops
/// call through it without re-checking features.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub name: &'static str,
    pub dot_f32: DotF32,
    pub dot_f16: DotF16,
    /// Set where one-token f16 products run with activations rounded to f16:
    /// half the activation bytes keep x in L1 beside the weight stream (AVX2
    /// and AVX-512 machines: +10–40% on the 6B shapes, 2 threads,
    /// `kernel_bench`). The rounding costs ~1e-3 of the logits (f16 weights
    /// are rounded as much already).
    pub dot_f16_h: Option<DotF16H>,
    pub dot_bf16: DotBf16,
    pub dot_q8_0: DotQ8_0,
    pub dot_q4_0: DotQ4_0,
    pub dot_q4_1: DotQ4_1,
    pub dot_q5_0: DotQ5_0,
    pub dot_q5_1: DotQ5_1,
    pub quantize_row_q8_0: QuantizeRowQ8_0,
    pub axpy_f32: AxpyF32,
    pub axpy_f16: AxpyF16,
    pub tiles_f32: TileKernels<f32, f32>,
    pub tiles_f16: TileKernels<half::f16, f32>,
    pub tiles_bf16: TileKernels<half::bf16, f32>,
    pub tiles_q8_0: TileKernels<dot::BlockQ8_0, dot::BlockQ8_0>,
    pub tiles_q4_0: TileKernels<dot::BlockQ4_0, dot::BlockQ8_0>,
    pub packed_q4_0: crate::packed::PackedQ4_0Kernels,
    pub packed_q8_0: crate::packed_q8::PackedQ8_0Kernels,
    /// `packed_q8_0` for weights packed as signed bytes (see [`crate::packed_q8`]).
    pub packed_q8_0_signed: crate::packed_q8::PackedQ8_0Kernels,
    /// Whether q8_0 weights are packed signed for this table: the layout its
    /// kernels run faster on (AVX2 without VNNI: no sign-bit flip a vector).
    pub q8_0_signed: bool,
    pub attention_f32: crate::attention::AttentionKernels<f32>,
    pub attention_f16: crate::attention::AttentionKernels<half::f16>,
    pub attention_q8_0: crate::attention::AttentionKernels<dot::BlockQ8_0>,
    pub vmath: crate::vmath::VMath,
}

impl Kernels {
    /// The portable reference kernels.
    pub fn scalar() -> Self {
        Self {
            name: "scalar",
            dot_f32: dot::scalar::dot_f32,
            dot_f16: dot::scalar::dot_f16,
            dot_f16_h: None,
            dot_bf16: dot::scalar::dot_bf16,
            dot_q8_0: dot::scalar::dot_q8_0,
            dot_q4_0: dot::scalar::dot_q4_0,
            dot_q4_1: dot::scalar::dot_q4_1,
            dot_q5_0: dot::scalar::dot_q5_0,
            dot_q5_1: dot::scalar::dot_q5_1,
            quantize_row_q8_0: dot::scalar::quantize_row_q8_0,
            axpy_f32: dot::scalar::axpy_f32,
            axpy_f16: dot::scalar::axpy_f16,
            tiles_f32: TileKernels::scalar(),
            tiles_f16: TileKernels::scalar(),
            tiles_bf16: TileKernels::scalar(),
            tiles_q8_0: TileKernels::scalar(),
            tiles_q4_0: TileKernels::scalar(),
            packed_q4_0: crate::packed::PackedQ4_0Kernels::scalar(),
            packed_q8_0: crate::packed_q8::PackedQ8_0Kernels::scalar(),
            packed_q8_0_signed: crate::packed_q8::PackedQ8_0Kernels::scalar_signed(),
            q8_0_signed: false,
            attention_f32: crate::attention::AttentionKernels::scalar(),
            attention_f16: crate::attention::AttentionKernels::scalar(),
            attention_q8_0: crate::attention::AttentionKernels::scalar_q8_0(),
            vmath: crate::vmath::VMath::scalar(),
        }
    }

    /// The best kernels for `features`, limited to what this CPU has: asking
    /// for a set the CPU lacks gives a smaller set, never instructions it
    /// cannot run (the tables' kernels are safe to call only on such a CPU).
    pub fn for_features(features: CpuFeatures) -> Self {
        let features = features.and(CpuFeatures::detect());
        #[cfg(target_arch = "x86_64")]
        if features.has_avx512_vnni_set() {
            // AVX2 everywhere, plus VNNI where int8 dot products dominate.
            let base = dot::avx2::kernels();
            return Kernels {
                name: "avx512-vnni",
                dot_f16: crate::tile512::dot_f16_fn(),
                // The AVX2 f16×f16 mat-vec streams faster here too (27392×4096,
                // 2 threads: 24–26 → 30–36 GB/s; 4096×13696: 21–22 → 23–26).
                dot_f16_h: base.dot_f16_h,
                packed_q4_0: crate::packed::avx512::kernels(),
                packed_q8_0: crate::packed_q8::avx512::kernels(),
                q8_0_signed: false,
                tiles_f32: TileKernels { t4: Some(crate::tile512::f32_t4_fn()), ..base.tiles_f32 },
                tiles_f16: TileKernels { t4: Some(crate::tile512::f16_t4_fn()), ..base.tiles_f16 },
                tiles_bf16: TileKernels { t4: Some(crate::tile512::bf16_t4_fn()), ..base.tiles_bf16 },
                tiles_q8_0: TileKernels { t4: Some(crate::tile512::q8_0_t4_fn()), ..base.tiles_q8_0 },
                attention_f32: crate::attention::AttentionKernels {
                    group: Some(crate::attention512::f32_group()),
                    ..base.attention_f32
                },
                attention_f16: crate::attention::AttentionKernels {
                    group: Some(crate::attention512::f16_group()),
                    ..base.attention_f16
                },
                attention_q8_0: crate::attention::AttentionKernels {
                    group: Some(crate::attention512::q8_0_group()),
                    ..base.attention_q8_0
                },
                ..base
            };
        }
        #[cfg(target_arch = "x86_64")]
        if features.has_avx_vnni_set() {
            // AVX2, with `vpdpbusd` in the packed q4_0 and q8_0 products
            // (CPUs with AVX-VNNI but no AVX-512).
            return Kernels {
                name: "avx2-vnni",
                packed_q4_0: crate::packed::avxvnni::kernels(),
                packed_q8_0: crate::packed_q8::avxvnni::kernels(),
                q8_0_signed: false,
                ..dot::avx2::kernels()
            };
        }
        #[cfg(target_arch = "x86_64")]
        if features.has_avx2_set() {
            return dot::avx2::kernels();
        }
        #[cfg(target_arch = "aarch64")]
        if features.neon {
            return crate::neon::kernels(features.dotprod);
        }
        let _ = features;
        Self::scalar()
    }

    /// The best kernels for this CPU, detected once per process.
    ///
    /// `CHATGLM_CPU_KERNELS=scalar|avx2|avx2-vnni|neon` caps the choice at that set
    /// (for benchmarking a smaller machine's code path, or ruling a kernel
    /// out when debugging); a set the CPU lacks is not enabled by it.
    pub fn detect() -> &'static Kernels {
        static KERNELS: OnceLock<Kernels> = OnceLock::new();
        KERNELS.get_or_init(|| {
            let cap = std::env::var("CHATGLM_CPU_KERNELS").unwrap_or_default();
            Self::for_features(CpuFeatures::detect().capped(&cap))
        })
    }
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels").field("name", &self.name).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_keep_the_sets_below_them() {
        let all = CpuFeatures {
            avx2: true,
            fma: true,
            f16c: true,
            avx512f: true,
            avx512bw: true,
            avx512vl: true,
            avx512vnni: true,
            avxvnni: true,
            neon: false,
            dotprod: false,
        };
        let avx2 = all.capped("avx2");
        assert!(avx2.has_avx2_set() && !avx2.has_avx_vnni_set() && !avx2.has_avx512_vnni_set());
        let vnni = all.capped("avx2-vnni");
        assert!(vnni.has_avx_vnni_set() && !vnni.has_avx512_vnni_set());
        assert!(all.capped("").has_avx512_vnni_set() && !all.capped("scalar").has_avx2_set());
    }
}
