//! chatglm-tokenizer: the ChatGLM2-6B tokenizer in pure Rust, exact to the
//! official Python tokenizer (SentencePiece 0.2 + `tokenization_chatglm.py`).
//!
//! In: a SentencePiece `tokenizer.model` (protobuf `ModelProto`, decoded by a
//! small hand-written reader) or a piece list; text. Out: token ids, pieces,
//! and text again.
//!
//! Principal types:
//! * [`ChatGlmTokenizer`]: `encode` (with the `[gMASK] sop` prefix),
//!   `encode_no_special`, `tokenize`, `decode`, the chat prompt encoders
//!   (`encode_chat`, `encode_chat_incremental`) and the special ids.
//! * [`Detokenizer`]: incremental decoding for streaming output that never
//!   splits a character, and whose output concatenates to exactly `decode`.
//! * [`Piece`] / [`PieceKind`]: the vocabulary, for writing GGUF files;
//!   [`SpSettings`] with [`ChatGlmTokenizer::from_pieces`] rebuilds a tokenizer.
//! * [`build_prompt`]: the official ChatGLM2 prompt string.
//! * [`TokenizerError`]: what can go wrong when loading.
//!
//! Only what ChatGLM2's model uses is implemented — BPE, identity
//! normalization, dummy prefix, whitespace escaped as `▁`, byte fallback;
//! models with other settings are refused with [`TokenizerError::Unsupported`]
//! rather than tokenized differently.

#![forbid(unsafe_code)]
mod bpe;
mod chat3;
mod chatglm;
mod detokenizer;
mod error;
mod hash;
mod piece;
mod prompt;
mod proto;
mod sentencepiece;
mod utf8;
mod vocab;

pub use chat3::{ChatMessage, Role};
pub use chatglm::{ChatGlmTokenizer, SpecialToken};
pub use detokenizer::Detokenizer;
pub use error::TokenizerError;
pub use piece::{Piece, PieceKind};
pub use prompt::{build_incremental_prompt, build_prompt};
pub use sentencepiece::SpSettings;
