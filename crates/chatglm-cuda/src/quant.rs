//! Quantized weights on the device: the tiled layout the tensor-core mat-vec
//! (`kernels/qmma.cu`) reads, built on the host from 32-weight blocks, and
//! the launches that use it.
//!
//! Files keep their formats; at load every block is written into tiles of 16
//! rows whose 512-byte units hold, lane by lane, the words of an
//! `mma.sync m16n8k32` A fragment (see `qmma.cu`), with the f16 scales (and
//! offsets) in separate arrays. Bits per weight are unchanged.

use crate::device::Args;
use crate::ops::{check_i32, RopeArgs};
use crate::{AttentionDims, CudaError, DType, GemvMode, Gpu};
use cudarc::driver::LaunchConfig;

/// Rows per tile.
pub const TILE_ROWS: usize = 16;
/// Weights per block (every format).
pub const BLOCK: usize = 32;
/// Bytes per unit: 32 lanes × 16 bytes.
const UNIT_BYTES: usize = 512;
/// Most tokens one quantized product takes (token tiles of 8: 1, 2, 4, 8).
pub const QMMA_MAX_TOKENS: usize = 64;
/// Block size of the quantized kernels (8 warps).
const QMMA_THREADS: u32 = 256;
/// quantize_x's threads a block (qmma.cu's QX_THREADS).
const QX_THREADS: u32 = 512;
/// Static shared memory of the product (reduction buffer, norms), which
/// with the dynamic part must stay under 48 KiB.
const QMMA_STATIC_SMEM: usize = 8 * 2 * 16 * 9 * 4 + 8 * 4 + 8 * 8 * 4 + 16 * 4;

/// Bytes of one token's activations of `cols` handed from one product to
/// the next already quantized (q8_0, the CPU's activation arithmetic):
/// `(dx, Σq)` of block b at float2 2b (16 bytes a block), then the codes.
pub fn one_token_codes_bytes(cols: usize) -> usize {
    cols / BLOCK * 16 + cols
}

/// Where a kernel writes a step's activations in [`Gpu::quantize_x`]'s form
/// for the product after it (the decode attention's hand-off in a batched
/// step; [`Gpu::step_codes`]): codes or f16 values, q8_0 scales, the form
/// (1: q8_0 codes, 2: f16 in the order the f16 products read), the
/// scales' token stride, q4_0's offset folded into them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepCodes {
    pub codes: u64,
    pub scales: u64,
    pub form: i32,
    pub stride: i32,
    pub off: i32,
}

/// Bytes of `n` tokens' activations of `cols` handed from a grouped SwiGLU
/// step (9..=64 tokens, [`OneTokenCodes::output`]) to the product after it:
/// [`Gpu::quantize_x`]'s codes (or f16 values) then its scales, as that
/// launch would write them — which the product after then skips.
pub fn step_codes_bytes(n: usize, cols: usize) -> usize {
    let (q, s) = Gpu::quantized_x_bytes(n, cols);
    q + s
}

/// Token stride of the norm fold's sums of squares (qmma_group.cu's
/// QG_SS_STRIDE): one row of [`QMMA_MAX_TOKENS`] a group of 128 output rows.
const FOLD_SUMS_STRIDE: usize = QMMA_MAX_TOKENS;
/// Output rows a group of the grouped products covers (8 tiles of 16).
const FOLD_GROUP_ROWS: usize = 128;

/// Bytes of the norm fold of `n` tokens of `cols` ([`OneTokenCodes::fold_norm`]):
/// the f16 activations in [`Gpu::quantize_x`]'s f16 form, then the sums of
/// squares ([`fold_sums`]).
pub fn fold_codes_bytes(n: usize, cols: usize) -> usize {
    Gpu::quantized_x_bytes(n, cols).0 + cols.div_ceil(FOLD_GROUP_ROWS) * FOLD_SUMS_STRIDE * 4
}

/// Where a fold at `base` of `n` tokens of `cols` keeps its sums of squares.
pub fn fold_sums(base: u64, n: usize, cols: usize) -> u64 {
    base + Gpu::quantized_x_bytes(n, cols).0 as u64
}

/// The q8_0 hand-off of batch-1 decode between one-token products: the
/// kernel before writes its output's codes as well as its floats, so the
/// product after copies a third of the bytes (or less) into shared memory
/// instead of reading and quantizing floats — the activation phase that
/// waits behind the weights a block has just requested (qmma.cu,
/// `one_token_x`). The codes equal the in-product quantization's bit for
/// bit, so results do not change. Device addresses of
/// [`one_token_codes_bytes`] each; 0: none.
///
/// The norm fold of grouped f16 steps (qmma_group.cu): a residual product
/// (accumulate) with `output` and `fold_norm` writes its output as the next
/// normed product's activations unnormalised — f16(v·g/8), g the norm's
/// weights at `fold_norm`, with each token's sums of squares
/// ([`fold_codes_bytes`]); that product, given them as `quantized` and
/// `normed_by`, applies the RMSNorm to its sums. No `quantize_x` launch
/// between the two.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OneTokenCodes {
    /// x already quantized: read here instead of quantizing x (no norm).
    pub input: u64,
    /// A SwiGLU product's output quantized here too (half its rows a
    /// multiple of 32). In a grouped step (9..=64 tokens over quantize_x's
    /// activations): the output in quantize_x's form for the step's
    /// activation form and the weights' format ([`step_codes_bytes`]), for
    /// the next product's `quantized` argument.
    pub output: u64,
    /// The norm fold's weights (with `output`: the fold's buffer); 0: none.
    pub fold_norm: u64,
    /// The activations are a fold's: its sums of squares ([`fold_sums`])
    /// and the norm's eps.
    pub normed_by: Option<(u64, f32)>,
}

impl OneTokenCodes {
    fn any(&self) -> bool {
        self.input != 0 || self.output != 0 || self.fold_norm != 0 || self.normed_by.is_some()
    }
}

/// The code formats of the device layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// 4-bit codes, `x = d·(q − 8)`: q4_0 and the official int4 checkpoints.
    Q4 = 0,
    /// 4-bit codes, `x = d·q + m`: q4_1.
    Q4Min = 1,
    /// Signed 8-bit codes, `x = d·q`: q8_0, and q5_0 as `q − 16`.
    Q8 = 2,
    /// 8-bit codes 0..31, `x = d·q + m`: q5_1.
    Q8Min = 3,
}

impl QuantFormat {
    /// The format of a kernel name's index (`as usize` back).
    pub(crate) fn from_index(index: usize) -> Option<Self> {
        [Self::Q4, Self::Q4Min, Self::Q8, Self::Q8Min].get(index).copied()
    }

    pub fn is_4bit(self) -> bool {
        matches!(self, Self::Q4 | Self::Q4Min)
    }

    pub fn has_min(self) -> bool {
        matches!(self, Self::Q4Min | Self::Q8Min)
    }

    /// The offset subtracted from every code (`x = d·(q − offset)`): 8 for
    /// q4_0's codes 0..15, 0 for the others (qmma.cu's `QFmt::OFF`).
    pub fn code_offset(self) -> i32 {
        if self == Self::Q4 {
            8
        } else {
            0
        }
    }

    /// Bytes of codes per 32-weight block.
    pub fn code_bytes(self) -> usize {
        if self.is_4bit() {
            16
        } else {
            32
        }
    }

    pub(crate) fn blocks_per_unit(self) -> usize {
        if self.is_4bit() {
            2
        } else {
            1
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Q4 => "int4",
            Self::Q4Min => "int4+min",
            Self::Q8 => "int8",
            Self::Q8Min => "int8+min",
        }
    }
}

/// Where the parts of a `rows × cols` matrix in the tiled layout lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileShape {
    pub format: QuantFormat,
    pub rows: usize,
    pub cols: usize,
    pub tiles: usize,
    /// Units per tile.
    pub units: usize,
    /// Blocks per tile row, padded to whole units.
    pub padded_blocks: usize,
}

fn align256(n: usize) -> usize {
    n.div_ceil(256) * 256
}

impl TileShape {
    /// The layout of a matrix; `cols` must be whole blocks.
    pub fn new(format: QuantFormat, rows: usize, cols: usize) -> Result<Self, CudaError> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) || rows == 0 {
            return Err(CudaError::invalid(
                "quantized weights",
                format!("{rows}×{cols}: rows must be whole {BLOCK}-weight blocks"),
            ));
        }
        let units = (cols / BLOCK).div_ceil(format.blocks_per_unit());
        Ok(Self {
            format,
            rows,
            cols,
            tiles: rows.div_ceil(TILE_ROWS),
            units,
            padded_blocks: units * format.blocks_per_unit(),
        })
    }

    pub fn code_bytes(&self) -> usize {
        self.tiles * self.units * UNIT_BYTES
    }

    /// f16 scales (and as many offsets) per matrix.
    pub fn scale_count(&self) -> usize {
        self.tiles * self.padded_blocks * TILE_ROWS
    }

    /// Byte offsets of the scales and offsets in one allocation, and its size.
    pub fn offsets(&self) -> (usize, usize, usize) {
        let scales = align256(self.code_bytes());
        let mins = scales + align256(self.scale_count() * 2);
        let total = if self.format.has_min() { mins + align256(self.scale_count() * 2) } else { mins };
        (scales, mins, total)
    }

    /// Byte offset of word `word` (0..4) of lane `lane`'s vector in unit `unit` of `tile`.
    fn word_at(&self, tile: usize, unit: usize, lane: usize, word: usize) -> usize {
        ((tile * self.units + unit) * 32 + lane) * 16 + word * 4
    }

    /// Index of the scale of row `r`, block `b`: per unit, the scales a lane
    /// (g = row % 8) needs sit together, [block in unit][row g, g + 8].
    pub fn scale_index(&self, r: usize, b: usize) -> usize {
        let per_unit = self.format.blocks_per_unit();
        let (tile, rr) = (r / TILE_ROWS, r % TILE_ROWS);
        let (unit, i) = (b / per_unit, b % per_unit);
        ((tile * self.units + unit) * 8 + rr % 8) * (2 * per_unit) + i * 2 + rr / 8
    }

    /// Byte offsets of the 4-byte words of row `r`, block `b` in code order:
    /// code bytes 4w..4w+4 of the block (ggml order) live at `offsets[w]`.
    pub fn block_words(&self, r: usize, b: usize) -> BlockWords {
        let (tile, rr) = (r / TILE_ROWS, r % TILE_ROWS);
        let (g, hi) = (rr % 8, rr / 8);
        let mut offs = [0usize; 8];
        if self.format.is_4bit() {
            let (unit, i) = (b / 2, b % 2);
            for (t, o) in offs.iter_mut().take(4).enumerate() {
                *o = self.word_at(tile, unit, g * 4 + t, hi + 2 * i);
            }
            BlockWords { offs, len: 4 }
        } else {
            // Words 0..4 (weights 0..16) then 4..8 (weights 16..32).
            for (w, o) in offs.iter_mut().enumerate() {
                *o = self.word_at(tile, b, g * 4 + w % 4, hi + 2 * (w / 4));
            }
            BlockWords { offs, len: 8 }
        }
    }
}

/// The word offsets of one block ([`TileShape::block_words`]), without an
/// allocation per block (a 6B model has ~190 million blocks).
#[derive(Debug, Clone, Copy)]
pub struct BlockWords {
    offs: [usize; 8],
    len: usize,
}

impl std::ops::Deref for BlockWords {
    type Target = [usize];
    fn deref(&self) -> &[usize] {
        &self.offs[..self.len]
    }
}

/// A matrix in the tiled layout, on the host: one buffer (codes, scales,
/// offsets at [`TileShape::offsets`]) ready to upload.
pub struct TiledMatrix {
    pub shape: TileShape,
    pub bytes: Vec<u8>,
}

impl TiledMatrix {
    pub fn new(shape: TileShape) -> Self {
        Self { shape, bytes: vec![0; shape.offsets().2] }
    }

    /// Sets block `b` of row `r`: scale and offset as f16 bits, `codes` in
    /// the format's byte form (16 bytes of ggml-ordered nibbles, or 32 int8).
    pub fn set_block(&mut self, r: usize, b: usize, d: u16, m: u16, codes: &[u8]) {
        let s = &self.shape;
        debug_assert_eq!(codes.len(), s.format.code_bytes());
        for (w, &off) in s.block_words(r, b).iter().enumerate() {
            self.bytes[off..off + 4].copy_from_slice(&codes[4 * w..4 * w + 4]);
        }
        let (scales, mins, _) = s.offsets();
        let i = s.scale_index(r, b);
        self.bytes[scales + 2 * i..scales + 2 * i + 2].copy_from_slice(&d.to_le_bytes());
        if s.format.has_min() {
            self.bytes[mins + 2 * i..mins + 2 * i + 2].copy_from_slice(&m.to_le_bytes());
        }
    }

    /// Block `b` of row `r` as set: (scale, offset, codes). The inverse of
    /// [`TiledMatrix::set_block`], used by tests and as the reference the
    /// dequantizing kernel follows.
    pub fn block(&self, r: usize, b: usize) -> (u16, u16, Vec<u8>) {
        let s = &self.shape;
        let codes = s.block_words(r, b).iter().flat_map(|&off| self.bytes[off..off + 4].to_vec()).collect();
        let (scales, mins, _) = s.offsets();
        let i = s.scale_index(r, b);
        let get = |base: usize| u16::from_le_bytes([self.bytes[base + 2 * i], self.bytes[base + 2 * i + 1]]);
        (get(scales), if s.format.has_min() { get(mins) } else { 0 }, codes)
    }
}

/// Device addresses of a tiled matrix.
#[derive(Debug, Clone, Copy)]
pub struct TiledPtr {
    pub base: u64,
    pub shape: TileShape,
}

impl TiledPtr {
    pub(crate) fn parts(&self) -> (u64, u64, u64) {
        let (s, m, _) = self.shape.offsets();
        (self.base, self.base + s as u64, if self.shape.format.has_min() { self.base + m as u64 } else { 0 })
    }
}

/// Token tiles of 8 the kernel for `n` tokens is instantiated with.
fn token_tiles(n: usize) -> usize {
    n.div_ceil(8).next_power_of_two()
}

/// Dynamic shared memory of the in-block quantization of `n` tokens of `cols`
/// (the kernel keeps scales for 2 tokens a block when n ≤ 2, else 8).
pub(crate) fn in_block_smem(n: usize, cols: usize) -> usize {
    let stride = if n <= 2 { 2 } else { 8 };
    cols / BLOCK * stride * 8 + n * cols
}

/// How a quantized product's items (tiles of rows) are shared among its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GridPolicy {
    /// As few persistent blocks as give every block the same number of items.
    Even,
    /// Every resident slot a block (items dealt round-robin, some blocks one
    /// more than others): the work of the busiest SM is what a product waits
    /// for, and `Even` can leave a few SMs with two whole blocks while the
    /// rest hold one (QKV of ChatGLM2: 288 tiles, 144 blocks on 132 SMs).
    Fill,
    /// A block per item (`CHATGLM_QMMA_PERSISTENT=0`).
    PerItem,
    /// `Fill` where that leaves most blocks a single item (fewer items than
    /// two per resident slot: ChatGLM2's QKV), else `Even` — whose fewer
    /// blocks leave slots for the next kernel's blocks to start early.
    Auto,
}

/// Blocks of a product of `items` items with `resident` blocks resident at once.
pub(crate) fn grid_blocks(items: usize, resident: usize, policy: GridPolicy) -> usize {
    let resident = resident.max(1);
    match policy {
        GridPolicy::Even => items.div_ceil(items.div_ceil(resident)),
        GridPolicy::Fill => items.min(resident),
        GridPolicy::PerItem => items,
        GridPolicy::Auto if items < 2 * resident => grid_blocks(items, resident, GridPolicy::Fill),
        GridPolicy::Auto => grid_blocks(items, resident, GridPolicy::Even),
    }
}

/// Measurement settings of the quantized products' grids, read once:
/// `CHATGLM_QMMA_BLOCKS_PER_SM` (a cap on resident blocks per SM) and
/// `CHATGLM_QMMA_GRID` = `even` | `fill` | `item` | `auto` (see [`GridPolicy`];
/// `CHATGLM_QMMA_PERSISTENT=0` is `item`). `auto` is the default: with the
/// q8_0 hand-off it decodes 0.7% (q4_0) and 1.5% (q8_0) faster than `even`
/// on the H200 (bench/RESULTS.md, run 147; ChatGLM2's QKV takes 264 blocks
/// instead of 144).
fn qmma_grid_settings() -> (Option<usize>, GridPolicy) {
    static SETTINGS: std::sync::OnceLock<(Option<usize>, GridPolicy)> = std::sync::OnceLock::new();
    *SETTINGS.get_or_init(|| {
        let cap = std::env::var("CHATGLM_QMMA_BLOCKS_PER_SM").ok().and_then(|v| v.parse::<usize>().ok());
        let per_item = std::env::var("CHATGLM_QMMA_PERSISTENT").is_ok_and(|v| v == "0");
        let policy = match std::env::var("CHATGLM_QMMA_GRID").as_deref() {
            _ if per_item => GridPolicy::PerItem,
            Ok("fill") => GridPolicy::Fill,
            Ok("item") => GridPolicy::PerItem,
            Ok("even") => GridPolicy::Even,
            _ => GridPolicy::Auto,
        };
        (cap, policy)
    })
}

/// Whether the quantized products were compiled to stage their activations
/// in shared memory (`CHATGLM_NVRTC_DEFINES=QMMA_X_STAGE=1`, a measurement
/// variant of qmma.cu), read once.
pub(crate) fn qmma_stages_x() -> bool {
    static STAGES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STAGES.get_or_init(|| nvrtc_defines("QMMA_X_STAGE=1"))
}

/// Whether `CHATGLM_NVRTC_DEFINES` holds `define`.
fn nvrtc_defines(define: &str) -> bool {
    std::env::var("CHATGLM_NVRTC_DEFINES").is_ok_and(|d| crate::compile::define_items(&d).any(|v| v == define))
}

/// Dynamic shared memory quantize_x asks for (none used): 120 KiB, or
/// `CHATGLM_QX_SMEM` KiB (read once; 0: none) — one block a SM, so blocks
/// launched early (PDL) while a kernel holds most SMs spread out as SMs free
/// up instead of piling onto the few it leaves free (the 32-sequence
/// timeline, run 104: quantize_x after the decode attention, on 128 of 132
/// SMs, ended 10.2 µs after it; after the products, which fill every SM,
/// 4.2 µs). H200, 32 int4 sequences: 6,025 / 6,034 tok/s against 5,878 /
/// 5,878 without (run 105).
pub(crate) fn quantize_x_smem() -> u32 {
    static SMEM: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *SMEM.get_or_init(|| {
        let kb = std::env::var("CHATGLM_QX_SMEM").ok().and_then(|v| v.parse::<u32>().ok()).unwrap_or(120);
        kb.min(227) << 10
    })
}

/// Whether quantize_x writes f16 activations (`QMMA_F16X=1`, a measurement
/// variant only qmma.cu's products read), read once.
fn quantize_x_writes_f16() -> bool {
    static F16X: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *F16X.get_or_init(|| nvrtc_defines("QMMA_F16X=1"))
}

/// The most shared memory a staging product asks for (qmma.cu: two
/// buffers of 8 warps × QMMA_STAGE_UB units of `stage_unit_bytes`).
pub(crate) const QMMA_STAGE_SMEM_MAX: usize = 2 * 8 * 16 * 320;

/// Dynamic shared memory of a product of `nt8` token tiles over quantize_x's
/// activations when they are staged (mirrors qmma_body's UB and UXB at the
/// default `QMMA_NT4_TWO_BLOCKS=1`: 4 units a lane for 17–32 tokens).
fn qmma_stage_smem(format: QuantFormat, nt8: usize, swiglu: bool) -> usize {
    let sb = if format.is_4bit() { 2 } else { 1 };
    let ub0 = if nt8 == 4 { 4 } else { 8 } / if swiglu { 2 } else { 1 };
    let ub = ub0.min((16 / (nt8 * sb)).clamp(1, 8));
    2 * 8 * ub * nt8 * sb * 320
}

/// How [`Gpu::quantize_x`] hands a step's activations to the products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationForm {
    /// q8_0 codes and scales: the CPU's arithmetic, exactly.
    Q8,
    /// f16 values; the products dequantize each weight to f16 once for all
    /// the step's tokens (Marlin's arithmetic: f32 sums of f16 products).
    F16,
}

impl Gpu {
    /// Whether steps of 9..=64 tokens run on the grouped products
    /// (`quant_group`; [`Gpu::set_grouped_products`]).
    pub fn grouped_products(&self) -> bool {
        self.grouped_products.load(std::sync::atomic::Ordering::Relaxed) && !quantize_x_writes_f16()
    }

    /// Whether a step of `n` tokens over `format` weights can take f16
    /// activations ([`ActivationForm::F16`]): the grouped products of 9..=64
    /// tokens have f16 forms (`qmmh_*`).
    pub fn f16_activations_supported(&self, n: usize, format: QuantFormat) -> bool {
        let nt8 = token_tiles(n);
        n > 8
            && n <= QMMA_MAX_TOKENS
            && self.grouped_products()
            && self.has_kernel(&format!("qmmh_{}_{nt8}_0", format as usize))
    }

    /// The layout of `n` tokens' activations of `cols` at `base` (of
    /// [`step_codes_bytes`]) in `form` for a product of `format` weights,
    /// as [`Gpu::quantize_x`] would write them.
    pub fn step_codes(&self, base: u64, n: usize, cols: usize, format: QuantFormat, form: ActivationForm) -> StepCodes {
        let f16 = form == ActivationForm::F16;
        StepCodes {
            codes: base,
            scales: base + Gpu::quantized_x_bytes(n, cols).0 as u64,
            form: if f16 { 2 } else { 1 },
            stride: (token_tiles(n) * 8) as i32,
            off: if f16 { 0 } else { format.code_offset() },
        }
    }

    /// Whether a SwiGLU step of `n` tokens over `format` weights in `form`
    /// runs on the grouped products, which can hand its output on
    /// ([`step_codes_bytes`]).
    pub fn step_codes_supported(&self, n: usize, format: QuantFormat, form: ActivationForm) -> bool {
        let kind = if form == ActivationForm::F16 { 'h' } else { 'g' };
        n > 8
            && n <= QMMA_MAX_TOKENS
            && self.grouped_products()
            && self.has_kernel(&format!("qmm{kind}_{}_{}_2", format as usize, token_tiles(n)))
    }

    /// Sends steps of 9..=64 tokens to the grouped products (the default;
    /// `CHATGLM_QMMA_GROUPED=0` starts with it off) or to qmma's own, for tests
    /// and measurements.
    pub fn set_grouped_products(&self, on: bool) {
        self.grouped_products.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Lets the residual and QKV products of 17–32-token f16 steps take the
    /// qmmx module's kernels (the default: the same code placed apart,
    /// kernels/qmmx.cuh) or the qmma module's: the same bits either way, for
    /// tests and measurements.
    pub fn set_qmmx_residual(&self, on: bool) {
        self.qmmx_residual.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a step of `n` tokens over rows of `cols` quantizes its
    /// activations inside the product (no separate launch).
    pub fn qmma_quantizes_in_block(&self, n: usize, cols: usize) -> bool {
        n <= 8 && in_block_smem(n, cols) + QMMA_STATIC_SMEM <= 48 << 10
    }

    /// Bytes of the activation codes and scales [`Gpu::quantize_x`] writes for `n` tokens
    /// (room for 2 bytes a value: the `QMMA_F16X` kernels take f16 activations).
    pub fn quantized_x_bytes(n: usize, cols: usize) -> (usize, usize) {
        let padded = token_tiles(n) * 8;
        (padded * cols * 2, cols / BLOCK * padded * 8)
    }

    /// `x` (n × cols f32, RMS-normalised with `norm` first) as q8_0 codes
    /// and scales for [`Gpu::qmma`] products of `format` weights (for codes
    /// with an offset, q4_0's, the scales carry it folded in: qmma.cu), or
    /// in `form` F16 as f16 values at `xq` (in the order the f16 products
    /// read; `xs` untouched).
    ///
    /// # Safety
    /// `x`: n·cols f32; `xq`, `xs`: the sizes of [`Gpu::quantized_x_bytes`];
    /// norm weights: cols f32.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn quantize_x(
        &self,
        x: u64,
        n: usize,
        cols: usize,
        norm: Option<(u64, f32)>,
        format: QuantFormat,
        form: ActivationForm,
        xq: u64,
        xs: u64,
    ) -> Result<(), CudaError> {
        if !cols.is_multiple_of(BLOCK) || n == 0 || n > QMMA_MAX_TOKENS {
            return Err(CudaError::invalid("quantize_x", format!("{n} tokens of {cols}")));
        }
        if form == ActivationForm::F16 && !self.f16_activations_supported(n, format) {
            return Err(CudaError::invalid("quantize_x", format!("no f16 products for {n} tokens of {format:?}")));
        }
        let hx = i32::from(form == ActivationForm::F16);
        let (nw, eps) = norm.unwrap_or((0, 0.0));
        let f = self.kernel("quantize_x")?;
        let (n32, cols32) = (n as i32, check_i32("quantize_x", "cols", cols)?);
        let mut a = Args::default();
        let off = format.code_offset();
        a.arg(&x).arg(&nw).arg(&eps).arg(&n32).arg(&cols32).arg(&off).arg(&hx).arg(&xq).arg(&xs);
        // A block a token of the step's token tiles (the padding tokens'
        // blocks zero their scales).
        let grid = (8 * token_tiles(n) as u32, 1, 1);
        self.launch(
            f,
            a,
            "quantize_x",
            LaunchConfig { grid_dim: grid, block_dim: (QX_THREADS, 1, 1), shared_mem_bytes: self.quantize_x_smem },
        )
    }

    /// `out = x · wᵀ` for 1..=64 tokens with tiled quantized weights, in
    /// `mode` (as [`Gpu::gemv`]); `qkv` makes it the attention's QKV
    /// projection with RoPE and the KV append (as [`Gpu::gemv_qkv`]). The
    /// activations are `x` quantized in the product (`quantized` = None;
    /// only where [`Gpu::qmma_quantizes_in_block`], with `norm` fused) or
    /// [`Gpu::quantize_x`]'s codes and scales (or f16 values), in `form`.
    ///
    /// # Safety
    /// `x`: n·cols f32; `out`: n·rows (n·rows/2 for SwiGLU) f32; `bias`: rows
    /// f32 or 0; the quantized activations as [`Gpu::quantize_x`] writes them;
    /// for `qkv`, as [`Gpu::gemv_qkv`]. `next` (device address, bytes): the
    /// weights of the product after this one, started towards L2 by each
    /// block once its own last bytes are requested (a hint: any address).
    /// `codes`: a one-token product's q8_0 hand-off ([`OneTokenCodes`]).
    pub unsafe fn qmma(
        &self,
        w: TiledPtr,
        x: u64,
        norm: Option<(u64, f32)>,
        quantized: Option<(u64, u64, ActivationForm)>,
        n: usize,
        bias: u64,
        out: u64,
        mode: GemvMode,
        qkv: Option<(DType, RopeArgs, AttentionDims, usize)>,
        next: Option<(u64, usize)>,
        codes: OneTokenCodes,
    ) -> Result<(), CudaError> {
        let s = w.shape;
        if n == 0 || n > QMMA_MAX_TOKENS {
            return Err(CudaError::invalid("qmma", format!("{n} tokens (1..={QMMA_MAX_TOKENS} supported)")));
        }
        let in_block = quantized.is_none();
        if in_block && !self.qmma_quantizes_in_block(n, s.cols) {
            return Err(CudaError::invalid("qmma", format!("{n} tokens of {} need quantize_x first", s.cols)));
        }
        if !in_block && norm.is_some() {
            return Err(CudaError::invalid("qmma", "the norm is fused into quantize_x for large steps"));
        }
        let half = s.rows / 2;
        if mode == GemvMode::SwiGlu && (!s.rows.is_multiple_of(2) || !half.is_multiple_of(TILE_ROWS)) {
            return Err(CudaError::invalid("qmma", format!("SwiGLU needs halves of whole tiles, got {} rows", s.rows)));
        }
        let (nw, eps) = norm.unwrap_or((0, 0.0));
        let (xq, xs, form) = quantized.unwrap_or((0, 0, ActivationForm::Q8));
        if form == ActivationForm::F16 && !self.f16_activations_supported(n, s.format) {
            return Err(CudaError::invalid("qmma", format!("no f16 products for {n} tokens of {:?}", s.format)));
        }
        // A grouped SwiGLU step hands its output on in quantize_x's form,
        // a residual one as a norm fold.
        let step_codes = codes.output != 0 && !in_block;
        if step_codes {
            self.check_step_codes(s, n, mode, qkv.is_some(), codes)?;
        }
        if codes.fold_norm != 0 && !step_codes {
            return Err(CudaError::invalid("qmma (norm fold)", "a fold needs its buffer (output) and a grouped step"));
        }
        if codes.normed_by.is_some() && (in_block || form != ActivationForm::F16) {
            return Err(CudaError::invalid("qmma (norm fold)", "folded activations are f16 step activations"));
        }
        if codes.normed_by.is_some() && (codes.input != 0 || codes.fold_norm != 0) {
            // A product both reading a fold and writing one could read and
            // write one buffer across blocks; input codes replace x.
            return Err(CudaError::invalid("qmma (norm fold)", "folded activations come alone"));
        }
        if !step_codes && codes.normed_by.is_none() && codes.any() {
            self.check_one_token_codes(s, n, in_block, norm.is_some(), mode, qkv.is_some(), codes)?;
        }
        let nt8 = if in_block { 1 } else { token_tiles(n) };
        let kernel_mode = if qkv.is_some() { 3 } else { mode as usize };
        // In-block quantization: 1 for up to 8 tokens, 2 for exactly one.
        let sx = if in_block { 1 + usize::from(n == 1) } else { 0 };
        let name = format!("qmma_{}_{nt8}_{kernel_mode}_{sx}", s.format as usize);
        let ctx = match qkv {
            Some((kv_dtype, rope, dims, layer)) => {
                if mode != GemvMode::Store || s.rows != (dims.n_heads + 2 * dims.n_groups) * dims.head_dim {
                    return Err(CudaError::invalid(&name, format!("a QKV product of {} rows for {dims:?}", s.rows)));
                }
                crate::ops::rope_ctx(&name, kv_dtype, rope, dims, layer)?
            }
            None => [0u64; 8],
        };
        if sx == 2 && !codes.any() {
            if let Some(name) = self.stream_kernel(s.format, kernel_mode, s.cols) {
                return self.qmv(&name, w, x, norm.unwrap_or((0, 0.0)), bias, out, mode, ctx);
            }
        }
        let hx = form == ActivationForm::F16;
        let mut grouped = crate::quant_group::grouped_kernel_name(s.format, nt8, kernel_mode, hx);
        let residual_off = !self.qmmx_residual.load(std::sync::atomic::Ordering::Relaxed) && kernel_mode != 2;
        if grouped.starts_with("qmmx_") && (residual_off || !self.has_kernel(&grouped)) {
            grouped = format!("qmmh_{}_{nt8}_{kernel_mode}", s.format as usize);
        }
        if !in_block && nt8 >= 2 && self.grouped_products() && self.has_kernel(&grouped) {
            let handed = if step_codes { codes.output } else { 0 };
            let codes = OneTokenCodes { output: handed, ..codes };
            return self.qmma_grouped(w, (xq, xs), n, nt8, bias, out, mode, &grouped, hx, ctx, next, codes);
        }
        if step_codes || codes.normed_by.is_some() {
            return Err(CudaError::invalid(&grouped, "handed-over activations need the grouped products"));
        }
        if hx {
            // qmma's own products read q8_0 codes: never hand them f16 values.
            return Err(CudaError::invalid(&grouped, "this kernel is not available on this device"));
        }
        let f = self.kernel(&name)?;
        let (wq, ws, wm) = w.parts();
        let ints = [s.units, s.tiles, n, s.cols, s.rows, half];
        let ints: Vec<i32> = ints.iter().map(|&v| check_i32(&name, "shape", v)).collect::<Result<_, _>>()?;
        let mut a = Args::default();
        a.arg(&wq).arg(&ws).arg(&wm).arg(&ints[0]).arg(&ints[1]).arg(&x).arg(&nw).arg(&eps);
        // A one-token product's xq (unused: it quantizes in shared memory)
        // carries its input's codes when it is handed them.
        let xq = if codes.input != 0 { codes.input } else { xq };
        a.arg(&xq).arg(&xs).arg(&ints[2]).arg(&ints[3]).arg(&bias).arg(&out).arg(&ints[4]).arg(&ints[5]);
        a.arg_struct(&ctx);
        let (next_w, next_bytes) = next.map_or((0u64, 0i64), |(p, b)| (p, b as i64));
        a.arg(&next_w).arg(&next_bytes).arg(&codes.output);
        let items = if mode == GemvMode::SwiGlu { half / TILE_ROWS } else { s.tiles };
        let smem = if in_block {
            in_block_smem(n, s.cols) as u32
        } else if qmma_stages_x() {
            qmma_stage_smem(s.format, nt8, mode == GemvMode::SwiGlu) as u32
        } else {
            0
        };
        // Persistent blocks, each item to one of them (`GridPolicy`).
        // `CHATGLM_QMMA_BLOCKS_PER_SM` caps the blocks per SM (measurements:
        // fewer leave room for the next kernel's blocks to start early).
        let per_sm = self.blocks_per_sm(&name, QMMA_THREADS, smem);
        let (cap, policy) = qmma_grid_settings();
        let per_sm = cap.map_or(per_sm, |cap| cap.clamp(1, per_sm));
        let blocks = grid_blocks(items, per_sm * self.info().multiprocessors, policy);
        let cfg = LaunchConfig {
            grid_dim: (check_i32(&name, "blocks", blocks)? as u32, 1, 1),
            block_dim: (QMMA_THREADS, 1, 1),
            shared_mem_bytes: smem,
        };
        self.launch_chained(f, a, &name, cfg)
    }

    /// Whether a product can take `codes` ([`OneTokenCodes`]): one token,
    /// quantized in the product; input codes replace x and its norm; output
    /// codes from a SwiGLU product whose half is whole blocks.
    #[allow(clippy::too_many_arguments)]
    /// A grouped SwiGLU step's output handed on ([`step_codes_bytes`]).
    fn check_step_codes(
        &self,
        s: TileShape,
        n: usize,
        mode: GemvMode,
        qkv: bool,
        codes: OneTokenCodes,
    ) -> Result<(), CudaError> {
        let op = "qmma (handed-over step activations)";
        if codes.input != 0 {
            return Err(CudaError::invalid(op, "a step's handed activations come as quantize_x's"));
        }
        if codes.fold_norm != 0 {
            if n <= 8 || mode != GemvMode::Accumulate || qkv || !s.rows.is_multiple_of(BLOCK) {
                return Err(CudaError::invalid(
                    op,
                    format!("a norm fold from grouped residual steps only ({n} tokens, {} rows, {mode:?})", s.rows),
                ));
            }
            return Ok(());
        }
        if n <= 8 || mode != GemvMode::SwiGlu || qkv || !(s.rows / 2).is_multiple_of(BLOCK) {
            return Err(CudaError::invalid(
                op,
                format!("from grouped SwiGLU steps of whole blocks only ({n} tokens, {} rows, {mode:?})", s.rows),
            ));
        }
        Ok(())
    }

    fn check_one_token_codes(
        &self,
        s: TileShape,
        n: usize,
        in_block: bool,
        norm: bool,
        mode: GemvMode,
        qkv: bool,
        codes: OneTokenCodes,
    ) -> Result<(), CudaError> {
        let op = "qmma (q8_0 hand-off)";
        if n != 1 || !in_block {
            return Err(CudaError::invalid(op, format!("one token quantized in the product only, got {n}")));
        }
        if nvrtc_defines("QMMA_WARM=1") {
            return Err(CudaError::invalid(op, "not with the QMMA_WARM=1 measurement kernels"));
        }
        if codes.input != 0 && norm {
            return Err(CudaError::invalid(op, "input codes are final: no norm to fuse"));
        }
        if codes.output != 0 && (mode != GemvMode::SwiGlu || qkv || !(s.rows / 2).is_multiple_of(BLOCK)) {
            return Err(CudaError::invalid(
                op,
                format!("output codes from SwiGLU products of whole blocks only ({} rows, {mode:?})", s.rows),
            ));
        }
        Ok(())
    }

    /// Rows `r0..r0 + nrows` of `w` as row-major f16 at `out`.
    ///
    /// # Safety
    /// `out`: nrows·cols f16; rows within the matrix.
    pub unsafe fn dequantize_rows(&self, w: TiledPtr, r0: usize, nrows: usize, out: u64) -> Result<(), CudaError> {
        let s = w.shape;
        if r0 + nrows > s.rows {
            return Err(CudaError::invalid("dequantize", format!("rows {r0}+{nrows} of {}", s.rows)));
        }
        if nrows == 0 {
            return Ok(());
        }
        let name = format!("qdequant_{}", s.format as usize);
        let f = self.kernel(&name)?;
        let (wq, ws, wm) = w.parts();
        let ints = [s.units, r0, nrows, s.cols];
        let ints: Vec<i32> = ints.iter().map(|&v| check_i32(&name, "shape", v)).collect::<Result<_, _>>()?;
        let mut a = Args::default();
        a.arg(&wq).arg(&ws).arg(&wm).arg(&ints[0]).arg(&ints[1]).arg(&ints[2]).arg(&ints[3]).arg(&out);
        let work = nrows * (s.cols / BLOCK);
        let grid = work.div_ceil(256).clamp(1, 65_535) as u32;
        self.launch(f, a, &name, LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 })
    }

    /// Random code bytes and constant scales `scale` (offsets `min`) in a
    /// tiled matrix: synthetic weights for benchmarks.
    ///
    /// # Safety
    /// `w` must be an allocation of the shape's size.
    pub unsafe fn fill_tiled_random(&self, w: TiledPtr, seed: u64, scale: u16, min: u16) -> Result<(), CudaError> {
        let (wq, ws, wm) = w.parts();
        let words = (w.shape.code_bytes() / 4) as i64;
        let f = self.kernel("fill_bytes")?;
        let mut a = Args::default();
        a.arg(&wq).arg(&words).arg(&seed);
        let grid = |n: usize| n.div_ceil(256).clamp(1, 65_535) as u32;
        let cfg = |n: usize| LaunchConfig { grid_dim: (grid(n), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        self.launch(f, a, "fill_bytes", cfg(words as usize))?;
        let count = w.shape.scale_count() as i64;
        for (p, v) in [(ws, scale), (wm, min)] {
            if p == 0 {
                continue;
            }
            let f = self.kernel("fill_u16")?;
            let mut a = Args::default();
            a.arg(&p).arg(&count).arg(&(v as i32));
            self.launch(f, a, "fill_u16", cfg(count as usize))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn grid_policies_share_the_items() {
        // ChatGLM2's QKV (288 tiles), h→4h (856 gate tiles) and dense (256) on 132 SMs × 2.
        assert_eq!(grid_blocks(288, 264, GridPolicy::Even), 144);
        assert_eq!(grid_blocks(288, 264, GridPolicy::Fill), 264);
        assert_eq!(grid_blocks(856, 264, GridPolicy::Even), 214);
        assert_eq!(grid_blocks(856, 264, GridPolicy::Fill), 264);
        assert_eq!(grid_blocks(256, 264, GridPolicy::Fill), 256);
        assert_eq!(grid_blocks(856, 264, GridPolicy::PerItem), 856);
        assert_eq!(grid_blocks(288, 264, GridPolicy::Auto), 264);
        assert_eq!(grid_blocks(856, 264, GridPolicy::Auto), 214);
        for items in 1..600 {
            for policy in [GridPolicy::Even, GridPolicy::Fill, GridPolicy::PerItem, GridPolicy::Auto] {
                let b = grid_blocks(items, 264, policy);
                assert!((1..=items).contains(&b), "{items} items, {policy:?}: {b} blocks");
            }
        }
        assert_eq!(grid_blocks(5, 0, GridPolicy::Fill), 1);
    }

    use super::*;

    fn codes(format: QuantFormat, seed: usize) -> Vec<u8> {
        (0..format.code_bytes()).map(|i| (seed.wrapping_mul(31).wrapping_add(i * 7) % 251) as u8).collect()
    }

    #[test]
    fn only_q4_0_codes_carry_an_offset() {
        assert_eq!(QuantFormat::Q4.code_offset(), 8);
        for f in [QuantFormat::Q4Min, QuantFormat::Q8, QuantFormat::Q8Min] {
            assert_eq!(f.code_offset(), 0, "{f:?}");
        }
    }

    #[test]
    fn staged_activations_fit_the_shared_memory_asked_for() {
        for format in [QuantFormat::Q4, QuantFormat::Q4Min, QuantFormat::Q8, QuantFormat::Q8Min] {
            for nt8 in [1, 2, 4, 8] {
                for swiglu in [false, true] {
                    let smem = qmma_stage_smem(format, nt8, swiglu);
                    // Two buffers of 8 warps, at least one unit a lane, 16-byte copies.
                    assert!(smem > 0 && smem <= QMMA_STAGE_SMEM_MAX, "{format:?} {nt8} {swiglu}: {smem}");
                    assert_eq!(smem % (2 * 8 * 16), 0);
                }
            }
        }
        // Two blocks a SM of the H100/H200's 227 KiB for the 17–32-token steps.
        assert!(2 * qmma_stage_smem(QuantFormat::Q4, 4, false) <= 227 << 10);
    }

    #[test]
    fn every_block_round_trips_through_the_tiles() {
        for format in [QuantFormat::Q4, QuantFormat::Q4Min, QuantFormat::Q8, QuantFormat::Q8Min] {
            // Awkward sizes: a partial last tile, an odd number of blocks.
            for (rows, cols) in [(1, 32), (17, 160), (40, 96), (16, 64)] {
                let shape = TileShape::new(format, rows, cols).unwrap();
                let mut m = TiledMatrix::new(shape);
                let nb = cols / BLOCK;
                for r in 0..rows {
                    for b in 0..nb {
                        let k = r * nb + b;
                        m.set_block(r, b, k as u16, (k * 3) as u16, &codes(format, k));
                    }
                }
                for r in 0..rows {
                    for b in 0..nb {
                        let k = r * nb + b;
                        let (d, mn, c) = m.block(r, b);
                        assert_eq!(d, k as u16, "{format:?} {rows}×{cols} scale of {r},{b}");
                        assert_eq!(mn, if format.has_min() { (k * 3) as u16 } else { 0 });
                        assert_eq!(c, codes(format, k), "{format:?} {rows}×{cols} codes of {r},{b}");
                    }
                }
            }
        }
    }

    #[test]
    fn no_two_blocks_share_a_byte() {
        for format in [QuantFormat::Q4, QuantFormat::Q8] {
            let shape = TileShape::new(format, 33, 160).unwrap();
            let mut seen = std::collections::HashSet::new();
            for r in 0..33 {
                for b in 0..5 {
                    for &off in shape.block_words(r, b).iter() {
                        assert!(off + 4 <= shape.code_bytes());
                        assert!(seen.insert(off), "{format:?}: word at {off} used twice");
                    }
                    assert!(seen.len() <= shape.code_bytes() / 4);
                }
            }
        }
    }

    #[test]
    fn a_lane_reads_its_fragment_words_from_one_vector() {
        // Lane (g, t) of a 4-bit unit: words t of rows g and g+8, blocks 2p and 2p+1.
        let shape = TileShape::new(QuantFormat::Q4, 16, 128).unwrap();
        let (g, t) = (3, 2);
        let lane_base = (g * 4 + t) * 16;
        assert_eq!(shape.block_words(g, 0)[t], lane_base);
        assert_eq!(shape.block_words(g + 8, 0)[t], lane_base + 4);
        assert_eq!(shape.block_words(g, 1)[t], lane_base + 8);
        assert_eq!(shape.block_words(g + 8, 1)[t], lane_base + 12);
        // 8-bit: words t and t+4 of rows g and g+8 in one vector per block.
        let shape = TileShape::new(QuantFormat::Q8, 16, 64).unwrap();
        let w = shape.block_words(g, 1);
        let w8 = shape.block_words(g + 8, 1);
        let base = (32 + g * 4 + t) * 16;
        assert_eq!([w[t], w8[t], w[t + 4], w8[t + 4]], [base, base + 4, base + 8, base + 12]);
    }

    #[test]
    fn shapes_that_are_not_whole_blocks_are_refused() {
        assert!(TileShape::new(QuantFormat::Q4, 16, 48).is_err());
        assert!(TileShape::new(QuantFormat::Q8, 0, 64).is_err());
    }
}
