//! Malformed, truncated and unsupported `tokenizer.model` bytes give errors
//! that name the problem, never a panic or a silently different tokenizer.

mod common;

use chatglm_tokenizer::{ChatGlmTokenizer, TokenizerError};

/// Deterministic pseudo-random numbers (no extra dependency needed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn every_truncation_is_an_error() {
    for golden in common::both() {
        let bytes = golden.model_bytes();
        let len = bytes.len();
        // Every offset near the start and end, a stride through the middle.
        let offsets = (0..1500.min(len))
            .chain((1500..len).step_by(if len > 100_000 { 4099 } else { 97 }))
            .chain(len.saturating_sub(1500)..len);
        let mut checked = 0;
        for cut in offsets {
            let err = ChatGlmTokenizer::from_bytes(&bytes[..cut]).expect_err(&format!("{} cut at {cut}", golden.name));
            let message = err.to_string();
            assert!(message.len() > 20, "{message}");
            checked += 1;
        }
        assert!(checked > 1500);
    }
}

#[test]
fn truncation_inside_a_field_names_the_problem() {
    let bytes = common::dev().model_bytes();
    let err = ChatGlmTokenizer::from_bytes(&bytes[..1001]).expect_err("truncated");
    let message = err.to_string();
    assert!(matches!(err, TokenizerError::Protobuf { .. }), "{message}");
    assert!(message.contains("truncated") && message.contains("byte"), "{message}");
}

#[test]
fn flipped_bytes_never_panic() {
    let original = common::dev().model_bytes();
    let reference = common::dev().tokenizer();
    let mut rng = Lcg(0x5eed);
    let (mut ok, mut err) = (0, 0);
    for round in 0..3000 {
        let mut bytes = original.clone();
        let flips = 1 + round % 4;
        for _ in 0..flips {
            let at = (rng.next() as usize) % bytes.len();
            bytes[at] ^= 1 << (rng.next() % 8);
        }
        match ChatGlmTokenizer::from_bytes(&bytes) {
            Ok(tok) => {
                ok += 1;
                let text = "Hello 世界 🦀\n\tfn main() {}";
                let ids = tok.encode(text);
                let _ = tok.decode(&ids);
                let _ = tok.decode(&reference.encode(text));
            }
            Err(e) => {
                err += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
}

#[test]
fn garbage_is_an_error() {
    let mut rng = Lcg(42);
    for len in [0usize, 1, 2, 7, 100, 5000] {
        for _ in 0..50 {
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            assert!(ChatGlmTokenizer::from_bytes(&bytes).is_err(), "{bytes:02X?}");
        }
    }
    for bad in [
        &[0x08][..],                           // varint key, missing value
        &[0xFF; 11][..],                       // varint longer than 10 bytes
        &[0x0A, 0x80, 0x80, 0x80, 0x80, 0x10], // length far beyond the input
        &[0x0B, 0x10, 0x01][..],               // unterminated group
        &[0x0C][..],                           // stray end-group
        &[0x0E][..],                           // wire type 6
        &[0x00, 0x00][..],                     // field number 0
        &[0x15, 0x00, 0x00][..],               // truncated fixed32
    ] {
        let err = ChatGlmTokenizer::from_bytes(bad).expect_err("malformed");
        assert!(matches!(err, TokenizerError::Protobuf { .. }), "{bad:02X?}: {err}");
    }
}

fn with_appended(extra: &[u8]) -> Result<ChatGlmTokenizer, TokenizerError> {
    let mut bytes = common::dev().model_bytes();
    bytes.extend_from_slice(extra);
    ChatGlmTokenizer::from_bytes(&bytes)
}

#[test]
fn unsupported_settings_are_refused() {
    // Appending a sub-message merges it into the existing one (protobuf
    // semantics), overriding single fields.
    let cases: [(&[u8], &str); 6] = [
        (&[0x12, 0x02, 0x18, 0x01], "model_type = UNIGRAM"),
        (&[0x12, 0x02, 0x18, 0x03], "model_type = WORD"),
        (&[0x1A, 0x02, 0x20, 0x01], "remove_extra_whitespaces = true"),
        (&[0x1A, 0x02, 0x28, 0x00], "escape_whitespaces = false"),
        (&[0x1A, 0x03, 0x12, 0x01, 0x00], "precompiled_charsmap = 1 bytes"),
        (&[0x1A, 0x06, 0x0A, 0x04, b'n', b'f', b'k', b'c'], "name = nfkc"),
    ];
    for (extra, what) in cases {
        let err = with_appended(extra).expect_err(what);
        let message = err.to_string();
        assert!(matches!(err, TokenizerError::Unsupported { .. }), "{what}: {message}");
        assert!(message.contains(what), "{what}: {message}");
    }
    // treat_whitespace_as_suffix is field 24: key (24 << 3) = 0xC0 0x01.
    let err = with_appended(&[0x12, 0x03, 0xC0, 0x01, 0x01]).expect_err("suffix");
    assert!(err.to_string().contains("treat_whitespace_as_suffix"), "{err}");
    // byte_fallback off while byte pieces exist: SentencePiece refuses too.
    let err = with_appended(&[0x12, 0x03, 0x98, 0x02, 0x00]).expect_err("byte_fallback");
    assert!(err.to_string().contains("byte_fallback"), "{err}");
}

#[test]
fn unknown_fields_are_skipped() {
    let reference = common::dev().tokenizer();
    // Field 99 as varint, fixed64, fixed32, bytes and a group, at the top
    // level and inside trainer_spec / normalizer_spec.
    let unknown: &[u8] = &[
        0x98, 0x06, 0x05, // 99 varint
        0x99, 0x06, 1, 2, 3, 4, 5, 6, 7, 8, // 99 fixed64
        0x9D, 0x06, 1, 2, 3, 4, // 99 fixed32
        0x9A, 0x06, 0x02, 0xAA, 0xBB, // 99 bytes
        0x9B, 0x06, 0x08, 0x01, 0x0B, 0x10, 0x02, 0x0C, 0x9C, 0x06, // 99 group with a nested group
    ];
    let mut extra = unknown.to_vec();
    for field in [0x12u8, 0x1A] {
        extra.push(field);
        extra.push(unknown.len() as u8);
        extra.extend_from_slice(unknown);
    }
    let tok = with_appended(&extra).expect("unknown fields are skipped");
    let text = "Unknown fields 不影响 tokenization.\n";
    assert_eq!(tok.encode(text), reference.encode(text));
}

#[test]
fn file_errors_name_the_file() {
    let missing = std::path::Path::new("/nonexistent/dir/tokenizer.model");
    let err = ChatGlmTokenizer::from_file(missing).expect_err("missing file");
    assert!(err.to_string().contains("/nonexistent/dir/tokenizer.model"), "{err}");

    let dir = std::env::temp_dir().join(format!("chatglm-tokenizer-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("truncated.model");
    let bytes = common::dev().model_bytes();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write temp file");
    let err = ChatGlmTokenizer::from_file(&path).expect_err("truncated file");
    let message = err.to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(message.contains("truncated.model"), "{message}");
}

#[test]
fn from_pieces_round_trips_through_model_bytes() {
    for golden in common::both() {
        let tok = golden.tokenizer();
        let rebuilt =
            ChatGlmTokenizer::from_pieces(tok.pieces().to_vec(), tok.settings().clone()).expect("valid pieces");
        let reloaded = ChatGlmTokenizer::from_bytes(rebuilt.model_bytes()).expect("re-encoded model loads");
        assert_eq!(reloaded.pieces(), tok.pieces());
        assert_eq!(reloaded.settings(), tok.settings());
        let text = "def f(x):\n    return x  # 注释 🦀";
        assert_eq!(reloaded.encode(text), tok.encode(text));
        assert_eq!(rebuilt.encode(text), tok.encode(text));
    }
}
