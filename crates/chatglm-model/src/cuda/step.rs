//! What a GPU step needs besides the activations: one array of ints (token
//! ids, positions, sequence of each token, the tokens for the split-context
//! attention kernel, the query tiles for the tensor-core kernel, the logits
//! rows, the rows whose token the step before chose) and the block table,
//! both built on the host and uploaded once per step.

use crate::forward::TokenLayout;
use chatglm_cuda::ops::FLASH_TILE_TOKENS;
use chatglm_cuda::{AttentionDims, SplitPlan};

/// A sequence with at least this many new tokens in a step uses the
/// tensor-core (flash) attention kernel when it is available; fewer (decode)
/// use the split-context kernel, which shares each key across a group's heads.
pub(crate) const FLASH_MIN_TOKENS: usize = 16;

/// The host side of one step's metadata.
#[derive(Debug, Default)]
pub(crate) struct StepPlan {
    /// `[ids | positions | seq_of_token | work tokens | tiles (4 ints each) | logit rows]`.
    pub meta: Vec<i32>,
    pub n_tokens: usize,
    pub n_work: usize,
    pub n_tiles: usize,
    /// The rows whose logits the step computes (the gather's indices).
    pub logit_rows: Vec<usize>,
    /// (row, source) pairs after the logit rows: tokens the step before chose.
    pub n_chained: usize,
    /// Block addresses: row `s` (`max_blocks` wide) for sequence `s`.
    pub table: Vec<u64>,
    pub max_blocks: usize,
    pub split: Option<SplitPlan>,
    /// Whether the split work runs on a decode kernel (head size 128, f16 or q8_0 cache).
    pub decode_kernel: bool,
    /// Query heads per decode-attention block (with the decode kernel).
    pub decode_heads: usize,
}

impl StepPlan {
    pub fn off_positions(&self) -> usize {
        self.n_tokens
    }
    pub fn off_seq(&self) -> usize {
        2 * self.n_tokens
    }
    pub fn off_work(&self) -> usize {
        3 * self.n_tokens
    }
    pub fn off_tiles(&self) -> usize {
        3 * self.n_tokens + self.n_work
    }
    pub fn off_logit_rows(&self) -> usize {
        self.off_tiles() + 4 * self.n_tiles
    }
    pub fn off_chained(&self) -> usize {
        self.off_logit_rows() + self.logit_rows.len()
    }

    /// Lays out a step. `blocks[s]` are sequence `s`'s block addresses (enough
    /// for its new tokens); `flash`: whether the tensor-core kernel may run.
    /// With `replay_ctx` (the model's context length) the launches are made
    /// independent of the contexts, so a graph can replay them: the block
    /// table is as wide as the longest context, and the split grid sized for
    /// it (each token uses the splits its own context needs).
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        layout: &TokenLayout,
        ids: &[u32],
        blocks: &[&[u64]],
        flash: bool,
        decode_heads: Option<usize>,
        dims: &AttentionDims,
        multiprocessors: usize,
        replay_ctx: Option<usize>,
    ) -> Self {
        let n = ids.len();
        let mut meta = Vec::with_capacity(3 * n + n + 8);
        meta.extend(ids.iter().map(|&i| i as i32));
        meta.extend(layout.position.iter().map(|&p| p as i32));
        meta.extend(layout.seq_of_token.iter().map(|&s| s as i32));
        let mut work = Vec::new();
        let mut tiles = Vec::new();
        let mut max_ctx = 0;
        let mut row = 0;
        for (s, (&start, &n_new)) in layout.seq_start.iter().zip(&layout.seq_tokens).enumerate() {
            if flash && n_new >= FLASH_MIN_TOKENS {
                let mut i = 0;
                while i < n_new {
                    let rows = FLASH_TILE_TOKENS.min(n_new - i);
                    tiles.extend([s as i32, (row + i) as i32, rows as i32, (start + i) as i32]);
                    i += rows;
                }
            } else {
                work.extend((row..row + n_new).map(|t| t as i32));
                max_ctx = max_ctx.max(start + n_new);
            }
            row += n_new;
        }
        let n_work = work.len();
        let n_tiles = tiles.len() / 4;
        meta.extend(work);
        meta.extend(tiles);
        meta.extend(layout.logit_rows.iter().map(|&r| r as i32));
        meta.extend(layout.chained.iter().flat_map(|&(row, source)| [row as i32, source as i32]));
        if let Some(c) = replay_ctx {
            max_ctx = max_ctx.max(c);
        }
        let widest = replay_ctx.map_or(1, |c| c.div_ceil(dims.block_tokens));
        let max_blocks = blocks.iter().map(|b| b.len()).max().unwrap_or(0).max(widest);
        let mut table = vec![0u64; blocks.len() * max_blocks];
        for (s, b) in blocks.iter().enumerate() {
            table[s * max_blocks..s * max_blocks + b.len()].copy_from_slice(b);
        }
        let split = (n_work > 0).then(|| {
            if let Some(heads) = decode_heads {
                SplitPlan::for_decode(dims, heads, n_work, max_ctx, multiprocessors)
            } else {
                SplitPlan::for_step(dims, n_work, max_ctx, multiprocessors)
            }
        });
        Self {
            meta,
            n_tokens: n,
            n_work,
            n_tiles,
            logit_rows: layout.logit_rows.clone(),
            n_chained: layout.chained.len(),
            table,
            max_blocks,
            split,
            decode_kernel: decode_heads.is_some(),
            decode_heads: decode_heads.unwrap_or(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(seqs: &[(usize, usize)]) -> (TokenLayout, Vec<u32>) {
        let mut l = TokenLayout::default();
        let mut ids = Vec::new();
        for (s, &(start, n)) in seqs.iter().enumerate() {
            l.seq_start.push(start);
            l.seq_tokens.push(n);
            for i in 0..n {
                l.seq_of_token.push(s);
                l.position.push(start + i);
                ids.push((100 + ids.len()) as u32);
            }
        }
        (l, ids)
    }

    fn dims() -> AttentionDims {
        AttentionDims { n_heads: 32, n_groups: 2, head_dim: 128, block_tokens: 64 }
    }

    #[test]
    fn decode_tokens_go_to_the_split_kernel_and_prompts_to_tiles() {
        // seq 0 decodes at position 500; seq 1 prefills 150 tokens after 7 cached.
        let (l, ids) = layout(&[(500, 1), (7, 150)]);
        let b0: Vec<u64> = (0..8).map(|i| 0x1000 + i).collect();
        let b1: Vec<u64> = (0..3).map(|i| 0x2000 + i).collect();
        let p = StepPlan::build(&l, &ids, &[&b0, &b1], true, Some(4), &dims(), 132, None);
        assert_eq!(p.n_tokens, 151);
        assert_eq!(p.n_work, 1);
        assert_eq!(&p.meta[p.off_work()..p.off_work() + 1], &[0]);
        assert_eq!(p.n_tiles, 3);
        let tiles = &p.meta[p.off_tiles()..];
        assert_eq!(tiles, &[1, 1, 64, 7, 1, 65, 64, 71, 1, 129, 22, 135]);
        assert_eq!(p.max_blocks, 8);
        assert_eq!(p.table[8..11], [0x2000, 0x2001, 0x2002]);
        assert_eq!(p.table[11..16], [0; 5]);
        assert!(p.split.unwrap().n_splits * p.split.unwrap().chunk >= 501);
        assert_eq!(&p.meta[p.off_positions()..p.off_positions() + 2], &[500, 7]);
        assert_eq!(&p.meta[p.off_seq()..p.off_seq() + 3], &[0, 1, 1]);
    }

    #[test]
    fn without_flash_every_token_is_split_work() {
        let (l, ids) = layout(&[(0, 40), (3, 2)]);
        let b: Vec<u64> = vec![1];
        let p = StepPlan::build(&l, &ids, &[&b, &b], false, None, &dims(), 132, None);
        assert_eq!((p.n_work, p.n_tiles), (42, 0));
        assert_eq!(p.meta.len(), 3 * 42 + 42);
    }

    #[test]
    fn replayable_steps_do_not_depend_on_the_context() {
        let (mut l, ids) = layout(&[(100, 1), (3000, 1)]);
        l.logit_rows = vec![0, 1];
        let short: Vec<u64> = vec![7; 2];
        let long: Vec<u64> = vec![9; 47];
        let a = StepPlan::build(&l, &ids, &[&short, &long], true, Some(16), &dims(), 132, Some(32768));
        let (mut l2, ids2) = layout(&[(5, 1), (20000, 1)]);
        l2.logit_rows = vec![0, 1];
        let long2: Vec<u64> = vec![9; 313];
        let b = StepPlan::build(&l2, &ids2, &[&short, &long2], true, Some(16), &dims(), 132, Some(32768));
        assert_eq!(a.max_blocks, 512);
        assert_eq!((a.max_blocks, a.split), (b.max_blocks, b.split));
        assert_eq!(&a.meta[a.off_logit_rows()..], &[0, 1]);
        assert_eq!(a.table.len(), 2 * 512);
        assert_eq!(a.table[512..512 + 47], long[..]);
    }
}
