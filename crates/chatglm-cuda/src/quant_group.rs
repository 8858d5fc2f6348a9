//! The grouped quantized products (`kernels/qmma_group.cu`): steps of 9..=64
//! tokens over [`Gpu::quantize_x`]'s activations, where a block stages each
//! chunk of activations once for a group of row tiles (8; the SwiGLU
//! products' wide groups 16: [`GroupShape`]) and the chunks of all groups are
//! dealt to the blocks in equal runs (stream-K, partial results summed in a
//! workspace). [`Gpu::qmma`] sends such steps here (`CHATGLM_QMMA_GROUPED=0`
//! or [`Gpu::set_grouped_products`]: qmma's own). On the H200 at 32 int4
//! tokens (f16 activations) they take QKV 17.0 / dense 14.4 / h→4h 44.7 /
//! 4h→h 33.2 / logits 90.5 µs (bench/RESULTS.md, run 268), where they began
//! at 26.0 / 22.9 / 67.0 / 40.1 / 127 (runs 85 and 87) against qmma's own
//! 37.8 / 21.7 / 85.0 / 57.7 / 231.

use crate::device::{device_ptr, Args};
use crate::ops::check_i32;
use crate::quant::{fold_sums, OneTokenCodes, QuantFormat, TiledPtr, TILE_ROWS};
use crate::{CudaError, CudaSlice, GemvMode, Gpu};
use cudarc::driver::LaunchConfig;

/// A numeric define of `CHATGLM_NVRTC_DEFINES` (`NAME=value`), if set.
pub(crate) fn define(name: &str) -> Option<usize> {
    let prefix = format!("{name}=");
    let defines = std::env::var("CHATGLM_NVRTC_DEFINES").ok()?;
    let value = crate::compile::define_items(&defines).find_map(|v| v.strip_prefix(prefix.as_str())?.parse().ok());
    value
}

/// The shape of a grouped product's groups (qmma_group.cu's `QgShape`):
/// row tiles a group, weight units a chunk, warps a tile, and the tiles at
/// the group's end that a one-warp shape gives a second warp (`xt`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GroupShape {
    tiles: usize,
    cu: usize,
    kw: usize,
    xt: usize,
}

impl GroupShape {
    /// The shape of the groups of a SwiGLU product (`swiglu`) or of another
    /// of `format` weights over `nt8` token tiles (`hx`: f16 activations):
    /// qmma_group.cu's `QgShape` under its defaults, or as
    /// `CHATGLM_NVRTC_DEFINES` sets `QMMG_CU`, `QMMG_KW`, `QMMG_WIDE_SWIGLU`,
    /// `QMMG_WIDE_CU`, `QMMG_WIDE_PAIRS`, `QMMG_WIDE_PAIRS_4` and
    /// `QMMG_WIDE_XT` (read once).
    fn of(swiglu: bool, format: QuantFormat, nt8: usize, hx: bool) -> GroupShape {
        type Shapes = (GroupShape, Option<GroupShape>, usize, bool);
        static SHAPES: std::sync::OnceLock<Shapes> = std::sync::OnceLock::new();
        let (narrow, wide, pairs_4, xt_on) = *SHAPES.get_or_init(|| {
            let read = |name: &str, default: usize| define(name).unwrap_or(default);
            let pairs = read("QMMG_WIDE_PAIRS", 8);
            let xt_on = read("QMMG_WIDE_XT", 0) != 0;
            let (narrow, wide) = GroupShape::from_defines(
                read("QMMG_CU", 8),
                read("QMMG_KW", 2),
                read("QMMG_WIDE_SWIGLU", 1),
                read("QMMG_WIDE_CU", 8),
                pairs,
                xt_on,
            );
            (narrow, wide, read("QMMG_WIDE_PAIRS_4", pairs), xt_on)
        });
        GroupShape::pick(narrow, wide, pairs_4, xt_on, swiglu, format, nt8, hx)
    }

    /// The shape of the qmmx module's kernels (kernels/qmmx.cuh: 7 pairs
    /// on 16 warps at 4 token tiles over f16 activations), under the
    /// `CHATGLM_NVRTC_DEFINES` that [`GroupShape::of`] reads.
    fn of_x(format: QuantFormat) -> GroupShape {
        GroupShape { tiles: 14, cu: define("QMMG_WIDE_CU").unwrap_or(8), kw: 1, xt: 2 }.fitted(format, 4, true)
    }

    /// [`GroupShape::of`] under these defines' shapes (`pairs_4`: a wide
    /// group's pairs at 4 token tiles over f16 activations; `xt_on`:
    /// `QMMG_WIDE_XT`).
    #[allow(clippy::too_many_arguments)]
    fn pick(
        narrow: GroupShape,
        wide: Option<GroupShape>,
        pairs_4: usize,
        xt_on: bool,
        swiglu: bool,
        format: QuantFormat,
        nt8: usize,
        hx: bool,
    ) -> GroupShape {
        let wide = wide.map(|w| {
            if nt8 == 4 && hx {
                GroupShape { tiles: 2 * pairs_4, xt: two_warp_tiles(pairs_4, xt_on), ..w }
            } else {
                w
            }
        });
        match wide {
            // An odd count of pairs ends a group mid hand-off block: f16 only.
            Some(wide) if swiglu && (hx || wide.tiles % 4 == 0) => wide.fitted(format, nt8, hx),
            _ => narrow,
        }
    }

    /// (the others' shape, the SwiGLU products' widest shape, if wide) under these defines.
    fn from_defines(
        cu: usize,
        kw: usize,
        wide_swiglu: usize,
        wide_cu: usize,
        wide_pairs: usize,
        xt_on: bool,
    ) -> (GroupShape, Option<GroupShape>) {
        let narrow = GroupShape { tiles: 8, cu, kw, xt: 0 };
        let wide = GroupShape { tiles: 2 * wide_pairs, cu: wide_cu, kw: 1, xt: two_warp_tiles(wide_pairs, xt_on) };
        (narrow, (wide_swiglu != 0).then_some(wide))
    }

    /// A wide shape with chunks of at most 4 units where two stages of its
    /// own do not fit in [`STAGES_SMEM`] (qmma_group.cu's `QgShape`).
    fn fitted(self, format: QuantFormat, nt8: usize, hx: bool) -> GroupShape {
        if 2 * stage_bytes(format, nt8, hx, self) <= STAGES_SMEM {
            self
        } else {
            GroupShape { cu: self.cu.min(4), ..self }
        }
    }

    fn threads(self) -> u32 {
        ((self.tiles * self.kw + self.xt) * 32) as u32
    }

    /// Floats of one partial result: the group's rows × 64 tokens.
    fn ws_slot(self) -> usize {
        self.tiles * TILE_ROWS * 64
    }

    fn wide(self) -> bool {
        self.tiles > 8
    }

    /// The SwiGLU products' and the others' partial results, whichever is larger.
    fn largest_ws_slot() -> usize {
        let shapes = [false, true].into_iter().flat_map(|swiglu| {
            [2, 4, 8].into_iter().flat_map(move |nt8| {
                [false, true].into_iter().map(move |hx| GroupShape::of(swiglu, QuantFormat::Q4, nt8, hx))
            })
        });
        shapes.map(GroupShape::ws_slot).max().unwrap_or(0)
    }
}

/// The tiles of a wide group of `pairs` pairs that take two warps
/// (qmma_group.cu's `QgShape::XT`): under `QMMG_WIDE_XT` a group of fewer
/// than 8 pairs keeps 16 warps.
fn two_warp_tiles(pairs: usize, xt_on: bool) -> usize {
    if xt_on && pairs < 8 {
        16 - 2 * pairs
    } else {
        0
    }
}

/// qmma_group.cu's `QMMG_STAGES` where `CHATGLM_NVRTC_DEFINES` sets it, read once.
fn group_stages() -> Option<usize> {
    static STAGES: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *STAGES.get_or_init(|| define("QMMG_STAGES"))
}

/// qmma_group.cu's `QMMG_STAGES` in the qmma module when no define sets it:
/// as many stages as fit, up to 4.
const QMMA_MODULE_STAGES: usize = 4;

/// qmma_group.cu's `QMMG_HX2_STAGES` (the 9–16-token f16 products' stage
/// cap under `QMMG_STAGES`: 3 unless a define sets it; 0: none), read once.
fn hx2_stages() -> Option<usize> {
    static STAGES: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *STAGES.get_or_init(|| define("QMMG_HX2_STAGES").map_or(Some(3), |s| (s > 0).then_some(s)))
}
/// Shared memory the stages may take under `QMMG_STAGES` (qmma_group.cu's STAGES_FIT: 220 KiB).
const STAGES_SMEM: usize = 220 << 10;

/// How many blocks a group of a grouped product runs on. By default
/// (`ByTokens`) `Auto` from 4 token tiles (25–64 tokens) and `Aligned`
/// below: `Aligned` gives a group as many blocks as fit in a wave (resident
/// blocks / groups) where that keeps at least 15/16 of the wave (dense and
/// 4h→h: 32 groups on 128 of 132 blocks), so every block's run of chunks
/// lies in one group and each group is summed from the same number of
/// parts; else every chunk is dealt over the wave, runs crossing groups
/// (32 int4 sequences 10,339–10,354 tok/s against 10,030–10,036, runs
/// 229–231). `Auto` aligns whatever the share of the wave it leaves (QKV's
/// 36 groups on 108 blocks, h→4h's 107 wide groups on 107 unsplit): a part
/// is a group's rows × the step's tokens, so with more tokens a split costs
/// more — 32 int4 sequences 10,856–10,885 against 10,810–10,839 (+0.5%), 64
/// +1.1%, but 16 −2.1% (run 271; without the grouped prefetch).
/// `CHATGLM_QMMG_SPLIT` (measurements): `aligned`, `wave`, `auto`, or `k`
/// (1..=8) blocks a group where they fit.
#[derive(Clone, Copy, Debug, PartialEq)]
enum GroupSplit {
    ByTokens,
    Aligned,
    Wave,
    PerGroup(usize),
    Auto,
}

impl GroupSplit {
    /// The setting for a product over `nt8` token tiles.
    fn for_tiles(self, nt8: usize) -> GroupSplit {
        match self {
            GroupSplit::ByTokens if nt8 >= 4 => GroupSplit::Auto,
            GroupSplit::ByTokens => GroupSplit::Aligned,
            s => s,
        }
    }
}

fn group_split() -> GroupSplit {
    static SPLIT: std::sync::OnceLock<GroupSplit> = std::sync::OnceLock::new();
    *SPLIT.get_or_init(|| {
        let Ok(v) = std::env::var("CHATGLM_QMMG_SPLIT") else { return GroupSplit::ByTokens };
        match v.trim() {
            "aligned" => GroupSplit::Aligned,
            "auto" => GroupSplit::Auto,
            "wave" => GroupSplit::Wave,
            t => match t.parse::<usize>() {
                Ok(k) if (1..=8).contains(&k) => GroupSplit::PerGroup(k),
                _ => {
                    tracing::warn!("CHATGLM_QMMG_SPLIT={v:?} is not aligned, wave, auto or 1..=8; using the default");
                    GroupSplit::ByTokens
                }
            },
        }
    })
}

/// The grid of a grouped product (see [`group_split`]; `ByTokens` resolved
/// by [`GroupSplit::for_tiles`]).
fn grouped_blocks(chunks: usize, groups: usize, resident: usize, split: GroupSplit) -> usize {
    let wave = chunks.min(resident);
    let fit = resident / groups.max(1);
    let per_group = match split {
        GroupSplit::Wave => 0,
        GroupSplit::PerGroup(k) => k,
        GroupSplit::Auto => fit,
        GroupSplit::Aligned | GroupSplit::ByTokens if 16 * groups * fit >= 15 * resident => fit,
        GroupSplit::Aligned | GroupSplit::ByTokens => 0,
    };
    let blocks = if per_group > 0 && groups * per_group <= resident { (groups * per_group).min(wave) } else { wave };
    blocks.max(1)
}

/// The bits of an empty partial-result element (qmma_group.cu's
/// `QG_PART_EMPTY`: a signalling NaN, which no arithmetic produces).
const PART_EMPTY: u32 = 0x7fba_dbad;

/// Partial results and one counter a group, grown on demand: one part a
/// block (only a block's first run can be a part that another block sums).
pub(crate) struct GroupScratch {
    partials: CudaSlice<f32>,
    counters: CudaSlice<u32>,
    floats: usize,
    groups: usize,
}

impl GroupScratch {
    pub(crate) fn bytes(&self) -> usize {
        self.floats * 4 + self.groups * 4
    }
}

/// Dynamic shared memory of a grouped product of `nt8` token tiles (mirrors
/// qmma_group.cu's QgLayout: stages of weights, scales, offsets and
/// activations; the group's sums reuse them).
/// `hx`: over f16 activations (2 bytes a value, 32 of padding a row, no scales).
/// `swiglu`: a SwiGLU product's (its groups may be wide: [`GroupShape::of`]).
pub(crate) fn group_smem(format: QuantFormat, nt8: usize, hx: bool, swiglu: bool) -> usize {
    shaped_smem(format, nt8, hx, GroupShape::of(swiglu, format, nt8, hx), false)
}

/// Bytes of one ring stage (qmma_group.cu's `QgLayout::STAGE`).
fn stage_bytes(format: QuantFormat, nt8: usize, hx: bool, shape: GroupShape) -> usize {
    let GroupShape { tiles, cu, .. } = shape;
    let sb = if format.is_4bit() { 2 } else { 1 };
    let kb = cu * sb;
    let scales = tiles * cu * sb * 32;
    let activations = if hx { nt8 * 8 * (kb * 64 + 64) } else { nt8 * 8 * (kb * 32 + 16) + kb * nt8 * 8 * 8 };
    tiles * cu * 512 + scales * if format.has_min() { 2 } else { 1 } + activations
}

/// `x_module`: a kernel of the qmmx module (kernels/qmmx.cuh), whose stages
/// are the shapes' own unless `QMMG_STAGES` is set.
fn shaped_smem(format: QuantFormat, nt8: usize, hx: bool, shape: GroupShape, x_module: bool) -> usize {
    let tiles = shape.tiles;
    let stage = stage_bytes(format, nt8, hx, shape);
    let stages = match (hx, nt8) {
        _ if shape.wide() => (STAGES_SMEM / stage).clamp(2, 4),
        (true, 0..=4) => 3,
        (false, 0..=2) => 4,
        (false, 4) => 3,
        _ => 2,
    };
    // `QMMG_STAGES` (4 in the qmma module): as many stages as fit, up to it.
    let cap = group_stages().or((!x_module).then_some(QMMA_MODULE_STAGES));
    let cap = cap.map(|c| if hx && nt8 <= 2 { hx2_stages().unwrap_or(c) } else { c });
    let stages = cap.map_or(stages, |s| s.min(STAGES_SMEM / stage).max(2));
    (stages * stage).max(tiles * TILE_ROWS * (nt8 * 8 + 1) * 4)
}

/// The shared memory kernel `name` (`qmmg_{format}_{nt8}_{mode}`, or
/// `qmmh_…` over f16 activations) needs.
pub(crate) fn group_smem_of(name: &str) -> Option<usize> {
    if let Some(rest) = name.strip_prefix("qmmx_") {
        let mut parts = rest.split('_');
        let format = QuantFormat::from_index(parts.next()?.parse().ok()?)?;
        let mode: usize = parts.nth(1)?.parse().ok()?;
        let shape = if mode == 2 { GroupShape::of_x(format) } else { GroupShape::of(false, format, 4, true) };
        return Some(shaped_smem(format, 4, true, shape, true));
    }
    let hx = name.starts_with("qmmh_");
    let mut parts = name.strip_prefix("qmmg_").or_else(|| name.strip_prefix("qmmh_"))?.split('_');
    let format = QuantFormat::from_index(parts.next()?.parse().ok()?)?;
    let nt8 = parts.next()?.parse().ok()?;
    let mode: usize = parts.next()?.parse().ok()?;
    Some(group_smem(format, nt8, hx, mode == 2))
}

/// Which products of 17–32 tokens over f16 activations take the qmmx
/// module's kernels (kernels/qmmx.cuh): the residual, SwiGLU and QKV ones
/// (modes 1–3); `CHATGLM_QMMX=0`: none (the qmma module's `qmmh_*_4_*`),
/// `=2`: the SwiGLU ones alone, for measurements. Read once.
fn x_modes() -> &'static [usize] {
    static MODES: std::sync::OnceLock<&'static [usize]> = std::sync::OnceLock::new();
    MODES.get_or_init(|| match std::env::var("CHATGLM_QMMX").as_deref() {
        Ok("0") => &[],
        Ok("2") => &[2],
        _ => &[1, 2, 3],
    })
}

/// The grouped kernel of a product of `format` weights over `nt8` token
/// tiles in `mode` (qmma_group.cu's numbering; `hx`: f16 activations).
pub(crate) fn grouped_kernel_name(format: QuantFormat, nt8: usize, mode: usize, hx: bool) -> String {
    let f = format as usize;
    if hx && nt8 == 4 && x_modes().contains(&mode) {
        format!("qmmx_{f}_4_{mode}")
    } else {
        format!("qmm{}_{f}_{nt8}_{mode}", if hx { 'h' } else { 'g' })
    }
}

impl Gpu {
    /// The grouped product `name` of `n` tokens (`nt8` token tiles) over
    /// quantized activations `(xq, xs)` (`hx`: f16 values at `xq`); `ctx`:
    /// the QKV epilogue's context (mode 3). `handed`: a SwiGLU product's
    /// output also as the next product's activations (quantize_x's form, at
    /// an address of [`crate::quant::step_codes_bytes`]; 0: none), or with
    /// `fold_norm` a residual product's as a norm fold; `normed_by`: the
    /// activations are a fold's ([`OneTokenCodes`]).
    ///
    /// # Safety
    /// As [`Gpu::qmma`].
    pub(crate) unsafe fn qmma_grouped(
        &self,
        w: TiledPtr,
        (xq, xs): (u64, u64),
        n: usize,
        nt8: usize,
        bias: u64,
        out: u64,
        mode: GemvMode,
        name: &str,
        hx: bool,
        ctx: [u64; 8],
        next: Option<(u64, usize)>,
        codes: OneTokenCodes,
    ) -> Result<(), CudaError> {
        let handed = codes.output;
        let fold = codes.fold_norm != 0 && handed != 0;
        if (fold || codes.normed_by.is_some()) && !hx {
            return Err(CudaError::invalid(name, "the norm fold takes f16 activations"));
        }
        let s = w.shape;
        let f = self.kernel(name)?;
        let half = s.rows / 2;
        let swiglu = mode == GemvMode::SwiGlu;
        let shape = if name.starts_with("qmmx_") && swiglu {
            GroupShape::of_x(s.format)
        } else {
            GroupShape::of(swiglu, s.format, nt8, hx)
        };
        let groups = if swiglu { (half / TILE_ROWS).div_ceil(shape.tiles / 2) } else { s.tiles.div_ceil(shape.tiles) };
        let chunks = groups * s.units.div_ceil(shape.cu);
        let smem = shaped_smem(s.format, nt8, hx, shape, name.starts_with("qmmx_")) as u32;
        let threads = shape.threads();
        let resident = self.blocks_per_sm(name, threads, smem) * self.info().multiprocessors;
        let blocks = grouped_blocks(chunks, groups, resident, group_split().for_tiles(nt8));
        let (ws, counters) = self.group_scratch(blocks * shape.ws_slot(), groups)?;
        let (wq, wsc, wm) = w.parts();
        let ints = [s.units, s.tiles, n, s.cols, s.rows, half];
        let ints: Vec<i32> = ints.iter().map(|&v| check_i32(name, "shape", v)).collect::<Result<_, _>>()?;
        let mut a = Args::default();
        a.arg(&wq).arg(&wsc).arg(&wm).arg(&ints[0]).arg(&ints[1]).arg(&xq).arg(&xs).arg(&ints[2]).arg(&ints[3]);
        a.arg(&bias).arg(&out).arg(&ints[4]).arg(&ints[5]);
        a.arg_struct(&ctx);
        let (next_w, next_bytes) = next.map_or((0u64, 0i64), |(p, b)| (p, b as i64));
        a.arg(&next_w).arg(&next_bytes).arg(&ws).arg(&counters);
        // The handed activations: codes (or f16 values) then scales, as
        // quantize_x lays them out for n tokens of the output's half rows;
        // q4_0's offset folded into the scales as quantize_x folds it.
        // A fold: the f16 values of the output's rows, then the sums of squares.
        let (hq, hs) = match (handed, fold) {
            (0, _) => (0, 0),
            (h, false) => (h, h + Gpu::quantized_x_bytes(n, half).0 as u64),
            (h, true) => (h, 0),
        };
        let hoff = if hx { 0 } else { s.format.code_offset() };
        a.arg(&hq).arg(&hs).arg(&hoff);
        let (fold_g, fold_ss) = if fold { (codes.fold_norm, fold_sums(handed, n, s.rows)) } else { (0, 0) };
        let (rms_ss, rms_eps) = codes.normed_by.unwrap_or((0, 0.0));
        a.arg(&fold_g).arg(&fold_ss).arg(&rms_ss).arg(&rms_eps);
        let cfg = LaunchConfig {
            grid_dim: (check_i32(name, "blocks", blocks)? as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: smem,
        };
        self.launch(f, a, name, cfg)
    }

    /// The workspace of a grouped product of `floats` floats of partial
    /// results a slot of each block over `groups` groups: (partials,
    /// counters) device addresses, allocated (zeroed counters) the first
    /// time a step needs more.
    fn group_scratch(&self, floats: usize, groups: usize) -> Result<(u64, u64), CudaError> {
        let mut held = self.group_scratch.lock().unwrap_or_else(|e| e.into_inner());
        if held.as_ref().is_none_or(|h| h.floats < floats || h.groups < groups) {
            // Room for a full wave of the device in either shape, so one
            // allocation serves every product.
            let wave = self.info().multiprocessors * GroupShape::largest_ws_slot();
            let floats = floats.max(held.as_ref().map_or(0, |h| h.floats)).max(wave);
            let groups = groups.max(held.as_ref().map_or(0, |h| h.groups)).max(1024);
            // Every slot empty (what the summing blocks of QMMG_SENTINEL_PARTS
            // leave behind).
            let mut partials = self.alloc::<f32>(floats, "grouped-product partial sums")?;
            self.upload(&vec![f32::from_bits(PART_EMPTY); floats], &mut partials, "grouped-product partial sums")?;
            let counters = self.alloc_zeros::<u32>(groups, "grouped-product counters")?;
            *held = Some(GroupScratch { partials, counters, floats, groups });
        }
        let h = held.as_ref().expect("allocated above");
        Ok((device_ptr(&h.partials), device_ptr(&h.counters)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defines_are_read_as_the_compiler_reads_them() {
        let read = |d: &str, name: &str| {
            crate::compile::define_items(d).find_map(|v| v.strip_prefix(&format!("{name}="))?.parse::<usize>().ok())
        };
        assert_eq!(read("QMMG_CU=4,QMMG_KW=1", "QMMG_KW"), Some(1));
        assert_eq!(read("A=1 QMMG_CU=4", "QMMG_CU"), Some(4));
        assert_eq!(read("XQMMG_CU=4", "QMMG_CU"), None);
    }

    #[test]
    fn wide_swiglu_groups_take_twice_the_rows_on_the_same_threads() {
        let (narrow, wide) = GroupShape::from_defines(8, 2, 1, 8, 8, false);
        let wide = wide.expect("on");
        assert_eq!(narrow, GroupShape { tiles: 8, cu: 8, kw: 2, xt: 0 });
        assert_eq!(wide, GroupShape { tiles: 16, cu: 8, kw: 1, xt: 0 });
        assert_eq!(narrow.threads(), wide.threads());
        assert_eq!(wide.ws_slot(), 2 * narrow.ws_slot());
        // Off: the SwiGLU products keep the others' shape.
        assert_eq!(GroupShape::from_defines(8, 2, 0, 8, 8, false), (narrow, None));
        // The wide q4_0 stage at 32 f16 tokens: 64 KB of weights, 8 KB of
        // scales, 32 tokens × (16 blocks × 64 + 64) bytes; two in 220 KiB.
        let q4 = wide.fitted(QuantFormat::Q4, 4, true);
        assert_eq!(q4, wide);
        assert_eq!(shaped_smem(QuantFormat::Q4, 4, true, q4, false), 2 * (65536 + 8192 + 32 * 1088));
        // q4_1's offsets, or 64 tokens, leave room only for chunks of 4 (three
        // stages of them for q4_1).
        let q4_1 = wide.fitted(QuantFormat::Q4Min, 4, true);
        assert_eq!(q4_1, GroupShape { cu: 4, ..wide });
        assert_eq!(shaped_smem(QuantFormat::Q4Min, 4, true, q4_1, false), 3 * (32768 + 2 * 4096 + 32 * 576));
        assert_eq!(wide.fitted(QuantFormat::Q4, 8, true).cu, 4);
        assert_eq!(wide.fitted(QuantFormat::Q8, 8, true).cu, 8);
        for format in [QuantFormat::Q4, QuantFormat::Q4Min, QuantFormat::Q8, QuantFormat::Q8Min] {
            for nt8 in [2, 4, 8] {
                for hx in [false, true] {
                    let shape = wide.fitted(format, nt8, hx);
                    assert!(2 * stage_bytes(format, nt8, hx, shape) <= STAGES_SMEM, "{format:?} {nt8} {hx}");
                }
            }
        }
    }

    #[test]
    fn an_odd_count_of_pairs_is_wide_over_f16_activations_only() {
        let (narrow, wide) = GroupShape::from_defines(8, 2, 1, 8, 7, false);
        let wide = wide.expect("on");
        assert_eq!(wide, GroupShape { tiles: 14, cu: 8, kw: 1, xt: 0 });
        assert!(wide.wide());
        assert_eq!(wide.threads(), 448);
        let pick = |swiglu, hx| GroupShape::pick(narrow, Some(wide), 7, false, swiglu, QuantFormat::Q4, 4, hx);
        assert_eq!(pick(true, true), wide);
        // A q8_0 hand-off block of 32 outputs would straddle two groups of 112.
        assert_eq!(pick(true, false), narrow);
        assert_eq!(pick(false, true), narrow);
        // Eight pairs keep the wide groups either way.
        let (_, eight) = GroupShape::from_defines(8, 2, 1, 8, 8, false);
        assert_eq!(GroupShape::pick(narrow, eight, 8, false, true, QuantFormat::Q4, 4, false), eight.expect("on"));
        // Seven pairs at 4 token tiles over f16 activations only.
        let eight = eight.expect("on");
        for (nt8, hx, tiles) in [(4, true, 14), (4, false, 16), (2, true, 16), (8, true, 16)] {
            assert_eq!(GroupShape::pick(narrow, Some(eight), 7, false, true, QuantFormat::Q4, nt8, hx).tiles, tiles);
        }
        // QMMG_WIDE_XT: the last two tiles of 7 pairs on two warps each, 16
        // warps as 8 pairs have; at 4 token tiles over f16 activations alone
        // when only QMMG_WIDE_PAIRS_4 is 7.
        let (_, wide_xt) = GroupShape::from_defines(8, 2, 1, 8, 7, true);
        let wide_xt = wide_xt.expect("on");
        assert_eq!((wide_xt.xt, wide_xt.threads()), (2, 512));
        assert_eq!(GroupShape::from_defines(8, 2, 1, 8, 8, true).1.expect("on").xt, 0);
        for (nt8, hx, xt) in [(4, true, 2), (4, false, 0), (2, true, 0), (8, true, 0)] {
            let shape = GroupShape::pick(narrow, Some(eight), 7, true, true, QuantFormat::Q4, nt8, hx);
            assert_eq!(shape.xt, xt, "{nt8} {hx}");
            assert_eq!(shape.threads(), 512);
        }
        // ChatGLM2-6B's h→4h (856 tile pairs): 123 groups of 7 where 8 make 107.
        assert_eq!(856usize.div_ceil(wide.tiles / 2), 123);
        for format in [QuantFormat::Q4, QuantFormat::Q4Min, QuantFormat::Q8, QuantFormat::Q8Min] {
            for nt8 in [2, 4, 8] {
                let shape = wide.fitted(format, nt8, true);
                assert!(2 * stage_bytes(format, nt8, true, shape) <= STAGES_SMEM, "{format:?} {nt8}");
                assert!(
                    shaped_smem(format, nt8, true, shape, false) + nt8 * 8 * 20 + 16 <= 227 << 10,
                    "{format:?} {nt8}"
                );
            }
        }
    }

    #[test]
    fn a_split_setting_keeps_runs_inside_groups() {
        use GroupSplit::*;
        // QKV at 32 tokens: 36 groups of 8 chunks on 132 resident blocks.
        assert_eq!(grouped_blocks(288, 36, 132, Wave), 132);
        assert_eq!(grouped_blocks(288, 36, 132, Aligned), 132); // 108 is under 15/16 of the wave
        assert_eq!(grouped_blocks(288, 36, 132, PerGroup(1)), 36);
        assert_eq!(grouped_blocks(288, 36, 132, PerGroup(2)), 72);
        assert_eq!(grouped_blocks(288, 36, 132, PerGroup(4)), 132); // 144 would not fit a wave
        assert_eq!(grouped_blocks(288, 36, 132, Auto), 108);
        // Dense and 4h→h: 32 groups of 8 or 27 chunks.
        assert_eq!(grouped_blocks(256, 32, 132, Auto), 128);
        assert_eq!(grouped_blocks(864, 32, 132, PerGroup(4)), 128);
        assert_eq!(grouped_blocks(256, 32, 132, Aligned), 128);
        assert_eq!(grouped_blocks(864, 32, 132, Aligned), 128);
        assert_eq!(grouped_blocks(256, 32, 132, Wave), 132);
        // h→4h: more groups than blocks keep the wave.
        assert_eq!(grouped_blocks(1712, 214, 132, Auto), 132);
        assert_eq!(grouped_blocks(1712, 214, 132, Aligned), 132);
        // The default by tokens: 25–64 tokens as Auto, fewer as Aligned.
        assert_eq!(ByTokens.for_tiles(4), Auto);
        assert_eq!(ByTokens.for_tiles(8), Auto);
        assert_eq!(ByTokens.for_tiles(2), Aligned);
        assert_eq!(ByTokens.for_tiles(3), Aligned);
        assert_eq!(Wave.for_tiles(4), Wave);
        assert_eq!(grouped_blocks(856, 107, 132, ByTokens.for_tiles(4)), 107); // wide h→4h: whole groups
        assert_eq!(grouped_blocks(856, 107, 132, ByTokens.for_tiles(2)), 132);
        // Fewer chunks than blocks.
        assert_eq!(grouped_blocks(3, 1, 132, PerGroup(4)), 3);
        assert_eq!(grouped_blocks(0, 0, 132, Auto), 1);
    }

    #[test]
    fn grouped_products_fit_a_multiprocessor() {
        // 227 KiB of shared memory a block on sm_90 (sm_80: 163 KiB), less
        // the kernel's static part (16-byte token slots, the norm fold's
        // 1/rms a token, a flag).
        for format in [QuantFormat::Q4, QuantFormat::Q4Min, QuantFormat::Q8, QuantFormat::Q8Min] {
            for nt8 in [2, 4, 8] {
                for (hx, kind) in [(false, 'g'), (true, 'h')] {
                    let (narrow, wide) = GroupShape::from_defines(8, 2, 1, 8, 8, false);
                    for (mode, shape) in [(0, narrow), (2, wide.expect("on").fitted(format, nt8, hx))] {
                        let smem = shaped_smem(format, nt8, hx, shape, false);
                        assert!(smem + nt8 * 8 * (16 + 4) + 16 <= 227 << 10, "{format:?} nt8={nt8} hx={hx}: {smem}");
                        let name = format!("qmm{kind}_{}_{nt8}_{mode}", format as usize);
                        assert_eq!(group_smem_of(&name), Some(group_smem(format, nt8, hx, mode == 2)));
                    }
                }
            }
        }
        assert_eq!(group_smem_of("qmma_0_2_0_0"), None);
        // The qmmx module's 7-pair groups on 16 warps, and its other products'
        // shape as the qmma module's.
        for format in [QuantFormat::Q4, QuantFormat::Q4Min, QuantFormat::Q8, QuantFormat::Q8Min] {
            let name = format!("qmmx_{}_4_2", format as usize);
            let smem = group_smem_of(&name).expect("a qmmx kernel");
            assert_eq!(smem, shaped_smem(format, 4, true, GroupShape::of_x(format), true));
            assert!(smem + 32 * (16 + 4) + 16 <= 227 << 10, "{name}: {smem}");
            for mode in [1, 3] {
                let f = format as usize;
                let narrow = GroupShape::of(false, format, 4, true);
                assert_eq!(
                    group_smem_of(&format!("qmmx_{f}_4_{mode}")),
                    Some(shaped_smem(format, 4, true, narrow, true))
                );
            }
        }
    }

    #[test]
    fn the_qmma_module_gives_shapes_with_room_a_fourth_stage() {
        // (No CHATGLM_NVRTC_DEFINES in tests.) 32 f16 tokens, 128-row groups:
        // a q8_0 stage is 32 KiB of weights, 2 of scales and 32 × 576 bytes
        // of activations — four fit in 220 KiB; a q4_0 stage (32 × 1,088
        // bytes of activations, 4 KiB of scales) three.
        let narrow = GroupShape::of(false, QuantFormat::Q8, 4, true);
        let q8 = 32768 + 2048 + 32 * 576;
        assert_eq!(shaped_smem(QuantFormat::Q8, 4, true, narrow, false), 4 * q8);
        assert_eq!(shaped_smem(QuantFormat::Q8, 4, true, narrow, true), 3 * q8, "the qmmx module keeps three");
        let q4 = 32768 + 4096 + 32 * 1088;
        assert_eq!(shaped_smem(QuantFormat::Q4, 4, true, narrow, false), 3 * q4);
        assert_eq!(group_smem_of("qmmh_2_4_0"), Some(4 * q8));
        assert_eq!(group_smem_of("qmmx_2_4_1"), Some(3 * q8));
        // The 9–16-token f16 products keep three (a q8_0 stage at 16 tokens:
        // 16 × 576 bytes of activations), the q8_0-code ones their four.
        let q8_16 = 32768 + 2048 + 16 * 576;
        assert_eq!(group_smem_of("qmmh_2_2_0"), Some(3 * q8_16));
        let g16 = stage_bytes(QuantFormat::Q8, 2, false, GroupShape::of(false, QuantFormat::Q8, 2, false));
        assert_eq!(group_smem_of("qmmg_2_2_0"), Some(4 * g16));
    }

    #[test]
    fn the_qmmx_module_takes_the_32_token_f16_swiglu_products() {
        // (CHATGLM_QMMX unset in tests: on.)
        assert_eq!(grouped_kernel_name(QuantFormat::Q4, 4, 2, true), "qmmx_0_4_2");
        assert_eq!(grouped_kernel_name(QuantFormat::Q8, 4, 2, true), "qmmx_2_4_2");
        assert_eq!(grouped_kernel_name(QuantFormat::Q4, 4, 2, false), "qmmg_0_4_2");
        assert_eq!(grouped_kernel_name(QuantFormat::Q4, 8, 2, true), "qmmh_0_8_2");
        assert_eq!(grouped_kernel_name(QuantFormat::Q4, 4, 1, true), "qmmx_0_4_1");
        assert_eq!(grouped_kernel_name(QuantFormat::Q4, 4, 3, true), "qmmx_0_4_3");
        // The output layer (mode 0) keeps the qmma module's.
        assert_eq!(grouped_kernel_name(QuantFormat::Q8, 4, 0, true), "qmmh_2_4_0");
        let x = GroupShape::of_x(QuantFormat::Q4);
        assert_eq!(x, GroupShape { tiles: 14, cu: 8, kw: 1, xt: 2 });
        assert_eq!(x.threads(), 512);
        // Fourteen tiles leave room for two stages of 8-unit chunks in every format.
        for format in [QuantFormat::Q4, QuantFormat::Q4Min, QuantFormat::Q8, QuantFormat::Q8Min] {
            let x = GroupShape::of_x(format);
            assert_eq!(x.cu, 8, "{format:?}");
            assert!(2 * stage_bytes(format, 4, true, x) <= STAGES_SMEM, "{format:?}");
        }
    }
}
