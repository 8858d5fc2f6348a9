//! A whole torch.save `.bin` archive, through the loader's tensor records
//! (storage sizes, offsets, shapes, strides, views copied or mapped): Ok or
//! Err, never a panic, a hang or an allocation beyond the file's size.
//! Seed it with a real checkpoint: `cp ../testdata/dev/model/pytorch-f32/pytorch_model.bin corpus/pytorch_bin/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    // The loader maps a file; a temporary one per input.
    let Ok((path, mut file)) = tempfile_in_tmp() else { return };
    if file.write_all(data).is_err() {
        return;
    }
    drop(file);
    if let Ok(tensors) = chatglm_weights::load_pytorch_bin(&path) {
        for t in tensors {
            // Touch every byte the loader says the tensor holds.
            let n: usize = t.shape.iter().product::<usize>() * t.dtype.bytes_per_element();
            assert_eq!(t.data.len(), n, "tensor {} data length", t.name);
            std::hint::black_box(t.data.iter().fold(0u8, |a, &b| a ^ b));
        }
    }
    let _ = std::fs::remove_file(&path);
});

fn tempfile_in_tmp() -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    let path = std::env::temp_dir().join(format!("chatglm-fuzz-{}.bin", std::process::id()));
    let file = std::fs::File::create(&path)?;
    Ok((path, file))
}
