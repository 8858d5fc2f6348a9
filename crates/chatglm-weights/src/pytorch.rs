//! PyTorch `.bin` checkpoints in the `torch.save` zip format (torch >= 1.6):
//! `<prefix>/data.pkl` (the pickled state dict, read by [`crate::pickle`])
//! and one stored entry `<prefix>/data/<key>` per storage. The archive is
//! memory-mapped and each tensor is a window of its storage's entry; only
//! non-contiguous views (rare in checkpoints) are copied.

use std::path::Path;
use std::sync::Arc;

use crate::mapped::map_file;
use crate::pickle::{read_state_dict_at, TensorRecord};
use crate::zip::{read_entries, ZipEntry};
use crate::{Tensor, TensorData, WeightsError};

/// Memory-maps a `torch.save` zip archive and returns its tensors.
pub fn load_pytorch_bin(path: &Path) -> Result<Vec<Tensor>, WeightsError> {
    let map = Arc::new(map_file(path)?);
    if !map.starts_with(b"PK\x03\x04") {
        let hint = if map.first() == Some(&0x80) {
            "this is the legacy (torch < 1.6) torch.save format, which is not supported: re-save it with a \
             newer torch or convert it to safetensors"
        } else {
            "expected a zip archive written by torch.save"
        };
        return Err(WeightsError::Zip { path: path.to_path_buf(), message: hint.into() });
    }
    let entries = read_entries(&map, path)?;
    let (prefix, pkl) = entries
        .iter()
        .find_map(|e| {
            let prefix = e.name.strip_suffix("data.pkl")?;
            (prefix.is_empty() || (prefix.ends_with('/') && prefix.matches('/').count() == 1)).then_some((prefix, e))
        })
        .ok_or_else(|| WeightsError::Zip {
            path: path.to_path_buf(),
            message: "no data.pkl entry: not a torch.save checkpoint".into(),
        })?;
    if let Some(order) = entries.iter().find(|e| e.name == format!("{prefix}byteorder")) {
        let order = map.get(order.data.clone()).unwrap_or_default();
        if order != b"little" {
            return Err(WeightsError::Zip {
                path: path.to_path_buf(),
                message: format!(
                    "byteorder is {:?}; only little-endian checkpoints are supported",
                    String::from_utf8_lossy(order)
                ),
            });
        }
    }
    let pickle_bytes = map.get(pkl.data.clone()).unwrap_or_default();
    let records = read_state_dict_at(pickle_bytes, path)?;
    // One index of the archive, not a scan of it per tensor (a crafted file
    // with many records and entries made that quadratic).
    let mut by_name: std::collections::HashMap<&str, &ZipEntry> = std::collections::HashMap::new();
    for e in &entries {
        // The first of duplicate names wins, as a scan in archive order would.
        by_name.entry(e.name.as_str()).or_insert(e);
    }
    records
        .into_iter()
        .map(|r| {
            let entry_name = format!("{prefix}data/{}", r.storage_key);
            let storage = by_name.get(entry_name.as_str()).copied().ok_or_else(|| WeightsError::BadTensor {
                path: path.to_path_buf(),
                tensor: r.name.clone(),
                message: format!("its storage entry {entry_name} is missing from the archive"),
            })?;
            tensor_from_record(&map, storage, r, path)
        })
        .collect()
}

/// Builds one tensor: a window of the storage when the view is contiguous,
/// else a copy gathered element by element.
fn tensor_from_record(
    map: &Arc<memmap2::Mmap>,
    storage: &ZipEntry,
    r: TensorRecord,
    path: &Path,
) -> Result<Tensor, WeightsError> {
    let bad = |message: String| WeightsError::BadTensor { path: path.to_path_buf(), tensor: r.name.clone(), message };
    let elem = r.dtype.bytes_per_element();
    let storage_bytes = r.dtype.size_in_bytes(r.storage_elements);
    if storage_bytes.is_none_or(|n| n > storage.data.len()) {
        return Err(bad(format!(
            "storage {} declares {} {} elements but its entry holds {} bytes",
            r.storage_key,
            r.storage_elements,
            r.dtype,
            storage.data.len()
        )));
    }
    let n_elements = r.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let n_elements = n_elements.ok_or_else(|| bad(format!("shape {:?} is too large", r.shape)))?;
    // Highest element index the view touches (0 for empty tensors).
    let last = if n_elements == 0 {
        Some(r.offset_elements)
    } else {
        r.shape
            .iter()
            .zip(&r.stride)
            .try_fold(r.offset_elements, |acc, (&d, &s)| acc.checked_add((d - 1).checked_mul(s)?))
    };
    // An empty view may start at the storage's end, no further.
    if last.is_none_or(|l| if n_elements > 0 { l >= r.storage_elements } else { l > r.storage_elements }) {
        return Err(bad(format!(
            "view (offset {}, shape {:?}, stride {:?}) reaches past the {}-element storage {}",
            r.offset_elements, r.shape, r.stride, r.storage_elements, r.storage_key
        )));
    }
    // A view with more elements than its storage repeats elements (zero
    // strides); checkpoints never need that, and it would let a tiny file
    // ask for a huge copy.
    if n_elements > r.storage_elements {
        return Err(bad(format!(
            "shape {:?} has {n_elements} elements, more than its {}-element storage {}",
            r.shape, r.storage_elements, r.storage_key
        )));
    }
    let base = storage.data.start;
    let data = if is_contiguous(&r.shape, &r.stride) {
        // Checked: every number here came from the file.
        let range = r
            .offset_elements
            .checked_mul(elem)
            .and_then(|o| base.checked_add(o))
            .and_then(|start| Some(start..start.checked_add(n_elements.checked_mul(elem)?)?));
        range
            .and_then(|range| TensorData::from_mmap(map, range))
            .ok_or_else(|| bad("view outside the archive".into()))?
    } else {
        let storage_bytes = map.get(storage.data.clone()).unwrap_or_default();
        TensorData::from_vec(gather(storage_bytes, elem, r.offset_elements, &r.shape, &r.stride, n_elements))
    };
    Ok(Tensor { name: r.name, dtype: r.dtype, shape: r.shape, data })
}

/// Row-major contiguity; dimensions of size 1 may carry any stride.
fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(d);
    }
    true
}

/// Copies a strided view into row-major order. Bounds were checked by the
/// caller (`last < storage_elements`).
fn gather(storage: &[u8], elem: usize, offset: usize, shape: &[usize], stride: &[usize], n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * elem);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..n {
        let at = offset + index.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(storage.get(at * elem..(at + 1) * elem).unwrap_or(&[]));
        // Odometer increment, last dimension fastest.
        for (i, &d) in index.iter_mut().zip(shape).rev() {
            *i += 1;
            if *i < d {
                break;
            }
            *i = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguity() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(is_contiguous(&[1, 3], &[99, 1]));
        assert!(!is_contiguous(&[2, 3], &[1, 2]));
    }

    fn record(shape: Vec<usize>, offset_elements: usize) -> TensorRecord {
        let stride = vec![1; shape.len()];
        TensorRecord {
            name: "t".into(),
            storage_key: "0".into(),
            dtype: crate::DType::F32,
            storage_elements: 4,
            offset_elements,
            shape,
            stride,
        }
    }

    #[test]
    fn views_with_offsets_from_the_file_are_checked() {
        let file = std::env::temp_dir().join(format!("chatglm-pytorch-view-{}", std::process::id()));
        std::fs::write(&file, [0u8; 64]).unwrap();
        let map = Arc::new(unsafe_map(&file));
        let storage = ZipEntry { name: "archive/data/0".into(), data: 16..32 };
        let path = Path::new("x.bin");
        // An empty tensor whose offset is far past its 4-element storage (the
        // offset times 4 bytes overflows): an error, not a wrapped window.
        for offset in [5, usize::MAX / 2, usize::MAX] {
            let e = tensor_from_record(&map, &storage, record(vec![0], offset), path);
            assert!(e.is_err(), "offset {offset} accepted");
        }
        // In bounds, empty and not: fine.
        assert!(tensor_from_record(&map, &storage, record(vec![0], 4), path).is_ok());
        assert_eq!(tensor_from_record(&map, &storage, record(vec![2], 2), path).unwrap().data.len(), 8);
        assert!(tensor_from_record(&map, &storage, record(vec![3], 2), path).is_err());
        let _ = std::fs::remove_file(&file);
    }

    fn unsafe_map(file: &Path) -> memmap2::Mmap {
        let f = std::fs::File::open(file).unwrap();
        // SAFETY: a private temporary file nobody else writes while mapped.
        unsafe { memmap2::Mmap::map(&f).unwrap() }
    }

    #[test]
    fn gathers_a_transpose() {
        // storage [[0,1,2],[3,4,5]] as u8 "elements"; view = its transpose.
        let storage = [0u8, 1, 2, 3, 4, 5];
        assert_eq!(gather(&storage, 1, 0, &[3, 2], &[1, 3], 6), vec![0, 3, 1, 4, 2, 5]);
    }
}
