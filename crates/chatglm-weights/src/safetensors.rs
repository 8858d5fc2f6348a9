//! safetensors reader: an 8-byte little-endian header length, a JSON header
//! `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {..}}`,
//! then the tensor bytes, offsets relative to the end of the header.
//!
//! The header is parsed and validated by the `safetensors` crate (Hugging
//! Face's reference implementation): header length against the file size
//! and its 100 MB limit, offsets contiguous and in bounds, `end - begin`
//! equal to dtype × shape with checked arithmetic, the data section fully
//! covered. This module maps its dtypes to ours and names the file and the
//! tensor in errors. The file is memory-mapped; tensors are windows of the
//! mapping.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use safetensors::{SafeTensorError, SafeTensors};

use crate::mapped::map_file;
use crate::{DType, Tensor, TensorData, WeightsError};

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

/// Parses and checks the header of a complete safetensors file held in
/// `bytes`. The entry point for fuzzing; never panics.
pub fn parse_safetensors_bytes(bytes: &[u8]) -> Result<Vec<SafetensorsEntry>, WeightsError> {
    parse_header(bytes, Path::new("<memory>"))
}

/// What went wrong, in the words a user needs (the crate's own text, with
/// the likely cause where there is one).
fn describe(e: &SafeTensorError, file_len: usize) -> String {
    match e {
        SafeTensorError::HeaderTooSmall => {
            format!("file is {file_len} bytes, shorter than the 8-byte header length")
        }
        SafeTensorError::HeaderTooLarge => {
            format!("the header length exceeds the format's 100 MB limit (file is {file_len} bytes)")
        }
        SafeTensorError::InvalidHeaderLength => {
            format!("the header length runs past the end of the file ({file_len} bytes): truncated?")
        }
        SafeTensorError::MetadataIncompleteBuffer => format!(
            "the tensors' data_offsets do not cover the data section exactly (file is {file_len} bytes): \
             truncated, or bytes outside every tensor"
        ),
        SafeTensorError::InvalidOffset(name) => {
            format!(
                "tensor {name}: data_offsets are not contiguous with the tensor before it, or outside the data section"
            )
        }
        other => other.to_string(),
    }
}

/// Names the first tensor whose byte count disagrees with its dtype and
/// shape (the crate reports that without the name). Error path only.
fn name_wrong_size(bytes: &[u8]) -> Option<String> {
    let len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(bytes.get(8..8usize.checked_add(len)?)?).ok()?;
    header.iter().filter(|(k, _)| *k != "__metadata__").find_map(|(name, v)| {
        let dtype = DType::from_safetensors(v.get("dtype")?.as_str()?)?;
        let shape: Vec<usize> = serde_json::from_value(v.get("shape")?.clone()).ok()?;
        let [b, e]: [usize; 2] = serde_json::from_value(v.get("data_offsets")?.clone()).ok()?;
        let needs = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).and_then(|n| dtype.size_in_bytes(n));
        (needs != e.checked_sub(b)).then(|| match needs {
            Some(n) => format!(
                "tensor {name}: {dtype} {shape:?} needs {n} bytes, data_offsets [{b}, {e}] give {}",
                e.wrapping_sub(b)
            ),
            None => format!("tensor {name}: shape {shape:?} is too large"),
        })
    })
}

/// Parses the header of `bytes` (the whole file), naming `path` in errors.
pub(crate) fn parse_header(bytes: &[u8], path: &Path) -> Result<Vec<SafetensorsEntry>, WeightsError> {
    let bad = |message: String| WeightsError::Safetensors { path: path.to_path_buf(), message };
    let (header_len, meta) = SafeTensors::read_metadata(bytes).map_err(|e| match e {
        SafeTensorError::TensorInvalidInfo | SafeTensorError::ValidationOverflow => {
            bad(name_wrong_size(bytes).unwrap_or_else(|| describe(&e, bytes.len())))
        }
        e => bad(describe(&e, bytes.len())),
    })?;
    let data_start = 8 + header_len;
    let infos = meta.tensors();
    let mut entries = Vec::with_capacity(infos.len());
    for name in meta.offset_keys() {
        let Some(info) = infos.get(&name) else { continue };
        // The crate's dtype names are the format's ("F16", "BF16", …).
        let stored = format!("{:?}", info.dtype);
        let Some(dtype) = DType::from_safetensors(&stored) else {
            return Err(WeightsError::UnsupportedDtype { path: path.to_path_buf(), tensor: name, dtype: stored });
        };
        let (begin, end) = info.data_offsets;
        entries.push(SafetensorsEntry {
            name,
            dtype,
            shape: info.shape.clone(),
            // In bounds: the crate checked that the offsets tile the data section.
            file_range: data_start + begin..data_start + end,
        });
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
