//! The KV-cache blocks of the engine's budget: fixed-size blocks of tokens,
//! handed out by id as sequences grow and taken back when they finish or are
//! preempted.
//!
//! The ids are real: a backend with a paged cache (the GPU) allocates the
//! budget's blocks once (`Backend::provide_kv_blocks`) and each sequence's
//! cache reads and writes exactly the blocks the engine gave it
//! (`KvCacheOps::use_blocks`). The CPU keeps its faster contiguous caches and
//! uses the ids only for the accounting.

use chatglm_model::KvBlockId;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Free and held blocks of `block_size_tokens` tokens each.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    block_size_tokens: usize,
    /// Cache rows in front of every sequence's tokens (a P-Tuning prefix).
    lead_rows: usize,
    total_blocks: usize,
    /// A min-heap: the lowest free id goes out first (a lazily backed pool
    /// then touches as little memory as it can). Freeing costs log(free) a
    /// block, not a sort of the whole free list (with a large budget that sort
    /// was most of the engine's host time under load).
    free: BinaryHeap<Reverse<KvBlockId>>,
}

impl BlockAllocator {
    /// `total_blocks` blocks of `block_size_tokens` tokens (at least 1 token).
    pub fn new(block_size_tokens: usize, total_blocks: usize) -> Self {
        let total_blocks = total_blocks.min(KvBlockId::MAX as usize);
        Self {
            block_size_tokens: block_size_tokens.max(1),
            lead_rows: 0,
            total_blocks,
            free: (0..total_blocks as KvBlockId).map(Reverse).collect(),
        }
    }

    /// Blocks that fit in `budget_bytes` at `bytes_per_token`.
    pub fn blocks_in_budget(budget_bytes: usize, bytes_per_token: usize, block_size_tokens: usize) -> usize {
        let block_bytes = bytes_per_token.max(1) * block_size_tokens.max(1);
        budget_bytes / block_bytes
    }

    /// The same blocks with `rows` cache rows in front of every sequence's
    /// tokens (a P-Tuning v2 prefix: its keys and values are in each cache).
    pub fn with_lead_rows(mut self, rows: usize) -> Self {
        self.lead_rows = rows;
        self
    }

    /// Blocks needed to hold `tokens` tokens (and the rows in front of them).
    pub fn blocks_for(&self, tokens: usize) -> usize {
        if tokens == 0 {
            return 0;
        }
        (self.lead_rows + tokens).div_ceil(self.block_size_tokens)
    }

    pub fn block_size_tokens(&self) -> usize {
        self.block_size_tokens
    }

    pub fn total_blocks(&self) -> usize {
        self.total_blocks
    }

    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    pub fn reserved_blocks(&self) -> usize {
        self.total_blocks - self.free.len()
    }

    /// Appends `n` free blocks to `blocks` if that many are free (else
    /// changes nothing and returns `false`).
    pub fn allocate(&mut self, n: usize, blocks: &mut Vec<KvBlockId>) -> bool {
        if n > self.free.len() {
            return false;
        }
        blocks.reserve(n);
        for _ in 0..n {
            blocks.extend(self.free.pop().map(|Reverse(id)| id));
        }
        true
    }

    /// Takes back every block of `blocks` (emptied).
    pub fn free(&mut self, blocks: &mut Vec<KvBlockId>) {
        debug_assert!(self.free.len() + blocks.len() <= self.total_blocks, "a block freed twice");
        self.free.extend(blocks.drain(..).map(Reverse));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_distinct_ids_and_takes_them_back() {
        let mut a = BlockAllocator::new(16, 4);
        assert_eq!(a.blocks_for(0), 0);
        assert_eq!(a.blocks_for(1), 1);
        assert_eq!(a.blocks_for(16), 1);
        assert_eq!(a.blocks_for(17), 2);
        // A 20-row prefix in front of every sequence's tokens.
        let p = BlockAllocator::new(16, 4).with_lead_rows(20);
        assert_eq!(p.blocks_for(0), 0);
        assert_eq!(p.blocks_for(1), 2);
        assert_eq!(p.blocks_for(12), 2);
        assert_eq!(p.blocks_for(13), 3);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        assert!(a.allocate(3, &mut x));
        assert_eq!(x, [0, 1, 2]);
        assert!(!a.allocate(2, &mut y));
        assert!(y.is_empty());
        assert_eq!((a.free_blocks(), a.reserved_blocks()), (1, 3));
        assert!(a.allocate(1, &mut y));
        assert_eq!(y, [3]);
        a.free(&mut x);
        assert!(x.is_empty());
        assert_eq!(a.free_blocks(), 3);
        // The lowest free ids come first again.
        assert!(a.allocate(2, &mut y));
        assert_eq!(y, [3, 0, 1]);
        a.free(&mut y);
        assert_eq!(a.free_blocks(), 4);
    }

    #[test]
    fn budget_in_blocks() {
        // ChatGLM2-6B, f16 KV: 28 KiB per token; 16-token blocks of 448 KiB.
        let per_token = 28 * 1024;
        assert_eq!(BlockAllocator::blocks_in_budget(448 * 1024 * 10 + 5, per_token, 16), 10);
    }
}
