//! Matrix products: the mat-vec kernels for steps of a few tokens, cuBLASLt
//! for larger ones, and the 16-bit inputs the latter take.

use super::handoff::{self, CodesKind};
use super::{ensure, lock, CudaActivations, CudaBackend, CudaMatrix, CudaVector};
use chatglm_cuda::quant::{ActivationForm, OneTokenCodes, TiledPtr, QMMA_MAX_TOKENS};
use chatglm_cuda::{device_ptr, CudaError, DType, GemvMode, Gpu, RopeArgs};

/// Weights dequantized at once for a large step's cuBLAS product (f16
/// elements): 32 MB, a few row slices of the largest matrices.
const DEQUANT_ELEMENTS: usize = 16 << 20;

/// Steps of up to this many tokens take quantized weights through the
/// quantized products, 64 tokens a launch (a decode step of 128 sequences:
/// two launches per product, measured 3× faster on the H200 than the
/// dequantize + cuBLAS path, which serves larger prompt chunks).
pub(super) const QMMA_CHUNKED_TOKENS: usize = 4 * QMMA_MAX_TOKENS;

/// Which steps' quantized products of 9..=64 tokens take their activations
/// as f16 (Marlin's arithmetic: each weight dequantized to f16 once for all
/// the step's tokens, f32 sums) rather than as q8_0 codes (the CPU's
/// arithmetic): `CHATGLM_GPU_ACTIVATIONS`. `batched` is the default since
/// session 25: at 32 int4 sequences the f16 form is ~20% faster (9,251 against
/// 7,666 tok/s, bench/RESULTS.md run 173; 3–5% in session 17, when q8_0 was
/// the default) with finer activations (11 significant bits against 8), while a
/// single conversation — its prompt and its decode — keeps the CPU's
/// arithmetic bit for bit. The price: a sequence decoded beside 8 or more
/// others takes f16 activations, so its tokens may differ from decoding it
/// alone (as in other batching engines); `q8` restores batch invariance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActivationPolicy {
    /// Every step in q8_0 codes: the CPU backend's arithmetic.
    Q8,
    /// Decode steps of several sequences (one token each) in f16; one
    /// sequence's steps (its prompt, its decode) keep the CPU's arithmetic.
    Batched,
    /// Every step of 9..=64 tokens a launch in f16.
    F16,
}

impl ActivationPolicy {
    pub(crate) fn parse(v: &str) -> Option<Self> {
        match v.trim() {
            "q8" | "q8_0" => Some(Self::Q8),
            "" | "batched" => Some(Self::Batched),
            "f16" => Some(Self::F16),
            _ => None,
        }
    }

    pub(crate) fn from_env() -> Result<Self, crate::ModelError> {
        let v = std::env::var("CHATGLM_GPU_ACTIVATIONS").unwrap_or_default();
        Self::parse(&v)
            .ok_or_else(|| super::backend_err("CHATGLM_GPU_ACTIVATIONS", format!("{v:?}: expected q8, batched or f16")))
    }

    /// Whether a step of `sequences` sequences (`one_token_each`: a decode
    /// step) takes f16 activations.
    pub(crate) fn f16_for(self, sequences: usize, one_token_each: bool) -> bool {
        match self {
            Self::Batched => one_token_each && sequences > 1,
            Self::Q8 => false,
            Self::F16 => true,
        }
    }
}

impl CudaBackend {
    /// `chatglm_cuda::Gpu::set_qmmx_residual`: the residual and QKV products
    /// of 17–32-token f16 steps on the qmmx module's kernels (the default) or
    /// the qmma module's — the same bits.
    pub fn set_qmmx_residual(&self, on: bool) {
        self.gpu.set_qmmx_residual(on);
    }

    /// Whether a step of `n` tokens takes `w` through the mat-vec kernels
    /// (float or quantized) rather than cuBLAS.
    pub(super) fn small_step(&self, w: &CudaMatrix, n: usize) -> bool {
        if w.quant.is_some() {
            n <= QMMA_CHUNKED_TOKENS
        } else {
            n <= self.gemv_max_tokens
        }
    }

    /// A product with quantized weights of at most [`QMMA_CHUNKED_TOKENS`]
    /// tokens, [`QMMA_MAX_TOKENS`] a launch: the activations are quantized
    /// inside the product where they fit its shared memory, else by a launch
    /// of their own (with the norm).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn quantized_product(
        &self,
        op: &str,
        w: TiledPtr,
        bias: u64,
        x: &CudaActivations,
        out: u64,
        mode: GemvMode,
        norm: Option<(u64, f32)>,
        qkv: Option<(DType, RopeArgs, chatglm_cuda::AttentionDims, usize)>,
    ) -> Result<(), CudaError> {
        let n = x.rows;
        let cols = w.shape.cols;
        let xp = Self::input(x, n, cols, op)?;
        let swiglu = mode == GemvMode::SwiGlu && qkv.is_none();
        let out_cols = if swiglu { w.shape.rows / 2 } else { w.shape.rows };
        let codes = self.one_token_codes(n, xp, cols, norm.is_some(), swiglu, out, out_cols)?;
        if n > QMMA_MAX_TOKENS {
            // Token chunks: each reads the weights again; x, out and the QKV
            // tokens' positions advance by the chunk.
            let out_cols = if mode == GemvMode::SwiGlu { w.shape.rows / 2 } else { w.shape.rows };
            for start in (0..n).step_by(QMMA_MAX_TOKENS) {
                let m = QMMA_MAX_TOKENS.min(n - start);
                let chunk_qkv = qkv.map(|(kv, mut rope, dims, layer)| {
                    rope.positions += (start * 4) as u64;
                    rope.seq_of_token += (start * 4) as u64;
                    (kv, rope, dims, layer)
                });
                let xc = xp + (start * cols * 4) as u64;
                let oc = out + (start * out_cols * 4) as u64;
                self.quantized_chunk(w, bias, xc, m, oc, mode, norm, chunk_qkv, OneTokenCodes::default(), false)?;
            }
            return Ok(());
        }
        self.quantized_chunk(w, bias, xp, n, out, mode, norm, qkv, codes, true)
    }

    /// One launch's worth of [`Self::quantized_product`]: `n` ≤
    /// [`QMMA_MAX_TOKENS`] tokens of f32 x at `xp` (`codes`: a one-token
    /// product's q8_0 hand-off, handoff.rs; `whole`: the step's whole
    /// product, not one of its token chunks, so a grouped step may hand its
    /// output on).
    #[allow(clippy::too_many_arguments)]
    fn quantized_chunk(
        &self,
        w: TiledPtr,
        bias: u64,
        xp: u64,
        n: usize,
        out: u64,
        mode: GemvMode,
        norm: Option<(u64, f32)>,
        qkv: Option<(DType, RopeArgs, chatglm_cuda::AttentionDims, usize)>,
        codes: OneTokenCodes,
        whole: bool,
    ) -> Result<(), CudaError> {
        let cols = w.shape.cols;
        if self.gpu.qmma_quantizes_in_block(n, cols) {
            // Decode-sized steps start the next product's weights towards L2
            // (not prompt chunks: the same product runs again after them).
            let next = lock(&self.weight_chain).after(w.base, self.prefetch_next);
            // SAFETY: x n×cols f32, out and bias sized by the caller, norm cols.
            return unsafe { self.gpu.qmma(w, xp, norm, None, n, bias, out, mode, qkv, next, codes) };
        }
        let (q_bytes, s_bytes) = Gpu::quantized_x_bytes(n, cols);
        let format = w.shape.format;
        let mut st = lock(&self.step);
        let f16 = st.f16_activations && self.gpu.f16_activations_supported(n, format);
        let form = if f16 { ActivationForm::F16 } else { ActivationForm::Q8 };
        // A grouped SwiGLU step before this one may have written x in the
        // form quantize_x would (handoff.rs); a grouped SwiGLU step writes
        // its output so for the product after it.
        let handoff = whole && self.handoff.load(std::sync::atomic::Ordering::Relaxed);
        let kind = CodesKind::Step { n, f16, format };
        let grouped = handoff && self.gpu.step_codes_supported(n, format, form);
        // The norm fold (handoff.rs): between the residual products and the
        // normed ones of grouped f16 steps.
        let fold = grouped && f16 && self.norm_fold.load(std::sync::atomic::Ordering::Relaxed);
        let handed = if handoff && norm.is_none() {
            if grouped {
                st.handoff.note_consumer(cols, format);
            }
            st.handoff.take_for(xp, cols, kind)
        } else {
            None
        };
        let folded = match norm {
            Some((g, eps)) if fold => {
                st.handoff.learn_fold(xp, g);
                st.handoff.take_for(xp, cols, CodesKind::Fold { n, norm: g }).map(|c| (c, eps))
            }
            _ => None,
        };
        let rows = w.shape.rows;
        let out_cols = rows / 2;
        let mut codes = if grouped
            && mode == GemvMode::SwiGlu
            && qkv.is_none()
            && out_cols.is_multiple_of(chatglm_cuda::quant::BLOCK)
        {
            let output = handoff::hand_step_codes(&self.gpu, &mut st, out, out_cols, (n, f16, format))?;
            OneTokenCodes { output, ..OneTokenCodes::default() }
        } else {
            OneTokenCodes::default()
        };
        if fold && mode == GemvMode::Accumulate && qkv.is_none() && rows.is_multiple_of(chatglm_cuda::quant::BLOCK) {
            st.handoff.note_residual(w.base, out);
            if let Some(g) = st.handoff.fold_after(w.base) {
                codes.output = handoff::hand_fold(&self.gpu, &mut st, out, rows, (n, g))?;
                codes.fold_norm = g;
            }
        }
        if let Some((c, eps)) = folded {
            self.norm_fold_uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            codes.normed_by = Some((chatglm_cuda::quant::fold_sums(c, n, cols), eps));
        }
        let (xq, xs) = match (handed, folded) {
            (Some(c), _) => {
                self.handoff_uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (c, c + q_bytes as u64)
            }
            (None, Some((c, _))) => (c, 0),
            (None, None) => (
                ensure(&self.gpu, &mut st.xq, q_bytes, "quantized activations")?,
                ensure(&self.gpu, &mut st.xs, s_bytes, "activation scales")?,
            ),
        };
        drop(st);
        // A step's whole product starts a small next one towards L2 (not a
        // prompt chunk's: the same product runs again after it).
        let next =
            if whole && grouped { lock(&self.weight_chain).whole_after(w.base, self.grouped_prefetch) } else { None };
        // SAFETY: xq/xs sized for n tokens of cols (or written so by the
        // product before); the rest as above.
        unsafe {
            if handed.is_none() && folded.is_none() {
                self.gpu.quantize_x(xp, n, cols, norm, format, form, xq, xs)?;
            }
            self.gpu.qmma(w, xp, None, Some((xq, xs, form)), n, bias, out, mode, qkv, next, codes)
        }
    }

    /// `out (n × rows, out_dtype) = x · wᵀ (+ out) (+ bias)` for a large step
    /// with quantized weights: row slices dequantized to f16 and multiplied
    /// by cuBLAS (`xin`: n × cols f16).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn dequantized_product(
        &self,
        w: TiledPtr,
        xin: u64,
        out: u64,
        out_dtype: DType,
        n: usize,
        accumulate: bool,
        bias: u64,
    ) -> Result<(), CudaError> {
        let s = w.shape;
        let chunk = (DEQUANT_ELEMENTS / s.cols / 64 * 64).clamp(64, s.rows.next_multiple_of(64)).min(s.rows);
        let ws = ensure(&self.gpu, &mut lock(&self.step).dequant, chunk * s.cols, "dequantized weights")?;
        for r0 in (0..s.rows).step_by(chunk) {
            let nr = chunk.min(s.rows - r0);
            let o = out + (r0 * out_dtype.size()) as u64;
            // SAFETY: ws holds chunk×cols f16; out n rows of s.rows (the
            // slice r0..r0+nr of each); xin n×cols f16.
            unsafe {
                self.gpu.dequantize_rows(w, r0, nr, ws)?;
                self.gpu.gemm_strided(ws, DType::F16, xin, o, out_dtype, n, nr, s.cols, s.rows, accumulate, 0)?;
            }
        }
        if bias != 0 {
            // SAFETY: out n×rows f32 (a bias comes only with f32 outputs), bias rows.
            unsafe { self.gpu.add_bias(out, bias, n, s.rows)? };
        }
        Ok(())
    }

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
        if mode == GemvMode::Accumulate {
            Self::input(out, n, out_cols, op)?;
        }
        let op_ = Self::output(out, n, out_cols, op)?;
        let bp = match bias {
            Some(b) => Self::vector_ptr(b, w.rows, op)?,
            None => 0,
        };
        let norm = match norm {
            Some((v, eps)) => Some((Self::vector_ptr(v, w.cols, op)?, eps)),
            None => None,
        };
        if let (Some(tp), true) = (w.tiled(), n <= QMMA_CHUNKED_TOKENS) {
            lock(&self.step).after_attention = false;
            return self.quantized_product(op, tp, bp, x, op_, mode, norm, None);
        }
        // A large half-precision product takes x's 16-bit copy when it has one.
        let half_x = (n > self.gemv_max_tokens && w.dtype != DType::F32 && x.half_of == Some(w.dtype))
            .then(|| x.half.as_ref().map(device_ptr))
            .flatten();
        let xp = match half_x {
            Some(p) => p,
            None => Self::input(x, n, w.cols, op)?,
        };
        let wp = if w.quant.is_some() { 0 } else { Self::matrix_ptr(w, op)? };
        // The product after attention may start its weights towards L2 while
        // the attention runs (the memory is idle then at short contexts);
        // others use the device default.
        let (after_attention, step_prefetch) = {
            let mut st = lock(&self.step);
            (std::mem::take(&mut st.after_attention), st.prefetch_after_attention)
        };
        if n <= self.gemv_max_tokens {
            let prefetch = after_attention.then_some(step_prefetch).flatten();
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
        if let Some(tp) = w.tiled() {
            return self.dequantized_product(tp, xin, op_, DType::F32, n, mode == GemvMode::Accumulate, bp);
        }
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

#[cfg(test)]
mod tests {
    use super::ActivationPolicy;

    #[test]
    fn activation_policies_parse_and_choose() {
        assert_eq!(ActivationPolicy::parse(""), Some(ActivationPolicy::Batched), "the default");
        assert_eq!(ActivationPolicy::parse("q8"), Some(ActivationPolicy::Q8));
        assert_eq!(ActivationPolicy::parse("batched"), Some(ActivationPolicy::Batched));
        assert_eq!(ActivationPolicy::parse("q8_0"), Some(ActivationPolicy::Q8));
        assert_eq!(ActivationPolicy::parse("auto"), None);
        assert_eq!(ActivationPolicy::parse(" f16 "), Some(ActivationPolicy::F16));
        assert_eq!(ActivationPolicy::parse("int8"), None);
        // One conversation keeps the CPU's arithmetic, prompt and decode.
        assert!(!ActivationPolicy::Batched.f16_for(1, true));
        assert!(!ActivationPolicy::Batched.f16_for(1, false));
        assert!(!ActivationPolicy::Batched.f16_for(3, false), "prompts batched with decode tokens");
        assert!(ActivationPolicy::Batched.f16_for(32, true));
        assert!(!ActivationPolicy::Q8.f16_for(32, true));
        assert!(ActivationPolicy::F16.f16_for(1, false));
    }
}
