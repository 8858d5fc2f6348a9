//! Property tests: random byte mutations and truncations of valid inputs
//! never panic the untrusted-byte parsers (they may only return errors).

mod common;

use std::path::Path;

use chatglm_weights::{parse_safetensors_bytes, pickle, serialize_safetensors, zip, DType};
use common::{layout_dir, state_dict_pickle, zip_stored};
use proptest::prelude::*;

/// A small valid safetensors file with three tensors and metadata-like padding.
fn valid_safetensors() -> Vec<u8> {
    let a: Vec<u8> = (0..24).collect();
    let b: Vec<u8> = (0..8).collect();
    serialize_safetensors(&[
        ("transformer.a", DType::F32, &[2, 3], &a),
        ("transformer.b", DType::F16, &[4], &b),
        ("transformer.c", DType::BF16, &[0], &[]),
    ])
    .unwrap()
}

/// The real data.pkl of the dev pytorch-f32 checkpoint.
fn valid_pickle() -> Vec<u8> {
    let bytes = std::fs::read(layout_dir("pytorch-f32").join("pytorch_model.bin")).unwrap();
    let entries = zip::read_entries(&bytes, Path::new("x")).unwrap();
    let pkl = entries.iter().find(|e| e.name.ends_with("data.pkl")).unwrap();
    bytes[pkl.data.clone()].to_vec()
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Remove(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<usize>().prop_map(Mutation::Remove),
    ]
}

/// Applies mutations; positions are biased toward the first `hot` bytes.
fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation], hot: usize) -> Vec<u8> {
    for m in mutations {
        if bytes.is_empty() {
            break;
        }
        let pick = |i: usize, len: usize| {
            if !i.is_multiple_of(4) {
                i % hot.min(len).max(1)
            } else {
                i % len
            }
        };
        match *m {
            Mutation::Set(i, b) => {
                let at = pick(i, bytes.len());
                bytes[at] = b;
            }
            Mutation::Truncate(i) => {
                let at = i % bytes.len();
                bytes.truncate(at);
            }
            Mutation::Insert(i, b) => {
                let at = pick(i, bytes.len());
                bytes.insert(at, b);
            }
            Mutation::Remove(i) => {
                let at = pick(i, bytes.len());
                bytes.remove(at);
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn safetensors_header_never_panics(ms in prop::collection::vec(mutation(), 1..8)) {
        let valid = valid_safetensors();
        let header_len = 8 + u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
        let _ = parse_safetensors_bytes(&mutate(valid, &ms, header_len));
    }

    #[test]
    fn pickle_never_panics(ms in prop::collection::vec(mutation(), 1..8)) {
        let valid = valid_pickle();
        let len = valid.len();
        let _ = pickle::read_state_dict(&mutate(valid, &ms, len));
    }

    #[test]
    fn zip_and_pickle_never_panic(ms in prop::collection::vec(mutation(), 1..6)) {
        let pkl = state_dict_pickle(&[("w", "0", 4, 0, &[2, 2], &[2, 1])]);
        let archive = zip_stored(&[("archive/data.pkl", &pkl), ("archive/data/0", &[0u8; 16])]);
        let len = archive.len();
        let bytes = mutate(archive, &ms, len);
        if let Ok(entries) = zip::read_entries(&bytes, Path::new("x")) {
            for e in entries {
                if let Some(data) = bytes.get(e.data) {
                    let _ = pickle::read_state_dict(data);
                }
            }
        }
    }
}

#[test]
fn valid_inputs_parse() {
    assert_eq!(parse_safetensors_bytes(&valid_safetensors()).unwrap().len(), 3);
    assert_eq!(pickle::read_state_dict(&valid_pickle()).unwrap().len(), 18);
}
