//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The repository's `testdata/`, or `$CHATGLM_TESTDATA`.
pub fn testdata() -> PathBuf {
    chatglm_testdata::dir()
}

/// The dev model's layouts.
pub const LAYOUTS: [&str; 4] = ["safetensors-f32", "safetensors-sharded-f16", "pytorch-f32", "pytorch-sharded-bf16"];

pub fn layout_dir(name: &str) -> PathBuf {
    testdata().join("dev/model").join(name)
}

/// Copies a dev layout into a fresh temp dir so a test can break it.
pub fn copy_layout(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(layout_dir(name)).unwrap() {
        let entry = entry.unwrap();
        let dst = tmp.path().join(entry.file_name());
        std::fs::copy(entry.path(), &dst).unwrap();
        let mut perms = std::fs::metadata(&dst).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&dst, perms).unwrap();
    }
    tmp
}

/// A minimal zip writer (stored entries) for building test archives.
pub fn zip_stored(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32(data);
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);

        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 12]);
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A protocol-2 pickle of `{name: _rebuild_tensor_v2(storage(key, FloatStorage, n), offset, shape, stride, False, OrderedDict())}`.
/// (name, storage key, storage elements, offset, shape, stride).
pub type PickledTensor<'a> = (&'a str, &'a str, usize, usize, &'a [usize], &'a [usize]);

pub fn state_dict_pickle(tensors: &[PickledTensor<'_>]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    for (name, key, numel, offset, shape, stride) in tensors {
        unicode(&mut p, name);
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.push(b'(');
        unicode(&mut p, "storage");
        p.extend_from_slice(b"ctorch\nFloatStorage\n");
        unicode(&mut p, key);
        unicode(&mut p, "cpu");
        int(&mut p, *numel);
        p.extend_from_slice(b"tQ");
        int(&mut p, *offset);
        tuple(&mut p, shape);
        tuple(&mut p, stride);
        p.push(0x89);
        p.extend_from_slice(b"ccollections\nOrderedDict\n)R");
        p.extend_from_slice(b"tR");
    }
    p.extend_from_slice(b"u.");
    p
}

fn unicode(p: &mut Vec<u8>, s: &str) {
    p.push(b'X');
    p.extend_from_slice(&(s.len() as u32).to_le_bytes());
    p.extend_from_slice(s.as_bytes());
}

fn int(p: &mut Vec<u8>, v: usize) {
    p.push(b'J');
    p.extend_from_slice(&(v as i32).to_le_bytes());
}

fn tuple(p: &mut Vec<u8>, items: &[usize]) {
    p.push(b'(');
    for &i in items {
        int(p, i);
    }
    p.push(b't');
}
