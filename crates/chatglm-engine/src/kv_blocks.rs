//! KV-cache memory accounting in fixed-size blocks of tokens.
//!
//! The caches themselves grow lazily per sequence (see
//! [`chatglm_model::KvCache`]); the allocator only counts, so that the sum of
//! what running sequences may ever hold stays within the configured budget.

/// Counts free and reserved blocks of `block_size_tokens` tokens each.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    block_size_tokens: usize,
    total_blocks: usize,
    free_blocks: usize,
}

impl BlockAllocator {
    /// `total_blocks` blocks of `block_size_tokens` tokens (both at least 1).
    pub fn new(block_size_tokens: usize, total_blocks: usize) -> Self {
        Self { block_size_tokens: block_size_tokens.max(1), total_blocks, free_blocks: total_blocks }
    }

    /// Blocks that fit in `budget_bytes` at `bytes_per_token`.
    pub fn blocks_in_budget(budget_bytes: usize, bytes_per_token: usize, block_size_tokens: usize) -> usize {
        let block_bytes = bytes_per_token.max(1) * block_size_tokens.max(1);
        budget_bytes / block_bytes
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size_tokens)
    }

    pub fn block_size_tokens(&self) -> usize {
        self.block_size_tokens
    }

    pub fn total_blocks(&self) -> usize {
        self.total_blocks
    }

    pub fn free_blocks(&self) -> usize {
        self.free_blocks
    }

    pub fn reserved_blocks(&self) -> usize {
        self.total_blocks - self.free_blocks
    }

    /// Takes `n` blocks if that many are free.
    pub fn try_reserve(&mut self, n: usize) -> bool {
        if n <= self.free_blocks {
            self.free_blocks -= n;
            true
        } else {
            false
        }
    }

    /// Returns `n` blocks (never more than were reserved).
    pub fn release(&mut self, n: usize) {
        self.free_blocks = (self.free_blocks + n).min(self.total_blocks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_and_releases() {
        let mut a = BlockAllocator::new(16, 4);
        assert_eq!(a.blocks_for(0), 0);
        assert_eq!(a.blocks_for(1), 1);
        assert_eq!(a.blocks_for(16), 1);
        assert_eq!(a.blocks_for(17), 2);
        assert!(a.try_reserve(3));
        assert!(!a.try_reserve(2));
        assert_eq!((a.free_blocks(), a.reserved_blocks()), (1, 3));
        a.release(3);
        assert_eq!(a.free_blocks(), 4);
        a.release(10);
        assert_eq!(a.free_blocks(), 4);
    }

    #[test]
    fn budget_in_blocks() {
        // ChatGLM2-6B, f16 KV: 28 KiB per token; 16-token blocks of 448 KiB.
        let per_token = 28 * 1024;
        assert_eq!(BlockAllocator::blocks_in_budget(448 * 1024 * 10 + 5, per_token, 16), 10);
    }
}
