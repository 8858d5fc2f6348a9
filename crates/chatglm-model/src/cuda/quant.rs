//! Quantized weights for the GPU: 32-weight blocks from a file (or quantized
//! from a float checkpoint at load) rewritten into `chatglm_cuda::quant`'s
//! tiled layout, and the embedding table kept on the host for quantized
//! models (only one row per token is ever read, so it need not take GPU
//! memory: 0.53 GB for ChatGLM2-6B in f16).

use crate::loader::WeightFormat;
use crate::ModelError;
use chatglm_cuda::quant::{QuantFormat, TileShape, TiledMatrix, BLOCK};
use chatglm_cuda::{DType, GgmlBlock, Gpu};
use chatglm_weights::quant::{
    quantize_row, unpack5, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QuantBlock,
};
use chatglm_weights::{DType as FileDType, Tensor, TensorData};
use half::f16;
use rayon::prelude::*;

/// The device format a file format is held in (every one exactly).
pub(super) fn device_format(format: WeightFormat) -> Option<QuantFormat> {
    match format {
        WeightFormat::Q4_0 => Some(QuantFormat::Q4),
        WeightFormat::Q4_1 => Some(QuantFormat::Q4Min),
        WeightFormat::Q8_0 | WeightFormat::Q5_0 => Some(QuantFormat::Q8),
        WeightFormat::Q5_1 => Some(QuantFormat::Q8Min),
        _ => None,
    }
}

/// One block as the device format stores it: (scale, offset, codes); the
/// codes are the first `QuantFormat::code_bytes` bytes (16 or 32).
trait DeviceBlock: QuantBlock {
    fn device(&self) -> (u16, u16, [u8; 32]);
}

fn code16(qs: &[u8; 16]) -> [u8; 32] {
    let mut c = [0u8; 32];
    c[..16].copy_from_slice(qs);
    c
}

impl DeviceBlock for BlockQ8_0 {
    fn device(&self) -> (u16, u16, [u8; 32]) {
        (self.d.to_bits(), 0, self.qs.map(|q| q as u8))
    }
}
impl DeviceBlock for BlockQ4_0 {
    fn device(&self) -> (u16, u16, [u8; 32]) {
        (self.d.to_bits(), 0, code16(&self.qs))
    }
}
impl DeviceBlock for BlockQ4_1 {
    fn device(&self) -> (u16, u16, [u8; 32]) {
        (self.d.to_bits(), self.m.to_bits(), code16(&self.qs))
    }
}
impl DeviceBlock for BlockQ5_0 {
    fn device(&self) -> (u16, u16, [u8; 32]) {
        // d·(q − 16) with q − 16 as a signed 8-bit code: the same integers.
        (self.d.to_bits(), 0, unpack5(self.qh, &self.qs).map(|v| (v as i8 - 16) as u8))
    }
}
impl DeviceBlock for BlockQ5_1 {
    fn device(&self) -> (u16, u16, [u8; 32]) {
        (self.d.to_bits(), self.m.to_bits(), unpack5(self.qh, &self.qs))
    }
}

fn bad(t: &Tensor, message: impl Into<String>) -> ModelError {
    ModelError::BadTensor { tensor: t.name.clone(), message: message.into() }
}

/// Rows of `B` blocks: read from the file when it stores `B`, else quantized
/// from its float values (rows in parallel).
fn rows_of_blocks<B: DeviceBlock>(
    t: &Tensor,
    stored: FileDType,
    rows: usize,
    cols: usize,
) -> Result<Vec<B>, ModelError> {
    let per_row = cols / BLOCK;
    if t.dtype == stored {
        let bytes = &t.data[..];
        let need = rows * per_row * std::mem::size_of::<B>();
        if bytes.len() < need {
            return Err(bad(t, "data is shorter than its shape"));
        }
        return Ok(bytes[..need].chunks_exact(std::mem::size_of::<B>()).map(bytemuck::pod_read_unaligned).collect());
    }
    if t.dtype.is_quantized() {
        return Err(bad(
            t,
            format!("{} weights cannot be requantized to {}; load them as stored", t.dtype.name(), stored.name()),
        ));
    }
    let row_bytes = t.dtype.size_in_bytes(cols).ok_or_else(|| bad(t, "unsupported element type"))?;
    if t.data.len() < rows * row_bytes {
        return Err(bad(t, "data is shorter than its shape"));
    }
    let blocks: Vec<Vec<B>> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let mut x = vec![0f32; cols];
            chatglm_weights::decode_f32(t.dtype, &t.data[r * row_bytes..(r + 1) * row_bytes], &mut x);
            quantize_row::<B>(&x)
        })
        .collect();
    Ok(blocks.into_iter().flatten().collect())
}

fn tile<B: DeviceBlock>(t: &Tensor, stored: FileDType, shape: TileShape) -> Result<TiledMatrix, ModelError> {
    let blocks = rows_of_blocks::<B>(t, stored, shape.rows, shape.cols)?;
    let per_row = shape.cols / BLOCK;
    let mut m = TiledMatrix::new(shape);
    for (i, b) in blocks.iter().enumerate() {
        let (d, min, codes) = b.device();
        m.set_block(i / per_row, i % per_row, d, min, &codes[..shape.format.code_bytes()]);
    }
    Ok(m)
}

/// `t` (rows × cols) in `format` in the device's tiled layout.
pub(super) fn tiled_matrix(
    t: &Tensor,
    rows: usize,
    cols: usize,
    format: WeightFormat,
) -> Result<TiledMatrix, ModelError> {
    let device = device_format(format).ok_or_else(|| bad(t, format!("{} is not a quantized format", format.name())))?;
    let shape = TileShape::new(device, rows, cols).map_err(|e| bad(t, e.to_string()))?;
    match format {
        WeightFormat::Q8_0 => tile::<BlockQ8_0>(t, FileDType::Q8_0, shape),
        WeightFormat::Q4_0 => tile::<BlockQ4_0>(t, FileDType::Q4_0, shape),
        WeightFormat::Q4_1 => tile::<BlockQ4_1>(t, FileDType::Q4_1, shape),
        WeightFormat::Q5_0 => tile::<BlockQ5_0>(t, FileDType::Q5_0, shape),
        _ => tile::<BlockQ5_1>(t, FileDType::Q5_1, shape),
    }
}

/// An embedding table read on the host: the checkpoint's bytes (or random
/// f16 rows for benchmarks), any element type.
pub struct HostTable {
    pub rows: usize,
    pub cols: usize,
    dtype: FileDType,
    data: TensorData,
    /// The same bytes in mapped page-locked memory (then `data` is empty):
    /// the device gathers a step's rows itself ([`HostTable::map_for_device`]).
    mapped: Option<chatglm_cuda::MappedHost>,
    /// The rows the device read last, kept on the device
    /// ([`chatglm_cuda::EmbedRowCache`]) with a mapped table: made at the
    /// first gather (`cache_budget` bytes), after the weights, so that it
    /// moves none of their addresses.
    row_cache: std::sync::OnceLock<chatglm_cuda::EmbedRowCache>,
    cache_budget: usize,
}

/// How the device reads a mapped table's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DeviceRows {
    Float(DType),
    Ggml(GgmlBlock),
}

impl HostTable {
    /// `t` in `format` (quantized), as the CPU backend would hold it, so a
    /// row is the same numbers on both backends.
    pub(super) fn quantized(t: &Tensor, rows: usize, cols: usize, format: WeightFormat) -> Result<Self, ModelError> {
        fn blocks<B: DeviceBlock>(
            t: &Tensor,
            stored: FileDType,
            rows: usize,
            cols: usize,
        ) -> Result<Vec<u8>, ModelError> {
            Ok(bytemuck::cast_slice(&rows_of_blocks::<B>(t, stored, rows, cols)?).to_vec())
        }
        let resolved = format.resolve(t.dtype);
        let (dtype, bytes) = match resolved {
            _ if crate::loader::stored_as(resolved, t.dtype) => return Self::from_tensor(t, rows, cols),
            WeightFormat::Q8_0 => (FileDType::Q8_0, blocks::<BlockQ8_0>(t, FileDType::Q8_0, rows, cols)?),
            WeightFormat::Q4_0 => (FileDType::Q4_0, blocks::<BlockQ4_0>(t, FileDType::Q4_0, rows, cols)?),
            WeightFormat::Q4_1 => (FileDType::Q4_1, blocks::<BlockQ4_1>(t, FileDType::Q4_1, rows, cols)?),
            WeightFormat::Q5_0 => (FileDType::Q5_0, blocks::<BlockQ5_0>(t, FileDType::Q5_0, rows, cols)?),
            WeightFormat::Q5_1 => (FileDType::Q5_1, blocks::<BlockQ5_1>(t, FileDType::Q5_1, rows, cols)?),
            other => return Err(bad(t, format!("a host table in {} is not supported", other.name()))),
        };
        Ok(Self::unmapped(rows, cols, dtype, TensorData::from_vec(bytes)))
    }

    fn unmapped(rows: usize, cols: usize, dtype: FileDType, data: TensorData) -> Self {
        Self { rows, cols, dtype, data, mapped: None, row_cache: Default::default(), cache_budget: 0 }
    }

    pub(super) fn from_tensor(t: &Tensor, rows: usize, cols: usize) -> Result<Self, ModelError> {
        let row_bytes = t.dtype.size_in_bytes(cols).ok_or_else(|| bad(t, "rows are not whole blocks"))?;
        if t.data.len() < rows * row_bytes {
            return Err(bad(t, "data is shorter than its shape"));
        }
        Ok(Self::unmapped(rows, cols, t.dtype, t.data.clone()))
    }

    /// Random rows for benchmarks, stored as a real load would store them:
    /// blocks of `format` where it is a quantized format (the loader keeps a
    /// quantized model's table in the layers' format), else f16. A step's
    /// gather reads a row's bytes over the bus, so the row size is what
    /// matters: 2,304 bytes for a 4,096-wide q4_0 row against 8,192 in f16.
    pub(super) fn random(rows: usize, cols: usize, format: WeightFormat, seed: u64) -> Self {
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let blocks = match format {
            WeightFormat::Q8_0 => Some((FileDType::Q8_0, 0.035 / 127.0, None)),
            WeightFormat::Q4_0 => Some((FileDType::Q4_0, 0.035 / 8.0, None)),
            WeightFormat::Q4_1 => Some((FileDType::Q4_1, 0.07 / 15.0, Some(-0.035))),
            WeightFormat::Q5_0 => Some((FileDType::Q5_0, 0.035 / 16.0, None)),
            WeightFormat::Q5_1 => Some((FileDType::Q5_1, 0.07 / 31.0, Some(-0.035))),
            _ => None,
        };
        let row_bytes = blocks.and_then(|(dtype, ..)| dtype.size_in_bytes(cols).filter(|_| cols.is_multiple_of(32)));
        let (dtype, row_bytes) = match (blocks, row_bytes) {
            (Some((dtype, ..)), Some(b)) => (dtype, b),
            _ => (FileDType::F16, cols * 2),
        };
        let seeds: Vec<u64> = (0..rows.div_ceil(256)).map(|_| next()).collect();
        let mut bytes = vec![0u8; rows * row_bytes];
        bytes.par_chunks_mut(256 * row_bytes).zip(seeds).for_each(|(chunk, seed)| {
            let mut s = seed | 1;
            for v in chunk.chunks_exact_mut(2) {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                if dtype == FileDType::F16 {
                    let x = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.07;
                    v.copy_from_slice(&f16::from_f32(x).to_le_bytes());
                } else {
                    v.copy_from_slice(&(s as u16).to_le_bytes());
                }
            }
            // Every block starts with its f16 scale (then, for q4_1 and q5_1,
            // its f16 minimum): finite values of a trained model's size.
            if let Some((_, d, m)) = blocks.filter(|_| dtype != FileDType::F16) {
                let block_bytes = row_bytes / (cols / 32);
                for b in chunk.chunks_exact_mut(block_bytes) {
                    b[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                    if let Some(m) = m {
                        b[2..4].copy_from_slice(&f16::from_f32(m).to_le_bytes());
                    }
                }
            }
        });
        Self::unmapped(rows, cols, dtype, TensorData::from_vec(bytes))
    }

    /// Bytes the table holds on the host.
    pub fn bytes(&self) -> usize {
        self.raw().len()
    }

    fn raw(&self) -> &[u8] {
        match &self.mapped {
            Some(m) => m.as_slice(),
            None => &self.data,
        }
    }

    /// How the device reads rows of this element type, if it can.
    fn device_rows(&self) -> Option<DeviceRows> {
        Some(match self.dtype {
            FileDType::F32 => DeviceRows::Float(DType::F32),
            FileDType::F16 => DeviceRows::Float(DType::F16),
            FileDType::BF16 => DeviceRows::Float(DType::BF16),
            FileDType::Q8_0 => DeviceRows::Ggml(GgmlBlock::Q8_0),
            FileDType::Q4_0 => DeviceRows::Ggml(GgmlBlock::Q4_0),
            FileDType::Q4_1 => DeviceRows::Ggml(GgmlBlock::Q4_1),
            FileDType::Q5_0 => DeviceRows::Ggml(GgmlBlock::Q5_0),
            FileDType::Q5_1 => DeviceRows::Ggml(GgmlBlock::Q5_1),
            _ => return None,
        })
    }

    /// Moves the bytes into mapped page-locked memory, so the device gathers
    /// rows by ids it holds (the host then need not know a step's tokens
    /// before it launches the step). Tables of other element types stay as
    /// they are.
    ///
    /// With it, a device cache of up to `cache_budget` bytes of rows
    /// ([`chatglm_cuda::EmbedRowCache`]; 0: none).
    pub(super) fn map_for_device(&mut self, gpu: &Gpu, cache_budget: usize) -> Result<(), chatglm_cuda::CudaError> {
        if self.mapped.is_some() || self.device_rows().is_none() {
            return Ok(());
        }
        self.mapped = Some(gpu.mapped_host_copy(&self.data, "embedding table")?);
        self.data = TensorData::from_vec(Vec::new());
        self.cache_budget = cache_budget;
        Ok(())
    }

    /// The device address of a mapped table and how to read its rows.
    pub(super) fn device_table(&self) -> Option<(u64, DeviceRows)> {
        Some((self.mapped.as_ref()?.device_ptr(), self.device_rows()?))
    }

    /// A mapped table's device row cache, made on the first call.
    pub(super) fn row_cache(&self, gpu: &Gpu) -> Result<Option<&chatglm_cuda::EmbedRowCache>, chatglm_cuda::CudaError> {
        if self.mapped.is_none() {
            return Ok(None);
        }
        if self.row_cache.get().is_none() {
            let cache = gpu.embed_row_cache(self.row_bytes(), self.cache_budget)?;
            // Another thread's cache, if it set one first, is as good.
            let _ = self.row_cache.set(cache);
        }
        Ok(self.row_cache.get())
    }

    fn row_bytes(&self) -> usize {
        self.dtype.size_in_bytes(self.cols).unwrap_or(0)
    }

    /// Device bytes its row cache takes (once made: at the first gather).
    pub(super) fn row_cache_bytes(&self) -> usize {
        match self.mapped {
            Some(_) => chatglm_cuda::EmbedRowCache::slots_for(self.row_bytes(), self.cache_budget)
                .map_or(0, |slots| slots * (self.row_bytes().next_multiple_of(16) + 4)),
            None => 0,
        }
    }

    /// Rows `ids` as f32, appended to `out`.
    pub(super) fn gather(&self, ids: &[u32], out: &mut Vec<f32>) -> Result<(), ModelError> {
        let row_bytes = self.dtype.size_in_bytes(self.cols).unwrap_or(0);
        let start = out.len();
        out.resize(start + ids.len() * self.cols, 0.0);
        for (&id, o) in ids.iter().zip(out[start..].chunks_exact_mut(self.cols)) {
            let id = id as usize;
            if id >= self.rows {
                return Err(ModelError::Backend {
                    op: "embed".into(),
                    message: format!("token id {id} is outside the embedding table of {} rows", self.rows),
                });
            }
            let row = self.raw().get(id * row_bytes..(id + 1) * row_bytes).ok_or_else(|| ModelError::Backend {
                op: "embed".into(),
                message: format!("row {id} lies past the {} bytes the embedding table holds", self.bytes()),
            })?;
            chatglm_weights::decode_f32(self.dtype, row, o);
        }
        Ok(())
    }
}

/// Device bytes for the rows of a mapped embedding table a decode step read
/// (its gather then skips the bus round trip for tokens seen before):
/// `CHATGLM_CUDA_EMBED_CACHE_MIB` (0: none), default 16 MiB — 4,096 rows of
/// ChatGLM2-6B's q4_0 table (9.4 MB), a sixteenth of the vocabulary and most
/// of the tokens text uses.
pub(super) fn embed_cache_budget() -> usize {
    static SET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SET.get_or_init(|| {
        let v = std::env::var("CHATGLM_CUDA_EMBED_CACHE_MIB").ok();
        match v.as_deref().map(str::parse::<usize>) {
            None => 16,
            Some(Ok(mib)) if mib <= 4096 => mib,
            Some(_) => {
                tracing::warn!("CHATGLM_CUDA_EMBED_CACHE_MIB={v:?} is not a size in MiB up to 4096; using 16");
                16
            }
        }
    }) << 20
}

impl super::CudaBackend {
    /// `table` in mapped page-locked memory where steps are queued (the
    /// device gathers each step's rows from the ids it chose), unless
    /// `CHATGLM_CUDA_MAPPED_EMBEDDING=0` (the host gathers them: each step
    /// then waits for the one before), with a device cache of the rows read
    /// of [`embed_cache_budget`] bytes. A system that cannot give the
    /// page-locked memory keeps the table as it is, with a warning: slower
    /// steps, not a failed load.
    pub(super) fn device_readable(&self, mut table: HostTable) -> HostTable {
        let wanted = std::env::var("CHATGLM_CUDA_MAPPED_EMBEDDING").map_or(true, |v| v != "0");
        if self.queue_steps && wanted {
            if let Err(e) = table.map_for_device(&self.gpu, embed_cache_budget()) {
                tracing::warn!("embedding table left in pageable memory, decode steps will not be queued: {e}");
            }
        }
        table
    }

    /// A tiled matrix of random codes with scales giving weights of the
    /// float synthetic models' size (benchmarks).
    pub(super) fn random_tiled(
        &self,
        rows: usize,
        cols: usize,
        format: QuantFormat,
        seed: u64,
    ) -> Result<super::CudaMatrix, chatglm_cuda::CudaError> {
        let shape = TileShape::new(format, rows, cols)?;
        let data = self.gpu.alloc::<u8>(shape.offsets().2, "synthetic weights")?;
        self.quantized.store(true, std::sync::atomic::Ordering::Relaxed);
        let (scale, min) = match format {
            QuantFormat::Q4 => (0.035 / 8.0, 0.0),
            QuantFormat::Q4Min => (0.07 / 15.0, -0.035),
            QuantFormat::Q8 => (0.035 / 127.0, 0.0),
            QuantFormat::Q8Min => (0.07 / 255.0, -0.035),
        };
        let ptr = chatglm_cuda::quant::TiledPtr { base: chatglm_cuda::device_ptr(&data), shape };
        // SAFETY: data holds the shape's bytes.
        unsafe { self.gpu.fill_tiled_random(ptr, seed, f16::from_f32(scale).to_bits(), f16::from_f32(min).to_bits())? };
        Ok(super::CudaMatrix {
            quant: Some(shape),
            ..super::CudaMatrix::dense(rows, cols, chatglm_cuda::DType::F16, Some(data))
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_device_gather_reads_blocks_of_the_cpu_sizes() {
        use chatglm_weights::quant::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
        let sizes = [
            (GgmlBlock::Q8_0, std::mem::size_of::<BlockQ8_0>()),
            (GgmlBlock::Q4_0, std::mem::size_of::<BlockQ4_0>()),
            (GgmlBlock::Q4_1, std::mem::size_of::<BlockQ4_1>()),
            (GgmlBlock::Q5_0, std::mem::size_of::<BlockQ5_0>()),
            (GgmlBlock::Q5_1, std::mem::size_of::<BlockQ5_1>()),
        ];
        for (block, size) in sizes {
            assert_eq!(block.bytes(), size, "{block:?}");
        }
        let table = HostTable::random(4, 64, WeightFormat::F16, 1);
        assert_eq!(table.device_rows(), Some(DeviceRows::Float(DType::F16)));
        assert!(table.device_table().is_none(), "not mapped");
    }

    #[test]
    fn a_synthetic_table_holds_the_rows_a_real_load_would() {
        for (format, dtype, row_bytes) in [
            (WeightFormat::Q4_0, FileDType::Q4_0, 2 * 18),
            (WeightFormat::Q4_1, FileDType::Q4_1, 2 * 20),
            (WeightFormat::Q5_0, FileDType::Q5_0, 2 * 22),
            (WeightFormat::Q5_1, FileDType::Q5_1, 2 * 24),
            (WeightFormat::Q8_0, FileDType::Q8_0, 2 * 34),
            (WeightFormat::F16, FileDType::F16, 128),
        ] {
            let table = HostTable::random(300, 64, format, 7);
            assert_eq!(table.dtype, dtype, "{format:?}");
            assert_eq!(table.bytes(), 300 * row_bytes, "{format:?}");
            let mut out = Vec::new();
            table.gather(&[0, 17, 299], &mut out).unwrap();
            assert_eq!(out.len(), 3 * 64);
            assert!(out.iter().all(|v| v.is_finite() && v.abs() < 0.1), "{format:?}: {out:?}");
            assert!(out.iter().any(|&v| v != 0.0), "{format:?}");
        }
        // Rows that are not whole blocks stay f16.
        assert_eq!(HostTable::random(3, 40, WeightFormat::Q4_0, 1).dtype, FileDType::F16);
    }

    use super::*;
    use chatglm_weights::quant::dequantize_row;

    fn tensor(rows: usize, cols: usize) -> Tensor {
        let mut bytes = Vec::new();
        for i in 0..rows * cols {
            let v = ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * (1.0 + (i % 5) as f32);
            bytes.extend_from_slice(&f16::from_f32(v).to_le_bytes());
        }
        Tensor { name: "w".into(), dtype: FileDType::F16, shape: vec![rows, cols], data: TensorData::from_vec(bytes) }
    }

    /// What the device computes for one weight from its tiled block.
    fn device_value(format: QuantFormat, d: u16, m: u16, codes: &[u8], k: usize) -> f32 {
        let d = f16::from_bits(d).to_f32();
        let m = f16::from_bits(m).to_f32();
        match format {
            QuantFormat::Q4 | QuantFormat::Q4Min => {
                let q = if k < 16 { codes[k] & 0x0f } else { codes[k - 16] >> 4 } as f32;
                if format == QuantFormat::Q4 {
                    d * (q - 8.0)
                } else {
                    d * q + m
                }
            }
            QuantFormat::Q8 => d * (codes[k] as i8) as f32,
            QuantFormat::Q8Min => d * codes[k] as f32 + m,
        }
    }

    fn check<B: DeviceBlock>(format: WeightFormat) {
        let (rows, cols) = (19, 96);
        let t = tensor(rows, cols);
        let m = tiled_matrix(&t, rows, cols, format).unwrap();
        let x = t.to_f32().unwrap();
        for r in 0..rows {
            let blocks = quantize_row::<B>(&x[r * cols..(r + 1) * cols]);
            let mut want = vec![0f32; cols];
            dequantize_row(&blocks, &mut want);
            for b in 0..cols / BLOCK {
                let (d, min, codes) = m.block(r, b);
                for k in 0..BLOCK {
                    let got = device_value(m.shape.format, d, min, &codes, k);
                    assert_eq!(got, want[b * BLOCK + k], "{format:?} row {r} col {}", b * BLOCK + k);
                }
            }
        }
    }

    #[test]
    fn every_format_is_held_exactly() {
        check::<BlockQ8_0>(WeightFormat::Q8_0);
        check::<BlockQ4_0>(WeightFormat::Q4_0);
        check::<BlockQ4_1>(WeightFormat::Q4_1);
        check::<BlockQ5_0>(WeightFormat::Q5_0);
        check::<BlockQ5_1>(WeightFormat::Q5_1);
    }

    #[test]
    fn host_rows_decode_as_the_tensor_does() {
        let t = tensor(10, 64);
        let table = HostTable::from_tensor(&t, 10, 64).unwrap();
        let mut out = Vec::new();
        table.gather(&[3, 0, 9], &mut out).unwrap();
        let all = t.to_f32().unwrap();
        assert_eq!(&out[..64], &all[3 * 64..4 * 64]);
        assert_eq!(&out[128..], &all[9 * 64..]);
        assert!(table.gather(&[10], &mut out).is_err());
    }
}
