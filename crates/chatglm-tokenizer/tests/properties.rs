//! Property tests on arbitrary Unicode text: encoding never panics, decoding
//! inverts it, and streaming detokenization equals a full decode.

mod common;

use std::sync::OnceLock;

use chatglm_tokenizer::{ChatGlmTokenizer, Detokenizer, Piece, PieceKind};
use proptest::prelude::*;

const REPLACEMENT: char = '\u{FFFD}';

fn real() -> &'static ChatGlmTokenizer {
    static TOK: OnceLock<ChatGlmTokenizer> = OnceLock::new();
    TOK.get_or_init(|| common::real().tokenizer())
}

fn dev() -> &'static ChatGlmTokenizer {
    static TOK: OnceLock<ChatGlmTokenizer> = OnceLock::new();
    TOK.get_or_init(|| common::dev().tokenizer())
}

/// The real vocabulary plus one unreachable piece containing `x▁`, which
/// turns off the split-at-spaces fast path: results must not change.
fn real_unsplit() -> &'static ChatGlmTokenizer {
    static TOK: OnceLock<ChatGlmTokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let tok = real();
        let mut pieces = tok.pieces().to_vec();
        pieces.push(Piece { text: "\u{E000}\u{2581}\u{E000}".into(), score: -1e9, kind: PieceKind::Normal });
        ChatGlmTokenizer::from_pieces(pieces, tok.settings().clone()).expect("valid vocabulary")
    })
}

fn stream_decode(tok: &ChatGlmTokenizer, ids: &[u32]) -> String {
    let mut detok = Detokenizer::new(tok);
    let mut out = String::new();
    for &id in ids {
        out += &detok.push(id);
    }
    out + &detok.finish()
}

/// Text mixing the kinds of characters that stress the tokenizer.
fn text_strategy() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        4 => any::<char>().prop_map(String::from),
        3 => "[a-zA-Z0-9_]{1,12}",
        3 => "[\u{4e00}-\u{9fff}]{1,8}",
        2 => "[ \t\n\r]{1,40}",
        1 => "[\u{0}-\u{1f}\u{7f}-\u{9f}]{1,4}",
        1 => "[\u{1F300}-\u{1FAFF}\u{20000}-\u{2FFFF}\u{10000}-\u{10FFFF}]{1,4}",
        1 => "[\u{300}-\u{36f}\u{200b}-\u{200f}\u{a0}\u{3000}\u{feff}]{1,3}",
        1 => "(fn|def|let|<s>|</s>|\\[gMASK\\]|sop|<unk>|    |\\{|\\}|::|->)",
    ];
    prop::collection::vec(fragment, 0..24).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn decode_inverts_encode(text in text_strategy()) {
        // `▁` in the input is indistinguishable from an escaped space.
        prop_assume!(!text.contains('\u{2581}'));
        for tok in [real(), dev()] {
            let ids = tok.encode_no_special(&text);
            prop_assert_eq!(&tok.decode(&ids), &text);
            let with_prefix = tok.encode(&text);
            prop_assert_eq!(&with_prefix[..2], &tok.prefix_tokens());
            prop_assert_eq!(&with_prefix[2..], &ids[..]);
            prop_assert_eq!(&tok.decode(&with_prefix), &text);
            let pieces = tok.tokenize(&text);
            prop_assert_eq!(pieces.len(), ids.len());
            for (piece, &id) in pieces.iter().zip(&ids) {
                prop_assert_eq!(Some(piece.as_str()), tok.id_to_piece(id));
            }
        }
    }

    #[test]
    fn any_text_encodes_and_decodes(text in any::<String>()) {
        for tok in [real(), dev()] {
            let ids = tok.encode(&text);
            prop_assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
            let decoded = tok.decode(&ids);
            prop_assert_eq!(decoded.replace(' ', "\u{2581}"), text.replace(' ', "\u{2581}"));
        }
    }

    #[test]
    fn split_fast_path_is_exact(text in text_strategy()) {
        prop_assert_eq!(real().encode_no_special(&text), real_unsplit().encode_no_special(&text));
    }

    #[test]
    fn streaming_equals_full_decode(ids in prop::collection::vec(
        prop_oneof![
            6 => 0u32..300,          // control, unknown and byte pieces
            3 => 0u32..64_794,       // anything, specials included
            1 => 64_789u32..70_000,  // specials and out of range
        ],
        0..48,
    )) {
        for tok in [real(), dev()] {
            let full = tok.decode(&ids);
            prop_assert_eq!(stream_decode(tok, &ids), full);
        }
    }

    #[test]
    fn streaming_never_splits_characters(text in text_strategy()) {
        let tok = real();
        let ids = tok.encode(&text);
        let mut detok = Detokenizer::new(tok);
        let mut joined = String::new();
        for &id in &ids {
            let chunk = detok.push(id);
            let broken = chunk.contains(REPLACEMENT) && !text.contains(REPLACEMENT);
            prop_assert!(!broken, "chunk {:?} of {:?}", chunk, text);
            joined += &chunk;
        }
        joined += &detok.finish();
        prop_assert_eq!(joined, tok.decode(&ids));
    }
}

#[test]
fn long_whitespace_runs_and_large_inputs() {
    let tok = real();
    for text in [
        " ".repeat(10_000),
        "\n".repeat(5_000),
        "\t ".repeat(3_000),
        "中".repeat(20_000),
        "a".repeat(50_000),
        "🦀".repeat(2_000),
    ] {
        let ids = tok.encode_no_special(&text);
        assert_eq!(tok.decode(&ids), text);
        assert_eq!(ids, real_unsplit().encode_no_special(&text));
    }
}

#[test]
fn dummy_prefix_rule_in_decode() {
    let tok = real();
    let space = tok.encode_no_special(" ");
    // " " is one piece `▁▁`; its first `▁` is the dummy prefix.
    assert_eq!(tok.tokenize(" "), ["▁▁"]);
    assert_eq!(tok.decode(&space), " ");
    // A leading byte piece makes the following `▁` a real space.
    let newline_then_word = tok.encode_no_special("\n hi");
    assert_eq!(tok.decode(&newline_then_word), "\n hi");
    // Specials before the first piece do not end the dummy-prefix position.
    let mut ids = vec![tok.gmask_id(), tok.sop_id(), tok.eos_id()];
    ids.extend(tok.encode_no_special("hello"));
    assert_eq!(tok.decode(&ids), "hello");
    assert_eq!(stream_decode(tok, &ids), "hello");
}

#[test]
fn incomplete_bytes_become_replacement_characters() {
    let tok = real();
    let crab = tok.encode_no_special("🦀"); // ▁ + 4 byte pieces
    assert_eq!(crab.len(), 5, "{:?}", tok.tokenize("🦀"));
    let word = tok.encode_no_special("ok");
    // Two of the four bytes, then a normal piece: one U+FFFD per byte.
    let ids = [&crab[..3], &word[..]].concat();
    let full = tok.decode(&ids);
    // `▁` is not a byte piece, so the run is [F0 9F] at most... the first
    // id of `crab` is the `▁` piece, then two bytes: two U+FFFD, then " ok".
    assert_eq!(full, "\u{FFFD}\u{FFFD} ok");
    assert_eq!(stream_decode(tok, &ids), full);
    // A special id in the middle of a character also ends the byte run.
    let ids = [&crab[..3], &[tok.eop_id()], &crab[3..]].concat();
    assert_eq!(tok.decode(&ids), "\u{FFFD}".repeat(4));
    assert_eq!(stream_decode(tok, &ids), "\u{FFFD}".repeat(4));
    // Unfinished at the end of the stream.
    let mut detok = Detokenizer::new(tok);
    for &id in &crab[..4] {
        assert_eq!(detok.push(id), "");
    }
    assert!(detok.has_pending());
    assert_eq!(detok.finish(), "\u{FFFD}".repeat(3));
}

#[test]
fn out_of_range_ids_decode_to_nothing() {
    for tok in [real(), dev()] {
        assert_eq!(tok.decode(&[u32::MAX, tok.vocab_size() as u32, 1_000_000]), "");
        assert_eq!(tok.id_to_piece(u32::MAX), None);
    }
}
