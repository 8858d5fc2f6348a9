//! The ChatGLM2 tokenizer: SentencePiece plus five special tokens.
//!
//! Mirrors `tokenization_chatglm.py` (THUDM/chatglm2-6b, revision 7fabe56):
//! `[MASK]`, `[gMASK]`, `[sMASK]`, `sop`, `eop` get ids `n..n+5` after the
//! `n` SentencePiece pieces, `encode` prepends `[gMASK] sop`, and decoding
//! maps `<unk>`, `<s>`, `</s>` and the specials to the empty string.

use std::path::Path;

use crate::piece::Piece;
use crate::prompt::{build_incremental_prompt, build_prompt};
use crate::proto::ModelProto;
use crate::sentencepiece::{SentencePieceBpe, SpSettings};
use crate::TokenizerError;

/// ChatGLM's own special tokens, in id order after the SentencePiece pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialToken {
    /// `[MASK]` = n.
    Mask,
    /// `[gMASK]` = n + 1, first prefix token.
    GMask,
    /// `[sMASK]` = n + 2.
    SMask,
    /// `sop` = n + 3, second prefix token.
    Sop,
    /// `eop` = n + 4.
    Eop,
}

impl SpecialToken {
    /// All special tokens in id order.
    pub const ALL: [SpecialToken; 5] = [Self::Mask, Self::GMask, Self::SMask, Self::Sop, Self::Eop];

    /// The token's name as the official tokenizer spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mask => "[MASK]",
            Self::GMask => "[gMASK]",
            Self::SMask => "[sMASK]",
            Self::Sop => "sop",
            Self::Eop => "eop",
        }
    }

    fn offset(self) -> u32 {
        match self {
            Self::Mask => 0,
            Self::GMask => 1,
            Self::SMask => 2,
            Self::Sop => 3,
            Self::Eop => 4,
        }
    }
}

/// The ChatGLM2-6B tokenizer.
#[derive(Debug, Clone)]
pub struct ChatGlmTokenizer {
    sp: SentencePieceBpe,
    model_bytes: Vec<u8>,
    /// `(piece id, special id)` for pieces whose text is a special token's
    /// name: the official `convert_token_to_id` maps those to the special id.
    special_name_pieces: Vec<(u32, u32)>,
    eos_id: u32,
    bos_id: u32,
}

impl ChatGlmTokenizer {
    /// Loads a `tokenizer.model` file; errors name the file.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io { path: path.to_owned(), source })?;
        Self::from_bytes(&bytes).map_err(|e| TokenizerError::InFile { path: path.to_owned(), source: Box::new(e) })
    }

    /// Loads a serialized `tokenizer.model`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenizerError> {
        let model = ModelProto::decode(bytes)?;
        let sp = SentencePieceBpe::from_model_proto(model)?;
        Self::new(sp, bytes.to_vec())
    }

    /// Builds a tokenizer from a piece list (ids = indices), e.g. read back
    /// from GGUF metadata. [`Self::model_bytes`] then returns an equivalent
    /// serialized `tokenizer.model`.
    pub fn from_pieces(pieces: Vec<Piece>, settings: SpSettings) -> Result<Self, TokenizerError> {
        let sp = SentencePieceBpe::from_pieces(pieces, settings)?;
        let model_bytes = sp.to_model_proto().encode();
        Self::new(sp, model_bytes)
    }

    fn new(sp: SentencePieceBpe, model_bytes: Vec<u8>) -> Result<Self, TokenizerError> {
        let missing = |which: &str, name: &str| {
            TokenizerError::invalid_vocab(format!("ChatGLM needs a {which} control piece {name:?}, the model has none"))
        };
        let bos_id = sp.bos_id().ok_or_else(|| missing("BOS", &sp.settings().bos_piece))?;
        let eos_id = sp.eos_id().ok_or_else(|| missing("EOS", &sp.settings().eos_piece))?;
        let n = sp.vocab().len() as u32;
        let special_name_pieces = SpecialToken::ALL
            .iter()
            .filter_map(|&t| sp.vocab().id_of(t.name().as_bytes()).map(|id| (id, n + t.offset())))
            .collect();
        Ok(Self { sp, model_bytes, special_name_pieces, eos_id, bos_id })
    }

    pub(crate) fn sentencepiece(&self) -> &SentencePieceBpe {
        &self.sp
    }

    /// `tokenizer.encode(text)`: `[gMASK] sop` followed by the text's ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = self.prefix_tokens().to_vec();
        self.encode_no_special_into(text, &mut ids);
        ids
    }

    /// `tokenizer.encode(text, add_special_tokens=False)`.
    pub fn encode_no_special(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        self.encode_no_special_into(text, &mut ids);
        ids
    }

    /// Like [`Self::encode_no_special`], appending to `ids`.
    pub fn encode_no_special_into(&self, text: &str, ids: &mut Vec<u32>) {
        let start = ids.len();
        self.sp.encode_ids(text, ids);
        if !self.special_name_pieces.is_empty() {
            for id in &mut ids[start..] {
                if let Some(&(_, special)) = self.special_name_pieces.iter().find(|(piece, _)| piece == id) {
                    *id = special;
                }
            }
        }
    }

    /// `tokenizer.tokenize(text)`: the SentencePiece pieces (`▁` for spaces,
    /// `<0xXX>` for byte fallback).
    pub fn tokenize(&self, text: &str) -> Vec<String> {
        self.sp.encode_pieces(text)
    }

    /// `tokenizer.decode(ids)`. `<unk>`, `<s>`, `</s>`, the ChatGLM specials
    /// and out-of-range ids decode to nothing; incomplete UTF-8 from byte
    /// pieces becomes U+FFFD (one per byte). Never fails.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.sp.decode(ids)
    }

    /// The piece text of an id (`None` for ChatGLM specials and out-of-range ids).
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.sp.vocab().text(id)
    }

    /// The id of a piece text or special-token name, as the official
    /// `convert_token_to_id` (specials first) but `None` instead of `<unk>`.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        SpecialToken::ALL
            .iter()
            .find(|t| t.name() == piece)
            .map(|&t| self.special_id(t))
            .or_else(|| self.sp.vocab().id_of(piece.as_bytes()))
    }

    /// Number of ids: SentencePiece pieces plus the 5 specials.
    pub fn vocab_size(&self) -> usize {
        self.sp_vocab_size() + SpecialToken::ALL.len()
    }

    /// Number of SentencePiece pieces (`n`).
    pub fn sp_vocab_size(&self) -> usize {
        self.sp.vocab().len()
    }

    /// The id of a ChatGLM special token.
    pub fn special_id(&self, token: SpecialToken) -> u32 {
        self.sp_vocab_size() as u32 + token.offset()
    }

    /// `</s>`, the end-of-sequence id (2 in ChatGLM2).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// `<s>` (1 in ChatGLM2; never added by ChatGLM2's `encode`).
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// `<unk>` (0 in ChatGLM2).
    pub fn unk_id(&self) -> u32 {
        self.sp.vocab().unk_id()
    }

    /// The padding id, which ChatGLM2 sets to the unknown id.
    pub fn pad_id(&self) -> u32 {
        self.unk_id()
    }

    /// `[MASK]`.
    pub fn mask_id(&self) -> u32 {
        self.special_id(SpecialToken::Mask)
    }

    /// `[gMASK]`.
    pub fn gmask_id(&self) -> u32 {
        self.special_id(SpecialToken::GMask)
    }

    /// `[sMASK]`.
    pub fn smask_id(&self) -> u32 {
        self.special_id(SpecialToken::SMask)
    }

    /// `sop`.
    pub fn sop_id(&self) -> u32 {
        self.special_id(SpecialToken::Sop)
    }

    /// `eop`.
    pub fn eop_id(&self) -> u32 {
        self.special_id(SpecialToken::Eop)
    }

    /// `[gMASK], sop`, prepended by `encode`.
    pub fn prefix_tokens(&self) -> [u32; 2] {
        [self.gmask_id(), self.sop_id()]
    }

    /// Whether `id` is one of the ChatGLM specials or `<unk>`/`<s>`/`</s>`.
    pub fn is_special(&self, id: u32) -> bool {
        let n = self.sp_vocab_size() as u32;
        (n..n + SpecialToken::ALL.len() as u32).contains(&id)
            || id == self.unk_id()
            || id == self.bos_id
            || id == self.eos_id
    }

    /// The SentencePiece pieces in id order (without the 5 specials).
    pub fn pieces(&self) -> &[Piece] {
        self.sp.vocab().pieces()
    }

    /// The SentencePiece settings in effect.
    pub fn settings(&self) -> &SpSettings {
        self.sp.settings()
    }

    /// The serialized `tokenizer.model`: the original bytes when loaded from
    /// a file, an equivalent model when built with [`Self::from_pieces`].
    pub fn model_bytes(&self) -> &[u8] {
        &self.model_bytes
    }

    /// `build_inputs_with_special_tokens`: `[gMASK] sop A` or, for a pair,
    /// `[gMASK] sop A B </s>`.
    pub fn build_inputs_with_special_tokens(&self, a: &[u32], b: Option<&[u32]>) -> Vec<u32> {
        let mut ids = self.prefix_tokens().to_vec();
        ids.extend_from_slice(a);
        if let Some(b) = b {
            ids.extend_from_slice(b);
            ids.push(self.eos_id);
        }
        ids
    }

    /// `model.build_inputs(tokenizer, query, history)`: the full prompt with prefix.
    pub fn encode_chat(&self, query: &str, history: &[(String, String)]) -> Vec<u32> {
        self.encode(&build_prompt(query, history))
    }

    /// `model.build_stream_inputs(tokenizer, query, history)`: the ids to feed
    /// after a KV cache holding the earlier rounds. With history the prompt is
    /// `\n\n[Round n]\n\n问：q\n\n答：` without prefix tokens and with its first id
    /// (the dummy-prefix `▁`) dropped; without history it equals [`Self::encode_chat`].
    pub fn encode_chat_incremental(&self, query: &str, history: &[(String, String)]) -> Vec<u32> {
        if history.is_empty() {
            return self.encode_chat(query, history);
        }
        let mut ids = self.encode_no_special(&build_incremental_prompt(query, history.len()));
        if !ids.is_empty() {
            ids.remove(0);
        }
        ids
    }
}
