//! Weight matrices as the CPU kernels consume them.

use crate::dot::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
use chatglm_weights::TensorData;
use half::{bf16, f16};

/// Element storage: owned, or borrowed from a memory-mapped checkpoint
/// (no copy when the file's layout is already what the kernel reads).
#[derive(Clone)]
pub enum Storage<T: bytemuck::Pod> {
    Owned(Vec<T>),
    /// Bytes whose alignment and length were checked against `T` at construction.
    Mapped(TensorData),
}

impl<T: bytemuck::Pod> Storage<T> {
    /// Wraps mapped bytes, or copies them when they are not aligned for `T`.
    pub fn from_tensor_data(data: TensorData) -> Self {
        if bytemuck::try_cast_slice::<u8, T>(&data).is_ok() {
            Storage::Mapped(data)
        } else {
            Storage::Owned(bytemuck::pod_collect_to_vec(&data))
        }
    }

    pub fn as_slice(&self) -> &[T] {
        match self {
            Storage::Owned(v) => v,
            Storage::Mapped(d) => {
                bytemuck::try_cast_slice(d).expect("invariant: alignment checked in from_tensor_data")
            }
        }
    }
}

/// The element format of a [`Matrix`].
#[derive(Clone)]
pub enum MatrixData {
    F32(Storage<f32>),
    F16(Storage<f16>),
    BF16(Storage<bf16>),
    /// `cols / 32` blocks per row.
    Q8_0(Storage<BlockQ8_0>),
    /// `cols / 32` blocks per row.
    Q4_0(Storage<BlockQ4_0>),
    /// q4_0 split into scales and nibbles (what the CPU backend loads q4_0 into).
    Q4_0Packed(crate::packed::PackedQ4_0),
    /// q8_0 in 128-byte quads (what the CPU backend loads q8_0 into).
    Q8_0Packed(crate::packed_q8::PackedQ8_0),
    Q4_1(Storage<BlockQ4_1>),
    Q5_0(Storage<BlockQ5_0>),
    Q5_1(Storage<BlockQ5_1>),
}

impl MatrixData {
    /// The same data with any memory-mapped storage copied into owned memory.
    pub fn into_owned(self) -> Self {
        fn own<T: bytemuck::Pod>(s: Storage<T>) -> Storage<T> {
            match s {
                Storage::Mapped(d) => Storage::Owned(match bytemuck::try_cast_slice::<u8, T>(&d) {
                    Ok(values) => crate::memory::huge_copy(values),
                    Err(_) => bytemuck::pod_collect_to_vec(&d),
                }),
                owned => owned,
            }
        }
        match self {
            MatrixData::F32(s) => MatrixData::F32(own(s)),
            MatrixData::F16(s) => MatrixData::F16(own(s)),
            MatrixData::BF16(s) => MatrixData::BF16(own(s)),
            MatrixData::Q8_0(s) => MatrixData::Q8_0(own(s)),
            MatrixData::Q4_0(s) => MatrixData::Q4_0(own(s)),
            MatrixData::Q4_1(s) => MatrixData::Q4_1(own(s)),
            MatrixData::Q5_0(s) => MatrixData::Q5_0(own(s)),
            MatrixData::Q5_1(s) => MatrixData::Q5_1(own(s)),
            packed @ (MatrixData::Q4_0Packed(_) | MatrixData::Q8_0Packed(_)) => packed,
        }
    }
}

/// A row-major `(rows, cols)` weight matrix: `y = W x` reads one row per output.
#[derive(Clone)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: MatrixData,
}

impl Matrix {
    /// Bytes of weights, i.e. what one mat-vec must stream from memory.
    pub fn size_bytes(&self) -> usize {
        match &self.data {
            MatrixData::F32(s) => std::mem::size_of_val(s.as_slice()),
            MatrixData::F16(s) => std::mem::size_of_val(s.as_slice()),
            MatrixData::BF16(s) => std::mem::size_of_val(s.as_slice()),
            MatrixData::Q8_0(s) => std::mem::size_of_val(s.as_slice()),
            MatrixData::Q4_0(s) => std::mem::size_of_val(s.as_slice()),
            MatrixData::Q4_0Packed(p) => p.size_bytes(),
            MatrixData::Q8_0Packed(p) => p.size_bytes(),
            MatrixData::Q4_1(s) => std::mem::size_of_val(s.as_slice()),
            MatrixData::Q5_0(s) => std::mem::size_of_val(s.as_slice()),
            MatrixData::Q5_1(s) => std::mem::size_of_val(s.as_slice()),
        }
    }

    pub fn format_name(&self) -> &'static str {
        match &self.data {
            MatrixData::F32(_) => "f32",
            MatrixData::F16(_) => "f16",
            MatrixData::BF16(_) => "bf16",
            MatrixData::Q8_0(_) | MatrixData::Q8_0Packed(_) => "q8_0",
            MatrixData::Q4_0(_) | MatrixData::Q4_0Packed(_) => "q4_0",
            MatrixData::Q4_1(_) => "q4_1",
            MatrixData::Q5_0(_) => "q5_0",
            MatrixData::Q5_1(_) => "q5_1",
        }
    }

    /// True when activations must be quantized to q8_0 before the dot products.
    pub fn wants_q8_activations(&self) -> bool {
        !matches!(self.data, MatrixData::F32(_) | MatrixData::F16(_) | MatrixData::BF16(_))
    }

    /// Row `r` converted to f32 (used for embedding lookups).
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        match &self.data {
            MatrixData::F32(s) => out.copy_from_slice(&s.as_slice()[r * c..(r + 1) * c]),
            MatrixData::F16(s) => {
                for (o, v) in out.iter_mut().zip(&s.as_slice()[r * c..(r + 1) * c]) {
                    *o = v.to_f32();
                }
            }
            MatrixData::BF16(s) => {
                for (o, v) in out.iter_mut().zip(&s.as_slice()[r * c..(r + 1) * c]) {
                    *o = v.to_f32();
                }
            }
            MatrixData::Q8_0(s) => dequant(s.as_slice(), r, c, out),
            MatrixData::Q4_0(s) => dequant(s.as_slice(), r, c, out),
            MatrixData::Q4_0Packed(p) => p.dequantize_row(r, out),
            MatrixData::Q8_0Packed(p) => p.dequantize_row(r, out),
            MatrixData::Q4_1(s) => dequant(s.as_slice(), r, c, out),
            MatrixData::Q5_0(s) => dequant(s.as_slice(), r, c, out),
            MatrixData::Q5_1(s) => dequant(s.as_slice(), r, c, out),
        }
    }
}

fn dequant<B: chatglm_weights::quant::QuantBlock>(blocks: &[B], r: usize, cols: usize, out: &mut [f32]) {
    let nb = cols / 32;
    chatglm_weights::quant::dequantize_row(&blocks[r * nb..(r + 1) * nb], out)
}
