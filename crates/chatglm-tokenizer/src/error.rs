//! Typed errors for loading tokenizer models.

use std::path::PathBuf;

/// Everything that can go wrong while loading or building a tokenizer.
///
/// Encoding and decoding never fail: every `&str` can be encoded and every id
/// sequence decodes to some string.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// The tokenizer file could not be read.
    #[error("cannot read tokenizer model {path}: {source}")]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// A model read from a file was malformed or unsupported.
    #[error("tokenizer model {path}: {source}")]
    InFile {
        /// The file that was being parsed.
        path: PathBuf,
        /// What is wrong with its contents.
        source: Box<TokenizerError>,
    },

    /// The bytes are not a well-formed protobuf message.
    #[error("malformed tokenizer.model protobuf at byte {offset} in {message}: {problem} (is this a SentencePiece tokenizer.model file?)")]
    Protobuf {
        /// Absolute byte offset in the input where the problem was found.
        offset: usize,
        /// Which message was being decoded (`ModelProto`, `TrainerSpec`, ...).
        message: &'static str,
        /// What went wrong.
        problem: String,
    },

    /// The model is well-formed but uses a setting this crate does not implement.
    /// Tokenizing anyway would silently differ from SentencePiece, so it is refused.
    #[error("unsupported tokenizer model: {setting} = {value} ({hint})")]
    Unsupported {
        /// The proto field name, e.g. `trainer_spec.model_type`.
        setting: &'static str,
        /// The value found in the file.
        value: String,
        /// What this crate supports instead.
        hint: &'static str,
    },

    /// The vocabulary is inconsistent (SentencePiece refuses such models too).
    #[error("invalid tokenizer vocabulary: {problem}")]
    InvalidVocab {
        /// What is wrong, naming the piece or id.
        problem: String,
    },
}

impl TokenizerError {
    pub(crate) fn invalid_vocab(problem: impl Into<String>) -> Self {
        Self::InvalidVocab { problem: problem.into() }
    }
}
