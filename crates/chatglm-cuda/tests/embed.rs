//! The embedding gathers from a mapped host table through the device row
//! cache: every launch's rows the bits the uncached gather gives, whatever
//! the launch's ids — repeats, rows of one slot with different ids in one
//! launch, rows a launch before cached, launches too large for the cache.
//! Skips without a GPU (`CHATGLM_REQUIRE_GPU=1` fails instead).

use chatglm_cuda::quant::{fold_codes_bytes, fold_sums};
use chatglm_cuda::{device_ptr, DType, EmbedFold, EmbedRowCache, GgmlBlock, Gpu, EMBED_CACHE_MAX_ROWS};
use half::f16;
use std::sync::Arc;

fn gpu() -> Option<Arc<Gpu>> {
    match Gpu::open(0) {
        Ok(g) => Some(g),
        Err(e) => {
            if std::env::var_os("CHATGLM_REQUIRE_GPU").is_some() {
                panic!("CHATGLM_REQUIRE_GPU is set but the GPU cannot be used: {e}");
            }
            eprintln!("skipped: no usable CUDA GPU ({e})");
            None
        }
    }
}

/// A table's bytes: `rows` rows of `row_bytes` random bytes, each 32-value
/// block starting with a finite f16 scale where `block` is given.
fn table_bytes(rows: usize, row_bytes: usize, block: Option<usize>, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut bytes: Vec<u8> = (0..rows * row_bytes)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 32) as u8
        })
        .collect();
    match block {
        Some(b) => {
            for blk in bytes.chunks_exact_mut(b) {
                blk[..2].copy_from_slice(&f16::from_f32(0.01).to_le_bytes());
            }
        }
        None => {
            for v in bytes.chunks_exact_mut(2) {
                let x = f16::from_bits(u16::from_le_bytes([v[0], v[1]]));
                if !x.is_finite() {
                    v.copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
                }
            }
        }
    }
    bytes
}

/// Gathers `ids` with and without `cache` (an f16 table when `block` is
/// `None`, else ggml blocks of that kind) and returns both outputs.
fn both(
    gpu: &Gpu,
    table: u64,
    rows: usize,
    cols: usize,
    block: Option<GgmlBlock>,
    ids: &[i32],
    cache: &EmbedRowCache,
) -> (Vec<f32>, Vec<f32>) {
    let ids_dev = gpu.upload_new(ids, "ids").unwrap();
    let mut outs = Vec::new();
    for with in [Some(cache), None] {
        let out = gpu.alloc::<f32>(ids.len() * cols, "out").unwrap();
        // SAFETY: table: rows × cols values of the kind; ids: ids.len() ints
        // below rows; out: ids.len() × cols f32; the cache made for these rows.
        unsafe {
            match block {
                Some(b) => {
                    gpu.embed_ggml(table, b, rows, cols, device_ptr(&ids_dev), ids.len(), device_ptr(&out), with, None)
                }
                None => gpu.embed(
                    table,
                    DType::F16,
                    rows,
                    cols,
                    device_ptr(&ids_dev),
                    ids.len(),
                    device_ptr(&out),
                    with,
                    None,
                ),
            }
            .unwrap();
        }
        let mut host = vec![0f32; ids.len() * cols];
        gpu.download(&out, &mut host, "out").unwrap();
        outs.push(host);
    }
    let b = outs.pop().unwrap();
    (outs.pop().unwrap(), b)
}

#[test]
fn cached_rows_are_the_bits_of_uncached_ones() {
    let Some(gpu) = gpu() else { return };
    let rows = 300;
    for (block, cols) in
        [(Some(GgmlBlock::Q4_0), 128), (Some(GgmlBlock::Q8_0), 96), (Some(GgmlBlock::Q5_1), 64), (None, 72)]
    {
        let row_bytes = match block {
            Some(b) => cols / 32 * b.bytes(),
            None => cols * 2,
        };
        let bytes = table_bytes(rows, row_bytes, block.map(|b| b.bytes()), 11);
        let mapped = gpu.mapped_host_copy(&bytes, "table").unwrap();
        // 16 slots: ids 5, 21, 37, … share slot 5.
        let cache = gpu.embed_row_cache(row_bytes, 16 * row_bytes.next_multiple_of(16)).unwrap();
        assert_eq!(cache.slots(), 16);
        let big: Vec<i32> = (0..EMBED_CACHE_MAX_ROWS as i32 + 3).map(|i| (i * 7) % rows as i32).collect();
        let launches: Vec<Vec<i32>> = vec![
            vec![5, 9, 5, 299],  // fills 5, 9 and 299 (two rows of id 5: the same bytes)
            vec![21, 5, 9],      // 21 and 5 share a slot: 5 read from it, 21 from the table, nothing filled there
            vec![21, 37, 9, 0],  // 21 and 37 clash: neither fills; 9 hits; 0 fills
            vec![21],            // alone: replaces 5
            vec![5, 21, 21, 16], // 21 hits, 5 misses beside it (no fill); 16 replaces 0 in slot 0
            big,                 // past EMBED_CACHE_MAX_ROWS: no cache
            vec![0, 16, 21, 9, 299],
        ];
        for (i, ids) in launches.iter().enumerate() {
            let (cached, plain) = both(&gpu, mapped.device_ptr(), rows, cols, block, ids, &cache);
            assert!(
                cached.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{block:?}: launch {i} ({ids:?}) differs through the cache"
            );
        }
        // A cache of no slots: the same kernels, every row from the table.
        let none = gpu.embed_row_cache(row_bytes, 0).unwrap();
        assert_eq!((none.slots(), none.bytes()), (0, 0));
        let (cached, plain) = both(&gpu, mapped.device_ptr(), rows, cols, block, &[3, 3, 7], &none);
        assert!(cached.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits()), "{block:?}: no slots");
        let tags = cache.tags(&gpu).unwrap();
        assert_eq!(tags[9], 9, "{block:?}: {tags:?}");
        assert_eq!(tags[299 % 16], 299, "{block:?}: {tags:?}");
        assert_eq!(tags[5], 21, "{block:?}: {tags:?}");
        assert_eq!(tags[0], 16, "{block:?}: {tags:?}");
    }
}

/// Where quantize_x's f16 form (and so a norm fold) keeps column `c` of a
/// 32-column block (qmma.cu's `f16_activation_slot`).
fn f16_activation_slot(c: usize) -> usize {
    let (i, pr, r) = (c >> 2, c & 1, (c >> 1) & 1);
    ((i & 3) * 2 + (i >> 2)) * 4 + pr * 2 + r
}

#[test]
fn gathers_fold_the_first_norm() {
    // A gather with a fold writes the rows it writes without one, bit for
    // bit, and beside them the norm fold a residual product hands on
    // (quant::OneTokenCodes::fold_norm): f16(v·g/8) in quantize_x's f16
    // form, saturated past f16's range, and each row's sums of squares
    // over groups of 128 columns — here ending in a partial group, through
    // a cache and from the table (mapped and on the device).
    let Some(gpu) = gpu() else { return };
    let rows = 40;
    let cols = 1120;
    let ids: Vec<i32> = vec![3, 17, 3, 39, 0, 21, 8, 8, 30, 11, 5, 2];
    let n = ids.len();
    let norm: Vec<f32> = (0..cols).map(|c| if c == 7 { 9.0e4 } else { 0.25 + (c % 13) as f32 * 0.2 }).collect();
    let norm_dev = gpu.upload_new(&norm, "norm").unwrap();
    let ids_dev = gpu.upload_new(&ids, "ids").unwrap();
    for block in [Some(GgmlBlock::Q4_0), Some(GgmlBlock::Q8_0), None] {
        let row_bytes = match block {
            Some(b) => cols / 32 * b.bytes(),
            None => cols * 2,
        };
        let bytes = table_bytes(rows, row_bytes, block.map(|b| b.bytes()), 5);
        let mapped = gpu.mapped_host_copy(&bytes, "table").unwrap();
        let device = gpu.upload_new(&bytes, "table").unwrap();
        let cache = gpu.embed_row_cache(row_bytes, 64 * row_bytes.next_multiple_of(16)).unwrap();
        for (table, cache) in [(mapped.device_ptr(), Some(&cache)), (device_ptr(&device), None)] {
            let gather = |fold: Option<EmbedFold>| {
                let out = gpu.alloc::<f32>(n * cols, "out").unwrap();
                // SAFETY: the table holds rows × cols values of the kind; ids
                // below rows; out n × cols; the fold's buffer below.
                unsafe {
                    match block {
                        Some(b) => {
                            gpu.embed_ggml(table, b, rows, cols, device_ptr(&ids_dev), n, device_ptr(&out), cache, fold)
                        }
                        None => gpu.embed(
                            table,
                            DType::F16,
                            rows,
                            cols,
                            device_ptr(&ids_dev),
                            n,
                            device_ptr(&out),
                            cache,
                            fold,
                        ),
                    }
                    .unwrap();
                }
                let mut host = vec![0f32; n * cols];
                gpu.download(&out, &mut host, "out").unwrap();
                host
            };
            let plain = gather(None);
            let codes = gpu.alloc_zeros::<u8>(fold_codes_bytes(n, cols), "fold").unwrap();
            let base = device_ptr(&codes);
            let folded = gather(Some(EmbedFold { norm: device_ptr(&norm_dev), codes: base }));
            assert!(plain.iter().zip(&folded).all(|(a, b)| a.to_bits() == b.to_bits()), "{block:?}: rows differ");
            let mut fold = vec![0u8; fold_codes_bytes(n, cols)];
            gpu.download(&codes, &mut fold, "fold").unwrap();
            let f16_at = |t: usize, c: usize| {
                let i = 2 * (t * cols + (c & !31) + f16_activation_slot(c & 31));
                f16::from_le_bytes([fold[i], fold[i + 1]])
            };
            let sums_at = (fold_sums(base, n, cols) - base) as usize;
            for t in 0..n {
                let row = &plain[t * cols..(t + 1) * cols];
                for (c, &v) in row.iter().enumerate() {
                    let want = f16::from_f32((v * (norm[c] * 0.125)).clamp(-65504.0, 65504.0));
                    assert_eq!(f16_at(t, c).to_bits(), want.to_bits(), "{block:?}: token {t} column {c} ({v})");
                }
                for (g, group) in row.chunks(128).enumerate() {
                    let want: f64 = group.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
                    let i = sums_at + 4 * (g * 64 + t);
                    let got = f32::from_le_bytes(fold[i..i + 4].try_into().unwrap());
                    assert!(
                        (f64::from(got) - want).abs() <= 1e-5 * want.max(1e-6),
                        "{block:?}: token {t} group {g}: {got} against {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn caches_take_a_power_of_two_of_rows_within_their_budget() {
    assert_eq!(EmbedRowCache::slots_for(2304, 16 << 20), Some(4096));
    assert_eq!(EmbedRowCache::slots_for(8192, 16 << 20), Some(2048));
    // Rows padded to 16 bytes.
    assert_eq!(EmbedRowCache::slots_for(36, 48 * 32), Some(32));
    assert_eq!(EmbedRowCache::slots_for(2304, 15 * 2304), None);
    assert_eq!(EmbedRowCache::slots_for(2304, 0), None);
}
