//! A read-only pass over a weight matrix: every byte a one-token product
//! streams, split over the thread pool in the same row tasks and read ahead
//! with the same software prefetch, but summed instead of multiplied — the
//! read bandwidth those exact bytes allow on this machine at this moment.
//!
//! `chatglm bench --read-probe` alternates such passes with decode steps: on
//! a shared machine whose bandwidth drifts by a third within minutes (bench/
//! RESULTS.md, session 36), a decode rate means something only against a read
//! of the same bytes in the same seconds. A 1 GiB probe re-reading one buffer
//! does not see what streaming 113 distinct matrices sees.

use crate::matrix::{Matrix, MatrixData};
use rayon::prelude::*;

/// Rows a task reads (as `matmul`'s mat-vecs split them).
const ROWS_PER_TASK: usize = 16;

/// The byte arrays a one-token product of `m` reads.
fn parts(m: &Matrix) -> Vec<&[u8]> {
    fn b<T: bytemuck::Pod>(s: &[T]) -> &[u8] {
        bytemuck::cast_slice(s)
    }
    match &m.data {
        MatrixData::F32(s) => vec![b(s.as_slice())],
        MatrixData::F16(s) => vec![b(s.as_slice())],
        MatrixData::BF16(s) => vec![b(s.as_slice())],
        MatrixData::Q8_0(s) => vec![b(s.as_slice())],
        MatrixData::Q4_0(s) => vec![b(s.as_slice())],
        MatrixData::Q4_1(s) => vec![b(s.as_slice())],
        MatrixData::Q5_0(s) => vec![b(s.as_slice())],
        MatrixData::Q5_1(s) => vec![b(s.as_slice())],
        MatrixData::Q4_0Packed(p) => vec![b(&p.qs), b(&p.scales)],
        MatrixData::Q8_0Packed(p) => vec![b(&p.qs), b(&p.scales)],
    }
}

/// Sum of `bytes` as little-endian u64 words from its start (a tail shorter
/// than a word added byte by byte); with `PREFETCH`, the stream read ahead
/// as the kernels read theirs.
fn sum_words<const PREFETCH: bool>(bytes: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked above).
        return unsafe { avx2::sum_words::<PREFETCH>(bytes) };
    }
    sum_words_scalar::<PREFETCH>(bytes)
}

fn sum_words_scalar<const PREFETCH: bool>(bytes: &[u8]) -> u64 {
    let mut lanes = [0u64; 16];
    let mut blocks = bytes.chunks_exact(128);
    for block in &mut blocks {
        if PREFETCH {
            crate::prefetch::ahead(block.as_ptr());
        }
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            *lane = lane.wrapping_add(u64::from_le_bytes(word.try_into().expect("8-byte chunk")));
        }
    }
    lanes.iter().fold(tail_sum(blocks.remainder()), |s, &v| s.wrapping_add(v))
}

/// Words, then the last bytes, of what is left after the 128-byte blocks.
fn tail_sum(rest: &[u8]) -> u64 {
    let mut words = rest.chunks_exact(8);
    let sum = (&mut words).fold(0u64, |s, w| s.wrapping_add(u64::from_le_bytes(w.try_into().expect("8 bytes"))));
    words.remainder().iter().fold(sum, |s, &v| s.wrapping_add(v as u64))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Four 256-bit loads a 128-byte block into four accumulators (as the
    /// `membw` probe of bench/chatglm_cpp reads).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sum_words<const PREFETCH: bool>(bytes: &[u8]) -> u64 {
        let mut acc = [_mm256_setzero_si256(); 4];
        let mut blocks = bytes.chunks_exact(128);
        for block in &mut blocks {
            let p = block.as_ptr();
            if PREFETCH {
                crate::prefetch::ahead(p);
            }
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_epi64(*a, _mm256_loadu_si256(p.add(32 * k) as *const __m256i));
            }
        }
        let mut lanes = [0u64; 4];
        let total = _mm256_add_epi64(_mm256_add_epi64(acc[0], acc[1]), _mm256_add_epi64(acc[2], acc[3]));
        _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, total);
        lanes.iter().fold(super::tail_sum(blocks.remainder()), |s, &v| s.wrapping_add(v))
    }
}

/// Reads every byte of `m` once over the rayon pool, with the kernels'
/// software prefetch or without it; returns the bytes read and a checksum of
/// them (which keeps the reads from being optimized away).
pub fn read_pass(m: &Matrix, prefetch: bool) -> (usize, u64) {
    let parts = parts(m);
    let rows = m.rows.max(1);
    let tasks = rows.div_ceil(ROWS_PER_TASK);
    let sum = (0..tasks)
        .into_par_iter()
        .map(|task| {
            let (r0, r1) = (task * ROWS_PER_TASK, ((task + 1) * ROWS_PER_TASK).min(rows));
            parts.iter().fold(0u64, |s, part| {
                let stride = part.len() / rows;
                // The last task also takes what does not divide into rows
                // (the packed scales' slack).
                let end = if r1 == rows { part.len() } else { r1 * stride };
                let range = &part[r0 * stride..end];
                s.wrapping_add(if prefetch { sum_words::<true>(range) } else { sum_words::<false>(range) })
            })
        })
        .reduce(|| 0, u64::wrapping_add);
    (parts.iter().map(|p| p.len()).sum(), std::hint::black_box(sum))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot::BlockQ8_0;
    use crate::packed_q8::PackedQ8_0;
    use crate::Storage;
    use half::f16;

    /// The checksum's arithmetic done plainly: words from the start, then bytes.
    fn plain_sum(p: &[u8]) -> u64 {
        let words = p.len() / 8 * 8;
        let w = p[..words].chunks_exact(8).fold(0u64, |a, c| a.wrapping_add(u64::from_le_bytes(c.try_into().unwrap())));
        p[words..].iter().fold(w, |a, &v| a.wrapping_add(v as u64))
    }

    #[test]
    fn simd_sums_equal_the_scalar_ones() {
        let bytes: Vec<u8> = (0..5008u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for len in [0, 1, 7, 8, 127, 128, 129, 255, 1000, 4999] {
            for start in [0, 1, 5] {
                let b = &bytes[start..start + len];
                assert_eq!(sum_words::<true>(b), sum_words_scalar::<false>(b), "len {len} start {start}");
                assert_eq!(sum_words::<false>(b), plain_sum(b), "len {len} start {start}");
            }
        }
    }

    #[test]
    fn reads_every_byte_of_every_format_once() {
        for (rows, cols) in [(1, 32), (17, 64), (33, 4128), (40, 96)] {
            let values: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 997) as f32 - 498.0) / 100.0).collect();
            let q8: Vec<BlockQ8_0> = chatglm_weights::quant::quantize_row(&values);
            let q4: Vec<crate::dot::BlockQ4_0> = chatglm_weights::quant::quantize_row(&values);
            let matrices = [
                MatrixData::BF16(Storage::Owned(values.iter().map(|&v| half::bf16::from_f32(v)).collect())),
                MatrixData::Q4_0(Storage::Owned(q4.clone())),
                MatrixData::Q4_0Packed(crate::packed::PackedQ4_0::from_blocks(&q4, rows, cols)),
                MatrixData::F16(Storage::Owned(values.iter().map(|&v| f16::from_f32(v)).collect())),
                MatrixData::F32(Storage::Owned(values.clone())),
                MatrixData::Q8_0(Storage::Owned(q8.clone())),
                MatrixData::Q8_0Packed(PackedQ8_0::from_blocks(&q8, rows, cols)),
            ];
            for data in matrices {
                let m = Matrix { rows, cols, data };
                let (bytes, sum) = read_pass(&m, rows % 2 == 0);
                assert_eq!(read_pass(&m, rows % 2 == 1).1, sum);
                assert_eq!(bytes, m.size_bytes(), "{rows}x{cols} {}", m.format_name());
                // Tasks split each part at row boundaries, so the words a
                // task sums start at a different offset than one plain
                // pass: compare each task's share summed the same way.
                let parts = parts(&m);
                let tasks = rows.div_ceil(ROWS_PER_TASK);
                let mut expect = 0u64;
                for task in 0..tasks {
                    let (r0, r1) = (task * ROWS_PER_TASK, ((task + 1) * ROWS_PER_TASK).min(rows));
                    for part in &parts {
                        let stride = part.len() / rows;
                        let end = if r1 == rows { part.len() } else { r1 * stride };
                        expect = expect.wrapping_add(plain_sum(&part[r0 * stride..end]));
                    }
                }
                assert_eq!(sum, expect, "{rows}x{cols} {}", m.format_name());
            }
        }
    }
}
