//! Times the decode mat-vec on the ChatGLM2-6B shapes, batch 1, f16, for the
//! 4-row, 8-row and lean 8-row blocks and the automatic choice, with CUDA events (each
//! measurement rotates over 4 weight copies so L2 cannot hold them):
//! `cargo run --release -p chatglm-cuda --example gemv_bench` on a GPU machine.

use chatglm_cuda::{device_ptr, DType, GemvLean, GemvMode, Gpu};
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
    println!("{:22} {:>6} {:>10} {:>9}", "matrix", "rows/b", "us/call", "TB/s");
    for (name, rows, cols, mode, norm) in shapes {
        let copies: Vec<_> = (0..4)
            .map(|i| -> Result<_, Box<dyn std::error::Error>> {
                let w = gpu.alloc::<u16>(rows * cols, "weights")?;
                // SAFETY: w holds rows×cols f16.
                unsafe { gpu.fill_random(device_ptr(&w), rows * cols, DType::F16, i as u64 + 1, 0.03)? };
                Ok(w)
            })
            .collect::<Result<_, _>>()?;
        let x = gpu.alloc::<f32>(cols, "x")?;
        let nw = gpu.alloc::<f32>(cols, "norm")?;
        let out = gpu.alloc_zeros::<f32>(rows, "out")?;
        // SAFETY: sizes as allocated.
        unsafe {
            gpu.fill_random(device_ptr(&x), cols, DType::F32, 7, 1.0)?;
            gpu.fill_random(device_ptr(&nw), cols, DType::F32, 8, 1.0)?;
        }
        for (force, lean) in
            [(4usize, GemvLean::Never), (8, GemvLean::Never), (8, GemvLean::Always), (0, GemvLean::ByShape)]
        {
            gpu.force_gemv_rows(force);
            gpu.set_gemv_lean(lean);
            let norm_arg = norm.then(|| (device_ptr(&nw), 1e-5f32));
            let call = |i: usize| {
                // SAFETY: w rows×cols f16, x cols f32, out ≥ rows f32, nw cols.
                unsafe {
                    gpu.gemv(
                        device_ptr(&copies[i % 4]),
                        DType::F16,
                        device_ptr(&x),
                        0,
                        device_ptr(&out),
                        1,
                        rows,
                        cols,
                        mode,
                        norm_arg,
                        None,
                    )
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
            let label = match (force, lean) {
                (0, _) => "auto".to_string(),
                (8, GemvLean::Always) => "8 lean".to_string(),
                _ => force.to_string(),
            };
            println!("{name:22} {label:>6} {us:10.2} {:9.3}", (rows * cols * 2) as f64 / (us * 1e-6) / 1e12);
        }
    }
    gpu.force_gemv_rows(0);
    gpu.set_gemv_lean(GemvLean::ByShape);
    Ok(())
}
