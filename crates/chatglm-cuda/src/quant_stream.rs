//! One-token quantized products streamed through shared memory
//! (`kernels/qmv.cu`): batch-1 decode's products, in blocks small enough (one
//! a SM, at most half of it) that the next product's blocks start beside a
//! running one and request their first weights before they wait for it.
//! A measurement variant (`CHATGLM_QMV=1` or [`Gpu::set_one_token_stream`]):
//! on the H200 its results equal qmma's own bit for bit (under `QMMA_ONE_COLS=0`;
//! to rounding otherwise), but batch-1 decode
//! was slower (q4_0 359–380 against 481–502 tok/s, q8_0 303–317 against
//! 390–416; bench/RESULTS.md, runs 88–90), so one-token products run on
//! qmma's own kernels by default.

use crate::device::Args;
use crate::ops::check_i32;
use crate::quant::{in_block_smem, QuantFormat, TiledPtr, TILE_ROWS};
use crate::{CudaError, GemvMode, Gpu};
use cudarc::driver::LaunchConfig;

/// Warps of a block (qmma.cu's `QMMA_WARPS`).
const WARPS: usize = 8;
/// Shared memory of a block's weight ring: qmv.cu's `QMV_RING_KB` (72, or
/// as `CHATGLM_NVRTC_DEFINES` sets it, for measurements), read once.
fn ring_kb() -> usize {
    static KB: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *KB.get_or_init(|| crate::quant_group::define("QMV_RING_KB").unwrap_or(72))
}

/// Bytes of one weight unit in the ring: codes, scales (and offsets).
fn unit_bytes(format: QuantFormat) -> usize {
    let scales = 32 * if format.is_4bit() { 2 } else { 1 };
    512 + scales * if format.has_min() { 2 } else { 1 }
}

/// Tile-units a warp works on at once: qmv.cu's `QMV_GROUP` (4, or as
/// `CHATGLM_NVRTC_DEFINES` sets it), read once.
fn group_units() -> usize {
    static G: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *G.get_or_init(|| crate::quant_group::define("QMV_GROUP").unwrap_or(4))
}

/// Bytes of a block's weight ring for `row_tiles` tiles a unit (2 for
/// SwiGLU), as qmv.cu's `QmvRing` computes them: whole groups of
/// `group` tile-units (`group / row_tiles` units) a warp.
fn ring_bytes(format: QuantFormat, row_tiles: usize, kb: usize, group: usize) -> usize {
    let group_bytes = group / row_tiles * row_tiles * unit_bytes(format);
    let groups = kb * 1024 / (WARPS * group_bytes);
    WARPS * groups * group_bytes
}

/// Longest rows the streamed products take: the in-block activations of
/// this many columns (codes and scales) fit the shared memory the kernels
/// are allowed beside the ring.
const MAX_COLS: usize = 32 * 1024;

/// The dynamic shared memory kernel `name` (`qmv_{format}_{mode}`) may ask
/// for: its ring and the activations of the longest rows.
pub(crate) fn stream_smem_of(name: &str) -> Option<usize> {
    let mut parts = name.strip_prefix("qmv_")?.split('_');
    let format = QuantFormat::from_index(parts.next()?.parse().ok()?)?;
    let mode: usize = parts.next()?.parse().ok()?;
    Some(ring_bytes(format, if mode == 2 { 2 } else { 1 }, ring_kb(), group_units()) + in_block_smem(1, MAX_COLS))
}

impl Gpu {
    /// Whether one-token products stream through shared memory (off by
    /// default; `CHATGLM_QMV=1` starts with it on).
    pub fn one_token_stream(&self) -> bool {
        self.one_token_stream.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends one-token products to the streamed kernels or to qmma's own,
    /// for tests and measurements.
    pub fn set_one_token_stream(&self, on: bool) {
        self.one_token_stream.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The streamed kernel for a one-token product over rows of `cols`, if
    /// it is enabled and compiled for this device.
    pub(crate) fn stream_kernel(&self, format: QuantFormat, kernel_mode: usize, cols: usize) -> Option<String> {
        let name = format!("qmv_{}_{kernel_mode}", format as usize);
        (self.one_token_stream() && cols <= MAX_COLS && self.has_kernel(&name)).then_some(name)
    }

    /// One token's product through kernel `name` (from
    /// [`Gpu::stream_kernel`]): x quantized in the block (RMS-normed with
    /// `norm` first); `ctx`: the QKV epilogue's context (mode 3).
    ///
    /// # Safety
    /// As [`Gpu::qmma`] with one token.
    pub(crate) unsafe fn qmv(
        &self,
        name: &str,
        w: TiledPtr,
        x: u64,
        (nw, eps): (u64, f32),
        bias: u64,
        out: u64,
        mode: GemvMode,
        ctx: [u64; 8],
    ) -> Result<(), CudaError> {
        let s = w.shape;
        let f = self.kernel(name)?;
        let half = s.rows / 2;
        let swiglu = mode == GemvMode::SwiGlu;
        let items = if swiglu { half / TILE_ROWS } else { s.tiles };
        let smem =
            ring_bytes(s.format, if swiglu { 2 } else { 1 }, ring_kb(), group_units()) + in_block_smem(1, s.cols);
        let (wq, ws, wm) = w.parts();
        let ints = [s.units, s.tiles, s.cols, s.rows, half];
        let ints: Vec<i32> = ints.iter().map(|&v| check_i32(name, "shape", v)).collect::<Result<_, _>>()?;
        let mut a = Args::default();
        a.arg(&wq).arg(&ws).arg(&wm).arg(&ints[0]).arg(&ints[1]).arg(&x).arg(&nw).arg(&eps).arg(&ints[2]);
        a.arg(&bias).arg(&out).arg(&ints[3]).arg(&ints[4]);
        a.arg_struct(&ctx);
        // One block a SM: the other half of each SM is the next product's.
        let blocks = items.min(self.info().multiprocessors).max(1);
        let cfg = LaunchConfig {
            grid_dim: (check_i32(name, "blocks", blocks)? as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        self.launch(f, a, name, cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_match_the_kernel_and_two_blocks_fit_a_multiprocessor() {
        // qmv.cu at QMV_RING_KB = 72, QMV_GROUP = 4: q4_0 4 groups of 4 units
        // (576 bytes) a warp, SwiGLU 4 of 2 units × 2 tiles; q4_1 3 groups.
        assert_eq!(ring_bytes(QuantFormat::Q4, 1, 72, 4), 8 * 4 * 4 * 576);
        assert_eq!(ring_bytes(QuantFormat::Q4, 2, 72, 4), 8 * 4 * 4 * 576);
        assert_eq!(ring_bytes(QuantFormat::Q8, 1, 72, 4), 8 * 4 * 4 * 544);
        assert_eq!(ring_bytes(QuantFormat::Q4Min, 1, 72, 4), 8 * 3 * 4 * 640);
        // ChatGLM2-6B's rows (4,096 and 13,696 columns), static shared memory
        // (reduction buffer of up to 32 rows, norms, a token slot) and 1 KiB
        // the driver keeps a block: two blocks in a H100/H200 SM's 228 KiB.
        for format in [QuantFormat::Q4, QuantFormat::Q4Min, QuantFormat::Q8, QuantFormat::Q8Min] {
            for (rt, cols) in [(1, 4096), (2, 4096), (1, 13696)] {
                let block = ring_bytes(format, rt, 72, 4) + in_block_smem(1, cols) + 2 * 8 * rt * 16 * 4 + 512 + 1024;
                assert!(2 * block <= 228 * 1024, "{format:?} rt={rt} cols={cols}: {block} bytes");
            }
        }
        assert_eq!(
            stream_smem_of("qmv_0_2"),
            Some(ring_bytes(QuantFormat::Q4, 2, ring_kb(), group_units()) + in_block_smem(1, MAX_COLS))
        );
        assert_eq!(stream_smem_of("qmmg_0_2_1"), None);
    }
}
