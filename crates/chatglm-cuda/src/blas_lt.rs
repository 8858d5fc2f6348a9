//! Large matrix products through cuBLASLt: one plan per shape (descriptors
//! and the heuristic's algorithm, found once and kept), the bias added in the
//! product's epilogue instead of by a separate pass over the output.

use crate::{CudaError, DType};
use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Scratch space the algorithms may use (split-K and the like).
const WORKSPACE_BYTES: usize = 32 << 20;

/// What a plan depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Shape {
    w: DType,
    out: DType,
    n: usize,
    rows: usize,
    cols: usize,
    /// Elements between output rows (≥ rows: a column slice of a wider output).
    ld_out: usize,
    accumulate: bool,
    bias: bool,
}

/// Descriptors and the chosen algorithm of one shape.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created for this plan and is destroyed once.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.b);
            let _ = lt::destroy_matrix_layout(self.c);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// A cuBLASLt handle, its workspace and the plans made so far.
pub(crate) struct BlasLt {
    handle: sys::cublasLtHandle_t,
    stream: Arc<CudaStream>,
    /// Allocated by the first product (models that never call cuBLASLt,
    /// such as quantized ones, keep the memory).
    workspace: Mutex<Option<CudaSlice<u8>>>,
    plans: Mutex<HashMap<Shape, Plan>>,
}

// SAFETY: the handle and the plans' descriptors are only used under the
// `plans` mutex (one product at a time); cuBLASLt handles may move threads.
unsafe impl Send for BlasLt {}
// SAFETY: as for Send.
unsafe impl Sync for BlasLt {}

fn cuda_type(d: DType) -> sys::cudaDataType {
    match d {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
    }
}

fn call(what: &str, shape: &Shape) -> impl FnOnce(cudarc::cublaslt::result::CublasError) -> CudaError {
    let (what, shape) = (what.to_string(), *shape);
    move |e| {
        CudaError::call(
            format!(
                "{what}({}×{} · ({}×{})ᵀ, {:?} → {:?})",
                shape.n, shape.cols, shape.rows, shape.cols, shape.w, shape.out
            ),
            e,
        )
    }
}

impl BlasLt {
    pub(crate) fn new(stream: &Arc<CudaStream>) -> Result<Self, CudaError> {
        let handle = lt::create_handle().map_err(|e| CudaError::call("cublasLtCreate", e))?;
        Ok(Self { handle, stream: stream.clone(), workspace: Mutex::new(None), plans: Mutex::new(HashMap::new()) })
    }

    /// Bytes of device memory the workspace holds (0 before the first product).
    pub(crate) fn workspace_bytes(&self) -> usize {
        self.workspace.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map_or(0, |_| WORKSPACE_BYTES)
    }

    /// The plan for `s`: descriptors in the column-major view cuBLASLt
    /// takes (out' rows × n = w' ᵀ · x', w' cols × rows and x' cols × n being
    /// the row-major buffers), and the heuristic's fastest algorithm.
    fn plan(&self, s: &Shape) -> Result<Plan, CudaError> {
        let (ty, out_ty) = (cuda_type(s.w), cuda_type(s.out));
        // f32 inputs are computed in full f32 (no TF32), as the CPU does.
        let desc = lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType::CUDA_R_32F)
            .map_err(call("cublasLtMatmulDescCreate", s))?;
        let mut plan = Plan {
            desc,
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
            algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
        };
        let transa = cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T;
        // SAFETY: a live descriptor; each attribute is given its own type's size.
        unsafe {
            lt::set_matmul_desc_attribute(
                plan.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                (&transa as *const cudarc::cublas::sys::cublasOperation_t).cast(),
                std::mem::size_of::<cudarc::cublas::sys::cublasOperation_t>(),
            )
            .map_err(call("cublasLtMatmulDescSetAttribute(TRANSA)", s))?;
            if s.bias {
                let epilogue = sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
                lt::set_matmul_desc_attribute(
                    plan.desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
                    (&epilogue as *const sys::cublasLtEpilogue_t).cast(),
                    std::mem::size_of::<sys::cublasLtEpilogue_t>(),
                )
                .map_err(call("cublasLtMatmulDescSetAttribute(EPILOGUE)", s))?;
            }
        }
        let (rows, n, cols) = (s.rows as u64, s.n as u64, s.cols as u64);
        plan.a =
            lt::create_matrix_layout(ty, cols, rows, s.cols as i64).map_err(call("cublasLtMatrixLayoutCreate", s))?;
        plan.b = lt::create_matrix_layout(ty, cols, n, s.cols as i64).map_err(call("cublasLtMatrixLayoutCreate", s))?;
        plan.c = lt::create_matrix_layout(out_ty, rows, n, s.ld_out as i64)
            .map_err(call("cublasLtMatrixLayoutCreate", s))?;
        let pref = lt::create_matmul_pref().map_err(call("cublasLtMatmulPreferenceCreate", s))?;
        let ws = WORKSPACE_BYTES as u64;
        // SAFETY: live descriptors; the preference is destroyed right after use.
        let found = unsafe {
            let set = lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&ws as *const u64).cast(),
                std::mem::size_of::<u64>(),
            );
            let found = set.and_then(|()| {
                lt::get_matmul_algo_heuristic(self.handle, plan.desc, plan.a, plan.b, plan.c, plan.c, pref)
            });
            let _ = lt::destroy_matmul_pref(pref);
            found
        };
        plan.algo = found.map_err(call("cublasLtMatmulAlgoGetHeuristic", s))?.algo;
        Ok(plan)
    }

    /// Makes the plan for `c`'s shape if there is none yet (host work only):
    /// false where cuBLASLt has no algorithm for it.
    pub(crate) fn plan_ready(&self, c: &crate::graph::GemmCall) -> Result<bool, CudaError> {
        let s = Shape {
            w: c.dtype,
            out: c.out_dtype,
            n: c.n,
            rows: c.rows,
            cols: c.cols,
            ld_out: c.ld_out,
            accumulate: c.accumulate,
            bias: c.bias != 0,
        };
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if plans.contains_key(&s) {
            return Ok(true);
        }
        match self.plan(&s) {
            Ok(p) => {
                plans.insert(s, p);
                Ok(true)
            }
            Err(CudaError::Call { ref message, .. }) if message.contains("NOT_SUPPORTED") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Allocates the workspace if the first product has not yet (a graph
    /// capture must not allocate).
    pub(crate) fn ensure_workspace(&self) -> Result<(), CudaError> {
        let mut workspace = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        if workspace.is_none() {
            // SAFETY: the workspace is only written by cuBLASLt's kernels.
            let ws = unsafe { self.stream.alloc::<u8>(WORKSPACE_BYTES) }
                .map_err(|e| CudaError::call(format!("cuMemAlloc(cuBLASLt workspace, {WORKSPACE_BYTES} bytes)"), e))?;
            *workspace = Some(ws);
        }
        Ok(())
    }

    /// `out (n × rows) = x (n × cols) · wᵀ (+ out when `accumulate`) (+ bias
    /// per output column)`, row-major, `x` in `w_dtype`, `out` in f32 or
    /// `out_dtype`; `bias` (rows f32) or 0.
    ///
    /// # Safety
    /// `w`, `x`, `out` and `bias` must be device pointers to at least
    /// rows·cols, n·cols, n·rows and rows elements.
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
        bias: u64,
    ) -> Result<(), CudaError> {
        let s = Shape { w: w_dtype, out: out_dtype, n, rows, cols, ld_out, accumulate, bias: bias != 0 };
        self.ensure_workspace()?;
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        let p = match plans.entry(s) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.plan(&s)?),
        };
        if bias != 0 {
            lt::set_matmul_desc_attribute(
                p.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                (&bias as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
            .map_err(call("cublasLtMatmulDescSetAttribute(BIAS_POINTER)", &s))?;
        }
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
        let workspace = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        let ws = workspace.as_ref().expect("invariant: allocated above").device_ptr(&self.stream).0;
        lt::matmul(
            self.handle,
            p.desc,
            (&alpha as *const f32).cast(),
            (&beta as *const f32).cast(),
            w as *const _,
            p.a,
            x as *const _,
            p.b,
            out as *const _,
            p.c,
            out as *mut _,
            p.c,
            &p.algo,
            ws as *mut _,
            WORKSPACE_BYTES,
            self.stream.cu_stream() as _,
        )
        .map_err(call("cublasLtMatmul", &s))
    }
}

impl Drop for BlasLt {
    fn drop(&mut self) {
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).clear();
        // SAFETY: the handle was created by `new` and is dropped once, after its plans.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}
