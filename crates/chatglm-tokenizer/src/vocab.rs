//! The vocabulary: pieces by id, ids by piece, and the facts BPE needs.
//!
//! Validation mirrors SentencePiece's `ModelInterface::InitializePieces`
//! (non-empty unique pieces, exactly one `<unk>`, all 256 byte pieces when
//! byte fallback is on) so that a model SentencePiece refuses is refused here.

use crate::hash::FastMap;
use crate::piece::{byte_piece_value, Piece, PieceKind};
use crate::TokenizerError;

/// Marks "this id is not a byte piece" in [`Vocab::byte_value`].
const NOT_A_BYTE: u16 = u16::MAX;

/// The UTF-8 encoding of `▁` (U+2581), SentencePiece's escaped space.
pub(crate) const SPACE_SYMBOL: &str = "\u{2581}";

#[derive(Debug, Clone)]
pub(crate) struct Vocab {
    pieces: Vec<Piece>,
    /// Every piece's text → id.
    ids: FastMap<Box<[u8]>, u32>,
    /// Per id: the score mapped to an order-preserving `u32` (see [`score_key`]).
    score_keys: Vec<u32>,
    /// Per id: the byte of a byte piece, or [`NOT_A_BYTE`].
    byte_values: Vec<u16>,
    /// The id of the byte piece for each byte value, when byte fallback is on.
    byte_ids: Option<Box<[u32; 256]>>,
    unk_id: u32,
    /// Longest mergeable piece in bytes: longer concatenations need no lookup.
    max_mergeable_bytes: usize,
    /// User-defined pieces are matched greedily (longest first) before BPE.
    user_defined_max_bytes: usize,
    has_unused: bool,
    /// No mergeable piece contains a non-`▁` character followed by `▁`, so
    /// no merge can cross the start of a `▁` run: BPE may run word by word.
    split_before_space_runs: bool,
}

/// Maps a score to a `u32` whose unsigned order equals the float order.
/// `-0.0` and `0.0` map alike, as they compare equal in SentencePiece's C++.
fn score_key(score: f32) -> u32 {
    let bits = (score + 0.0).to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

impl Vocab {
    pub fn new(pieces: Vec<Piece>, byte_fallback: bool) -> Result<Self, TokenizerError> {
        // Room for the ChatGLM special tokens after the pieces.
        if pieces.len() > (u32::MAX - 16) as usize {
            return Err(TokenizerError::invalid_vocab(format!("{} pieces is too many", pieces.len())));
        }
        let mut ids = FastMap::default();
        ids.reserve(pieces.len());
        let mut score_keys = Vec::with_capacity(pieces.len());
        let mut byte_values = Vec::with_capacity(pieces.len());
        let mut byte_ids = [u32::MAX; 256];
        let mut unk_id = None;
        let mut max_mergeable_bytes = 0;
        let mut user_defined_max_bytes = 0;
        let mut has_unused = false;
        let mut split_before_space_runs = true;

        for (id, piece) in pieces.iter().enumerate() {
            let id = id as u32;
            if piece.text.is_empty() {
                return Err(TokenizerError::invalid_vocab(format!("piece {id} is empty")));
            }
            if piece.score.is_nan() {
                return Err(TokenizerError::invalid_vocab(format!("piece {id} {:?} has a NaN score", piece.text)));
            }
            if let Some(previous) = ids.insert(piece.text.as_bytes().into(), id) {
                return Err(TokenizerError::invalid_vocab(format!(
                    "piece {:?} is defined twice (ids {previous} and {id})",
                    piece.text
                )));
            }
            score_keys.push(score_key(piece.score));
            let mut byte_value = NOT_A_BYTE;
            match piece.kind {
                PieceKind::Unknown => {
                    if let Some(first) = unk_id {
                        return Err(TokenizerError::invalid_vocab(format!("two unknown pieces: ids {first} and {id}")));
                    }
                    unk_id = Some(id);
                }
                PieceKind::Byte => {
                    if !byte_fallback {
                        return Err(TokenizerError::invalid_vocab(format!(
                            "byte piece {:?} (id {id}) found although byte_fallback is false",
                            piece.text
                        )));
                    }
                    let b = byte_piece_value(&piece.text).ok_or_else(|| {
                        TokenizerError::invalid_vocab(format!(
                            "byte piece {id} is {:?}, expected <0x00>..<0xFF>",
                            piece.text
                        ))
                    })?;
                    byte_ids[usize::from(b)] = id;
                    byte_value = u16::from(b);
                }
                PieceKind::UserDefined => {
                    user_defined_max_bytes = user_defined_max_bytes.max(piece.text.len());
                }
                PieceKind::Unused => has_unused = true,
                PieceKind::Normal | PieceKind::Control => {}
            }
            byte_values.push(byte_value);
            if piece.kind.is_mergeable() {
                max_mergeable_bytes = max_mergeable_bytes.max(piece.text.len());
                if split_before_space_runs && has_space_after_non_space(&piece.text) {
                    split_before_space_runs = false;
                }
            }
        }

        let unk_id =
            unk_id.ok_or_else(|| TokenizerError::invalid_vocab("no unknown piece (type UNKNOWN) is defined"))?;
        let byte_ids = if byte_fallback {
            if let Some(missing) = byte_ids.iter().position(|&id| id == u32::MAX) {
                return Err(TokenizerError::invalid_vocab(format!(
                    "byte_fallback is true but byte piece <0x{missing:02X}> is missing (need all 256)"
                )));
            }
            Some(Box::new(byte_ids))
        } else {
            None
        };
        Ok(Self {
            pieces,
            ids,
            score_keys,
            byte_values,
            byte_ids,
            unk_id,
            max_mergeable_bytes,
            user_defined_max_bytes,
            has_unused,
            split_before_space_runs,
        })
    }

    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// SentencePiece's `PieceToId`: any piece of any type, else `None`.
    #[inline]
    pub fn id_of(&self, text: &[u8]) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// The id of a piece BPE may merge into, with its score key.
    #[inline]
    pub fn mergeable(&self, text: &[u8]) -> Option<(u32, u32)> {
        if text.len() > self.max_mergeable_bytes {
            return None;
        }
        let id = *self.ids.get(text)?;
        let kind = self.kind(id)?;
        kind.is_mergeable().then(|| (id, self.score_keys[id as usize]))
    }

    #[inline]
    pub fn kind(&self, id: u32) -> Option<PieceKind> {
        self.pieces.get(id as usize).map(|p| p.kind)
    }

    #[inline]
    pub fn text(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(|p| p.text.as_str())
    }

    /// The byte of a byte piece.
    #[inline]
    pub fn byte_value(&self, id: u32) -> Option<u8> {
        let v = *self.byte_values.get(id as usize)?;
        u8::try_from(v).ok()
    }

    /// The byte piece ids, when byte fallback is on.
    pub fn byte_ids(&self) -> Option<&[u32; 256]> {
        self.byte_ids.as_deref()
    }

    pub fn has_user_defined(&self) -> bool {
        self.user_defined_max_bytes > 0
    }

    pub fn user_defined_max_bytes(&self) -> usize {
        self.user_defined_max_bytes
    }

    pub fn has_unused(&self) -> bool {
        self.has_unused
    }

    pub fn split_before_space_runs(&self) -> bool {
        self.split_before_space_runs
    }
}

/// Whether `text` contains `▁` right after a character that is not `▁`.
fn has_space_after_non_space(text: &str) -> bool {
    let mut prev_is_space = None;
    for c in text.chars() {
        let is_space = c == '\u{2581}';
        if is_space && prev_is_space == Some(false) {
            return true;
        }
        prev_is_space = Some(is_space);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_key_preserves_order() {
        let scores = [f32::NEG_INFINITY, -1e30, -2.5, -1.0, -0.0, 0.0, 1e-30, 1.0, 3.5, f32::INFINITY];
        for w in scores.windows(2) {
            assert!(score_key(w[0]) <= score_key(w[1]), "{} vs {}", w[0], w[1]);
        }
        assert_eq!(score_key(-0.0), score_key(0.0));
        assert!(score_key(-2.5) < score_key(-1.0));
    }

    #[test]
    fn space_after_non_space() {
        assert!(!has_space_after_non_space("▁▁the"));
        assert!(has_space_after_non_space("a▁b"));
        assert!(has_space_after_non_space("▁a▁"));
        assert!(!has_space_after_non_space("▁▁▁"));
    }
}
