//! GGUF v3 files: a self-contained model (config, tokenizer, tensors) in
//! the format of ggml / llama.cpp.
//!
//! Layout (all little-endian): magic `GGUF`, `u32` version, `u64` tensor
//! count, `u64` metadata count; the metadata key/value pairs (`string` key,
//! `u32` [`GgufValueType`], value); one tensor info per tensor (`string`
//! name, `u32` n_dims, `u64 ne[n_dims]` innermost first, `u32` ggml type,
//! `u64` offset into the data section); padding to `general.alignment`
//! (default 32); the data section, each tensor at an aligned offset. A
//! string is a `u64` byte length and UTF-8 bytes, no terminator.
//!
//! * [`GgufFile`] ([`reader`]) maps a file and checks everything before a
//!   tensor window is made; [`parse_gguf_bytes`] is the fuzzing entry point.
//! * [`GgufWriter`] ([`writer`]) streams a file tensor by tensor: the header
//!   with every offset is written first (sizes are known in advance), so a
//!   converter holds one tensor, or one row, at a time.
//! * [`model`]: the ChatGLM mapping — llama.cpp's `chatglm` architecture
//!   keys and tensor names, [`GgufModel`] (config + tensors under their
//!   official state-dict names), and the precision plan of `chatglm quantize`.
//!
//! Shapes: GGUF stores `ne[0]` = the contiguous (innermost) dimension
//! first; [`Tensor::shape`](crate::Tensor) is PyTorch order, so the two are
//! reversed: a linear weight `[out, in]` has `ne = [in, out]`.

pub mod model;
pub mod reader;
mod value;
pub mod writer;

pub use model::{convert_rows, encode_f32, row_count, GgufModel, QuantizePlan, TensorPlan};
pub use reader::{parse_gguf_bytes, GgufFile, GgufHeader, GgufTensorInfo};
pub use value::{GgufArray, GgufValue, GgufValueType};
pub use writer::{gguf_file_size, GgufTensorSpec, GgufWriter};

use crate::DType;

/// `GGUF` as a little-endian u32.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The version this crate writes (it reads 2 and 3, which share the layout).
pub const GGUF_VERSION: u32 = 3;
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;

/// The ggml type id of a dtype (`ggml_type` in ggml.h).
pub fn ggml_type_of(dtype: DType) -> u32 {
    match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q4_1 => 3,
        DType::Q5_0 => 6,
        DType::Q5_1 => 7,
        DType::Q8_0 => 8,
        DType::BF16 => 30,
        DType::I8 => 24,
    }
}

/// The dtype of a ggml type id, for the types this crate computes with.
pub fn dtype_of_ggml_type(ggml_type: u32) -> Option<DType> {
    Some(match ggml_type {
        0 => DType::F32,
        1 => DType::F16,
        2 => DType::Q4_0,
        3 => DType::Q4_1,
        6 => DType::Q5_0,
        7 => DType::Q5_1,
        8 => DType::Q8_0,
        30 => DType::BF16,
        _ => return None,
    })
}

/// A readable name for a ggml type id, known or not (for error messages).
pub fn ggml_type_name(ggml_type: u32) -> String {
    const NAMES: [&str; 42] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2 (removed)",
        "Q4_3 (removed)",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4 (removed)",
        "Q4_0_4_8 (removed)",
        "Q4_0_8_8 (removed)",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4 (removed)",
        "IQ4_NL_4_8 (removed)",
        "IQ4_NL_8_8 (removed)",
        "MXFP4",
        "NVFP4",
        "unknown",
    ];
    match NAMES.get(ggml_type as usize) {
        Some(name) if ggml_type < 41 => format!("{name} ({ggml_type})"),
        _ => format!("unknown ({ggml_type})"),
    }
}

/// Rounds `n` up to a multiple of `alignment` (a power of two); `None` on overflow.
pub(crate) fn align_up(n: u64, alignment: u64) -> Option<u64> {
    let mask = alignment.checked_sub(1)?;
    n.checked_add(mask).map(|v| v & !mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_ids_round_trip() {
        for d in [DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1]
        {
            assert_eq!(dtype_of_ggml_type(ggml_type_of(d)), Some(d));
        }
        assert_eq!(dtype_of_ggml_type(12), None);
        assert!(ggml_type_name(12).contains("Q4_K"));
        assert!(ggml_type_name(9999).contains("unknown"));
        assert_eq!(align_up(33, 32), Some(64));
        assert_eq!(align_up(64, 32), Some(64));
        assert_eq!(align_up(u64::MAX, 32), None);
    }
}
