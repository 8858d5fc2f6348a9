//! [`Tensor`]: a name, a dtype, a row-major shape and its bytes, which are
//! usually a window into a memory-mapped file ([`TensorData`]).

use std::ops::{Deref, Range};
use std::sync::Arc;

use memmap2::Mmap;

use crate::{DType, WeightsError};

/// Where a tensor's bytes live.
#[derive(Clone)]
enum Backing {
    /// A read-only mapping of a checkpoint file, shared by all its tensors.
    Mmap(Arc<Mmap>),
    /// Bytes read into memory (small files, tests, converted data).
    Owned(Arc<Vec<u8>>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A tensor's raw little-endian bytes. Cloning is cheap (an `Arc` bump); the
/// bytes of a memory-mapped file are never copied.
#[derive(Clone)]
pub struct TensorData {
    backing: Backing,
    /// Byte range within `backing`; checked against its length on construction.
    range: Range<usize>,
}

impl TensorData {
    /// Wraps owned bytes.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        Self { backing: Backing::Owned(Arc::new(bytes)), range: 0..len }
    }

    /// A window of a mapped file; `None` if `range` is not inside it.
    pub(crate) fn from_mmap(map: &Arc<Mmap>, range: Range<usize>) -> Option<Self> {
        Self::window(Backing::Mmap(Arc::clone(map)), range)
    }

    /// A window of shared owned bytes (no copy); `None` if `range` is not inside them.
    pub fn from_shared(bytes: &Arc<Vec<u8>>, range: Range<usize>) -> Option<Self> {
        Self::window(Backing::Owned(Arc::clone(bytes)), range)
    }

    fn window(backing: Backing, range: Range<usize>) -> Option<Self> {
        if range.start > range.end || range.end > backing.bytes().len() {
            return None;
        }
        Some(Self { backing, range })
    }

    /// Whether the bytes are a window of a memory-mapped file (not copied).
    pub fn is_mapped(&self) -> bool {
        matches!(self.backing, Backing::Mmap(_))
    }

    /// Drops the pages of bytes `range` (relative to this window) from the
    /// process's resident set, for streaming conversions that read each
    /// byte once: without it a 12 GB checkpoint read through the mapping
    /// stays counted in RSS. The bytes stay readable (re-read from the page
    /// cache or the file). A hint: no-op for owned bytes or on error.
    pub fn release_pages(&self, range: Range<usize>) {
        let Backing::Mmap(map) = &self.backing else { return };
        let (Some(start), Some(end)) =
            (self.range.start.checked_add(range.start), self.range.start.checked_add(range.end))
        else {
            return;
        };
        if start >= end || end > self.range.end {
            return;
        }
        // SAFETY: the mapping is read-only and file-backed (`Mmap::map`), so
        // MADV_DONTNEED only unmaps pages; touching them again faults the same
        // file contents back in. No data is lost or changed under a borrow.
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
    }
}

impl Deref for TensorData {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.backing
            .bytes()
            .get(self.range.clone())
            .expect("invariant: TensorData range checked against its backing on construction")
    }
}

impl std::fmt::Debug for TensorData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorData").field("mapped", &self.is_mapped()).field("bytes", &self.range.len()).finish()
    }
}

/// One named tensor of a checkpoint: row-major (C-contiguous) `shape`, raw `data`.
#[derive(Clone, Debug)]
pub struct Tensor {
    /// The official state-dict name, e.g. `transformer.encoder.layers.0.mlp.dense_4h_to_h.weight`.
    pub name: String,
    /// Storage type of the elements.
    pub dtype: DType,
    /// Dimensions, outermost first (PyTorch order: a linear weight is `[out, in]`).
    pub shape: Vec<usize>,
    /// `dtype.size_in_bytes(n_elements())` bytes, checked by the loaders.
    pub data: TensorData,
}

impl Tensor {
    /// Product of the dimensions (1 for a scalar).
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of bytes of `data`.
    pub fn n_bytes(&self) -> usize {
        self.data.len()
    }

    /// Decodes every element to f32 (exact for all supported dtypes). Works on
    /// unaligned data.
    pub fn to_f32(&self) -> Result<Vec<f32>, WeightsError> {
        let mut out = vec![0.0; self.n_elements()];
        self.to_f32_into(&mut out)?;
        Ok(out)
    }

    /// Decodes every element into `out`, which must hold exactly `n_elements()` values.
    pub fn to_f32_into(&self, out: &mut [f32]) -> Result<(), WeightsError> {
        let expected_bytes = self.dtype.size_in_bytes(out.len());
        if out.len() != self.n_elements() || expected_bytes != Some(self.data.len()) {
            return Err(WeightsError::BadTensor {
                path: "<memory>".into(),
                tensor: self.name.clone(),
                message: format!(
                    "cannot convert to f32: shape {:?} ({} elements of {}) needs {:?} bytes, data has {}, output has {} slots",
                    self.shape,
                    self.n_elements(),
                    self.dtype,
                    self.dtype.size_in_bytes(self.n_elements()),
                    self.data.len(),
                    out.len()
                ),
            });
        }
        decode_f32(self.dtype, &self.data, out);
        Ok(())
    }
}

/// Decodes `bytes` (exactly `out.len()` elements of `dtype`) into `out`.
pub fn decode_f32(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        DType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        DType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        DType::Q8_0 => crate::quant::dequantize_bytes::<crate::quant::BlockQ8_0>(bytes, out),
        DType::Q4_0 => crate::quant::dequantize_bytes::<crate::quant::BlockQ4_0>(bytes, out),
        DType::Q4_1 => crate::quant::dequantize_bytes::<crate::quant::BlockQ4_1>(bytes, out),
        DType::Q5_0 => crate::quant::dequantize_bytes::<crate::quant::BlockQ5_0>(bytes, out),
        DType::Q5_1 => crate::quant::dequantize_bytes::<crate::quant::BlockQ5_1>(bytes, out),
        DType::I8 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = b as i8 as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_unaligned_f16_and_bf16() {
        // One leading byte makes the u16 data unaligned.
        let mut bytes = vec![0xAA];
        bytes.extend_from_slice(&half::f16::from_f32(1.5).to_le_bytes());
        bytes.extend_from_slice(&half::f16::from_f32(-2.0).to_le_bytes());
        let shared = Arc::new(bytes);
        let data = TensorData::from_shared(&shared, 1..5).unwrap();
        let t = Tensor { name: "x".into(), dtype: DType::F16, shape: vec![2], data };
        assert_eq!(t.to_f32().unwrap(), vec![1.5, -2.0]);

        let bf = half::bf16::from_f32(3.0).to_le_bytes().to_vec();
        let t = Tensor { name: "y".into(), dtype: DType::BF16, shape: vec![1], data: TensorData::from_vec(bf) };
        assert_eq!(t.to_f32().unwrap(), vec![3.0]);
    }

    #[test]
    fn size_mismatch_is_an_error() {
        let t = Tensor { name: "z".into(), dtype: DType::F32, shape: vec![3], data: TensorData::from_vec(vec![0; 8]) };
        let err = t.to_f32().unwrap_err().to_string();
        assert!(err.contains("tensor z"), "{err}");
    }

    #[test]
    fn window_out_of_range_is_refused() {
        let shared = Arc::new(vec![0u8; 4]);
        assert!(TensorData::from_shared(&shared, 2..6).is_none());
    }
}
