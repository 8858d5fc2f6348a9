//! The paged KV cache on the GPU: one pool of fixed-size blocks per element
//! type, grown in slabs as sequences need them; a sequence's cache is a list
//! of block addresses (its block table) that goes back to the pool when the
//! cache is dropped. Under the engine, the pool also holds the engine's
//! blocks, allocated at once (`provide`): the engine's allocator hands their
//! ids to sequences, and a cache given ids (`use_blocks`) reads and writes
//! exactly those blocks and never returns them itself.
//!
//! A block holds `block_tokens` positions of one sequence for every layer:
//! `[layer][k|v][group][token][dim]`, so attention reads one group's keys of
//! a block as one contiguous run.

use crate::kv_cache::{KvBlockId, KvCacheOps, KvDType};
use crate::ModelError;
use chatglm_cuda::{device_ptr, CudaSlice, DType, Gpu, KvFormat};
use std::sync::{Arc, Mutex};

/// Slabs are at least this large, so a growing dialogue does not allocate
/// every 64 tokens.
const SLAB_BYTES: usize = 128 << 20;

struct PoolState {
    free: Vec<u64>,
    slabs: Vec<CudaSlice<u8>>,
    total_blocks: usize,
    /// The engine's blocks: one allocation, block id i at `base + i · block_bytes`.
    engine: Option<(CudaSlice<u8>, usize)>,
}

/// Blocks of one element type.
pub(crate) struct KvPool {
    gpu: Arc<Gpu>,
    pub dtype: KvFormat,
    pub block_tokens: usize,
    pub block_bytes: usize,
    state: Mutex<PoolState>,
}

impl KvPool {
    pub fn new(
        gpu: Arc<Gpu>,
        dtype: KvFormat,
        n_layers: usize,
        n_groups: usize,
        head_dim: usize,
        block_tokens: usize,
    ) -> Self {
        Self {
            gpu,
            dtype,
            block_tokens,
            block_bytes: n_layers * 2 * n_groups * block_tokens * dtype.row_bytes(head_dim),
            state: Mutex::new(PoolState { free: Vec::new(), slabs: Vec::new(), total_blocks: 0, engine: None }),
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

    /// (blocks allocated on the device, blocks free); the engine's blocks
    /// count as allocated and, being the engine's to hand out, not free.
    pub fn usage(&self) -> (usize, usize) {
        let st = self.lock();
        (st.total_blocks + st.engine.as_ref().map_or(0, |e| e.1), st.free.len())
    }

    /// Allocates `blocks` blocks for the engine (replacing any it had).
    pub fn provide(&self, blocks: usize) -> Result<(), ModelError> {
        let mut st = self.lock();
        st.engine = None;
        if blocks == 0 {
            return Ok(());
        }
        let bytes = blocks.saturating_mul(self.block_bytes);
        let slab = self.gpu.alloc::<u8>(bytes, "the engine's KV cache blocks").map_err(|e| ModelError::Backend {
            op: "KV cache".into(),
            message: format!(
                "cannot allocate {blocks} blocks ({:.2} GiB) for the KV budget: {e}; use a smaller budget",
                bytes as f64 / (1u64 << 30) as f64
            ),
        })?;
        st.engine = Some((slab, blocks));
        Ok(())
    }

    /// Device addresses of the engine's blocks `ids`.
    fn engine_addresses(&self, ids: &[KvBlockId], out: &mut Vec<u64>) -> Result<(), ModelError> {
        let st = self.lock();
        let Some((slab, count)) = &st.engine else {
            return Err(ModelError::Backend {
                op: "KV cache".into(),
                message: "block ids given but no blocks were provided for the engine".into(),
            });
        };
        let base = device_ptr(slab);
        out.clear();
        for &id in ids {
            if id as usize >= *count {
                return Err(ModelError::Backend {
                    op: "KV cache".into(),
                    message: format!("block id {id} outside the engine's {count} blocks"),
                });
            }
            out.push(base + id as u64 * self.block_bytes as u64);
        }
        Ok(())
    }
}

/// P-Tuning v2 prefix keys and values on the device, as the cache rows in
/// front of every token: `[layer][k|v][group][row][dim]` in the pool's
/// element type, keys already rotated by the prefix length (see
/// `CudaBackend::set_kv_prefix`).
pub(crate) struct DevicePrefix {
    pub rows: usize,
    pub data: CudaSlice<u8>,
    /// layers · 2 · groups.
    pub runs: usize,
    pub row_bytes: usize,
}

/// One sequence's keys and values on the GPU.
pub struct CudaKvCache {
    pool: Arc<KvPool>,
    blocks: Vec<u64>,
    /// Tokens held (after any prefix rows).
    len: usize,
    dtype: KvDType,
    /// The blocks are the engine's (given with `use_blocks`), not the pool's
    /// to take back.
    engine_blocks: bool,
    prefix: Option<Arc<DevicePrefix>>,
    /// The blocks the prefix rows were last written to (rewritten when the
    /// blocks in front change, e.g. the engine's after a preemption).
    prefix_at: Vec<u64>,
    prefix_table: Option<CudaSlice<u64>>,
    /// Why the prefix could not be put on the device (reported by the next step).
    prefix_error: Option<String>,
}

impl CudaKvCache {
    pub(crate) fn new(pool: Arc<KvPool>, dtype: KvDType) -> Self {
        Self {
            pool,
            blocks: Vec::new(),
            len: 0,
            dtype,
            engine_blocks: false,
            prefix: None,
            prefix_at: Vec::new(),
            prefix_table: None,
            prefix_error: None,
        }
    }

    /// Records that the prefix could not be set; the next step fails with it.
    pub(crate) fn fail_prefix(&mut self, message: String) {
        self.prefix_error = Some(message);
    }

    /// Puts `prefix` in front of this (empty) cache's tokens.
    pub(crate) fn set_prefix(&mut self, prefix: Arc<DevicePrefix>) {
        self.prefix = Some(prefix);
        self.prefix_at.clear();
    }

    /// Cache rows in front of the tokens (the P-Tuning prefix): token i is
    /// row `prefix_rows + i`.
    pub(crate) fn prefix_rows(&self) -> usize {
        self.prefix.as_ref().map_or(0, |p| p.rows)
    }

    /// Writes the prefix rows into the blocks in front, unless they are
    /// already there. Needs the blocks reserved.
    pub(crate) fn write_prefix(&mut self) -> Result<(), ModelError> {
        if let Some(message) = &self.prefix_error {
            return Err(ModelError::Backend { op: "P-Tuning prefix".into(), message: message.clone() });
        }
        let Some(p) = self.prefix.clone() else { return Ok(()) };
        let n = p.rows.div_ceil(self.pool.block_tokens);
        if self.blocks.len() < n || self.prefix_at[..] == self.blocks[..n] {
            return Ok(());
        }
        let gpu = &self.pool.gpu;
        let err =
            |e: chatglm_cuda::CudaError| ModelError::Backend { op: "P-Tuning prefix".into(), message: e.to_string() };
        let table = gpu.upload_new(&self.blocks[..n], "prefix block addresses").map_err(err)?;
        // SAFETY: `data` holds runs·rows·row_bytes bytes; the table lists the
        // sequence's first n blocks, laid out as the kernel expects (module docs).
        unsafe {
            gpu.write_kv_rows(
                device_ptr(&p.data),
                device_ptr(&table),
                p.rows,
                self.pool.block_tokens,
                p.runs,
                p.row_bytes,
            )
        }
        .map_err(err)?;
        // Kept until the next write: the launch reads it asynchronously.
        self.prefix_table = Some(table);
        self.prefix_at = self.blocks[..n].to_vec();
        Ok(())
    }

    /// Block addresses, in position order.
    pub(crate) fn blocks(&self) -> &[u64] {
        &self.blocks
    }

    pub(crate) fn pool_dtype(&self) -> KvFormat {
        self.pool.dtype
    }

    /// Makes room for `tokens` positions.
    pub(crate) fn reserve(&mut self, tokens: usize) -> Result<(), ModelError> {
        let needed = tokens.div_ceil(self.pool.block_tokens);
        if needed > self.blocks.len() && self.engine_blocks {
            return Err(ModelError::Backend {
                op: "KV cache".into(),
                message: format!(
                    "the engine gave {} blocks for a step that needs {needed} ({tokens} tokens)",
                    self.blocks.len()
                ),
            });
        }
        if needed > self.blocks.len() {
            let more = self.pool.take(needed - self.blocks.len())?;
            self.blocks.extend(more);
        }
        Ok(())
    }
}

impl Drop for CudaKvCache {
    fn drop(&mut self) {
        if !self.engine_blocks {
            self.pool.give_back(&mut self.blocks);
        }
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
        // Whole blocks past the end go back to the pool for other sequences
        // (the engine's go back through the engine); the prefix rows stay.
        let keep = (self.prefix_rows() + self.len).div_ceil(self.pool.block_tokens);
        if self.blocks.len() > keep {
            let mut tail = self.blocks.split_off(keep);
            if !self.engine_blocks {
                self.pool.give_back(&mut tail);
            }
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
            // q8_0 rows are filled as small f16 values: codes of any value,
            // and each f16 scale one of those values.
            let (dtype, elem) = match self.pool.dtype {
                KvFormat::F32 => (DType::F32, 4),
                KvFormat::F16 | KvFormat::Q8_0 => (DType::F16, 2),
            };
            for (i, &b) in self.blocks.iter().enumerate() {
                // SAFETY: each block is `block_bytes` bytes, a multiple of 4.
                unsafe { self.pool.gpu.fill_random(b, self.pool.block_bytes / elem, dtype, 0x5EED + i as u64, 0.05) }
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

    /// Copies `src`'s first blocks whole (the prefix rows and `n` tokens,
    /// and whatever follows them in the last block, which this cache's
    /// length leaves unread) into this empty cache's blocks — the engine's,
    /// given with `use_blocks` first, or its own.
    fn copy_prefix_from(&mut self, src: &Self, n: usize) -> bool {
        let same_kind =
            Arc::ptr_eq(&self.pool, &src.pool) && self.dtype == src.dtype && self.prefix_rows() == src.prefix_rows();
        if !same_kind || self.len != 0 || n == 0 || n > src.len {
            return false;
        }
        let rows = self.prefix_rows() + n;
        if !self.engine_blocks && self.reserve(rows).is_err() {
            return false;
        }
        let blocks = rows.div_ceil(self.pool.block_tokens);
        if self.blocks.len() < blocks || src.blocks.len() < blocks || !self.pool.block_bytes.is_multiple_of(4) {
            return false;
        }
        for (&from, &to) in src.blocks[..blocks].iter().zip(&self.blocks[..blocks]) {
            // SAFETY: both are whole blocks of this pool (block_bytes each); a
            // copy of 4-byte words moves the bits whatever the element type.
            if unsafe { self.pool.gpu.copy_f32(from, to, self.pool.block_bytes / 4) }.is_err() {
                return false;
            }
        }
        // The prefix rows came with the blocks; write_prefix sees blocks it
        // did not write and writes them again (the same rows).
        self.len = n;
        true
    }

    fn use_blocks(&mut self, ids: &[KvBlockId]) -> Result<(), ModelError> {
        let held = if self.len == 0 { 0 } else { self.prefix_rows() + self.len };
        if ids.len() < held.div_ceil(self.pool.block_tokens) {
            return Err(ModelError::Backend {
                op: "KV cache".into(),
                message: format!("{} blocks given for a cache of {} tokens", ids.len(), self.len),
            });
        }
        if !self.engine_blocks && self.len > 0 {
            return Err(ModelError::Backend {
                op: "KV cache".into(),
                message: format!("the cache holds {} tokens in blocks of its own; clear it first", self.len),
            });
        }
        let mut addresses = Vec::with_capacity(ids.len());
        self.pool.engine_addresses(ids, &mut addresses)?;
        if self.len == 0 {
            // A (re)started sequence: blocks it held before may have served
            // others since, so its prefix rows are written again.
            self.prefix_at.clear();
        }
        if !self.engine_blocks {
            self.pool.give_back(&mut self.blocks);
            self.engine_blocks = true;
        }
        self.blocks = addresses;
        Ok(())
    }
}
