//! The arithmetic ceiling of the AVX2 prefill tiles' instruction mixes on
//! this machine: each mix of the 4-row × 2-token packed tiles (and the 4 × 3
//! f16 tile) run from L1-resident data with none of the tiles' bookkeeping
//! (block-offset corrections, scale spreads, horizontal sums, output
//! stores), so the GFLOP/s it reaches bounds what a tile of that formulation
//! can reach. `kernel_bench` in the same run gives the tiles' own figure.
//!
//! `cargo run --release -p chatglm-cpu --example avx2_ceiling -- [threads] [seconds]`

fn main() {
    let args: Vec<f64> = std::env::args().skip(1).map(|a| a.parse().expect("numeric arguments")).collect();
    let threads = args.first().copied().unwrap_or(2.0) as usize;
    let seconds = args.get(1).copied().unwrap_or(2.0);
    #[cfg(target_arch = "x86_64")]
    {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")) {
            eprintln!("error: this machine has no AVX2 + FMA + F16C");
            std::process::exit(1);
        }
        println!("{:28} {:>10}   ({threads} threads, {seconds} s each)", "mix", "GFLOP/s");
        for (name, run) in mixes::ALL {
            let gflops = mixes::measure(run, threads, seconds);
            println!("{name:28} {gflops:10.1}");
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (threads, seconds);
        eprintln!("error: the AVX2 ceilings are x86-64 only");
        std::process::exit(1);
    }
}

#[cfg(target_arch = "x86_64")]
mod mixes {
    use std::arch::x86_64::*;
    use std::hint::black_box;
    use std::time::Instant;

    /// One pass over `iters` tiles' inner steps; returns FLOP done (2 per multiply-add).
    pub type Mix = fn(&[u8], &[i8], usize) -> f64;

    // SAFETY (each entry): main checks AVX2, FMA and F16C before any mix runs;
    // the mixes read within the 4 KB buffers `measure` passes.
    pub const ALL: [(&str, Mix); 5] = [
        // SAFETY: as above.
        ("q4_0 4x2 (maddubs)", |w, x, n| unsafe { q4_0(w, x, n) }),
        // SAFETY: as above.
        ("q8_0 4x2 (sign + maddubs)", |w, x, n| unsafe { q8_0(w, x, n) }),
        // SAFETY: as above.
        ("f16 4x3 (cvtph2ps + fma)", |w, x, n| unsafe { f16::<4, 3>(w, x, n) }),
        // SAFETY: as above.
        ("f16 3x4 (cvtph2ps + fma)", |w, x, n| unsafe { f16::<3, 4>(w, x, n) }),
        // SAFETY: as above.
        ("f16 2x6 (cvtph2ps + fma)", |w, x, n| unsafe { f16::<2, 6>(w, x, n) }),
    ];

    /// Runs `mix` on `threads` threads for about `seconds`; GFLOP/s of all threads.
    pub fn measure(mix: Mix, threads: usize, seconds: f64) -> f64 {
        let w: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        // Every fourth byte 0x3f: read as f32 (the f16 mix), the activations are normal numbers near 1.
        let x: Vec<i8> =
            (0..4096u32).map(|i| if i % 4 == 3 { 0x3f } else { (i.wrapping_mul(40_503) >> 8) as i8 }).collect();
        let chunk = 1 << 16;
        let start = Instant::now();
        let flop: f64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut done = 0.0;
                        while start.elapsed().as_secs_f64() < seconds {
                            done += mix(black_box(&w), black_box(&x), chunk);
                        }
                        done
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("worker")).sum()
        });
        flop / start.elapsed().as_secs_f64() / 1e9
    }

    /// Offset of step `i` in a 4 KB buffer (moving, so no load is loop-invariant).
    #[inline(always)]
    fn at(i: usize, lane: usize) -> usize {
        ((i * 64 + lane * 128) & 4095) & !31
    }

    /// The q4_0 tile's inner step: for 4 rows × 2 halves, the nibble decode
    /// (shared by the 2 tokens), then per token 2 `maddubs`, an add, a
    /// `madd`, a convert, the activation-scale multiply and the weight-scale FMA.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_0(w: &[u8], x: &[i8], iters: usize) -> f64 {
        let (pw, px) = (w.as_ptr(), x.as_ptr());
        let mask = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let (dx, dw) = (_mm256_set1_ps(0.5), _mm256_set1_ps(0.25));
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        for i in 0..iters {
            for k in 0..2 {
                let xs = activations(px, i, k);
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let v = _mm256_loadu_si256(pw.add(at(i, 2 * r + k)) as *const __m256i);
                    let (lo, hi) = (_mm256_and_si256(v, mask), _mm256_and_si256(_mm256_srli_epi16(v, 4), mask));
                    for (t, acc_rt) in acc_r.iter_mut().enumerate() {
                        let s16 =
                            _mm256_add_epi16(_mm256_maddubs_epi16(lo, xs[t][0]), _mm256_maddubs_epi16(hi, xs[t][1]));
                        let p = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(s16, ones)), dx);
                        *acc_rt = _mm256_fmadd_ps(p, dw, *acc_rt);
                    }
                }
            }
        }
        sink(&acc);
        (iters * 4 * 2 * 2 * 64 * 2) as f64
    }

    /// The q8_0 tile's inner step: per row and half the sign flip and
    /// magnitudes of the weights (shared by the 2 tokens), per token 2 `sign`,
    /// 2 `maddubs`, 2 `madd`, an add, a convert, a multiply and an FMA.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0(w: &[u8], x: &[i8], iters: usize) -> f64 {
        let (pw, px) = (w.as_ptr(), x.as_ptr());
        let flip = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi16(1);
        let (dx, dw) = (_mm256_set1_ps(0.5), _mm256_set1_ps(0.25));
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        for i in 0..iters {
            for k in 0..2 {
                let xs = activations(px, i, k);
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let wv: [__m256i; 2] = std::array::from_fn(|h| {
                        _mm256_xor_si256(_mm256_loadu_si256(pw.add(at(i, 4 * r + 2 * k + h)) as *const __m256i), flip)
                    });
                    let abs = [_mm256_sign_epi8(wv[0], wv[0]), _mm256_sign_epi8(wv[1], wv[1])];
                    for (t, acc_rt) in acc_r.iter_mut().enumerate() {
                        let plo = _mm256_maddubs_epi16(abs[0], _mm256_sign_epi8(xs[t][0], wv[0]));
                        let phi = _mm256_maddubs_epi16(abs[1], _mm256_sign_epi8(xs[t][1], wv[1]));
                        let s = _mm256_add_epi32(_mm256_madd_epi16(plo, ones), _mm256_madd_epi16(phi, ones));
                        let p = _mm256_mul_ps(_mm256_cvtepi32_ps(s), dx);
                        *acc_rt = _mm256_fmadd_ps(p, dw, *acc_rt);
                    }
                }
            }
        }
        sink(&acc);
        (iters * 4 * 2 * 2 * 64 * 2) as f64
    }

    /// The f16 tile's inner step: 8 columns of R rows (converted once) × T
    /// tokens. R × T = 12 FMAs a step whatever the shape; fewer rows convert
    /// fewer weights a step (the 4×3 tile's shape against 3×4 and 2×6: does
    /// `vcvtph2ps` compete with the FMAs?).
    // The 4×3 branch walks the sums row-major over a token-major array: indices read plainer than iterators.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16<const R: usize, const T: usize>(w: &[u8], x: &[i8], iters: usize) -> f64 {
        let (pw, px) = (w.as_ptr(), x.as_ptr() as *const f32);
        let mut acc = [[_mm256_setzero_ps(); R]; T];
        for i in 0..iters {
            // Whichever operand has fewer vectors stays in registers, the other
            // is loaded next to its FMAs: 4×3 holds the 3 activation vectors
            // (16 registers with 12 sums and a weight), 3×4 and 2×6 the
            // converted weights (16 and 15); the other way round spills.
            if R > T {
                let xs: [__m256; T] = std::array::from_fn(|t| _mm256_loadu_ps(px.add(at(i, t) / 4)));
                for r in 0..R {
                    let wv = _mm256_cvtph_ps(_mm_loadu_si128(pw.add(at(i, T + r) & !15) as *const __m128i));
                    for t in 0..T {
                        acc[t][r] = _mm256_fmadd_ps(wv, xs[t], acc[t][r]);
                    }
                }
            } else {
                let ws: [__m256; R] = std::array::from_fn(|r| {
                    _mm256_cvtph_ps(_mm_loadu_si128(pw.add(at(i, T + r) & !15) as *const __m128i))
                });
                for (t, acc_t) in acc.iter_mut().enumerate() {
                    let xv = _mm256_loadu_ps(px.add(at(i, t) / 4));
                    for (r, acc_tr) in acc_t.iter_mut().enumerate() {
                        *acc_tr = _mm256_fmadd_ps(ws[r], xv, *acc_tr);
                    }
                }
            }
        }
        black_box(&acc);
        (iters * R * T * 8 * 2) as f64
    }

    /// Half k's activation codes (lo and hi vectors) of the 2 tokens at step i.
    #[inline(always)]
    unsafe fn activations(px: *const i8, i: usize, k: usize) -> [[__m256i; 2]; 2] {
        std::array::from_fn(|t| {
            std::array::from_fn(|h| _mm256_loadu_si256(px.add(at(i, 4 * k + 2 * t + h)) as *const __m256i))
        })
    }

    fn sink<const T: usize>(acc: &[[__m256; T]; 4]) {
        black_box(acc);
    }
}
