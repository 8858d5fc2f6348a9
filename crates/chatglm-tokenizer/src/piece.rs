//! Vocabulary entries: a piece's text, score and SentencePiece type.

/// The SentencePiece type of a vocabulary entry (`ModelProto.SentencePiece.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PieceKind {
    /// An ordinary piece produced by BPE merges (proto value 1).
    Normal,
    /// The unknown piece `<unk>` (proto value 2).
    Unknown,
    /// A control symbol such as `<s>` or `</s>`; never produced from text (3).
    Control,
    /// A user-defined symbol, always matched as one unit (4).
    UserDefined,
    /// A piece that is in the vocabulary but never emitted (5).
    Unused,
    /// A byte-fallback piece `<0x00>`..`<0xFF>` (6).
    Byte,
}

impl PieceKind {
    /// The enum value used in `tokenizer.model` (and by GGUF's `token_type`).
    pub fn proto_value(self) -> i32 {
        match self {
            Self::Normal => 1,
            Self::Unknown => 2,
            Self::Control => 3,
            Self::UserDefined => 4,
            Self::Unused => 5,
            Self::Byte => 6,
        }
    }

    /// The kind for a proto enum value, if it is one SentencePiece defines.
    pub fn from_proto_value(value: i64) -> Option<Self> {
        Some(match value {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }

    /// Whether BPE may produce this piece by merging (SentencePiece's `pieces_` map).
    pub(crate) fn is_mergeable(self) -> bool {
        matches!(self, Self::Normal | Self::UserDefined | Self::Unused)
    }
}

/// One vocabulary entry. Its id is its index in the vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The piece text, with spaces written as `▁` (U+2581); byte pieces are `<0xXX>`.
    pub text: String,
    /// The merge priority: among candidate merges the highest score wins.
    pub score: f32,
    /// The SentencePiece type.
    pub kind: PieceKind,
}

/// The byte value of a byte piece's text `<0xXX>` (upper-case hex, as SentencePiece writes it).
pub(crate) fn byte_piece_value(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)) {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
