//! Broken checkpoints, built in temp dirs: every one gives a clear error
//! naming the file (and tensor), never a panic.

mod common;

use std::fs;
use std::path::Path;

use chatglm_weights::{
    load_pytorch_bin, load_safetensors, parse_safetensors_bytes, pickle, serialize_safetensors, Checkpoint, DType,
    WeightsError,
};
use common::{copy_layout, state_dict_pickle, zip_stored};

fn open_err(dir: &Path) -> String {
    match Checkpoint::open(dir) {
        Ok(_) => panic!("{} opened but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn small_safetensors() -> Vec<u8> {
    let a = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
    serialize_safetensors(&[("a", DType::F32, &[2, 2], &a)]).unwrap()
}

#[test]
fn truncated_safetensors() {
    let tmp = copy_layout("safetensors-f32");
    let path = tmp.path().join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    for keep in [0, 5, 8, 100, bytes.len() - 1] {
        fs::write(&path, &bytes[..keep]).unwrap();
        let err = open_err(tmp.path());
        assert!(err.contains("model.safetensors") && err.contains("malformed safetensors"), "{keep}: {err}");
    }
}

#[test]
fn header_length_beyond_file() {
    let mut bytes = small_safetensors();
    let len = bytes.len() as u64;
    bytes[..8].copy_from_slice(&len.to_le_bytes());
    let err = parse_safetensors_bytes(&bytes).unwrap_err().to_string();
    assert!(err.contains("runs past the end of the file"), "{err}");
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = parse_safetensors_bytes(&bytes).unwrap_err().to_string();
    assert!(err.contains("exceeds") || err.contains("100 MB"), "{err}");
}

fn with_header(header: &str, data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.resize(out.len() + data_len, 0);
    out
}

#[test]
fn offsets_out_of_bounds_or_inconsistent() {
    let out_of_bounds = with_header(r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, 8);
    let err = parse_safetensors_bytes(&out_of_bounds).unwrap_err().to_string();
    assert!(err.contains("do not cover the data section"), "{err}");

    let wrong_len = with_header(r#"{"w":{"dtype":"F16","shape":[4],"data_offsets":[0,16]}}"#, 16);
    let err = parse_safetensors_bytes(&wrong_len).unwrap_err().to_string();
    assert!(err.contains("tensor w") && err.contains("needs 8 bytes"), "{err}");

    let reversed = with_header(r#"{"w":{"dtype":"F16","shape":[0],"data_offsets":[8,4]}}"#, 16);
    assert!(parse_safetensors_bytes(&reversed).is_err());

    let overlap = with_header(
        r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        12,
    );
    let err = parse_safetensors_bytes(&overlap).unwrap_err().to_string();
    assert!(err.contains("tensor b") && err.contains("not contiguous"), "{err}");

    let huge = with_header(r#"{"w":{"dtype":"F32","shape":[18446744073709551615,2],"data_offsets":[0,8]}}"#, 8);
    assert!(parse_safetensors_bytes(&huge).is_err());

    let not_json = with_header("{not json", 0);
    assert!(parse_safetensors_bytes(&not_json).unwrap_err().to_string().contains("JSON"));
}

#[test]
fn unknown_dtype_names_dtype_and_tensor() {
    let bytes = with_header(r#"{"pos":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#, 8);
    let err = parse_safetensors_bytes(&bytes).unwrap_err();
    assert!(matches!(err, WeightsError::UnsupportedDtype { .. }));
    let err = err.to_string();
    assert!(err.contains("I64") && err.contains("tensor pos"), "{err}");
}

#[test]
fn missing_shard_file() {
    for (layout, shard) in [
        ("safetensors-sharded-f16", "model-00002-of-00002.safetensors"),
        ("pytorch-sharded-bf16", "pytorch_model-00002-of-00002.bin"),
    ] {
        let tmp = copy_layout(layout);
        fs::remove_file(tmp.path().join(shard)).unwrap();
        let err = open_err(tmp.path());
        assert!(err.contains(shard) && err.contains("does not exist"), "{err}");
    }
}

#[test]
fn index_points_at_a_tensor_missing_from_its_shard() {
    let tmp = copy_layout("safetensors-sharded-f16");
    let index_path = tmp.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value = serde_json::from_str(&fs::read_to_string(&index_path).unwrap()).unwrap();
    index["weight_map"]["transformer.ghost.weight"] = "model-00001-of-00002.safetensors".into();
    fs::write(&index_path, index.to_string()).unwrap();
    let err = open_err(tmp.path());
    assert!(
        err.contains("transformer.ghost.weight")
            && err.contains("model-00001-of-00002.safetensors does not contain it"),
        "{err}"
    );

    // An entry pointing at the wrong shard.
    let mut index: serde_json::Value = serde_json::from_str(&fs::read_to_string(&index_path).unwrap()).unwrap();
    let map = index["weight_map"].as_object_mut().unwrap();
    map.remove("transformer.ghost.weight");
    map.insert("transformer.output_layer.weight".into(), "model-00001-of-00002.safetensors".into());
    fs::write(&index_path, index.to_string()).unwrap();
    let err = open_err(tmp.path());
    assert!(err.contains("transformer.output_layer.weight") && err.contains("it is in"), "{err}");
}

#[test]
fn index_cannot_escape_the_folder() {
    let tmp = copy_layout("safetensors-sharded-f16");
    let index_path = tmp.path().join("model.safetensors.index.json");
    fs::write(&index_path, r#"{"weight_map":{"x":"../../etc/passwd"}}"#).unwrap();
    let err = open_err(tmp.path());
    assert!(err.contains("not a file name"), "{err}");
}

#[test]
fn wrong_shape_in_config_vs_tensor() {
    let tmp = copy_layout("safetensors-f32");
    let cfg_path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["ffn_hidden_size"] = 96.into();
    fs::write(&cfg_path, cfg.to_string()).unwrap();
    let ckpt = Checkpoint::open(tmp.path()).unwrap();
    let err = ckpt.validate_shapes().unwrap_err().to_string();
    assert!(
        err.contains("transformer.encoder.layers.0.mlp.dense_h_to_4h.weight")
            && err.contains("expected shape [192, 64]")
            && err.contains("found [320, 64]"),
        "{err}"
    );
}

#[test]
fn missing_and_broken_config() {
    let tmp = copy_layout("safetensors-f32");
    let cfg_path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["multi_query_attention"] = false.into();
    fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = open_err(tmp.path());
    assert!(err.contains("config.json") && err.contains("multi_query_attention = false"), "{err}");
    fs::remove_file(&cfg_path).unwrap();
    let err = open_err(tmp.path());
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn no_weights() {
    let tmp = copy_layout("safetensors-f32");
    fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    let err = open_err(tmp.path());
    assert!(err.contains("no weights found"), "{err}");
}

#[test]
fn truncated_pytorch_bin() {
    let tmp = copy_layout("pytorch-f32");
    let path = tmp.path().join("pytorch_model.bin");
    let bytes = fs::read(&path).unwrap();
    for keep in [0, 3, 4, 1000, bytes.len() / 2, bytes.len() - 23, bytes.len() - 1] {
        fs::write(&path, &bytes[..keep]).unwrap();
        let err = load_pytorch_bin(&path).unwrap_err().to_string();
        assert!(err.contains("pytorch_model.bin"), "{keep}: {err}");
    }
}

#[test]
fn pickle_calling_os_system_is_refused() {
    for (module, name) in [("posix", "system"), ("os", "system"), ("builtins", "eval"), ("subprocess", "Popen")] {
        // PROTO 2, GLOBAL 'module\nname\n', BINUNICODE 'echo pwned', TUPLE1, REDUCE, STOP
        let mut pkl = vec![0x80, 2, b'c'];
        pkl.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        pkl.push(b'X');
        pkl.extend_from_slice(&10u32.to_le_bytes());
        pkl.extend_from_slice(b"echo pwned");
        pkl.extend_from_slice(&[0x85, b'R', b'.']);
        let zip = zip_stored(&[("archive/data.pkl", &pkl), ("archive/version", b"3\n")]);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("pytorch_model.bin");
        fs::write(&path, zip).unwrap();
        let err = load_pytorch_bin(&path).unwrap_err();
        assert!(matches!(err, WeightsError::UnsafePickle { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("{module}.{name}")) && msg.contains("pytorch_model.bin") && msg.contains("run code"),
            "{msg}"
        );
    }
}

#[test]
fn pickle_tensor_views() {
    // Two tensors sharing storage "0" (6 floats): a row at offset 3, and a
    // transposed (non-contiguous) view that must be copied.
    let storage = f32_bytes(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let pkl = state_dict_pickle(&[("row", "0", 6, 3, &[3], &[1]), ("t", "0", 6, 0, &[3, 2], &[1, 3])]);
    let zip = zip_stored(&[("archive/data.pkl", &pkl), ("archive/byteorder", b"little"), ("archive/data/0", &storage)]);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("x.bin");
    fs::write(&path, zip).unwrap();
    let tensors = load_pytorch_bin(&path).unwrap();
    assert_eq!(tensors[0].to_f32().unwrap(), vec![3.0, 4.0, 5.0]);
    assert!(tensors[0].data.is_mapped());
    assert_eq!(tensors[1].to_f32().unwrap(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);

    // A view past the end of its storage.
    let pkl = state_dict_pickle(&[("bad", "0", 6, 4, &[3], &[1])]);
    let zip = zip_stored(&[("archive/data.pkl", &pkl), ("archive/data/0", &storage)]);
    fs::write(&path, zip).unwrap();
    let err = load_pytorch_bin(&path).unwrap_err().to_string();
    assert!(err.contains("tensor bad") && err.contains("reaches past"), "{err}");

    // A storage entry missing from the archive.
    let pkl = state_dict_pickle(&[("w", "7", 6, 0, &[6], &[1])]);
    let zip = zip_stored(&[("archive/data.pkl", &pkl), ("archive/data/0", &storage)]);
    fs::write(&path, zip).unwrap();
    let err = load_pytorch_bin(&path).unwrap_err().to_string();
    assert!(err.contains("tensor w") && err.contains("archive/data/7"), "{err}");

    // A storage that declares more elements than its entry holds.
    let pkl = state_dict_pickle(&[("w", "0", 60, 0, &[6], &[1])]);
    let zip = zip_stored(&[("archive/data.pkl", &pkl), ("archive/data/0", &storage)]);
    fs::write(&path, zip).unwrap();
    let err = load_pytorch_bin(&path).unwrap_err().to_string();
    assert!(err.contains("declares 60"), "{err}");
}

#[test]
fn pickle_errors_are_reported() {
    assert!(pickle::read_state_dict(b"").is_err());
    assert!(pickle::read_state_dict(&[0x80, 2, b'}']).is_err()); // no STOP
    assert!(pickle::read_state_dict(&[0x80, 2, b'N', b'.']).unwrap_err().to_string().contains("state dict"));
    assert!(pickle::read_state_dict(&[0x80, 2, b'i', b'.']).unwrap_err().to_string().contains("opcode 0x69"));
    // Deep nesting is bounded.
    let mut deep = vec![0x80, 2];
    deep.extend(std::iter::repeat_n(b']', 10_000));
    deep.extend(std::iter::repeat_n(b'a', 9_999));
    deep.push(b'.');
    assert!(pickle::read_state_dict(&deep).unwrap_err().to_string().contains("deeper"));
    // An unsupported storage dtype names the tensor.
    let pkl = state_dict_pickle(&[("ids", "0", 1, 0, &[1], &[1])]);
    let at = pkl.windows(5).position(|w| w == b"Float").unwrap();
    let mut long = pkl[..at].to_vec();
    long.extend_from_slice(b"Long");
    long.extend_from_slice(&pkl[at + 5..]);
    let err = pickle::read_state_dict(&long).unwrap_err().to_string();
    assert!(err.contains("torch.LongStorage") && err.contains("tensor ids"), "{err}");
}

#[test]
fn not_a_zip() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("pytorch_model.bin");
    fs::write(&path, [0x80, 2, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20]).unwrap();
    let err = load_pytorch_bin(&path).unwrap_err().to_string();
    assert!(err.contains("legacy"), "{err}");
    fs::write(&path, b"hello").unwrap();
    assert!(load_safetensors(&path).is_err());
}
