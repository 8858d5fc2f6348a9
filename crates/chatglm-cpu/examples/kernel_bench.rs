//! Mat-vec / mat-mat throughput of each weight format: the tiled `matmul`
//! against one dot product per row (the pre-tiling baseline), interleaved in
//! the same run so machine noise hits both alike.
//!
//! `cargo run --release -p chatglm-cpu --example kernel_bench -- [threads] [tokens] [reps]`

use chatglm_cpu::dot::BlockQ8_0;
use chatglm_cpu::matmul::{matmul, MatmulScratch};
use chatglm_cpu::{Kernels, Matrix, MatrixData, Storage};
use chatglm_weights::quant::quantize_row;
use half::f16;
use rayon::prelude::*;
use std::time::Instant;

fn dot_baseline(k: &Kernels, m: &Matrix, x: &[f32], n_tokens: usize, y: &mut [f32]) {
    let cols = m.cols;
    let nb = cols / 32;
    let mut q8 = vec![BlockQ8_0 { d: f16::ZERO, qs: [0; 32] }; n_tokens * nb];
    for (xr, qr) in x.chunks_exact(cols).zip(q8.chunks_exact_mut(nb)) {
        (k.quantize_row_q8_0)(xr, qr);
    }
    let rows = m.rows;
    let ys: Vec<(usize, f32)> = (0..rows * n_tokens)
        .into_par_iter()
        .map(|i| {
            let (r, t) = (i / n_tokens, i % n_tokens);
            let v = match &m.data {
                MatrixData::F16(s) => {
                    (k.dot_f16)(&s.as_slice()[r * cols..(r + 1) * cols], &x[t * cols..(t + 1) * cols])
                }
                MatrixData::Q8_0(s) => (k.dot_q8_0)(&s.as_slice()[r * nb..(r + 1) * nb], &q8[t * nb..(t + 1) * nb]),
                MatrixData::Q4_0(s) => (k.dot_q4_0)(&s.as_slice()[r * nb..(r + 1) * nb], &q8[t * nb..(t + 1) * nb]),
                _ => 0.0,
            };
            (t * rows + r, v)
        })
        .collect();
    for (i, v) in ys {
        y[i] = v;
    }
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numeric arguments")).collect();
    let threads = args.first().copied().unwrap_or(2);
    let n_tokens = args.get(1).copied().unwrap_or(1);
    let reps = args.get(2).copied().unwrap_or(5);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().expect("thread pool");
    if std::env::var_os("RAW").is_some() {
        raw_compare();
        return;
    }
    let k = Kernels::detect();
    // Default: ChatGLM2-6B dense_h_to_4h; MATRIX=ROWSxCOLS picks another shape.
    let (rows, cols) = std::env::var("MATRIX")
        .ok()
        .and_then(|m| m.split_once('x').and_then(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?))))
        .unwrap_or((27392, 4096));
    let w: Vec<f32> = (0..rows * cols).map(|i| ((i as u64 * 2654435761 % 1000) as f32 / 1000.0 - 0.5) * 0.05).collect();
    let x: Vec<f32> = (0..n_tokens * cols).map(|i| (i * 7919 % 1000) as f32 / 1000.0 - 0.5).collect();
    println!("kernels {}, {threads} threads, {rows}x{cols}, {n_tokens} tokens, best of {reps}", k.name);
    let formats = std::env::var("FORMATS").unwrap_or_else(|_| "f16 q8_0 q4_0".into());
    for format in formats.split_whitespace() {
        let data = match format {
            "f16" => MatrixData::F16(Storage::Owned(w.iter().map(|&v| f16::from_f32(v)).collect())),
            "q8_0" => MatrixData::Q8_0(Storage::Owned(quantize_row(&w))),
            "q8_0p" => MatrixData::Q8_0Packed(chatglm_cpu::packed_q8::PackedQ8_0::from_blocks(
                &quantize_row::<chatglm_cpu::dot::BlockQ8_0>(&w),
                rows,
                cols,
            )),
            // q8_0p in the other layout than this kernel table packs in
            // (signed against `w + 128`), for A/B runs of the two.
            "q8_0px" => MatrixData::Q8_0Packed(chatglm_cpu::packed_q8::PackedQ8_0::from_blocks_in_layout(
                &quantize_row::<chatglm_cpu::dot::BlockQ8_0>(&w),
                rows,
                cols,
                !k.q8_0_signed,
            )),
            "q4_0p" => MatrixData::Q4_0Packed(chatglm_cpu::packed::PackedQ4_0::from_blocks(
                &quantize_row::<chatglm_cpu::dot::BlockQ4_0>(&w),
                rows,
                cols,
            )),
            _ => MatrixData::Q4_0(Storage::Owned(quantize_row(&w))),
        };
        let m = Matrix { rows, cols, data };
        let mut y = vec![0.0; rows * n_tokens];
        let mut scratch = MatmulScratch::default();
        let (mut best_tile, mut best_dot) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..reps {
            let t = Instant::now();
            matmul(k, &m, &x, n_tokens, &mut y, &mut scratch);
            best_tile = best_tile.min(t.elapsed().as_secs_f64());
            if std::env::var_os("TILED_ONLY").is_none() {
                let t = Instant::now();
                dot_baseline(k, &m, &x, n_tokens, &mut y);
                best_dot = best_dot.min(t.elapsed().as_secs_f64());
            }
        }
        let gb = m.size_bytes() as f64 / 1e9;
        let gflop = 2.0 * rows as f64 * cols as f64 * n_tokens as f64 / 1e9;
        println!(
            "{format:>5}: tiled {:7.2} ms ({:5.1} GB/s, {:6.1} GFLOP/s)   dot-per-row {:7.2} ms ({:5.1} GB/s)   speed-up {:.2}x",
            best_tile * 1e3,
            gb / best_tile,
            gflop / best_tile,
            best_dot * 1e3,
            gb / best_dot,
            best_dot / best_tile
        );
    }
}

#[allow(dead_code)]
pub fn raw_compare() {
    let k = Kernels::detect();
    let rows: usize = std::env::var("ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(27392);
    let cols = 4096;
    let reps = 27392 / rows;
    let nb = cols / 32;
    let w: Vec<f32> = (0..rows * cols).map(|i| ((i as u64 * 2654435761 % 1000) as f32 / 1000.0 - 0.5) * 0.05).collect();
    let wq: Vec<chatglm_cpu::dot::BlockQ4_0> = quantize_row(&w);
    let x: Vec<f32> = (0..cols).map(|i| (i * 7919 % 1000) as f32 / 1000.0 - 0.5).collect();
    let mut xq = vec![BlockQ8_0 { d: f16::ZERO, qs: [0; 32] }; nb];
    (k.quantize_row_q8_0)(&x, &mut xq);
    let mut y = vec![0.0f32; rows];
    let mode = std::env::var("MODE").unwrap_or_default();
    for _ in 0..3 {
        if mode == "tile" {
            let mut out = [0.0f32; 8];
            for _ in 0..reps {
                for r in (0..rows).step_by(4) {
                    (k.tiles_q4_0.t1)(&wq[r * nb..(r + 4) * nb], &xq, nb, &mut out);
                    y[r] = out[0];
                }
            }
            continue;
        }
        if mode == "dot" {
            for _ in 0..reps {
                for r in 0..rows {
                    y[r] = (k.dot_q4_0)(&wq[r * nb..(r + 1) * nb], &xq);
                }
            }
            continue;
        }
        let t = Instant::now();
        for _ in 0..reps {
            for r in 0..rows {
                y[r] = (k.dot_q4_0)(&wq[r * nb..(r + 1) * nb], &xq);
            }
        }
        let a = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut out = [0.0f32; 8];
        for _ in 0..reps {
            for r in (0..rows).step_by(4) {
                (k.tiles_q4_0.t1)(&wq[r * nb..(r + 4) * nb], &xq, nb, &mut out);
                y[r] = out[0];
            }
        }
        let b = t.elapsed().as_secs_f64();
        println!("raw 1-thread q4_0: dot {:.2} ms, tile {:.2} ms", a * 1e3, b * 1e3);
    }
}
