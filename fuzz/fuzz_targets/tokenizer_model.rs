//! Arbitrary bytes as `tokenizer.model`: parsing must return an error or a
//! tokenizer, never panic; a tokenizer that loads must encode and decode.

#![no_main]

use chatglm_tokenizer::{ChatGlmTokenizer, Detokenizer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tok) = ChatGlmTokenizer::from_bytes(data) else {
        return;
    };
    let text = "Hi 世界 🦀\n\t  x";
    let ids = tok.encode(text);
    let _ = tok.decode(&ids);
    let _ = tok.tokenize(text);
    // Every id, including ones out of range, must decode and stream.
    let all: Vec<u32> = (0..tok.vocab_size() as u32 + 3).take(600).collect();
    let full = tok.decode(&all);
    let mut detok = Detokenizer::new(&tok);
    let mut streamed: String = all.iter().map(|&id| detok.push(id)).collect();
    streamed += &detok.finish();
    assert_eq!(streamed, full);
    // The re-encoded model must load again.
    let again = ChatGlmTokenizer::from_pieces(tok.pieces().to_vec(), tok.settings().clone());
    assert!(again.is_ok());
});
