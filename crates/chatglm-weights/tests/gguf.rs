//! GGUF reader and writer: a round trip of the dev model through the
//! library, and malformed files (built by editing a valid one) that must
//! each give a clear error naming the problem, never a panic.

mod common;

use std::path::Path;

use chatglm_weights::gguf::{
    convert_rows, model::config_metadata, parse_gguf_bytes, row_count, GgufArray, GgufFile, GgufModel, GgufTensorSpec,
    GgufValue, GgufWriter, QuantizePlan,
};
use chatglm_weights::{Checkpoint, DType, RopeScaling};
use common::layout_dir;

/// A small valid file: metadata of every kind, three tensors.
fn small_gguf() -> Vec<u8> {
    let metadata = vec![
        ("general.architecture".to_string(), GgufValue::String("test".into())),
        ("t.count".to_string(), GgufValue::U64(7)),
        ("t.tokens".to_string(), GgufValue::Array(GgufArray::String(vec!["a".into(), "bc".into()]))),
        ("t.scores".to_string(), GgufValue::Array(GgufArray::F32(vec![0.5, -1.0]))),
    ];
    let tensors = vec![
        GgufTensorSpec { name: "a".into(), dtype: DType::F32, shape: vec![2, 3] },
        GgufTensorSpec { name: "b".into(), dtype: DType::Q4_0, shape: vec![2, 32] },
        GgufTensorSpec { name: "c".into(), dtype: DType::BF16, shape: vec![5] },
    ];
    let mut w = GgufWriter::new(Vec::new(), Path::new("small.gguf"), &metadata, tensors).unwrap();
    w.write_tensor("a", &(0..24).collect::<Vec<u8>>()).unwrap();
    w.write_tensor("b", &[7u8; 36]).unwrap();
    w.write_tensor("c", &[1u8; 10]).unwrap();
    w.finish().unwrap()
}

fn err(bytes: &[u8]) -> String {
    match parse_gguf_bytes(bytes) {
        Ok(_) => panic!("parsed but should not"),
        Err(e) => e.to_string(),
    }
}

/// Byte offset of the first occurrence of `needle`.
fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes.windows(needle.len()).position(|w| w == needle).unwrap()
}

/// Offset of tensor `name`'s info (its name string's length field).
fn tensor_info_at(bytes: &[u8], name: &str) -> usize {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    // Tensor infos come after the metadata; search from there.
    let meta_end = find(bytes, b"t.scores") + 8 + 4 + 4 + 8 + 8;
    meta_end + find(&bytes[meta_end..], &key)
}

#[test]
fn valid_file_parses() {
    let bytes = small_gguf();
    let h = parse_gguf_bytes(&bytes).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.alignment, 32);
    assert_eq!(h.tensors.len(), 3);
    assert_eq!(h.get("t.count"), Some(&GgufValue::U64(7)));
    assert_eq!(h.tensors[1].dtype, DType::Q4_0);
    assert_eq!(h.tensors[1].shape, vec![2, 32]);
    assert_eq!(&bytes[h.tensors[1].file_range.clone()], &[7u8; 36][..]);
    assert!(h.tensors.iter().all(|t| t.file_range.start % 32 == 0));
}

#[test]
fn truncated() {
    let bytes = small_gguf();
    let c_end = parse_gguf_bytes(&bytes).unwrap().tensors[2].file_range.end;
    for keep in [0, 3, 4, 7, 12, 20, 30, 60, 100, c_end - 1] {
        let e = err(&bytes[..keep]);
        assert!(e.contains("truncated") || e.contains("exceeds") || e.contains("can hold at most"), "{keep}: {e}");
    }
}

#[test]
fn wrong_magic_and_version() {
    let mut bytes = small_gguf();
    bytes[0] = b'X';
    assert!(err(&bytes).contains("bad magic"));
    let mut bytes = small_gguf();
    for v in [0u32, 1, 4, u32::MAX] {
        bytes[4..8].copy_from_slice(&v.to_le_bytes());
        let e = err(&bytes);
        assert!(e.contains(&format!("unsupported GGUF version {v}")), "{e}");
    }
}

#[test]
fn absurd_counts_are_refused_before_allocating() {
    let mut bytes = small_gguf();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err(&bytes).contains("tensor count"), "{}", err(&bytes));
    let mut bytes = small_gguf();
    bytes[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(err(&bytes).contains("metadata count"));
    // The element count of the t.tokens array.
    let mut bytes = small_gguf();
    let at = find(&bytes, b"t.tokens") + 8 + 4 + 4;
    bytes[at..at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let e = err(&bytes);
    assert!(e.contains("element count of array t.tokens") && e.contains("can hold at most"), "{e}");
}

#[test]
fn huge_string_lengths() {
    let mut bytes = small_gguf();
    // The key length of the first metadata pair.
    bytes[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = err(&bytes);
    assert!(e.contains("string length") && e.contains("exceeds"), "{e}");
    let mut bytes = small_gguf();
    let at = find(&bytes, b"bc") - 8;
    bytes[at..at + 8].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert!(err(&bytes).contains("exceeds"));
}

#[test]
fn tensor_data_out_of_bounds_or_misaligned() {
    let bytes = small_gguf();
    let info = tensor_info_at(&bytes, "c");
    // name (8 + 1), n_dims (4), ne[0] (8), type (4), then the offset.
    let offset_at = info + 9 + 4 + 8 + 4;
    let mut b = bytes.clone();
    b[offset_at..offset_at + 8].copy_from_slice(&(1u64 << 20).to_le_bytes());
    let e = err(&b);
    assert!(e.contains("tensor c") && e.contains("data section"), "{e}");
    let mut b = bytes.clone();
    b[offset_at..offset_at + 8].copy_from_slice(&3u64.to_le_bytes());
    assert!(err(&b).contains("not a multiple of the alignment"));
    // Overlap: c at a's offset.
    let mut b = bytes.clone();
    b[offset_at..offset_at + 8].copy_from_slice(&0u64.to_le_bytes());
    assert!(err(&b).contains("overlap"));
    // A dimension so large the byte count overflows.
    let mut b = bytes;
    b[info + 13..info + 21].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = err(&b);
    assert!(e.contains("tensor c") && e.contains("too large"), "{e}");
}

#[test]
fn unknown_types() {
    let bytes = small_gguf();
    let info = tensor_info_at(&bytes, "a");
    // name (9), n_dims (4), ne (16), then the ggml type.
    let type_at = info + 9 + 4 + 16;
    let mut b = bytes.clone();
    b[type_at..type_at + 4].copy_from_slice(&12u32.to_le_bytes());
    let e = err(&b);
    assert!(e.contains("tensor a") && e.contains("unsupported ggml type Q4_K (12)"), "{e}");
    let mut b = bytes.clone();
    b[type_at..type_at + 4].copy_from_slice(&999u32.to_le_bytes());
    assert!(err(&b).contains("unknown (999)"));
    // Too many dimensions.
    let mut b = bytes.clone();
    b[info + 9..info + 13].copy_from_slice(&9u32.to_le_bytes());
    assert!(err(&b).contains("9 dimensions"));
    // An unknown metadata value type.
    let mut b = bytes;
    let at = find(&b, b"t.count") + 7;
    b[at..at + 4].copy_from_slice(&13u32.to_le_bytes());
    let e = err(&b);
    assert!(e.contains("t.count") && e.contains("unknown value type 13"), "{e}");
}

#[test]
fn alignment_and_duplicates() {
    let meta = |a: GgufValue| vec![("general.alignment".to_string(), a)];
    assert!(GgufWriter::new(Vec::new(), Path::new("x"), &meta(GgufValue::U32(24)), vec![]).is_err());
    let spec = vec![GgufTensorSpec { name: "w".into(), dtype: DType::F32, shape: vec![3] }];
    let mut w = GgufWriter::new(Vec::new(), Path::new("x"), &meta(GgufValue::U32(64)), spec).unwrap();
    w.write_tensor("w", &[0; 12]).unwrap();
    let bytes = w.finish().unwrap();
    let h = parse_gguf_bytes(&bytes).unwrap();
    assert_eq!((h.alignment, h.data_offset % 64), (64, 0));
    // Break the alignment value in place: 64 → 48.
    let mut b = bytes.clone();
    let at = find(&b, b"general.alignment") + 17 + 4;
    b[at..at + 4].copy_from_slice(&48u32.to_le_bytes());
    assert!(err(&b).contains("power of two"));
    // Duplicate keys: rename the second of two keys to the first.
    let two = vec![("k.a".to_string(), GgufValue::U8(1)), ("k.b".to_string(), GgufValue::U8(2))];
    let mut b = GgufWriter::new(Vec::new(), Path::new("x"), &two, vec![]).unwrap().finish().unwrap();
    let at = find(&b, b"k.b");
    b[at + 2] = b'a';
    assert!(err(&b).contains("appears twice"));
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.gguf");
    std::fs::write(&path, b"GGUF\x03\x00\x00\x00").unwrap();
    let e = GgufFile::open(&path).unwrap_err().to_string();
    assert!(e.contains("broken.gguf") && e.contains("truncated"), "{e}");
    std::fs::write(&path, small_gguf()).unwrap();
    let e = GgufModel::open(&path).unwrap_err().to_string();
    assert!(e.contains("broken.gguf") && e.contains("\"test\""), "{e}");
}

/// Writes the dev checkpoint as GGUF under `plan` with the library alone.
fn write_dev(plan: &QuantizePlan, path: &Path) -> Checkpoint {
    write_checkpoint(&layout_dir("safetensors-f32"), plan, path)
}

/// Writes the checkpoint in `dir` as GGUF under `plan` with the library alone.
fn write_checkpoint(dir: &Path, plan: &QuantizePlan, path: &Path) -> Checkpoint {
    let ckpt = Checkpoint::open(dir).unwrap();
    let tensors = plan.tensors(&ckpt.config).unwrap();
    let specs = tensors.iter().map(|t| t.spec.clone()).collect();
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut w = GgufWriter::new(file, path, &config_metadata(&ckpt.config, plan.format), specs).unwrap();
    for t in &tensors {
        let src = ckpt.tensor(&t.source).unwrap();
        // Row by row, as a streaming converter would.
        for r in 0..row_count(src) {
            let (mut scratch, mut out) = (Vec::new(), Vec::new());
            convert_rows(src, t.spec.dtype, r..r + 1, &mut scratch, &mut out).unwrap();
            w.write_data(&out).unwrap();
        }
    }
    w.finish().unwrap();
    ckpt
}

#[test]
fn dev_model_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    for format in [DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1]
    {
        let plan = QuantizePlan::new(format);
        let path = dir.path().join(format!("dev-{format}.gguf"));
        let ckpt = write_dev(&plan, &path);
        let model = GgufModel::open(&path).unwrap();
        assert_eq!(model.config, ckpt.config, "{format}");
        for t in plan.tensors(&ckpt.config).unwrap() {
            let got = model.tensor(&t.source).unwrap();
            assert!(got.data.is_mapped());
            assert_eq!((got.dtype, &got.shape), (t.spec.dtype, &t.spec.shape), "{}", t.source);
            let src = ckpt.tensor(&t.source).unwrap();
            let mut want = Vec::new();
            convert_rows(src, t.spec.dtype, 0..row_count(src), &mut Vec::new(), &mut want).unwrap();
            assert!(*got.data == want[..], "{format}: {} differs", t.source);
            if t.spec.dtype == DType::F32 {
                assert!(*got.data == *src.data, "{} must be copied exactly", t.source);
            }
        }
        assert_eq!(model.tensor("transformer.encoder.layers.1.mlp.dense_h_to_4h.weight").unwrap().shape, [320, 64]);
    }
}

/// Rewrites the GGUF file at `path` without our config key, as llama.cpp
/// would have written it (standard keys only).
fn drop_our_config_key(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let mut h = parse_gguf_bytes(&bytes).unwrap();
    h.metadata.retain(|(k, _)| k != "chatglm_rs.config_json");
    let specs =
        h.tensors.iter().map(|t| GgufTensorSpec { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone() });
    let mut w = GgufWriter::new(Vec::new(), path, &h.metadata, specs.collect()).unwrap();
    for t in &h.tensors {
        w.write_data(&bytes[t.file_range.clone()]).unwrap();
    }
    std::fs::write(path, w.finish().unwrap()).unwrap();
}

#[test]
fn config_is_rebuilt_without_our_key() {
    // A file as llama.cpp would write it: standard keys only.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llamacpp.gguf");
    let ckpt = write_dev(&QuantizePlan::new(DType::F32), &path);
    drop_our_config_key(&path);
    let model = GgufModel::open(&path).unwrap();
    let (a, b) = (&model.config, &ckpt.config);
    assert_eq!(
        (a.num_layers, a.hidden_size, a.kv_channels, a.ffn_hidden_size, a.padded_vocab_size, a.seq_length),
        (b.num_layers, b.hidden_size, b.kv_channels, b.ffn_hidden_size, b.padded_vocab_size, b.seq_length)
    );
    assert_eq!((a.multi_query_group_num, a.add_qkv_bias, a.rope_ratio), (b.multi_query_group_num, true, 1.0));
    assert_eq!(a.layernorm_epsilon, b.layernorm_epsilon);
}

#[test]
fn rope_scaling_survives_gguf_with_and_without_our_config_key() {
    // ChatGLM2-32K (positions ÷ 16) and ChatGLM3-32K (base × 50) from the
    // family golden data; llama.cpp's keys alone must give the same config.
    let dir = tempfile::tempdir().unwrap();
    let family = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../golden/family");
    for (name, scaling, ratio) in [
        ("chatglm2-32k", RopeScaling::DividePositions, 16.0),
        ("chatglm3-32k-RECONSTRUCTED", RopeScaling::ScaleBase, 50.0),
    ] {
        let path = dir.path().join(format!("{name}.gguf"));
        write_checkpoint(&family.join(name).join("model"), &QuantizePlan::new(DType::F32), &path);
        let model = GgufModel::open(&path).unwrap();
        assert_eq!((model.config.rope_scaling, model.config.rope_ratio), (scaling, ratio), "{name}");
        // Without our config key: rebuilt from the rope.* keys.
        drop_our_config_key(&path);
        let model = GgufModel::open(&path).unwrap();
        assert_eq!((model.config.rope_scaling, model.config.rope_ratio), (scaling, ratio), "{name} (llama.cpp keys)");
    }
}

#[test]
fn missing_or_misshapen_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev.gguf");
    write_dev(&QuantizePlan::new(DType::F16), &path);
    let bytes = std::fs::read(&path).unwrap();
    // Rename blk.1.ffn_down.weight so the model lacks it.
    let mut b = bytes.clone();
    let at = find(&b, b"blk.1.ffn_down.weight");
    b[at + 6..at + 10].copy_from_slice(b"ffn_");
    b[at + 10] = b'X';
    std::fs::write(&path, &b).unwrap();
    let e = GgufModel::open(&path).unwrap_err().to_string();
    assert!(e.contains("dense_4h_to_h") && e.contains("blk.1.ffn_down.weight"), "{e}");
}
