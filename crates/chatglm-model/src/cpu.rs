//! The CPU backend: f32 activations, weights in any [`MatrixData`] format.

use crate::forward::TokenLayout;
use crate::kv_cache::KvStore;
use crate::loader::WeightFormat;
use crate::{Backend, ModelError, SequenceInput};
use crate::{KvCache, KvDType};
use chatglm_cpu::attention::{attend_group, AttentionShape, KvElem};
use chatglm_cpu::matmul::{matmul, MatmulScratch};
use chatglm_cpu::ops::{self, RopeTable};
use chatglm_cpu::packed::PackRows;
use chatglm_cpu::{Kernels, Matrix, MatrixData, Storage};
use chatglm_weights::quant::{quantize_row, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QuantBlock};
use chatglm_weights::{DType, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;
use std::sync::Mutex;

/// f32 activations `(rows, cols)`.
pub struct CpuActivations {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

/// Runs the model on CPU cores through the rayon pool.
pub struct CpuBackend {
    kernels: &'static Kernels,
    rope: RopeTable,
    scratch: Mutex<MatmulScratch>,
}

impl CpuBackend {
    /// `head_dim` and `rope_base` (10000 × rope_ratio) fix the rotary table.
    pub fn new(head_dim: usize, rope_base: f32) -> Self {
        Self::with_kernels(Kernels::detect(), head_dim, rope_base)
    }

    pub fn with_kernels(kernels: &'static Kernels, head_dim: usize, rope_base: f32) -> Self {
        Self { kernels, rope: RopeTable::new(head_dim, rope_base), scratch: Mutex::new(MatmulScratch::default()) }
    }

    /// For a model config (its rope_ratio applied as its family does).
    pub fn for_config(cfg: &crate::Config) -> Self {
        Self { kernels: Kernels::detect(), rope: rope_table(cfg), scratch: Mutex::new(MatmulScratch::default()) }
    }

    pub fn kernels(&self) -> &'static Kernels {
        self.kernels
    }
}

/// The rotary table of a model config: `rope_ratio` scales the base or the
/// positions, as the config's family does (`Config::rope_scaling`).
pub(crate) fn rope_table(cfg: &crate::Config) -> RopeTable {
    let (base, position_scale) = cfg.rope_base_and_position_scale();
    RopeTable::with_position_scale(cfg.kv_channels, base, position_scale)
}

fn bad(tensor: &Tensor, message: String) -> ModelError {
    ModelError::BadTensor { tensor: tensor.name.clone(), message }
}

fn quantized<B: QuantBlock>(tensor: &Tensor, rows: usize, cols: usize) -> Result<Vec<B>, ModelError> {
    if !cols.is_multiple_of(32) {
        return Err(bad(
            tensor,
            format!("{cols} columns is not a multiple of the 32-weight block; choose a float format"),
        ));
    }
    let mut row = vec![0.0f32; cols];
    let mut out = chatglm_cpu::memory::huge_vec(rows * cols / 32);
    for r in 0..rows {
        decode_row(tensor, r, cols, &mut row)?;
        out.extend(quantize_row::<B>(&row));
        release_converted_rows(tensor, r, cols);
    }
    Ok(out)
}

/// Quantizes (float source) or copies (same-format source) a tensor row by
/// row straight into a packed layout, releasing source pages as it goes.
fn packed<P>(tensor: &Tensor, rows: usize, cols: usize, format: DType) -> Result<P, ModelError>
where
    P: PackRows,
    P::Block: QuantBlock,
{
    if !cols.is_multiple_of(32) {
        return Err(bad(
            tensor,
            format!("{cols} columns is not a multiple of the 32-weight block; choose a float format"),
        ));
    }
    let mut m = P::with_capacity(rows, cols);
    if tensor.dtype == format {
        let row_bytes = cols / 32 * std::mem::size_of::<P::Block>();
        for r in 0..rows {
            let bytes = tensor
                .data
                .get(r * row_bytes..(r + 1) * row_bytes)
                .ok_or_else(|| bad(tensor, format!("row {r} is out of bounds")))?;
            match bytemuck::try_cast_slice::<u8, P::Block>(bytes) {
                Ok(blocks) => m.push_row(blocks),
                Err(_) => m.push_row(&bytemuck::pod_collect_to_vec::<u8, P::Block>(bytes)),
            }
            release_converted_rows(tensor, r, cols);
        }
    } else {
        let mut row = vec![0.0f32; cols];
        for r in 0..rows {
            decode_row(tensor, r, cols, &mut row)?;
            m.push_row(&quantize_row::<P::Block>(&row));
            release_converted_rows(tensor, r, cols);
        }
    }
    Ok(m.finish())
}

/// Rows converted per release of their source pages.
const RELEASE_EVERY_ROWS: usize = 256;

/// After row `r`, drops the source pages of the rows converted so far (in
/// steps), so converting a mapped tensor never holds both copies in RSS.
fn release_converted_rows(tensor: &Tensor, r: usize, cols: usize) {
    if (r + 1).is_multiple_of(RELEASE_EVERY_ROWS) {
        if let Some(row_bytes) = tensor.dtype.size_in_bytes(cols) {
            tensor.data.release_pages((r + 1 - RELEASE_EVERY_ROWS) * row_bytes..(r + 1) * row_bytes);
        }
    }
}

/// Decodes row `r` of a tensor into f32.
fn decode_row(tensor: &Tensor, r: usize, cols: usize, out: &mut [f32]) -> Result<(), ModelError> {
    let row_bytes = tensor
        .dtype
        .size_in_bytes(cols)
        .ok_or_else(|| bad(tensor, format!("{cols} columns is not a whole number of {} blocks", tensor.dtype)))?;
    let bytes = tensor
        .data
        .get(r * row_bytes..(r + 1) * row_bytes)
        .ok_or_else(|| bad(tensor, format!("row {r} is out of bounds")))?;
    // Every element type decodes exactly (quantized blocks as their values).
    chatglm_weights::decode_f32(tensor.dtype, bytes, out);
    Ok(())
}

fn convert<T: bytemuck::Pod>(
    tensor: &Tensor,
    rows: usize,
    cols: usize,
    f: impl Fn(f32) -> T,
) -> Result<Vec<T>, ModelError> {
    let mut row = vec![0.0f32; cols];
    let mut out = chatglm_cpu::memory::huge_vec(rows * cols);
    for r in 0..rows {
        decode_row(tensor, r, cols, &mut row)?;
        out.extend(row.iter().map(|&v| f(v)));
        release_converted_rows(tensor, r, cols);
    }
    Ok(out)
}

impl Backend for CpuBackend {
    type Matrix = Matrix;
    type Vector = Vec<f32>;
    type Activations = CpuActivations;
    type Cache = KvCache;

    fn new_cache(&self, n_layers: usize, n_groups: usize, head_dim: usize, dtype: KvDType) -> KvCache {
        KvCache::new(n_layers, n_groups, head_dim, dtype)
    }

    fn supports_kv_prefix(&self) -> bool {
        true
    }

    fn set_kv_prefix(&self, cache: &mut KvCache, prefix: &chatglm_weights::ptuning::PrefixKv) {
        let width = prefix.layers.first().map_or(0, |(k, _)| k.len() / prefix.len.max(1));
        for ((k, v), (pk, pv)) in cache.layers.iter_mut().zip(&prefix.layers) {
            k.resize(pk.len());
            v.resize(pv.len());
            store(k, 0..pk.len(), pk);
            store(v, 0..pv.len(), pv);
        }
        debug_assert!(cache.is_empty() && width > 0);
        cache.prefix = prefix.len;
    }

    fn name(&self) -> String {
        format!("cpu ({} kernels, {} threads)", self.kernels.name, rayon::current_num_threads())
    }

    /// The whole step runs on a pool thread, so the calling thread hands
    /// over once per step instead of once per matrix product (a step has
    /// about 170): perf showed 6% of a 1-thread decode in the scheduler, and
    /// with one worker the products now run on it with no hand-over at all.
    fn run_step<R: Send>(&self, step: impl FnOnce() -> R + Send) -> R {
        rayon::scope(|_| step())
    }

    fn load_matrix(&self, t: &Tensor, format: WeightFormat, mmap: bool) -> Result<Matrix, ModelError> {
        let [rows, cols] = t.shape[..] else {
            return Err(bad(t, format!("expected a 2-D matrix, found shape {:?}", t.shape)));
        };
        let data = match (format, t.dtype) {
            (WeightFormat::F32, DType::F32) => MatrixData::F32(Storage::from_tensor_data(t.data.clone())),
            (WeightFormat::F16, DType::F16) => MatrixData::F16(Storage::from_tensor_data(t.data.clone())),
            (WeightFormat::BF16, DType::BF16) => MatrixData::BF16(Storage::from_tensor_data(t.data.clone())),
            (WeightFormat::Q4_1, DType::Q4_1) => MatrixData::Q4_1(Storage::from_tensor_data(t.data.clone())),
            (WeightFormat::Q5_0, DType::Q5_0) => MatrixData::Q5_0(Storage::from_tensor_data(t.data.clone())),
            (WeightFormat::Q5_1, DType::Q5_1) => MatrixData::Q5_1(Storage::from_tensor_data(t.data.clone())),
            (WeightFormat::F32 | WeightFormat::Auto, _) => {
                MatrixData::F32(Storage::Owned(convert(t, rows, cols, |v| v)?))
            }
            (WeightFormat::F16, _) => MatrixData::F16(Storage::Owned(convert(t, rows, cols, f16::from_f32)?)),
            (WeightFormat::BF16, _) => MatrixData::BF16(Storage::Owned(convert(t, rows, cols, bf16::from_f32)?)),
            (WeightFormat::Q8_0, _) => MatrixData::Q8_0Packed(packed(t, rows, cols, DType::Q8_0)?),
            (WeightFormat::Q4_0, _) => MatrixData::Q4_0Packed(packed(t, rows, cols, DType::Q4_0)?),
            (WeightFormat::Q4_1, _) => MatrixData::Q4_1(Storage::Owned(quantized::<BlockQ4_1>(t, rows, cols)?)),
            (WeightFormat::Q5_0, _) => MatrixData::Q5_0(Storage::Owned(quantized::<BlockQ5_0>(t, rows, cols)?)),
            (WeightFormat::Q5_1, _) => MatrixData::Q5_1(Storage::Owned(quantized::<BlockQ5_1>(t, rows, cols)?)),
        };
        let data = if mmap { data } else { data.into_owned() };
        if !matches!(
            &data,
            MatrixData::F32(Storage::Mapped(_))
                | MatrixData::F16(Storage::Mapped(_))
                | MatrixData::BF16(Storage::Mapped(_))
                | MatrixData::Q8_0(Storage::Mapped(_))
                | MatrixData::Q4_0(Storage::Mapped(_))
                | MatrixData::Q4_1(Storage::Mapped(_))
                | MatrixData::Q5_0(Storage::Mapped(_))
                | MatrixData::Q5_1(Storage::Mapped(_))
        ) {
            // Converted: the source pages are never read again, so drop them
            // from our RSS (quantizing a 12.5 GB f16 checkpoint to q4_0 then
            // peaks near 3.5 GB instead of 16 GB).
            t.data.release_pages(0..t.data.len());
        }
        Ok(Matrix { rows, cols, data })
    }

    fn load_vector(&self, values: Vec<f32>) -> Vec<f32> {
        values
    }

    fn random_matrix(&self, rows: usize, cols: usize, format: WeightFormat, seed: u64) -> Matrix {
        let data = match format {
            WeightFormat::F32 => MatrixData::F32(Storage::Owned(random_vec(rows * cols, seed, |r| r))),
            WeightFormat::F16 | WeightFormat::Auto => {
                MatrixData::F16(Storage::Owned(random_vec(rows * cols, seed, f16::from_f32)))
            }
            WeightFormat::BF16 => MatrixData::BF16(Storage::Owned(random_vec(rows * cols, seed, bf16::from_f32))),
            WeightFormat::Q8_0 => MatrixData::Q8_0Packed(random_packed(rows, cols, seed, |r| {
                let mut b: BlockQ8_0 = bytemuck::Zeroable::zeroed();
                b.d = f16::from_f32(0.02 / 127.0);
                let bits = (r.to_bits() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                for (i, q) in b.qs.iter_mut().enumerate() {
                    *q = (bits.rotate_left(i as u32 * 2) as i8) >> 1;
                }
                b
            })),
            WeightFormat::Q4_1 | WeightFormat::Q5_0 | WeightFormat::Q5_1 => {
                // Same byte budget class; values do not matter for speed, so build
                // from random f16 rows through the reference quantizer.
                let src = random_vec(rows * cols, seed, |r| r);
                let t = Tensor {
                    name: "synthetic".into(),
                    dtype: DType::F32,
                    shape: vec![rows, cols],
                    data: chatglm_weights::TensorData::from_vec(bytemuck::cast_slice(&src).to_vec()),
                };
                return self.load_matrix(&t, format, false).expect("invariant: synthetic shapes are multiples of 32");
            }
            WeightFormat::Q4_0 => MatrixData::Q4_0Packed(random_packed(rows, cols, seed, |r| {
                let mut b: BlockQ4_0 = bytemuck::Zeroable::zeroed();
                b.d = f16::from_f32(0.02 / 8.0);
                let bits = (r.to_bits() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                for (i, q) in b.qs.iter_mut().enumerate() {
                    *q = bits.rotate_left(i as u32 * 4) as u8;
                }
                b
            })),
        };
        Matrix { rows, cols, data }
    }

    fn matrix_bytes(&self, m: &Matrix) -> usize {
        m.size_bytes()
    }

    fn read_matrix(&self, m: &Matrix, prefetch: bool) -> Option<(usize, u64)> {
        Some(chatglm_cpu::read_probe::read_pass(m, prefetch))
    }

    fn matrix_format(&self, m: &Matrix) -> &'static str {
        m.format_name()
    }

    fn new_activations(&self) -> CpuActivations {
        CpuActivations { data: Vec::new(), rows: 0, cols: 0 }
    }

    fn resize(&self, a: &mut CpuActivations, rows: usize, cols: usize) {
        a.data.resize(rows * cols, 0.0);
        a.rows = rows;
        a.cols = cols;
    }

    fn embed(&self, table: &Matrix, ids: &[u32], out: &mut CpuActivations) {
        for (row, &id) in out.data.chunks_exact_mut(table.cols).zip(ids) {
            table.row_to_f32(id as usize, row);
        }
    }

    fn rms_norm(&self, x: &CpuActivations, weight: &Vec<f32>, eps: f32, out: &mut CpuActivations) {
        let n = x.rows * x.cols;
        ops::rms_norm(&x.data[..n], weight, eps, &mut out.data[..n]);
    }

    fn linear(&self, w: &Matrix, bias: Option<&Vec<f32>>, x: &CpuActivations, out: &mut CpuActivations) {
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        matmul(self.kernels, w, &x.data[..x.rows * x.cols], x.rows, &mut out.data[..x.rows * w.rows], &mut scratch);
        if let Some(bias) = bias {
            ops::add_bias(&mut out.data[..x.rows * w.rows], bias);
        }
    }

    fn add(&self, x: &mut CpuActivations, y: &CpuActivations) {
        ops::add_inplace(&mut x.data[..x.rows * x.cols], &y.data[..y.rows * y.cols]);
    }

    fn swiglu(&self, x: &CpuActivations, out: &mut CpuActivations) {
        ops::swiglu(self.kernels, &x.data[..x.rows * x.cols], out.cols, &mut out.data[..out.rows * out.cols]);
    }

    fn attention(
        &self,
        shape: AttentionShape,
        layer: usize,
        qkv: &mut CpuActivations,
        layout: &TokenLayout,
        batch: &mut [SequenceInput<'_, KvCache>],
        out: &mut CpuActivations,
    ) {
        let hd = shape.head_dim;
        let q_dim = shape.n_heads * hd;
        let kv_width = shape.n_groups * hd;
        let width = qkv.cols;
        // RoPE on the query heads and key groups of every token.
        for (t, row) in qkv.data.chunks_exact_mut(width).take(qkv.rows).enumerate() {
            self.rope.apply(&mut row[..q_dim + kv_width], hd, layout.position[t]);
        }
        // Append this step's keys and values.
        let mut next_row = 0;
        for (s, seq) in batch.iter_mut().enumerate() {
            let cache = &mut *seq.cache;
            let n_new = layout.seq_tokens[s];
            // Rows after the cache's P-Tuning prefix, if any.
            let start = cache.prefix + layout.seq_start[s];
            cache.reserve_layer(layer, n_new);
            let (k, v) = &mut cache.layers[layer];
            for i in 0..n_new {
                let row = &qkv.data[(next_row + i) * width..(next_row + i + 1) * width];
                let dst = (start + i) * kv_width..(start + i + 1) * kv_width;
                store(k, dst.clone(), &row[q_dim..q_dim + kv_width]);
                store(v, dst, &row[q_dim + kv_width..q_dim + 2 * kv_width]);
            }
            next_row += n_new;
        }
        // Attend: one task per (token, KV group).
        let heads_per_group = shape.n_heads / shape.n_groups;
        let group_width = heads_per_group * hd;
        let kernels = self.kernels;
        let batch: &[SequenceInput<'_, KvCache>] = batch;
        let qkv_data = &qkv.data;
        out.data[..qkv.rows * q_dim].par_chunks_mut(group_width).enumerate().for_each(|(task, out_g)| {
            let (t, g) = (task / shape.n_groups, task % shape.n_groups);
            let q = &qkv_data[t * width + g * group_width..][..group_width];
            let cache = &batch[layout.seq_of_token[t]].cache;
            let n_ctx = cache.prefix + layout.position[t] + 1;
            let (k, v) = &cache.layers[layer];
            match (k, v) {
                (KvStore::F32(k), KvStore::F32(v)) => attend_group(kernels, shape, g, q, k, v, n_ctx, out_g),
                (KvStore::F16(k), KvStore::F16(v)) => attend_group(kernels, shape, g, q, k, v, n_ctx, out_g),
                (KvStore::Q8_0(k), KvStore::Q8_0(v)) => attend_group(kernels, shape, g, q, k, v, n_ctx, out_g),
                _ => unreachable!("invariant: keys and values share the cache dtype"),
            }
        });
    }

    fn gather_rows(&self, x: &CpuActivations, rows: &[usize], out: &mut CpuActivations) {
        for (dst, &r) in out.data.chunks_exact_mut(x.cols).zip(rows) {
            dst.copy_from_slice(&x.data[r * x.cols..(r + 1) * x.cols]);
        }
    }

    fn read(&self, x: &CpuActivations, out: &mut Vec<f32>) {
        out.clear();
        out.extend_from_slice(&x.data[..x.rows * x.cols]);
    }
}

/// `n` values `f(r)` with `r` uniform in about ±0.035 (std 0.02), filled in
/// parallel from per-chunk xorshift streams.
/// A packed quantized matrix of random blocks, built a slab of rows at a
/// time so the full-size block array never exists beside the packed one
/// (it would raise peak memory by the largest matrix: 283 MB for the 6B
/// output layer at q8_0).
fn random_packed<P: PackRows>(rows: usize, cols: usize, seed: u64, block: impl Fn(f32) -> P::Block + Sync) -> P
where
    P::Block: Send,
{
    const SLAB_ROWS: usize = 256;
    let per_row = cols / 32;
    let mut m = P::with_capacity(rows, cols);
    for (i, r0) in (0..rows).step_by(SLAB_ROWS).enumerate() {
        let n = SLAB_ROWS.min(rows - r0);
        let slab = random_vec(n * per_row, seed.wrapping_add((i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)), &block);
        for row in slab.chunks_exact(per_row.max(1)).take(n) {
            m.push_row(row);
        }
    }
    m.finish()
}

fn random_vec<T: Send>(n: usize, seed: u64, f: impl Fn(f32) -> T + Sync) -> Vec<T> {
    const CHUNK: usize = 1 << 16;
    let mut out = chatglm_cpu::memory::huge_vec(n);
    out.par_extend((0..n.div_ceil(CHUNK)).into_par_iter().flat_map_iter(|c| {
        let mut s = seed ^ (c as u64).wrapping_mul(0xD134_2543_DE82_EF95) | 1;
        let len = CHUNK.min(n - c * CHUNK);
        let f = &f;
        (0..len).map(move |_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            f(((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.07)
        })
    }));
    out
}

fn store(dst: &mut KvStore, range: std::ops::Range<usize>, src: &[f32]) {
    match dst {
        KvStore::F32(d) => f32::from_f32_slice(src, &mut d[range]),
        KvStore::F16(d) => f16::from_f32_slice(src, &mut d[range]),
        KvStore::Q8_0(d) => BlockQ8_0::from_f32_slice(src, &mut d[range.start / 32..range.end.div_ceil(32)]),
    }
}
