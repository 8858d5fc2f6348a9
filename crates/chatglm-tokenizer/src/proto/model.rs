//! The subset of `sentencepiece_model.proto` that tokenization depends on.
//!
//! Field numbers follow `sentencepiece_model.proto`; proto2 defaults are
//! applied for absent fields, repeated embedded messages are merged and
//! unknown fields are skipped, as protobuf's own parser does.

use super::wire::{Field, MessageReader, MessageWriter};
use crate::piece::{Piece, PieceKind};
use crate::TokenizerError;

/// `TrainerSpec.ModelType.BPE`.
pub(crate) const MODEL_TYPE_BPE: i32 = 2;

/// Fields of `TrainerSpec` that matter for encoding/decoding (or for refusing a model).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TrainerSpec {
    pub model_type: i32,
    pub vocab_size: i32,
    pub max_sentencepiece_length: i32,
    pub split_digits: bool,
    pub treat_whitespace_as_suffix: bool,
    pub byte_fallback: bool,
    pub unk_id: i32,
    pub bos_id: i32,
    pub eos_id: i32,
    pub pad_id: i32,
    pub unk_piece: String,
    pub bos_piece: String,
    pub eos_piece: String,
    pub pad_piece: String,
    pub unk_surface: String,
}

impl Default for TrainerSpec {
    fn default() -> Self {
        Self {
            model_type: 1,
            vocab_size: 8000,
            max_sentencepiece_length: 16,
            split_digits: false,
            treat_whitespace_as_suffix: false,
            byte_fallback: false,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
            unk_piece: "<unk>".into(),
            bos_piece: "<s>".into(),
            eos_piece: "</s>".into(),
            pad_piece: "<pad>".into(),
            unk_surface: " \u{2047} ".into(),
        }
    }
}

/// `NormalizerSpec` (also used for the optional `denormalizer_spec`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NormalizerSpec {
    pub name: String,
    pub precompiled_charsmap: Vec<u8>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
    pub normalization_rule_tsv: String,
}

impl Default for NormalizerSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
            normalization_rule_tsv: String::new(),
        }
    }
}

/// A decoded `ModelProto`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ModelProto {
    pub pieces: Vec<Piece>,
    pub trainer_spec: TrainerSpec,
    pub normalizer_spec: NormalizerSpec,
    pub denormalizer_spec: Option<NormalizerSpec>,
}

impl ModelProto {
    /// Decodes a serialized `ModelProto`.
    pub fn decode(bytes: &[u8]) -> Result<Self, TokenizerError> {
        let mut model = Self::default();
        let mut reader = MessageReader::new(bytes, 0, "ModelProto");
        while let Some(field) = reader.next_field()? {
            match field.number {
                1 => {
                    let (body, offset) = reader.bytes(&field, "pieces")?;
                    model.pieces.push(decode_piece(body, offset)?);
                }
                2 => {
                    let (body, offset) = reader.bytes(&field, "trainer_spec")?;
                    decode_trainer_spec(body, offset, &mut model.trainer_spec)?;
                }
                3 => {
                    let (body, offset) = reader.bytes(&field, "normalizer_spec")?;
                    decode_normalizer_spec(body, offset, &mut model.normalizer_spec)?;
                }
                5 => {
                    let (body, offset) = reader.bytes(&field, "denormalizer_spec")?;
                    let spec = model.denormalizer_spec.get_or_insert_with(NormalizerSpec::default);
                    decode_normalizer_spec(body, offset, spec)?;
                }
                _ => {} // self_test_data (4) and extensions do not affect tokenization.
            }
        }
        Ok(model)
    }

    /// Serializes the fields this crate knows (enough to load the model again).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MessageWriter::default();
        for piece in &self.pieces {
            let mut p = MessageWriter::default();
            p.bytes(1, piece.text.as_bytes());
            p.float(2, piece.score);
            p.int32(3, piece.kind.proto_value());
            out.bytes(1, &p.buf);
        }
        let t = &self.trainer_spec;
        let mut w = MessageWriter::default();
        w.int32(3, t.model_type);
        w.int32(4, t.vocab_size);
        w.int32(20, t.max_sentencepiece_length);
        w.bool(24, t.treat_whitespace_as_suffix);
        w.bool(25, t.split_digits);
        w.bool(35, t.byte_fallback);
        w.int32(40, t.unk_id);
        w.int32(41, t.bos_id);
        w.int32(42, t.eos_id);
        w.int32(43, t.pad_id);
        w.bytes(44, t.unk_surface.as_bytes());
        w.bytes(45, t.unk_piece.as_bytes());
        w.bytes(46, t.bos_piece.as_bytes());
        w.bytes(47, t.eos_piece.as_bytes());
        w.bytes(48, t.pad_piece.as_bytes());
        out.bytes(2, &w.buf);
        out.bytes(3, &encode_normalizer_spec(&self.normalizer_spec));
        if let Some(spec) = &self.denormalizer_spec {
            out.bytes(5, &encode_normalizer_spec(spec));
        }
        out.buf
    }
}

fn decode_piece(body: &[u8], base: usize) -> Result<Piece, TokenizerError> {
    let mut reader = MessageReader::new(body, base, "ModelProto.SentencePiece");
    let mut piece = Piece { text: String::new(), score: 0.0, kind: PieceKind::Normal };
    while let Some(field) = reader.next_field()? {
        match field.number {
            1 => piece.text = reader.string(&field, "piece")?.to_owned(),
            2 => piece.score = reader.float(&field, "score")?,
            3 => {
                let value = reader.varint(&field, "type")? as i64;
                piece.kind = PieceKind::from_proto_value(value)
                    .ok_or_else(|| reader.error(field.offset, format!("unknown piece type {value} (known: 1..=6)")))?;
            }
            _ => {}
        }
    }
    Ok(piece)
}

fn decode_trainer_spec(body: &[u8], base: usize, spec: &mut TrainerSpec) -> Result<(), TokenizerError> {
    let mut r = MessageReader::new(body, base, "TrainerSpec");
    while let Some(f) = r.next_field()? {
        let f: Field<'_> = f;
        match f.number {
            3 => spec.model_type = r.int32(&f, "model_type")?,
            4 => spec.vocab_size = r.int32(&f, "vocab_size")?,
            20 => spec.max_sentencepiece_length = r.int32(&f, "max_sentencepiece_length")?,
            24 => spec.treat_whitespace_as_suffix = r.bool(&f, "treat_whitespace_as_suffix")?,
            25 => spec.split_digits = r.bool(&f, "split_digits")?,
            35 => spec.byte_fallback = r.bool(&f, "byte_fallback")?,
            40 => spec.unk_id = r.int32(&f, "unk_id")?,
            41 => spec.bos_id = r.int32(&f, "bos_id")?,
            42 => spec.eos_id = r.int32(&f, "eos_id")?,
            43 => spec.pad_id = r.int32(&f, "pad_id")?,
            44 => spec.unk_surface = r.string(&f, "unk_surface")?.to_owned(),
            45 => spec.unk_piece = r.string(&f, "unk_piece")?.to_owned(),
            46 => spec.bos_piece = r.string(&f, "bos_piece")?.to_owned(),
            47 => spec.eos_piece = r.string(&f, "eos_piece")?.to_owned(),
            48 => spec.pad_piece = r.string(&f, "pad_piece")?.to_owned(),
            _ => {} // training-only settings
        }
    }
    Ok(())
}

fn decode_normalizer_spec(body: &[u8], base: usize, spec: &mut NormalizerSpec) -> Result<(), TokenizerError> {
    let mut r = MessageReader::new(body, base, "NormalizerSpec");
    while let Some(f) = r.next_field()? {
        match f.number {
            1 => spec.name = r.string(&f, "name")?.to_owned(),
            2 => spec.precompiled_charsmap = r.bytes(&f, "precompiled_charsmap")?.0.to_vec(),
            3 => spec.add_dummy_prefix = r.bool(&f, "add_dummy_prefix")?,
            4 => spec.remove_extra_whitespaces = r.bool(&f, "remove_extra_whitespaces")?,
            5 => spec.escape_whitespaces = r.bool(&f, "escape_whitespaces")?,
            6 => spec.normalization_rule_tsv = r.string(&f, "normalization_rule_tsv")?.to_owned(),
            _ => {}
        }
    }
    Ok(())
}

fn encode_normalizer_spec(spec: &NormalizerSpec) -> Vec<u8> {
    let mut w = MessageWriter::default();
    w.bytes(1, spec.name.as_bytes());
    if !spec.precompiled_charsmap.is_empty() {
        w.bytes(2, &spec.precompiled_charsmap);
    }
    w.bool(3, spec.add_dummy_prefix);
    w.bool(4, spec.remove_extra_whitespaces);
    w.bool(5, spec.escape_whitespaces);
    if !spec.normalization_rule_tsv.is_empty() {
        w.bytes(6, spec.normalization_rule_tsv.as_bytes());
    }
    w.buf
}
