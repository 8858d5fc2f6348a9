//! safetensors header parser: arbitrary bytes must give Ok or Err, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = chatglm_weights::parse_safetensors_bytes(data);
});
