//! GGUF header parser: arbitrary bytes must give Ok or Err, never a panic,
//! and never an allocation sized by an unchecked count.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = chatglm_weights::gguf::parse_gguf_bytes(data) {
        // Every tensor window the parser accepted must lie inside the input.
        for t in &header.tensors {
            assert!(t.file_range.end <= data.len());
        }
    }
});
