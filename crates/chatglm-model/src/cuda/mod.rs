//! The CUDA backend: f32 activations in device memory, f32/f16/bf16 weights,
//! a paged KV cache, kernels from `chatglm-cuda`.
//!
//! Launches are queued on one stream and checked as they are queued; faults
//! that the device reports later surface at the end of the step. The first
//! error of a step is kept (later operations of that step are skipped) and
//! returned by [`Backend::finish_step`], so the forward pass stays one loop of
//! infallible calls for both backends.

mod buffers;
mod handoff;
mod kv;
mod mlp_block;
mod products;
mod quant;
mod short_attention;
mod step;
mod upload;
mod weight_chain;

pub use kv::CudaKvCache;

use crate::forward::TokenLayout;
use crate::kv_cache::KvDType;
use crate::loader::WeightFormat;
use crate::{Backend, Config, ModelError, SequenceInput, TokenChoice};
use chatglm_cpu::attention::AttentionShape;
use chatglm_cuda::ops::GEMV_MAX_TOKENS;
use chatglm_cuda::quant::{TileShape, TiledPtr};
use chatglm_cuda::{
    device_ptr, sample_row_words, AttentionDims, CudaError, CudaSlice, DType, GemvMode, Gpu, HostBuffer, KvFormat,
    SplitPlan, StagingBuffer, SAMPLE_ROW_WORDS,
};
use chatglm_weights::ptuning::PrefixKv;
use chatglm_weights::{DType as FileDType, Tensor};
use kv::{DevicePrefix, KvPool};
use quant::{DeviceRows, HostTable};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use step::StepPlan;
use upload::gpu_dtype;

pub use chatglm_cuda::{device_count, DeviceInfo, GemvLean};

/// Mat-vec kernels up to 2 tokens a step, cuBLAS from 3 (see `gemv_max_tokens`).
const DEFAULT_GEMV_MAX_TOKENS: usize = 2;

/// Tokens per KV-cache block (the tensor-core attention's key tile).
pub const KV_BLOCK_TOKENS: usize = chatglm_cuda::ops::FLASH_TILE_TOKENS;

/// A weight matrix: row-major floats in device memory, quantized blocks in
/// the tiled layout (`quant`), or an embedding table kept on the host.
pub struct CudaMatrix {
    pub rows: usize,
    pub cols: usize,
    /// The element type of its floats (quantized: what large products
    /// dequantize to).
    dtype: DType,
    data: Option<CudaSlice<u8>>,
    quant: Option<TileShape>,
    host: Option<Arc<HostTable>>,
}

impl CudaMatrix {
    fn dense(rows: usize, cols: usize, dtype: DType, data: Option<CudaSlice<u8>>) -> Self {
        Self { rows, cols, dtype, data, quant: None, host: None }
    }

    fn tiled(&self) -> Option<TiledPtr> {
        Some(TiledPtr { base: device_ptr(self.data.as_ref()?), shape: self.quant? })
    }
}

/// A small f32 vector in device memory.
pub struct CudaVector {
    len: usize,
    data: Option<CudaSlice<f32>>,
}

/// f32 activations `(rows, cols)` in device memory; capacity only grows.
/// Before a large half-precision product an operation may leave its result
/// only as a 16-bit copy (`half`), which the product reads directly; any
/// other reader of such activations gets an error, never stale values.
pub struct CudaActivations {
    pub rows: usize,
    pub cols: usize,
    buf: Option<CudaSlice<f32>>,
    half: Option<CudaSlice<u16>>,
    /// The type of `half` while it holds the current values.
    half_of: Option<DType>,
    /// Whether `buf` holds the current values.
    f32_ok: bool,
}

impl CudaActivations {
    fn capacity(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.len())
    }
}

/// The row format of the pool a cache of `dtype` lives in.
fn pool_dtype(dtype: KvDType) -> KvFormat {
    match dtype {
        KvDType::F32 => KvFormat::F32,
        KvDType::F16 => KvFormat::F16,
        KvDType::Q8_0 => KvFormat::Q8_0,
    }
}

/// Rows of `dim` values as the kernels' q8_0 cache rows: `dim` int8 codes,
/// then one f16 scale per 32 (the CPU's `BlockQ8_0` numbers).
fn q8_0_rows(values: &[f32], dim: usize) -> Vec<u8> {
    use chatglm_weights::quant::{BlockQ8_0, QuantBlock};
    let mut out = Vec::with_capacity(values.len() / dim.max(1) * KvFormat::Q8_0.row_bytes(dim));
    for row in values.chunks_exact(dim.max(1)) {
        let blocks: Vec<BlockQ8_0> = row.chunks(32).map(BlockQ8_0::quantize).collect();
        out.extend(blocks.iter().flat_map(|b| b.qs.iter().map(|&q| q as u8)));
        out.extend(blocks.iter().flat_map(|b| b.d.to_bits().to_le_bytes()));
    }
    out
}

/// Device buffers of the current step.
#[derive(Default)]
struct StepBuffers {
    plan: StepPlan,
    meta: Option<CudaSlice<i32>>,
    table: Option<CudaSlice<u64>>,
    part_o: Option<CudaSlice<f32>>,
    part_ml: Option<CudaSlice<f32>>,
    /// Activations converted to the weights' 16-bit type for cuBLAS.
    half_x: Option<CudaSlice<u16>>,
    /// The step's embedding rows, gathered on the host (quantized models).
    embedded: Option<CudaSlice<f32>>,
    /// Activations quantized for the quantized products: codes, scales.
    xq: Option<CudaSlice<u8>>,
    xs: Option<CudaSlice<u8>>,
    /// One token's activations as q8_0 codes handed from the kernel that
    /// wrote them to the next product (handoff.rs), and what they are of.
    codes: Option<CudaSlice<u8>>,
    /// A grouped step's SwiGLU output in quantize_x's form, for 4h→h.
    step_codes: Option<CudaSlice<u8>>,
    /// A residual product's output folded for the next norm (handoff.rs).
    fold_codes: Option<CudaSlice<u8>>,
    handoff: handoff::HandoffState,
    /// Quantized weights dequantized for a large step's cuBLAS product.
    dequant: Option<CudaSlice<u16>>,
    gather: Option<CudaSlice<i32>>,
    /// Merge counters of the decode attention (zero between launches).
    counters: Option<CudaSlice<i32>>,
    /// Greedy or sampled token ids of the logits rows.
    chosen: Option<CudaSlice<i32>>,
    /// The next step's sampling parameters (set_sampling), and on the device.
    sampling: Vec<u32>,
    sample_params: Option<CudaSlice<u32>>,
    kv_dtype: Option<KvFormat>,
    /// The layer whose RoPE and cache append the QKV product already did.
    rotated: Option<usize>,
    /// The last operation was attention (the next product is the dense one).
    after_attention: bool,
    /// Bytes of each row that dense product prefetches in this step.
    prefetch_after_attention: Option<usize>,
    /// This step's decode attention takes the short-context kernel.
    short_attention: bool,
    /// Whether this step's quantized products of 9..=64 tokens take f16
    /// activations ([`products::ActivationPolicy`]).
    f16_activations: bool,
    /// Whether this step's launches are queued for a graph.
    graph: bool,
    /// Page-locked copies of the metadata and block table the device reads
    /// in place, two: a step stages through one while the step before may
    /// still read the other.
    staging: [Option<StagingBuffer>; 2],
    parity: usize,
    /// Greedy ids of queued steps on their way to the host, oldest first.
    reads: VecDeque<HostBuffer<i32>>,
    spare_reads: Vec<HostBuffer<i32>>,
    /// argmax_rows' per-row counters (left at zero) and block partials.
    argmax_scratch: Option<CudaSlice<i32>>,
}

/// Bytes of each dense weight row (4 KB: half of a 6B row) its mat-vec
/// blocks start towards L2 while the attention before them runs, in steps
/// whose longest context is under [`PREFETCH_CONTEXT_LIMIT`]: the attention
/// of a short context leaves the memory idle for microseconds, but at long
/// contexts the prefetch competes with its K/V reads. H200, 6B f16, tok/s at
/// context 0 / 2K / 8K / 32K, two alternations: none → 305.4 / 292.0 / 282.5 /
/// 254.8, 4 KB → 309.3 / 291.4 / 281.5 / 254.3, 8 KB → 308.7 / 290.2 / 278.4
/// / 251.8 (session 10, run 59).
const DEFAULT_PREFETCH_AFTER_ATTENTION: usize = 4096;

/// Longest context (cache rows) of a step below which the dense product
/// prefetches after attention by default (see above: it pays at context 0,
/// costs 0.2% at 2K and 1% at 8K).
const PREFETCH_CONTEXT_LIMIT: usize = 1024;

/// Bytes of each row the product after attention starts towards L2 in a step
/// whose longest context is `longest` rows: `configured` (the environment's
/// setting, for measurements) wherever it is set, else the default rule.
fn prefetch_after_attention(configured: Option<usize>, longest: usize) -> Option<usize> {
    match configured {
        Some(bytes) => Some(bytes),
        None => (longest < PREFETCH_CONTEXT_LIMIT).then_some(DEFAULT_PREFETCH_AFTER_ATTENTION),
    }
}

/// CUDA graphs of decode steps kept for replay (chatglm_cuda's limit).
const MAX_GRAPHS: usize = chatglm_cuda::MAX_GRAPHS;

/// Runs the model on one NVIDIA GPU.
pub struct CudaBackend {
    gpu: Arc<Gpu>,
    dims: AttentionDims,
    n_layers: usize,
    /// The model's context length (replayable steps are planned for it).
    max_context: usize,
    /// Steps of at most this many tokens run the mat-vec kernels (and replay
    /// from graphs); larger ones cuBLAS (`CHATGLM_GEMV_MAX_TOKENS`, 1–8).
    /// Measured on the H200 (6B, f16, ms per step at 1/2/3/4/8 tokens):
    /// mat-vec 3.71/4.40/5.34/5.52/8.36, cuBLAS –/5.08/5.02/5.06/5.12.
    gemv_max_tokens: usize,
    /// Bytes of each weight row the product after attention starts towards
    /// L2 before the attention ends, as set by
    /// `CHATGLM_GEMV_PREFETCH_AFTER_ATTENTION` (None: by the step's context,
    /// [`prefetch_after_attention`]).
    prefetch_after_attention: Option<usize>,
    /// Layer operations left out of every step (`CHATGLM_CUDA_SKIP`, a comma
    /// list of qkv, attention, dense, mlp_up, mlp_down): a measurement of
    /// what each costs inside a real decode step, overlap included. The
    /// outputs are then wrong; never set it otherwise.
    skip: Vec<String>,
    inv_freq: CudaSlice<f32>,
    /// The same frequencies on the host (P-Tuning prefix keys are rotated here).
    host_inv_freq: Vec<f32>,
    n_pairs: usize,
    pools: Mutex<Vec<Arc<KvPool>>>,
    /// The P-Tuning prefix last put on the device: (fingerprint, pool type, rows).
    prefix: Mutex<Option<(PrefixKey, KvFormat, Arc<DevicePrefix>)>>,
    /// The embedding table when it is kept on the host.
    host_embedding: Mutex<Option<Arc<HostTable>>>,
    /// Whether any weights are quantized (memory-lean: smaller prefill chunks).
    quantized: std::sync::atomic::AtomicBool,
    /// Whether any product weights are floats (their steps of 3+ tokens go
    /// through cuBLAS: recorded into graphs only with cuBLASLt).
    float_products: std::sync::atomic::AtomicBool,
    /// Whether batched decode steps (up to 256 tokens) are replayed from
    /// CUDA graphs too (on by default since session 25: 32 int4 sequences
    /// +1.0–1.4% in runs 172 and 174; `CHATGLM_CUDA_BATCH_GRAPHS=0` turns it off).
    batched_graphs: std::sync::atomic::AtomicBool,
    /// Whether greedy steps may be queued behind running ones
    /// (`CHATGLM_CUDA_QUEUE_STEPS=0` turns it off, for measurements).
    queue_steps: bool,
    /// Which steps' quantized products take f16 activations.
    activations: Mutex<products::ActivationPolicy>,
    /// Each quantized product's successor (the L2 prefetch of its weights)
    /// and how many of their bytes (`CHATGLM_QMMA_PREFETCH_NEXT`).
    weight_chain: Mutex<weight_chain::WeightChain>,
    prefetch_next: usize,
    /// The largest next matrix a grouped step's product starts towards L2
    /// whole (`CHATGLM_QMMG_PREFETCH_NEXT`).
    grouped_prefetch: usize,
    /// Whether one-token steps run dense + MLP as one kernel where the
    /// device and weights allow (`CHATGLM_MLP_STREAM=1`; mlp_block.rs).
    mlp_stream: std::sync::atomic::AtomicBool,
    /// Which steps take the short-context decode attention.
    short_attention: short_attention::ShortAttention,
    /// Whether one-token steps hand activations from kernel to product as
    /// q8_0 codes (`CHATGLM_Q8_HANDOFF`; handoff.rs).
    handoff: std::sync::atomic::AtomicBool,
    /// Products that took handed-over codes so far (for tests).
    handoff_uses: std::sync::atomic::AtomicU64,
    /// Whether residual products of f16 steps fold the next norm
    /// (`CHATGLM_NORM_FOLD`; handoff.rs).
    norm_fold: std::sync::atomic::AtomicBool,
    /// Normed products that took folded activations so far (for tests).
    norm_fold_uses: std::sync::atomic::AtomicU64,
    step: Mutex<StepBuffers>,
    error: Mutex<Option<ModelError>>,
}

/// Which prefix a device copy was made from: its length, where its first
/// keys live and a few of their bits (a prefix is not changed in place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PrefixKey {
    rows: usize,
    address: usize,
    first: u32,
    last: u32,
}

impl PrefixKey {
    fn of(p: &PrefixKv) -> Self {
        let keys = p.layers.first().map_or(&[][..], |(k, _)| &k[..]);
        Self {
            rows: p.len,
            address: keys.as_ptr() as usize,
            first: keys.first().map_or(0, |v| v.to_bits()),
            last: p.layers.last().and_then(|(_, v)| v.last()).map_or(0, |v| v.to_bits()),
        }
    }
}

fn backend_err(op: &str, e: impl std::fmt::Display) -> ModelError {
    ModelError::Backend { op: op.to_string(), message: e.to_string() }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Grows `buf` to hold at least `n` elements (never shrinks).
fn ensure<T: chatglm_cuda::DeviceRepr>(
    gpu: &Gpu,
    buf: &mut Option<CudaSlice<T>>,
    n: usize,
    what: &str,
) -> Result<u64, CudaError> {
    if buf.as_ref().is_none_or(|b| b.len() < n) {
        // Grow by 1.5× so a slowly growing step does not reallocate each time.
        let cap = buf.as_ref().map_or(0, |b| b.len());
        // Queued launches may use the old buffer: issue them before freeing it.
        gpu.flush_recorded(false)?;
        *buf = None;
        *buf = Some(gpu.alloc::<T>(n.max(cap + cap / 2), what)?);
    }
    Ok(device_ptr(buf.as_ref().expect("invariant: allocated above")))
}

impl CudaBackend {
    /// Opens GPU `ordinal` for a model of `cfg`'s shape.
    pub fn new(ordinal: usize, cfg: &Config) -> Result<Self, ModelError> {
        let gpu = Gpu::open(ordinal).map_err(|e| backend_err("opening the GPU", e))?;
        let dims = AttentionDims {
            n_heads: cfg.num_attention_heads,
            n_groups: cfg.multi_query_group_num,
            head_dim: cfg.kv_channels,
            block_tokens: KV_BLOCK_TOKENS,
        };
        dims.validate().map_err(|e| backend_err("model shape", e))?;
        let rope = crate::cpu::rope_table(cfg);
        let inv_freq = gpu.upload_new(rope.inv_freq(), "rotary table").map_err(|e| backend_err("start-up", e))?;
        Ok(Self {
            gpu,
            dims,
            n_layers: cfg.num_layers,
            max_context: cfg.seq_length,
            gemv_max_tokens: std::env::var("CHATGLM_GEMV_MAX_TOKENS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_GEMV_MAX_TOKENS)
                .clamp(1, GEMV_MAX_TOKENS),
            prefetch_after_attention: std::env::var("CHATGLM_GEMV_PREFETCH_AFTER_ATTENTION")
                .ok()
                .and_then(|v| v.parse().ok()),
            skip: std::env::var("CHATGLM_CUDA_SKIP")
                .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default(),
            inv_freq,
            host_inv_freq: rope.inv_freq().to_vec(),
            n_pairs: rope.n_pairs(),
            pools: Mutex::new(Vec::new()),
            prefix: Mutex::new(None),
            host_embedding: Mutex::new(None),
            quantized: std::sync::atomic::AtomicBool::new(false),
            float_products: std::sync::atomic::AtomicBool::new(false),
            batched_graphs: std::env::var("CHATGLM_CUDA_BATCH_GRAPHS").map_or(true, |v| v != "0").into(),
            queue_steps: std::env::var("CHATGLM_CUDA_QUEUE_STEPS").map_or(true, |v| v != "0"),
            activations: Mutex::new(products::ActivationPolicy::from_env()?),
            weight_chain: Mutex::new(weight_chain::WeightChain::default()),
            prefetch_next: weight_chain::prefetch_next_bytes(),
            grouped_prefetch: weight_chain::grouped_prefetch_bytes(),
            mlp_stream: mlp_block::mlp_stream_requested().into(),
            short_attention: short_attention::ShortAttention::from_env(),
            handoff: handoff::handoff_requested().into(),
            handoff_uses: 0.into(),
            norm_fold: handoff::norm_fold_requested().into(),
            norm_fold_uses: 0.into(),
            step: Mutex::new(StepBuffers::default()),
            error: Mutex::new(None),
        })
    }

    pub fn device(&self) -> &DeviceInfo {
        self.gpu.info()
    }

    /// `prefix` as device cache rows of `dtype` (made once per prefix): keys
    /// rotated by the prefix length, since the tokens after it take rotary
    /// positions from that length on.
    fn device_prefix(&self, prefix: &PrefixKv, dtype: KvFormat) -> Result<Arc<DevicePrefix>, ModelError> {
        let key = PrefixKey::of(prefix);
        let mut slot = lock(&self.prefix);
        if let Some((k, d, p)) = slot.as_ref() {
            if *k == key && *d == dtype {
                return Ok(p.clone());
            }
        }
        let (rows, groups, dim) = (prefix.len, self.dims.n_groups, self.dims.head_dim);
        let width = groups * dim;
        if prefix.layers.len() != self.n_layers
            || prefix.layers.iter().any(|(k, v)| k.len() != rows * width || v.len() != rows * width)
        {
            return Err(backend_err(
                "P-Tuning prefix",
                format!("the prefix does not fit {} layers of {width}", self.n_layers),
            ));
        }
        let mut staged = Vec::with_capacity(self.n_layers * 2 * rows * width);
        let angles: Vec<(f32, f32)> = self
            .host_inv_freq
            .iter()
            .map(|&f| {
                let (s, c) = (rows as f32 * f).sin_cos();
                (c, s)
            })
            .collect();
        for (k, v) in &prefix.layers {
            for (which, src) in [k, v].into_iter().enumerate() {
                for g in 0..groups {
                    for r in 0..rows {
                        let row = &src[r * width + g * dim..r * width + (g + 1) * dim];
                        let start = staged.len();
                        staged.extend_from_slice(row);
                        if which == 0 {
                            let head = &mut staged[start..];
                            for (i, &(c, s)) in angles.iter().take(self.n_pairs).enumerate() {
                                let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                                head[2 * i] = x0 * c - x1 * s;
                                head[2 * i + 1] = x1 * c + x0 * s;
                            }
                        }
                    }
                }
            }
        }
        let bytes: Vec<u8> = match dtype {
            KvFormat::F32 => staged.iter().flat_map(|v| v.to_le_bytes()).collect(),
            KvFormat::F16 => staged.iter().flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes()).collect(),
            KvFormat::Q8_0 => q8_0_rows(&staged, dim),
        };
        let data =
            self.gpu.upload_new(&bytes, "P-Tuning prefix rows").map_err(|e| backend_err("P-Tuning prefix", e))?;
        let p =
            Arc::new(DevicePrefix { rows, data, runs: self.n_layers * 2 * groups, row_bytes: dtype.row_bytes(dim) });
        *slot = Some((key, dtype, p.clone()));
        Ok(p)
    }

    /// Forces the 4- or 8-row mat-vec kernel (0: chosen by shape), so tests
    /// and measurements can cover both.
    pub fn force_gemv_rows(&self, rows: usize) {
        self.gpu.force_gemv_rows(rows);
    }

    /// When one-token 8-row products use the lean kernels (5 blocks per SM;
    /// by default where that makes the grid one wave), so tests can cover both.
    pub fn set_gemv_lean(&self, lean: GemvLean) {
        self.gpu.set_gemv_lean(lean);
    }

    /// Chooses a token for each row of `logits` (rows × `cols`, host f32)
    /// with the device sampler, as a decode step's sampling does: `None`
    /// where the row is left to the host. For testing the device sampler
    /// against the host's on the same logits.
    pub fn sample_logits(
        &self,
        logits: &[f32],
        cols: usize,
        choices: &[TokenChoice],
    ) -> Result<Vec<Option<u32>>, ModelError> {
        let rows = choices.len();
        if cols == 0 || logits.len() != rows * cols {
            return Err(ModelError::Backend {
                op: "sampling".into(),
                message: format!("{} logits for {rows} rows of {cols}", logits.len()),
            });
        }
        self.gpu.bind().map_err(|e| backend_err("sampling", e))?;
        let words: Vec<u32> =
            choices.iter().flat_map(|c| sample_row_words(c.temperature, c.top_p, c.top_k, c.uniform)).collect();
        let run = || -> Result<Vec<i32>, CudaError> {
            let mut x = self.gpu.alloc::<f32>(logits.len(), "logits")?;
            self.gpu.upload(logits, &mut x, "logits")?;
            let mut params = self.gpu.alloc::<u32>(words.len(), "sampling parameters")?;
            self.gpu.upload(&words, &mut params, "sampling parameters")?;
            let out = self.gpu.alloc::<i32>(rows.max(1), "sampled tokens")?;
            // SAFETY: x holds rows×cols f32, params rows parameter rows, out ≥ rows i32.
            unsafe { self.gpu.sample_rows(device_ptr(&x), rows, cols, device_ptr(&params), device_ptr(&out))? };
            let mut ids = vec![-1i32; rows];
            self.gpu.download(&out, &mut ids, "sampled tokens")?;
            Ok(ids)
        };
        let ids = run().map_err(|e| backend_err("sampling", e))?;
        Ok(ids.into_iter().map(|i| u32::try_from(i).ok()).collect())
    }

    /// `(free, total)` device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize), ModelError> {
        self.gpu.memory().map_err(|e| backend_err("cuMemGetInfo", e))
    }

    /// Bytes held by KV-cache blocks (allocated, and of those free).
    pub fn kv_pool_bytes(&self) -> (usize, usize) {
        lock(&self.pools).iter().fold((0, 0), |(a, f), p| {
            let (total, free) = p.usage();
            (a + total * p.block_bytes, f + free * p.block_bytes)
        })
    }

    fn pool(&self, dtype: KvFormat) -> Arc<KvPool> {
        let mut pools = lock(&self.pools);
        if let Some(p) = pools.iter().find(|p| p.dtype == dtype) {
            return p.clone();
        }
        let p = Arc::new(KvPool::new(
            self.gpu.clone(),
            dtype,
            self.n_layers,
            self.dims.n_groups,
            self.dims.head_dim,
            self.dims.block_tokens,
        ));
        pools.push(p.clone());
        p
    }

    /// Whether `w`'s SwiGLU halves suit the fused product (quantized
    /// weights: each half whole 16-row tiles).
    fn swiglu_fusable(&self, w: &CudaMatrix) -> bool {
        w.quant.is_none() || (w.rows / 2).is_multiple_of(chatglm_cuda::quant::TILE_ROWS)
    }

    /// Keeps the first error of a step.
    fn fail(&self, e: ModelError) {
        let mut slot = lock(&self.error);
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    fn failed(&self) -> bool {
        lock(&self.error).is_some()
    }

    /// Whether a batched decode step (`n` sequences of one token each) is
    /// replayed from a graph: the option is on, quantized products take the
    /// step in our kernels (up to 256 tokens) and float ones through
    /// cuBLASLt, whose products join the recording. Prompt chunks are not:
    /// every new token count would capture a graph.
    fn batched_graph_step(&self, n: usize, one_token_each: bool) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.batched_graphs.load(Relaxed)
            && one_token_each
            && n <= products::QMMA_CHUNKED_TOKENS
            && (!self.float_products.load(Relaxed) || self.gpu.records_products())
    }

    /// Which steps' quantized products of 9..=64 tokens take f16 activations
    /// instead of q8_0 codes: `q8`, `batched` (the default: decode steps of
    /// several sequences) or `f16`, as `CHATGLM_GPU_ACTIVATIONS` sets it.
    pub fn set_gpu_activations(&self, setting: &str) -> Result<(), ModelError> {
        let policy = products::ActivationPolicy::parse(setting)
            .ok_or_else(|| backend_err("GPU activations", format!("{setting:?}: expected q8, batched or f16")))?;
        *lock(&self.activations) = policy;
        Ok(())
    }

    /// Replays batched decode steps from CUDA graphs (on, the default) or
    /// launches them one by one (off; see `CHATGLM_CUDA_BATCH_GRAPHS`).
    pub fn set_batched_graphs(&self, on: bool) {
        self.batched_graphs.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `op` is left out by `CHATGLM_CUDA_SKIP` (measurements only).
    fn skipped(&self, op: &str) -> bool {
        !self.skip.is_empty() && self.skip.iter().any(|s| s == op)
    }

    /// Runs `f` unless the step has already failed; records its error.
    fn run(&self, op: &str, f: impl FnOnce() -> Result<(), CudaError>) {
        if self.failed() || self.skipped(op) {
            return;
        }
        if let Err(e) = f() {
            self.fail(backend_err(op, e));
        }
        lock(&self.step).handoff.operation_ended();
    }
}

impl Backend for CudaBackend {
    type Matrix = CudaMatrix;
    type Vector = CudaVector;
    type Activations = CudaActivations;
    type Cache = CudaKvCache;

    fn name(&self) -> String {
        format!("cuda ({})", self.gpu.info())
    }

    fn memory_plan(&self, weight_bytes: usize, kv_bytes_per_token: usize) -> Option<String> {
        let (free, total) = self.gpu.memory().ok()?;
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        // Keep 1 GiB back for activations, cuBLAS workspace and the prefill chunk.
        let kv_tokens = free.saturating_sub(1 << 30) / kv_bytes_per_token.max(1);
        let host = lock(&self.host_embedding).as_ref().map_or(String::new(), |t| {
            let cache = match t.row_cache_bytes() {
                0 => String::new(),
                b => format!(
                    "; a {:.1} MiB device cache of the rows decode steps read, made at the first step",
                    b as f64 / (1 << 20) as f64
                ),
            };
            format!(" (the {:.2} GiB embedding table stays in host memory{cache})", gib(t.bytes()))
        });
        Some(format!(
            "GPU memory: weights {:.2} GiB{host}, workspace {} MiB; {:.1} of {:.1} GiB free, 1 GiB of it kept for \
             activations and the CUDA graphs of decode steps (at most {MAX_GRAPHS} kept), room for about \
             {kv_tokens} tokens of KV cache ({} KiB per token) in 64-token blocks allocated as sequences grow",
            gib(weight_bytes),
            self.gpu.workspace_bytes() >> 20,
            gib(free),
            gib(total),
            kv_bytes_per_token / 1024
        ))
    }

    fn device_memory(&self) -> Option<crate::DeviceMemory> {
        let (free, total) = self.gpu.memory().ok()?;
        let graphs = self.gpu.graph_stats();
        Some(crate::DeviceMemory {
            used_bytes: total.saturating_sub(free),
            total_bytes: total,
            workspace_bytes: self.gpu.workspace_bytes(),
            graphs_cached: graphs.cached,
            graph_captures: graphs.captures,
            graph_replays: graphs.replays,
        })
    }

    /// Products of 4096 tokens run near the matrix units' peak; activations
    /// stay under 1 GB for ChatGLM2-6B. Quantized models are run for their
    /// small memory: prompts go through the quantized products 64 tokens at
    /// a time (no dequantized weights, no cuBLAS kernels or workspace, a few
    /// MB of activations), at about the speed 1024-token chunks of
    /// dequantize + cuBLAS reached (8–10 K tokens/s on the H200).
    /// `CHATGLM_PREFILL_CHUNK` overrides (e.g. 1024 for 2× faster int4
    /// prompts at ~400 MB more memory).
    fn prefill_chunk_tokens(&self) -> usize {
        if let Some(n) = std::env::var("CHATGLM_PREFILL_CHUNK").ok().and_then(|v| v.parse::<usize>().ok()) {
            return n.max(1);
        }
        if self.quantized.load(std::sync::atomic::Ordering::Relaxed) {
            chatglm_cuda::quant::QMMA_MAX_TOKENS
        } else {
            4096
        }
    }

    fn supports_kv_prefix(&self) -> bool {
        true
    }

    fn set_kv_prefix(&self, cache: &mut CudaKvCache, prefix: &chatglm_weights::ptuning::PrefixKv) {
        match self.device_prefix(prefix, cache.pool_dtype()) {
            Ok(p) => cache.set_prefix(p),
            Err(e) => cache.fail_prefix(e.to_string()),
        }
    }

    fn new_cache(&self, _n_layers: usize, _n_groups: usize, _head_dim: usize, dtype: KvDType) -> CudaKvCache {
        // One pool per row format (f32, f16, q8_0).
        CudaKvCache::new(self.pool(pool_dtype(dtype)), dtype)
    }

    fn kv_block_tokens(&self) -> Option<usize> {
        Some(self.dims.block_tokens)
    }

    fn pads_decode_steps(&self) -> bool {
        // Padding pays only where batched steps replay from graphs.
        self.batched_graph_step(1, true)
    }

    fn provide_kv_blocks(&self, dtype: KvDType, blocks: usize) -> Result<(), ModelError> {
        self.pool(pool_dtype(dtype)).provide(blocks)
    }

    fn prepare_step(
        &self,
        layout: &TokenLayout,
        ids: &[u32],
        batch: &mut [SequenceInput<'_, CudaKvCache>],
    ) -> Result<(), ModelError> {
        *lock(&self.error) = None;
        self.gpu.bind().map_err(|e| backend_err("prepare step", e))?;
        let mut kv_dtype = None;
        for (s, seq) in batch.iter_mut().enumerate() {
            let d = seq.cache.pool_dtype();
            if !d.supports(self.dims.head_dim) {
                return Err(ModelError::UnsupportedKvDType {
                    dtype: d.name(),
                    reason: format!(
                        "a head size of {} is not a multiple of 32; use --kv-dtype f16",
                        self.dims.head_dim
                    ),
                });
            }
            if kv_dtype.is_some_and(|k| k != d) {
                return Err(backend_err("prepare step", "sequences of one step must share the KV-cache type"));
            }
            kv_dtype = Some(d);
            seq.cache.reserve(seq.cache.prefix_rows() + layout.seq_start[s] + layout.seq_tokens[s])?;
            seq.cache.write_prefix()?;
        }
        // P-Tuning prefix rows sit in front of a sequence's tokens: its
        // tokens take cache rows (and rotary positions) from the prefix
        // length on. The prefix keys were rotated by that length, so every
        // query-key angle is the official one (rotations compose).
        let shifted;
        let layout = if batch.iter().any(|s| s.cache.prefix_rows() > 0) {
            let mut l = layout.clone();
            for (t, p) in l.position.iter_mut().enumerate() {
                *p += batch[l.seq_of_token[t]].cache.prefix_rows();
            }
            for (s, start) in l.seq_start.iter_mut().enumerate() {
                *start += batch[s].cache.prefix_rows();
            }
            shifted = l;
            &shifted
        } else {
            layout
        };
        let kv_dtype = kv_dtype.unwrap_or(KvFormat::F16);
        let flash = self.gpu.flash_supported(&self.dims, kv_dtype);
        let decode = self.gpu.decode_supported(&self.dims, kv_dtype);
        let decode_heads = decode.then(|| self.gpu.decode_heads_per_block(&self.dims, kv_dtype));
        let blocks: Vec<&[u64]> = batch.iter().map(|s| s.cache.blocks()).collect();
        let longest = (0..batch.len()).map(|s| layout.seq_start[s] + layout.seq_tokens[s]).max().unwrap_or(0);
        let sms = self.gpu.info().multiprocessors;
        // Decode steps of a few tokens are replayed from CUDA graphs: their
        // launches depend on the context lengths only through the prefetch
        // rule's one threshold (a second graph). Batched steps of a
        // model whose products are all quantized run only our kernels too.
        let few = ids.len() <= self.gemv_max_tokens && layout.logit_rows.len() <= self.gemv_max_tokens;
        let one_token_each = batch.iter().all(|s| s.tokens.len() == 1);
        let replay = decode && (few || self.batched_graph_step(ids.len(), one_token_each));
        let plan = StepPlan::build(
            layout,
            ids,
            &blocks,
            flash,
            decode_heads,
            &self.dims,
            sms,
            replay.then_some(self.max_context),
        );
        let replay = replay && plan.n_tiles == 0;
        let mut embedded = Vec::new();
        if let Some(table) = lock(&self.host_embedding).as_ref().filter(|t| t.device_table().is_none()) {
            table.gather(ids, &mut embedded)?;
        }
        let mut st = lock(&self.step);
        let st = &mut *st;
        let mut upload = || -> Result<(), CudaError> {
            if !embedded.is_empty() {
                ensure(&self.gpu, &mut st.embedded, embedded.len(), "embedding rows")?;
                self.gpu.upload(&embedded, st.embedded.as_mut().expect("invariant: ensured"), "embedding rows")?;
            }
            // Through page-locked copies: the step before may still be
            // running (a queued step), and a copy from pageable memory may
            // wait for it.
            let slot = st.parity;
            st.parity ^= 1;
            // Read in place by one launch, which also sets the tokens the
            // step before chose (still in `chosen`, which this step's own
            // choice overwrites later).
            let (meta16, table16) = chatglm_cuda::ops::staged_chunks(plan.meta.len(), plan.table.len());
            ensure(&self.gpu, &mut st.meta, 4 * meta16, "step metadata")?;
            ensure(&self.gpu, &mut st.table, 2 * table16, "block table")?;
            let bytes = chatglm_cuda::ops::staged_bytes(plan.meta.len(), plan.table.len());
            let staging = &mut st.staging[slot];
            if staging.as_ref().is_none_or(|b| b.len() < bytes) {
                *staging = None;
                *staging = Some(self.gpu.staging_buffer(bytes.next_power_of_two().max(4096), "step metadata")?);
            }
            let chain = if plan.n_chained > 0 {
                let chosen = st.chosen.as_ref().ok_or_else(|| CudaError::Invalid {
                    op: "chained tokens".into(),
                    message: "no step before chose tokens".into(),
                })?;
                Some((device_ptr(chosen), plan.off_chained(), plan.n_chained))
            } else {
                None
            };
            // SAFETY: every pair's row < n_tokens (the ids at the start of the
            // metadata) and its source < the step before's logits rows, which
            // `chosen` holds.
            unsafe {
                self.gpu.stage_step(
                    &plan.meta,
                    &plan.table,
                    st.meta.as_mut().expect("invariant: ensured"),
                    st.table.as_mut().expect("invariant: ensured"),
                    st.staging[slot].as_mut().expect("invariant: ensured"),
                    chain,
                )?
            };
            if let Some(split) = plan.split {
                let (o, ml) = split.partials(&self.dims, plan.n_work);
                ensure(&self.gpu, &mut st.part_o, o, "attention partials")?;
                ensure(&self.gpu, &mut st.part_ml, ml, "attention partials")?;
                let n = SplitPlan::decode_counters(&self.dims, plan.decode_heads, plan.n_work);
                if st.counters.as_ref().is_none_or(|c| c.len() < n) {
                    st.counters = None;
                    st.counters = Some(self.gpu.alloc_zeros::<i32>(n.max(256), "attention merge counters")?);
                }
            }
            ensure(&self.gpu, &mut st.chosen, plan.logit_rows.len().max(1), "greedy tokens")?;
            if !st.sampling.is_empty() {
                ensure(&self.gpu, &mut st.sample_params, st.sampling.len(), "sampling parameters")?;
                let dst = st.sample_params.as_mut().expect("invariant: ensured");
                self.gpu.upload(&st.sampling, dst, "sampling parameters")?;
            }
            Ok(())
        };
        upload().map_err(|e| backend_err("prepare step", e))?;
        st.plan = plan;
        st.prefetch_after_attention = prefetch_after_attention(self.prefetch_after_attention, longest);
        st.short_attention = st.plan.decode_kernel
            && self.short_attention.takes(longest)
            && self.gpu.decode_short_supported(&self.dims, kv_dtype);
        st.kv_dtype = Some(kv_dtype);
        st.rotated = None;
        st.f16_activations = lock(&self.activations).f16_for(batch.len(), one_token_each);
        st.graph = replay;
        if replay {
            self.gpu.begin_recording().map_err(|e| backend_err("prepare step", e))?;
        }
        Ok(())
    }

    fn finish_step(&self) -> Result<(), ModelError> {
        lock(&self.step).sampling.clear();
        self.flush_step_launches();
        let synced = self.gpu.synchronize();
        if let Some(e) = lock(&self.error).take() {
            return Err(e);
        }
        synced.map_err(|e| backend_err("step", e))
    }

    fn queues_steps(&self) -> bool {
        // Where the host gathers a quantized model's embedding rows it needs
        // the ids; a mapped table the device reads by the ids it chose.
        self.queue_steps && lock(&self.host_embedding).as_ref().is_none_or(|t| t.device_table().is_some())
    }

    fn queue_greedy(&self, x: &CudaActivations, cols: usize) {
        if self.failed() {
            return;
        }
        let rows = x.rows;
        let r = (|| {
            // The step's launches first (its graph): the argmax writes a host
            // buffer that changes from step to step, so it runs after them.
            self.flush_step_launches();
            if self.failed() {
                // The launch fails (finish_queued_step): no read to queue for it.
                return Ok(());
            }
            let spare = lock(&self.step).spare_reads.pop();
            let mut buf = match spare {
                Some(b) if b.len() >= rows => b,
                _ => self.gpu.host_buffer::<i32>(rows.max(256), "greedy tokens")?,
            };
            let queued = self.argmax_into_chosen(x, cols, Some(&mut buf));
            let mut st = lock(&self.step);
            if queued.is_ok() {
                st.reads.push_back(buf);
            } else {
                st.spare_reads.push(buf);
            }
            queued
        })();
        if let Err(e) = r {
            self.fail(backend_err("argmax", e));
        }
    }

    fn collect_greedy(&self, out: &mut Vec<u32>) -> Result<(), ModelError> {
        out.clear();
        self.gpu.bind().map_err(|e| backend_err("collect", e))?;
        let mut buf =
            lock(&self.step).reads.pop_front().ok_or_else(|| backend_err("collect", "no queued step to collect"))?;
        let r = self.gpu.take_download(&mut buf).map(|ids| out.extend(ids.iter().map(|&i| i as u32)));
        lock(&self.step).spare_reads.push(buf);
        r.map_err(|e| backend_err("step", e))
    }

    fn finish_queued_step(&self) -> Result<(), ModelError> {
        lock(&self.step).sampling.clear();
        self.flush_step_launches();
        match lock(&self.error).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn load_matrix(&self, t: &Tensor, format: WeightFormat, _mmap: bool) -> Result<CudaMatrix, ModelError> {
        let [rows, cols] = t.shape[..] else {
            return Err(ModelError::BadTensor {
                tensor: t.name.clone(),
                message: format!("expected a 2-D matrix, found shape {:?}", t.shape),
            });
        };
        if let Some(device) = quant::device_format(format.resolve(t.dtype)) {
            let tiled = quant::tiled_matrix(t, rows, cols, format.resolve(t.dtype))?;
            let what = format!("weights {}", t.name);
            let data = self.gpu.upload_new(&tiled.bytes, &what).map_err(|e| backend_err("loading weights", e))?;
            self.quantized.store(true, std::sync::atomic::Ordering::Relaxed);
            t.data.release_pages(0..t.data.len());
            debug_assert_eq!(tiled.shape.format, device);
            lock(&self.weight_chain).tiled(device_ptr(&data), tiled.shape.offsets().2);
            return Ok(CudaMatrix {
                quant: Some(tiled.shape),
                ..CudaMatrix::dense(rows, cols, DType::F16, Some(data))
            });
        }
        let dtype =
            gpu_dtype(format, t.dtype).map_err(|message| ModelError::BadTensor { tensor: t.name.clone(), message })?;
        let data = self.upload_matrix(t, rows, cols, dtype)?;
        self.float_products.store(true, std::sync::atomic::Ordering::Relaxed);
        lock(&self.weight_chain).untiled();
        Ok(CudaMatrix::dense(rows, cols, dtype, Some(data)))
    }

    /// Quantized models keep the embedding table on the host, in the format
    /// the CPU would hold it; float models keep it on the device.
    fn load_embedding(&self, t: &Tensor, format: WeightFormat, mmap: bool) -> Result<CudaMatrix, ModelError> {
        let [rows, cols] = t.shape[..] else {
            return self.load_matrix(t, format, mmap);
        };
        if !format.resolve(t.dtype).is_quantized() {
            return self.load_matrix(t, format, mmap);
        }
        let table = Arc::new(self.device_readable(HostTable::quantized(t, rows, cols, format)?));
        *lock(&self.host_embedding) = Some(table.clone());
        Ok(CudaMatrix { host: Some(table), ..CudaMatrix::dense(rows, cols, DType::F32, None) })
    }

    fn random_embedding(&self, rows: usize, cols: usize, format: WeightFormat, seed: u64) -> CudaMatrix {
        if !format.is_quantized() {
            return self.random_matrix(rows, cols, format, seed);
        }
        let table = Arc::new(self.device_readable(HostTable::random(rows, cols, format, seed)));
        *lock(&self.host_embedding) = Some(table.clone());
        CudaMatrix { host: Some(table), ..CudaMatrix::dense(rows, cols, DType::F32, None) }
    }

    fn load_vector(&self, values: Vec<f32>) -> CudaVector {
        match self.gpu.upload_new(&values, "vector") {
            Ok(d) => CudaVector { len: values.len(), data: Some(d) },
            Err(e) => {
                self.fail(backend_err("loading a vector", e));
                CudaVector { len: values.len(), data: None }
            }
        }
    }

    fn random_matrix(&self, rows: usize, cols: usize, format: WeightFormat, seed: u64) -> CudaMatrix {
        if let Some(device) = quant::device_format(format) {
            return match self.random_tiled(rows, cols, device, seed) {
                Ok(m) => {
                    if let Some(p) = m.tiled() {
                        lock(&self.weight_chain).tiled(p.base, p.shape.offsets().2);
                    }
                    m
                }
                Err(e) => {
                    self.fail(backend_err("synthetic weights", e));
                    CudaMatrix::dense(rows, cols, DType::F16, None)
                }
            };
        }
        let dtype = match gpu_dtype(format, FileDType::F16) {
            Ok(d) => d,
            Err(message) => {
                self.fail(backend_err("synthetic weights", message));
                return CudaMatrix::dense(rows, cols, DType::F16, None);
            }
        };
        let made = self.gpu.alloc::<u8>(rows * cols * dtype.size(), "synthetic weights").and_then(|d| {
            // SAFETY: d holds rows×cols elements of dtype.
            unsafe { self.gpu.fill_random(device_ptr(&d), rows * cols, dtype, seed, 0.035)? };
            Ok(d)
        });
        self.float_products.store(true, std::sync::atomic::Ordering::Relaxed);
        lock(&self.weight_chain).untiled();
        match made {
            Ok(d) => CudaMatrix::dense(rows, cols, dtype, Some(d)),
            Err(e) => {
                self.fail(backend_err("synthetic weights", e));
                CudaMatrix::dense(rows, cols, dtype, None)
            }
        }
    }

    fn matrix_bytes(&self, m: &CudaMatrix) -> usize {
        match (m.quant, &m.host) {
            (Some(s), _) => s.offsets().2,
            // Host memory, not the device's.
            (None, Some(_)) => 0,
            (None, None) => m.rows * m.cols * m.dtype.size(),
        }
    }

    fn matrix_format(&self, m: &CudaMatrix) -> &'static str {
        match (m.quant, &m.host) {
            (Some(s), _) => s.format.name(),
            (None, Some(_)) => "host",
            (None, None) => m.dtype.name(),
        }
    }

    fn new_activations(&self) -> CudaActivations {
        CudaActivations { rows: 0, cols: 0, buf: None, half: None, half_of: None, f32_ok: true }
    }

    fn resize(&self, a: &mut CudaActivations, rows: usize, cols: usize) {
        a.rows = rows;
        a.cols = cols;
        // Contents are unspecified after a resize; the f32 buffer is the one
        // an operation writes unless it says otherwise.
        a.f32_ok = true;
        a.half_of = None;
        if a.capacity() < rows * cols {
            // Queued launches may use the old buffer: issue them before freeing it.
            if let Err(e) = self.gpu.flush_recorded(false) {
                self.fail(backend_err("activations", e));
            }
            a.buf = None;
            match self.gpu.alloc::<f32>(rows * cols, "activations") {
                Ok(b) => a.buf = Some(b),
                Err(e) => self.fail(backend_err("activations", e)),
            }
        }
    }

    fn embed(&self, table: &CudaMatrix, ids: &[u32], out: &mut CudaActivations) {
        self.run("embed", || {
            let st = lock(&self.step);
            if st.plan.n_tokens != ids.len() || st.meta.is_none() {
                return Err(CudaError::Invalid {
                    op: "embed".into(),
                    message: "ids differ from the prepared step".into(),
                });
            }
            let op = Self::output(out, ids.len(), table.cols, "embed")?;
            let ids_ptr = device_ptr(st.meta.as_ref().expect("invariant: checked"));
            if let Some((h, (tp, rows))) = table.host.as_ref().and_then(|h| Some((h, h.device_table()?))) {
                let cache = h.row_cache(&self.gpu)?;
                // SAFETY: a mapped table of table.rows rows of table.cols values
                // in that element type, its cache made for its rows; ids as
                // below; out n×cols.
                return unsafe {
                    match rows {
                        DeviceRows::Float(dtype) => {
                            self.gpu.embed(tp, dtype, table.rows, table.cols, ids_ptr, ids.len(), op, cache)
                        }
                        DeviceRows::Ggml(block) => {
                            self.gpu.embed_ggml(tp, block, table.rows, table.cols, ids_ptr, ids.len(), op, cache)
                        }
                    }
                };
            }
            if table.host.is_some() {
                let rows = st.embedded.as_ref().filter(|b| b.len() >= ids.len() * table.cols).ok_or_else(|| {
                    CudaError::Invalid { op: "embed".into(), message: "the step's rows were not gathered".into() }
                })?;
                // SAFETY: rows holds the step's n×cols gathered values; out n×cols.
                return unsafe { self.gpu.copy_f32(device_ptr(rows), op, ids.len() * table.cols) };
            }
            let tp = Self::matrix_ptr(table, "embed")?;
            // SAFETY: ids are the first n ints of meta (validated < vocab by the
            // forward pass, clamped in the kernel); out holds n×cols.
            unsafe { self.gpu.embed(tp, table.dtype, table.rows, table.cols, ids_ptr, ids.len(), op, None) }
        });
    }

    fn rms_norm(&self, x: &CudaActivations, weight: &CudaVector, eps: f32, out: &mut CudaActivations) {
        self.run("rms_norm", || {
            let xp = Self::input(x, x.rows, x.cols, "rms_norm")?;
            let op = Self::output(out, x.rows, x.cols, "rms_norm")?;
            let wp = Self::vector_ptr(weight, x.cols, "rms_norm")?;
            // SAFETY: sizes checked above.
            unsafe { self.gpu.rms_norm(xp, wp, op, x.rows, x.cols, eps) }
        });
    }

    fn linear(&self, w: &CudaMatrix, bias: Option<&CudaVector>, x: &CudaActivations, out: &mut CudaActivations) {
        self.run("linear", || self.product("linear", w, bias, x, out, GemvMode::Store, None));
    }

    fn linear_add(&self, w: &CudaMatrix, x: &CudaActivations, acc: &mut CudaActivations, _tmp: &mut CudaActivations) {
        let role = if x.cols == self.dims.n_heads * self.dims.head_dim { "dense" } else { "mlp_down" };
        if self.skipped(role) {
            return;
        }
        self.run("linear_add", || self.product("linear_add", w, None, x, acc, GemvMode::Accumulate, None));
    }

    fn linear_swiglu(&self, w: &CudaMatrix, x: &CudaActivations, tmp: &mut CudaActivations, out: &mut CudaActivations) {
        if self.small_step(w, x.rows) && !self.swiglu_fusable(w) {
            self.linear(w, None, x, tmp);
            self.swiglu(tmp, out);
        } else if self.small_step(w, x.rows) {
            self.run("linear_swiglu", || self.product("linear_swiglu", w, None, x, out, GemvMode::SwiGlu, None));
        } else if w.dtype == DType::F32 {
            self.linear(w, None, x, tmp);
            self.swiglu(tmp, out);
        } else {
            // Large steps: the product writes 16-bit [gate | up] and SwiGLU
            // writes the 16-bit input of the next product (f32 never stored).
            self.run("linear_swiglu", || {
                let n = x.rows;
                let ffn = out.cols;
                if w.rows != 2 * ffn || x.cols != w.cols {
                    return Err(CudaError::Invalid {
                        op: "linear_swiglu".into(),
                        message: format!("{}×{} weights for ffn {ffn}", w.rows, w.cols),
                    });
                }
                let xin = match (x.half_of == Some(w.dtype), x.half.as_ref()) {
                    (true, Some(h)) => device_ptr(h),
                    _ => {
                        let xp = Self::input(x, n, w.cols, "linear_swiglu")?;
                        let mut st = lock(&self.step);
                        let p = ensure(&self.gpu, &mut st.half_x, n * w.cols, "16-bit activations")?;
                        // SAFETY: x n×cols f32; half_x sized n×cols.
                        unsafe { self.gpu.convert(xp, p, n * w.cols, w.dtype)? };
                        p
                    }
                };
                Self::check_capacity(tmp, n, 2 * ffn, "linear_swiglu")?;
                let tp = self.half_output(tmp, w.dtype)?;
                Self::check_capacity(out, n, ffn, "linear_swiglu")?;
                let op = self.half_output(out, w.dtype)?;
                if let Some(tiled) = w.tiled() {
                    self.dequantized_product(tiled, xin, tp, w.dtype, n, false, 0)?;
                } else {
                    let wp = Self::matrix_ptr(w, "linear_swiglu")?;
                    // SAFETY: w 2ffn×cols, xin n×cols (w's type), tmp half n×2ffn.
                    unsafe { self.gpu.gemm(wp, w.dtype, xin, tp, w.dtype, n, w.rows, w.cols, false, 0)? };
                }
                // SAFETY: tmp half n×2ffn, out half n×ffn (sized above).
                unsafe { self.gpu.swiglu_typed(tp, w.dtype, op, w.dtype, n, ffn) }
            });
        }
    }

    fn rms_norm_linear(
        &self,
        x: &CudaActivations,
        norm: &CudaVector,
        eps: f32,
        normed: &mut CudaActivations,
        w: &CudaMatrix,
        bias: Option<&CudaVector>,
        out: &mut CudaActivations,
    ) {
        if self.small_step(w, x.rows) {
            self.run("rms_norm_linear", || {
                self.product("rms_norm_linear", w, bias, x, out, GemvMode::Store, Some((norm, eps)))
            });
        } else if w.dtype != DType::F32 {
            // The normalised rows go straight to the product's 16-bit input.
            self.rms_norm_to_half(x, norm, eps, normed, w.dtype);
            self.linear(w, bias, normed, out);
        } else {
            self.rms_norm(x, norm, eps, normed);
            self.linear(w, bias, normed, out);
        }
    }

    fn rms_norm_qkv(
        &self,
        layer: usize,
        x: &CudaActivations,
        norm: &CudaVector,
        eps: f32,
        normed: &mut CudaActivations,
        w: &CudaMatrix,
        bias: Option<&CudaVector>,
        qkv: &mut CudaActivations,
    ) {
        if self.skipped("qkv") {
            return;
        }
        let dims = self.dims;
        let width = (dims.n_heads + 2 * dims.n_groups) * dims.head_dim;
        // The fused products append f32/f16 rows; a q8_0 cache takes rope_kv's.
        let float_cache = lock(&self.step).kv_dtype.is_none_or(|k| k.float_dtype().is_some());
        let fused = self.small_step(w, x.rows)
            && float_cache
            && w.rows == width
            && layer < self.n_layers
            && (w.quant.is_some() && dims.head_dim.is_multiple_of(2)
                || self.gpu.gemv_qkv_supported(w.dtype, w.cols, &dims));
        if !fused {
            lock(&self.step).rotated = None;
            self.rms_norm_linear(x, norm, eps, normed, w, bias, qkv);
            return;
        }
        self.run("qkv", || {
            let n = x.rows;
            if x.cols != w.cols {
                return Err(CudaError::Invalid {
                    op: "qkv".into(),
                    message: format!("x has {} columns, w {}", x.cols, w.cols),
                });
            }
            let mut st = lock(&self.step);
            let plan = &st.plan;
            let (Some(meta), Some(table), Some(kv)) =
                (&st.meta, &st.table, st.kv_dtype.and_then(KvFormat::float_dtype))
            else {
                return Err(CudaError::Invalid { op: "qkv".into(), message: "no prepared step".into() });
            };
            if plan.n_tokens != n {
                return Err(CudaError::Invalid {
                    op: "qkv".into(),
                    message: format!("{n} rows, the step has {}", plan.n_tokens),
                });
            }
            let meta = device_ptr(meta);
            let at = |off: usize| meta + (off * 4) as u64;
            let rope = chatglm_cuda::RopeArgs {
                positions: at(plan.off_positions()),
                seq_of_token: at(plan.off_seq()),
                block_table: device_ptr(table),
                max_blocks: plan.max_blocks,
                inv_freq: device_ptr(&self.inv_freq),
                n_pairs: self.n_pairs,
            };
            let op = Self::output(qkv, n, width, "qkv")?;
            let bp = match bias {
                Some(b) => Self::vector_ptr(b, width, "qkv")?,
                None => 0,
            };
            let np = Self::vector_ptr(norm, w.cols, "qkv")?;
            if let Some(tiled) = w.tiled() {
                drop(st);
                self.quantized_product(
                    "qkv",
                    tiled,
                    bp,
                    x,
                    op,
                    GemvMode::Store,
                    Some((np, eps)),
                    Some((kv, rope, dims, layer)),
                )?;
                lock(&self.step).rotated = Some(layer);
                return Ok(());
            }
            // SAFETY: w width×cols, x n×cols, qkv n×width, bias width, norm
            // cols (checked above); the plan's metadata and block table cover
            // every token's position (prepare_step).
            let xp = Self::input(x, n, w.cols, "qkv")?;
            let wp = Self::matrix_ptr(w, "qkv")?;
            unsafe { self.gpu.gemv_qkv(wp, w.dtype, xp, bp, op, n, w.cols, Some((np, eps)), kv, rope, dims, layer)? };
            st.rotated = Some(layer);
            Ok(())
        });
    }

    fn rms_norm_linear_swiglu(
        &self,
        x: &CudaActivations,
        norm: &CudaVector,
        eps: f32,
        normed: &mut CudaActivations,
        w: &CudaMatrix,
        tmp: &mut CudaActivations,
        out: &mut CudaActivations,
    ) {
        if self.skipped("mlp_up") {
            return;
        }
        if self.small_step(w, x.rows) && self.swiglu_fusable(w) {
            self.run("rms_norm_linear_swiglu", || {
                self.product("rms_norm_linear_swiglu", w, None, x, out, GemvMode::SwiGlu, Some((norm, eps)))
            });
        } else if w.dtype != DType::F32 && !self.small_step(w, x.rows) {
            self.rms_norm_to_half(x, norm, eps, normed, w.dtype);
            self.linear_swiglu(w, normed, tmp, out);
        } else {
            self.rms_norm(x, norm, eps, normed);
            self.linear_swiglu(w, normed, tmp, out);
        }
    }

    fn dense_and_mlp(
        &self,
        layer: usize,
        dense: &CudaMatrix,
        attn: &CudaActivations,
        hidden: &mut CudaActivations,
        proj: &mut CudaActivations,
        norm: &CudaVector,
        eps: f32,
        normed: &mut CudaActivations,
        up: &CudaMatrix,
        ffn_up: &mut CudaActivations,
        ffn: &mut CudaActivations,
        down: &CudaMatrix,
    ) {
        if let Some(block) = self.fused_mlp_block(dense, attn, hidden, norm, eps, up, ffn, down) {
            self.run("dense_and_mlp", || {
                lock(&self.step).after_attention = false;
                self.gpu.mlp_block_one_token(layer, &block?)
            });
            return;
        }
        self.linear_add(dense, attn, hidden, proj);
        self.rms_norm_linear_swiglu(hidden, norm, eps, normed, up, ffn_up, ffn);
        self.linear_add(down, ffn, hidden, proj);
    }

    fn add(&self, x: &mut CudaActivations, y: &CudaActivations) {
        self.run("add", || {
            let n = x.rows * x.cols;
            let xp = Self::input(x, x.rows, x.cols, "add")?;
            let yp = Self::input(y, x.rows, x.cols, "add")?;
            // SAFETY: both hold n values.
            unsafe { self.gpu.add(xp, yp, n) }
        });
    }

    fn swiglu(&self, x: &CudaActivations, out: &mut CudaActivations) {
        self.run("swiglu", || {
            let ffn = out.cols;
            let xp = Self::input(x, out.rows, 2 * ffn, "swiglu")?;
            let op = Self::output(out, out.rows, ffn, "swiglu")?;
            // SAFETY: sizes checked above.
            unsafe { self.gpu.swiglu(xp, op, out.rows, ffn) }
        });
    }

    fn attention(
        &self,
        shape: AttentionShape,
        layer: usize,
        qkv: &mut CudaActivations,
        _layout: &TokenLayout,
        _batch: &mut [SequenceInput<'_, CudaKvCache>],
        out: &mut CudaActivations,
    ) {
        self.run("attention", || {
            let dims = self.dims;
            if shape.n_heads != dims.n_heads || shape.n_groups != dims.n_groups || shape.head_dim != dims.head_dim {
                return Err(CudaError::Invalid {
                    op: "attention".into(),
                    message: format!("shape {shape:?} differs from the backend's {dims:?}"),
                });
            }
            if layer >= self.n_layers {
                return Err(CudaError::Invalid {
                    op: "attention".into(),
                    message: format!("layer {layer} of {}", self.n_layers),
                });
            }
            let mut st = lock(&self.step);
            let rotated = st.rotated.take() == Some(layer);
            let plan = &st.plan;
            let n = plan.n_tokens;
            let width = (dims.n_heads + 2 * dims.n_groups) * dims.head_dim;
            if qkv.rows != n || qkv.cols != width {
                return Err(CudaError::Invalid {
                    op: "attention".into(),
                    message: format!("qkv is {}×{}, the step needs {n}×{width}", qkv.rows, qkv.cols),
                });
            }
            let qp = Self::input(qkv, n, width, "attention")?;
            let op = Self::output(out, n, dims.n_heads * dims.head_dim, "attention")?;
            let (Some(meta), Some(table), Some(kv)) = (&st.meta, &st.table, st.kv_dtype) else {
                return Err(CudaError::Invalid { op: "attention".into(), message: "no prepared step".into() });
            };
            let (meta, table) = (device_ptr(meta), device_ptr(table));
            let at = |off: usize| meta + (off * 4) as u64;
            // SAFETY: the plan was built from this step's layout and block
            // tables (every position of every token has a block); buffers were
            // sized from it in prepare_step and checked above.
            unsafe {
                if !rotated {
                    self.gpu.rope_kv(
                        kv,
                        qp,
                        width,
                        n,
                        at(plan.off_positions()),
                        at(plan.off_seq()),
                        table,
                        plan.max_blocks,
                        device_ptr(&self.inv_freq),
                        self.n_pairs,
                        dims,
                        layer,
                    )?;
                }
                self.gpu.attention_flash(
                    kv,
                    qp,
                    width,
                    op,
                    at(plan.off_tiles()),
                    plan.n_tiles,
                    table,
                    plan.max_blocks,
                    dims,
                    layer,
                )?;
                let work = chatglm_cuda::AttentionWork {
                    qkv: qp,
                    width,
                    out: op,
                    work_tokens: at(plan.off_work()),
                    work: plan.n_work,
                    positions: at(plan.off_positions()),
                    seq_of_token: at(plan.off_seq()),
                    block_table: table,
                    max_blocks: plan.max_blocks,
                    shape: dims,
                    layer,
                };
                if plan.decode_kernel && st.short_attention {
                    // One token: its output as q8_0 codes too, for the dense
                    // product; a batched step's in quantize_x's form.
                    let out_cols = dims.n_heads * dims.head_dim;
                    let every_token = plan.n_work == n;
                    let handoff = self.handoff.load(std::sync::atomic::Ordering::Relaxed)
                        && self.quantized.load(std::sync::atomic::Ordering::Relaxed);
                    let codes =
                        if handoff && n == 1 { handoff::hand_codes(&self.gpu, &mut st, op, out_cols)? } else { 0 };
                    let step = if handoff && n > 8 && every_token {
                        handoff::attention_step_codes(&self.gpu, &mut st, op, n, out_cols)?
                    } else {
                        None
                    };
                    self.gpu.attention_decode_short(work, codes, step)?;
                    self.short_attention.launched();
                } else if let Some(split) = plan.split {
                    let part_o = st.part_o.as_ref().map_or(0, device_ptr);
                    let part_ml = st.part_ml.as_ref().map_or(0, device_ptr);
                    if plan.decode_kernel {
                        let counters = st.counters.as_ref().map_or(0, device_ptr);
                        self.gpu.attention_decode(kv, work, split, part_o, part_ml, counters)?;
                    } else {
                        self.gpu.attention_split(kv, work, split, part_o, part_ml)?;
                    }
                }
            }
            st.after_attention = true;
            Ok(())
        });
    }

    fn gather_rows(&self, x: &CudaActivations, rows: &[usize], out: &mut CudaActivations) {
        self.run("gather_rows", || {
            if let Some(&r) = rows.iter().find(|&&r| r >= x.rows) {
                return Err(CudaError::Invalid { op: "gather_rows".into(), message: format!("row {r} of {}", x.rows) });
            }
            let xp = Self::input(x, x.rows, x.cols, "gather_rows")?;
            let op = Self::output(out, rows.len(), x.cols, "gather_rows")?;
            let mut st = lock(&self.step);
            if let (true, Some(meta)) = (st.plan.logit_rows == rows, &st.meta) {
                // The step's own logit rows: already uploaded with its metadata.
                let gp = device_ptr(meta) + (st.plan.off_logit_rows() * 4) as u64;
                // SAFETY: the rows were checked < x.rows; out holds rows.len()×cols.
                return unsafe { self.gpu.gather_rows(xp, gp, rows.len(), x.cols, op) };
            }
            let idx: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
            let gp = ensure(&self.gpu, &mut st.gather, idx.len(), "row indices")?;
            self.gpu.upload(&idx, st.gather.as_mut().expect("invariant: ensured"), "row indices")?;
            // SAFETY: every index < x.rows (checked); out holds rows.len()×cols.
            unsafe { self.gpu.gather_rows(xp, gp, idx.len(), x.cols, op) }
        });
    }

    fn read(&self, x: &CudaActivations, out: &mut Vec<f32>) {
        out.clear();
        if self.failed() {
            return;
        }
        out.resize(x.rows * x.cols, 0.0);
        self.flush_step_launches();
        let r = match &x.buf {
            Some(b) if b.len() >= out.len() && x.f32_ok => self.gpu.download(b, out, "logits"),
            _ => Err(CudaError::Invalid { op: "read".into(), message: "buffer smaller than its shape".into() }),
        };
        if let Err(e) = r {
            self.fail(backend_err("read", e));
        }
    }

    fn read_greedy(&self, x: &CudaActivations, cols: usize, out: &mut Vec<u32>) {
        out.clear();
        if self.failed() {
            return;
        }
        let rows = x.rows;
        let mut ids = vec![0i32; rows];
        let r = (|| {
            self.argmax_into_chosen(x, cols, None)?;
            let st = lock(&self.step);
            self.gpu.download(st.chosen.as_ref().expect("invariant: ensured above"), &mut ids, "greedy tokens")
        })();
        match r {
            Ok(()) => out.extend(ids.iter().map(|&i| i as u32)),
            Err(e) => self.fail(backend_err("argmax", e)),
        }
    }

    fn set_sampling(&self, choices: &[TokenChoice]) {
        let mut st = lock(&self.step);
        st.sampling.clear();
        for c in choices {
            st.sampling.extend(sample_row_words(c.temperature, c.top_p, c.top_k, c.uniform));
        }
    }

    fn read_sampled(&self, x: &CudaActivations, rows: usize, cols: usize, out: &mut Vec<Option<u32>>) {
        out.clear();
        if self.failed() {
            return;
        }
        let mut ids = vec![-1i32; rows];
        let r = (|| {
            let mut st = lock(&self.step);
            if x.rows != rows || x.cols != cols || st.sampling.len() != rows * SAMPLE_ROW_WORDS {
                return Err(CudaError::Invalid {
                    op: "sampling".into(),
                    message: format!(
                        "logits {}×{}, {rows}×{cols} expected, {} parameter words",
                        x.rows,
                        x.cols,
                        st.sampling.len()
                    ),
                });
            }
            let xp = Self::input(x, rows, cols, "sampling")?;
            let params = st.sample_params.as_ref().map_or(0, device_ptr);
            let p = ensure(&self.gpu, &mut st.chosen, rows.max(1), "sampled tokens")?;
            // SAFETY: x holds rows×cols f32 (checked); the parameters were
            // uploaded in prepare_step for these rows; chosen holds ≥ rows i32.
            unsafe { self.gpu.sample_rows(xp, rows, cols, params, p)? };
            st.sampling.clear();
            drop(st);
            self.flush_step_launches();
            let st = lock(&self.step);
            self.gpu.download(st.chosen.as_ref().expect("invariant: ensured above"), &mut ids, "sampled tokens")
        })();
        match r {
            Ok(()) => out.extend(ids.iter().map(|&i| u32::try_from(i).ok())),
            Err(e) => self.fail(backend_err("sampling", e)),
        }
    }
}

impl CudaBackend {
    /// The step's greedy choices into `chosen` (and `host`, see
    /// [`Gpu::argmax_rows`]), with the step's queued launches issued.
    fn argmax_into_chosen(
        &self,
        x: &CudaActivations,
        cols: usize,
        host: Option<&mut HostBuffer<i32>>,
    ) -> Result<(), CudaError> {
        let rows = x.rows;
        if x.cols != cols {
            return Err(CudaError::Invalid {
                op: "argmax".into(),
                message: format!("{} columns, {cols} expected", x.cols),
            });
        }
        let xp = Self::input(x, rows, cols, "argmax")?;
        let mut st = lock(&self.step);
        let p = ensure(&self.gpu, &mut st.chosen, rows.max(1), "greedy tokens")?;
        let need = chatglm_cuda::argmax_scratch_ints(rows);
        if st.argmax_scratch.as_ref().is_none_or(|b| b.len() < need) {
            // Queued launches may use the old scratch: issue them first. Zeroed:
            // the kernel expects its counters at zero and leaves them so.
            self.gpu.flush_recorded(false)?;
            st.argmax_scratch = None;
            st.argmax_scratch = Some(self.gpu.alloc_zeros::<i32>(need.max(1024), "argmax scratch")?);
        }
        let scratch = st.argmax_scratch.as_ref().expect("invariant: allocated above");
        // SAFETY: x holds rows×cols f32 (checked); chosen holds ≥ rows i32;
        // the scratch is sized above.
        unsafe { self.gpu.argmax_rows(xp, rows, cols, p, host, scratch)? };
        drop(st);
        self.flush_step_launches();
        Ok(())
    }

    /// Issues the step's queued launches (from a graph when the step is
    /// replayable): the step's results are about to be read.
    fn flush_step_launches(&self) {
        let graph = std::mem::take(&mut lock(&self.step).graph);
        if let Err(e) = self.gpu.flush_recorded(graph && !self.failed()) {
            self.fail(backend_err("step", e));
        }
    }

    /// CUDA graph use so far (captures, replays).
    pub fn graph_stats(&self) -> chatglm_cuda::GraphStats {
        self.gpu.graph_stats()
    }

    /// Writes host values into activations already sized to hold them (tests).
    pub fn upload_activations(&self, values: &[f32], a: &mut CudaActivations) -> Result<(), ModelError> {
        if values.len() != a.rows * a.cols {
            return Err(backend_err("upload", format!("{} values for {}×{}", values.len(), a.rows, a.cols)));
        }
        let buf = a.buf.as_mut().ok_or_else(|| backend_err("upload", "activations were never sized"))?;
        self.gpu.upload(values, buf, "activations").map_err(|e| backend_err("upload", e))?;
        a.f32_ok = true;
        a.half_of = None;
        Ok(())
    }

    /// Turns CUDA graph replay of decode steps on or off (on by default;
    /// `CHATGLM_CUDA_GRAPHS=0` starts with it off).
    pub fn set_graphs(&self, on: bool) {
        self.gpu.set_graphs(on);
    }

    /// Turns the counter-chained kernel dependencies of recorded decode
    /// steps on or off (`CHATGLM_CHAIN_SYNC=1` starts with them on).
    pub fn set_chain_sync(&self, on: bool) {
        self.gpu.set_chain_sync(on);
    }
}

/// CUDA devices that can run the model: the driver, NVRTC and cuBLAS
/// libraries load and at least one device answers. The error says, in one
/// sentence, what is missing.
pub fn usable_device_count() -> Result<usize, ModelError> {
    chatglm_cuda::usable_device_count().map_err(|e| backend_err("CUDA", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_cache_rows_hold_the_cpu_codes_then_their_f16_scales() {
        use chatglm_weights::quant::{BlockQ8_0, QuantBlock};
        let dim = 64;
        let values: Vec<f32> = (0..2 * dim).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
        let rows = q8_0_rows(&values, dim);
        let row_bytes = KvFormat::Q8_0.row_bytes(dim);
        assert_eq!(row_bytes, 68);
        assert_eq!(rows.len(), 2 * row_bytes);
        for (r, row) in rows.chunks_exact(row_bytes).enumerate() {
            for b in 0..dim / 32 {
                let want = BlockQ8_0::quantize(&values[r * dim + 32 * b..r * dim + 32 * (b + 1)]);
                let codes: Vec<i8> = row[32 * b..32 * (b + 1)].iter().map(|&c| c as i8).collect();
                assert_eq!(codes, want.qs);
                let scale = u16::from_le_bytes([row[dim + 2 * b], row[dim + 2 * b + 1]]);
                assert_eq!(scale, want.d.to_bits());
            }
        }
    }

    #[test]
    fn dense_product_prefetches_after_attention_only_at_short_contexts_unless_set() {
        assert_eq!(prefetch_after_attention(None, 0), Some(DEFAULT_PREFETCH_AFTER_ATTENTION));
        assert_eq!(prefetch_after_attention(None, PREFETCH_CONTEXT_LIMIT - 1), Some(DEFAULT_PREFETCH_AFTER_ATTENTION));
        assert_eq!(prefetch_after_attention(None, PREFETCH_CONTEXT_LIMIT), None);
        assert_eq!(prefetch_after_attention(None, 8192), None);
        // A setting holds at every context (measurements sweep it).
        assert_eq!(prefetch_after_attention(Some(8192), 32000), Some(8192));
        assert_eq!(prefetch_after_attention(Some(0), 0), Some(0));
    }
}
