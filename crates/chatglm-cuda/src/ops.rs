//! Launches of the kernels, one function per operation. Pointers are raw
//! device addresses (`u64`); every function is `unsafe` because the caller
//! vouches for the sizes of the buffers behind them. What can be checked here
//! (shapes, launch limits) is checked before the launch.

use crate::device::device_ptr;
use crate::device::Args;
use crate::graph::{GemmCall, Op};
use crate::{CudaError, Gpu, HostBuffer, StagingBuffer};
use cudarc::driver::{CudaSlice, LaunchConfig};

/// Weight and conversion element types (codes shared with the kernels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32 = 0,
    F16 = 1,
    BF16 = 2,
}

/// How the KV cache stores each row of `head_dim` keys or values (the
/// kernels' `KvRow`): f32, f16, or q8_0 — `head_dim` int8 codes and then one
/// f16 scale per 32 (34 bytes per 32 values, as ggml's q8_0), quantized as
/// the CPU's `--kv-dtype q8_0` cache is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvFormat {
    F32,
    F16,
    Q8_0,
}

impl KvFormat {
    /// Bytes of one cache row of `head_dim` values.
    pub fn row_bytes(self, head_dim: usize) -> usize {
        match self {
            Self::F32 => 4 * head_dim,
            Self::F16 => 2 * head_dim,
            Self::Q8_0 => head_dim + head_dim / 16,
        }
    }

    /// The element type of a float cache (None for q8_0).
    pub fn float_dtype(self) -> Option<DType> {
        match self {
            Self::F32 => Some(DType::F32),
            Self::F16 => Some(DType::F16),
            Self::Q8_0 => None,
        }
    }

    /// Whether the kernels can keep rows of `head_dim` in this format.
    pub fn supports(self, head_dim: usize) -> bool {
        self != Self::Q8_0 || head_dim.is_multiple_of(32)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
        }
    }

    fn kernel_code(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 2,
        }
    }
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
        }
    }

    pub(crate) fn code(self) -> usize {
        self as usize
    }
}

/// ggml's blocks of 32 weights, as the embedding gather reads them
/// (`embed_ggml_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlBlock {
    Q8_0 = 0,
    Q4_0 = 1,
    Q4_1 = 2,
    Q5_0 = 3,
    Q5_1 = 4,
}

impl GgmlBlock {
    /// Bytes of one block.
    pub fn bytes(self) -> usize {
        match self {
            Self::Q8_0 => 34,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
        }
    }
}

/// What a mat-vec does with its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemvMode {
    /// `out = x·wᵀ + bias`.
    Store = 0,
    /// `out += x·wᵀ` (a residual add).
    Accumulate = 1,
    /// `out = silu(x·w[..half]ᵀ) · (x·w[half..]ᵀ)`.
    SwiGlu = 2,
}

/// The most tokens the mat-vec kernels take in one launch; larger steps go
/// through cuBLAS.
pub const GEMV_MAX_TOKENS: usize = 8;

/// Head size of the decode attention kernel, and the keys a warp takes at once.
pub const DECODE_HEAD_DIM: usize = 128;
pub const DECODE_SLICE_TOKENS: usize = 128;
/// Query heads of one KV group a CUDA-core decode-attention block takes (the
/// tensor-core kernel takes all 16 of a group).
pub const DECODE_HEADS_PER_BLOCK: usize = 4;
/// Heads per KV group of the tensor-core decode kernel, and its block size.
pub const DECODE_MMA_HEADS: usize = 16;
const DECODE_MMA_THREADS: u32 = 256;
/// What a split or decode attention launch reads and writes: the step's
/// query rows (`qkv`, `width` floats a row), its output rows (`out`), the
/// `work` tokens that attend (i32 rows at `work_tokens`), their positions and
/// sequences (i32 at `positions` / `seq_of_token`), and the block table
/// (`max_blocks` u64 a sequence) of the cache of `layer`.
#[derive(Debug, Clone, Copy)]
pub struct AttentionWork {
    pub qkv: u64,
    pub width: usize,
    pub out: u64,
    pub work_tokens: u64,
    pub work: usize,
    pub positions: u64,
    pub seq_of_token: u64,
    pub block_table: u64,
    pub max_blocks: usize,
    pub shape: AttentionDims,
    pub layer: usize,
}

impl AttentionWork {
    /// The arguments every decode kernel starts with (`decode.cuh`'s order):
    /// rows, output, tokens, cache, and the softmax scale.
    fn decode_args(&self) -> Args {
        let shape = self.shape;
        let ints =
            [self.width, shape.n_heads * shape.head_dim, self.max_blocks, shape.n_groups, self.layer].map(|v| v as i32);
        let block_tokens = shape.block_tokens as i32;
        let scale = 1.0f32 / (shape.head_dim as f32).sqrt();
        let mut a = Args::default();
        a.arg(&self.qkv).arg(&ints[0]).arg(&self.out).arg(&ints[1]).arg(&self.work_tokens).arg(&self.positions);
        a.arg(&self.seq_of_token).arg(&self.block_table).arg(&ints[2]).arg(&ints[3]).arg(&ints[4]);
        a.arg(&block_tokens).arg(&scale);
        a
    }
}

/// The short-context decode attention (`kernels/decode_short.cu`): blocks
/// of [`decode_short_warps`] warps, [`decode_short_subs`] a (token, group) of
/// 16 heads, no splits.
pub(crate) const DECODE_SHORT_KERNEL: &str = "attn_decode_short16";
/// Its largest shared memory (`struct ShortReduce`): each warp's running
/// maxima, sums and merge weights (16 heads each) and unnormalised output
/// (16 × 128 f32); [`short_smem_bytes`] of the heads a block writes.
pub(crate) const DECODE_SHORT_SMEM: usize = short_smem_bytes(16);

/// The short attention's shared memory with `heads` (of the group's 16)
/// written by a block: ShortReduce with only those heads' outputs.
pub(crate) const fn short_smem_bytes(heads: usize) -> usize {
    8 * (3 * 16 + heads * DECODE_HEAD_DIM) * 4
}

/// Blocks the short attention takes a (token, group) in a one-token step
/// by default: each reads the group's whole context for 16 / subs of its
/// heads, so its end (merging the warps' outputs, writing them) shrinks.
/// `CHATGLM_DECODE_SHORT_SUBS` (1, 2, 4, 8 or 16) sets it.
pub(crate) fn decode_short_subs() -> usize {
    env_choice("CHATGLM_DECODE_SHORT_SUBS", short_subs_valid).unwrap_or(DEFAULT_DECODE_SHORT_SUBS)
}

/// Warps a block of the short attention (`CHATGLM_DECODE_SHORT_WARPS`: 4
/// or 8).
pub(crate) fn decode_short_warps() -> usize {
    env_choice("CHATGLM_DECODE_SHORT_WARPS", short_warps_valid).unwrap_or(DEFAULT_DECODE_SHORT_WARPS)
}

/// `name`'s value when it is a count `valid` accepts; else none (with a
/// warning naming the value when one is set).
fn env_choice(name: &str, valid: fn(usize) -> bool) -> Option<usize> {
    let v = std::env::var(name).ok()?;
    let choice = v.trim().parse::<usize>().ok().filter(|&s| valid(s));
    if choice.is_none() {
        tracing::warn!("{name}={v:?} is not one of the allowed counts; using the default");
    }
    choice
}

fn short_subs_valid(subs: usize) -> bool {
    subs > 0 && DECODE_MMA_HEADS.is_multiple_of(subs)
}

fn short_warps_valid(warps: usize) -> bool {
    warps == 4 || warps == 8
}

/// [`decode_short_subs`]'s default.
const DEFAULT_DECODE_SHORT_SUBS: usize = 4;
/// [`decode_short_warps`]'s default.
const DEFAULT_DECODE_SHORT_WARPS: usize = 8;

/// The blocks a (token, group) of a step of `work` tokens, with `subs` for
/// one token: halved as the tokens double, so a step launches at most
/// `subs` blocks a group until it has more tokens than that (32 sequences
/// with 4 blocks each ran 5.6% slower than with one, bench/RESULTS.md run
/// 213).
pub(crate) fn short_subs_for(subs: usize, work: usize) -> usize {
    let mut s = subs.max(1);
    while s > 1 && s * work > subs {
        s /= 2;
    }
    s
}
/// Where the fused QKV product finds each token's position and cache
/// ([`Gpu::gemv_qkv`]): device addresses of the step's metadata.
#[derive(Debug, Clone, Copy)]
pub struct RopeArgs {
    /// n i32 positions, n i32 sequence indices.
    pub positions: u64,
    pub seq_of_token: u64,
    /// Block addresses, `max_blocks` per sequence.
    pub block_table: u64,
    pub max_blocks: usize,
    /// The rotary frequencies: `n_pairs` f32.
    pub inv_freq: u64,
    pub n_pairs: usize,
}

/// u32 words of one row's parameters for [`Gpu::sample_rows`].
pub const SAMPLE_ROW_WORDS: usize = 6;

/// One row's sampling parameters as the kernel reads them (`struct
/// SampleRow`: temperature f32 (≤ 0: greedy), top-p f32, top-k i32 (0: off),
/// padding, the uniform draw f64).
pub fn sample_row_words(temperature: f32, top_p: f32, top_k: usize, uniform: f64) -> [u32; SAMPLE_ROW_WORDS] {
    let u = uniform.to_bits();
    let k = top_k.min(i32::MAX as usize) as u32;
    [temperature.to_bits(), top_p.to_bits(), k, 0, u as u32, (u >> 32) as u32]
}

/// Most blocks [`Gpu::argmax_rows`] splits a row over (the kernel's
/// `ARGMAX_MAX_SLICES`).
const ARGMAX_MAX_SLICES: usize = 64;

/// Blocks [`Gpu::argmax_rows`] splits a row of `cols` values over: ~2,048
/// columns a block of 256 threads (a 65K-column vocabulary: 32), or
/// `CHATGLM_ARGMAX_SLICES` (1: one block of 1,024 threads a row), read once.
pub fn argmax_slices(cols: usize) -> usize {
    static SET: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let set = *SET.get_or_init(|| env_choice("CHATGLM_ARGMAX_SLICES", |v| (1..=ARGMAX_MAX_SLICES).contains(&v)));
    set.unwrap_or_else(|| cols.div_ceil(2048).clamp(1, ARGMAX_MAX_SLICES)).min(cols.div_ceil(4).max(1))
}

/// i32 scratch of [`Gpu::argmax_rows`] for `rows` rows: for each row, at a
/// place no other shape moves, a counter and (value, index, non-finite
/// seen) for each of its blocks.
pub fn argmax_scratch_ints(rows: usize) -> usize {
    rows * (1 + 3 * ARGMAX_MAX_SLICES)
}

/// Most splits of one decode context: the merging block keeps a weight per
/// split and head in its 4·HB·128-float shared buffer (HB ≥ 1 heads).
pub const DECODE_MAX_SPLITS: usize = 512;

/// Cached tokens per KV block: the flash kernel's key tile.
pub const FLASH_HEAD_DIM: usize = 128;
pub const FLASH_TILE_TOKENS: usize = 64;
/// Dynamic shared memory of the flash kernel: two stages of a K and a V tile
/// (64 rows padded to 136 halves).
pub(crate) const FLASH_SMEM_BYTES: usize = 2 * 2 * FLASH_TILE_TOKENS * 136 * 2;

fn grid_for(n: usize, per_block: usize) -> u32 {
    // Grid-stride kernels: enough blocks to fill the device, capped.
    n.div_ceil(per_block).clamp(1, 65_535) as u32
}

/// (column blocks, row blocks) for a rows × cols element-wise kernel of 256
/// threads: rows go to grid.y (strided past 65,535).
fn grid_2d(rows: usize, cols: usize) -> (u32, u32, u32) {
    (cols.div_ceil(256 * 4).clamp(1, 65_535) as u32, rows.clamp(1, 65_535) as u32, 1)
}

pub(crate) fn check_i32(op: &str, what: &str, v: usize) -> Result<i32, CudaError> {
    i32::try_from(v).map_err(|_| CudaError::invalid(op, format!("{what} = {v} exceeds the kernel's int range")))
}

/// The kernels' `struct RopeCtx` (4 pointers, then 8 ints in pairs) for the
/// QKV products that rotate and append to the cache of `layer`.
pub(crate) fn rope_ctx(
    op: &str,
    kv_dtype: DType,
    rope: RopeArgs,
    shape: AttentionDims,
    layer: usize,
) -> Result<[u64; 8], CudaError> {
    let kv_f16 = match kv_dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => return Err(CudaError::invalid(op, "bf16 KV cache")),
    };
    let ints = [rope.max_blocks, rope.n_pairs, shape.head_dim, shape.n_heads, shape.n_groups, layer];
    let ints: Vec<i32> = ints.iter().map(|&v| check_i32(op, "shape", v)).collect::<Result<_, _>>()?;
    let pack = |a: i32, b: i32| (a as u32 as u64) | ((b as u32 as u64) << 32);
    let block_tokens = check_i32(op, "block tokens", shape.block_tokens)?;
    Ok([
        rope.positions,
        rope.seq_of_token,
        rope.block_table,
        rope.inv_freq,
        pack(ints[0], ints[1]),
        pack(ints[2], ints[3]),
        pack(ints[4], ints[5]),
        pack(block_tokens, kv_f16),
    ])
}

fn cfg(grid: (u32, u32, u32), block: u32, smem: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: smem }
}

/// A device cache of a mapped embedding table's rows (the kernels'
/// `EmbedCache`): a decode step then reads a row it has seen before from
/// device memory instead of across the bus (a round trip of several µs on
/// every step's critical path). Rows sit in slot `id mod slots`.
pub struct EmbedRowCache {
    rows: CudaSlice<u8>,
    tags: CudaSlice<i32>,
    slots: usize,
    stride: usize,
}

/// Most rows a launch may have for [`EmbedRowCache`] to be used (the
/// kernels' `EMBED_CACHE_MAX_ROWS`: each block scans the launch's ids).
pub const EMBED_CACHE_MAX_ROWS: usize = 256;

impl EmbedRowCache {
    /// Slots a cache of rows of `row_bytes` takes within `budget` bytes: a
    /// power of two, at least 16 (else `None`: no cache).
    pub fn slots_for(row_bytes: usize, budget: usize) -> Option<usize> {
        let stride = row_bytes.next_multiple_of(16);
        let fit = budget / stride.max(1);
        (fit >= 16).then(|| 1usize << fit.ilog2())
    }

    /// Device bytes it holds.
    pub fn bytes(&self) -> usize {
        self.slots * self.stride + 4 * self.slots
    }

    /// Rows it can hold (0: none, every row read from the table).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The row id each slot holds (−1: none), read back (tests, diagnostics).
    pub fn tags(&self, gpu: &Gpu) -> Result<Vec<i32>, CudaError> {
        let mut out = vec![0; self.slots];
        gpu.download(&self.tags, &mut out, "embedding row cache tags")?;
        Ok(out)
    }

    /// The cached kernels' `EmbedCache` parameter, packed in 8-byte slots.
    fn arg(cache: Option<&EmbedRowCache>) -> [u64; 3] {
        match cache {
            Some(c) => [device_ptr(&c.rows), device_ptr(&c.tags), c.slots as u64 | (c.stride as u64) << 32],
            None => [0, 0, 0],
        }
    }
}

impl Gpu {
    /// An empty [`EmbedRowCache`] for rows of `row_bytes` in at most `budget`
    /// bytes — one of no slots (the same kernels, every row from the table)
    /// where fewer than 16 rows fit.
    pub fn embed_row_cache(&self, row_bytes: usize, budget: usize) -> Result<EmbedRowCache, CudaError> {
        let slots = EmbedRowCache::slots_for(row_bytes, budget).unwrap_or(0);
        let stride = row_bytes.next_multiple_of(16);
        check_i32("embed row cache", "slots", slots)?;
        check_i32("embed row cache", "row bytes", stride)?;
        let rows = self.alloc::<u8>((slots * stride).max(16), "embedding row cache")?;
        let tags = self.upload_new(&vec![-1i32; slots.max(1)], "embedding row cache tags")?;
        Ok(EmbedRowCache { rows, tags, slots, stride })
    }

    /// `out[t] = table[ids[t]]` as f32; rows through `cache` where given
    /// (a mapped table's: [`EmbedRowCache`]).
    ///
    /// # Safety
    /// `table`: table_rows·cols elements of `dtype`; `ids`: n i32; `out`: n·cols f32;
    /// `cache`: made for rows of cols elements of `dtype`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn embed(
        &self,
        table: u64,
        dtype: DType,
        table_rows: usize,
        cols: usize,
        ids: u64,
        n: usize,
        out: u64,
        cache: Option<&EmbedRowCache>,
    ) -> Result<(), CudaError> {
        // A row through shared memory (all its loads in flight) where it fits
        // the default 48 KiB; only such rows are cached.
        let row_bytes = cols * dtype.size();
        let staged = i32::from(row_bytes <= 48 << 10);
        let cache = cache.filter(|_| staged == 1);
        let name = match cache {
            Some(_) => format!("embed_cached_{}", dtype.code()),
            None => format!("embed_{}", dtype.code()),
        };
        if cache.is_some_and(|c| c.stride != row_bytes.next_multiple_of(16)) {
            return Err(CudaError::invalid(&name, "a row cache made for rows of another size"));
        }
        let (cols, rows) = (check_i32(&name, "cols", cols)?, check_i32(&name, "table rows", table_rows)?);
        if n == 0 {
            return Ok(());
        }
        let f = self.kernel(&name)?;
        let smem = if staged == 1 { row_bytes as u32 } else { 0 };
        let mut a = Args::default();
        a.arg(&table).arg(&ids).arg(&out).arg(&cols).arg(&rows);
        match cache {
            Some(_) => a.arg_struct(&EmbedRowCache::arg(cache)),
            None => a.arg(&staged),
        };
        self.launch(f, a, &name, cfg((check_i32(&name, "tokens", n)? as u32, 1, 1), 256, smem))
    }

    /// `out[t] = table[ids[t]]` for a table of ggml blocks of 32 (`block`:
    /// [`GgmlBlock`]), `row_bytes` a row, dequantized as the CPU does; rows
    /// through `cache` where given.
    ///
    /// # Safety
    /// `table`: table_rows × row_bytes bytes the device can read (device or
    /// mapped host memory); `ids`: n ints; `out`: n×cols f32; `row_bytes` =
    /// cols / 32 blocks of the format; `cache`: made for such rows.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn embed_ggml(
        &self,
        table: u64,
        block: GgmlBlock,
        table_rows: usize,
        cols: usize,
        ids: u64,
        n: usize,
        out: u64,
        cache: Option<&EmbedRowCache>,
    ) -> Result<(), CudaError> {
        let name = match cache {
            Some(_) => format!("embed_ggml_cached_{}", block as usize),
            None => format!("embed_ggml_{}", block as usize),
        };
        if !cols.is_multiple_of(32) {
            return Err(CudaError::invalid(&name, format!("rows of {cols} values are not whole blocks of 32")));
        }
        let row_bytes = cols / 32 * block.bytes();
        if row_bytes > 48 << 10 {
            return Err(CudaError::invalid(&name, format!("rows of {row_bytes} bytes exceed its shared memory")));
        }
        if cache.is_some_and(|c| c.stride != row_bytes.next_multiple_of(16)) {
            return Err(CudaError::invalid(&name, "a row cache made for rows of another size"));
        }
        let (cols, rows) = (check_i32(&name, "cols", cols)?, check_i32(&name, "table rows", table_rows)?);
        if n == 0 {
            return Ok(());
        }
        let f = self.kernel(&name)?;
        let row_bytes = row_bytes as i64;
        let mut a = Args::default();
        a.arg(&table).arg(&ids).arg(&out).arg(&cols).arg(&rows).arg(&row_bytes);
        if cache.is_some() {
            a.arg_struct(&EmbedRowCache::arg(cache));
        }
        self.launch(f, a, &name, cfg((check_i32(&name, "tokens", n)? as u32, 1, 1), 256, row_bytes as u32))
    }

    /// `out = x` over n f32.
    ///
    /// # Safety
    /// `x`, `out`: n f32.
    pub unsafe fn copy_f32(&self, x: u64, out: u64, n: usize) -> Result<(), CudaError> {
        if n == 0 {
            return Ok(());
        }
        let f = self.kernel("copy_f32")?;
        let n64 = n as i64;
        let mut a = Args::default();
        a.arg(&x).arg(&out).arg(&n64);
        self.launch(f, a, "copy_f32", cfg((grid_for(n, 1024), 1, 1), 256, 0))
    }

    /// Writes `rows` cache rows of every (layer, key|value, group) run from
    /// `src` (`[run][row][row_bytes]`) into a sequence's blocks, whose
    /// addresses are the `rows.div_ceil(block_tokens)` u64 at `blocks`.
    ///
    /// # Safety
    /// `src`: runs·rows·row_bytes bytes; `blocks`: device u64 addresses of
    /// blocks laid out `[run][block_tokens][row_bytes]`.
    pub unsafe fn write_kv_rows(
        &self,
        src: u64,
        blocks: u64,
        rows: usize,
        block_tokens: usize,
        runs: usize,
        row_bytes: usize,
    ) -> Result<(), CudaError> {
        if rows == 0 || runs == 0 {
            return Ok(());
        }
        // The widest copy that divides a row (q8_0 rows of 128 values are
        // 136 bytes: 8-byte copies).
        let unit = [16, 8, 4, 2].into_iter().find(|u| row_bytes.is_multiple_of(*u));
        let (Some(unit), true) = (unit, block_tokens > 0) else {
            return Err(CudaError::invalid(
                "kv_prefix_rows",
                format!("rows of {row_bytes} bytes, blocks of {block_tokens}"),
            ));
        };
        let f = self.kernel("kv_prefix_rows")?;
        let ints = [rows, block_tokens, runs, row_bytes, unit];
        let ints: Vec<i32> = ints.iter().map(|&v| check_i32("kv_prefix_rows", "shape", v)).collect::<Result<_, _>>()?;
        let mut a = Args::default();
        a.arg(&src).arg(&blocks).arg(&ints[0]).arg(&ints[1]).arg(&ints[2]).arg(&ints[3]).arg(&ints[4]);
        let vecs = runs * rows * row_bytes / unit;
        self.launch(f, a, "kv_prefix_rows", cfg((grid_for(vecs, 256), 1, 1), 256, 0))
    }

    /// Row-wise RMSNorm of `rows × cols` f32.
    ///
    /// # Safety
    /// `x`, `out`: rows·cols f32; `w`: cols f32.
    pub unsafe fn rms_norm(
        &self,
        x: u64,
        w: u64,
        out: u64,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(), CudaError> {
        let cols = check_i32("rms_norm", "cols", cols)?;
        if rows == 0 {
            return Ok(());
        }
        let f = self.kernel("rms_norm")?;
        let mut a = Args::default();
        a.arg(&x).arg(&w).arg(&out).arg(&cols).arg(&eps);
        self.launch(f, a, "rms_norm", cfg((check_i32("rms_norm", "rows", rows)? as u32, 1, 1), 256, 0))
    }

    /// RMSNorm of `rows × cols` f32 written as f16 or bf16 (`to`).
    ///
    /// # Safety
    /// `x`: rows·cols f32; `w`: cols f32; `out`: rows·cols 16-bit values.
    pub unsafe fn rms_norm_half(
        &self,
        x: u64,
        w: u64,
        out: u64,
        rows: usize,
        cols: usize,
        eps: f32,
        to: DType,
    ) -> Result<(), CudaError> {
        let name = match to {
            DType::F16 => "rms_norm_h1",
            DType::BF16 => "rms_norm_h2",
            DType::F32 => return self.rms_norm(x, w, out, rows, cols, eps),
        };
        let cols = check_i32(name, "cols", cols)?;
        if rows == 0 {
            return Ok(());
        }
        let f = self.kernel(name)?;
        let mut a = Args::default();
        a.arg(&x).arg(&w).arg(&out).arg(&cols).arg(&eps);
        self.launch(f, a, name, cfg((check_i32(name, "rows", rows)? as u32, 1, 1), 256, 0))
    }

    /// `x += y` over `n` f32.
    ///
    /// # Safety
    /// `x`, `y`: n f32.
    pub unsafe fn add(&self, x: u64, y: u64, n: usize) -> Result<(), CudaError> {
        let f = self.kernel("add_inplace")?;
        let n64 = n as i64;
        let mut a = Args::default();
        a.arg(&x).arg(&y).arg(&n64);
        self.launch(f, a, "add_inplace", cfg((grid_for(n, 1024), 1, 1), 256, 0))
    }

    /// `x[r, c] += b[c]`.
    ///
    /// # Safety
    /// `x`: rows·cols f32; `b`: cols f32.
    pub unsafe fn add_bias(&self, x: u64, b: u64, rows: usize, cols: usize) -> Result<(), CudaError> {
        let f = self.kernel("add_bias")?;
        let (rows64, cols32) = (rows as i64, check_i32("add_bias", "cols", cols)?);
        let mut a = Args::default();
        a.arg(&x).arg(&b).arg(&rows64).arg(&cols32);
        self.launch(f, a, "add_bias", cfg(grid_2d(rows, cols), 256, 0))
    }

    /// `out[r, c] = silu(x[r, c]) · x[r, ffn + c]`.
    ///
    /// # Safety
    /// `x`: rows·2·ffn f32; `out`: rows·ffn f32.
    pub unsafe fn swiglu(&self, x: u64, out: u64, rows: usize, ffn: usize) -> Result<(), CudaError> {
        self.swiglu_typed(x, DType::F32, out, DType::F32, rows, ffn)
    }

    /// SwiGLU between element types: f32 → f32, f32 → f16/bf16, or f16 → f16
    /// and bf16 → bf16.
    ///
    /// # Safety
    /// `x`: rows·2·ffn elements of `from`; `out`: rows·ffn elements of `to`.
    pub unsafe fn swiglu_typed(
        &self,
        x: u64,
        from: DType,
        out: u64,
        to: DType,
        rows: usize,
        ffn: usize,
    ) -> Result<(), CudaError> {
        let name = match (from, to) {
            (DType::F32, DType::F32) => "swiglu",
            (DType::F32, DType::F16) => "swiglu_h1",
            (DType::F32, DType::BF16) => "swiglu_h2",
            (DType::F16, DType::F16) => "swiglu_hh1",
            (DType::BF16, DType::BF16) => "swiglu_hh2",
            _ => return Err(CudaError::invalid("swiglu", format!("{} → {} is not supported", from.name(), to.name()))),
        };
        let f = self.kernel(name)?;
        let (rows64, ffn32) = (rows as i64, check_i32(name, "ffn", ffn)?);
        let mut a = Args::default();
        a.arg(&x).arg(&out).arg(&rows64).arg(&ffn32);
        self.launch(f, a, name, cfg(grid_2d(rows, ffn), 256, 0))
    }

    /// `out[i] = x[rows[i]]`.
    ///
    /// # Safety
    /// `rows`: n i32, each < the rows of `x`; `x`: (max row + 1)·cols f32; `out`: n·cols f32.
    pub unsafe fn gather_rows(&self, x: u64, rows: u64, n: usize, cols: usize, out: u64) -> Result<(), CudaError> {
        if n == 0 {
            return Ok(());
        }
        let f = self.kernel("gather_rows")?;
        let cols32 = check_i32("gather_rows", "cols", cols)?;
        let mut a = Args::default();
        a.arg(&x).arg(&rows).arg(&out).arg(&cols32);
        self.launch(f, a, "gather_rows", cfg((check_i32("gather_rows", "rows", n)? as u32, 1, 1), 256, 0))
    }

    /// Converts `n` f32 to f16 or bf16.
    ///
    /// # Safety
    /// `x`: n f32; `out`: n 16-bit values.
    pub unsafe fn convert(&self, x: u64, out: u64, n: usize, to: DType) -> Result<(), CudaError> {
        let name = match to {
            DType::F16 => "to_f16",
            DType::BF16 => "to_bf16",
            DType::F32 => return Err(CudaError::invalid("convert", "f32 → f32 is a copy, not a conversion")),
        };
        let f = self.kernel(name)?;
        let n64 = n as i64;
        let mut a = Args::default();
        a.arg(&x).arg(&out).arg(&n64);
        self.launch(f, a, name, cfg((grid_for(n, 1024), 1, 1), 256, 0))
    }

    /// Fills `n` elements with values uniform in ±`amp` from `seed`.
    ///
    /// # Safety
    /// `p`: n elements of `dtype`.
    pub unsafe fn fill_random(&self, p: u64, n: usize, dtype: DType, seed: u64, amp: f32) -> Result<(), CudaError> {
        let name = format!("fill_random_{}", dtype.code());
        let f = self.kernel(&name)?;
        let n64 = n as i64;
        let mut a = Args::default();
        a.arg(&p).arg(&n64).arg(&seed).arg(&amp);
        self.launch(f, a, &name, cfg((grid_for(n, 4096), 1, 1), 256, 0))
    }

    /// Mat-vec for 1..=8 tokens: `x` (n × cols f32) against `w` (rows × cols).
    /// `bias` (rows f32) or 0. `out`: n × rows (Store, Accumulate) or
    /// n × rows/2 (SwiGlu). With `norm` = (weights, eps), x is RMS-normalised
    /// first (the norm fused into the product; weights: cols f32). `prefetch`:
    /// bytes of each weight row its blocks start towards L2 before waiting for
    /// the kernel ahead (None: the device's `CHATGLM_GEMV_PREFETCH`).
    ///
    /// # Safety
    /// Pointers must hold the sizes above.
    pub unsafe fn gemv(
        &self,
        w: u64,
        dtype: DType,
        x: u64,
        bias: u64,
        out: u64,
        n: usize,
        rows: usize,
        cols: usize,
        mode: GemvMode,
        norm: Option<(u64, f32)>,
        prefetch: Option<usize>,
    ) -> Result<(), CudaError> {
        let (nw, eps) = norm.unwrap_or((0, 0.0));
        if n == 0 || n > GEMV_MAX_TOKENS {
            return Err(CudaError::invalid("gemv", format!("{n} tokens (1..={GEMV_MAX_TOKENS} supported)")));
        }
        if mode == GemvMode::SwiGlu && !rows.is_multiple_of(2) {
            return Err(CudaError::invalid("gemv", format!("SwiGLU needs an even number of rows, got {rows}")));
        }
        let half = rows / 2;
        let (rows32, cols32, half32) =
            (check_i32("gemv", "rows", rows)?, check_i32("gemv", "cols", cols)?, check_i32("gemv", "rows", half)?);
        let per_vec = 16 / dtype.size();
        let vector =
            cols.is_multiple_of(per_vec) && w.is_multiple_of(16) && x.is_multiple_of(16) && nw.is_multiple_of(16);
        // Rows per block: matrices that 4-row blocks cover in at most three waves
        // of resident blocks take 8-row blocks (fewer, so the last wave is not
        // a mostly idle device); larger ones keep the shorter 4-row blocks.
        // Measured on the 6B shapes (gemv_bench, H200): 8 rows for QKV, dense
        // and 4h→h (13.1 / 10.3 / 29.0 µs against 14.0 / 12.1 / 30.3), 4 rows
        // for h→4h and the logits (55.1 / 123.5 against 56.9 / 130.6).
        let out_rows = if mode == GemvMode::SwiGlu { half } else { rows };
        let per_block = |block_rows: usize| if mode == GemvMode::SwiGlu { block_rows / 2 } else { block_rows };
        let block_rows = self.gemv_block_rows(out_rows.div_ceil(per_block(4)));
        let blocks = if vector {
            out_rows.div_ceil(per_block(block_rows))
        } else {
            // The scalar kernel: one warp per output row, 4 warps per block.
            out_rows.div_ceil(4)
        };
        let blocks = check_i32("gemv", "blocks", blocks)? as u32;
        if blocks == 0 {
            return Ok(());
        }
        let launch_cfg = cfg((blocks, 1, 1), 128, 0);
        if vector {
            let prefix = self.gemv_prefix(block_rows, n, dtype, blocks as usize);
            let name = format!("{prefix}_{}_{}_{}", dtype.code(), n, mode as usize);
            let f = self.kernel(&name)?;
            let mut a = Args::default();
            let pf = prefetch.map_or_else(|| self.prefetch_bytes(), |b| b.min(1 << 30) as i32);
            a.arg(&w).arg(&x).arg(&bias).arg(&out).arg(&rows32).arg(&cols32).arg(&half32).arg(&nw).arg(&eps).arg(&pf);
            self.launch(f, a, &name, launch_cfg)
        } else {
            let name = format!("gemv_scalar_{}_{}", dtype.code(), mode as usize);
            let f = self.kernel(&name)?;
            let n32 = n as i32;
            let mut a = Args::default();
            a.arg(&w).arg(&x).arg(&bias).arg(&out).arg(&n32).arg(&rows32).arg(&cols32).arg(&half32);
            a.arg(&nw).arg(&eps);
            self.launch(f, a, &name, launch_cfg)
        }
    }

    /// Rows per mat-vec block: matrices that 4-row blocks (`blocks4` of
    /// them) cover in at most three waves of resident blocks take 8-row
    /// blocks (fewer, so the last wave is not a mostly idle device); larger
    /// ones keep the shorter 4-row blocks.
    fn gemv_block_rows(&self, blocks4: usize) -> usize {
        match self.gemv_force_rows.load(std::sync::atomic::Ordering::Relaxed) {
            4 => 4,
            8 => 8,
            _ if blocks4 <= 3 * self.gemv_blocks_per_sm[0] * self.info().multiprocessors => 8,
            _ => 4,
        }
    }

    /// The mat-vec kernel family for `blocks` blocks of `block_rows` rows
    /// over `n` tokens: a one-token 8-row grid of 16-bit weights that is
    /// more than one wave of the gemv8 kernels but one of the lean ones
    /// (5 blocks per SM) takes the lean kernels — the 6B QKV product (576
    /// blocks; 11.3 µs against 14.1, gemv_bench on an H200). Grids that
    /// already fit one wave keep gemv8, faster there (dense 10.2 against
    /// 10.8 µs, 4h→h 29.0 against 32.0).
    fn gemv_prefix(&self, block_rows: usize, n: usize, dtype: DType, blocks: usize) -> &'static str {
        let sms = self.info().multiprocessors;
        let [_, per_sm8, per_sm_lean] = self.gemv_blocks_per_sm;
        let lean = match self.gemv_lean.load(std::sync::atomic::Ordering::Relaxed) {
            l if l == crate::GemvLean::Always as u8 => true,
            l if l == crate::GemvLean::ByShape as u8 => blocks > per_sm8 * sms && blocks <= per_sm_lean * sms,
            _ => false,
        };
        match block_rows {
            8 if n == 1 && dtype != DType::F32 && lean && self.has_kernel("gemv8l_1_1_0") => "gemv8l",
            8 => "gemv8",
            _ => "gemv",
        }
    }

    /// Bytes of each row a mat-vec prefetches before waiting for the kernel ahead.
    fn prefetch_bytes(&self) -> i32 {
        self.gemv_prefetch.load(std::sync::atomic::Ordering::Relaxed).min(1 << 30) as i32
    }

    /// Whether [`Gpu::gemv_qkv`] can run a product of these shapes.
    pub fn gemv_qkv_supported(&self, dtype: DType, cols: usize, shape: &AttentionDims) -> bool {
        cols.is_multiple_of(16 / dtype.size()) && shape.head_dim.is_multiple_of(2) && self.has_kernel("gemv_qkv_1_1")
    }

    /// The attention's QKV projection for 1..=8 tokens, fused: `out = x·wᵀ +
    /// bias` (x RMS-normalised first with `norm`), RoPE on the query and key
    /// rows, and the key and value rows of every token appended to the
    /// paged cache of `layer` (as [`Gpu::rope_kv`] does after a product).
    ///
    /// # Safety
    /// `w`: rows·cols of `dtype` with rows = (heads + 2·groups)·head_dim,
    /// 16-byte aligned; `x`: n·cols f32; `bias`: rows f32 or 0; `out`: n·rows
    /// f32; `norm` weights: cols f32; the rest as [`Gpu::rope_kv`].
    pub unsafe fn gemv_qkv(
        &self,
        w: u64,
        dtype: DType,
        x: u64,
        bias: u64,
        out: u64,
        n: usize,
        cols: usize,
        norm: Option<(u64, f32)>,
        kv_dtype: DType,
        rope: RopeArgs,
        shape: AttentionDims,
        layer: usize,
    ) -> Result<(), CudaError> {
        let (nw, eps) = norm.unwrap_or((0, 0.0));
        if n == 0 || n > GEMV_MAX_TOKENS {
            return Err(CudaError::invalid("gemv_qkv", format!("{n} tokens (1..={GEMV_MAX_TOKENS} supported)")));
        }
        let rows = (shape.n_heads + 2 * shape.n_groups) * shape.head_dim;
        let aligned = w.is_multiple_of(16) && x.is_multiple_of(16) && nw.is_multiple_of(16);
        if !self.gemv_qkv_supported(dtype, cols, &shape) || !aligned {
            return Err(CudaError::invalid("gemv_qkv", format!("unsupported shape {shape:?} with {cols} columns")));
        }
        let ctx = rope_ctx("gemv_qkv", kv_dtype, rope, shape, layer)?;
        let block_rows = self.gemv_block_rows(rows.div_ceil(4));
        let blocks = rows.div_ceil(block_rows);
        let name = format!("{}_qkv_{}_{n}", self.gemv_prefix(block_rows, n, dtype, blocks), dtype.code());
        let f = self.kernel(&name)?;
        let (rows32, cols32) = (check_i32(&name, "rows", rows)?, check_i32(&name, "cols", cols)?);
        let mut a = Args::default();
        let pf = self.prefetch_bytes();
        a.arg(&w).arg(&x).arg(&bias).arg(&out).arg(&rows32).arg(&cols32).arg(&nw).arg(&eps).arg(&pf).arg_struct(&ctx);
        self.launch(f, a, &name, cfg((blocks as u32, 1, 1), 128, 0))
    }

    /// `out[r]` = the index of the largest value of row `r` of `x` (rows ×
    /// cols f32), by the host's rules (`chatglm_engine::sampling::argmax`):
    /// the first of equal values, NaN never chosen. Each row is split over
    /// [`argmax_slices`] blocks whose last merges them, through `scratch`
    /// ([`argmax_scratch_ints`] i32, zero the first time: the kernel leaves
    /// its counters at zero, at places that do not move with the shape).
    /// With `host`, the choices also land in that page-locked buffer (no
    /// copy queued behind the kernel); read them with [`Gpu::take_download`].
    ///
    /// # Safety
    /// `x`: rows·cols f32; `out`: rows i32; `scratch`: as above.
    pub unsafe fn argmax_rows(
        &self,
        x: u64,
        rows: usize,
        cols: usize,
        out: u64,
        mut host: Option<&mut HostBuffer<i32>>,
        scratch: &CudaSlice<i32>,
    ) -> Result<(), CudaError> {
        const OP: &str = "argmax_rows";
        if rows == 0 {
            if let Some(h) = host {
                h.wait_for_device()?;
                h.written_by_device(self, 0)?;
            }
            return Ok(());
        }
        let f = self.kernel(OP)?;
        let cols32 = check_i32(OP, "cols", cols)?;
        let rows32 = check_i32(OP, "rows", rows)?;
        let slices = argmax_slices(cols);
        if scratch.len() < argmax_scratch_ints(rows) {
            return Err(CudaError::invalid(OP, format!("{} scratch ints for {rows} rows", scratch.len())));
        }
        let host_ptr = self.readout_host(host.as_deref_mut(), rows, OP)?;
        let scratch_ptr = device_ptr(scratch);
        let mut a = Args::default();
        a.arg(&x).arg(&out).arg(&cols32).arg(&host_ptr).arg(&scratch_ptr);
        let threads = if slices > 1 { 256 } else { 1024 };
        self.launch(f, a, OP, cfg((slices as u32, rows32 as u32, 1), threads, 0))?;
        if let Some(h) = host {
            h.written_by_device(self, rows)?;
        }
        Ok(())
    }

    /// The device address of a readout's page-locked buffer for `rows` ids
    /// (0: none), ready for a launch that writes it: checked for size, the
    /// queued launches issued (the launch must not be recorded into a graph:
    /// its host buffer changes from step to step) and the buffer's last
    /// reader done.
    pub(crate) fn readout_host(
        &self,
        host: Option<&mut HostBuffer<i32>>,
        rows: usize,
        op: &str,
    ) -> Result<u64, CudaError> {
        let Some(h) = host else { return Ok(0) };
        if h.len() < rows {
            return Err(CudaError::invalid(op, format!("{rows} rows into a host buffer of {}", h.len())));
        }
        self.flush_recorded(false)?;
        h.wait_for_device()?;
        Ok(h.device_ptr())
    }

    /// Stages a step's metadata `meta` and block `table` into `meta_dev` and
    /// `table_dev` in one launch, through `buf` (page-locked, read in place
    /// by the device; [`StagingBuffer`]), without waiting for the stream
    /// (only for `buf`'s last reader, queued two steps before). With
    /// `chain = Some((chosen, off_pairs, n))`, the `n` (row, source) pairs at
    /// `meta[off_pairs..]` then set `ids[row] = chosen[source]` on the device
    /// (ids: the first ints of `meta`): a step's tokens taken from the ids the
    /// step before chose, without the host reading them.
    ///
    /// # Safety
    /// `chosen`: an i32 buffer holding every source named; every row named
    /// lies in `meta`.
    pub unsafe fn stage_step(
        &self,
        meta: &[i32],
        table: &[u64],
        meta_dev: &mut CudaSlice<i32>,
        table_dev: &mut CudaSlice<u64>,
        buf: &mut StagingBuffer,
        chain: Option<(u64, usize, usize)>,
    ) -> Result<(), CudaError> {
        const OP: &str = "stage_step";
        let (meta16, table16) = staged_chunks(meta.len(), table.len());
        if 4 * meta16 > meta_dev.len() || 2 * table16 > table_dev.len() {
            return Err(CudaError::invalid(
                OP,
                format!(
                    "{} ints and {} addresses into buffers of {} and {}",
                    meta.len(),
                    table.len(),
                    meta_dev.len(),
                    table_dev.len()
                ),
            ));
        }
        let (chosen, off_pairs, n_chained) = chain.unwrap_or((0, 0, 0));
        if off_pairs + 2 * n_chained > meta.len() {
            return Err(CudaError::invalid(OP, format!("{n_chained} pairs at {off_pairs} past {} ints", meta.len())));
        }
        let f = self.kernel(OP)?;
        self.flush_recorded(false)?;
        buf.fill(&[bytemuck::cast_slice(meta), bytemuck::cast_slice(table)])?;
        let ints = [meta16, table16, off_pairs, n_chained];
        let ints: Vec<i32> = ints.iter().map(|&v| check_i32(OP, "size", v)).collect::<Result<_, _>>()?;
        let (src, md, td) = (buf.device_ptr(), device_ptr(meta_dev), device_ptr(table_dev));
        let mut a = Args::default();
        a.arg(&src).arg(&md).arg(&ints[0]).arg(&td).arg(&ints[1]).arg(&chosen).arg(&ints[2]).arg(&ints[3]);
        let table_blocks = table16.div_ceil(STAGE_CHUNKS_A_BLOCK);
        let grid = check_i32(OP, "blocks", 1 + table_blocks)? as u32;
        self.launch(f, a, OP, cfg((grid, 1, 1), 256, 0))?;
        buf.mark_read(self)
    }

    /// out[r] (i32) = the token chosen for row r of `x` (rows × cols f32 logits)
    /// with the parameters at `params` (rows × [`SAMPLE_ROW_WORDS`] u32, as
    /// [`sample_row_words`] lays them out), by the host sampler's rules; -1
    /// where the row must be sampled on the host (its nucleus reaches past
    /// the candidates the device sorts).
    ///
    /// # Safety
    /// `x`: rows·cols f32; `params`: rows·SAMPLE_ROW_WORDS u32; `out`: rows i32.
    pub unsafe fn sample_rows(&self, x: u64, rows: usize, cols: usize, params: u64, out: u64) -> Result<(), CudaError> {
        if rows == 0 {
            return Ok(());
        }
        let f = self.kernel("sample_rows")?;
        let cols32 = check_i32("sample_rows", "cols", cols)?;
        let mut a = Args::default();
        a.arg(&x).arg(&cols32).arg(&params).arg(&out);
        self.launch(f, a, "sample_rows", cfg((check_i32("sample_rows", "rows", rows)? as u32, 1, 1), 1024, 0))
    }

    /// `out (n × rows) = x · wᵀ (+ out) (+ bias)` through cuBLASLt (a plan
    /// per shape, the bias in the epilogue), or cuBLAS `GemmEx` and a bias
    /// pass where cuBLASLt has no algorithm for it (or `CHATGLM_CUBLASLT=0`);
    /// `x` is in the weights' element type, `out` in f32 or (without
    /// accumulating) the weights' type; `bias` (rows f32, with an f32 `out`)
    /// or 0.
    ///
    /// # Safety
    /// `w`: rows·cols of `dtype`; `x`: n·cols of `dtype`; `out`: n·rows of
    /// `out_dtype`; `bias`: rows f32.
    pub unsafe fn gemm(
        &self,
        w: u64,
        dtype: DType,
        x: u64,
        out: u64,
        out_dtype: DType,
        n: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
        bias: u64,
    ) -> Result<(), CudaError> {
        self.gemm_strided(w, dtype, x, out, out_dtype, n, rows, cols, rows, accumulate, bias)
    }

    /// [`Gpu::gemm`] writing columns `0..rows` of an output whose rows are
    /// `ld_out` elements apart (a slice of a wider product's output).
    ///
    /// # Safety
    /// As [`Gpu::gemm`], with `out` holding n rows of `ld_out` ≥ rows.
    pub unsafe fn gemm_strided(
        &self,
        w: u64,
        dtype: DType,
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
        if ld_out < rows {
            return Err(CudaError::invalid("gemm", format!("output rows of {ld_out} for {rows} columns")));
        }
        if n == 0 {
            return Ok(());
        }
        if out_dtype != DType::F32 && (out_dtype != dtype || accumulate || bias != 0) {
            return Err(CudaError::invalid(
                "gemm",
                "16-bit outputs are only for non-accumulating products of the same type without bias",
            ));
        }
        let call = GemmCall { w, dtype, x, out, out_dtype, n, rows, cols, ld_out, accumulate, bias };
        if let Some(lt) = &self.blas_lt {
            // cuBLASLt products join a recorded step (graph.rs); the
            // workspace exists before any capture.
            if self.recording() && !self.products_capture_failed() && lt.plan_ready(&call)? {
                lt.ensure_workspace()?;
                if self.record(Op::Gemm(call)).is_none() {
                    return Ok(());
                }
            }
        }
        self.flush_recorded(false)?;
        self.gemm_now(&call)
    }

    /// Whether matrix products join recorded steps (graph.rs): with
    /// cuBLASLt (classic cuBLAS calls issue the queue first).
    pub fn records_products(&self) -> bool {
        self.blas_lt.is_some() && !self.products_capture_failed()
    }

    /// A product now: cuBLASLt, or classic cuBLAS and a bias pass where
    /// cuBLASLt has no algorithm.
    ///
    /// # Safety
    /// As [`Gpu::gemm_strided`].
    pub(crate) unsafe fn gemm_now(&self, c: &GemmCall) -> Result<(), CudaError> {
        self.gemm_issue(c, false)
    }

    /// A product into a graph being captured: cuBLASLt only (the classic
    /// fallback and its bias launch would re-enter the recorder); an error
    /// makes the capture fail and the step run without a graph.
    ///
    /// # Safety
    /// As [`Gpu::gemm_strided`].
    pub(crate) unsafe fn gemm_captured(&self, c: &GemmCall) -> Result<(), CudaError> {
        self.gemm_issue(c, true)
    }

    unsafe fn gemm_issue(&self, c: &GemmCall, lt_only: bool) -> Result<(), CudaError> {
        let GemmCall { w, dtype, x, out, out_dtype, n, rows, cols, ld_out, accumulate, bias } = *c;
        if lt_only {
            let lt = self.blas_lt.as_ref().ok_or_else(|| CudaError::invalid("gemm", "no cuBLASLt to capture"))?;
            return lt.gemm(w, dtype, x, out, out_dtype, n, rows, cols, ld_out, accumulate, bias);
        }
        if let Some(lt) = &self.blas_lt {
            match lt.gemm(w, dtype, x, out, out_dtype, n, rows, cols, ld_out, accumulate, bias) {
                Ok(()) => return Ok(()),
                // No algorithm for this shape: the classic API below.
                Err(CudaError::Call { ref message, .. }) if message.contains("NOT_SUPPORTED") => {}
                Err(e) => return Err(e),
            }
        }
        self.blas.gemm(w, dtype, x, out, out_dtype, n, rows, cols, ld_out, accumulate)?;
        if bias != 0 {
            if ld_out != rows {
                return Err(CudaError::invalid("gemm", "a bias on a strided output needs cuBLASLt"));
            }
            self.add_bias(out, bias, n, rows)?;
        }
        Ok(())
    }

    /// RoPE on the queries and keys of every token of `qkv` (in place), and
    /// the keys and values appended to the paged cache of `layer`.
    ///
    /// # Safety
    /// `qkv`: n × width f32 with width ≥ (heads + 2·groups)·head_dim;
    /// `positions`, `seq_of_token`: n i32; `block_table`: rows of max_blocks
    /// addresses covering every position; `inv_freq`: n_pairs f32; each block
    /// holds `layers`·2·groups·block_tokens rows of `kv.row_bytes(head_dim)`.
    pub unsafe fn rope_kv(
        &self,
        kv: KvFormat,
        qkv: u64,
        width: usize,
        n: usize,
        positions: u64,
        seq_of_token: u64,
        block_table: u64,
        max_blocks: usize,
        inv_freq: u64,
        n_pairs: usize,
        shape: AttentionDims,
        layer: usize,
    ) -> Result<(), CudaError> {
        let name = format!("rope_kv_{}", kv.kernel_code());
        let name = name.as_str();
        if !kv.supports(shape.head_dim) {
            return Err(CudaError::invalid(name, format!("a {} cache needs head_dim % 32 == 0", kv.name())));
        }
        if n == 0 {
            return Ok(());
        }
        let f = self.kernel(name)?;
        let args =
            [width, max_blocks, n_pairs, shape.n_heads, shape.n_groups, shape.head_dim, layer, shape.block_tokens]
                .map(|v| v as i32);
        let mut a = Args::default();
        a.arg(&qkv).arg(&args[0]).arg(&positions).arg(&seq_of_token).arg(&block_table).arg(&args[1]);
        a.arg(&inv_freq).arg(&args[2]).arg(&args[3]).arg(&args[4]).arg(&args[5]).arg(&args[6]).arg(&args[7]);
        self.launch(f, a, name, cfg((check_i32(name, "tokens", n)? as u32, 1, 1), 128, 0))
    }

    /// Split-context attention for the `work` tokens listed at `work_tokens`.
    /// With `n_splits > 1` it writes partials to `part_o`/`part_ml` and merges
    /// them into `out` with a second launch.
    ///
    /// # Safety
    /// As [`Gpu::rope_kv`], plus: `out`: rows × heads·head_dim f32; `work_tokens`:
    /// work i32; `part_o`: work·groups·n_splits·heads_per_group·head_dim f32 and
    /// `part_ml`: work·groups·n_splits·2·heads_per_group f32 when n_splits > 1.
    pub unsafe fn attention_split(
        &self,
        kv: KvFormat,
        work: AttentionWork,
        split: SplitPlan,
        part_o: u64,
        part_ml: u64,
    ) -> Result<(), CudaError> {
        let AttentionWork {
            qkv,
            width,
            out,
            work_tokens,
            work,
            positions,
            seq_of_token,
            block_table,
            max_blocks,
            shape,
            layer,
        } = work;
        let name = format!("attn_split_{}", kv.kernel_code());
        let name = name.as_str();
        if !kv.supports(shape.head_dim) {
            return Err(CudaError::invalid(name, format!("a {} cache needs head_dim % 32 == 0", kv.name())));
        }
        if work == 0 {
            return Ok(());
        }
        shape.check_split()?;
        let tk = shape.split_tile();
        if !split.chunk.is_multiple_of(tk) || split.n_splits == 0 || split.n_splits > 65_535 {
            return Err(CudaError::invalid(name, format!("bad split plan {split:?} for key tile {tk}")));
        }
        let f = self.kernel(name)?;
        let hg = shape.n_heads / shape.n_groups;
        let smem = (hg * shape.head_dim + hg * tk + tk * (shape.head_dim + 4) + 3 * hg) * 4;
        let out_width = shape.n_heads * shape.head_dim;
        let ints = [
            width,
            out_width,
            max_blocks,
            shape.n_heads,
            shape.n_groups,
            shape.head_dim,
            layer,
            shape.block_tokens,
            tk,
            split.chunk,
        ]
        .map(|v| v as i32);
        let scale = 1.0f32 / (shape.head_dim as f32).sqrt();
        let mut a = Args::default();
        a.arg(&qkv).arg(&ints[0]).arg(&out).arg(&ints[1]).arg(&work_tokens).arg(&positions).arg(&seq_of_token);
        a.arg(&block_table).arg(&ints[2]).arg(&ints[3]).arg(&ints[4]).arg(&ints[5]).arg(&ints[6]).arg(&ints[7]);
        a.arg(&ints[8]).arg(&ints[9]).arg(&scale).arg(&part_o).arg(&part_ml);
        let grid = (shape.n_groups as u32, check_i32(name, "tokens", work)? as u32, split.n_splits as u32);
        self.launch(f, a, name, cfg(grid, 128, smem as u32))?;
        if split.n_splits > 1 {
            self.combine(out, out_width, work_tokens, work, part_o, part_ml, shape, split)?;
        }
        Ok(())
    }

    /// Whether [`Gpu::attention_decode`] can run `shape` over a cache of
    /// `kv` rows (f16 or q8_0).
    pub fn decode_supported(&self, shape: &AttentionDims, kv: KvFormat) -> bool {
        let hg = shape.n_heads.checked_div(shape.n_groups).unwrap_or(0);
        shape.head_dim == DECODE_HEAD_DIM
            && shape.n_heads.is_multiple_of(shape.n_groups.max(1))
            && matches!(hg, 1 | 2 | 4 | 8 | 16)
            && shape.block_tokens.is_multiple_of(32)
            && decode_kernel_prefix(kv).is_some_and(|p| self.has_kernel(&format!("{p}{hg}")))
    }

    /// Query heads one decode-attention block takes for `shape` over `kv`
    /// rows: all 16 of a group with the tensor-core kernel (sm_80+, f16,
    /// `CHATGLM_DECODE_MMA=0` turns it off), else up to [`DECODE_HEADS_PER_BLOCK`].
    pub fn decode_heads_per_block(&self, shape: &AttentionDims, kv: KvFormat) -> usize {
        let hg = shape.n_heads.checked_div(shape.n_groups).unwrap_or(0);
        if kv == KvFormat::F16 && self.decode_mma(hg) {
            DECODE_MMA_HEADS
        } else {
            hg.clamp(1, DECODE_HEADS_PER_BLOCK)
        }
    }

    fn decode_mma(&self, hg: usize) -> bool {
        static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let enabled = *ENABLED.get_or_init(|| std::env::var("CHATGLM_DECODE_MMA").map_or(true, |v| v != "0"));
        enabled && hg == DECODE_MMA_HEADS && self.has_kernel("attn_decode_mma16")
    }

    /// Decode attention (head size 128, f16 cache) for the `work` tokens at
    /// `work_tokens`: one warp per 32 keys, the group's heads sharing each
    /// key. `split.n_splits` (at most [`DECODE_MAX_SPLITS`]) is the most
    /// splits of one context; each token uses as many as its own context
    /// needs (so the launch does not depend on the context lengths), and the
    /// last split of each (token, group, head slice) merges them.
    ///
    /// # Safety
    /// As [`Gpu::attention_split`], plus `counters`: [`SplitPlan::decode_counters`]
    /// zeroed i32 (left zeroed).
    pub unsafe fn attention_decode(
        &self,
        kv: KvFormat,
        at: AttentionWork,
        split: SplitPlan,
        part_o: u64,
        part_ml: u64,
        counters: u64,
    ) -> Result<(), CudaError> {
        let (work, shape) = (at.work, at.shape);
        if work == 0 {
            return Ok(());
        }
        if !self.decode_supported(&shape, kv) {
            return Err(CudaError::invalid(
                "attn_decode",
                format!("unsupported shape {shape:?} for a {} cache", kv.name()),
            ));
        }
        if split.n_splits == 0 || split.n_splits > DECODE_MAX_SPLITS {
            return Err(CudaError::invalid("attn_decode", format!("bad split plan {split:?}")));
        }
        let hg = shape.n_heads / shape.n_groups;
        // Tensor cores: 8-warp blocks, or 4-warp ones (two per SM) when the
        // step's sequences alone give a block per SM (batched decode).
        let many = work * shape.n_groups >= self.info().multiprocessors || decode_mma_w4_always();
        let mma = kv == KvFormat::F16 && self.decode_mma(hg);
        let (name, threads) = match (mma, many) {
            (true, false) => ("attn_decode_mma16".to_string(), DECODE_MMA_THREADS),
            (true, true) => ("attn_decode_mma16_w4".to_string(), 128),
            (false, _) => (format!("{}{hg}", decode_kernel_prefix(kv).unwrap_or_default()), 128),
        };
        let f = self.kernel(&name)?;
        let mut a = at.decode_args();
        a.arg(&part_o).arg(&part_ml).arg(&counters);
        let blocks_per_group = (hg / self.decode_heads_per_block(&shape, kv)) as u32;
        let grid =
            (shape.n_groups as u32 * blocks_per_group, check_i32(&name, "tokens", work)? as u32, split.n_splits as u32);
        if mma {
            // The tensor-core kernels take a ChainSync (chain.rs).
            return self.launch_chained(f, a, &name, cfg(grid, threads, 0));
        }
        self.launch(f, a, &name, cfg(grid, threads, 0))
    }

    /// How [`Gpu::attention_decode_short`] lays out its blocks: `subs` (1, 2,
    /// 4, 8 or 16) a (token, group) in a one-token step, each the group's
    /// whole context for 16 / `subs` of its heads (fewer with more tokens),
    /// of `warps` (4 or 8) warps.
    pub fn set_decode_short_blocks(&self, subs: usize, warps: usize) -> Result<(), CudaError> {
        if !short_subs_valid(subs) || !short_warps_valid(warps) {
            return Err(CudaError::invalid(
                DECODE_SHORT_KERNEL,
                format!("{subs} blocks a group (1, 2, 4, 8 or 16) of {warps} warps (4 or 8)"),
            ));
        }
        self.decode_short_subs.store(subs, std::sync::atomic::Ordering::Relaxed);
        self.decode_short_warps.store(warps, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Whether [`Gpu::attention_decode_short`] can run `shape` over a cache
    /// of `kv` rows (f16, 16 heads a group, head size 128).
    pub fn decode_short_supported(&self, shape: &AttentionDims, kv: KvFormat) -> bool {
        kv == KvFormat::F16
            && shape.head_dim == DECODE_HEAD_DIM
            && shape.n_groups > 0
            && shape.n_heads == shape.n_groups * DECODE_MMA_HEADS
            && shape.block_tokens.is_multiple_of(16)
            && self.has_kernel(DECODE_SHORT_KERNEL)
    }

    /// Decode attention for the `work` tokens at `work_tokens` in one block
    /// per (token, group) and no splits: for steps whose contexts are a few
    /// tiles (`kernels/decode_short.cu` says why). Correct at any length; its
    /// 8 warps take 16 keys at a time each, two tiles in flight. With
    /// `out_codes` (one token only; 0: none) the output is also written as
    /// q8_0 codes there, for a one-token product's `OneTokenCodes::input`;
    /// with `step` (9..=64 tokens, every token of the step a work token
    /// 0..work) in quantize_x's form ([`Gpu::step_codes`]), for a grouped
    /// product's `quantized` argument.
    ///
    /// # Safety
    /// As [`Gpu::attention_decode`] without the split buffers; `out_codes`:
    /// [`crate::quant::one_token_codes_bytes`] of the output's width;
    /// `step`: [`crate::quant::step_codes_bytes`] of the step's tokens.
    pub unsafe fn attention_decode_short(
        &self,
        at: AttentionWork,
        out_codes: u64,
        step: Option<crate::quant::StepCodes>,
    ) -> Result<(), CudaError> {
        if at.work == 0 {
            return Ok(());
        }
        if step.is_some() && (out_codes != 0 || at.work <= 8 || at.work > crate::quant::QMMA_MAX_TOKENS) {
            return Err(CudaError::invalid(
                DECODE_SHORT_KERNEL,
                format!("a step's activations handed on for {} tokens (9..=64, one form)", at.work),
            ));
        }
        let shape = at.shape;
        if !self.decode_short_supported(&shape, KvFormat::F16) {
            return Err(CudaError::invalid(DECODE_SHORT_KERNEL, format!("unsupported shape {shape:?}")));
        }
        if out_codes != 0 && at.work != 1 {
            return Err(CudaError::invalid(
                DECODE_SHORT_KERNEL,
                format!("q8_0 codes of {} tokens (one only)", at.work),
            ));
        }
        let f = self.kernel(DECODE_SHORT_KERNEL)?;
        let subs = short_subs_for(self.decode_short_subs.load(std::sync::atomic::Ordering::Relaxed), at.work);
        let warps = self.decode_short_warps.load(std::sync::atomic::Ordering::Relaxed);
        let grid = ((shape.n_groups * subs) as u32, check_i32(DECODE_SHORT_KERNEL, "tokens", at.work)? as u32, 1);
        let mut a = at.decode_args();
        let s = step.unwrap_or(crate::quant::StepCodes { codes: out_codes, scales: 0, form: 0, stride: 0, off: 0 });
        a.arg(&s.codes).arg(&s.scales).arg(&s.form).arg(&s.stride).arg(&s.off);
        let smem = short_smem_bytes(DECODE_MMA_HEADS / subs) as u32;
        self.launch(f, a, DECODE_SHORT_KERNEL, cfg(grid, 32 * warps as u32, smem))
    }

    unsafe fn combine(
        &self,
        out: u64,
        out_width: usize,
        work_tokens: u64,
        work: usize,
        part_o: u64,
        part_ml: u64,
        shape: AttentionDims,
        split: SplitPlan,
    ) -> Result<(), CudaError> {
        let f = self.kernel("attn_combine")?;
        let ints = [out_width, shape.n_heads, shape.n_groups, shape.head_dim, split.n_splits].map(|v| v as i32);
        let mut a = Args::default();
        a.arg(&out).arg(&ints[0]).arg(&work_tokens).arg(&part_o).arg(&part_ml);
        a.arg(&ints[1]).arg(&ints[2]).arg(&ints[3]).arg(&ints[4]);
        let grid = (work as u32, shape.n_heads as u32, 1);
        self.launch(f, a, "attn_combine", cfg(grid, shape.head_dim as u32, 0))
    }

    /// Whether [`Gpu::attention_flash`] can run `shape` over a cache of
    /// `kv` rows (f16, or q8_0 dequantized to f16 as tiles are loaded).
    pub fn flash_supported(&self, shape: &AttentionDims, kv: KvFormat) -> bool {
        flash_kernel(kv).is_some_and(|k| self.has_kernel(k))
            && shape.head_dim == FLASH_HEAD_DIM
            && shape.block_tokens == FLASH_TILE_TOKENS
            && shape.n_groups > 0
            && shape.n_heads.is_multiple_of(shape.n_groups)
    }

    /// Tensor-core prefill attention over an f16 or q8_0 cache for `n_tiles`
    /// query tiles (4 ints each: seq, first row, rows ≤ 64, first position).
    ///
    /// # Safety
    /// As [`Gpu::attention_split`]; `tiles`: 4·n_tiles i32 whose rows and
    /// positions lie inside `qkv`/`out` and the block table.
    pub unsafe fn attention_flash(
        &self,
        kv: KvFormat,
        qkv: u64,
        width: usize,
        out: u64,
        tiles: u64,
        n_tiles: usize,
        block_table: u64,
        max_blocks: usize,
        shape: AttentionDims,
        layer: usize,
    ) -> Result<(), CudaError> {
        if n_tiles == 0 {
            return Ok(());
        }
        let name = flash_kernel(kv).unwrap_or("attn_flash");
        if !self.flash_supported(&shape, kv) {
            return Err(CudaError::invalid(name, format!("unsupported shape {shape:?} for a {} cache", kv.name())));
        }
        let f = self.kernel(name)?;
        let out_width = shape.n_heads * shape.head_dim;
        let ints = [width, out_width, max_blocks, shape.n_heads, shape.n_groups, layer].map(|v| v as i32);
        let q_scale = std::f32::consts::LOG2_E / (shape.head_dim as f32).sqrt();
        let mut a = Args::default();
        a.arg(&qkv).arg(&ints[0]).arg(&out).arg(&ints[1]).arg(&tiles).arg(&block_table).arg(&ints[2]);
        a.arg(&ints[3]).arg(&ints[4]).arg(&ints[5]).arg(&q_scale);
        let grid = (check_i32(name, "tiles", n_tiles)? as u32, shape.n_heads as u32, 1);
        self.launch(f, a, name, cfg(grid, 128, FLASH_SMEM_BYTES as u32))
    }
}

/// The tensor-core prefill kernels (each takes [`FLASH_SMEM_BYTES`]).
pub(crate) const FLASH_KERNELS: [&str; 2] = ["attn_flash_f16", "attn_flash_q8"];

/// The tensor-core prefill kernel for a cache of `kv` rows.
fn flash_kernel(kv: KvFormat) -> Option<&'static str> {
    match kv {
        KvFormat::F16 => Some(FLASH_KERNELS[0]),
        KvFormat::Q8_0 => Some(FLASH_KERNELS[1]),
        KvFormat::F32 => None,
    }
}

/// Decode-attention blocks wanted per SM (`CHATGLM_DECODE_BLOCKS_PER_SM`, for
/// measurements; default 4: a long context is cut into enough splits that each
/// warp's serial chain of key slices stays short).
fn decode_blocks_per_sm() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("CHATGLM_DECODE_BLOCKS_PER_SM").ok().and_then(|v| v.parse().ok()).filter(|&v| v > 0).unwrap_or(4)
    })
}

/// Name of the CUDA-core decode kernels for a cache of `kv` rows (followed by
/// the heads per group); f32 caches take the split-context kernel.
fn decode_kernel_prefix(kv: KvFormat) -> Option<&'static str> {
    match kv {
        KvFormat::F16 => Some("attn_decode_"),
        KvFormat::Q8_0 => Some("attn_decode_q8_"),
        KvFormat::F32 => None,
    }
}

/// `CHATGLM_DECODE_MMA_WARPS=4`: 4-warp tensor-core decode blocks for every
/// step (two per SM, leaving room beside them), for measurements.
fn decode_mma_w4_always() -> bool {
    static W4: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *W4.get_or_init(|| std::env::var("CHATGLM_DECODE_MMA_WARPS").is_ok_and(|v| v == "4"))
}

/// Tensor-core decode blocks a step aims for (`CHATGLM_DECODE_MMA_BLOCKS`).
/// With each warp's two tiles in flight, a split can take several tiles a
/// warp at no extra round trips, and fewer splits merge faster: H200, 6B
/// f16, decode @2K / 8K / 32K, one call: 128 blocks 275.0 / 261.1 / 238.4 and
/// 275.1 / 261.3 / 238.4 tok/s, 48 blocks 279.1 / 270.0 / 244.5, 32 blocks
/// 279.1 / 265.1 / 236.5 and 268.7 / 259.0 / 229.0, 16 blocks 277.3 / 258.5 /
/// 208.5. Once the dense product stopped prefetching during long-context
/// attention (session 10), more splits pay again: 2048-token prompt, tok/s
/// at 8K / 16K / 32K, two alternations: 48 blocks 281.3 / 268.6 / 253.4,
/// 96 blocks 282.5 / 273.8 / 260.5, 128 blocks 282.1 / 273.9 / 258.7; short
/// contexts 301.6 / 302.3 / 303.2 (run 62).
const DEFAULT_DECODE_MMA_BLOCKS: usize = 96;

fn decode_mma_blocks() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("CHATGLM_DECODE_MMA_BLOCKS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&v| v > 0)
            .unwrap_or(DEFAULT_DECODE_MMA_BLOCKS)
    })
}

/// Attention and cache geometry of one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionDims {
    pub n_heads: usize,
    pub n_groups: usize,
    pub head_dim: usize,
    /// Tokens per cache block.
    pub block_tokens: usize,
}

impl AttentionDims {
    /// Key tile of the split kernel (its shared memory stays under 48 KiB).
    pub fn split_tile(&self) -> usize {
        if self.head_dim <= 128 {
            64
        } else {
            32
        }
    }

    fn check_split(&self) -> Result<(), CudaError> {
        let hg = self.n_heads.checked_div(self.n_groups).unwrap_or(0);
        let tk = self.split_tile();
        let smem = (hg * self.head_dim + hg * tk + tk * (self.head_dim + 4) + 3 * hg) * 4;
        let ok = self.n_groups > 0
            && self.n_heads.is_multiple_of(self.n_groups)
            && self.head_dim.is_multiple_of(4)
            && self.head_dim <= 256
            && hg <= 32
            && self.block_tokens.is_multiple_of(tk)
            && smem <= 48 * 1024;
        if ok {
            Ok(())
        } else {
            Err(CudaError::invalid(
                "attention",
                format!("unsupported attention shape {self:?} on the GPU (needs head_dim % 4 == 0, head_dim ≤ 256, ≤ 32 query heads per KV group)"),
            ))
        }
    }

    /// Checks the shape once at start-up.
    pub fn validate(&self) -> Result<(), CudaError> {
        self.check_split()
    }
}

/// How the split kernel divides each token's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitPlan {
    pub n_splits: usize,
    /// Keys per split (a multiple of the key tile).
    pub chunk: usize,
}

impl SplitPlan {
    /// Enough blocks to fill `multiprocessors` twice over for `work` tokens
    /// whose longest context is `max_ctx`, never splits shorter than 4 tiles.
    pub fn for_step(shape: &AttentionDims, work: usize, max_ctx: usize, multiprocessors: usize) -> Self {
        let tk = shape.split_tile();
        let tiles = max_ctx.div_ceil(tk).max(1);
        let base_blocks = (work * shape.n_groups).max(1);
        let wanted = (2 * multiprocessors).div_ceil(base_blocks).max(1);
        let n_splits = wanted.min(tiles.div_ceil(4)).max(1);
        let chunk = tiles.div_ceil(n_splits) * tk;
        Self { n_splits: max_ctx.div_ceil(chunk).max(1), chunk }
    }

    /// As [`SplitPlan::for_step`] for the decode kernels, whose unit is a
    /// 128-key slice: one slice per block is enough work. `heads_per_block`
    /// from [`Gpu::decode_heads_per_block`].
    pub fn for_decode(
        shape: &AttentionDims,
        heads_per_block: usize,
        work: usize,
        max_ctx: usize,
        multiprocessors: usize,
    ) -> Self {
        let unit = DECODE_SLICE_TOKENS;
        let slices = max_ctx.div_ceil(unit).max(1);
        let hg = shape.n_heads / shape.n_groups.max(1);
        let base_blocks = (work * shape.n_groups * hg.div_ceil(heads_per_block.max(1))).max(1);
        // The tensor-core kernel's 8-warp blocks each keep 128 KB in flight
        // (two 16-key tiles a warp): a few dozen fill the memory system, and
        // fewer splits merge faster.
        let target = if heads_per_block >= DECODE_MMA_HEADS {
            decode_mma_blocks()
        } else {
            decode_blocks_per_sm() * multiprocessors
        };
        let wanted = target.div_ceil(base_blocks).max(1);
        let n_splits = wanted.min(slices).max(1);
        let n_splits = n_splits.min(DECODE_MAX_SPLITS);
        let chunk = slices.div_ceil(n_splits) * unit;
        Self { n_splits: max_ctx.div_ceil(chunk).max(1), chunk }
    }

    /// Merge counters the decode kernel needs for `work` tokens.
    pub fn decode_counters(shape: &AttentionDims, heads_per_block: usize, work: usize) -> usize {
        let hg = shape.n_heads / shape.n_groups.max(1);
        work * shape.n_groups * hg.div_ceil(heads_per_block.max(1))
    }

    /// Partial-result floats needed: (outputs, max/sum pairs).
    pub fn partials(&self, shape: &AttentionDims, work: usize) -> (usize, usize) {
        if self.n_splits <= 1 {
            return (0, 0);
        }
        let hg = shape.n_heads / shape.n_groups.max(1);
        let parts = work * shape.n_groups * self.n_splits;
        (parts * hg * shape.head_dim, parts * 2 * hg)
    }
}

/// 16-byte chunks a block of `stage_step` copies at once (256 threads, four
/// loads each).
const STAGE_CHUNKS_A_BLOCK: usize = 4 * 256;

/// 16-byte chunks of a step's metadata (i32s) and block table (u64s) as
/// `stage_step` lays them out in its staging buffer: each padded to 16 bytes.
pub fn staged_chunks(meta_ints: usize, table_entries: usize) -> (usize, usize) {
    (meta_ints.div_ceil(4), table_entries.div_ceil(2))
}

/// Bytes of staging buffer a step of `meta_ints` ints of metadata and
/// `table_entries` block addresses needs.
pub fn staged_bytes(meta_ints: usize, table_entries: usize) -> usize {
    let (m, t) = staged_chunks(meta_ints, table_entries);
    16 * (m + t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_rows_split_into_blocks_of_about_2048_columns() {
        if std::env::var("CHATGLM_ARGMAX_SLICES").is_ok() {
            return;
        }
        assert_eq!(argmax_slices(65024), 32);
        assert_eq!(argmax_slices(2048), 1);
        assert_eq!(argmax_slices(2049), 2);
        assert_eq!(argmax_slices(1 << 20), 64);
        // Never more blocks than 4-column runs: each has at least one.
        assert_eq!(argmax_slices(5), 1);
        assert_eq!(argmax_slices(0), 1);
        assert_eq!(argmax_scratch_ints(3), 3 * 193);
        // The kernel lays its scratch out by the same bound.
        let src = include_str!("kernels/elementwise.cu");
        assert!(src.contains(&format!("#define ARGMAX_MAX_SLICES {ARGMAX_MAX_SLICES}\n")));
    }

    #[test]
    fn stage_step_lets_no_kernel_start_before_it_is_done() {
        // Kernels read a step's positions and block table before their own
        // wait, which covers only the kernel just ahead: a successor launched
        // early by stage_step would let the kernel after it read the table
        // while stage_step still writes it (run 139). Its source must wait and
        // never trigger its dependents.
        let src = include_str!("kernels/elementwise.cu");
        let start = src.find("void __launch_bounds__(256) stage_step(").expect("stage_step defined");
        let body = &src[start..];
        let body = &body[..body.find("\n}\n").expect("end of stage_step")];
        assert!(body.contains("pdl_wait();"));
        assert!(!body.contains("pdl_launch_dependents"), "stage_step must not start its successor early");
    }

    #[test]
    fn staged_metadata_and_table_start_at_16_byte_chunks() {
        assert_eq!(staged_chunks(0, 0), (0, 0));
        assert_eq!(staged_chunks(1, 1), (1, 1));
        assert_eq!(staged_chunks(4, 2), (1, 1));
        assert_eq!(staged_chunks(5, 3), (2, 2));
        // stage_step's source: each part padded as StagingBuffer::fill lays it.
        for (m, t) in [(0usize, 0usize), (3, 1), (4, 4), (7, 5), (1000, 129)] {
            let padded = (4 * m).next_multiple_of(16) + (8 * t).next_multiple_of(16);
            assert_eq!(staged_bytes(m, t), padded);
        }
    }

    fn dims() -> AttentionDims {
        AttentionDims { n_heads: 32, n_groups: 2, head_dim: 128, block_tokens: 64 }
    }

    #[test]
    fn decode_launches_pass_the_kernels_parameters_in_order() {
        let work = AttentionWork {
            qkv: 0x1000,
            width: 4608,
            out: 0x2000,
            work_tokens: 0x3000,
            work: 3,
            positions: 0x4000,
            seq_of_token: 0x5000,
            block_table: 0x6000,
            max_blocks: 7,
            shape: dims(),
            layer: 5,
        };
        let scale = (1.0f32 / 128f32.sqrt()).to_bits() as u64;
        let want = [0x1000, 4608, 0x2000, 4096, 0x3000, 0x4000, 0x5000, 0x6000, 7, 2, 5, 64, scale];
        assert_eq!(work.decode_args().values(), want);
        // attn_decode_short16 takes exactly these, in this order.
        let src = include_str!("kernels/decode_short.cu");
        let sig = &src[src.find("attn_decode_short16(").expect("kernel defined")..];
        let params: Vec<&str> = sig[sig.find('(').unwrap() + 1..sig.find(')').unwrap()]
            .split(',')
            .map(|p| p.split_whitespace().last().unwrap_or_default())
            .collect();
        let names = [
            "qkv",
            "width",
            "out",
            "out_width",
            "work_tokens",
            "positions",
            "seq_of_token",
            "block_table",
            "max_blocks",
            "n_groups",
            "layer",
            "block_tokens",
            "scale",
            "qout",
            "qs",
            "qform",
            "qstride",
            "qoff",
        ];
        assert_eq!(params, names);
        // The launch's shared memory is the kernel's ShortReduce (its static_assert).
        assert_eq!(DECODE_SHORT_SMEM, 67_072);
        // With subs blocks a group: the block's heads' outputs only.
        assert_eq!(short_smem_bytes(4), 8 * (48 + 512) * 4);
    }

    #[test]
    fn short_attention_blocks_shrink_as_the_step_grows() {
        assert_eq!(short_subs_for(8, 1), 8);
        assert_eq!(short_subs_for(8, 2), 4);
        assert_eq!(short_subs_for(8, 3), 2);
        assert_eq!(short_subs_for(8, 8), 1);
        assert_eq!(short_subs_for(8, 32), 1);
        assert_eq!(short_subs_for(1, 1), 1);
        assert_eq!(short_subs_for(16, 5), 2);
        for subs in [1, 2, 4, 8, 16] {
            for work in 1..70 {
                let s = short_subs_for(subs, work);
                assert!(short_subs_valid(s) && s <= subs && (s == 1 || s * work <= subs), "{subs} {work}: {s}");
            }
        }
        assert!(!short_subs_valid(3) && !short_subs_valid(0) && !short_subs_valid(32));
        assert!(short_warps_valid(4) && short_warps_valid(8) && !short_warps_valid(16));
    }

    #[test]
    fn kv_rows_are_sized_as_the_kernels_lay_them_out() {
        // q8_0: 128 codes and 4 f16 scales (34 bytes per 32 values, as the CPU's cache).
        assert_eq!(KvFormat::Q8_0.row_bytes(128), 136);
        assert_eq!(KvFormat::F16.row_bytes(128), 256);
        assert_eq!(KvFormat::F32.row_bytes(20), 80);
        assert!(KvFormat::Q8_0.supports(64) && !KvFormat::Q8_0.supports(20) && KvFormat::F16.supports(20));
        assert_eq!(KvFormat::Q8_0.float_dtype(), None);
        assert_eq!(KvFormat::F16.float_dtype(), Some(DType::F16));
        assert_eq!(flash_kernel(KvFormat::F32), None);
        assert_eq!(decode_kernel_prefix(KvFormat::Q8_0), Some("attn_decode_q8_"));
    }

    #[test]
    fn split_plans_cover_the_context_in_whole_tiles() {
        for max_ctx in [1, 63, 64, 65, 200, 1000, 4096, 8191, 32768] {
            for work in [1, 3, 64] {
                let p = SplitPlan::for_step(&dims(), work, max_ctx, 132);
                assert_eq!(p.chunk % 64, 0, "{p:?}");
                assert!(p.n_splits * p.chunk >= max_ctx, "{p:?} for {max_ctx}");
                assert!((p.n_splits - 1) * p.chunk < max_ctx, "{p:?} has an empty split for {max_ctx}");
            }
        }
        for max_ctx in [1, 127, 128, 129, 2100, 32768] {
            for work in [1, 5, 64] {
                let p = SplitPlan::for_decode(&dims(), 4, work, max_ctx, 132);
                assert_eq!(p.chunk % 128, 0, "{p:?}");
                assert!(p.n_splits * p.chunk >= max_ctx && (p.n_splits - 1) * p.chunk < max_ctx, "{p:?}");
            }
        }
        assert!(SplitPlan::for_decode(&dims(), 4, 1, 2100, 132).n_splits >= 16);
        // Long decode contexts are spread over the device.
        let p = SplitPlan::for_step(&dims(), 1, 32768, 132);
        assert!(p.n_splits >= 100, "{p:?}");
        // Short contexts are not split.
        assert_eq!(SplitPlan::for_step(&dims(), 1, 100, 132).n_splits, 1);
    }

    #[test]
    fn shapes_outside_the_kernels_are_refused() {
        assert!(dims().validate().is_ok());
        assert!(AttentionDims { head_dim: 16, n_heads: 4, n_groups: 2, block_tokens: 64 }.validate().is_ok());
        assert!(AttentionDims { head_dim: 130, ..dims() }.validate().is_err());
        assert!(AttentionDims { n_groups: 0, ..dims() }.validate().is_err());
        assert!(AttentionDims { n_heads: 33, ..dims() }.validate().is_err());
        assert!(AttentionDims { n_heads: 128, n_groups: 2, ..dims() }.validate().is_err());
    }
}
