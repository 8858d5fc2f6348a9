//! torch.save pickle reader (data.pkl) and zip directory: arbitrary bytes
//! must give Ok or Err, never a panic, a hang or unbounded memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = chatglm_weights::pickle::read_state_dict(data);
    if let Ok(entries) = chatglm_weights::zip::read_entries(data, std::path::Path::new("fuzz")) {
        for e in entries {
            if let Some(bytes) = data.get(e.data) {
                let _ = chatglm_weights::pickle::read_state_dict(bytes);
            }
        }
    }
});
