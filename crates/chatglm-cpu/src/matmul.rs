//! `y = x · Wᵀ` for a batch of activation rows.
//!
//! Work is split by output rows over the rayon pool: each task owns a block of
//! weight rows (kept hot in L2) and sweeps every activation row against it, so
//! each weight byte is read from memory once per call whatever the batch size.

use crate::dot::{BlockQ8_0, QK8_0};
use crate::features::Kernels;
use crate::matrix::{Matrix, MatrixData};
use rayon::prelude::*;

/// Reusable buffers for [`matmul`]; grown on demand, never shrunk, so the
/// steady-state decode loop does not allocate.
#[derive(Default)]
pub struct MatmulScratch {
    q8: Vec<BlockQ8_0>,
}

/// Output rows handed to one task. Small enough to balance load across
/// threads, large enough to amortise task overhead.
const ROWS_PER_TASK: usize = 16;

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (token, row) cells of the output.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

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
    let q8 = &scratch.q8;
    let out = OutPtr(y.as_mut_ptr());
    let n_tasks = rows.div_ceil(ROWS_PER_TASK);
    (0..n_tasks).into_par_iter().for_each(|task| {
        let r0 = task * ROWS_PER_TASK;
        let r1 = (r0 + ROWS_PER_TASK).min(rows);
        let out = out;
        let write = |t: usize, r: usize, v: f32| {
            // SAFETY: t < n_tokens and r < rows; each (t, r) is written by exactly one task.
            unsafe { *out.0.add(t * rows + r) = v }
        };
        match &w.data {
            MatrixData::F32(s) => {
                let s = s.as_slice();
                for t in 0..n_tokens {
                    let xt = &x[t * cols..(t + 1) * cols];
                    for r in r0..r1 {
                        write(t, r, (kernels.dot_f32)(&s[r * cols..(r + 1) * cols], xt));
                    }
                }
            }
            MatrixData::F16(s) => {
                let s = s.as_slice();
                for t in 0..n_tokens {
                    let xt = &x[t * cols..(t + 1) * cols];
                    for r in r0..r1 {
                        write(t, r, (kernels.dot_f16)(&s[r * cols..(r + 1) * cols], xt));
                    }
                }
            }
            MatrixData::BF16(s) => {
                let s = s.as_slice();
                for t in 0..n_tokens {
                    let xt = &x[t * cols..(t + 1) * cols];
                    for r in r0..r1 {
                        write(t, r, (kernels.dot_bf16)(&s[r * cols..(r + 1) * cols], xt));
                    }
                }
            }
            MatrixData::Q8_0(s) => quantized_rows(s.as_slice(), kernels.dot_q8_0, q8, cols, n_tokens, r0..r1, &write),
            MatrixData::Q4_0(s) => quantized_rows(s.as_slice(), kernels.dot_q4_0, q8, cols, n_tokens, r0..r1, &write),
            MatrixData::Q4_1(s) => quantized_rows(s.as_slice(), kernels.dot_q4_1, q8, cols, n_tokens, r0..r1, &write),
            MatrixData::Q5_0(s) => quantized_rows(s.as_slice(), kernels.dot_q5_0, q8, cols, n_tokens, r0..r1, &write),
            MatrixData::Q5_1(s) => quantized_rows(s.as_slice(), kernels.dot_q5_1, q8, cols, n_tokens, r0..r1, &write),
        }
    });
}

/// One task's rows of a block-quantized matrix against q8_0 activations.
fn quantized_rows<B>(
    w: &[B],
    dot: fn(&[B], &[BlockQ8_0]) -> f32,
    q8: &[BlockQ8_0],
    cols: usize,
    n_tokens: usize,
    rows: std::ops::Range<usize>,
    write: &dyn Fn(usize, usize, f32),
) {
    let nb = cols / QK8_0;
    for t in 0..n_tokens {
        let xt = &q8[t * nb..(t + 1) * nb];
        for r in rows.clone() {
            write(t, r, dot(&w[r * nb..(r + 1) * nb], xt));
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
