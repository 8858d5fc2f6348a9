//! Element types of stored tensors.
//!
//! Sizes are expressed per *block* (`block_elements` elements take
//! `block_bytes` bytes) so that block-quantized formats (Q8_0: 32 elements in
//! 34 bytes, Q4_0: 32 in 18, ...) can be added as further variants without
//! changing how callers compute buffer sizes: always go through
//! [`DType::size_in_bytes`].

use std::fmt;

/// The storage type of a tensor's elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// IEEE 754 binary32, little-endian.
    F32,
    /// IEEE 754 binary16, little-endian.
    F16,
    /// bfloat16 (the top half of an f32), little-endian.
    BF16,
    /// ggml q8_0 blocks ([`crate::quant::BlockQ8_0`]): 32 weights in 34 bytes.
    Q8_0,
    /// ggml q4_0 blocks: 32 weights in 18 bytes.
    Q4_0,
    /// ggml q4_1 blocks: 32 weights in 20 bytes.
    Q4_1,
    /// ggml q5_0 blocks: 32 weights in 22 bytes.
    Q5_0,
    /// ggml q5_1 blocks: 32 weights in 24 bytes.
    Q5_1,
    /// Signed 8-bit integers: the packed weights of the official INT4/INT8
    /// checkpoints (`quantization_bit`), converted to q4_0/q8_0 at open.
    I8,
}

impl DType {
    /// The name as safetensors spells it (`F32`, `F16`, `BF16`).
    pub fn name(&self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Q8_0 => "Q8_0",
            DType::Q4_0 => "Q4_0",
            DType::Q4_1 => "Q4_1",
            DType::Q5_0 => "Q5_0",
            DType::Q5_1 => "Q5_1",
            DType::I8 => "I8",
        }
    }

    /// Elements per storage block (1 for float formats).
    pub fn block_elements(&self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 | DType::I8 => 1,
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 => 32,
        }
    }

    /// Bytes per storage block.
    pub fn block_bytes(&self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q5_0 => 22,
            DType::Q5_1 => 24,
            DType::I8 => 1,
        }
    }

    /// Bytes per element of an element-wise format. For block formats use
    /// [`DType::size_in_bytes`], which is exact for every format.
    pub fn is_quantized(&self) -> bool {
        self.block_elements() > 1
    }

    pub fn bytes_per_element(&self) -> usize {
        self.block_bytes() / self.block_elements()
    }

    /// Bytes taken by `n_elements` elements; `None` on overflow or when
    /// `n_elements` is not a whole number of blocks.
    pub fn size_in_bytes(&self, n_elements: usize) -> Option<usize> {
        let block = self.block_elements();
        if !n_elements.is_multiple_of(block) {
            return None;
        }
        (n_elements / block).checked_mul(self.block_bytes())
    }

    /// Parses a safetensors dtype string; `None` for dtypes we do not read.
    pub fn from_safetensors(name: &str) -> Option<Self> {
        match name {
            "F32" => Some(DType::F32),
            "F16" => Some(DType::F16),
            "BF16" => Some(DType::BF16),
            "I8" => Some(DType::I8),
            _ => None,
        }
    }

    /// Maps a torch storage class (`FloatStorage`, ...) to a dtype.
    pub fn from_torch_storage(class: &str) -> Option<Self> {
        match class {
            "FloatStorage" => Some(DType::F32),
            "HalfStorage" => Some(DType::F16),
            "BFloat16Storage" => Some(DType::BF16),
            "CharStorage" => Some(DType::I8),
            _ => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(DType::F32.size_in_bytes(3), Some(12));
        assert_eq!(DType::BF16.size_in_bytes(5), Some(10));
        assert_eq!(DType::F16.size_in_bytes(usize::MAX), None);
        assert_eq!(DType::F16.bytes_per_element(), 2);
        assert_eq!(DType::from_safetensors("I64"), None);
        assert_eq!(DType::from_torch_storage("HalfStorage"), Some(DType::F16));
    }
}
