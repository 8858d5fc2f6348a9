//! The rest of a one-token decode layer after attention — dense (+
//! residual), RMSNorm → h→4h → SwiGLU, 4h→h (+ residual) — as one persistent
//! kernel whose weights stream through a shared-memory ring
//! (`kernels/mlp_stream.cu`): DRAM keeps streaming the next product's
//! weights while the blocks wait for each other at the two product
//! boundaries inside it. Same arithmetic as qmma's one-token products, bit
//! for bit.

use crate::quant::{in_block_smem, QuantFormat, TiledPtr, TILE_ROWS};
use crate::{CudaError, Gpu};
use cudarc::driver::{CudaSlice, LaunchConfig};

/// Threads of a block: qmma.cu's 8 compute warps and the producer warp.
const MLPS_THREADS: u32 = 8 * 32 + 32;
/// Tile-units a ring slot holds (`MLPS_STEP`: QMMA_ONE_UB · QMMA_WARPS).
const STEP_UNITS: usize = 64;
/// Ring slots at most (`MLPS_MAX_SLOTS`).
const MAX_SLOTS: usize = 8;
/// Fewest slots worth streaming through: one being filled while one is read.
const MIN_SLOTS: usize = 2;
/// Dynamic shared memory the kernels are allowed: sm_90's 227 KiB a block
/// less the kernel's static part (~9.6 KiB: the epilogue's sums, barriers).
pub(crate) const MLPS_SMEM: usize = 216 << 10;
const _: () = assert!(MLPS_SMEM + (10 << 10) <= 227 << 10, "the static shared memory must fit beside it");
/// Layers whose launches have their own counters (3 ints each).
const COUNTER_LAYERS: usize = 1024;
/// Widest normed input the in-block quantization holds in registers at once
/// (block_quantize_one's two rounds of 64 blocks).
const MAX_NORMED_COLS: usize = 4096;

/// `CHATGLM_MLP_SLOTS` caps the ring (measurements: fewer slots leave a SM
/// room for the next kernel's block to start early), read once.
fn slot_cap() -> usize {
    static CAP: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| std::env::var("CHATGLM_MLP_SLOTS").ok().and_then(|v| v.parse().ok()).unwrap_or(MAX_SLOTS))
}

/// Bytes of one ring slot: a batch's codes, scales (and offsets).
pub(crate) fn slot_bytes(format: QuantFormat) -> usize {
    let scales = 32 * format.blocks_per_unit();
    STEP_UNITS * (512 + scales * if format.has_min() { 2 } else { 1 })
}

/// Ring slots beside the activations of `cols`-wide rows, in one block a SM.
pub(crate) fn ring_slots(format: QuantFormat, max_cols: usize) -> usize {
    ring_slots_in(format, max_cols, MLPS_SMEM)
}

/// Ring slots in `budget` bytes of dynamic shared memory.
fn ring_slots_in(format: QuantFormat, max_cols: usize, budget: usize) -> usize {
    (budget.saturating_sub(in_block_smem(1, max_cols)) / slot_bytes(format)).min(MAX_SLOTS)
}

/// Dynamic shared memory a block may take when `per_sm` share a SM (228 KiB
/// on sm_90, less each block's static part and the 1 KiB the driver keeps).
fn block_budget(per_sm: usize) -> usize {
    if per_sm <= 1 {
        MLPS_SMEM
    } else {
        (228 << 10) / per_sm - (10 << 10) - 1024
    }
}

/// `CHATGLM_MLP_BLOCKS_PER_SM` (1 or 2): blocks a SM, each with its own ring
/// and compute warps (measurements; 1 by default), read once.
fn blocks_per_sm_wanted() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("CHATGLM_MLP_BLOCKS_PER_SM").ok().and_then(|v| v.parse().ok()).unwrap_or(1).clamp(1, 2)
    })
}

/// The dynamic shared memory kernel `name` (`mlps_{format}`) may ask for.
pub(crate) fn mlp_stream_smem_of(name: &str) -> Option<usize> {
    let format: usize = name.strip_prefix("mlps_")?.parse().ok()?;
    QuantFormat::from_index(format).map(|_| MLPS_SMEM)
}

/// One token's dense + MLP block: device addresses of its weights and rows.
#[derive(Debug, Clone, Copy)]
pub struct MlpBlock {
    /// hidden × (heads·head_dim): the attention's output projection.
    pub dense: TiledPtr,
    /// 2·ffn × hidden: [gate | up].
    pub up: TiledPtr,
    /// hidden × ffn.
    pub down: TiledPtr,
    /// The attention's output (heads·head_dim f32).
    pub attn: u64,
    /// The residual stream (hidden f32), updated in place.
    pub hidden: u64,
    /// RMSNorm weights before the MLP (hidden f32).
    pub norm: u64,
    pub eps: f32,
    /// SwiGLU's output (ffn f32).
    pub ffn: u64,
}

impl MlpBlock {
    /// Why the fused kernel cannot take this block, if it cannot.
    fn unsupported(&self) -> Option<String> {
        let (d, u, w) = (self.dense.shape, self.up.shape, self.down.shape);
        if d.format != u.format || u.format != w.format {
            return Some(format!("mixed formats {:?} / {:?} / {:?}", d.format, u.format, w.format));
        }
        let hidden = d.rows;
        let ffn = u.rows / 2;
        if u.cols != hidden || w.rows != hidden || w.cols != ffn || !u.rows.is_multiple_of(2 * TILE_ROWS) {
            return Some(format!(
                "shapes dense {}×{}, h→4h {}×{}, 4h→h {}×{}",
                d.rows, d.cols, u.rows, u.cols, w.rows, w.cols
            ));
        }
        if hidden > MAX_NORMED_COLS {
            return Some(format!("a normed input of {hidden} > {MAX_NORMED_COLS} columns"));
        }
        let cols = d.cols.max(hidden).max(ffn);
        if ring_slots(d.format, cols) < MIN_SLOTS {
            return Some(format!("rows of {cols} columns leave no room for the weight ring"));
        }
        None
    }
}

/// The kernel's `struct MlpsOp`: six pointers, four 64-bit ints.
fn op_slots(w: &TiledPtr, x: u64, nw: u64, out: u64, out_rows: usize) -> [u64; 10] {
    let (wq, ws, wm) = w.parts();
    let s = w.shape;
    [wq, ws, wm, x, nw, out, s.units as u64, s.tiles as u64, s.cols as u64, out_rows as u64]
}

impl Gpu {
    /// Whether [`Gpu::mlp_block_one_token`] runs here for weights of `format`:
    /// the kernel needs sm_90 (TMA bulk copies, transaction barriers).
    pub fn mlp_stream_available(&self, format: QuantFormat) -> bool {
        self.info().compute_capability.0 >= 9 && self.has_kernel(&format!("mlps_{}", format as usize))
    }

    /// Whether the fused kernel takes this block (shapes, formats, device).
    pub fn mlp_stream_takes(&self, m: &MlpBlock) -> bool {
        self.mlp_stream_available(m.dense.shape.format) && m.unsupported().is_none()
    }

    /// One token: `hidden += dense·attn`, then `ffn = swiglu(up·rmsnorm(hidden))`
    /// and `hidden += down·ffn`, as one kernel (`layer` picks its counters).
    pub fn mlp_block_one_token(&self, layer: usize, m: &MlpBlock) -> Result<(), CudaError> {
        let name = format!("mlps_{}", m.dense.shape.format as usize);
        if !self.mlp_stream_available(m.dense.shape.format) {
            return Err(CudaError::invalid(&name, "needs a device of compute capability 9.0 or newer"));
        }
        if let Some(why) = m.unsupported() {
            return Err(CudaError::invalid(&name, why));
        }
        if layer >= COUNTER_LAYERS {
            return Err(CudaError::invalid(&name, format!("layer {layer} (counters for {COUNTER_LAYERS})")));
        }
        let f = self.kernel(&name)?;
        let counters = self.mlp_counters()? + (layer * 3 * 4) as u64;
        let format = m.dense.shape.format;
        let (hidden, ffn) = (m.dense.shape.rows, m.up.shape.rows / 2);
        let cols = m.dense.shape.cols.max(hidden).max(ffn);
        // Two blocks a SM where both rings fit and the device places them
        // (every block must be resident: they wait for each other).
        let x_bytes = in_block_smem(1, cols);
        let mut per_sm = blocks_per_sm_wanted();
        if per_sm > 1 {
            let slots = ring_slots_in(format, cols, block_budget(per_sm)).min(slot_cap());
            let fits = self.blocks_per_sm(&name, MLPS_THREADS, (slots * slot_bytes(format) + x_bytes) as u32);
            if slots < MIN_SLOTS || fits < per_sm {
                per_sm = 1;
            }
        }
        let slots = ring_slots_in(format, cols, block_budget(per_sm)).min(slot_cap()).max(MIN_SLOTS);
        let slot = slot_bytes(format);
        let mut args = Vec::with_capacity(33);
        args.extend(op_slots(&m.dense, m.attn, 0, m.hidden, hidden));
        args.extend(op_slots(&m.up, m.hidden, m.norm, m.ffn, ffn));
        args.extend(op_slots(&m.down, m.ffn, 0, m.hidden, hidden));
        args.extend([counters, slots as u64, slot as u64]);
        let mut a = crate::device::Args::default();
        a.arg_struct(&args).arg(&m.eps);
        let smem = slots * slot + x_bytes;
        let cfg = LaunchConfig {
            grid_dim: ((per_sm * self.info().multiprocessors) as u32, 1, 1),
            block_dim: (MLPS_THREADS, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        self.launch(f, a, &name, cfg)?;
        self.mlp_launches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Fused blocks launched (or recorded) so far.
    pub fn mlp_block_launches(&self) -> u64 {
        self.mlp_launches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The fused kernels' counters (zero between launches), allocated once.
    fn mlp_counters(&self) -> Result<u64, CudaError> {
        let mut held = self.mlp_counters.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_none() {
            let c: CudaSlice<i32> = self.alloc_zeros(COUNTER_LAYERS * 3, "MLP block counters")?;
            *held = Some(c);
        }
        Ok(held.as_ref().map(crate::device_ptr).expect("allocated above"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_and_the_activations_fit_a_block() {
        // ChatGLM2-6B: activations of the 13,696-wide 4h→h input, 36–40 KiB slots.
        for format in [QuantFormat::Q4, QuantFormat::Q4Min, QuantFormat::Q8, QuantFormat::Q8Min] {
            let slots = ring_slots(format, 13_696);
            assert!(slots >= 4, "{format:?}: {slots} slots");
            assert!(slots * slot_bytes(format) + in_block_smem(1, 13_696) <= MLPS_SMEM);
            assert_eq!(slot_bytes(format) % 128, 0, "slots stay aligned for bulk copies");
            assert_eq!(mlp_stream_smem_of(&format!("mlps_{}", format as usize)), Some(MLPS_SMEM));
        }
        assert_eq!(slot_bytes(QuantFormat::Q4), 64 * (512 + 64));
        assert_eq!(slot_bytes(QuantFormat::Q8Min), 64 * (512 + 64));
        assert_eq!(ring_slots(QuantFormat::Q4, 1 << 20), 0, "rows too wide: no ring");
        // Two blocks a SM: two slots each beside the 6B's activations.
        assert_eq!(ring_slots_in(QuantFormat::Q4, 13_696, block_budget(2)), 2);
        assert!(2 * (block_budget(2) + (10 << 10) + 1024) <= 228 << 10);
        assert_eq!(mlp_stream_smem_of("mlps_4"), None);
        assert_eq!(mlp_stream_smem_of("qmma_0_1_1_2"), None);
    }

    fn block(format: QuantFormat, hidden: usize, ffn: usize) -> MlpBlock {
        let tp = |rows, cols| TiledPtr { base: 0, shape: crate::quant::TileShape::new(format, rows, cols).unwrap() };
        MlpBlock {
            dense: tp(hidden, hidden),
            up: tp(2 * ffn, hidden),
            down: tp(hidden, ffn),
            attn: 0,
            hidden: 0,
            norm: 0,
            eps: 1e-5,
            ffn: 0,
        }
    }

    #[test]
    fn the_fused_kernel_takes_whole_tiles_of_supported_widths() {
        assert_eq!(block(QuantFormat::Q4, 4096, 13_696).unsupported(), None);
        assert_eq!(block(QuantFormat::Q8, 64, 1056).unsupported(), None);
        let mut wrong = block(QuantFormat::Q4, 4096, 13_696);
        wrong.down = block(QuantFormat::Q4, 4096, 13_664).down;
        assert!(wrong.unsupported().unwrap().contains("shapes"));
        assert!(block(QuantFormat::Q4, 8192, 13_696).unsupported().is_some(), "normed rows over 4,096");
        let mut mixed = block(QuantFormat::Q4, 256, 512);
        mixed.down = block(QuantFormat::Q8, 256, 512).down;
        assert!(mixed.unsupported().unwrap().contains("mixed"));
    }
}
