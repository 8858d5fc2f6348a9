//! The official INT4/INT8 checkpoints (`THUDM/chatglm2-6b-int4`,
//! `quantization_bit` in config.json), read as q4_0/q8_0.
//!
//! The official `quantization.py` replaces each encoder linear layer's weight
//! by `weight` (int8) and `weight_scale` (one per output row, the model's
//! float type): `q = round(w / scale)` with `scale = max|w| / (2^(bits−1) − 1)`,
//! and `w ≈ q · scale`. At 8 bits `weight` is `[out, in]`; at 4 bits it is
//! `[out, in/2]`, two signed 4-bit values per byte, the first of each pair in
//! the high nibble (its CUDA kernel reads `high = byte >> 4`, `low = (byte <<
//! 4) >> 4`). Both map onto ggml blocks exactly: every 32-weight block takes
//! the row's scale, q8_0 stores `q`, q4_0 stores `q + 8` (nibbles in ggml's
//! order). Embedding and output layer are not quantized by the official code.

use crate::quant::{BlockQ4_0, BlockQ8_0, QK};
use crate::{DType, Tensor, TensorData, WeightsError};
use half::f16;
use std::collections::BTreeMap;
use std::path::Path;

fn bad(root: &Path, tensor: &str, message: String) -> WeightsError {
    WeightsError::BadTensor { path: root.to_path_buf(), tensor: tensor.to_string(), message }
}

/// The signed values of one packed 4-bit row, in weight order.
fn unpack_int4(bytes: &[u8], out: &mut Vec<i8>) {
    out.clear();
    for &b in bytes {
        out.push((b as i8) >> 4);
        out.push(((b << 4) as i8) >> 4);
    }
}

/// Replaces every `X.weight` + `X.weight_scale` pair of `tensors` by `X.weight`
/// as q4_0 (`bits` = 4) or q8_0 (`bits` = 8) blocks.
pub fn convert(tensors: &mut BTreeMap<String, Tensor>, bits: u32, root: &Path) -> Result<(), WeightsError> {
    if bits != 4 && bits != 8 {
        return Err(bad(root, "quantization_bit", format!("{bits} bits (the official checkpoints use 4 or 8)")));
    }
    let scaled: Vec<String> = tensors
        .keys()
        .filter_map(|k| k.strip_suffix("_scale").map(String::from))
        .filter(|k| k.ends_with(".weight"))
        .collect();
    if scaled.is_empty() {
        return Err(bad(
            root,
            "*.weight_scale",
            "config.json sets quantization_bit but no tensor has a weight_scale".into(),
        ));
    }
    for name in scaled {
        let scale = tensors.remove(&format!("{name}_scale")).expect("invariant: listed above");
        let weight =
            tensors.remove(&name).ok_or_else(|| bad(root, &name, "has a weight_scale but no weight".into()))?;
        let converted = convert_one(&weight, &scale, bits, root)?;
        tensors.insert(name, converted);
    }
    Ok(())
}

fn convert_one(weight: &Tensor, scale: &Tensor, bits: u32, root: &Path) -> Result<Tensor, WeightsError> {
    let name = &weight.name;
    if weight.dtype != DType::I8 {
        return Err(bad(root, name, format!("quantized weights must be int8, found {}", weight.dtype)));
    }
    let [rows, packed] = weight.shape[..] else {
        return Err(bad(root, name, format!("expected a 2-D matrix, found shape {:?}", weight.shape)));
    };
    let cols = if bits == 4 { packed * 2 } else { packed };
    if scale.shape != [rows] {
        return Err(bad(root, &scale.name, format!("expected [{rows}] scales, found shape {:?}", scale.shape)));
    }
    if !cols.is_multiple_of(QK) {
        return Err(bad(root, name, format!("rows of {cols} weights are not whole {QK}-weight blocks")));
    }
    if weight.data.len() < rows * packed {
        return Err(bad(root, name, "data is shorter than its shape".into()));
    }
    let scales = scale.to_f32()?;
    let mut bytes = Vec::with_capacity(rows * cols / QK * if bits == 4 { 18 } else { 34 });
    let mut q = Vec::with_capacity(cols);
    for (r, &s) in scales.iter().enumerate() {
        let row = &weight.data[r * packed..(r + 1) * packed];
        if bits == 4 {
            unpack_int4(row, &mut q);
        } else {
            q.clear();
            q.extend(row.iter().map(|&b| b as i8));
        }
        let d = f16::from_f32(s);
        for chunk in q.chunks_exact(QK) {
            if bits == 4 {
                let mut qs = [0u8; QK / 2];
                for (j, b) in qs.iter_mut().enumerate() {
                    *b = (chunk[j] + 8) as u8 | (((chunk[j + 16] + 8) as u8) << 4);
                }
                bytes.extend_from_slice(bytemuck::bytes_of(&BlockQ4_0 { d, qs }));
            } else {
                let mut qs = [0i8; QK];
                qs.copy_from_slice(chunk);
                bytes.extend_from_slice(bytemuck::bytes_of(&BlockQ8_0 { d, qs }));
            }
        }
    }
    weight.data.release_pages(0..weight.data.len());
    Ok(Tensor {
        name: name.clone(),
        dtype: if bits == 4 { DType::Q4_0 } else { DType::Q8_0 },
        shape: vec![rows, cols],
        data: TensorData::from_vec(bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, dtype: DType, shape: Vec<usize>, bytes: Vec<u8>) -> Tensor {
        Tensor { name: name.into(), dtype, shape, data: TensorData::from_vec(bytes) }
    }

    fn scales(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|&s| f16::from_f32(s).to_le_bytes()).collect()
    }

    #[test]
    fn int4_rows_become_q4_0_with_the_same_values() {
        // Row r, weight k: q = ((k·7 + r) % 15) − 7, the official pairs packed high-first.
        let (rows, cols) = (3, 64);
        let q = |r: usize, k: usize| ((k * 7 + r) % 15) as i8 - 7;
        let mut packed = Vec::new();
        for r in 0..rows {
            for i in 0..cols / 2 {
                packed.push(((q(r, 2 * i) as u8) << 4) | (q(r, 2 * i + 1) as u8 & 0x0f));
            }
        }
        let s = [0.5f32, 0.25, 0.125];
        let mut map = BTreeMap::new();
        map.insert("l.weight".to_string(), tensor("l.weight", DType::I8, vec![rows, cols / 2], packed));
        map.insert("l.weight_scale".to_string(), tensor("l.weight_scale", DType::F16, vec![rows], scales(&s)));
        convert(&mut map, 4, Path::new("x")).unwrap();
        let t = &map["l.weight"];
        assert_eq!((t.dtype, t.shape.clone()), (DType::Q4_0, vec![rows, cols]));
        assert!(!map.contains_key("l.weight_scale"));
        let v = t.to_f32().unwrap();
        for r in 0..rows {
            for k in 0..cols {
                assert_eq!(v[r * cols + k], q(r, k) as f32 * s[r], "row {r} weight {k}");
            }
        }
    }

    #[test]
    fn int8_rows_become_q8_0_exactly() {
        let (rows, cols) = (2, 32);
        let data: Vec<u8> = (0..rows * cols).map(|i| ((i as i32 * 37 % 255) - 127) as i8 as u8).collect();
        let mut map = BTreeMap::new();
        map.insert("l.weight".to_string(), tensor("l.weight", DType::I8, vec![rows, cols], data.clone()));
        map.insert("l.weight_scale".to_string(), tensor("l.weight_scale", DType::F16, vec![rows], scales(&[0.5, 2.0])));
        convert(&mut map, 8, Path::new("x")).unwrap();
        let v = map["l.weight"].to_f32().unwrap();
        for (i, (&got, &q)) in v.iter().zip(&data).enumerate() {
            assert_eq!(got, q as i8 as f32 * if i < cols { 0.5 } else { 2.0 });
        }
    }

    #[test]
    fn malformed_pairs_are_refused_with_the_reason() {
        let mut map = BTreeMap::new();
        map.insert("l.weight".to_string(), tensor("l.weight", DType::I8, vec![2, 10], vec![0; 20]));
        map.insert("l.weight_scale".to_string(), tensor("l.weight_scale", DType::F16, vec![2], scales(&[1.0, 1.0])));
        let e = convert(&mut map.clone(), 4, Path::new("x")).unwrap_err().to_string();
        assert!(e.contains("whole 32-weight blocks"), "{e}");
        map.insert("l.weight_scale".to_string(), tensor("l.weight_scale", DType::F16, vec![3], scales(&[1.0; 3])));
        assert!(convert(&mut map.clone(), 8, Path::new("x")).unwrap_err().to_string().contains("scales"));
        assert!(convert(&mut map.clone(), 3, Path::new("x")).is_err());
        let mut none = BTreeMap::new();
        none.insert("a.weight".to_string(), tensor("a.weight", DType::F16, vec![1, 1], vec![0; 2]));
        assert!(convert(&mut none, 4, Path::new("x")).is_err());
    }
}
