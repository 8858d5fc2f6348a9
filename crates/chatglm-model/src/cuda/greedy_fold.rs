//! The greedy choice folded into the output layer's product (chatglm_cuda's
//! qmmo module): a greedy step of 17–32 tokens over f16 activations (batched
//! decode) whose output layer is quantized writes each token's best of each
//! group of the logits' rows beside the logits, and the step's argmax becomes
//! a merge of those (~8 KB a token) instead of a pass over the logits. The
//! choices are the argmax's over the same logits, bit for bit.
//!
//! Off by default until measured on the H200 (`CHATGLM_GREEDY_FOLD=1` turns
//! it on; `CudaBackend::set_greedy_fold` in tests).

use super::{ensure, CudaBackend, StepBuffers};
use chatglm_cuda::quant::{ActivationForm, TiledPtr};
use chatglm_cuda::{CudaError, GemvMode, GreedyBests, GREEDY_FOLD_MAX_TOKENS};
use std::sync::atomic::Ordering::Relaxed;

pub(super) fn greedy_fold_requested() -> bool {
    std::env::var("CHATGLM_GREEDY_FOLD").is_ok_and(|v| v == "1")
}

impl CudaBackend {
    /// Folds greedy steps' choices into their output products where they
    /// can (on) or runs the argmax over the logits (off), from the next step.
    pub fn set_greedy_fold(&self, on: bool) {
        self.greedy_fold.store(on, Relaxed);
    }

    /// Greedy steps whose choices were merged from folded bests so far.
    pub fn greedy_fold_uses(&self) -> u64 {
        self.greedy_fold_uses.load(Relaxed)
    }

    pub(super) fn note_greedy_next(&self) {
        if self.greedy_fold.load(Relaxed) {
            super::lock(&self.step).greedy_next = true;
        }
    }
}

/// What a step's output product folded: its bests' shape, and the logits
/// it wrote them beside (address, columns), which the readout must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BestsWritten {
    pub bests: GreedyBests,
    pub logits: u64,
    pub cols: usize,
}

impl BestsWritten {
    /// Whether these bests are those of `rows` × `cols` logits at `logits`.
    pub fn of(&self, logits: u64, rows: usize, cols: usize) -> bool {
        self.logits == logits && self.bests.rows == rows && self.cols == cols
    }
}

/// The bests buffer of a quantized product of `n` tokens of `w` in `mode`,
/// in `form`, writing `out`, where it is the greedy step's output layer that
/// the hint before it named (consumed here) and the device folds the choice
/// into it: its address, with what it writes recorded for the merge. 0: no
/// fold.
#[allow(clippy::too_many_arguments)]
pub(super) fn bests_for(
    gpu: &chatglm_cuda::Gpu,
    st: &mut StepBuffers,
    w: TiledPtr,
    n: usize,
    mode: GemvMode,
    form: ActivationForm,
    whole_plain_product: bool,
    out: u64,
) -> Result<u64, CudaError> {
    if !std::mem::take(&mut st.greedy_next)
        || !whole_plain_product
        || mode != GemvMode::Store
        || !gpu.greedy_fold_supported(n, w.shape.format, form)
    {
        return Ok(0);
    }
    let bests = GreedyBests::of(w.shape, n);
    // Sized for the most tokens at once, so the address (part of a step's
    // graph) does not move from one batch size to the next.
    let most = GreedyBests { rows: GREEDY_FOLD_MAX_TOKENS, ..bests };
    let p = ensure(gpu, &mut st.greedy_bests, most.ints(), "greedy bests")?;
    st.bests_written = Some(BestsWritten { bests, logits: out, cols: w.shape.rows });
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bests_serve_only_the_logits_they_were_written_beside() {
        let w = BestsWritten { bests: GreedyBests { groups: 508, rows: 32 }, logits: 0x1000, cols: 65_024 };
        assert!(w.of(0x1000, 32, 65_024));
        assert!(!w.of(0x2000, 32, 65_024), "another buffer");
        assert!(!w.of(0x1000, 31, 65_024), "another row count");
        assert!(!w.of(0x1000, 32, 65_023), "another width");
    }
}
