//! Times the quantized products on the ChatGLM2-6B shapes (int4 and int8
//! tiled weights, 1 / 8 / 32 tokens) with CUDA events, rotating over 4 weight
//! copies so L2 cannot hold them, and prints the weight bytes streamed per
//! second: `cargo run --release -p chatglm-cuda --example qmma_bench`.
//! 32 tokens twice: over q8_0 activation codes and over f16 activations.

use chatglm_cuda::quant::{ActivationForm, QuantFormat, TileShape, TiledPtr};
use chatglm_cuda::{device_ptr, DType, GemvMode, Gpu};
use cudarc::driver::sys::CUevent_flags;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let gpu = Gpu::open(0)?;
    println!("{}", gpu.info());
    let shapes: [(&str, usize, usize, GemvMode, bool); 5] = [
        ("qkv+norm", 4608, 4096, GemvMode::Store, true),
        ("dense+residual", 4096, 4096, GemvMode::Accumulate, false),
        ("h_to_4h+norm+swiglu", 27392, 4096, GemvMode::SwiGlu, true),
        ("4h_to_h+residual", 4096, 13696, GemvMode::Accumulate, false),
        ("logits", 65024, 4096, GemvMode::Store, false),
    ];
    println!("{:6} {:22} {:>6} {:>4} {:>10} {:>9}", "format", "matrix", "tokens", "x", "us/call", "TB/s");
    for format in [QuantFormat::Q4, QuantFormat::Q8] {
        for (name, rows, cols, mode, norm) in shapes {
            let shape = TileShape::new(format, rows, cols)?;
            let bytes = shape.offsets().2;
            let copies: Vec<_> = (0..4)
                .map(|i| -> Result<_, Box<dyn std::error::Error>> {
                    let w = gpu.alloc::<u8>(bytes, "weights")?;
                    let p = TiledPtr { base: device_ptr(&w), shape };
                    // SAFETY: w holds the shape's bytes.
                    unsafe { gpu.fill_tiled_random(p, i + 1, 0x1c00, 0)? };
                    Ok(w)
                })
                .collect::<Result<_, _>>()?;
            let steps = [
                (1usize, ActivationForm::Q8),
                (8, ActivationForm::Q8),
                (32, ActivationForm::Q8),
                (32, ActivationForm::F16),
            ];
            for (n, form) in steps {
                if form == ActivationForm::F16 && !gpu.f16_activations_supported(n, format) {
                    continue;
                }
                let x = gpu.alloc::<f32>(n * cols, "x")?;
                let nw = gpu.alloc::<f32>(cols, "norm")?;
                let out = gpu.alloc_zeros::<f32>(n * rows, "out")?;
                let (qb, sb) = Gpu::quantized_x_bytes(n, cols);
                let xq = gpu.alloc::<u8>(qb, "xq")?;
                let xs = gpu.alloc::<u8>(sb, "xs")?;
                // SAFETY: sizes as allocated.
                unsafe {
                    gpu.fill_random(device_ptr(&x), n * cols, DType::F32, 7, 1.0)?;
                    gpu.fill_random(device_ptr(&nw), cols, DType::F32, 8, 1.0)?;
                }
                let norm_arg = norm.then(|| (device_ptr(&nw), 1e-5f32));
                let in_block = gpu.qmma_quantizes_in_block(n, cols);
                let call = |i: usize| {
                    let w = TiledPtr { base: device_ptr(&copies[i % 4]), shape };
                    // SAFETY: buffers sized above for n tokens.
                    unsafe {
                        let (xp, op) = (device_ptr(&x), device_ptr(&out));
                        if in_block {
                            gpu.qmma(w, xp, norm_arg, None, n, 0, op, mode, None, None, Default::default())
                        } else {
                            gpu.quantize_x(
                                device_ptr(&x),
                                n,
                                cols,
                                norm_arg,
                                format,
                                form,
                                device_ptr(&xq),
                                device_ptr(&xs),
                            )?;
                            let q = Some((device_ptr(&xq), device_ptr(&xs), form));
                            gpu.qmma(w, xp, None, q, n, 0, op, mode, None, None, Default::default())
                        }
                    }
                };
                for i in 0..8 {
                    call(i)?;
                }
                let reps = 64;
                let start = gpu.stream().record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
                for i in 0..reps {
                    call(i)?;
                }
                let end = gpu.stream().record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
                gpu.synchronize()?;
                let us = start.elapsed_ms(&end)? as f64 * 1e3 / reps as f64;
                let x = if form == ActivationForm::F16 { "f16" } else { "q8" };
                println!(
                    "{:6} {name:22} {n:>6} {x:>4} {us:10.2} {:9.3}",
                    format.name(),
                    bytes as f64 / (us * 1e-6) / 1e12
                );
            }
        }
    }
    Ok(())
}
