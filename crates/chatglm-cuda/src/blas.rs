//! Large matrix products (prefill, big batches) through cuBLAS.

use crate::{CudaError, DType};
use cudarc::cublas::sys::{self, cublasComputeType_t, cublasOperation_t, cudaDataType};
use cudarc::driver::CudaStream;
use std::sync::Arc;

/// A cuBLAS handle bound to the GPU's stream.
pub(crate) struct Blas {
    handle: sys::cublasHandle_t,
}

// SAFETY: the handle is only used from the thread running a step, one call at
// a time (the backend serialises steps); cuBLAS handles may move threads.
unsafe impl Send for Blas {}
// SAFETY: as for Send: calls are serialised by the backend's step lock.
unsafe impl Sync for Blas {}

impl Blas {
    pub(crate) fn new(stream: &Arc<CudaStream>) -> Result<Self, CudaError> {
        let handle = cudarc::cublas::result::create_handle().map_err(|e| CudaError::call("cublasCreate", e))?;
        // SAFETY: a fresh handle and a live stream of the same context.
        unsafe { cudarc::cublas::result::set_stream(handle, stream.cu_stream() as _) }
            .map_err(|e| CudaError::call("cublasSetStream", e))?;
        Ok(Self { handle })
    }

    /// `out (n × rows, row-major, f32 or `out_dtype`) = x (n × cols) · wᵀ (+ out when
    /// `accumulate`)`, for `w` (rows × cols, row-major) in `w_dtype` and `x`
    /// in the same element type (f32, f16 or bf16). f32 accumulation; f32
    /// inputs are computed in full f32 (no TF32).
    ///
    /// # Safety
    /// `w`, `x` and `out` must be device pointers to at least rows·cols,
    /// n·cols and n·rows elements.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gemm(
        &self,
        w: u64,
        w_dtype: DType,
        x: u64,
        out: u64,
        out_dtype: DType,
        n: usize,
        rows: usize,
        cols: usize,
        ld_out: usize,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        let too_big = |v: usize| v > i32::MAX as usize;
        if too_big(n) || too_big(rows) || too_big(cols) || too_big(ld_out) {
            return Err(CudaError::invalid(
                "gemm",
                format!("{n}×{cols} · ({rows}×{cols})ᵀ exceeds cuBLAS's int sizes"),
            ));
        }
        let cuda_type = |d: DType| match d {
            DType::F32 => cudaDataType::CUDA_R_32F,
            DType::F16 => cudaDataType::CUDA_R_16F,
            DType::BF16 => cudaDataType::CUDA_R_16BF,
        };
        let (ty, out_ty) = (cuda_type(w_dtype), cuda_type(out_dtype));
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
        // Column-major view: out' (rows × n) = w' ᵀ (rows × cols) · x' (cols × n),
        // where w' (cols × rows) and x' (cols × n) are the row-major buffers.
        cudarc::cublas::result::gemm_ex(
            self.handle,
            cublasOperation_t::CUBLAS_OP_T,
            cublasOperation_t::CUBLAS_OP_N,
            rows as i32,
            n as i32,
            cols as i32,
            (&alpha as *const f32).cast(),
            w as *const _,
            ty,
            cols as i32,
            x as *const _,
            ty,
            cols as i32,
            (&beta as *const f32).cast(),
            out as *mut _,
            out_ty,
            ld_out as i32,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .map_err(|e| CudaError::call(format!("cublasGemmEx({n}×{cols} · ({rows}×{cols})ᵀ, {w_dtype:?})"), e))
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `new` and is dropped once.
        let _ = unsafe { cudarc::cublas::result::destroy_handle(self.handle) };
    }
}
