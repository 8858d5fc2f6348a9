//! The q8_0 hand-off of batch-1 decode (chatglm_cuda's `OneTokenCodes`):
//! the short decode attention and the SwiGLU product also write their
//! output as q8_0 codes, and the product right after them (dense, 4h→h)
//! copies those instead of reading and quantizing the floats — the phase of
//! a one-token product that waits behind the weights it has just requested
//! (bench/RESULTS.md, run 143). Steps of 9..=64 tokens on the grouped
//! products hand the SwiGLU output on the same way, in `quantize_x`'s form
//! (codes and scales, or f16 values), so 4h→h needs no `quantize_x`
//! launch, and so does the short decode attention for the dense product. The codes are the separate quantization's bit for bit: results
//! do not change. `CHATGLM_Q8_HANDOFF=0` turns it off (for measurements).
//!
//! In steps of f16 activations the residual products (dense, 4h→h) also
//! fold the next RMSNorm (chatglm_cuda's `OneTokenCodes::fold_norm`): they
//! write their output as the normed product's activations unnormalised
//! (f16 of v·g/8: headroom for outlier channels),
//! with its sums of squares, and that product (h→4h, the next layer's QKV)
//! applies the norm to its sums — no `quantize_x` launch left in a layer.
//! A residual product learns which norm reads its output next from the step
//! before (a guess, like the attention's: a wrong one costs only the fold).
//! Not bit for bit the separate launch's (f16 of v·g, the norm after the
//! sums); `CHATGLM_NORM_FOLD=0` turns it off.

use super::{ensure, lock, CudaBackend, StepBuffers};
use chatglm_cuda::quant::{
    fold_codes_bytes, one_token_codes_bytes, step_codes_bytes, ActivationForm, OneTokenCodes, QuantFormat, StepCodes,
};
use chatglm_cuda::CudaError;
use std::sync::atomic::Ordering::Relaxed;

/// Codes written by the last operation: of the floats at `floats`, `cols`
/// wide, kept at the step's codes buffer, in the form `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Handed {
    pub floats: u64,
    pub cols: usize,
    pub codes: u64,
    pub kind: CodesKind,
}

/// The form of handed-over activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CodesKind {
    /// One token, as one-token products copy them (`one_token_codes_bytes`).
    OneToken,
    /// `n` tokens in `quantize_x`'s form for products of `format` weights
    /// (q4_0's offset is folded into the scales), f16 values or q8_0 codes.
    Step { n: usize, f16: bool, format: QuantFormat },
    /// `n` tokens folded for the norm whose weights are at `norm`: f16
    /// values of x·g and sums of squares (`fold_codes_bytes`).
    Fold { n: usize, norm: u64 },
}

/// The hand-off's state in a step: what the last operation wrote, and
/// whether the operation running now wrote it (else it is dropped when the
/// operation ends: codes live exactly to the next operation).
#[derive(Default)]
pub(super) struct HandoffState {
    handed: Option<Handed>,
    fresh: bool,
    /// The weights' format of the last product without a norm that read
    /// activations of each width in a step of the grouped products: the
    /// format a kernel before such a product (the decode attention, whose
    /// operation does not know the dense weights) writes them for.
    consumers: Vec<(usize, QuantFormat)>,
    /// The residual product that ran last (its weights, the floats it
    /// wrote), and whether the operation running now is it.
    residual: Option<(u64, u64)>,
    residual_fresh: bool,
    /// Residual products' weights and the norm that read their output next.
    folds: Vec<(u64, u64)>,
}

impl HandoffState {
    /// The codes of the floats at `floats` (`cols` wide), if the last
    /// operation wrote them; taken either way.
    pub(super) fn take_for(&mut self, floats: u64, cols: usize, kind: CodesKind) -> Option<u64> {
        self.handed.take().filter(|h| h.floats == floats && h.cols == cols && h.kind == kind).map(|h| h.codes)
    }

    /// The operation running now wrote codes of the floats at `floats`.
    pub(super) fn hand(&mut self, handed: Handed) {
        self.handed = Some(handed);
        self.fresh = true;
    }

    /// A product of `format` weights without a norm read activations `cols`
    /// wide in a grouped step.
    pub(super) fn note_consumer(&mut self, cols: usize, format: QuantFormat) {
        match self.consumers.iter_mut().find(|c| c.0 == cols) {
            Some(c) => c.1 = format,
            None => self.consumers.push((cols, format)),
        }
    }

    /// The format the last such product of `cols` had.
    pub(super) fn consumer_format(&self, cols: usize) -> Option<QuantFormat> {
        self.consumers.iter().find(|c| c.0 == cols).map(|c| c.1)
    }

    /// An operation ended: codes it did not write are stale from now on.
    pub(super) fn operation_ended(&mut self) {
        if !std::mem::take(&mut self.fresh) {
            self.handed = None;
        }
        if !std::mem::take(&mut self.residual_fresh) {
            self.residual = None;
        }
    }

    /// The operation running now is a residual product of a step that can
    /// fold: its weights at `weights`, its output the floats at `floats`.
    pub(super) fn note_residual(&mut self, weights: u64, floats: u64) {
        self.residual = Some((weights, floats));
        self.residual_fresh = true;
    }

    /// A normed product (norm weights at `norm`) reads the floats at
    /// `floats`: if the residual product just before wrote them, it folds
    /// this norm from the next step on.
    pub(super) fn learn_fold(&mut self, floats: u64, norm: u64) {
        let Some((weights, wrote)) = self.residual.take() else { return };
        if wrote != floats {
            return;
        }
        match self.folds.iter_mut().find(|f| f.0 == weights) {
            Some(f) => f.1 = norm,
            None => self.folds.push((weights, norm)),
        }
    }

    /// The norm the residual product of `weights` folds, if learned.
    pub(super) fn fold_after(&self, weights: u64) -> Option<u64> {
        self.folds.iter().find(|f| f.0 == weights).map(|f| f.1)
    }
}

/// Whether the hand-off is on (`CHATGLM_Q8_HANDOFF=0` turns it off).
pub(super) fn handoff_requested() -> bool {
    std::env::var("CHATGLM_Q8_HANDOFF").map_or(true, |v| v != "0")
}

/// The operation running now writes codes of the one token's floats at
/// `floats` (`cols` wide): the step's codes buffer for them, recorded for
/// the next operation.
pub(super) fn hand_codes(
    gpu: &chatglm_cuda::Gpu,
    st: &mut StepBuffers,
    floats: u64,
    cols: usize,
) -> Result<u64, CudaError> {
    let codes = ensure(gpu, &mut st.codes, one_token_codes_bytes(cols), "handed-over activation codes")?;
    st.handoff.hand(Handed { floats, cols, codes, kind: CodesKind::OneToken });
    Ok(codes)
}

/// A grouped step's SwiGLU product writes its output (`n` tokens of `cols`
/// floats at `floats`) in `quantize_x`'s form too (f16 values or q8_0
/// codes for `format` weights): the step's buffer for them, recorded for
/// the next operation.
pub(super) fn hand_step_codes(
    gpu: &chatglm_cuda::Gpu,
    st: &mut StepBuffers,
    floats: u64,
    cols: usize,
    (n, f16, format): (usize, bool, QuantFormat),
) -> Result<u64, CudaError> {
    let kind = CodesKind::Step { n, f16, format };
    let codes = ensure(gpu, &mut st.step_codes, step_codes_bytes(n, cols), "handed-over step activations")?;
    st.handoff.hand(Handed { floats, cols, codes, kind });
    Ok(codes)
}

/// The operation running now, a residual product of `n` tokens into the
/// floats at `floats` (`cols` wide), folds the norm at `norm`: the step's
/// fold buffer, recorded for the next operation (a buffer apart from the
/// step codes, which the product may be reading).
pub(super) fn hand_fold(
    gpu: &chatglm_cuda::Gpu,
    st: &mut StepBuffers,
    floats: u64,
    cols: usize,
    (n, norm): (usize, u64),
) -> Result<u64, CudaError> {
    let codes = ensure(gpu, &mut st.fold_codes, fold_codes_bytes(n, cols), "norm-folded step activations")?;
    st.handoff.hand(Handed { floats, cols, codes, kind: CodesKind::Fold { n, norm } });
    Ok(codes)
}

/// Whether residual products fold the next norm (`CHATGLM_NORM_FOLD=0`
/// turns it off).
pub(super) fn norm_fold_requested() -> bool {
    std::env::var("CHATGLM_NORM_FOLD").map_or(true, |v| v != "0")
}

/// The decode attention of a batched step (`n` tokens of `cols` outputs at
/// `floats`) writes them in `quantize_x`'s form too, for the product of the
/// format that last read such activations (a guess: the dense product takes
/// them only if its weights have that format): where, and how; None when no
/// grouped product is known to take them.
pub(super) fn attention_step_codes(
    gpu: &chatglm_cuda::Gpu,
    st: &mut StepBuffers,
    floats: u64,
    n: usize,
    cols: usize,
) -> Result<Option<StepCodes>, CudaError> {
    let Some(format) = st.handoff.consumer_format(cols) else { return Ok(None) };
    let f16 = st.f16_activations && gpu.f16_activations_supported(n, format);
    let form = if f16 { ActivationForm::F16 } else { ActivationForm::Q8 };
    if !cols.is_multiple_of(chatglm_cuda::quant::BLOCK) || !gpu.step_codes_supported(n, format, form) {
        return Ok(None);
    }
    let base = hand_step_codes(gpu, st, floats, cols, (n, f16, format))?;
    Ok(Some(gpu.step_codes(base, n, cols, format, form)))
}

impl CudaBackend {
    /// Hands one-token steps' activations over as q8_0 codes (on) or lets
    /// each product quantize its floats (off), from the next operation.
    pub fn set_q8_handoff(&self, on: bool) {
        self.handoff.store(on, Relaxed);
    }

    /// Products that took handed-over codes so far.
    pub fn q8_handoff_uses(&self) -> u64 {
        self.handoff_uses.load(Relaxed)
    }

    /// Lets residual products of f16 steps fold the next norm (on) or not,
    /// from the next operation.
    pub fn set_norm_fold(&self, on: bool) {
        self.norm_fold.store(on, Relaxed);
    }

    /// Normed products that took folded activations so far.
    pub fn norm_fold_uses(&self) -> u64 {
        self.norm_fold_uses.load(Relaxed)
    }

    /// The hand-off of a one-token quantized product of `x` (at `xp`,
    /// `cols` wide) into `out` (`out_cols` wide): input codes when the last
    /// operation wrote those of x and the product fuses no norm; output
    /// codes from SwiGLU products whose outputs are whole q8_0 blocks (and
    /// whose input is not handed over: one buffer serves both).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn one_token_codes(
        &self,
        n: usize,
        xp: u64,
        cols: usize,
        norm: bool,
        swiglu: bool,
        out: u64,
        out_cols: usize,
    ) -> Result<OneTokenCodes, CudaError> {
        let mut codes = OneTokenCodes::default();
        if !self.handoff.load(Relaxed) || n != 1 || !self.gpu.qmma_quantizes_in_block(1, cols) {
            return Ok(codes);
        }
        let mut st = lock(&self.step);
        if !norm {
            codes.input = st.handoff.take_for(xp, cols, CodesKind::OneToken).unwrap_or(0);
            if codes.input != 0 {
                self.handoff_uses.fetch_add(1, Relaxed);
            }
        }
        if swiglu
            && codes.input == 0
            && out_cols.is_multiple_of(chatglm_cuda::quant::BLOCK)
            && self.gpu.qmma_quantizes_in_block(1, out_cols)
        {
            codes.output = hand_codes(&self.gpu, &mut st, out, out_cols)?;
        }
        Ok(codes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_live_exactly_to_the_next_operation() {
        let one = CodesKind::OneToken;
        let h = Handed { floats: 0x1000, cols: 4096, codes: 0x9000, kind: one };
        let mut s = HandoffState::default();
        s.hand(h);
        s.operation_ended();
        // The next operation reads them for the same floats only.
        assert_eq!(s.take_for(0x2000, 4096, one), None, "other floats");
        s.hand(h);
        s.operation_ended();
        assert_eq!(s.take_for(0x1000, 2048, one), None, "other width");
        s.hand(h);
        s.operation_ended();
        assert_eq!(s.take_for(0x1000, 4096, one), Some(0x9000));
        assert_eq!(s.take_for(0x1000, 4096, one), None, "taken once");
        // An operation in between that writes none drops them.
        s.hand(h);
        s.operation_ended();
        s.operation_ended();
        assert_eq!(s.take_for(0x1000, 4096, one), None);
        // A step's codes only for the same tokens, form and weight format.
        let step = CodesKind::Step { n: 32, f16: false, format: QuantFormat::Q4 };
        for other in [
            one,
            CodesKind::Step { n: 31, f16: false, format: QuantFormat::Q4 },
            CodesKind::Step { n: 32, f16: true, format: QuantFormat::Q4 },
            CodesKind::Step { n: 32, f16: false, format: QuantFormat::Q8 },
        ] {
            s.hand(Handed { kind: step, ..h });
            s.operation_ended();
            assert_eq!(s.take_for(0x1000, 4096, other), None, "{other:?}");
        }
        s.hand(Handed { kind: step, ..h });
        s.operation_ended();
        assert_eq!(s.take_for(0x1000, 4096, step), Some(0x9000));
        // The format producers write for: the last consumer's of that width.
        assert_eq!(s.consumer_format(4096), None);
        s.note_consumer(4096, QuantFormat::Q4);
        s.note_consumer(13696, QuantFormat::Q8);
        s.note_consumer(4096, QuantFormat::Q4Min);
        assert_eq!(s.consumer_format(4096), Some(QuantFormat::Q4Min));
        assert_eq!(s.consumer_format(13696), Some(QuantFormat::Q8));
    }

    #[test]
    fn a_residual_product_learns_the_norm_read_right_after_it() {
        let mut s = HandoffState::default();
        // dense (weights 0xd0) writes the residual at 0x100; h→4h's norm 0xa1 reads it.
        s.note_residual(0xd0, 0x100);
        s.operation_ended();
        s.learn_fold(0x100, 0xa1);
        assert_eq!(s.fold_after(0xd0), Some(0xa1));
        // Other floats, or an operation in between: nothing learned.
        s.note_residual(0xe0, 0x100);
        s.operation_ended();
        s.learn_fold(0x200, 0xa2);
        assert_eq!(s.fold_after(0xe0), None, "other floats");
        s.note_residual(0xe0, 0x100);
        s.operation_ended();
        s.operation_ended();
        s.learn_fold(0x100, 0xa2);
        assert_eq!(s.fold_after(0xe0), None, "an operation in between");
        // Learned again: the last norm wins.
        s.note_residual(0xd0, 0x100);
        s.operation_ended();
        s.learn_fold(0x100, 0xa3);
        assert_eq!(s.fold_after(0xd0), Some(0xa3));
        // A fold is taken only for its norm and token count.
        let fold = CodesKind::Fold { n: 32, norm: 0xa3 };
        let h = Handed { floats: 0x100, cols: 4096, codes: 0x9000, kind: fold };
        for other in [CodesKind::Fold { n: 32, norm: 0xa1 }, CodesKind::Fold { n: 31, norm: 0xa3 }] {
            s.hand(h);
            s.operation_ended();
            assert_eq!(s.take_for(0x100, 4096, other), None, "{other:?}");
        }
        s.hand(h);
        s.operation_ended();
        assert_eq!(s.take_for(0x100, 4096, fold), Some(0x9000));
    }
}
