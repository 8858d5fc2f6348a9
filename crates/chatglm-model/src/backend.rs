//! The narrow interface the forward pass runs on: the fused operations
//! ChatGLM needs and nothing more. A backend owns its memory layout; the
//! forward pass only sequences the calls.

use crate::forward::TokenLayout;
use crate::{ModelError, SequenceInput};
use chatglm_cpu::attention::AttentionShape;
use chatglm_weights::Tensor;

use crate::loader::WeightFormat;

/// A compute device for [`crate::Model`].
pub trait Backend: Send + Sync {
    /// A weight matrix `(rows, cols)` = `(out_features, in_features)`.
    type Matrix: Send + Sync;
    /// A small f32 vector (norm weights, biases).
    type Vector: Send + Sync;
    /// Activations: `(rows, cols)` f32, rows = tokens of the step.
    type Activations: Send;

    fn name(&self) -> String;

    /// Runs one forward step (`step`) where the backend wants it run; by
    /// default on the calling thread.
    fn run_step<R: Send>(&self, step: impl FnOnce() -> R + Send) -> R {
        step()
    }

    /// Builds a matrix from checkpoint bytes, converting or quantizing to
    /// `format`. With `mmap`, bytes already in the kernels' layout may be
    /// used in place from the mapped file instead of copied.
    fn load_matrix(&self, tensor: &Tensor, format: WeightFormat, mmap: bool) -> Result<Self::Matrix, ModelError>;
    fn load_vector(&self, values: Vec<f32>) -> Self::Vector;
    /// A matrix of random values in `format` (benchmarks: speed does not
    /// depend on the values). `format` must not be `Auto`.
    fn random_matrix(&self, rows: usize, cols: usize, format: WeightFormat, seed: u64) -> Self::Matrix;
    fn matrix_bytes(&self, m: &Self::Matrix) -> usize;
    fn matrix_format(&self, m: &Self::Matrix) -> &'static str;

    fn new_activations(&self) -> Self::Activations;
    /// Resizes to `(rows, cols)`; contents are unspecified afterwards.
    fn resize(&self, a: &mut Self::Activations, rows: usize, cols: usize);

    /// `out[t] = table[ids[t]]`.
    fn embed(&self, table: &Self::Matrix, ids: &[u32], out: &mut Self::Activations);
    /// Row-wise RMSNorm.
    fn rms_norm(&self, x: &Self::Activations, weight: &Self::Vector, eps: f32, out: &mut Self::Activations);
    /// `out = x · wᵀ` (+ `bias`).
    fn linear(&self, w: &Self::Matrix, bias: Option<&Self::Vector>, x: &Self::Activations, out: &mut Self::Activations);
    /// `x += y`.
    fn add(&self, x: &mut Self::Activations, y: &Self::Activations);
    /// `out = silu(x[:, :ffn]) * x[:, ffn:]`.
    fn swiglu(&self, x: &Self::Activations, out: &mut Self::Activations);
    /// Rotates queries and keys of the fused QKV rows in place, appends the
    /// new keys/values of every token to its sequence's `layer` cache (in
    /// `batch`), and
    /// writes causal attention outputs `(tokens, heads·head_dim)` to `out`.
    fn attention(
        &self,
        shape: AttentionShape,
        layer: usize,
        qkv: &mut Self::Activations,
        layout: &TokenLayout,
        batch: &mut [SequenceInput<'_>],
        out: &mut Self::Activations,
    );
    /// Copies the listed rows into `out` (for computing only the logits needed).
    fn gather_rows(&self, x: &Self::Activations, rows: &[usize], out: &mut Self::Activations);
    /// Reads activations back as host f32, row-major.
    fn read(&self, x: &Self::Activations, out: &mut Vec<f32>);
}
