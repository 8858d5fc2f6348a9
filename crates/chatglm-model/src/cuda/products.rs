//! Matrix products: the mat-vec kernels for steps of a few tokens, cuBLASLt
//! for larger ones, and the 16-bit inputs the latter take.

use super::{ensure, lock, CudaActivations, CudaBackend, CudaMatrix, CudaVector};
use chatglm_cuda::{device_ptr, CudaError, DType, GemvMode};

impl CudaBackend {
    /// `out = x · wᵀ` by mat-vec (steps of at most `gemv_max_tokens`) or
    /// cuBLASLt, in `mode`; with `norm` (mat-vec steps only) x is
    /// RMS-normalised inside the mat-vec.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn product(
        &self,
        op: &str,
        w: &CudaMatrix,
        bias: Option<&CudaVector>,
        x: &CudaActivations,
        out: &mut CudaActivations,
        mode: GemvMode,
        norm: Option<(&CudaVector, f32)>,
    ) -> Result<(), CudaError> {
        let n = x.rows;
        if x.cols != w.cols {
            return Err(CudaError::Invalid {
                op: op.into(),
                message: format!("x has {} columns, w {}", x.cols, w.cols),
            });
        }
        let out_cols = if mode == GemvMode::SwiGlu { w.rows / 2 } else { w.rows };
        // A large half-precision product takes x's 16-bit copy when it has one.
        let half_x = (n > self.gemv_max_tokens && w.dtype != DType::F32 && x.half_of == Some(w.dtype))
            .then(|| x.half.as_ref().map(device_ptr))
            .flatten();
        let xp = match half_x {
            Some(p) => p,
            None => Self::input(x, n, w.cols, op)?,
        };
        if mode == GemvMode::Accumulate {
            Self::input(out, n, out_cols, op)?;
        }
        let op_ = Self::output(out, n, out_cols, op)?;
        let wp = Self::matrix_ptr(w, op)?;
        let bp = match bias {
            Some(b) => Self::vector_ptr(b, w.rows, op)?,
            None => 0,
        };
        let norm = match norm {
            Some((v, eps)) => Some((Self::vector_ptr(v, w.cols, op)?, eps)),
            None => None,
        };
        // The product after attention may start its weights towards L2 while
        // the attention runs (the memory is idle then at short contexts);
        // others use the device default.
        let after_attention = std::mem::take(&mut lock(&self.step).after_attention);
        if n <= self.gemv_max_tokens {
            let prefetch = after_attention.then_some(self.prefetch_after_attention).flatten();
            // SAFETY: sizes checked above: w rows×cols, x n×cols, out n×out_cols,
            // bias rows, norm weights cols.
            return unsafe { self.gpu.gemv(wp, w.dtype, xp, bp, op_, n, w.rows, w.cols, mode, norm, prefetch) };
        }
        if norm.is_some() {
            return Err(CudaError::Invalid { op: op.into(), message: "a fused norm needs ≤ 8 tokens".into() });
        }
        if mode == GemvMode::SwiGlu {
            return Err(CudaError::Invalid {
                op: op.into(),
                message: "SwiGLU products of > 8 tokens go through linear".into(),
            });
        }
        let xin = if w.dtype == DType::F32 || half_x.is_some() {
            xp
        } else {
            let mut st = lock(&self.step);
            let p = ensure(&self.gpu, &mut st.half_x, n * w.cols, "16-bit activations")?;
            // SAFETY: x holds n×cols f32 (checked); half_x was just sized to n×cols.
            unsafe { self.gpu.convert(xp, p, n * w.cols, w.dtype)? };
            p
        };
        // SAFETY: w rows×cols, xin n×cols in w's type, out n×rows, bias rows
        // (checked above).
        unsafe { self.gpu.gemm(wp, w.dtype, xin, op_, DType::F32, n, w.rows, w.cols, mode == GemvMode::Accumulate, bp) }
    }

    /// RMSNorm of `x` written only as `normed`'s 16-bit copy in `dtype` (the
    /// input of a large half-precision product).
    pub(super) fn rms_norm_to_half(
        &self,
        x: &CudaActivations,
        norm: &CudaVector,
        eps: f32,
        normed: &mut CudaActivations,
        dtype: DType,
    ) {
        self.run("rms_norm", || {
            let xp = Self::input(x, x.rows, x.cols, "rms_norm")?;
            let wp = Self::vector_ptr(norm, x.cols, "rms_norm")?;
            Self::check_capacity(normed, x.rows, x.cols, "rms_norm")?;
            let hp = self.half_output(normed, dtype)?;
            // SAFETY: x rows×cols f32, norm cols, half rows×cols (ensured).
            unsafe { self.gpu.rms_norm_half(xp, wp, hp, x.rows, x.cols, eps, dtype) }
        });
    }
}
