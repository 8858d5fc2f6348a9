//! The narrow interface the forward pass runs on: the fused operations
//! ChatGLM needs and nothing more. A backend owns its memory layout; the
//! forward pass only sequences the calls.

use crate::forward::TokenLayout;
use crate::{KvCacheOps, KvDType, ModelError, SequenceInput, TokenChoice};
use chatglm_cpu::attention::AttentionShape;
use chatglm_weights::Tensor;

use crate::loader::WeightFormat;

/// A device's memory at one moment ([`Backend::device_memory`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Bytes in use on the device (every process, CUDA contexts included).
    pub used_bytes: usize,
    pub total_bytes: usize,
    /// Library scratch space this backend holds (cuBLASLt's workspace).
    pub workspace_bytes: usize,
    /// CUDA graphs kept for replay (their memory is in `used_bytes`), and
    /// how many steps were captured and replayed so far.
    pub graphs_cached: usize,
    pub graph_captures: u64,
    pub graph_replays: u64,
}

/// A compute device for [`crate::Model`].
pub trait Backend: Send + Sync {
    /// A weight matrix `(rows, cols)` = `(out_features, in_features)`.
    type Matrix: Send + Sync;
    /// A small f32 vector (norm weights, biases).
    type Vector: Send + Sync;
    /// Activations: `(rows, cols)` f32, rows = tokens of the step.
    type Activations: Send;
    /// One sequence's KV cache, in this backend's memory.
    type Cache: KvCacheOps;

    fn name(&self) -> String;

    /// A line on device memory once the weights are loaded (a GPU: what the
    /// weights take, what is free, and how many tokens of KV cache at
    /// `kv_bytes_per_token` that leaves); `None` where there is nothing to say.
    fn memory_plan(&self, weight_bytes: usize, kv_bytes_per_token: usize) -> Option<String> {
        let _ = (weight_bytes, kv_bytes_per_token);
        None
    }

    /// The device's memory now (a GPU: in use by everyone and in total, and
    /// the library workspace this backend holds); `None` for host memory.
    fn device_memory(&self) -> Option<DeviceMemory> {
        None
    }

    /// Tokens of a long prompt run per step: large enough to keep the device
    /// busy, small enough to bound activation memory.
    fn prefill_chunk_tokens(&self) -> usize {
        512
    }

    /// Whether batched decode steps are worth padding to a few fixed sizes
    /// (a backend that replays a graph per step size; the CPU does not).
    fn pads_decode_steps(&self) -> bool {
        false
    }

    /// Tokens per KV block when this backend's cache is paged in blocks of a
    /// fixed size (an engine handing it blocks must use that size); `None`
    /// when any size will do.
    fn kv_block_tokens(&self) -> Option<usize> {
        None
    }

    /// Sets aside `blocks` KV blocks of `dtype` (ids `0..blocks`) for an
    /// allocator outside the backend (the engine's), allocated now so that
    /// running out shows at start-up; caches then use the ids given with
    /// [`KvCacheOps::use_blocks`]. By default nothing is set aside (caches
    /// keep their own layout).
    fn provide_kv_blocks(&self, dtype: KvDType, blocks: usize) -> Result<(), ModelError> {
        let _ = (dtype, blocks);
        Ok(())
    }

    /// A fresh, empty KV cache for one sequence.
    fn new_cache(&self, n_layers: usize, n_groups: usize, head_dim: usize, dtype: KvDType) -> Self::Cache;
    /// Whether caches can hold P-Tuning v2 prefix keys and values.
    fn supports_kv_prefix(&self) -> bool {
        false
    }
    /// Puts `prefix` in front of an empty cache's tokens: every token attends
    /// to it, positions (RoPE) still count from 0 and `len()` does not count it.
    /// Only called where [`Backend::supports_kv_prefix`].
    fn set_kv_prefix(&self, cache: &mut Self::Cache, prefix: &chatglm_weights::ptuning::PrefixKv) {
        let _ = (cache, prefix);
    }

    /// Called once per forward step, after the token layout is built and
    /// before the embedding: a backend reserves KV memory for the step's new
    /// tokens and uploads step metadata here.
    fn prepare_step(
        &self,
        layout: &TokenLayout,
        ids: &[u32],
        batch: &mut [SequenceInput<'_, Self::Cache>],
    ) -> Result<(), ModelError> {
        let _ = (layout, ids, batch);
        Ok(())
    }

    /// Called once per forward step, after the logits are read back (or,
    /// with no logit rows, before returning). A backend that defers errors
    /// (a GPU) reports them here; the forward pass returns the error.
    fn finish_step(&self) -> Result<(), ModelError> {
        Ok(())
    }

    /// Runs one forward step (`step`) where the backend wants it run; by
    /// default on the calling thread.
    fn run_step<R: Send>(&self, step: impl FnOnce() -> R + Send) -> R {
        step()
    }

    /// Builds a matrix from checkpoint bytes, converting or quantizing to
    /// `format`. With `mmap`, bytes already in the kernels' layout may be
    /// used in place from the mapped file instead of copied.
    fn load_matrix(&self, tensor: &Tensor, format: WeightFormat, mmap: bool) -> Result<Self::Matrix, ModelError>;
    /// The embedding table (only gathered from, one row per token): by
    /// default a matrix like any other.
    fn load_embedding(&self, tensor: &Tensor, format: WeightFormat, mmap: bool) -> Result<Self::Matrix, ModelError> {
        self.load_matrix(tensor, format, mmap)
    }
    /// A random embedding table (see `random_matrix`).
    fn random_embedding(&self, rows: usize, cols: usize, format: WeightFormat, seed: u64) -> Self::Matrix {
        self.random_matrix(rows, cols, format, seed)
    }
    fn load_vector(&self, values: Vec<f32>) -> Self::Vector;
    /// A matrix of random values in `format` (benchmarks: speed does not
    /// depend on the values). `format` must not be `Auto`.
    fn random_matrix(&self, rows: usize, cols: usize, format: WeightFormat, seed: u64) -> Self::Matrix;
    fn matrix_bytes(&self, m: &Self::Matrix) -> usize;
    /// Reads every byte a one-token product of `m` streams, as that product
    /// would (same threads, same split; with its software prefetch or
    /// without) but without its arithmetic: the read-bandwidth probe of
    /// `chatglm bench --read-probe`. Returns the bytes read and a checksum;
    /// `None` where the backend has no such pass.
    fn read_matrix(&self, m: &Self::Matrix, prefetch: bool) -> Option<(usize, u64)> {
        let _ = (m, prefetch);
        None
    }
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
    /// `acc += x · wᵀ`, with `tmp` as scratch (the caller has sized it to
    /// `(x.rows, w.rows)`).
    fn linear_add(
        &self,
        w: &Self::Matrix,
        x: &Self::Activations,
        acc: &mut Self::Activations,
        tmp: &mut Self::Activations,
    ) {
        self.linear(w, None, x, tmp);
        self.add(acc, tmp);
    }
    /// `out = swiglu(x · wᵀ)`, with `tmp` as scratch (the caller has sized
    /// `tmp` to `(x.rows, 2·ffn)` and `out` to `(x.rows, ffn)`).
    fn linear_swiglu(
        &self,
        w: &Self::Matrix,
        x: &Self::Activations,
        tmp: &mut Self::Activations,
        out: &mut Self::Activations,
    ) {
        self.linear(w, None, x, tmp);
        self.swiglu(tmp, out);
    }
    /// `out = rms_norm(x) · wᵀ (+ bias)`, with `normed` as scratch (sized like
    /// `x` by the caller): lets a backend fuse the norm into the product.
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_linear(
        &self,
        x: &Self::Activations,
        norm: &Self::Vector,
        eps: f32,
        normed: &mut Self::Activations,
        w: &Self::Matrix,
        bias: Option<&Self::Vector>,
        out: &mut Self::Activations,
    ) {
        self.rms_norm(x, norm, eps, normed);
        self.linear(w, bias, normed, out);
    }
    /// The attention block's QKV projection for `layer`: `qkv = rms_norm(x)
    /// · wᵀ + bias`, with `normed` as scratch; [`Backend::attention`] for the
    /// same layer follows. A backend may also rotate the queries and keys and
    /// append the keys and values to the cache here (its attention then skips
    /// that); by default this is [`Backend::rms_norm_linear`].
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_qkv(
        &self,
        layer: usize,
        x: &Self::Activations,
        norm: &Self::Vector,
        eps: f32,
        normed: &mut Self::Activations,
        w: &Self::Matrix,
        bias: Option<&Self::Vector>,
        qkv: &mut Self::Activations,
    ) {
        let _ = layer;
        self.rms_norm_linear(x, norm, eps, normed, w, bias, qkv);
    }
    /// `out = swiglu(rms_norm(x) · wᵀ)`, with `normed` and `tmp` as scratch
    /// (sized by the caller as for [`Backend::linear_swiglu`]).
    #[allow(clippy::too_many_arguments)]
    fn rms_norm_linear_swiglu(
        &self,
        x: &Self::Activations,
        norm: &Self::Vector,
        eps: f32,
        normed: &mut Self::Activations,
        w: &Self::Matrix,
        tmp: &mut Self::Activations,
        out: &mut Self::Activations,
    ) {
        self.rms_norm(x, norm, eps, normed);
        self.linear_swiglu(w, normed, tmp, out);
    }
    /// The rest of a layer after attention: `hidden += attn · denseᵀ`, then
    /// `ffn = swiglu(rms_norm(hidden) · upᵀ)` and `hidden += ffn · downᵀ`
    /// (`proj`, `normed`, `ffn_up` as scratch, sized by the caller as for
    /// the three calls). A backend may run it as one launch.
    #[allow(clippy::too_many_arguments)]
    fn dense_and_mlp(
        &self,
        layer: usize,
        dense: &Self::Matrix,
        attn: &Self::Activations,
        hidden: &mut Self::Activations,
        proj: &mut Self::Activations,
        norm: &Self::Vector,
        eps: f32,
        normed: &mut Self::Activations,
        up: &Self::Matrix,
        ffn_up: &mut Self::Activations,
        ffn: &mut Self::Activations,
        down: &Self::Matrix,
    ) {
        let _ = layer;
        self.linear_add(dense, attn, hidden, proj);
        self.rms_norm_linear_swiglu(hidden, norm, eps, normed, up, ffn_up, ffn);
        self.linear_add(down, ffn, hidden, proj);
    }

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
        batch: &mut [SequenceInput<'_, Self::Cache>],
        out: &mut Self::Activations,
    );
    /// Copies the listed rows into `out` (for computing only the logits needed).
    fn gather_rows(&self, x: &Self::Activations, rows: &[usize], out: &mut Self::Activations);
    /// Reads activations back as host f32, row-major.
    fn read(&self, x: &Self::Activations, out: &mut Vec<f32>);
    /// The token choices of the next step's logits rows, for
    /// [`Backend::read_sampled`]; called before [`Backend::prepare_step`]
    /// of a step run by [`crate::Model::forward_sampled`].
    fn set_sampling(&self, choices: &[TokenChoice]) {
        let _ = choices;
    }
    /// Each of the `rows` rows' token, chosen on the device as the choices
    /// given to [`Backend::set_sampling`] say, or `None` where the host must
    /// sample from the logits. By default every row is left to the host.
    fn read_sampled(&self, x: &Self::Activations, rows: usize, cols: usize, out: &mut Vec<Option<u32>>) {
        let _ = (x, cols);
        out.clear();
        out.resize(rows, None);
    }
    /// Whether a step can be queued behind one still running: launching
    /// returns before the step is computed ([`Backend::queue_greedy`],
    /// [`Backend::finish_queued_step`]) and a row's token can be the id the
    /// step before chose, taken on the device (`TokenLayout::chained`, in
    /// [`Backend::prepare_step`]). By default steps are computed at launch.
    fn queues_steps(&self) -> bool {
        false
    }
    /// Starts reading each logits row's [`greedy_token`] without waiting;
    /// [`Backend::collect_greedy`] returns them. Only called where
    /// [`Backend::queues_steps`].
    fn queue_greedy(&self, x: &Self::Activations, cols: usize) {
        let _ = (x, cols);
    }
    /// The ids of the oldest step [`Backend::queue_greedy`] started, waiting
    /// for it; errors of that step's work surface here.
    fn collect_greedy(&self, out: &mut Vec<u32>) -> Result<(), ModelError> {
        out.clear();
        Err(ModelError::Backend { op: "collect".into(), message: "this backend does not queue steps".into() })
    }
    /// As [`Backend::finish_step`] for a queued step: reports what went wrong
    /// while queuing it, without waiting for the device.
    fn finish_queued_step(&self) -> Result<(), ModelError> {
        self.finish_step()
    }
    /// Each row's [`greedy_token`]: greedy decoding without reading the
    /// logits back. By default the rows are read and searched on the host.
    fn read_greedy(&self, x: &Self::Activations, cols: usize, out: &mut Vec<u32>) {
        let mut rows = Vec::new();
        self.read(x, &mut rows);
        out.clear();
        if cols > 0 {
            out.extend(rows.chunks_exact(cols).map(greedy_token));
        }
    }
}

/// The greedy choice from one row of logits, as the official generation
/// makes it: a row holding NaN or ±inf counts as zeros with 5e4 at index 5
/// (`InvalidScoreLogitsProcessor`); then the index of the largest value, the
/// first of equal ones. The engine's greedy sampler gives the same ids.
pub fn greedy_token(logits: &[f32]) -> u32 {
    if logits.iter().any(|v| !v.is_finite()) {
        return if logits.len() > 5 { 5 } else { 0 };
    }
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}
