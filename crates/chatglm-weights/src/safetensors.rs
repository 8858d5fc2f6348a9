//! safetensors reader: an 8-byte little-endian header length, a JSON header
//! `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {..}}`,
//! then the tensor bytes, offsets relative to the end of the header.
//!
//! The file is memory-mapped; tensors are windows of the mapping. Everything
//! in the header is checked before a window is made: header length against
//! the file size, offsets in bounds, `end - begin` equal to dtype × shape,
//! no two tensors overlapping, known dtypes only.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::mapped::map_file;
use crate::{DType, Tensor, TensorData, WeightsError};

/// Headers larger than this are refused (the format's own limit is 100 MB;
/// ChatGLM2-6B's largest shard header is ~10 KB).
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// One entry of a safetensors header, checked against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsEntry {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub file_range: Range<usize>,
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// Parses and checks the header of a complete safetensors file held in
/// `bytes`. The entry point for fuzzing; never panics.
pub fn parse_safetensors_bytes(bytes: &[u8]) -> Result<Vec<SafetensorsEntry>, WeightsError> {
    parse_header(bytes, Path::new("<memory>"))
}

/// Parses the header of `bytes` (the whole file), naming `path` in errors.
pub(crate) fn parse_header(bytes: &[u8], path: &Path) -> Result<Vec<SafetensorsEntry>, WeightsError> {
    let bad = |message: String| WeightsError::Safetensors { path: path.to_path_buf(), message };
    let file_len = bytes.len();
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad(format!("file is {file_len} bytes, shorter than the 8-byte header length")))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit (file is {file_len} bytes)"
        )));
    }
    // Fits in usize: bounded by MAX_HEADER_BYTES.
    let data_start = 8 + header_len as usize;
    let header = bytes.get(8..data_start).ok_or_else(|| {
        bad(format!("header length {header_len} runs past the end of the file ({file_len} bytes): truncated?"))
    })?;
    let raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
    let data_len = file_len - data_start;

    let mut entries = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        if name == "__metadata__" {
            // A free-form string map; we only check its type.
            serde_json::from_value::<BTreeMap<String, String>>(value)
                .map_err(|e| bad(format!("__metadata__ is not a map of strings: {e}")))?;
            continue;
        }
        let entry: RawEntry = serde_json::from_value(value)
            .map_err(|e| bad(format!("tensor {name}: header entry is not {{dtype, shape, data_offsets}}: {e}")))?;
        let Some(dtype) = DType::from_safetensors(&entry.dtype) else {
            return Err(WeightsError::UnsupportedDtype { path: path.to_path_buf(), tensor: name, dtype: entry.dtype });
        };
        let [begin, end] = entry.data_offsets;
        let n_elements = entry.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let n_bytes = n_elements.and_then(|n| dtype.size_in_bytes(n));
        let Some(n_bytes) = n_bytes else {
            return Err(bad(format!("tensor {name}: shape {:?} is too large", entry.shape)));
        };
        if begin > end || end > data_len {
            return Err(bad(format!(
                "tensor {name}: data_offsets [{begin}, {end}] outside the {data_len}-byte data section"
            )));
        }
        if end - begin != n_bytes {
            return Err(bad(format!(
                "tensor {name}: {dtype} {:?} needs {n_bytes} bytes, data_offsets [{begin}, {end}] give {}",
                entry.shape,
                end - begin
            )));
        }
        entries.push(SafetensorsEntry {
            name,
            dtype,
            shape: entry.shape,
            file_range: data_start + begin..data_start + end,
        });
    }

    let mut by_start: Vec<&SafetensorsEntry> = entries.iter().filter(|e| !e.file_range.is_empty()).collect();
    by_start.sort_by_key(|e| e.file_range.start);
    for pair in by_start.windows(2) {
        if let [a, b] = pair {
            if b.file_range.start < a.file_range.end {
                return Err(bad(format!("tensors {} and {} overlap", a.name, b.name)));
            }
        }
    }
    Ok(entries)
}

/// Memory-maps a safetensors file and returns its tensors (no data copied).
pub fn load_safetensors(path: &Path) -> Result<Vec<Tensor>, WeightsError> {
    let map = Arc::new(map_file(path)?);
    let entries = parse_header(&map, path)?;
    entries
        .into_iter()
        .map(|e| {
            let data = TensorData::from_mmap(&map, e.file_range.clone()).ok_or_else(|| WeightsError::BadTensor {
                path: path.to_path_buf(),
                tensor: e.name.clone(),
                message: format!("byte range {:?} outside the file", e.file_range),
            })?;
            Ok(Tensor { name: e.name, dtype: e.dtype, shape: e.shape, data })
        })
        .collect()
}

/// Serializes tensors as a safetensors file (used by tests and converters).
/// Tensors are written in the given order with no padding.
pub fn serialize_safetensors(tensors: &[(&str, DType, &[usize], &[u8])]) -> Result<Vec<u8>, WeightsError> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dtype, shape, bytes) in tensors {
        let n_elements: usize = shape.iter().product();
        if dtype.size_in_bytes(n_elements) != Some(bytes.len()) {
            return Err(WeightsError::BadTensor {
                path: "<serialize>".into(),
                tensor: name.to_string(),
                message: format!("{dtype} {shape:?} needs {n_elements} elements, got {} bytes", bytes.len()),
            });
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    // Pad the header with spaces so the data section starts 8-byte aligned.
    while !(8 + json.len()).is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for (_, _, _, bytes) in tensors {
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_checks() {
        let a = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>();
        let b = vec![0u8; 6];
        let file = serialize_safetensors(&[("a", DType::F32, &[2], &a), ("b", DType::BF16, &[3, 1], &b)]).unwrap();
        let entries = parse_safetensors_bytes(&file).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].shape, vec![3, 1]);
        let err = parse_safetensors_bytes(&file[..file.len() - 1]).unwrap_err().to_string();
        assert!(err.contains("outside"), "{err}");
    }
}
