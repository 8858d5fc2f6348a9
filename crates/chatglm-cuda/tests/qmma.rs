//! The quantized products against a host reference on random tiled matrices
//! of awkward shapes: every format, 1..64 tokens (in-block and separate
//! activation quantization), every output mode, and the dequantizing
//! kernel. Skips without a GPU (`CHATGLM_REQUIRE_GPU=1` fails instead).

use chatglm_cuda::quant::{ActivationForm, OneTokenCodes, QuantFormat, TileShape, TiledMatrix, TiledPtr, BLOCK};
use chatglm_cuda::{device_ptr, GemvMode, Gpu};
mod common;

use common::gpu;
use half::f16;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// A random matrix and, per row, its blocks as (d, m, codes).
fn random_matrix(format: QuantFormat, rows: usize, cols: usize, rng: &mut Rng) -> TiledMatrix {
    let mut m = TiledMatrix::new(TileShape::new(format, rows, cols).unwrap());
    for r in 0..rows {
        for b in 0..cols / BLOCK {
            let d = f16::from_f32(0.01 + 0.01 * rng.uniform()).to_bits();
            let mn = f16::from_f32(0.05 * rng.uniform()).to_bits();
            let codes: Vec<u8> = (0..format.code_bytes())
                .map(|_| match format {
                    QuantFormat::Q8 => (rng.next() % 255) as u8 ^ 0x80,
                    QuantFormat::Q8Min => (rng.next() % 32) as u8,
                    _ => rng.next() as u8,
                })
                .collect();
            m.set_block(r, b, d, mn, &codes);
        }
    }
    m
}

fn weight(m: &TiledMatrix, r: usize, k: usize) -> (f32, f32, i32) {
    let (d, mn, codes) = m.block(r, k / BLOCK);
    let j = k % BLOCK;
    let q = match m.shape.format {
        QuantFormat::Q4 | QuantFormat::Q4Min => {
            let byte = codes[j % 16];
            (if j < 16 { byte & 0x0f } else { byte >> 4 }) as i32
        }
        QuantFormat::Q8 => codes[j] as i8 as i32,
        QuantFormat::Q8Min => codes[j] as i32,
    };
    (f16::from_bits(d).to_f32(), f16::from_bits(mn).to_f32(), q)
}

/// q8_0 of 32 activations as the kernel computes it: (codes, f16-rounded d).
fn quantize32(x: &[f32]) -> (Vec<i32>, f32) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (x.iter().map(|v| (v * id).round() as i32).collect(), f16::from_f32(d).to_f32())
}

/// Whether the device's q8_0 block of `x` (codes `got`, scale `d`, sum
/// `sum`) is the host's; `offset8`: the sum as q4_0's products take it
/// (qmma.cu's X_MAGIC − 8·Σq).
fn block_codes_match(x: &[f32], got: &[u8], d: f32, sum: i32, offset8: bool) -> bool {
    let (codes, want_d) = quantize32(x);
    let q: Vec<i32> = got.iter().map(|&v| v as i8 as i32).collect();
    let s = codes.iter().sum::<i32>();
    let want_s = if offset8 { 0x4B40_0000 - 8 * s } else { s };
    q == codes && d == want_d && sum == want_s
}

/// `f(rows r0..r1)` over `0..rows` split across the machine's threads, the
/// parts in row order. (The host reference is most of this test's time on
/// the GPU machine: one thread took ~3 minutes of device time a run.)
fn by_row_ranges<T: Send>(rows: usize, f: impl Fn(std::ops::Range<usize>) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(rows.max(1));
    let per = rows.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = (0..rows).step_by(per).map(|r0| s.spawn(move || f(r0..(r0 + per).min(rows)))).collect();
        handles.into_iter().map(|h| h.join().expect("reference thread")).collect()
    })
}

/// Every weight of a tiled matrix as (scale, offset, code), row-major.
fn unpack(m: &TiledMatrix) -> Vec<(f32, f32, i32)> {
    let cols = m.shape.cols;
    by_row_ranges(m.shape.rows, |rows| {
        let mut w = Vec::with_capacity(rows.len() * cols);
        for r in rows {
            for k in 0..cols {
                w.push(weight(m, r, k));
            }
        }
        w
    })
    .concat()
}

/// out[t][r] for every row, in f64 from the integer block sums (`w`: the
/// matrix unpacked). Each (token, row) adds its blocks in order, whatever
/// the threads.
fn reference(m: &TiledMatrix, w: &[(f32, f32, i32)], x: &[f32], n: usize) -> Vec<f64> {
    let (rows, cols) = (m.shape.rows, m.shape.cols);
    let nb = cols / BLOCK;
    let xq: Vec<(Vec<i32>, f32, i32)> = (0..n * nb)
        .map(|i| {
            let (t, b) = (i / nb, i % nb);
            let (q, dx) = quantize32(&x[t * cols + b * BLOCK..t * cols + (b + 1) * BLOCK]);
            let sx = q.iter().sum();
            (q, dx, sx)
        })
        .collect();
    let parts = by_row_ranges(rows, |range| {
        let len = range.len();
        let mut part = vec![0f64; n * len];
        for t in 0..n {
            for b in 0..nb {
                let (q, dx, sx) = &xq[t * nb + b];
                for r in range.clone() {
                    let row = &w[r * cols + b * BLOCK..r * cols + (b + 1) * BLOCK];
                    let (dw, mw) = (row[0].0, row[0].1);
                    let isum: i32 = row.iter().zip(q).map(|(wq, qx)| wq.2 * qx).sum();
                    let v = match m.shape.format {
                        QuantFormat::Q4 => (isum - 8 * sx) as f64 * dw as f64 * *dx as f64,
                        QuantFormat::Q8 => isum as f64 * dw as f64 * *dx as f64,
                        _ => isum as f64 * dw as f64 * *dx as f64 + mw as f64 * *dx as f64 * *sx as f64,
                    };
                    part[t * len + r - range.start] += v;
                }
            }
        }
        (range, part)
    });
    let mut out = vec![0f64; n * rows];
    for (range, part) in parts {
        for t in 0..n {
            out[t * rows + range.start..t * rows + range.end]
                .copy_from_slice(&part[t * range.len()..(t + 1) * range.len()]);
        }
    }
    out
}

/// Whether the kernels under test take f16 activations in steps quantized by
/// `quantize_x` (`CHATGLM_NVRTC_DEFINES=QMMA_F16X=1`).
fn f16_activations() -> bool {
    nvrtc_defines("QMMA_F16X=1")
}

/// Whether `CHATGLM_NVRTC_DEFINES` holds `define` (space- or comma-separated).
fn nvrtc_defines(define: &str) -> bool {
    std::env::var("CHATGLM_NVRTC_DEFINES").is_ok_and(|d| d.split([' ', ',']).any(|v| v == define))
}

/// Whether qmma's one-token products sum in the streamed products' order
/// (`QMMA_ONE_COLS=0`): by default they put a block in each mma column and
/// sum a row's blocks in another order, so the two agree to rounding only.
fn one_token_sums_as_streamed() -> bool {
    nvrtc_defines("QMMA_ONE_COLS=0")
}

/// out[t][r] as the f16 tensor-core kernels compute it: each weight
/// dequantized to f16 (d·(q − off) or d·q + m, rounded once), each
/// activation rounded to f16, the products summed in f64.
fn reference_f16(m: &TiledMatrix, w: &[(f32, f32, i32)], x: &[f32], n: usize) -> Vec<f64> {
    let (rows, cols) = (m.shape.rows, m.shape.cols);
    let w: Vec<f64> = w
        .iter()
        .map(|&(d, mn, q)| {
            let v = match m.shape.format {
                QuantFormat::Q4 => (q - 8) as f64 * d as f64,
                QuantFormat::Q8 => q as f64 * d as f64,
                _ => q as f64 * d as f64 + mn as f64,
            };
            f16::from_f64(v).to_f64()
        })
        .collect();
    let xh: Vec<f64> = x.iter().map(|&v| f16::from_f32(v).to_f64()).collect();
    let mut out = vec![0f64; n * rows];
    for t in 0..n {
        for r in 0..rows {
            out[t * rows + r] = (0..cols).map(|k| w[r * cols + k] * xh[t * cols + k]).sum();
        }
    }
    out
}

/// quantize_x's codes and scales against the host's, token by token.
#[test]
fn activation_codes_match_the_host() {
    let Some(gpu) = gpu() else { return };
    if f16_activations() {
        eprintln!("QMMA_F16X=1: quantize_x writes f16 activations (checked through the products)");
        return;
    }
    let mut rng = Rng(99);
    let mut bad = Vec::new();
    // q8_0 products take Σq as it is; q4_0's the magic number less 8·Σq (qmma.cu's X_MAGIC).
    for (format, (n, cols)) in [QuantFormat::Q8, QuantFormat::Q4]
        .into_iter()
        .flat_map(|f| [(1usize, 96usize), (8, 96), (9, 96), (17, 160), (64, 1024)].map(|s| (f, s)))
    {
        let x: Vec<f32> = (0..n * cols).map(|_| rng.uniform() * 4.0).collect();
        let xd = gpu.upload_new(&x, "x").unwrap();
        let (qb, sb) = Gpu::quantized_x_bytes(n, cols);
        let xq = gpu.alloc::<u8>(qb, "xq").unwrap();
        let xs = gpu.alloc::<u8>(sb, "xs").unwrap();
        // SAFETY: sized above.
        unsafe {
            let (q, s) = (device_ptr(&xq), device_ptr(&xs));
            gpu.quantize_x(device_ptr(&xd), n, cols, None, format, ActivationForm::Q8, q, s).unwrap()
        };
        let mut q = vec![0u8; qb];
        let mut s = vec![0u8; sb];
        gpu.download(&xq, &mut q, "xq").unwrap();
        gpu.download(&xs, &mut s, "xs").unwrap();
        let padded = sb / 8 / (cols / BLOCK);
        for t in 0..n {
            for b in 0..cols / BLOCK {
                let range = t * cols + b * BLOCK..t * cols + (b + 1) * BLOCK;
                let at = (b * padded + t) * 8;
                let gd = f32::from_le_bytes(s[at..at + 4].try_into().unwrap());
                let gs = i32::from_le_bytes(s[at + 4..at + 8].try_into().unwrap());
                if !block_codes_match(&x[range.clone()], &q[range], gd, gs, format == QuantFormat::Q4) {
                    bad.push(format!("{format:?} n={n} cols={cols} token {t} block {b}: d {gd}, Σ {gs}"));
                    break;
                }
            }
        }
    }
    for b in &bad {
        eprintln!("{b}");
    }
    assert!(bad.is_empty(), "{} mismatches", bad.len());
}

#[test]
fn quantized_products_match_the_host_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut failures = Vec::new();
    for format in [QuantFormat::Q4, QuantFormat::Q4Min, QuantFormat::Q8, QuantFormat::Q8Min] {
        // Awkward small shapes, 1056×2048 (66 tiles of 64 or 128 units:
        // several batches a tile in the streaming kernels), and widths whose
        // batches are all whole units (4096: the unchecked loop) or end in a
        // half unit (4128: 129 blocks, the checked loop after unchecked ones).
        // The grouped products (9..=64 tokens) deal chunks of 8 units of
        // groups of 128 rows to at most a wave of blocks: 5120×512 gives
        // each block whole groups, 38400×64 runs of 2–3 whole groups, and
        // 19200×1024 runs that start and end inside groups (partial sums
        // meeting in the workspace), as do the shapes of fewer chunks than
        // blocks.
        let all: &[usize] = &[1, 2, 3, 8, 9, 17, 40, 64];
        let few: &[usize] = &[1, 2, 9];
        let grouped: &[usize] = &[1, 9, 17, 33];
        for (rows, cols, tokens) in [
            (48, 96, all),
            (40, 160, all),
            (64, 1024, all),
            (1056, 2048, few),
            (64, 4096, few),
            (64, 4128, few),
            (5120, 512, grouped),
            (38400, 64, grouped),
            (19200, 1024, grouped),
            // 32 groups of 5 chunks: the aligned grid (quant_group's
            // grouped_blocks: 4 blocks a group on an H200's 132), runs of
            // 1¼ chunks that start and end inside their group.
            (4096, 2560, grouped),
            // One token over the 4h→h width: more units a warp than its ring holds.
            (32, 13696, &[1]),
        ] {
            let m = random_matrix(format, rows, cols, &mut rng);
            let w = gpu.upload_new(&m.bytes, "w").unwrap();
            let wp = TiledPtr { base: device_ptr(&w), shape: m.shape };
            let unpacked = unpack(&m);
            for &n in tokens {
                let x: Vec<f32> = (0..n * cols).map(|_| rng.uniform() * 4.0).collect();
                let want = reference(&m, &unpacked, &x, n);
                let want_f16 = if n > 8 { reference_f16(&m, &unpacked, &x, n) } else { Vec::new() };
                let xd = gpu.upload_new(&x, "x").unwrap();
                let (qb, sb) = Gpu::quantized_x_bytes(n, cols);
                let xq = gpu.alloc::<u8>(qb, "xq").unwrap();
                let xs = gpu.alloc::<u8>(sb, "xs").unwrap();
                // One token's products, streamed (qmv.cu) and qmma's own, must agree bit for bit
                // where they sum in the same order (QMMA_ONE_COLS=0).
                let mut one_token: Vec<(GemvMode, Vec<f32>)> = Vec::new();
                // The grouped products also over f16 activations (ActivationForm::F16).
                for (in_block, grouped, stream, hx) in [
                    (true, false, true, false),
                    (true, false, false, false),
                    (false, true, false, false),
                    (false, true, false, true),
                    (false, false, false, false),
                ] {
                    if in_block && !gpu.qmma_quantizes_in_block(n, cols) {
                        continue;
                    }
                    if grouped && n <= 8 {
                        continue; // the grouped products take 9..=64 tokens
                    }
                    if stream && n != 1 {
                        continue; // the streamed products take one token
                    }
                    gpu.set_grouped_products(grouped);
                    gpu.set_one_token_stream(stream);
                    if hx && !gpu.f16_activations_supported(n, format) {
                        failures.push(format!("{format:?} n={n}: no f16 grouped products"));
                        continue;
                    }
                    let form = if hx { ActivationForm::F16 } else { ActivationForm::Q8 };
                    for mode in [GemvMode::Store, GemvMode::Accumulate, GemvMode::SwiGlu] {
                        let out_cols = if mode == GemvMode::SwiGlu { rows / 2 } else { rows };
                        if mode == GemvMode::SwiGlu && !(rows / 2).is_multiple_of(16) {
                            continue;
                        }
                        let base: Vec<f32> = (0..n * out_cols).map(|i| (i % 7) as f32).collect();
                        let mut out = gpu.upload_new(&base, "out").unwrap();
                        // SAFETY: buffers sized above.
                        unsafe {
                            let (xp, op, none) = (device_ptr(&xd), device_ptr(&out), OneTokenCodes::default());
                            if in_block {
                                gpu.qmma(wp, xp, None, None, n, 0, op, mode, None, None, none).unwrap();
                            } else {
                                let (q, s) = (device_ptr(&xq), device_ptr(&xs));
                                gpu.quantize_x(xp, n, cols, None, format, form, q, s).unwrap();
                                gpu.qmma(wp, xp, None, Some((q, s, form)), n, 0, op, mode, None, None, none).unwrap();
                            }
                        }
                        let mut got = vec![0f32; n * out_cols];
                        gpu.download(&out, &mut got, "out").unwrap();
                        let _ = &mut out;
                        let f16_sums = hx || (!in_block && f16_activations());
                        let want = if f16_sums { &want_f16 } else { &want };
                        let mut worst = 0f64;
                        for t in 0..n {
                            for r in 0..out_cols {
                                let w = match mode {
                                    GemvMode::Store => want[t * rows + r],
                                    GemvMode::Accumulate => want[t * rows + r] + base[t * out_cols + r] as f64,
                                    GemvMode::SwiGlu => {
                                        let a = want[t * rows + r];
                                        a / (1.0 + (-a).exp()) * want[t * rows + r + rows / 2]
                                    }
                                };
                                worst = worst.max((got[t * out_cols + r] as f64 - w).abs() / (1.0 + w.abs()));
                            }
                        }
                        let label = format!(
                            "{format:?} {rows}×{cols} n={n} in_block={in_block} grouped={grouped} stream={stream} \
                             f16={hx} {mode:?}"
                        );
                        if in_block && n == 1 && one_token_sums_as_streamed() {
                            match one_token.iter().find(|(m, _)| *m == mode) {
                                Some((_, first)) if first != &got => {
                                    failures.push(format!("{label}: streamed and qmma's own one-token sums differ"))
                                }
                                Some(_) => {}
                                None => one_token.push((mode, got.clone())),
                            }
                        }
                        // f32 sums of longer rows round more (1e-4 per 1,024 columns);
                        // SwiGLU multiplies two sums, adding their errors.
                        // f16 tensor-core sums (f32 accumulators that round each
                        // mma's sum towards zero) drift further from the f64
                        // reference on the larger q8 sums: 1e-3.
                        let per_1024 = if f16_sums { 1e-3 } else { 1e-4 };
                        let per_sum = per_1024 * (cols as f64 / 1024.0).max(1.0);
                        let tolerance = if mode == GemvMode::SwiGlu { 2.0 * per_sum } else { per_sum };
                        if worst > tolerance {
                            failures.push(format!("{label}: relative error {worst:.3e}"));
                        }
                    }
                }
            }
            // The dequantizing kernel: every weight as d·q (+ m), in f16.
            let mut deq = gpu.alloc::<u16>(rows * cols, "deq").unwrap();
            // SAFETY: deq holds rows×cols f16.
            unsafe { gpu.dequantize_rows(wp, 0, rows, device_ptr(&deq)).unwrap() };
            let mut got = vec![0u16; rows * cols];
            gpu.download(&deq, &mut got, "deq").unwrap();
            let _ = &mut deq;
            let all = &unpacked;
            for r in 0..rows {
                for k in 0..cols {
                    let (d, mn, q) = all[r * cols + k];
                    let v = match format {
                        QuantFormat::Q4 => d * (q - 8) as f32,
                        QuantFormat::Q8 => d * q as f32,
                        _ => d * q as f32 + mn,
                    };
                    if f16::from_f32(v).to_bits() != got[r * cols + k] {
                        failures.push(format!("dequantize {format:?} {rows}×{cols} at {r},{k}"));
                        break;
                    }
                }
            }
        }
    }
    for f in &failures {
        eprintln!("{f}");
    }
    assert!(failures.is_empty(), "{} failures", failures.len());
}

/// The one-token q8_0 hand-off (`OneTokenCodes`): a SwiGLU product that
/// also writes its output's codes writes the same floats, codes exactly as
/// the host quantizes those floats, and the product that reads the codes
/// sums exactly as it does quantizing the floats itself — bit for bit, every
/// format, over outputs of a few pairs of items and of ChatGLM2's 13,696
/// (several pairs a block).
#[test]
fn one_token_codes_hand_off_changes_nothing() {
    use chatglm_cuda::quant::one_token_codes_bytes;
    let Some(gpu) = gpu() else { return };
    gpu.set_one_token_stream(false);
    let mut rng = Rng(0x51ed_2701);
    let mut failures = Vec::new();
    for format in [QuantFormat::Q4, QuantFormat::Q4Min, QuantFormat::Q8, QuantFormat::Q8Min] {
        for (hidden, ffn, out_rows) in [(96, 160, 48), (256, 64, 32), (4096, 13696, 64)] {
            let up = random_matrix(format, 2 * ffn, hidden, &mut rng);
            let down = random_matrix(format, out_rows, ffn, &mut rng);
            let (upd, downd) = (gpu.upload_new(&up.bytes, "up").unwrap(), gpu.upload_new(&down.bytes, "down").unwrap());
            let upp = TiledPtr { base: device_ptr(&upd), shape: up.shape };
            let downp = TiledPtr { base: device_ptr(&downd), shape: down.shape };
            let x: Vec<f32> = (0..hidden).map(|_| rng.uniform() * 4.0).collect();
            let xd = gpu.upload_new(&x, "x").unwrap();
            let codes = gpu.alloc::<u8>(one_token_codes_bytes(ffn), "codes").unwrap();
            let base: Vec<f32> = (0..out_rows).map(|i| (i % 5) as f32).collect();
            let run = |hand_off: bool| {
                let ffn_out = gpu.alloc::<f32>(ffn, "ffn").unwrap();
                let out = gpu.upload_new(&base, "out").unwrap();
                let c = device_ptr(&codes);
                let (produce, consume) = if hand_off {
                    (
                        OneTokenCodes { output: c, ..OneTokenCodes::default() },
                        OneTokenCodes { input: c, ..OneTokenCodes::default() },
                    )
                } else {
                    (OneTokenCodes::default(), OneTokenCodes::default())
                };
                let (fp, op) = (device_ptr(&ffn_out), device_ptr(&out));
                // SAFETY: every buffer sized for one token above.
                unsafe {
                    gpu.qmma(upp, device_ptr(&xd), None, None, 1, 0, fp, GemvMode::SwiGlu, None, None, produce)
                        .unwrap();
                    gpu.qmma(downp, fp, None, None, 1, 0, op, GemvMode::Accumulate, None, None, consume).unwrap();
                }
                let mut f = vec![0f32; ffn];
                let mut o = vec![0f32; out_rows];
                gpu.download(&ffn_out, &mut f, "ffn").unwrap();
                gpu.download(&out, &mut o, "out").unwrap();
                (f, o)
            };
            let label = format!("{format:?} {hidden}→{ffn}→{out_rows}");
            let (f0, o0) = run(false);
            let (f1, o1) = run(true);
            if f0 != f1 {
                failures.push(format!("{label}: SwiGLU outputs differ with codes written"));
            }
            if o0 != o1 {
                failures.push(format!("{label}: the product over handed-over codes differs"));
            }
            let mut got = vec![0u8; one_token_codes_bytes(ffn)];
            gpu.download(&codes, &mut got, "codes").unwrap();
            let nb = ffn / BLOCK;
            for b in 0..nb {
                let gd = f32::from_le_bytes(got[b * 16..b * 16 + 4].try_into().unwrap());
                let gs = i32::from_le_bytes(got[b * 16 + 4..b * 16 + 8].try_into().unwrap());
                let codes = &got[nb * 16 + b * BLOCK..nb * 16 + (b + 1) * BLOCK];
                if !block_codes_match(&f1[b * BLOCK..(b + 1) * BLOCK], codes, gd, gs, false) {
                    failures.push(format!("{label}: codes of block {b} (d {gd}, Σ {gs})"));
                    break;
                }
            }
        }
    }
    for f in &failures {
        eprintln!("{f}");
    }
    assert!(failures.is_empty(), "{} failures", failures.len());
}

#[test]
fn step_codes_hand_off_changes_nothing() {
    use chatglm_cuda::quant::step_codes_bytes;
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(0x5eed_2202);
    let mut failures = Vec::new();
    let mut checked = 0;
    for format in [QuantFormat::Q4, QuantFormat::Q4Min, QuantFormat::Q8, QuantFormat::Q8Min] {
        // 160: the last group of 64 outputs holds one block; 13,696: ChatGLM2's.
        for (hidden, ffn, out_rows) in [(96, 160, 48), (4096, 13696, 64)] {
            let up = random_matrix(format, 2 * ffn, hidden, &mut rng);
            let down = random_matrix(format, out_rows, ffn, &mut rng);
            let (upd, downd) = (gpu.upload_new(&up.bytes, "up").unwrap(), gpu.upload_new(&down.bytes, "down").unwrap());
            let upp = TiledPtr { base: device_ptr(&upd), shape: up.shape };
            let downp = TiledPtr { base: device_ptr(&downd), shape: down.shape };
            for n in [9, 32, 61] {
                for form in [ActivationForm::Q8, ActivationForm::F16] {
                    if form == ActivationForm::F16 && !gpu.f16_activations_supported(n, format) {
                        continue;
                    }
                    let x: Vec<f32> = (0..n * hidden).map(|_| rng.uniform() - 0.5).collect();
                    let xd = gpu.upload_new(&x, "x").unwrap();
                    let (qb, sb) = Gpu::quantized_x_bytes(n, hidden);
                    let (xq, xs) = (gpu.alloc::<u8>(qb, "xq").unwrap(), gpu.alloc::<u8>(sb, "xs").unwrap());
                    let (fq, fs) = Gpu::quantized_x_bytes(n, ffn);
                    let handed = gpu.alloc_zeros::<u8>(step_codes_bytes(n, ffn), "handed").unwrap();
                    let launched = gpu.alloc_zeros::<u8>(step_codes_bytes(n, ffn), "quantize_x").unwrap();
                    let base: Vec<f32> = (0..n * out_rows).map(|i| (i % 5) as f32).collect();
                    let run = |hand_off: bool| {
                        let ffn_out = gpu.alloc::<f32>(n * ffn, "ffn").unwrap();
                        let out = gpu.upload_new(&base, "out").unwrap();
                        let (fp, op) = (device_ptr(&ffn_out), device_ptr(&out));
                        let (h, l) = (device_ptr(&handed), device_ptr(&launched));
                        let produce =
                            OneTokenCodes { output: if hand_off { h } else { 0 }, ..OneTokenCodes::default() };
                        let (xqp, xsp) = (device_ptr(&xq), device_ptr(&xs));
                        let q = Some((xqp, xsp, form));
                        // SAFETY: every buffer sized for n tokens above.
                        unsafe {
                            gpu.quantize_x(device_ptr(&xd), n, hidden, None, format, form, xqp, xsp).unwrap();
                            gpu.qmma(upp, device_ptr(&xd), None, q, n, 0, fp, GemvMode::SwiGlu, None, None, produce)
                                .unwrap();
                            let src = if hand_off {
                                h
                            } else {
                                gpu.quantize_x(fp, n, ffn, None, format, form, l, l + fq as u64).unwrap();
                                l
                            };
                            let q2 = Some((src, src + fq as u64, form));
                            gpu.qmma(
                                downp,
                                fp,
                                None,
                                q2,
                                n,
                                0,
                                op,
                                GemvMode::Accumulate,
                                None,
                                None,
                                Default::default(),
                            )
                            .unwrap();
                        }
                        let mut f = vec![0f32; n * ffn];
                        let mut o = vec![0f32; n * out_rows];
                        gpu.download(&ffn_out, &mut f, "ffn").unwrap();
                        gpu.download(&out, &mut o, "out").unwrap();
                        (f, o)
                    };
                    let label = format!("{format:?} {hidden}→{ffn}→{out_rows} n={n} {form:?}");
                    let (f0, o0) = run(false);
                    let (f1, o1) = run(true);
                    checked += 1;
                    // Bit for bit (random int8 weights can take f16 sums past their
                    // range: infinities and NaN must match too).
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    if bits(&f0) != bits(&f1) {
                        failures.push(format!("{label}: SwiGLU outputs differ with the hand-off"));
                    }
                    if bits(&o0) != bits(&o1) {
                        failures.push(format!("{label}: the product over handed activations differs"));
                    }
                    // The handed bytes are quantize_x's: its codes (or f16 values)
                    // of the step's tokens, and (q8) every scale, padding too.
                    let mut want = vec![0u8; fq + fs];
                    let mut got = vec![0u8; fq + fs];
                    gpu.download(&launched, &mut want, "quantize_x").unwrap();
                    gpu.download(&handed, &mut got, "handed").unwrap();
                    let value_bytes = n * ffn * if form == ActivationForm::F16 { 2 } else { 1 };
                    if got[..value_bytes] != want[..value_bytes] {
                        failures.push(format!("{label}: handed values differ from quantize_x's"));
                    }
                    if form == ActivationForm::Q8 && got[fq..] != want[fq..] {
                        failures.push(format!("{label}: handed scales differ from quantize_x's"));
                    }
                }
            }
        }
    }
    for f in &failures {
        eprintln!("{f}");
    }
    assert!(failures.is_empty(), "{} failures", failures.len());
    assert!(checked >= 24, "{checked} cases");
}

#[test]
fn norm_fold_matches_the_normed_launch() {
    // A residual product (accumulate) folding the next RMSNorm — its output
    // also as f16(v·g) with each token's sums of squares — and the normed
    // product after it applying the norm to its sums, against quantize_x's
    // normed f16 activations between the two: the residual outputs bit for
    // bit, the sums of squares and the consumer's outputs (plain and SwiGLU)
    // to f16 rounding; hidden sizes of whole and partial 128-row groups.
    use chatglm_cuda::quant::{fold_codes_bytes, fold_sums};
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng(0x5eed_f01d);
    let mut failures = Vec::new();
    let mut checked = 0;
    let eps = 1e-5f32;
    for format in [QuantFormat::Q4, QuantFormat::Q4Min, QuantFormat::Q8, QuantFormat::Q8Min] {
        for (k, hidden, rows) in [(256, 1120, 320), (4096, 4096, 512)] {
            let down = random_matrix(format, hidden, k, &mut rng);
            let next = random_matrix(format, rows, hidden, &mut rng);
            let (dd, nd) = (gpu.upload_new(&down.bytes, "down").unwrap(), gpu.upload_new(&next.bytes, "next").unwrap());
            let downp = TiledPtr { base: device_ptr(&dd), shape: down.shape };
            let nextp = TiledPtr { base: device_ptr(&nd), shape: next.shape };
            // Norm weights up to 3, so that the 30,000-sized residuals below
            // take v·g past f16's range (the fold's 2⁻³ keeps it in).
            let g: Vec<f32> = (0..hidden).map(|_| 2.0 + 2.0 * rng.uniform()).collect();
            let gd = gpu.upload_new(&g, "norm").unwrap();
            for n in [9, 32, 61] {
                if !gpu.f16_activations_supported(n, format) {
                    continue;
                }
                let form = ActivationForm::F16;
                let x: Vec<f32> = (0..n * k).map(|_| rng.uniform()).collect();
                // Residuals of ordinary size, but the first token's at f16's
                // limit in a few outlier channels (ChatGLM2's f16 residual stream
                // stays below 65,504).
                let base: Vec<f32> =
                    (0..n * hidden)
                        .map(|i| {
                            if i < hidden && i % 97 == 5 {
                                30000.0 + 1000.0 * rng.uniform()
                            } else {
                                4.0 * rng.uniform()
                            }
                        })
                        .collect();
                let xd = gpu.upload_new(&x, "x").unwrap();
                let (qb, sb) = Gpu::quantized_x_bytes(n, k.max(hidden));
                let (xq, xs) = (gpu.alloc::<u8>(qb, "xq").unwrap(), gpu.alloc::<u8>(sb, "xs").unwrap());
                let fold = gpu.alloc_zeros::<u8>(fold_codes_bytes(n, hidden), "fold").unwrap();
                for mode in [GemvMode::Store, GemvMode::SwiGlu] {
                    let out_cols = if mode == GemvMode::SwiGlu { rows / 2 } else { rows };
                    let run = |folded: bool| {
                        let resid = gpu.upload_new(&base, "residual").unwrap();
                        let y = gpu.alloc_zeros::<f32>(n * out_cols, "y").unwrap();
                        let (rp, yp, fp) = (device_ptr(&resid), device_ptr(&y), device_ptr(&fold));
                        let (xqp, xsp) = (device_ptr(&xq), device_ptr(&xs));
                        let q = Some((xqp, xsp, form));
                        let produce = if folded {
                            OneTokenCodes { output: fp, fold_norm: device_ptr(&gd), ..OneTokenCodes::default() }
                        } else {
                            OneTokenCodes::default()
                        };
                        // SAFETY: every buffer sized for n tokens above.
                        unsafe {
                            gpu.quantize_x(device_ptr(&xd), n, k, None, format, form, xqp, xsp).unwrap();
                            let acc = GemvMode::Accumulate;
                            gpu.qmma(downp, device_ptr(&xd), None, q, n, 0, rp, acc, None, None, produce).unwrap();
                            let (q2, consume) = if folded {
                                let normed = OneTokenCodes {
                                    normed_by: Some((fold_sums(fp, n, hidden), eps)),
                                    ..OneTokenCodes::default()
                                };
                                (Some((fp, 0, form)), normed)
                            } else {
                                let norm = Some((device_ptr(&gd), eps));
                                gpu.quantize_x(rp, n, hidden, norm, format, form, xqp, xsp).unwrap();
                                (q, OneTokenCodes::default())
                            };
                            gpu.qmma(nextp, rp, None, q2, n, 0, yp, mode, None, None, consume).unwrap();
                        }
                        let mut r = vec![0f32; n * hidden];
                        let mut o = vec![0f32; n * out_cols];
                        gpu.download(&resid, &mut r, "residual").unwrap();
                        gpu.download(&y, &mut o, "y").unwrap();
                        (r, o)
                    };
                    let label = format!("{format:?} {k}→{hidden}→{rows} n={n} {mode:?}");
                    let (r0, y0) = run(false);
                    let (r1, y1) = run(true);
                    checked += 1;
                    if r0 != r1 {
                        failures.push(format!("{label}: the residual product's outputs change with the fold"));
                    }
                    let scale = y0.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
                    let d = y0.iter().zip(&y1).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                    if d.is_nan() || d > 4e-3 * scale {
                        failures.push(format!(
                            "{label}: the folded consumer differs by {d:.3e} (outputs up to {scale:.3e})"
                        ));
                    }
                    // The sums of squares: every token, every group.
                    let mut got = vec![0u8; fold_codes_bytes(n, hidden)];
                    gpu.download(&fold, &mut got, "fold").unwrap();
                    let at = (fold_sums(0, n, hidden)) as usize;
                    for t in 0..n {
                        for grp in 0..hidden.div_ceil(128) {
                            let o = at + (grp * 64 + t) * 4;
                            let v = f32::from_le_bytes(got[o..o + 4].try_into().unwrap()) as f64;
                            let rows_g = grp * 128..hidden.min(grp * 128 + 128);
                            let want: f64 = rows_g.map(|i| (r1[t * hidden + i] as f64).powi(2)).sum();
                            if (v - want).abs() > 1e-5 * want.max(1.0) {
                                failures.push(format!("{label}: token {t} group {grp}: Σv² {v} against {want}"));
                            }
                        }
                    }
                }
            }
        }
    }
    for f in &failures {
        eprintln!("{f}");
    }
    assert!(failures.is_empty(), "{} failures", failures.len());
    assert!(checked >= 12, "{checked} cases");
}

#[test]
fn one_token_codes_are_refused_where_they_cannot_be_used() {
    let Some(gpu) = gpu() else { return };
    let m = random_matrix(QuantFormat::Q4, 2 * 48, 64, &mut Rng(7));
    let w = gpu.upload_new(&m.bytes, "w").unwrap();
    let wp = TiledPtr { base: device_ptr(&w), shape: m.shape };
    let buf = gpu.alloc::<f32>(4096, "buf").unwrap();
    let p = device_ptr(&buf);
    let out = OneTokenCodes { output: p, ..OneTokenCodes::default() };
    // SAFETY: each call is refused before any launch.
    unsafe {
        // 48 SwiGLU rows are one and a half blocks; stores have no pairs; two tokens.
        assert!(gpu.qmma(wp, p, None, None, 1, 0, p, GemvMode::SwiGlu, None, None, out).is_err());
        assert!(gpu.qmma(wp, p, None, None, 1, 0, p, GemvMode::Store, None, None, out).is_err());
        let input = OneTokenCodes { input: p, ..OneTokenCodes::default() };
        assert!(gpu.qmma(wp, p, None, None, 2, 0, p, GemvMode::Store, None, None, input).is_err());
        assert!(gpu.qmma(wp, p, Some((p, 1e-5)), None, 1, 0, p, GemvMode::Store, None, None, input).is_err());
        // A grouped step hands on SwiGLU outputs only, and takes its input as quantize_x's.
        let q = Some((p, p, ActivationForm::Q8));
        assert!(gpu.qmma(wp, p, None, q, 16, 0, p, GemvMode::Store, None, None, out).is_err());
        let both = OneTokenCodes { input: p, output: p, ..OneTokenCodes::default() };
        assert!(gpu.qmma(wp, p, None, q, 16, 0, p, GemvMode::SwiGlu, None, None, both).is_err());
        // The norm fold: from a grouped residual step with its buffer; folded
        // activations f16, in a grouped step, alone.
        let fold = OneTokenCodes { output: p, fold_norm: p, ..OneTokenCodes::default() };
        assert!(gpu.qmma(wp, p, None, q, 16, 0, p, GemvMode::Store, None, None, fold).is_err(), "not residual");
        assert!(gpu.qmma(wp, p, None, q, 16, 0, p, GemvMode::Accumulate, None, None, fold).is_err(), "q8_0 codes");
        let unbuffered = OneTokenCodes { fold_norm: p, ..OneTokenCodes::default() };
        assert!(gpu.qmma(wp, p, None, q, 16, 0, p, GemvMode::Accumulate, None, None, unbuffered).is_err());
        let normed = OneTokenCodes { normed_by: Some((p, 1e-5)), ..OneTokenCodes::default() };
        assert!(gpu.qmma(wp, p, None, q, 16, 0, p, GemvMode::Store, None, None, normed).is_err(), "q8_0 codes");
        assert!(gpu.qmma(wp, p, None, None, 1, 0, p, GemvMode::Store, None, None, normed).is_err(), "in-block");
        if gpu.f16_activations_supported(16, QuantFormat::Q4) {
            let h = Some((p, 0, ActivationForm::F16));
            let twice = OneTokenCodes { fold_norm: p, output: p, ..normed };
            assert!(gpu.qmma(wp, p, None, h, 16, 0, p, GemvMode::Accumulate, None, None, twice).is_err());
        }
    }
}
