//! One-token steps: dense + MLP as one kernel (chatglm_cuda's `MlpBlock`),
//! where the device, the weights' formats and shapes allow it.

use super::{CudaActivations, CudaBackend, CudaMatrix, CudaVector};
use chatglm_cuda::{CudaError, MlpBlock};
use std::sync::atomic::Ordering::Relaxed;

/// `CHATGLM_MLP_STREAM=1` turns the fused kernel on.
pub(super) fn mlp_stream_requested() -> bool {
    std::env::var("CHATGLM_MLP_STREAM").is_ok_and(|v| v == "1")
}

impl CudaBackend {
    /// Runs one-token steps' dense + MLP as one kernel where possible (on) or
    /// as three products (off).
    pub fn set_mlp_stream(&self, on: bool) {
        self.mlp_stream.store(on, Relaxed);
    }

    /// Fused blocks launched (or recorded into graphs) so far.
    pub fn mlp_block_launches(&self) -> u64 {
        self.gpu.mlp_block_launches()
    }

    /// The fused block for this step, if it takes it: `None` runs the three
    /// products; `Some(Err)` a buffer that cannot hold its rows.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fused_mlp_block(
        &self,
        dense: &CudaMatrix,
        attn: &CudaActivations,
        hidden: &mut CudaActivations,
        norm: &CudaVector,
        eps: f32,
        up: &CudaMatrix,
        ffn: &mut CudaActivations,
        down: &CudaMatrix,
    ) -> Option<Result<MlpBlock, CudaError>> {
        if !self.mlp_stream.load(Relaxed)
            || attn.rows != 1
            || ["dense", "mlp_up", "mlp_down"].iter().any(|op| self.skipped(op))
        {
            return None;
        }
        let block = MlpBlock {
            dense: dense.tiled()?,
            up: up.tiled()?,
            down: down.tiled()?,
            attn: 0,
            hidden: 0,
            norm: 0,
            eps,
            ffn: 0,
        };
        if !self.gpu.mlp_stream_takes(&block) || attn.cols != dense.cols {
            return None;
        }
        let (rows, ffn_cols) = (dense.rows, up.rows / 2);
        Some((|| {
            Ok(MlpBlock {
                attn: Self::input(attn, 1, attn.cols, "dense_and_mlp")?,
                hidden: {
                    Self::input(hidden, 1, rows, "dense_and_mlp")?;
                    Self::output(hidden, 1, rows, "dense_and_mlp")?
                },
                norm: Self::vector_ptr(norm, rows, "dense_and_mlp")?,
                ffn: Self::output(ffn, 1, ffn_cols, "dense_and_mlp")?,
                ..block
            })
        })())
    }
}
