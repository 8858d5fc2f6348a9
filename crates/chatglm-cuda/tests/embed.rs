//! The embedding gathers from a mapped host table through the device row
//! cache: every launch's rows the bits the uncached gather gives, whatever
//! the launch's ids — repeats, rows of one slot with different ids in one
//! launch, rows a launch before cached, launches too large for the cache.
//! Skips without a GPU (`CHATGLM_REQUIRE_GPU=1` fails instead).

use chatglm_cuda::{device_ptr, DType, EmbedRowCache, GgmlBlock, Gpu, EMBED_CACHE_MAX_ROWS};
mod common;

use common::gpu;
use half::f16;

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
                    gpu.embed_ggml(table, b, rows, cols, device_ptr(&ids_dev), ids.len(), device_ptr(&out), with)
                }
                None => {
                    gpu.embed(table, DType::F16, rows, cols, device_ptr(&ids_dev), ids.len(), device_ptr(&out), with)
                }
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

#[test]
fn caches_take_a_power_of_two_of_rows_within_their_budget() {
    assert_eq!(EmbedRowCache::slots_for(2304, 16 << 20), Some(4096));
    assert_eq!(EmbedRowCache::slots_for(8192, 16 << 20), Some(2048));
    // Rows padded to 16 bytes.
    assert_eq!(EmbedRowCache::slots_for(36, 48 * 32), Some(32));
    assert_eq!(EmbedRowCache::slots_for(2304, 15 * 2304), None);
    assert_eq!(EmbedRowCache::slots_for(2304, 0), None);
}
