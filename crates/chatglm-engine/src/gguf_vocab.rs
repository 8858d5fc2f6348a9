//! The tokenizer inside a GGUF file, so that a `.gguf` alone is a complete
//! model. Written as llama.cpp writes ChatGLM vocabularies
//! (`tokenizer.ggml.model = "llama"`, i.e. SentencePiece; one entry per id
//! of the padded vocabulary: the SentencePiece pieces, the five ChatGLM
//! specials as CONTROL, `[PADn]` as UNUSED), plus
//! `chatglm_rs.tokenizer.sp_vocab_size` and `chatglm_rs.tokenizer.byte_fallback`,
//! which with `tokenizer.ggml.add_space_prefix` and the bos/eos ids are
//! everything [`ChatGlmTokenizer::from_pieces`] needs to rebuild the exact tokenizer.

use chatglm_tokenizer::{ChatGlmTokenizer, Piece, PieceKind, SpSettings, SpecialToken};
use chatglm_weights::gguf::{GgufArray, GgufFile, GgufValue};
use chatglm_weights::WeightsError;

/// Number of SentencePiece pieces (the ChatGLM specials follow them).
pub const SP_VOCAB_SIZE_KEY: &str = "chatglm_rs.tokenizer.sp_vocab_size";
/// SentencePiece `byte_fallback`.
pub const BYTE_FALLBACK_KEY: &str = "chatglm_rs.tokenizer.byte_fallback";

/// The `tokenizer.*` metadata of `tok`, padded with `[PADn]` entries to
/// `padded_vocab` ids (the model's `padded_vocab_size`).
pub fn tokenizer_metadata(tok: &ChatGlmTokenizer, padded_vocab: usize) -> Vec<(String, GgufValue)> {
    let pieces = tok.pieces();
    let n_ids = padded_vocab.max(tok.vocab_size());
    let mut texts = Vec::with_capacity(n_ids);
    let mut scores = Vec::with_capacity(n_ids);
    let mut types = Vec::with_capacity(n_ids);
    for p in pieces {
        texts.push(p.text.clone());
        scores.push(p.score);
        types.push(p.kind.proto_value());
    }
    for t in SpecialToken::ALL {
        texts.push(t.name().to_string());
        scores.push(0.0);
        types.push(PieceKind::Control.proto_value());
    }
    for id in texts.len()..n_ids {
        texts.push(format!("[PAD{id}]"));
        scores.push(0.0);
        types.push(PieceKind::Unused.proto_value());
    }
    let s = |k: &str| format!("tokenizer.ggml.{k}");
    vec![
        (s("model"), GgufValue::String("llama".into())),
        (s("pre"), GgufValue::String("chatglm-spm".into())),
        (s("tokens"), GgufValue::Array(GgufArray::String(texts))),
        (s("scores"), GgufValue::Array(GgufArray::F32(scores))),
        (s("token_type"), GgufValue::Array(GgufArray::I32(types))),
        (s("bos_token_id"), GgufValue::U32(tok.bos_id())),
        (s("eos_token_id"), GgufValue::U32(tok.eos_id())),
        (s("unknown_token_id"), GgufValue::U32(tok.unk_id())),
        (s("padding_token_id"), GgufValue::U32(tok.pad_id())),
        (s("add_bos_token"), GgufValue::Bool(false)),
        (s("add_eos_token"), GgufValue::Bool(false)),
        (s("add_space_prefix"), GgufValue::Bool(tok.settings().add_dummy_prefix)),
        (SP_VOCAB_SIZE_KEY.to_string(), GgufValue::U32(pieces.len() as u32)),
        (BYTE_FALLBACK_KEY.to_string(), GgufValue::Bool(tok.settings().byte_fallback)),
    ]
}

/// Rebuilds the tokenizer stored in a GGUF file's metadata.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<ChatGlmTokenizer, crate::EngineError> {
    let bad = |message: String| WeightsError::Gguf { path: file.path().to_path_buf(), message };
    match file.get("tokenizer.ggml.model").and_then(GgufValue::as_str) {
        Some("llama") => {}
        Some(other) => {
            return Err(bad(format!(
                "tokenizer.ggml.model is {other:?}; this engine reads SentencePiece (\"llama\") vocabularies only"
            ))
            .into())
        }
        None => return Err(bad("no tokenizer in the file (tokenizer.ggml.model is missing)".into()).into()),
    }
    let Some(GgufArray::String(texts)) = file.get("tokenizer.ggml.tokens").and_then(GgufValue::as_array) else {
        return Err(bad("tokenizer.ggml.tokens is missing or not an array of strings".into()).into());
    };
    let scores = match file.get("tokenizer.ggml.scores").and_then(GgufValue::as_array) {
        Some(GgufArray::F32(s)) if s.len() == texts.len() => s.clone(),
        None => vec![0.0; texts.len()],
        Some(_) => return Err(bad(format!("tokenizer.ggml.scores must be {} f32 values", texts.len())).into()),
    };
    let types = match file.get("tokenizer.ggml.token_type").and_then(GgufValue::as_array) {
        Some(GgufArray::I32(t)) if t.len() == texts.len() => t.clone(),
        None => vec![PieceKind::Normal.proto_value(); texts.len()],
        Some(_) => return Err(bad(format!("tokenizer.ggml.token_type must be {} i32 values", texts.len())).into()),
    };
    // Where the SentencePiece pieces end: stored, or found as the position of
    // the five ChatGLM specials (files converted by llama.cpp).
    let n = match file.get(SP_VOCAB_SIZE_KEY).and_then(GgufValue::as_u64) {
        Some(n) => usize::try_from(n).ok().filter(|&n| n <= texts.len()).ok_or_else(|| {
            bad(format!("{SP_VOCAB_SIZE_KEY} = {n} exceeds the {} tokens of tokenizer.ggml.tokens", texts.len()))
        })?,
        None => texts
            .windows(SpecialToken::ALL.len())
            .position(|w| w.iter().zip(SpecialToken::ALL).all(|(t, s)| t == s.name()))
            .ok_or_else(|| bad("tokenizer.ggml.tokens has no [MASK] [gMASK] [sMASK] sop eop run".into()))?,
    };
    let mut pieces = Vec::with_capacity(n);
    for (id, ((text, &score), &ty)) in texts.iter().zip(&scores).zip(&types).take(n).enumerate() {
        let kind = PieceKind::from_proto_value(ty.into()).ok_or_else(|| {
            bad(format!("tokenizer.ggml.token_type[{id}] = {ty} is not a SentencePiece type (1..=6)"))
        })?;
        pieces.push(Piece { text: text.clone(), score, kind });
    }
    let piece_at = |key: &str, default: &str| -> String {
        file.get(key)
            .and_then(GgufValue::as_u64)
            .and_then(|id| texts.get(usize::try_from(id).ok()?))
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let settings = SpSettings {
        add_dummy_prefix: file.get("tokenizer.ggml.add_space_prefix").and_then(GgufValue::as_bool).unwrap_or(true),
        byte_fallback: file
            .get(BYTE_FALLBACK_KEY)
            .and_then(GgufValue::as_bool)
            .unwrap_or_else(|| pieces.iter().any(|p| p.kind == PieceKind::Byte)),
        bos_piece: piece_at("tokenizer.ggml.bos_token_id", "<s>"),
        eos_piece: piece_at("tokenizer.ggml.eos_token_id", "</s>"),
    };
    Ok(ChatGlmTokenizer::from_pieces(pieces, settings)?)
}
