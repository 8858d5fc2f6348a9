//! Property tests: random mutations and truncations of valid GGUF files never
//! panic the reader (nor the model layer on top); they may only return errors.

mod common;

use std::path::Path;

use chatglm_weights::gguf::{
    model::config_metadata, parse_gguf_bytes, GgufArray, GgufModel, GgufTensorSpec, GgufValue, GgufWriter,
};
use chatglm_weights::DType;
use proptest::prelude::*;

/// A small file with every metadata kind (nested arrays, strings, bools) and three tensors.
fn valid_small() -> Vec<u8> {
    let metadata = vec![
        ("general.architecture".to_string(), GgufValue::String("chatglm".into())),
        ("general.alignment".to_string(), GgufValue::U32(32)),
        ("a.bool".to_string(), GgufValue::Bool(true)),
        ("a.i64".to_string(), GgufValue::I64(-5)),
        ("a.strings".to_string(), GgufValue::Array(GgufArray::String(vec!["▁x".into(), "<0x0A>".into()]))),
        ("a.nested".to_string(), GgufValue::Array(GgufArray::Array(vec![GgufArray::I32(vec![1, 2])]))),
        ("a.bools".to_string(), GgufValue::Array(GgufArray::Bool(vec![true, false]))),
    ];
    let tensors = vec![
        GgufTensorSpec { name: "token_embd.weight".into(), dtype: DType::Q8_0, shape: vec![2, 32] },
        GgufTensorSpec { name: "blk.0.attn_norm.weight".into(), dtype: DType::F32, shape: vec![4] },
        GgufTensorSpec { name: "blk.0.ffn_up.weight".into(), dtype: DType::Q5_1, shape: vec![1, 64] },
    ];
    let mut w = GgufWriter::new(Vec::new(), Path::new("x"), &metadata, tensors).unwrap();
    w.write_data(&[3u8; 68]).unwrap();
    w.write_data(&[0u8; 16]).unwrap();
    w.write_data(&[9u8; 48]).unwrap();
    w.finish().unwrap()
}

/// A complete tiny ChatGLM file (one layer, zero weights) for the model layer.
fn valid_model() -> Vec<u8> {
    let cfg = chatglm_weights::ModelConfig::from_json_str(
        r#"{"num_layers":1,"hidden_size":32,"num_attention_heads":2,"kv_channels":16,
        "multi_query_attention":true,"multi_query_group_num":1,"ffn_hidden_size":32,
        "padded_vocab_size":8,"seq_length":16,"add_qkv_bias":true}"#,
    )
    .unwrap();
    let plan = chatglm_weights::gguf::QuantizePlan::new(DType::Q4_0).tensors(&cfg).unwrap();
    let specs: Vec<_> = plan.iter().map(|t| t.spec.clone()).collect();
    let mut w =
        GgufWriter::new(Vec::new(), Path::new("x"), &config_metadata(&cfg, DType::Q4_0), specs.clone()).unwrap();
    for s in &specs {
        w.write_data(&vec![0u8; s.n_bytes().unwrap()]).unwrap();
    }
    w.finish().unwrap()
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    SetU64(usize, u64),
    Truncate(usize),
    Insert(usize, u8),
    Remove(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        2 => (any::<usize>(), prop_oneof![Just(u64::MAX), Just(1u64 << 32), Just(1u64 << 62), any::<u64>(), 0u64..300])
            .prop_map(|(i, v)| Mutation::SetU64(i, v)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<usize>().prop_map(Mutation::Remove),
    ]
}

/// Applies mutations; positions are mostly in the first `hot` bytes (the header).
fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation], hot: usize) -> Vec<u8> {
    for m in mutations {
        if bytes.is_empty() {
            break;
        }
        let len = bytes.len();
        let pick = |i: usize| if !i.is_multiple_of(4) { i % hot.min(len).max(1) } else { i % len };
        match *m {
            Mutation::Set(i, b) => {
                let at = pick(i);
                bytes[at] = b;
            }
            Mutation::SetU64(i, v) => {
                let at = pick(i).min(len.saturating_sub(8));
                let end = (at + 8).min(len);
                bytes[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
            Mutation::Truncate(i) => bytes.truncate(pick(i)),
            Mutation::Insert(i, b) => bytes.insert(pick(i), b),
            Mutation::Remove(i) => {
                bytes.remove(pick(i));
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_small_files_never_panic(mutations in prop::collection::vec(mutation(), 1..6)) {
        let bytes = mutate(valid_small(), &mutations, 400);
        let _ = parse_gguf_bytes(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn mutated_model_files_never_panic(mutations in prop::collection::vec(mutation(), 1..4)) {
        let base = valid_model();
        let header = parse_gguf_bytes(&base).unwrap().data_offset;
        let bytes = mutate(base, &mutations, header);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(model) = GgufModel::open(&path) {
            for t in model.tensors() {
                let _ = t.to_f32();
            }
        }
    }
}

#[test]
fn the_valid_inputs_are_valid() {
    parse_gguf_bytes(&valid_small()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, valid_model()).unwrap();
    let model = GgufModel::open(&path).unwrap();
    assert_eq!(model.config.num_layers, 1);
}
