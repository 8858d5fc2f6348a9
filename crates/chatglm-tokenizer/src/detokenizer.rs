//! Streaming, UTF-8-safe detokenization.
//!
//! Byte-fallback pieces of one character arrive as several ids; the
//! [`Detokenizer`] holds bytes back until they form a character (or can no
//! longer form one, then U+FFFD per byte as in a full decode), so that the
//! concatenation of everything it returns equals
//! [`ChatGlmTokenizer::decode`] of all ids pushed.

use crate::sentencepiece::PieceDecodeState;
use crate::utf8::{decode_byte_run, decode_char, is_incomplete_prefix, REPLACEMENT};
use crate::ChatGlmTokenizer;

/// Turns a stream of token ids into text, one final chunk at a time.
///
/// ```
/// # fn demo(tok: &chatglm_tokenizer::ChatGlmTokenizer, ids: &[u32]) {
/// use chatglm_tokenizer::Detokenizer;
/// let mut detok = Detokenizer::new(tok);
/// let mut text = String::new();
/// for &id in ids {
///     text += &detok.push(id);
/// }
/// text += &detok.finish();
/// assert_eq!(text, tok.decode(ids));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Detokenizer<'t> {
    tokenizer: &'t ChatGlmTokenizer,
    /// Bytes of the current byte-piece run not yet emitted: an incomplete character.
    pending: Vec<u8>,
    state: PieceDecodeState,
}

impl<'t> Detokenizer<'t> {
    /// A detokenizer at the start of a sequence.
    pub fn new(tokenizer: &'t ChatGlmTokenizer) -> Self {
        Self { tokenizer, pending: Vec::with_capacity(4), state: PieceDecodeState::default() }
    }

    /// Adds one id and returns the text that became final (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        let mut out = String::new();
        self.push_into(id, &mut out);
        out
    }

    /// Like [`Self::push`], appending to `out` instead of allocating.
    pub fn push_into(&mut self, id: u32, out: &mut String) {
        let sp = self.tokenizer.sentencepiece();
        if let Some(byte) = sp.byte_of(id) {
            self.pending.push(byte);
            self.emit_complete_chars(out);
            return;
        }
        self.flush_into(out);
        sp.decode_non_byte(id, &mut self.state, out);
    }

    /// Ends the sequence: returns held-back bytes (an incomplete character
    /// becomes one U+FFFD per byte, as in a full decode).
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        self.flush_into(&mut out);
        out
    }

    /// Whether bytes of an incomplete character are being held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Starts a new sequence (the next piece's leading `▁` is a dummy prefix again).
    pub fn reset(&mut self) {
        self.pending.clear();
        self.state = PieceDecodeState::default();
    }

    fn flush_into(&mut self, out: &mut String) {
        if !self.pending.is_empty() {
            decode_byte_run(&self.pending, out);
            self.pending.clear();
            self.state.note_text();
        }
    }

    /// Emits every character at the front of `pending` whose decoding can no
    /// longer change: valid characters, and bytes that cannot start one.
    fn emit_complete_chars(&mut self, out: &mut String) {
        let mut consumed = 0;
        while consumed < self.pending.len() {
            let rest = &self.pending[consumed..];
            if let Some((c, len)) = decode_char(rest) {
                out.push(c);
                consumed += len;
            } else if is_incomplete_prefix(rest) {
                break;
            } else {
                out.push(REPLACEMENT);
                consumed += 1;
            }
        }
        if consumed > 0 {
            self.pending.drain(..consumed);
            self.state.note_text();
        }
    }
}
