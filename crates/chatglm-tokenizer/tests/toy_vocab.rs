//! SentencePiece behaviours the ChatGLM2 vocabulary does not exercise
//! (UNUSED pieces, user-defined pieces, `<unk>` without byte fallback), on a
//! hand-made vocabulary with expectations worked out from `bpe_model.cc`.

use chatglm_tokenizer::{ChatGlmTokenizer, Detokenizer, Piece, PieceKind, SpSettings};

fn piece(text: &str, score: f32, kind: PieceKind) -> Piece {
    Piece { text: text.into(), score, kind }
}

fn toy() -> ChatGlmTokenizer {
    use PieceKind::*;
    let pieces = vec![
        piece("<unk>", 0.0, Unknown),  // 0
        piece("<s>", 0.0, Control),    // 1
        piece("</s>", 0.0, Control),   // 2
        piece("▁", 0.0, Normal),       // 3
        piece("a", -1.0, Normal),      // 4
        piece("b", -2.0, Normal),      // 5
        piece("c", -3.0, Normal),      // 6
        piece("ab", -0.5, Normal),     // 7
        piece("abc", -0.1, Unused),    // 8
        piece("bc", -0.2, Normal),     // 9
        piece("xy", 0.0, UserDefined), // 10
        piece("▁x", 5.0, Normal),      // 11
        piece("y", -1.0, Normal),      // 12
        piece("x", -1.0, Normal),      // 13
    ];
    let settings = SpSettings { byte_fallback: false, ..SpSettings::default() };
    ChatGlmTokenizer::from_pieces(pieces, settings).expect("valid toy vocabulary")
}

#[test]
fn unused_pieces_are_split_back_into_the_pair_that_formed_them() {
    let tok = toy();
    // ▁ a b c: "bc" (-0.2) beats "ab" (-0.5); then a+bc forms UNUSED "abc",
    // which is emitted as the pair that formed it.
    assert_eq!(tok.encode_no_special("abc"), [3, 4, 9]);
    assert_eq!(tok.tokenize("abc"), ["▁", "a", "bc"]);
    assert_eq!(tok.decode(&[3, 4, 9]), "abc");
}

#[test]
fn user_defined_pieces_are_matched_first_and_never_merged() {
    let tok = toy();
    // Without the user-defined "xy", "▁x" (score 5) would win.
    assert_eq!(tok.encode_no_special("xy"), [3, 10]);
    assert_eq!(tok.encode_no_special("x"), [11]);
    assert_eq!(tok.encode_no_special("xxy"), [11, 10]);
}

#[test]
fn unknown_runs_merge_into_one_unk_without_byte_fallback() {
    let tok = toy();
    assert_eq!(tok.encode_no_special("zz a"), [3, 0, 3, 4]);
    assert_eq!(tok.tokenize("zz a"), ["▁", "zz", "▁", "a"]);
    // ChatGLM decodes <unk> to nothing.
    assert_eq!(tok.decode(&[3, 0, 3, 4]), " a");
    let mut detok = Detokenizer::new(&tok);
    let streamed: String = [3, 0, 3, 4].iter().map(|&id| detok.push(id)).collect();
    assert_eq!(streamed, " a");
}

#[test]
fn duplicate_and_missing_pieces_are_refused() {
    use PieceKind::*;
    let base = || vec![piece("<unk>", 0.0, Unknown), piece("<s>", 0.0, Control), piece("</s>", 0.0, Control)];
    let settings = SpSettings { byte_fallback: false, ..SpSettings::default() };
    let mut dup = base();
    dup.push(piece("<s>", 0.0, Normal));
    let err = ChatGlmTokenizer::from_pieces(dup, settings.clone()).expect_err("duplicate");
    assert!(err.to_string().contains("defined twice"), "{err}");

    let no_unk = vec![piece("<s>", 0.0, Control), piece("</s>", 0.0, Control)];
    let err = ChatGlmTokenizer::from_pieces(no_unk, settings.clone()).expect_err("no unk");
    assert!(err.to_string().contains("unknown piece"), "{err}");

    let mut empty = base();
    empty.push(piece("", 0.0, Normal));
    assert!(ChatGlmTokenizer::from_pieces(empty, settings.clone()).is_err());

    let mut nan = base();
    nan.push(piece("a", f32::NAN, Normal));
    assert!(ChatGlmTokenizer::from_pieces(nan, settings.clone()).is_err());

    let no_eos = vec![piece("<unk>", 0.0, Unknown), piece("<s>", 0.0, Control)];
    let err = ChatGlmTokenizer::from_pieces(no_eos, settings).expect_err("no eos");
    assert!(err.to_string().contains("</s>"), "{err}");

    // byte_fallback needs all 256 byte pieces.
    let mut some_bytes = base();
    some_bytes.push(piece("<0x00>", 0.0, Byte));
    let err = ChatGlmTokenizer::from_pieces(some_bytes, SpSettings::default()).expect_err("missing bytes");
    assert!(err.to_string().contains("<0x01>"), "{err}");
}
