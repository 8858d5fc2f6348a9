//! The greedy choice folded into the output layer's product (the qmmo
//! module, kernels/qmmo.cuh): for a batched decode step of 17–32 tokens over
//! f16 activations, the block writing each group of the logits' rows also
//! writes each token's best (value, row, non-finite seen) of those rows, and
//! one small launch merges them — instead of an argmax that reads the whole
//! logits back (8.3 MB at 32 ChatGLM2 tokens, ~9.5 µs of a 2.66 ms step on
//! the H200, bench/RESULTS.md run 341). The choices are the same as
//! [`Gpu::argmax_rows`]'s over the same logits: the same rules, merged in an
//! order that cannot change them.

use crate::device::Args;
use crate::ops::check_i32;
use crate::quant::{token_tiles, ActivationForm, QuantFormat, TileShape, QMMA_MAX_TOKENS};
use crate::quant_group::GroupShape;
use crate::{CudaError, Gpu, HostBuffer};
use cudarc::driver::{CudaSlice, LaunchConfig};

/// i32 words of one (token, group) best: value bits, row, non-finite seen, padding.
pub const GREEDY_BEST_INTS: usize = 4;

/// Token tiles of the products that fold the choice in (17–32 tokens).
const FOLD_TILES: usize = 4;

/// The most tokens of a product that folds the choice in.
pub const GREEDY_FOLD_MAX_TOKENS: usize = 8 * FOLD_TILES;

/// The merge kernel's block.
const MERGE_THREADS: u32 = 256;

/// The output product of `n` tokens over `format` weights, its groups and
/// the i32 words of its bests: [`Gpu::qmma`] with `OneTokenCodes::greedy_bests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GreedyBests {
    /// Groups of rows, each token's best of each written.
    pub groups: usize,
    /// Tokens.
    pub rows: usize,
}

impl GreedyBests {
    /// The bests of `rows` tokens of a plain product of `shape` (the groups
    /// of the qmmo products' shape, [`fold_shape`]).
    pub fn of(shape: TileShape, rows: usize) -> Self {
        let tiles = fold_shape(shape.format).tiles;
        Self { groups: shape.tiles.div_ceil(tiles), rows }
    }

    /// i32 words of the bests buffer.
    pub fn ints(&self) -> usize {
        self.groups * self.rows * GREEDY_BEST_INTS
    }
}

impl Gpu {
    /// Whether a plain product of `n` tokens over `format` weights in `form`
    /// can fold the greedy choice in (`qmmo_{format}_4_0`): 17–32 tokens of
    /// f16 activations through the grouped products.
    pub fn greedy_fold_supported(&self, n: usize, format: QuantFormat, form: ActivationForm) -> bool {
        form == ActivationForm::F16
            && n <= QMMA_MAX_TOKENS
            && token_tiles(n) == FOLD_TILES
            && self.f16_activations_supported(n, format)
            && self.has_kernel(&fold_kernel(format))
            && self.has_kernel(MERGE)
    }

    /// `out[t]` = the greedy choice of token `t` from the bests an output
    /// product wrote (`bests`: [`GreedyBests::ints`] words of `shape`), by
    /// [`Gpu::argmax_rows`]'s rules over `cols` columns; with `host`, also
    /// into that page-locked buffer (read with [`Gpu::take_download`]).
    ///
    /// # Safety
    /// `bests` written by the product just before (same stream) for
    /// `shape.rows` tokens; `out`: that many i32.
    pub unsafe fn greedy_merge(
        &self,
        bests: &CudaSlice<i32>,
        shape: GreedyBests,
        cols: usize,
        out: u64,
        mut host: Option<&mut HostBuffer<i32>>,
    ) -> Result<(), CudaError> {
        if shape.rows == 0 {
            if let Some(h) = host {
                h.wait_for_device()?;
                h.written_by_device(self, 0)?;
            }
            return Ok(());
        }
        if bests.len() < shape.ints() {
            return Err(CudaError::invalid(MERGE, format!("{} ints of bests for {shape:?}", bests.len())));
        }
        let f = self.kernel(MERGE)?;
        let groups = check_i32(MERGE, "groups", shape.groups)?;
        let cols = check_i32(MERGE, "cols", cols)?;
        let rows = check_i32(MERGE, "rows", shape.rows)?;
        let host_ptr = self.readout_host(host.as_deref_mut(), shape.rows, MERGE)?;
        let bests_ptr = crate::device_ptr(bests);
        let mut a = Args::default();
        a.arg(&bests_ptr).arg(&groups).arg(&cols).arg(&out).arg(&host_ptr);
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (MERGE_THREADS, 1, 1), shared_mem_bytes: 0 };
        self.launch(f, a, MERGE, cfg)?;
        if let Some(h) = host {
            h.written_by_device(self, shape.rows)?;
        }
        Ok(())
    }
}

const MERGE: &str = "qmmo_greedy_merge";

/// The output product that writes the bests, for `format` weights.
pub(crate) fn fold_kernel(format: QuantFormat) -> String {
    format!("qmmo_{}_4_0", format as usize)
}

/// The group shape of the qmmo products of `format` weights: the plain
/// products' (narrow) groups, or under `QMMO_WIDE=1` (kernels/qmmo.cuh, a
/// measurement define) the SwiGLU products' wide ones.
pub(crate) fn fold_shape(format: QuantFormat) -> GroupShape {
    static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let wide = *WIDE.get_or_init(|| crate::quant_group::define("QMMO_WIDE").is_some_and(|v| v != 0));
    GroupShape::of(wide, format, FOLD_TILES, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bests_follow_the_plain_products_groups() {
        // ChatGLM2-6B's output layer: 65,024 rows in 4,064 tiles of 16.
        let shape = TileShape::new(QuantFormat::Q8, 65_024, 4_096).expect("a tiled shape");
        let b = GreedyBests::of(shape, 32);
        let tiles = GroupShape::of(false, QuantFormat::Q8, 4, true).tiles;
        assert_eq!(b.groups, 4_064usize.div_ceil(tiles));
        assert_eq!(b.ints(), b.groups * 32 * 4);
        // A partial last group still counts.
        let odd = TileShape::new(QuantFormat::Q4, 16 * (tiles + 1), 64).expect("a tiled shape");
        assert_eq!(GreedyBests::of(odd, 17).groups, 2);
    }

    /// The kernels' merge rule (kernels/argmax.cuh's argmax_merge).
    fn merge(a: (f32, i32), b: (f32, i32)) -> (f32, i32) {
        if b.0 > a.0 || (b.0 == a.0 && b.1 < a.1) {
            b
        } else {
            a
        }
    }

    /// The choice as the fold makes it, lane by lane: each group's 32 lanes
    /// scan their rows in order (strict >), merge in butterfly order; the
    /// merge kernel's threads take the groups strided, then merge in pairs.
    fn folded_choice(row: &[f32], group_rows: usize) -> i32 {
        let mut bests = Vec::new();
        for g0 in (0..row.len()).step_by(group_rows) {
            let rows = &row[g0..(g0 + group_rows).min(row.len())];
            let mut lanes: Vec<((f32, i32), bool)> = (0..32)
                .map(|lane| {
                    let (mut best, mut bad) = ((f32::NEG_INFINITY, i32::MAX), false);
                    for (r, &v) in rows.iter().enumerate().skip(lane).step_by(32) {
                        bad |= !v.is_finite();
                        if v > best.0 {
                            best = (v, (g0 + r) as i32);
                        }
                    }
                    (best, bad)
                })
                .collect();
            for o in [16, 8, 4, 2, 1] {
                let before = lanes.clone();
                for (l, lane) in lanes.iter_mut().enumerate() {
                    lane.0 = merge(before[l].0, before[l ^ o].0);
                    lane.1 |= before[l ^ o].1;
                }
            }
            bests.push(lanes[0]);
        }
        let threads = 256;
        let mut partial: Vec<((f32, i32), bool)> = vec![((f32::NEG_INFINITY, i32::MAX), false); threads];
        for (g, b) in bests.iter().enumerate() {
            let t = &mut partial[g % threads];
            *t = (merge(t.0, b.0), t.1 | b.1);
        }
        let (best, bad) = partial.into_iter().reduce(|a, b| (merge(a.0, b.0), a.1 | b.1)).expect("threads");
        if bad {
            if row.len() > 5 {
                5
            } else {
                0
            }
        } else {
            best.1
        }
    }

    /// The host's greedy rule (chatglm_model::greedy_token).
    fn host_choice(row: &[f32]) -> i32 {
        if row.iter().any(|v| !v.is_finite()) {
            return if row.len() > 5 { 5 } else { 0 };
        }
        let mut best = 0;
        for (i, v) in row.iter().enumerate() {
            if *v > row[best] {
                best = i;
            }
        }
        best as i32
    }

    #[test]
    fn merged_group_bests_make_the_hosts_choice() {
        // Rows of awkward lengths with ties (values from a few levels), zeros
        // of both signs, and now and then a NaN or an infinity: the fold's
        // order of merging chooses what the host chooses.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..400 {
            let cols = [1, 5, 6, 31, 127, 128, 129, 1000, 4099][case % 9];
            let mut row: Vec<f32> =
                (0..cols).map(|_| [(next() % 5) as f32 - 2.0, -0.0][(next() % 7 == 0) as usize]).collect();
            if case % 5 == 0 {
                let i = (next() % cols as u64) as usize;
                row[i] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][case / 5 % 3];
            }
            for group_rows in [128, 256] {
                assert_eq!(folded_choice(&row, group_rows), host_choice(&row), "case {case}: {cols} columns");
            }
        }
    }

    #[test]
    fn the_kernels_are_the_qmmo_modules() {
        assert_eq!(fold_kernel(QuantFormat::Q8), "qmmo_2_4_0");
        let src = include_str!("kernels/qmmo.cu");
        assert!(src.contains(&format!("__launch_bounds__({MERGE_THREADS}) {MERGE}(")));
        let group = include_str!("kernels/qmma_group.cu");
        assert!(group.contains("make_int4(__float_as_int(bv), bi, bad, 0)"), "4 ints a best");
    }
}
