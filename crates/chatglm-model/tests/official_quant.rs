//! The official INT4/INT8 checkpoint layout (`quantization_bit`, int8
//! `weight` + per-row `weight_scale`): tiny checkpoints built by
//! `golden/official-quant/generate.py` load as q4_0/q8_0 and match their
//! dequantized reference (the official f16 extraction of every weight).

mod common;

use chatglm_model::{Backend, CpuBackend, LoadOptions, Model, WeightFormat};
use chatglm_weights::{Checkpoint, DType};
use common::{all_logits, diff_and_scale, official_quant};

const IDS: [u32; 12] = [64790, 64792, 30910, 13, 13, 55437, 31211, 12, 30954, 31123, 31155, 30962];

fn ids(vocab: usize) -> Vec<u32> {
    IDS.iter().map(|&i| i % vocab as u32).collect()
}

#[test]
fn official_weights_equal_the_dequantized_reference() {
    for (bits, dtype) in [(4, DType::Q4_0), (8, DType::Q8_0)] {
        let q = Checkpoint::open(&official_quant(&format!("chatglm2-int{bits}-tiny"))).unwrap();
        let r = Checkpoint::open(&official_quant(&format!("chatglm2-int{bits}-tiny-dequantized"))).unwrap();
        let mut quantized = 0;
        for t in r.tensors() {
            let got = q.tensor(&t.name).unwrap();
            assert_eq!(got.shape, t.shape, "{}", t.name);
            if got.dtype == dtype {
                quantized += 1;
            }
            let (a, b) = (got.to_f32().unwrap(), t.to_f32().unwrap());
            // The reference rounds q·scale to f16, as the official extraction does.
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                assert!((x - y).abs() <= y.abs() * 2e-3 + 1e-7, "{} [{i}]: {x} vs {y}", t.name);
            }
        }
        assert_eq!(quantized, 4 * q.config.num_layers, "int{bits}: every encoder matrix is {dtype}");
    }
}

#[test]
fn official_checkpoints_run_like_their_reference_on_the_cpu() {
    for bits in [4, 8] {
        let q = Checkpoint::open(&official_quant(&format!("chatglm2-int{bits}-tiny"))).unwrap();
        let r = Checkpoint::open(&official_quant(&format!("chatglm2-int{bits}-tiny-dequantized"))).unwrap();
        let load = |c: &Checkpoint, f| {
            Model::load(CpuBackend::for_config(&c.config), c, LoadOptions::new(f), &mut |_, _| {}).unwrap()
        };
        let reference = all_logits(&load(&r, WeightFormat::F32), &ids(r.config.padded_vocab_size));
        // As stored (q4_0 / q8_0 products with 8-bit activations, as the CPU runs them).
        let native = load(&q, WeightFormat::Auto);
        let fmt = native.backend.matrix_format(&native.weights.layers[0].qkv);
        assert!(fmt.starts_with(if bits == 4 { "q4_0" } else { "q8_0" }), "int{bits} loads as {fmt}");
        let (d, scale) = diff_and_scale(&all_logits(&native, &ids(q.config.padded_vocab_size)), &reference);
        eprintln!("int{bits} as stored: max |Δ| {d:.3e} (logits up to {scale:.2})");
        assert!(d <= 3e-2 * scale.max(1.0), "int{bits} as stored: {d}");
        // Dequantized to f32 at load: only the reference's f16 rounding differs.
        let (d, scale) =
            diff_and_scale(&all_logits(&load(&q, WeightFormat::F32), &ids(q.config.padded_vocab_size)), &reference);
        eprintln!("int{bits} as f32: max |Δ| {d:.3e}");
        assert!(d <= 2e-3 * scale.max(1.0), "int{bits} as f32: {d}");
    }
}
