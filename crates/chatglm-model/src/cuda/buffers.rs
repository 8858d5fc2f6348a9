//! Checks that a buffer holds what an operation reads or writes, and its
//! device address.

use super::{ensure, CudaActivations, CudaBackend, CudaMatrix, CudaVector};
use chatglm_cuda::{device_ptr, CudaError, DType};

impl CudaBackend {
    /// The f32 values of `a` as an input of `op`.
    pub(super) fn input(a: &CudaActivations, rows: usize, cols: usize, op: &str) -> Result<u64, CudaError> {
        if !a.f32_ok {
            return Err(CudaError::Invalid {
                op: op.into(),
                message: "its input is held only in 16-bit form (an internal sequencing error)".into(),
            });
        }
        Self::check_capacity(a, rows, cols, op)
    }

    /// `a` as the f32 output of `op`.
    pub(super) fn output(a: &mut CudaActivations, rows: usize, cols: usize, op: &str) -> Result<u64, CudaError> {
        let p = Self::check_capacity(a, rows, cols, op)?;
        a.f32_ok = true;
        a.half_of = None;
        Ok(p)
    }

    /// `a`'s 16-bit copy as the output of `op` (the f32 values become stale).
    pub(super) fn half_output(&self, a: &mut CudaActivations, dtype: DType) -> Result<u64, CudaError> {
        let p = ensure(&self.gpu, &mut a.half, a.rows * a.cols, "16-bit activations")?;
        a.half_of = Some(dtype);
        a.f32_ok = false;
        Ok(p)
    }

    pub(super) fn check_capacity(a: &CudaActivations, rows: usize, cols: usize, op: &str) -> Result<u64, CudaError> {
        if a.capacity() < rows * cols || a.buf.is_none() {
            return Err(CudaError::Invalid {
                op: op.into(),
                message: format!("buffer holds {} values, {rows}×{cols} needed", a.capacity()),
            });
        }
        Ok(device_ptr(a.buf.as_ref().expect("invariant: checked above")))
    }

    pub(super) fn matrix_ptr(m: &CudaMatrix, op: &str) -> Result<u64, CudaError> {
        if m.quant.is_some() || m.host.is_some() {
            return Err(CudaError::Invalid {
                op: op.into(),
                message: "quantized or host weights reached a float kernel".into(),
            });
        }
        m.data.as_ref().map(device_ptr).ok_or_else(|| CudaError::Invalid {
            op: op.into(),
            message: "weights failed to load (see the first error)".into(),
        })
    }

    pub(super) fn vector_ptr(v: &CudaVector, len: usize, op: &str) -> Result<u64, CudaError> {
        match &v.data {
            Some(d) if v.len >= len => Ok(device_ptr(d)),
            _ => {
                Err(CudaError::Invalid { op: op.into(), message: format!("vector of {} values, {len} needed", v.len) })
            }
        }
    }
}
