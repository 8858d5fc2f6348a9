//! The paged KV cache on the GPU: one pool of fixed-size blocks per element
//! type, grown in slabs as sequences need them; a sequence's cache is a list
//! of block addresses (its block table) that goes back to the pool when the
//! cache is dropped.
//!
//! A block holds `block_tokens` positions of one sequence for every layer:
//! `[layer][k|v][group][token][dim]`, so attention reads one group's keys of
//! a block as one contiguous run.

use crate::kv_cache::{KvCacheOps, KvDType};
use crate::ModelError;
use chatglm_cuda::{device_ptr, CudaSlice, DType, Gpu};
use std::sync::{Arc, Mutex};

/// Slabs are at least this large, so a growing dialogue does not allocate
/// every 64 tokens.
const SLAB_BYTES: usize = 128 << 20;

struct PoolState {
    free: Vec<u64>,
    slabs: Vec<CudaSlice<u8>>,
    total_blocks: usize,
}

/// Blocks of one element type.
pub(crate) struct KvPool {
    gpu: Arc<Gpu>,
    pub dtype: DType,
    pub block_tokens: usize,
    pub block_bytes: usize,
    /// Elements per block.
    pub block_elems: usize,
    state: Mutex<PoolState>,
}

impl KvPool {
    pub fn new(
        gpu: Arc<Gpu>,
        dtype: DType,
        n_layers: usize,
        n_groups: usize,
        head_dim: usize,
        block_tokens: usize,
    ) -> Self {
        let block_elems = n_layers * 2 * n_groups * block_tokens * head_dim;
        Self {
            gpu,
            dtype,
            block_tokens,
            block_bytes: block_elems * dtype.size(),
            block_elems,
            state: Mutex::new(PoolState { free: Vec::new(), slabs: Vec::new(), total_blocks: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `n` blocks, growing the pool by a slab when it has too few free.
    fn take(&self, n: usize) -> Result<Vec<u64>, ModelError> {
        let mut st = self.lock();
        if st.free.len() < n {
            let missing = n - st.free.len();
            let slab_blocks = missing.max(SLAB_BYTES / self.block_bytes.max(1)).max(1);
            let slab = match self.gpu.alloc::<u8>(slab_blocks * self.block_bytes, "KV cache blocks") {
                Ok(s) => s,
                Err(_) => {
                    // Try exactly what is missing before giving up.
                    self.gpu.alloc::<u8>(missing * self.block_bytes, "KV cache blocks").map_err(|_| {
                        ModelError::KvPoolExhausted {
                            needed_tokens: n * self.block_tokens,
                            free_tokens: st.free.len() * self.block_tokens,
                        }
                    })?
                }
            };
            let base = device_ptr(&slab);
            let got = slab.len() / self.block_bytes;
            // Newest blocks last: `pop` hands them out first.
            st.free.extend((0..got).rev().map(|i| base + (i * self.block_bytes) as u64));
            st.total_blocks += got;
            st.slabs.push(slab);
        }
        let at = st.free.len() - n;
        Ok(st.free.split_off(at))
    }

    fn give_back(&self, blocks: &mut Vec<u64>) {
        self.lock().free.append(blocks);
    }

    /// (blocks allocated on the device, blocks free).
    pub fn usage(&self) -> (usize, usize) {
        let st = self.lock();
        (st.total_blocks, st.free.len())
    }
}

/// One sequence's keys and values on the GPU.
pub struct CudaKvCache {
    pool: Arc<KvPool>,
    blocks: Vec<u64>,
    len: usize,
    dtype: KvDType,
}

impl CudaKvCache {
    pub(crate) fn new(pool: Arc<KvPool>, dtype: KvDType) -> Self {
        Self { pool, blocks: Vec::new(), len: 0, dtype }
    }

    /// Block addresses, in position order.
    pub(crate) fn blocks(&self) -> &[u64] {
        &self.blocks
    }

    pub(crate) fn pool_dtype(&self) -> DType {
        self.pool.dtype
    }

    /// Makes room for `tokens` positions.
    pub(crate) fn reserve(&mut self, tokens: usize) -> Result<(), ModelError> {
        let needed = tokens.div_ceil(self.pool.block_tokens);
        if needed > self.blocks.len() {
            let more = self.pool.take(needed - self.blocks.len())?;
            self.blocks.extend(more);
        }
        Ok(())
    }
}

impl Drop for CudaKvCache {
    fn drop(&mut self) {
        self.pool.give_back(&mut self.blocks);
    }
}

impl KvCacheOps for CudaKvCache {
    fn len(&self) -> usize {
        self.len
    }

    fn dtype(&self) -> KvDType {
        self.dtype
    }

    fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
        // Whole blocks past the end go back to the pool for other sequences.
        let keep = self.len.div_ceil(self.pool.block_tokens);
        if self.blocks.len() > keep {
            let mut tail = self.blocks.split_off(keep);
            self.pool.give_back(&mut tail);
        }
    }

    fn clear(&mut self) {
        self.truncate(0);
    }

    fn allocated_bytes(&self) -> usize {
        self.blocks.len() * self.pool.block_bytes
    }

    fn fill_synthetic(&mut self, len: usize) {
        let filled = self.reserve(len).map_err(|e| e.to_string()).and_then(|()| {
            for (i, &b) in self.blocks.iter().enumerate() {
                // SAFETY: each block is `block_elems` elements of the pool's type.
                unsafe {
                    self.pool.gpu.fill_random(b, self.pool.block_elems, self.pool.dtype, 0x5EED + i as u64, 0.05)
                }
                .map_err(|e| e.to_string())?;
            }
            self.pool.gpu.synchronize().map_err(|e| e.to_string())
        });
        match filled {
            Ok(()) => self.len = len,
            Err(e) => tracing::error!("cannot fill a synthetic KV cache of {len} tokens: {e}"),
        }
    }

    fn advance(&mut self, n_new: usize) {
        self.len += n_new;
    }
}
