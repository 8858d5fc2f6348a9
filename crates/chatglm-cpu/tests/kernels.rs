//! Every SIMD kernel against the scalar reference, on random inputs of awkward sizes.

use chatglm_cpu::attention::{attend_group, attend_group_reference, AttentionShape};
use chatglm_cpu::dot::{scalar, BlockQ4_0, BlockQ8_0};
use chatglm_cpu::matmul::{matmul, MatmulScratch};
use chatglm_cpu::packed::{padded_blocks, quad_q8_blocks, PackRows, PackedKernels, PackedQ4_0, PackedRows, Q8Quad};
use chatglm_cpu::packed_q8::PackedQ8_0;
use chatglm_cpu::{CpuFeatures, Kernels, Matrix, MatrixData, Storage};
use chatglm_weights::quant::{quantize_row, BlockQ4_1, BlockQ5_0, BlockQ5_1, QuantBlock};
use half::{bf16, f16};

struct Rng(u64);
impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

/// All kernel tables this CPU can run (scalar always).
fn tables() -> Vec<Kernels> {
    let mut v = vec![Kernels::scalar()];
    let f = CpuFeatures::detect();
    if f.has_avx2_set() {
        v.push(Kernels::for_features(f.capped("avx2")));
    }
    if f.has_avx_vnni_set() {
        v.push(Kernels::for_features(f.capped("avx2-vnni")));
    } else if cfg!(target_arch = "x86_64") {
        eprintln!("note: no AVX-VNNI on this CPU; those kernels are not tested here");
    }
    if f.has_avx512_vnni_set() {
        v.push(Kernels::for_features(f));
    } else if cfg!(target_arch = "x86_64") {
        eprintln!("note: no AVX-512 VNNI on this CPU; those kernels are not tested here");
    }
    #[cfg(target_arch = "aarch64")]
    if f.neon {
        v.push(Kernels::for_features(CpuFeatures { dotprod: false, ..f }));
        if f.dotprod {
            v.push(Kernels::for_features(f));
        } else {
            eprintln!("note: no dotprod on this CPU; the sdot kernels are not tested here");
        }
    }
    if !f.has_avx2_set() && !f.neon {
        eprintln!("note: no AVX2 on this CPU; only the scalar kernels are tested");
    }
    eprintln!("kernel tables under test: {}", v.iter().map(|k| k.name).collect::<Vec<_>>().join(", "));
    v
}

fn close(a: f32, b: f64, tol: f64, what: &str) {
    assert!((a as f64 - b).abs() <= tol * (1.0 + b.abs()), "{what}: {a} vs {b}");
}

#[test]
fn float_dots_match_f64() {
    let mut rng = Rng(1);
    for k in tables() {
        for n in [1, 7, 8, 31, 33, 100, 4096 + 5] {
            let w = rng.vec(n);
            let x = rng.vec(n);
            let exact: f64 = w.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
            close((k.dot_f32)(&w, &x), exact, 1e-5, &format!("{} f32 n={n}", k.name));
            let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let exact_h: f64 = wh.iter().zip(&x).map(|(a, b)| a.to_f64() * *b as f64).sum();
            close((k.dot_f16)(&wh, &x), exact_h, 1e-5, &format!("{} f16 n={n}", k.name));
            if let Some(dot_h) = k.dot_f16_h {
                let xh: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
                let exact_hh: f64 = wh.iter().zip(&xh).map(|(a, b)| a.to_f64() * b.to_f64()).sum();
                close(dot_h(&wh, &xh), exact_hh, 1e-5, &format!("{} f16×f16 n={n}", k.name));
                let reference = chatglm_cpu::dot::scalar::dot_f16_h(&wh, &xh) as f64;
                close(dot_h(&wh, &xh), reference, 1e-4, &format!("{} f16×f16 vs scalar n={n}", k.name));
            }
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let exact_b: f64 = wb.iter().zip(&x).map(|(a, b)| a.to_f64() * *b as f64).sum();
            close((k.dot_bf16)(&wb, &x), exact_b, 1e-5, &format!("{} bf16 n={n}", k.name));
        }
    }
}

#[test]
fn axpy_matches_definition() {
    let mut rng = Rng(7);
    for k in tables() {
        for n in [1, 7, 8, 9, 128, 131] {
            let v = rng.vec(n);
            let acc0 = rng.vec(n);
            let a = rng.f32();
            let mut acc = acc0.clone();
            (k.axpy_f32)(a, &v, &mut acc);
            for i in 0..n {
                close(acc[i], acc0[i] as f64 + a as f64 * v[i] as f64, 1e-6, "axpy_f32");
            }
            let vh: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
            let mut acc = acc0.clone();
            (k.axpy_f16)(a, &vh, &mut acc);
            for i in 0..n {
                close(acc[i], acc0[i] as f64 + a as f64 * vh[i].to_f64(), 1e-6, "axpy_f16");
            }
        }
    }
}

#[test]
fn quantized_dots_match_scalar() {
    let mut rng = Rng(2);
    for k in tables() {
        for nb in [1, 3, 17, 128] {
            let x = rng.vec(nb * 32);
            let mut xq = vec![BlockQ8_0 { d: f16::ZERO, qs: [0; 32] }; nb];
            scalar::quantize_row_q8_0(&x, &mut xq);
            let mut xq_fast = xq.clone();
            (k.quantize_row_q8_0)(&x, &mut xq_fast);
            for (a, b) in xq.iter().zip(&xq_fast) {
                assert!((a.d.to_f32() - b.d.to_f32()).abs() <= 1e-3 * a.d.to_f32().abs().max(1e-6));
                for (p, q) in a.qs.iter().zip(&b.qs) {
                    assert!((*p as i32 - *q as i32).abs() <= 1, "{}: quantize_row_q8_0", k.name);
                }
            }
            let w = rng.vec(nb * 32);
            let w8: Vec<BlockQ8_0> = quantize_row(&w);
            let w4: Vec<BlockQ4_0> = quantize_row(&w);
            close((k.dot_q8_0)(&w8, &xq), scalar::dot_q8_0(&w8, &xq) as f64, 1e-4, "q8_0");
            close((k.dot_q4_0)(&w4, &xq), scalar::dot_q4_0(&w4, &xq) as f64, 1e-4, "q4_0");
            let w41: Vec<BlockQ4_1> = quantize_row(&w);
            let w50: Vec<BlockQ5_0> = quantize_row(&w);
            let w51: Vec<BlockQ5_1> = quantize_row(&w);
            close((k.dot_q4_1)(&w41, &xq), scalar::dot_q4_1(&w41, &xq) as f64, 1e-4, "q4_1");
            close((k.dot_q5_0)(&w50, &xq), scalar::dot_q5_0(&w50, &xq) as f64, 1e-4, "q5_0");
            close((k.dot_q5_1)(&w51, &xq), scalar::dot_q5_1(&w51, &xq) as f64, 1e-4, "q5_1");
        }
    }
}

/// The quantized dot equals the dot of the dequantized rows.
#[test]
fn scalar_quantized_dots_equal_dequantized_dots() {
    let mut rng = Rng(3);
    let nb = 9;
    let x = rng.vec(nb * 32);
    let mut xq = vec![BlockQ8_0 { d: f16::ZERO, qs: [0; 32] }; nb];
    scalar::quantize_row_q8_0(&x, &mut xq);
    let mut xd = vec![0.0; nb * 32];
    chatglm_weights::quant::dequantize_row(&xq, &mut xd);
    let w = rng.vec(nb * 32);
    fn check<B: QuantBlock>(w: &[f32], xq: &[BlockQ8_0], xd: &[f32], dot: fn(&[B], &[BlockQ8_0]) -> f32) {
        let wq: Vec<B> = quantize_row(w);
        let mut wd = vec![0.0; w.len()];
        chatglm_weights::quant::dequantize_row(&wq, &mut wd);
        let exact: f64 = wd.iter().zip(xd).map(|(a, b)| *a as f64 * *b as f64).sum();
        close(dot(&wq, xq), exact, 1e-4, std::any::type_name::<B>());
    }
    check::<BlockQ8_0>(&w, &xq, &xd, scalar::dot_q8_0);
    check::<BlockQ4_0>(&w, &xq, &xd, scalar::dot_q4_0);
    check::<BlockQ4_1>(&w, &xq, &xd, scalar::dot_q4_1);
    check::<BlockQ5_0>(&w, &xq, &xd, scalar::dot_q5_0);
    check::<BlockQ5_1>(&w, &xq, &xd, scalar::dot_q5_1);
}

fn matrix(format: &str, rows: usize, cols: usize, w: &[f32]) -> Matrix {
    let data = match format {
        "f32" => MatrixData::F32(Storage::Owned(w.to_vec())),
        "f16" => MatrixData::F16(Storage::Owned(w.iter().map(|&v| f16::from_f32(v)).collect())),
        "bf16" => MatrixData::BF16(Storage::Owned(w.iter().map(|&v| bf16::from_f32(v)).collect())),
        "q8_0" => MatrixData::Q8_0(Storage::Owned(quantize_row(w))),
        "q4_0" => MatrixData::Q4_0(Storage::Owned(quantize_row(w))),
        "q4_0p" => MatrixData::Q4_0Packed(PackedQ4_0::from_blocks(&quantize_row::<BlockQ4_0>(w), rows, cols)),
        "q8_0p" => {
            MatrixData::Q8_0Packed(PackedQ8_0::from_blocks_in_layout(&quantize_row::<BlockQ8_0>(w), rows, cols, false))
        }
        "q8_0ps" => {
            MatrixData::Q8_0Packed(PackedQ8_0::from_blocks_in_layout(&quantize_row::<BlockQ8_0>(w), rows, cols, true))
        }
        "q4_1" => MatrixData::Q4_1(Storage::Owned(quantize_row(w))),
        "q5_0" => MatrixData::Q5_0(Storage::Owned(quantize_row(w))),
        "q5_1" => MatrixData::Q5_1(Storage::Owned(quantize_row(w))),
        _ => unreachable!(),
    };
    Matrix { rows, cols, data }
}

/// Tiled, threaded matmul of every format and kernel table against the
/// scalar table, over row counts that leave partial tiles and odd token counts.
#[test]
fn matmul_tiles_match_scalar_reference() {
    let mut rng = Rng(4);
    let scalar = Kernels::scalar();
    for k in tables() {
        for &(rows, cols, n_tokens) in &[(1, 32, 1), (7, 64, 3), (21, 96, 5), (37, 160, 2), (64, 4096, 1), (9, 4096, 4)]
        {
            let w = rng.vec(rows * cols);
            let x = rng.vec(n_tokens * cols);
            for format in ["f32", "f16", "bf16", "q8_0", "q8_0p", "q8_0ps", "q4_0", "q4_0p", "q4_1", "q5_0", "q5_1"] {
                let m = matrix(format, rows, cols, &w);
                let mut want = vec![0.0; rows * n_tokens];
                let mut got = vec![0.0; rows * n_tokens];
                // A table that runs one-token f16 products on f16 activations is
                // compared with the reference on the same rounded activations.
                let x_ref: Vec<f32> = if format == "f16" && n_tokens == 1 && k.dot_f16_h.is_some() {
                    x.iter().map(|&v| f16::from_f32(v).to_f32()).collect()
                } else {
                    x.clone()
                };
                matmul(&scalar, &m, &x_ref, n_tokens, &mut want, &mut MatmulScratch::default());
                matmul(&k, &m, &x, n_tokens, &mut got, &mut MatmulScratch::default());
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    let tol = 2e-3 * (1.0 + b.abs()) + if format.starts_with('q') { 0.02 } else { 0.0 };
                    assert!((a - b).abs() <= tol, "{} {format} {rows}x{cols} t={n_tokens} [{i}]: {a} vs {b}", k.name);
                }
            }
        }
    }
}

/// Long prompts of wide rows run in several sweeps over the weights (each
/// sweep's activations sized to stay in cache): every token of every sweep,
/// and the tokens at the sweep boundaries, must equal the same token run alone.
#[test]
fn matmul_over_several_activation_sweeps_matches_tokens_alone() {
    let mut rng = Rng(12);
    let scalar = Kernels::scalar();
    let (rows, cols, n_tokens) = (6, 16384, 250);
    let w = rng.vec(rows * cols);
    let x = rng.vec(n_tokens * cols);
    for k in tables() {
        for format in ["f32", "bf16", "q8_0p", "q4_0"] {
            let m = matrix(format, rows, cols, &w);
            let mut got = vec![0.0; rows * n_tokens];
            matmul(&k, &m, &x, n_tokens, &mut got, &mut MatmulScratch::default());
            for t in [0, 1, 63, 64, 65, 127, 128, 200, 239, 240, 241, 249] {
                let mut want = vec![0.0; rows];
                let xt = &x[t * cols..(t + 1) * cols];
                matmul(&scalar, &m, xt, 1, &mut want, &mut MatmulScratch::default());
                for r in 0..rows {
                    let (a, b) = (got[t * rows + r], want[r]);
                    let tol = 2e-3 * (1.0 + b.abs()) + if format.starts_with('q') { 0.05 } else { 0.0 };
                    assert!((a - b).abs() <= tol, "{} {format} token {t} row {r}: {a} vs {b}", k.name);
                }
            }
        }
    }
}

/// The 4×3 tile (AVX2 f16, in assembly) gives each token the bits of the
/// one-token tile: tails of 1–7 columns, widths under one vector, long rows.
#[test]
fn three_token_tiles_equal_one_token_tiles_bit_for_bit() {
    let mut rng = Rng(23);
    for k in tables() {
        let Some(t3) = k.tiles_f16.t3 else { continue };
        for cols in [3, 8, 13, 517, 4096, 4103] {
            let w: Vec<f16> = rng.vec(4 * cols).iter().map(|&v| f16::from_f32(v)).collect();
            let x = rng.vec(3 * cols);
            let mut got = [0.0f32; 12];
            t3(&w, &x, cols, &mut got);
            for t in 0..3 {
                let mut want = [0.0f32; 4];
                (k.tiles_f16.t1)(&w, &x[t * cols..], cols, &mut want);
                for r in 0..4 {
                    assert_eq!(
                        got[r * 3 + t].to_bits(),
                        want[r].to_bits(),
                        "{} {cols} cols: row {r} token {t}",
                        k.name
                    );
                }
            }
        }
    }
}

/// Float prefill tiles at widths that are not multiples of the vector width
/// (tails of 1–7 columns), odd token counts and rows that leave a partial tile.
#[test]
fn float_prefill_at_awkward_widths_matches_scalar_reference() {
    let mut rng = Rng(11);
    let scalar = Kernels::scalar();
    for k in tables() {
        for &(rows, cols, n_tokens) in &[(11, 1100, 5), (8, 1536, 2), (5, 513, 3), (4, 4100, 4), (9, 600, 7)] {
            let w = rng.vec(rows * cols);
            let x = rng.vec(n_tokens * cols);
            for format in ["f32", "f16", "bf16"] {
                let m = matrix(format, rows, cols, &w);
                let mut want = vec![0.0; rows * n_tokens];
                let mut got = vec![0.0; rows * n_tokens];
                matmul(&scalar, &m, &x, n_tokens, &mut want, &mut MatmulScratch::default());
                matmul(&k, &m, &x, n_tokens, &mut got, &mut MatmulScratch::default());
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    let tol = 2e-3 * (1.0 + b.abs());
                    assert!((a - b).abs() <= tol, "{} {format} {rows}x{cols} t={n_tokens} [{i}]: {a} vs {b}", k.name);
                }
            }
        }
    }
}

#[test]
fn attention_matches_f64_reference() {
    let mut rng = Rng(5);
    for k in tables() {
        if k.name == "avx512-vnni" {
            // The heads-in-lanes kernel is the one under test for float caches here.
            assert!(
                k.attention_f16.group.is_some() && k.attention_f32.group.is_some() && k.attention_q8_0.group.is_some()
            );
        }
        for &(n_heads, n_groups, hd, n_ctx) in &[
            (4, 2, 16, 1),
            (4, 2, 16, 70),
            (32, 2, 128, 130),
            (6, 3, 8, 200),
            (9, 3, 32, 67),
            (5, 1, 48, 3),
            (34, 2, 64, 33),
        ] {
            let shape = AttentionShape { n_heads, n_groups, head_dim: hd };
            let hpg = n_heads / n_groups;
            let keys = rng.vec(n_ctx * n_groups * hd);
            let values = rng.vec(n_ctx * n_groups * hd);
            for g in 0..n_groups {
                let q: Vec<f32> = rng.vec(hpg * hd).iter().map(|v| v * 3.0).collect();
                let mut want = vec![0.0; hpg * hd];
                attend_group_reference(shape, g, &q, &keys, &values, n_ctx, &mut want);
                let mut got = vec![0.0; hpg * hd];
                attend_group(&k, shape, g, &q, &keys, &values, n_ctx, &mut got);
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-5, "{} attention f32 ctx {n_ctx}: {a} vs {b}", k.name);
                }
                if hd % 32 == 0 {
                    // q8_0 cache: compare with the reference on the dequantized keys/values.
                    let kq: Vec<BlockQ8_0> = quantize_row(&keys);
                    let vq: Vec<BlockQ8_0> = quantize_row(&values);
                    let (mut kd, mut vd) = (vec![0.0; keys.len()], vec![0.0; values.len()]);
                    chatglm_weights::quant::dequantize_row(&kq, &mut kd);
                    chatglm_weights::quant::dequantize_row(&vq, &mut vd);
                    let mut want_q = vec![0.0; hpg * hd];
                    attend_group_reference(shape, g, &q, &kd, &vd, n_ctx, &mut want_q);
                    attend_group(&k, shape, g, &q, &kq, &vq, n_ctx, &mut got);
                    for (a, b) in got.iter().zip(&want_q) {
                        assert!((a - b).abs() <= 1e-4, "{} attention q8_0 ctx {n_ctx}: {a} vs {b}", k.name);
                    }
                }
                let kh: Vec<f16> = keys.iter().map(|&v| f16::from_f32(v)).collect();
                let vh: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
                attend_group(&k, shape, g, &q, &kh, &vh, n_ctx, &mut got);
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() <= 5e-3, "{} attention f16 ctx {n_ctx}: {a} vs {b}", k.name);
                }
            }
        }
    }
}

#[test]
fn ops_match_definitions() {
    use chatglm_cpu::ops;
    let mut rng = Rng(6);
    let x = rng.vec(3 * 37);
    let w = rng.vec(37);
    let mut y = vec![0.0; x.len()];
    ops::rms_norm(&x, &w, 1e-5, &mut y);
    for (xr, yr) in x.chunks(37).zip(y.chunks(37)) {
        let ms: f64 = xr.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / 37.0;
        for i in 0..37 {
            close(yr[i], w[i] as f64 * xr[i] as f64 / (ms + 1e-5).sqrt(), 1e-5, "rms_norm");
        }
    }
    for k in tables() {
        let g: Vec<f32> = rng.vec(2 * 26).iter().map(|v| v * 12.0).collect();
        let mut s = vec![0.0; 26];
        ops::swiglu(&k, &g, 13, &mut s);
        for r in 0..2 {
            for i in 0..13 {
                let a = g[r * 26 + i] as f64;
                let want = a / (1.0 + (-a).exp()) * g[r * 26 + 13 + i] as f64;
                close(s[r * 13 + i], want, 1e-6, &format!("{} swiglu", k.name));
            }
        }
    }
    // RoPE: rotating by position p then by -p... check the first pair against the formula.
    let rope = ops::RopeTable::new(16, 10000.0);
    let mut h = rng.vec(16);
    let orig = h.clone();
    rope.apply(&mut h, 16, 3);
    let (c, s) = (3.0f64.cos(), 3.0f64.sin());
    close(h[0], orig[0] as f64 * c - orig[1] as f64 * s, 1e-6, "rope");
    close(h[1], orig[1] as f64 * c + orig[0] as f64 * s, 1e-6, "rope");
    assert_eq!(&h[8..], &orig[8..], "the second half of each head is not rotated");
}

/// A packed layout against the ggml-block reference: the mat-vec dot and
/// the 4×2 tile of every kernel table, and dequantization.
fn check_packed<B: QuantBlock + bytemuck::Pod, P: PackRows<Block = B> + PackedRows>(
    name: &str,
    pack: fn(&[B], usize, usize) -> P,
    kernels: fn(&Kernels) -> PackedKernels<P::Q>,
    reference_dot: fn(&[B], &[BlockQ8_0]) -> f32,
    dequantize_row: fn(&P, usize, &mut [f32]),
    seed: u64,
) {
    let mut rng = Rng(seed);
    for k in tables() {
        let kp = kernels(&k);
        for cols in [32, 96, 160, 4096, 13696] {
            let rows = 4;
            let mut w = rng.vec(rows * cols);
            w[0] = 1.0; // a block whose largest weight hits the format's extreme
            w[1] = -1.0;
            let blocks: Vec<B> = quantize_row(&w);
            let packed = pack(&blocks, rows, cols);
            let nb = cols / 32;
            let x = rng.vec(2 * cols);
            let mut xq = vec![BlockQ8_0 { d: f16::ZERO, qs: [0; 32] }; 2 * nb];
            for t in 0..2 {
                scalar::quantize_row_q8_0(&x[t * cols..(t + 1) * cols], &mut xq[t * nb..(t + 1) * nb]);
            }
            let np = padded_blocks(cols) / 4;
            let mut quads = vec![Q8Quad::default(); 2 * np];
            for t in 0..2 {
                quad_q8_blocks(&xq[t * nb..(t + 1) * nb], &mut quads[t * np..(t + 1) * np]);
            }
            let mut tile = [0.0f32; 8];
            let (s4, q4) = packed.rows_data(0, 4);
            (kp.t2)(s4, q4, &quads, np, &mut tile);
            for r in 0..rows {
                let (s, q) = packed.rows_data(r, 1);
                for t in 0..2 {
                    let want = reference_dot(&blocks[r * nb..(r + 1) * nb], &xq[t * nb..(t + 1) * nb]) as f64;
                    let xp = &quads[t * np..(t + 1) * np];
                    let what = format!("{} {name} cols={cols}", k.name);
                    close((kp.dot)(s, q, xp), want, 1e-4, &format!("{what} dot"));
                    close(tile[r * 2 + t], want, 1e-4, &format!("{what} tile"));
                }
            }
            let mut row = vec![0.0; cols];
            let mut want = vec![0.0; cols];
            dequantize_row(&packed, 3, &mut row);
            chatglm_weights::quant::dequantize_row(&blocks[3 * nb..4 * nb], &mut want);
            assert_eq!(row, want, "{name} dequantize");
        }
    }
}

/// The packed layouts compute the same dot products as ggml blocks,
/// including rows whose block count is not a multiple of 4 (padded).
#[test]
fn packed_layouts_match_block_layout() {
    check_packed::<BlockQ4_0, PackedQ4_0>(
        "q4_0",
        PackedQ4_0::from_blocks,
        |k| k.packed_q4_0,
        scalar::dot_q4_0,
        PackedQ4_0::dequantize_row,
        8,
    );
    check_packed::<BlockQ8_0, PackedQ8_0>(
        "q8_0",
        |b, r, c| PackedQ8_0::from_blocks_in_layout(b, r, c, false),
        |k| k.packed_q8_0,
        scalar::dot_q8_0,
        PackedQ8_0::dequantize_row,
        9,
    );
    check_packed::<BlockQ8_0, PackedQ8_0>(
        "q8_0 signed",
        |b, r, c| PackedQ8_0::from_blocks_in_layout(b, r, c, true),
        |k| k.packed_q8_0_signed,
        scalar::dot_q8_0,
        PackedQ8_0::dequantize_row,
        11,
    );
}

/// The vectorised exponential rows against f64, over the whole input range
/// (including arguments that underflow and overflow) and awkward lengths.
#[test]
fn vmath_rows_match_f64() {
    let mut rng = Rng(10);
    for k in tables() {
        for n in [0, 1, 7, 8, 9, 31, 64, 100] {
            for spread in [1.0f32, 30.0, 120.0] {
                let x: Vec<f32> = rng.vec(n).iter().map(|v| v * spread).collect();
                let sub = spread; // as in softmax: every argument ≤ 0
                let mut e = x.clone();
                let sum = (k.vmath.exp_sub_sum)(&mut e, sub);
                let mut want_sum = 0.0f64;
                for (i, (&got, &xi)) in e.iter().zip(&x).enumerate() {
                    let arg = (xi - sub) as f64; // the kernels subtract in f32
                    let want = arg.exp();
                    let what = format!("{} exp({arg}) n={n} i={i}", k.name);
                    if arg < -87.3 {
                        assert!((0.0..2e-38).contains(&got), "{what}: {got}");
                    } else {
                        assert!((got as f64 - want).abs() <= 3e-7 * want, "{what}: {got} vs {want}");
                    }
                    want_sum += got as f64;
                }
                close(sum, want_sum, 1e-6, &format!("{} exp sum n={n}", k.name));

                let mut scaled = x.clone();
                let max = (k.vmath.scale_max)(&mut scaled, 0.125);
                let want: Vec<f32> = x.iter().map(|v| v * 0.125).collect();
                assert_eq!(scaled, want, "{} scale_max values", k.name);
                assert_eq!(max, want.iter().copied().fold(f32::NEG_INFINITY, f32::max), "{} scale_max", k.name);
            }
        }
        let mut big = [100.0f32; 9];
        (k.vmath.exp_sub_sum)(&mut big, 0.0);
        assert!(big.iter().all(|&v| v > 1e38 && v.is_finite()), "{} exp overflow: {big:?}", k.name);
    }
}

#[test]
fn asking_for_features_the_cpu_lacks_never_enables_them() {
    let all = CpuFeatures {
        avx2: true,
        fma: true,
        f16c: true,
        avx512f: true,
        avx512bw: true,
        avx512vl: true,
        avx512vnni: true,
        avxvnni: true,
        neon: true,
        dotprod: true,
    };
    // Before: every table was handed out, e.g. AVX-512 kernels on an AVX2 CPU.
    assert_eq!(Kernels::for_features(all).name, Kernels::for_features(CpuFeatures::detect()).name);
}

#[test]
#[should_panic(expected = "cached units")]
fn attention_with_short_keys_panics_instead_of_reading_past_them() {
    use chatglm_cpu::attention::{attend_group, AttentionShape};
    let shape = AttentionShape { n_heads: 32, n_groups: 2, head_dim: 128 };
    let q = vec![0.5f32; 16 * 128];
    // 100 positions need 100 · 256 values; give half.
    let keys = vec![0.25f32; 50 * 256];
    let values = vec![0.25f32; 100 * 256];
    let mut out = vec![0.0f32; 16 * 128];
    for k in tables() {
        attend_group(&k, shape, 1, &q, &keys, &values, 100, &mut out);
    }
}
