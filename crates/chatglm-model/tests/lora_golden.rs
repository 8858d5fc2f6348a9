//! A PEFT LoRA adapter (targets query_key_value, dense, dense_h_to_4h,
//! dense_4h_to_h) merged at load into the tiny ChatGLM3 model, against the
//! logits PEFT's merged model gave (`golden/family/chatglm3/lora_golden.json`).

mod common;

use chatglm_model::{CpuBackend, LoadOptions, Model, WeightFormat};
use chatglm_weights::lora::LoraAdapter;
use chatglm_weights::Checkpoint;
use common::all_logits;
use serde_json::Value;
use std::path::PathBuf;

fn family(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../golden/family").join(path)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn a_peft_lora_adapter_merges_as_peft_does() {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(family("chatglm3/lora_golden.json")).unwrap()).unwrap();
    let ckpt = Checkpoint::open(&family("chatglm3/tiny/model")).unwrap();
    let adapter = LoraAdapter::open(&family("chatglm3/lora"), 1.0).unwrap();
    assert!((adapter.scaling as f64 - golden["scaling"].as_f64().unwrap()).abs() < 1e-6);
    let load = |adapters: &[LoraAdapter]| {
        Model::load_with_adapters(
            CpuBackend::for_config(&ckpt.config),
            &ckpt,
            LoadOptions::new(WeightFormat::F32),
            adapters,
            &mut |_, _| {},
        )
        .unwrap()
    };
    let merged = load(std::slice::from_ref(&adapter));
    let ids: Vec<u32> = golden["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let vocab = ckpt.config.padded_vocab_size;
    let got = all_logits(&merged, &ids);
    let n = ids.len();
    for (row, key) in [(0, "logits_first"), (n - 1, "logits_last")] {
        let want = floats(&golden[key]);
        let d = got[row * vocab..(row + 1) * vocab].iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(d <= 1e-4, "{key}: max |Δ| {d}");
    }
    let argmax: Vec<u64> =
        golden["argmax_per_position"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    for (p, &want) in argmax.iter().enumerate() {
        let row = &got[p * vocab..(p + 1) * vocab];
        let best = row.iter().enumerate().fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
        assert_eq!(best as u64, want, "argmax at {p}");
    }
    // The adapter changes the model (its effect is not lost in the merge).
    let base = all_logits(&load(&[]), &ids);
    let moved = base.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(moved > 1e-3, "the adapter changed nothing ({moved})");
}

#[test]
fn a_mismatching_adapter_is_refused_with_the_reason() {
    // The tiny ChatGLM3 adapter over the dev model of another width.
    let dev = Checkpoint::open(&chatglm_testdata::dir().join("dev/model/safetensors-f32")).unwrap();
    let adapter = LoraAdapter::open(&family("chatglm3/lora"), 1.0).unwrap();
    let shapes = chatglm_weights::lora::expected_shapes(&dev.config);
    // Same shapes here (both tiny models are 64 wide): a config of another width.
    let mut other = dev.config.clone();
    other.ffn_hidden_size = 96;
    let other_shapes = chatglm_weights::lora::expected_shapes(&other);
    assert!(adapter.check(|n| shapes.get(n).cloned()).is_ok());
    let e = adapter.check(|n| other_shapes.get(n).cloned()).unwrap_err().to_string();
    assert!(e.contains("mismatching adapter"), "{e}");
    let e = adapter.check(|_| None).unwrap_err().to_string();
    assert!(e.contains("no such weight"), "{e}");
    assert!(LoraAdapter::open(&family("chatglm3/tiny/model"), 1.0).is_err());
}

/// A safetensors file of f32 tensors, written by hand (8-byte header length,
/// the JSON header, the data).
fn write_safetensors(path: &std::path::Path, tensors: &[(&str, Vec<usize>)]) {
    let (mut header, mut data) = (serde_json::Map::new(), Vec::new());
    for (name, shape) in tensors {
        let n: usize = shape.iter().product();
        let start = data.len();
        data.extend((0..n).flat_map(|i| (i as f32 * 1e-3).to_le_bytes()));
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&Value::Object(header)).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn an_adapter_of_the_embedding_table_is_refused() {
    // No loader merges the table (it is gathered, not multiplied), so such an
    // adapter would change nothing: refused, not ignored.
    let dev = Checkpoint::open(&chatglm_testdata::dir().join("dev/model/safetensors-f32")).unwrap();
    let (vocab, hidden) = (dev.config.padded_vocab_size, dev.config.hidden_size);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("adapter_config.json"), r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4}"#)
        .unwrap();
    let stem = "base_model.model.transformer.embedding.word_embeddings";
    write_safetensors(
        &dir.path().join("adapter_model.safetensors"),
        &[(&format!("{stem}.lora_A.weight"), vec![2, hidden]), (&format!("{stem}.lora_B.weight"), vec![vocab, 2])],
    );
    let adapter = LoraAdapter::open(dir.path(), 1.0).unwrap();
    let shapes = chatglm_weights::lora::expected_shapes(&dev.config);
    let e = adapter.check(|n| shapes.get(n).cloned()).unwrap_err().to_string();
    assert!(e.contains("embedding table"), "{e}");
}
