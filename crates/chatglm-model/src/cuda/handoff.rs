//! The q8_0 hand-off of batch-1 decode (chatglm_cuda's `OneTokenCodes`):
//! kernels also write their one-token output as q8_0 codes, and the product
//! right after them copies those instead of reading and quantizing floats —
//! the phase of a one-token product that waits behind the weights it has
//! just requested (bench/RESULTS.md, runs 143–145). The short decode
//! attention hands its output to the dense product and SwiGLU to 4h→h,
//! bit for bit what those products compute from floats; the accumulating
//! products (dense, 4h→h) hand the residual to the next normed product
//! (h→4h, the next layer's QKV, the output layer) as codes of `g·y` for
//! that norm's weights `g`, which equal the in-product codes but for
//! rounding. `CHATGLM_Q8_HANDOFF=0` turns it off, `=1` keeps to the exact
//! hand-offs (for measurements).

use super::{ensure, lock, CudaBackend, StepBuffers};
use chatglm_cuda::quant::{one_token_codes_bytes, OneTokenCodes, BLOCK};
use chatglm_cuda::CudaError;
use std::sync::atomic::Ordering::Relaxed;

/// Codes written by the last operation: of the floats at `floats`, `cols`
/// wide, for a product fusing the norm `norm` (0: none), in the step's
/// codes buffer `buffer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Handed {
    pub floats: u64,
    pub cols: usize,
    pub norm: u64,
    pub buffer: usize,
    pub codes: u64,
}

/// Which hand-offs run (`CHATGLM_Q8_HANDOFF`: 0, 1, 2 = all, the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffLevel {
    /// Every product quantizes its own floats.
    Off = 0,
    /// Only those whose codes equal the product's own (attention → dense, SwiGLU → 4h→h).
    Exact = 1,
    /// Also the residual into the normed products.
    All = 2,
}

impl HandoffLevel {
    pub(super) fn from_env() -> Self {
        match std::env::var("CHATGLM_Q8_HANDOFF").as_deref() {
            Ok("0") => Self::Off,
            Ok("1") => Self::Exact,
            _ => Self::All,
        }
    }

    pub(super) fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Off,
            1 => Self::Exact,
            _ => Self::All,
        }
    }
}

/// The hand-off's state: what the last operation wrote, whether the
/// operation running now wrote it (else it is dropped when the operation
/// ends: codes live exactly to the next operation), the norm the next
/// accumulating product's codes are for, and each layer's input norm (and
/// the final one) as seen in earlier steps.
#[derive(Default)]
pub(super) struct HandoffState {
    handed: Option<Handed>,
    fresh: bool,
    output_norm: Option<u64>,
    norms: Vec<u64>,
}

impl HandoffState {
    /// The codes of the floats at `floats` (`cols` wide) for a product fusing
    /// `norm`, if the last operation wrote them; taken either way.
    pub(super) fn take_for(&mut self, floats: u64, cols: usize, norm: u64) -> Option<Handed> {
        self.handed.take().filter(|h| h.floats == floats && h.cols == cols && h.norm == norm)
    }

    /// The operation running now wrote codes.
    pub(super) fn hand(&mut self, handed: Handed) {
        self.handed = Some(handed);
        self.fresh = true;
    }

    /// An operation ended: codes it did not write are stale from now on.
    pub(super) fn operation_ended(&mut self) {
        if !std::mem::take(&mut self.fresh) {
            self.handed = None;
        }
        self.output_norm = None;
    }

    /// Layer `layer`'s input norm (`layer` = layers: the final norm).
    pub(super) fn record_norm(&mut self, layer: usize, norm: u64) {
        if self.norms.len() <= layer {
            self.norms.resize(layer + 1, 0);
        }
        self.norms[layer] = norm;
    }

    /// The input norm of layer `layer` as last seen (0: not seen).
    pub(super) fn norm_of(&self, layer: usize) -> u64 {
        self.norms.get(layer).copied().unwrap_or(0)
    }

    /// The next accumulating product (in this operation) writes codes for `norm`.
    pub(super) fn set_output_norm(&mut self, norm: u64) {
        self.output_norm = (norm != 0).then_some(norm);
    }
}

/// The level `CHATGLM_Q8_HANDOFF` asks for, read once.
pub(super) fn handoff_requested() -> HandoffLevel {
    static LEVEL: std::sync::OnceLock<HandoffLevel> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(HandoffLevel::from_env)
}

/// Codes buffer `i` of the step, for `cols` values of one token.
pub(super) fn codes_buffer(
    gpu: &chatglm_cuda::Gpu,
    st: &mut StepBuffers,
    i: usize,
    cols: usize,
) -> Result<u64, CudaError> {
    ensure(gpu, &mut st.codes[i], one_token_codes_bytes(cols), "handed-over activation codes")
}

/// What a one-token product hands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProductKind {
    SwiGlu,
    Accumulate,
    Other,
}

impl CudaBackend {
    /// Which of one-token steps' activations are handed over as q8_0 codes,
    /// from the next operation.
    pub fn set_q8_handoff(&self, level: HandoffLevel) {
        self.handoff.store(level as u8, Relaxed);
    }

    /// Products that took handed-over codes so far.
    pub fn q8_handoff_uses(&self) -> u64 {
        self.handoff_uses.load(Relaxed)
    }

    pub(super) fn handoff_level(&self) -> HandoffLevel {
        HandoffLevel::from_u8(self.handoff.load(Relaxed))
    }

    /// The next accumulating product of this operation hands its output
    /// to the product of layer `layer`'s input norm (layers: the final norm).
    pub(super) fn hand_residual_to_layer(&self, layer: usize) {
        let mut st = lock(&self.step);
        let norm = st.handoff.norm_of(layer);
        st.handoff.set_output_norm(norm);
    }

    /// The next accumulating product of this operation hands its output to
    /// a product fusing the norm `norm`.
    pub(super) fn hand_residual_to_norm(&self, norm: u64) {
        lock(&self.step).handoff.set_output_norm(norm);
    }

    /// Layer `layer`'s input norm (layers: the final norm), for later steps' hand-offs.
    pub(super) fn record_norm(&self, layer: usize, norm: u64) {
        lock(&self.step).handoff.record_norm(layer, norm);
    }

    /// The hand-off of a one-token quantized product of `x` (at `xp`, `cols`
    /// wide, fusing `norm`) into `out` (`out_cols` wide): input codes when
    /// the last operation wrote those of x for this norm; output codes from
    /// SwiGLU products, and from accumulating ones that were told the next
    /// product's norm, whose outputs are whole q8_0 blocks (into the codes
    /// buffer the input codes are not in).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn one_token_codes(
        &self,
        n: usize,
        xp: u64,
        cols: usize,
        norm: Option<u64>,
        kind: ProductKind,
        out: u64,
        out_cols: usize,
    ) -> Result<OneTokenCodes, CudaError> {
        let mut codes = OneTokenCodes::default();
        let level = self.handoff_level();
        let mut st = lock(&self.step);
        let output_norm = st.handoff.output_norm.take();
        if level == HandoffLevel::Off || n != 1 || !self.gpu.qmma_quantizes_in_block(1, cols) {
            return Ok(codes);
        }
        let mut used = None;
        if let Some(h) = st.handoff.take_for(xp, cols, norm.unwrap_or(0)) {
            codes.input = h.codes;
            used = Some(h.buffer);
        }
        let output_norm = match kind {
            ProductKind::SwiGlu => Some(0),
            ProductKind::Accumulate if level == HandoffLevel::All => output_norm,
            _ => None,
        };
        let fits = out_cols.is_multiple_of(BLOCK) && self.gpu.qmma_quantizes_in_block(1, out_cols);
        let clusters = kind != ProductKind::Accumulate || self.gpu.info().compute_capability.0 >= 9;
        if let (Some(next_norm), true, true) = (output_norm, fits, clusters) {
            let buffer = used.map_or(0, |b| 1 - b);
            codes.output = codes_buffer(&self.gpu, &mut st, buffer, out_cols)?;
            codes.output_norm = next_norm;
            st.handoff.hand(Handed { floats: out, cols: out_cols, norm: next_norm, buffer, codes: codes.output });
        }
        Ok(codes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_live_exactly_to_the_next_operation() {
        let h = Handed { floats: 0x1000, cols: 4096, norm: 0, buffer: 0, codes: 0x9000 };
        let mut s = HandoffState::default();
        s.hand(h);
        s.operation_ended();
        // The next operation reads them for the same floats and norm only.
        assert_eq!(s.take_for(0x2000, 4096, 0), None, "other floats");
        for (cols, norm) in [(2048, 0), (4096, 0x77)] {
            s.hand(h);
            s.operation_ended();
            assert_eq!(s.take_for(0x1000, cols, norm), None, "{cols} {norm}");
        }
        s.hand(h);
        s.operation_ended();
        assert_eq!(s.take_for(0x1000, 4096, 0), Some(h));
        assert_eq!(s.take_for(0x1000, 4096, 0), None, "taken once");
        // An operation in between that writes none drops them.
        s.hand(h);
        s.operation_ended();
        s.operation_ended();
        assert_eq!(s.take_for(0x1000, 4096, 0), None);
    }

    #[test]
    fn an_output_norm_lasts_one_operation_and_layers_remember_theirs() {
        let mut s = HandoffState::default();
        s.record_norm(3, 0xabc);
        assert_eq!((s.norm_of(3), s.norm_of(2), s.norm_of(9)), (0xabc, 0, 0));
        s.set_output_norm(0xabc);
        assert_eq!(s.output_norm, Some(0xabc));
        s.operation_ended();
        assert_eq!(s.output_norm, None);
        s.set_output_norm(0);
        assert_eq!(s.output_norm, None, "an unknown norm asks for nothing");
    }

    #[test]
    fn levels_parse() {
        for (v, l) in [(0u8, HandoffLevel::Off), (1, HandoffLevel::Exact), (2, HandoffLevel::All)] {
            assert_eq!(HandoffLevel::from_u8(v), l);
            assert_eq!(l as u8, v);
        }
    }
}
