//! Weights from checkpoint tensors to device memory, converted on the host
//! in bounded chunks where the element type changes.

use super::{backend_err, CudaBackend};
use crate::loader::WeightFormat;
use crate::ModelError;
use chatglm_cuda::{CudaError, CudaSlice, DType};
use chatglm_weights::{DType as FileDType, Tensor};
use half::{bf16, f16};

impl CudaBackend {
    pub(super) fn upload_matrix(
        &self,
        t: &Tensor,
        rows: usize,
        cols: usize,
        to: DType,
    ) -> Result<CudaSlice<u8>, ModelError> {
        let what = format!("weights {}", t.name);
        let mut dst =
            self.gpu.alloc::<u8>(rows * cols * to.size(), &what).map_err(|e| backend_err("loading weights", e))?;
        let same = matches!(
            (t.dtype, to),
            (FileDType::F32, DType::F32) | (FileDType::F16, DType::F16) | (FileDType::BF16, DType::BF16)
        );
        let bytes: &[u8] = &t.data;
        if same {
            if bytes.len() < rows * cols * to.size() {
                return Err(ModelError::BadTensor {
                    tensor: t.name.clone(),
                    message: "data is shorter than its shape".into(),
                });
            }
            self.gpu
                .upload(&bytes[..rows * cols * to.size()], &mut dst, &what)
                .map_err(|e| backend_err("loading weights", e))?;
        } else {
            // Convert on the host in row chunks (bounded memory), upload each.
            let from_size = match t.dtype {
                FileDType::F32 => 4,
                FileDType::F16 | FileDType::BF16 => 2,
                other => {
                    return Err(ModelError::BadTensor {
                        tensor: t.name.clone(),
                        message: format!(
                        "{other:?} weights cannot be converted to {} on the GPU yet; use a float checkpoint or the CPU",
                        to.name()
                    ),
                    })
                }
            };
            if bytes.len() < rows * cols * from_size {
                return Err(ModelError::BadTensor {
                    tensor: t.name.clone(),
                    message: "data is shorter than its shape".into(),
                });
            }
            let chunk_rows = (8 << 20) / cols.max(1) + 1;
            let mut staged = Vec::new();
            for r0 in (0..rows).step_by(chunk_rows) {
                let r1 = (r0 + chunk_rows).min(rows);
                let src = &bytes[r0 * cols * from_size..r1 * cols * from_size];
                staged.clear();
                for c in src.chunks_exact(from_size) {
                    let v = match t.dtype {
                        FileDType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                        FileDType::F16 => f16::from_le_bytes([c[0], c[1]]).to_f32(),
                        _ => bf16::from_le_bytes([c[0], c[1]]).to_f32(),
                    };
                    match to {
                        DType::F32 => staged.extend_from_slice(&v.to_le_bytes()),
                        DType::F16 => staged.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
                        DType::BF16 => staged.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
                    }
                }
                let mut view = dst.slice_mut(r0 * cols * to.size()..r1 * cols * to.size());
                self.gpu.stream().memcpy_htod(&staged, &mut view).map_err(|e| {
                    backend_err("loading weights", CudaError::Invalid { op: what.clone(), message: format!("{e:?}") })
                })?;
                // The staging buffer is reused: wait for the copy.
                self.gpu.synchronize().map_err(|e| backend_err("loading weights", e))?;
            }
        }
        self.gpu.synchronize().map_err(|e| backend_err("loading weights", e))?;
        t.data.release_pages(0..t.data.len());
        Ok(dst)
    }
}

pub(super) fn gpu_dtype(format: WeightFormat, stored: FileDType) -> Result<DType, String> {
    match format.resolve(stored) {
        WeightFormat::F32 => Ok(DType::F32),
        WeightFormat::F16 => Ok(DType::F16),
        WeightFormat::BF16 => Ok(DType::BF16),
        other => Err(format!(
            "{} weights are not supported on the GPU yet (only f32, f16 and bf16); use --dtype f16 or bf16, or --device cpu",
            other.name()
        )),
    }
}
