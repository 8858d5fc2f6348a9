//! Which quantized product runs after which: the loaders load a layer's
//! matrices in the order a step multiplies them (QKV, dense, h→4h, 4h→h,
//! then the next layer, the output layer last), so each tiled matrix's
//! successor in load order is the product after it. A decode step's
//! quantized product starts its successor's weights towards L2 once its own
//! last bytes are requested: the time a kernel boundary spends waiting for
//! the next kernel's first bytes goes to bytes that kernel needs anyway.

use std::collections::HashMap;

/// Bytes of the next product's weights started towards L2 by default
/// (`CHATGLM_QMMA_PREFETCH_NEXT` sets it; 0 turns it off). Off: on the H200
/// (6B, decode, run 73) 16 MB cost q4_0 9–14% and q8_0 5%, 50 MB more — the
/// prefetches compete with the running product's own stream.
const DEFAULT_PREFETCH_NEXT_BYTES: usize = 0;

/// The bytes to prefetch of the next product: `CHATGLM_QMMA_PREFETCH_NEXT`
/// when it parses, else the default.
pub(super) fn prefetch_next_bytes() -> usize {
    std::env::var("CHATGLM_QMMA_PREFETCH_NEXT")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(DEFAULT_PREFETCH_NEXT_BYTES)
}

/// Largest next matrix a grouped step's product (9..=64 tokens) starts
/// towards L2 whole (`CHATGLM_QMMG_PREFETCH_NEXT` sets it; 0 turns it off):
/// the small products (dense after QKV, the next QKV after 4h→h: ~10 MB at
/// the 6B's shapes) then read their weights from L2. Off since session 39:
/// with today's grouped products it costs more than it saves — 32 int4
/// sequences 10,810–10,839 tok/s without it against 10,723–10,769 with
/// 24 MB (+0.5%; 16 sequences +0.3%, 64 +0.6%; bench/RESULTS.md, runs
/// 270–271) — the prefetch's issue slots and L2 traffic now weigh more than
/// an L2 hit on weights the products are not waiting for.
const DEFAULT_GROUPED_PREFETCH_BYTES: usize = 0;

/// `CHATGLM_QMMG_PREFETCH_NEXT` when it parses, else the default.
pub(super) fn grouped_prefetch_bytes() -> usize {
    std::env::var("CHATGLM_QMMG_PREFETCH_NEXT")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(DEFAULT_GROUPED_PREFETCH_BYTES)
}

/// Successors of tiled matrices, by device address.
#[derive(Debug, Default)]
pub(super) struct WeightChain {
    last: Option<u64>,
    next: HashMap<u64, (u64, usize)>,
}

impl WeightChain {
    /// A tiled matrix of `bytes` at `base` was loaded after the last one.
    pub(super) fn tiled(&mut self, base: u64, bytes: usize) {
        if let Some(prev) = self.last.replace(base) {
            self.next.insert(prev, (base, bytes));
        }
    }

    /// A matrix that is not tiled was loaded: what comes before it has no
    /// quantized successor.
    pub(super) fn untiled(&mut self) {
        self.last = None;
    }

    /// The product after the one at `base`, at most `cap` bytes of it.
    pub(super) fn after(&self, base: u64, cap: usize) -> Option<(u64, usize)> {
        if cap == 0 {
            return None;
        }
        self.next.get(&base).map(|&(p, b)| (p, b.min(cap)))
    }

    /// The product after the one at `base`, whole, if it has at most `max`
    /// bytes.
    pub(super) fn whole_after(&self, base: u64, max: usize) -> Option<(u64, usize)> {
        self.next.get(&base).copied().filter(|&(_, b)| b <= max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tiled_matrix_leads_to_the_next_one_loaded() {
        let mut c = WeightChain::default();
        c.tiled(100, 10);
        c.tiled(200, 20);
        c.tiled(300, 30);
        assert_eq!(c.after(100, usize::MAX), Some((200, 20)));
        assert_eq!(c.after(200, 25), Some((300, 25)));
        assert_eq!(c.after(300, usize::MAX), None);
        assert_eq!(c.after(100, 0), None);
        // Whole, or not at all.
        assert_eq!(c.whole_after(100, 20), Some((200, 20)));
        assert_eq!(c.whole_after(200, 25), None);
        assert_eq!(c.whole_after(100, 0), None);
    }

    #[test]
    fn an_untiled_matrix_breaks_the_chain() {
        let mut c = WeightChain::default();
        c.tiled(100, 10);
        c.untiled();
        c.tiled(200, 20);
        assert_eq!(c.after(100, usize::MAX), None);
        assert_eq!(c.after(200, usize::MAX), None);
    }
}
