//! `y = x · Wᵀ` for a batch of activation rows.
//!
//! Work is split by output rows over the rayon pool: each task owns a block of
//! weight rows (kept hot in L2) and sweeps every activation row against it, so
//! each weight byte is read from memory once per call whatever the batch size.

use crate::dot::{BlockQ8_0, QK8_0};
use crate::features::Kernels;
use crate::matrix::{Matrix, MatrixData};
use crate::packed::{padded_blocks, quad_q8_blocks, PackedKernels, PackedRows, Q8Quad};
use crate::tile::{TileKernels, TILE_ROWS};
use rayon::prelude::*;

/// Reusable buffers for [`matmul`]; grown on demand, never shrunk, so the
/// steady-state decode loop does not allocate.
#[derive(Default)]
pub struct MatmulScratch {
    q8: Vec<BlockQ8_0>,
    quads: Vec<Q8Quad>,
    /// The activations in f16, for the one-token f16 product (`dot_f16_h`).
    xh: Vec<half::f16>,
}

/// Output rows handed to one task. Small enough to balance load across
/// threads, large enough to amortise task overhead.
const ROWS_PER_TASK: usize = 16;

/// Bytes of activations one sweep over the weight rows reads: every task
/// re-reads all of them, so they must stay in the last-level cache (a
/// 512-token prompt of the 13,696-wide MLP input is 28 MB in f32; swept in
/// one piece, the AVX2 f16 product fell from ~170 to ~110 GFLOP/s).
const SWEEP_ACTIVATION_BYTES: usize = 4 << 20;

/// Tokens per sweep for rows of `cols` activations of `bytes_per_value`
/// (a multiple of 4, the widest register tile, and at least 4).
fn tokens_per_sweep(cols: usize, bytes_per_value: f64) -> usize {
    let per_token = (cols as f64 * bytes_per_value).max(1.0);
    (((SWEEP_ACTIVATION_BYTES as f64 / per_token) as usize) / 4 * 4).max(4)
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (token, row) cells of the output.
unsafe impl Send for OutPtr {}
// SAFETY: as for Send: the tasks write disjoint cells.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method (not a field access) so closures capture the whole `Send` wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The cells of the n_tokens × rows output a task writes, by (token, row):
/// a direct store (a `&dyn Fn` per output cost ~2% of a prefill in calls).
#[derive(Clone, Copy)]
struct Cells {
    out: OutPtr,
    rows: usize,
}

impl Cells {
    #[inline(always)]
    fn set(&self, t: usize, r: usize, v: f32) {
        // SAFETY: callers pass t < n_tokens and r < rows; each (t, r) is
        // written by exactly one task.
        unsafe { *self.out.get().add(t * self.rows + r) = v }
    }
}

/// Computes `y[t, r] = Σ_c x[t, c] · W[r, c]` for `n_tokens` rows of `x`.
///
/// `x` is `(n_tokens, w.cols)`, `y` is `(n_tokens, w.rows)`, both row-major.
pub fn matmul(kernels: &Kernels, w: &Matrix, x: &[f32], n_tokens: usize, y: &mut [f32], scratch: &mut MatmulScratch) {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(x.len(), n_tokens * cols, "matmul: x is not (n_tokens, cols)");
    assert_eq!(y.len(), n_tokens * rows, "matmul: y is not (n_tokens, rows)");
    if w.wants_q8_activations() {
        let blocks_per_row = cols / QK8_0;
        scratch.q8.resize(n_tokens * blocks_per_row, BlockQ8_0::default_zero());
        for (xr, qr) in x.chunks_exact(cols).zip(scratch.q8.chunks_exact_mut(blocks_per_row)) {
            (kernels.quantize_row_q8_0)(xr, qr);
        }
    }
    let quads_per_row = padded_blocks(cols) / 4;
    if let MatrixData::Q4_0Packed(_) | MatrixData::Q8_0Packed(_) = &w.data {
        let blocks_per_row = cols / QK8_0;
        scratch.quads.resize(n_tokens * quads_per_row, Q8Quad::default());
        for (qr, pr) in scratch.q8.chunks_exact(blocks_per_row).zip(scratch.quads.chunks_exact_mut(quads_per_row)) {
            quad_q8_blocks(qr, pr);
        }
    }
    let dot_h = match (&w.data, kernels.dot_f16_h) {
        (MatrixData::F16(_), Some(d)) if n_tokens == 1 => {
            scratch.xh.resize(x.len(), half::f16::ZERO);
            half::slice::HalfFloatSliceExt::convert_from_f32_slice(&mut scratch.xh[..], x);
            Some(d)
        }
        _ => None,
    };
    let xh = &scratch.xh;
    let q8 = &scratch.q8;
    let quads = &scratch.quads;
    // The weights are read once per sweep; the activations once per task.
    // (q4_0 packed: the quads' real size, x8 included — session 13 measured
    // +12–14% prefill with it against +4% on the q8_0 block size; q8_0
    // packed keeps the block size, which measured faster for it.)
    let bytes_per_value = match &w.data {
        MatrixData::Q4_0Packed(_) => std::mem::size_of::<Q8Quad>() as f64 / 128.0,
        _ if w.wants_q8_activations() => 34.0 / 32.0,
        _ => 4.0,
    };
    let sweep = tokens_per_sweep(cols, bytes_per_value);
    let blocks_per_row = cols / QK8_0;
    let mut t0 = 0;
    while t0 < n_tokens {
        let nt = sweep.min(n_tokens - t0);
        let chunk = Activations {
            x: &x[t0 * cols..(t0 + nt) * cols],
            xh,
            q8: q8.get(t0 * blocks_per_row..(t0 + nt) * blocks_per_row).unwrap_or(&[]),
            quads: quads.get(t0 * quads_per_row..(t0 + nt) * quads_per_row).unwrap_or(&[]),
            one_token_f16: dot_h,
        };
        // SAFETY: y holds n_tokens × rows; this sweep writes tokens t0..t0+nt.
        let out = OutPtr(unsafe { y.as_mut_ptr().add(t0 * rows) });
        sweep_rows(kernels, w, &chunk, nt, quads_per_row, out);
        t0 += nt;
    }
}

/// A one-token f16 product on f16 activations.
type DotF16H = fn(&[half::f16], &[half::f16]) -> f32;

/// One sweep's activations in each form the formats read.
struct Activations<'a> {
    x: &'a [f32],
    xh: &'a [half::f16],
    q8: &'a [BlockQ8_0],
    quads: &'a [Q8Quad],
    one_token_f16: Option<DotF16H>,
}

/// Every weight row against the `n_tokens` activation rows of `a`, split
/// by output rows over the rayon pool; results go to `out` (n_tokens × rows).
fn sweep_rows(kernels: &Kernels, w: &Matrix, a: &Activations<'_>, n_tokens: usize, quads_per_row: usize, out: OutPtr) {
    let (rows, cols) = (w.rows, w.cols);
    let (x, xh, q8, quads) = (a.x, a.xh, a.q8, a.quads);
    let n_tasks = rows.div_ceil(ROWS_PER_TASK);
    (0..n_tasks).into_par_iter().for_each(|task| {
        let r0 = task * ROWS_PER_TASK;
        let r1 = (r0 + ROWS_PER_TASK).min(rows);
        let write = Cells { out, rows };
        let rows = r0..r1;
        match &w.data {
            MatrixData::F32(s) => {
                tiled(s.as_slice(), x, cols, &kernels.tiles_f32, kernels.dot_f32, n_tokens, rows, &write)
            }
            MatrixData::F16(s) => match a.one_token_f16 {
                Some(dot) => {
                    let w = s.as_slice();
                    for r in rows {
                        write.set(0, r, dot(&w[r * cols..(r + 1) * cols], &xh[..cols]));
                    }
                }
                None => tiled(s.as_slice(), x, cols, &kernels.tiles_f16, kernels.dot_f16, n_tokens, rows, &write),
            },
            MatrixData::BF16(s) => {
                tiled(s.as_slice(), x, cols, &kernels.tiles_bf16, kernels.dot_bf16, n_tokens, rows, &write)
            }
            MatrixData::Q8_0(s) => {
                tiled(s.as_slice(), q8, cols / QK8_0, &kernels.tiles_q8_0, kernels.dot_q8_0, n_tokens, rows, &write)
            }
            MatrixData::Q4_0(s) => {
                tiled(s.as_slice(), q8, cols / QK8_0, &kernels.tiles_q4_0, kernels.dot_q4_0, n_tokens, rows, &write)
            }
            MatrixData::Q4_0Packed(p) => {
                packed_rows(p, &kernels.packed_q4_0, quads, quads_per_row, n_tokens, rows, &write)
            }
            MatrixData::Q8_0Packed(p) => {
                let kp = if p.signed { &kernels.packed_q8_0_signed } else { &kernels.packed_q8_0 };
                packed_rows(p, kp, quads, quads_per_row, n_tokens, rows, &write)
            }
            MatrixData::Q4_1(s) => quantized_rows(s.as_slice(), kernels.dot_q4_1, q8, cols, n_tokens, rows, &write),
            MatrixData::Q5_0(s) => quantized_rows(s.as_slice(), kernels.dot_q5_0, q8, cols, n_tokens, rows, &write),
            MatrixData::Q5_1(s) => quantized_rows(s.as_slice(), kernels.dot_q5_1, q8, cols, n_tokens, rows, &write),
        }
    });
}

/// `CHATGLM_CPU_TILE3=0` keeps prompts off the 4×3 tiles (for measurements;
/// the results are the same bits).
fn tile3_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("CHATGLM_CPU_TILE3").map_or(true, |v| v != "0"))
}

/// One task's rows through 4-row tiles (2 tokens at a time, then 1); rows
/// that do not fill a tile use single dot products. `n` is the row length in
/// units of `W` (elements or blocks).
#[allow(clippy::too_many_arguments)]
fn tiled<W, X>(
    w: &[W],
    x: &[X],
    n: usize,
    tiles: &TileKernels<W, X>,
    dot: fn(&[W], &[X]) -> f32,
    n_tokens: usize,
    rows: std::ops::Range<usize>,
    write: &Cells,
) {
    if n_tokens == 1 {
        // Mat-vec: one row at a time streams memory in order (with software
        // prefetch), which measured faster than interleaving the 4 rows of a
        // tile, also for rows whose activations spill from L1 to L2.
        for r in rows {
            write.set(0, r, dot(&w[r * n..(r + 1) * n], &x[..n]));
        }
        return;
    }
    let mut out = [0.0f32; TILE_ROWS * 4];
    let full_tiles_end = rows.start + (rows.len() / TILE_ROWS) * TILE_ROWS;
    let mut t = 0;
    while t < n_tokens {
        let nt = match (n_tokens - t, tiles.t4, tiles.t3.filter(|_| tile3_enabled())) {
            (4.., Some(_), _) => 4,
            (3.., None, Some(_)) => 3,
            (2.., _, _) => 2,
            _ => 1,
        };
        let xt = &x[t * n..(t + nt) * n];
        let mut r = rows.start;
        while r < full_tiles_end {
            let wr = &w[r * n..(r + TILE_ROWS) * n];
            match (nt, tiles.t4, tiles.t3) {
                (4, Some(t4), _) => t4(wr, xt, n, &mut out),
                (3, _, Some(t3)) => t3(wr, xt, n, &mut out),
                (2, _, _) => (tiles.t2)(wr, xt, n, &mut out),
                _ => (tiles.t1)(wr, xt, n, &mut out),
            }
            for i in 0..TILE_ROWS {
                for j in 0..nt {
                    write.set(t + j, r + i, out[i * nt + j]);
                }
            }
            r += TILE_ROWS;
        }
        for r in full_tiles_end..rows.end {
            for j in 0..nt {
                write.set(t + j, r, dot(&w[r * n..(r + 1) * n], &xt[j * n..(j + 1) * n]));
            }
        }
        t += nt;
    }
}

/// One task's rows of a packed matrix: 4×2 tiles for batches, one row at a
/// time (in memory order) for a single token.
fn packed_rows<P: PackedRows>(
    w: &P,
    kernels: &PackedKernels<P::Q>,
    x: &[Q8Quad],
    np: usize,
    n_tokens: usize,
    rows: std::ops::Range<usize>,
    write: &Cells,
) {
    let row = |r: usize| w.rows_data(r, 1);
    if n_tokens == 1 {
        for r in rows {
            let (s, q) = row(r);
            write.set(0, r, (kernels.dot)(s, q, &x[..np]));
        }
        return;
    }
    let full_tiles_end = rows.start + (rows.len() / TILE_ROWS) * TILE_ROWS;
    let mut out = [0.0f32; TILE_ROWS * 2];
    let mut t = 0;
    while t + 2 <= n_tokens {
        let xt = &x[t * np..(t + 2) * np];
        for r in (rows.start..full_tiles_end).step_by(TILE_ROWS) {
            let (s, q) = w.rows_data(r, TILE_ROWS);
            (kernels.t2)(s, q, xt, np, &mut out);
            for i in 0..TILE_ROWS {
                write.set(t, r + i, out[i * 2]);
                write.set(t + 1, r + i, out[i * 2 + 1]);
            }
        }
        for r in full_tiles_end..rows.end {
            let (s, q) = row(r);
            write.set(t, r, (kernels.dot)(s, q, &xt[..np]));
            write.set(t + 1, r, (kernels.dot)(s, q, &xt[np..]));
        }
        t += 2;
    }
    if t < n_tokens {
        for r in rows {
            let (s, q) = row(r);
            write.set(t, r, (kernels.dot)(s, q, &x[t * np..(t + 1) * np]));
        }
    }
}

/// One task's rows of a block-quantized matrix against q8_0 activations.
fn quantized_rows<B>(
    w: &[B],
    dot: fn(&[B], &[BlockQ8_0]) -> f32,
    q8: &[BlockQ8_0],
    cols: usize,
    n_tokens: usize,
    rows: std::ops::Range<usize>,
    write: &Cells,
) {
    let nb = cols / QK8_0;
    for t in 0..n_tokens {
        let xt = &q8[t * nb..(t + 1) * nb];
        for r in rows.clone() {
            write.set(t, r, dot(&w[r * nb..(r + 1) * nb], xt));
        }
    }
}

trait ZeroBlock {
    fn default_zero() -> Self;
}

impl ZeroBlock for BlockQ8_0 {
    fn default_zero() -> Self {
        bytemuck::Zeroable::zeroed()
    }
}
