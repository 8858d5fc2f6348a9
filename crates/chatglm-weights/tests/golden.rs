//! Every dev layout loads and matches weights_summary.json.

mod common;

use chatglm_weights::{names, Checkpoint, CheckpointFormat, DType};
use common::{layout_dir, testdata, LAYOUTS};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct Summary {
    shape: Vec<usize>,
    sum: f64,
    abs_sum: f64,
    first8: Vec<f32>,
}

fn summaries() -> BTreeMap<String, Summary> {
    let path = testdata().join("dev/golden/weights_summary.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn every_layout_matches_the_golden_summary() {
    let golden = summaries();
    for layout in LAYOUTS {
        let ckpt = Checkpoint::open(&layout_dir(layout)).unwrap();
        ckpt.validate_shapes().unwrap();
        let (format, dtype) = match layout {
            "safetensors-f32" => (CheckpointFormat::Safetensors, DType::F32),
            "safetensors-sharded-f16" => (CheckpointFormat::Safetensors, DType::F16),
            "pytorch-f32" => (CheckpointFormat::PyTorchBin, DType::F32),
            _ => (CheckpointFormat::PyTorchBin, DType::BF16),
        };
        assert_eq!(ckpt.format, format, "{layout}");
        assert!(ckpt.tokenizer_path.is_some(), "{layout}");
        assert_eq!(ckpt.len(), golden.len(), "{layout}");
        // Relative error of one stored element: f32 exact, f16 2^-11, bf16 2^-8.
        let eps = match dtype {
            DType::F32 => 1e-7,
            DType::F16 => 1.0 / 2048.0,
            _ => 1.0 / 256.0,
        };
        let mut total = 0u64;
        for (name, g) in &golden {
            let t = ckpt.tensor(name).unwrap();
            assert_eq!(t.dtype, dtype, "{layout} {name}");
            assert_eq!(t.shape, g.shape, "{layout} {name}");
            assert!(t.data.is_mapped(), "{layout} {name} was copied");
            let v = t.to_f32().unwrap();
            let sum: f64 = v.iter().map(|&x| f64::from(x)).sum();
            let abs_sum: f64 = v.iter().map(|&x| f64::from(x).abs()).sum();
            let tol = eps * g.abs_sum + 1e-9;
            assert!((sum - g.sum).abs() <= tol, "{layout} {name}: sum {sum} vs {}", g.sum);
            assert!((abs_sum - g.abs_sum).abs() <= tol, "{layout} {name}: abs_sum {abs_sum} vs {}", g.abs_sum);
            for (i, (&x, &y)) in v.iter().zip(&g.first8).enumerate() {
                assert!((x - y).abs() <= (eps as f32) * y.abs() + 1e-7, "{layout} {name}[{i}]: {x} vs {y}");
            }
            assert_eq!(v.len().min(8), g.first8.len(), "{layout} {name}");
            total += t.n_bytes() as u64;
        }
        assert_eq!(ckpt.total_bytes(), total);
    }
}

#[test]
fn names_table_matches_the_dev_checkpoint() {
    let ckpt = Checkpoint::open(&layout_dir("safetensors-f32")).unwrap();
    let expected = names::expected_tensors(&ckpt.config);
    // Every stored tensor is either expected or the optional inv_freq.
    assert_eq!(expected.len() + 1, ckpt.len());
    assert_eq!(expected[0].0, names::WORD_EMBEDDINGS);
    assert_eq!(names::layer(1, names::QKV_BIAS), "transformer.encoder.layers.1.self_attention.query_key_value.bias");
    let params: u64 = expected.iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum();
    assert_eq!(params, ckpt.config.parameter_count());
    assert!(ckpt.tensor(names::ROTARY_INV_FREQ).is_ok());
}

#[test]
fn missing_tensor_error_names_tensor_and_checkpoint() {
    let ckpt = Checkpoint::open(&layout_dir("pytorch-f32")).unwrap();
    let err = ckpt.tensor("transformer.nope").unwrap_err().to_string();
    assert!(err.contains("transformer.nope") && err.contains("pytorch-f32"), "{err}");
}
