//! A SentencePiece processor for BPE models with identity normalization.
//!
//! Encode = normalize (optional dummy-prefix `▁`, spaces escaped as `▁`) →
//! BPE ([`crate::bpe`]) → unknown pieces to byte pieces (byte fallback) or
//! merged into one `<unk>` per run. Decode = SentencePiece's
//! `Decode(pieces)`: text pieces with `▁` → space (the first such `▁` dropped
//! when a dummy prefix is added), runs of byte pieces decoded as UTF-8 with
//! U+FFFD per invalid byte, control/unknown pieces invisible.

use crate::bpe::{encode_segment, BpeScratch, BpeToken, MAX_SEGMENT_BYTES};
use crate::hash::FastMap;
use crate::piece::{Piece, PieceKind};
use crate::proto::{ModelProto, NormalizerSpec, TrainerSpec, MODEL_TYPE_BPE};
use crate::utf8::decode_byte_run;
use crate::vocab::{Vocab, SPACE_SYMBOL};
use crate::TokenizerError;

/// The SentencePiece settings that change tokenization, for building a
/// tokenizer from a piece list (e.g. from GGUF metadata) instead of a
/// `tokenizer.model` file. [`Default`] gives ChatGLM2-6B's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpSettings {
    /// `normalizer_spec.add_dummy_prefix`: prepend `▁` to non-empty input.
    pub add_dummy_prefix: bool,
    /// `trainer_spec.byte_fallback`: unknown characters become `<0xXX>` pieces.
    pub byte_fallback: bool,
    /// `trainer_spec.bos_piece`, a CONTROL piece.
    pub bos_piece: String,
    /// `trainer_spec.eos_piece`, a CONTROL piece.
    pub eos_piece: String,
}

impl Default for SpSettings {
    fn default() -> Self {
        Self { add_dummy_prefix: true, byte_fallback: true, bos_piece: "<s>".into(), eos_piece: "</s>".into() }
    }
}

/// How one id decodes.
#[derive(Debug, Clone, Copy)]
enum IdText<'a> {
    /// A byte-fallback piece.
    Byte(u8),
    /// A piece whose text (with `▁` for spaces) is output.
    Text(&'a str),
    /// Control, unknown, out-of-range or ChatGLM special: no text, but ends a byte run.
    Invisible,
}

/// The decoding state SentencePiece keeps across pieces (dummy-prefix rule).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PieceDecodeState {
    /// Whether a leading `▁` of the next text piece may still be the dummy prefix.
    is_bos_ws: bool,
    /// Whether the previous non-byte piece consumed a dummy-prefix `▁`.
    bos_ws_seen: bool,
    /// Whether any text has been produced.
    any_text: bool,
}

impl Default for PieceDecodeState {
    fn default() -> Self {
        Self { is_bos_ws: true, bos_ws_seen: false, any_text: false }
    }
}

/// A loaded SentencePiece BPE model.
#[derive(Debug, Clone)]
pub(crate) struct SentencePieceBpe {
    vocab: Vocab,
    settings: SpSettings,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
}

impl SentencePieceBpe {
    /// Checks that `model` uses only settings implemented here, then builds it.
    pub fn from_model_proto(model: ModelProto) -> Result<Self, TokenizerError> {
        check_supported(&model.trainer_spec, &model.normalizer_spec, model.denormalizer_spec.as_ref())?;
        let settings = SpSettings {
            add_dummy_prefix: model.normalizer_spec.add_dummy_prefix,
            byte_fallback: model.trainer_spec.byte_fallback,
            bos_piece: model.trainer_spec.bos_piece,
            eos_piece: model.trainer_spec.eos_piece,
        };
        Self::from_pieces(model.pieces, settings)
    }

    pub fn from_pieces(pieces: Vec<Piece>, settings: SpSettings) -> Result<Self, TokenizerError> {
        let vocab = Vocab::new(pieces, settings.byte_fallback)?;
        // SentencePiece's bos_id()/eos_id(): the named piece, if it is a control symbol.
        let control =
            |name: &str| vocab.id_of(name.as_bytes()).filter(|&id| vocab.kind(id) == Some(PieceKind::Control));
        let bos_id = control(&settings.bos_piece);
        let eos_id = control(&settings.eos_piece);
        Ok(Self { vocab, settings, bos_id, eos_id })
    }

    /// A `ModelProto` equivalent to this model, for [`Self::from_model_proto`].
    pub fn to_model_proto(&self) -> ModelProto {
        let id_or_minus_one = |id: Option<u32>| id.map_or(-1, |id| id as i32);
        ModelProto {
            pieces: self.vocab.pieces().to_vec(),
            trainer_spec: TrainerSpec {
                model_type: MODEL_TYPE_BPE,
                vocab_size: self.vocab.len() as i32,
                byte_fallback: self.settings.byte_fallback,
                unk_id: self.vocab.unk_id() as i32,
                bos_id: id_or_minus_one(self.bos_id),
                eos_id: id_or_minus_one(self.eos_id),
                pad_id: -1,
                unk_piece: self.vocab.text(self.vocab.unk_id()).unwrap_or("<unk>").to_owned(),
                bos_piece: self.settings.bos_piece.clone(),
                eos_piece: self.settings.eos_piece.clone(),
                ..TrainerSpec::default()
            },
            normalizer_spec: NormalizerSpec {
                name: "identity".into(),
                add_dummy_prefix: self.settings.add_dummy_prefix,
                remove_extra_whitespaces: false,
                escape_whitespaces: true,
                ..NormalizerSpec::default()
            },
            denormalizer_spec: None,
        }
    }

    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    pub fn settings(&self) -> &SpSettings {
        &self.settings
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// SentencePiece's normalization for identity rules: optional dummy
    /// prefix, then every space escaped as `▁`. Empty input stays empty.
    fn normalize(&self, text: &str, out: &mut String) {
        out.clear();
        if text.is_empty() {
            return;
        }
        out.reserve(text.len() + text.len() / 2 + 3);
        if self.settings.add_dummy_prefix {
            out.push_str(SPACE_SYMBOL);
        }
        let mut rest = text;
        while let Some(i) = rest.find(' ') {
            out.push_str(&rest[..i]);
            out.push_str(SPACE_SYMBOL);
            rest = &rest[i + 1..];
        }
        out.push_str(rest);
    }

    /// Runs BPE over the normalized text, appending SentencePiece's encode
    /// result (after unknown handling) to `out`. Ranges index `normalized`.
    fn encode_normalized(&self, normalized: &str, out: &mut Vec<BpeToken>) {
        let text = normalized.as_bytes();
        let mut scratch = BpeScratch::default();
        let mut raw = Vec::with_capacity(text.len() / 2);
        // UNUSED pieces are split back using pairs seen anywhere in the text
        // (`rev_merge`), so with them the text is processed as one piece.
        let mut rev_merge = self.vocab.has_unused().then(FastMap::default);
        // Otherwise, when no piece can span the start of a `▁` run that
        // follows another character, those positions split the text into
        // independent BPE problems with identical results (and small heaps).
        let split = rev_merge.is_none() && self.vocab.split_before_space_runs();
        let mut start = 0;
        let boundaries = space_run_starts(text).filter(|_| split);
        for boundary in boundaries.chain(std::iter::once(text.len())) {
            for (a, b) in long_segment_parts(normalized, start, boundary) {
                encode_segment(&self.vocab, text, a, b, &mut scratch, rev_merge.as_mut(), &mut raw);
            }
            start = boundary;
        }
        self.handle_unknown(text, &raw, out);
    }

    /// SentencePiece's processor step after `model->Encode`: with byte fallback
    /// an unknown piece becomes its UTF-8 bytes; without, a run of unknown
    /// pieces becomes one `<unk>` covering the run.
    fn handle_unknown(&self, text: &[u8], raw: &[BpeToken], out: &mut Vec<BpeToken>) {
        out.reserve(raw.len());
        let unk = self.vocab.unk_id();
        let mut prev_is_unk = false;
        for &token in raw {
            let is_unk = self.vocab.kind(token.id) == Some(PieceKind::Unknown);
            if is_unk {
                if let Some(byte_ids) = self.vocab.byte_ids() {
                    let bytes = text.get(token.start..token.end).unwrap_or_default();
                    for (pos, &byte) in (token.start..).zip(bytes) {
                        out.push(BpeToken { id: byte_ids[usize::from(byte)], start: pos, end: pos + 1 });
                    }
                } else if let Some(last) = out.last_mut().filter(|_| prev_is_unk) {
                    last.end = token.end;
                } else {
                    out.push(BpeToken { id: unk, ..token });
                }
            } else {
                out.push(token);
            }
            prev_is_unk = is_unk;
        }
    }

    /// `EncodeAsIds`.
    pub fn encode_ids(&self, text: &str, out: &mut Vec<u32>) {
        let mut normalized = String::new();
        self.normalize(text, &mut normalized);
        let mut tokens = Vec::new();
        self.encode_normalized(&normalized, &mut tokens);
        out.extend(tokens.iter().map(|t| t.id));
    }

    /// `EncodeAsPieces`: piece texts; a merged unknown run is its own text.
    pub fn encode_pieces(&self, text: &str) -> Vec<String> {
        let mut normalized = String::new();
        self.normalize(text, &mut normalized);
        let mut tokens = Vec::new();
        self.encode_normalized(&normalized, &mut tokens);
        let unk = self.vocab.unk_id();
        tokens
            .iter()
            .map(|t| {
                let surface = normalized.get(t.start..t.end).unwrap_or("");
                match self.vocab.text(t.id) {
                    Some(text) if t.id != unk => text.to_owned(),
                    _ => surface.to_owned(),
                }
            })
            .collect()
    }

    fn id_text(&self, id: u32) -> IdText<'_> {
        match self.vocab.kind(id) {
            Some(PieceKind::Byte) => self.vocab.byte_value(id).map_or(IdText::Invisible, IdText::Byte),
            Some(PieceKind::Normal | PieceKind::UserDefined | PieceKind::Unused) => {
                self.vocab.text(id).map_or(IdText::Invisible, IdText::Text)
            }
            Some(PieceKind::Control | PieceKind::Unknown) | None => IdText::Invisible,
        }
    }

    /// The byte of `id` if it is a byte piece.
    pub fn byte_of(&self, id: u32) -> Option<u8> {
        match self.id_text(id) {
            IdText::Byte(b) => Some(b),
            _ => None,
        }
    }

    /// Appends the text of one non-byte id, updating the dummy-prefix state.
    /// The caller must have flushed any pending byte run first (and recorded
    /// in `state.any_text` whether it produced text).
    pub fn decode_non_byte(&self, id: u32, state: &mut PieceDecodeState, out: &mut String) {
        if state.bos_ws_seen || state.any_text {
            state.is_bos_ws = false;
        }
        let mut consumed_bos_ws = false;
        if let IdText::Text(mut piece) = self.id_text(id) {
            if state.is_bos_ws && self.settings.add_dummy_prefix {
                if let Some(rest) = piece.strip_prefix(SPACE_SYMBOL) {
                    piece = rest;
                    consumed_bos_ws = true;
                }
            }
            let before = out.len();
            push_unescaped(piece, out);
            state.any_text |= out.len() > before;
        }
        state.bos_ws_seen = consumed_bos_ws;
    }

    /// Decodes ids like SentencePiece's `DecodePieces` on ChatGLM's tokens:
    /// ids that are not text or byte pieces (control, unknown, out of range)
    /// produce nothing.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut out = String::new();
        let mut state = PieceDecodeState::default();
        let mut bytes = Vec::new();
        for &id in ids {
            if let Some(b) = self.byte_of(id) {
                bytes.push(b);
                continue;
            }
            if !bytes.is_empty() {
                decode_byte_run(&bytes, &mut out);
                bytes.clear();
                state.any_text = true;
            }
            self.decode_non_byte(id, &mut state, &mut out);
        }
        decode_byte_run(&bytes, &mut out);
        out
    }
}

impl PieceDecodeState {
    /// Records that a byte run produced text.
    pub(crate) fn note_text(&mut self) {
        self.any_text = true;
    }
}

/// Appends `piece` with every `▁` replaced by a space.
fn push_unescaped(piece: &str, out: &mut String) {
    let mut rest = piece;
    while let Some(i) = rest.find('\u{2581}') {
        out.push_str(&rest[..i]);
        out.push(' ');
        rest = &rest[i + SPACE_SYMBOL.len()..];
    }
    out.push_str(rest);
}

/// `start..end` as one part, or cut at character boundaries into parts of at
/// most [`MAX_SEGMENT_BYTES`] (only for inputs over 2 GiB; see there).
fn long_segment_parts(text: &str, start: usize, end: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut pos = start;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let mut cut = end.min(pos + MAX_SEGMENT_BYTES);
        while cut < end && !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let part = (pos, cut);
        pos = cut;
        Some(part)
    })
}

/// Byte offsets in normalized text where a `▁` follows a character other than `▁`.
fn space_run_starts(text: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let space = SPACE_SYMBOL.as_bytes();
    // `0xE2` only ever starts a character, so matching the three bytes at any
    // offset finds exactly the `▁` characters.
    (1..text.len().saturating_sub(2)).filter(move |&i| {
        text[i] == space[0]
            && text[i + 1] == space[1]
            && text[i + 2] == space[2]
            && !(i >= 3 && &text[i - 3..i] == space)
    })
}

/// Refuses settings whose behaviour is not implemented, instead of silently
/// tokenizing differently from SentencePiece.
fn check_supported(
    trainer: &TrainerSpec,
    normalizer: &NormalizerSpec,
    denormalizer: Option<&NormalizerSpec>,
) -> Result<(), TokenizerError> {
    let unsupported = |setting, value: String, hint| Err(TokenizerError::Unsupported { setting, value, hint });
    if trainer.model_type != MODEL_TYPE_BPE {
        let name = match trainer.model_type {
            1 => "UNIGRAM".to_owned(),
            3 => "WORD".to_owned(),
            4 => "CHAR".to_owned(),
            other => other.to_string(),
        };
        return unsupported("trainer_spec.model_type", name, "only BPE models are supported");
    }
    if trainer.treat_whitespace_as_suffix {
        return unsupported(
            "trainer_spec.treat_whitespace_as_suffix",
            "true".into(),
            "only whitespace as prefix is supported",
        );
    }
    check_identity(normalizer)?;
    if !normalizer.escape_whitespaces {
        return unsupported("normalizer_spec.escape_whitespaces", "false".into(), "spaces must be escaped as U+2581");
    }
    if normalizer.remove_extra_whitespaces {
        return unsupported(
            "normalizer_spec.remove_extra_whitespaces",
            "true".into(),
            "only remove_extra_whitespaces = false is supported",
        );
    }
    if let Some(spec) = denormalizer {
        if !spec.precompiled_charsmap.is_empty() {
            return unsupported(
                "denormalizer_spec.precompiled_charsmap",
                format!("{} bytes", spec.precompiled_charsmap.len()),
                "denormalization rules are not supported",
            );
        }
    }
    Ok(())
}

fn check_identity(spec: &NormalizerSpec) -> Result<(), TokenizerError> {
    if !spec.precompiled_charsmap.is_empty() {
        return Err(TokenizerError::Unsupported {
            setting: "normalizer_spec.precompiled_charsmap",
            value: format!("{} bytes", spec.precompiled_charsmap.len()),
            hint: "only identity normalization (no charsmap) is supported",
        });
    }
    if !(spec.name.is_empty() || spec.name == "identity") {
        return Err(TokenizerError::Unsupported {
            setting: "normalizer_spec.name",
            value: spec.name.clone(),
            hint: "only the identity normalization rule is supported",
        });
    }
    Ok(())
}
