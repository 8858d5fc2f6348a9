//! `--device` on any machine: without a usable GPU, `cuda` is one clear error
//! (never a panic) and `auto` runs on the CPU; a bad value is refused.

use std::process::Command;

fn bench(device: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chatglm"))
        .args(["bench", "--synthetic", "dev", "--prompt-len", "4", "--gen-len", "2", "--device", device])
        .output()
        .expect("the chatglm binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether this machine has a GPU the binary can use (then `cuda` succeeds).
fn gpu_present() -> bool {
    std::path::Path::new("/dev/nvidiactl").exists()
}

#[test]
fn cuda_without_a_gpu_is_one_clear_error() {
    if gpu_present() {
        eprintln!("skipped: this machine has an NVIDIA device (the GPU suite covers --device cuda)");
        return;
    }
    let (ok, _, err) = bench("cuda");
    assert!(!ok, "--device cuda succeeded without a GPU");
    assert!(err.contains("CUDA") || err.contains("cuda"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.lines().filter(|l| !l.trim().is_empty()).count() <= 3, "not one clear message: {err}");
}

#[test]
fn auto_falls_back_to_the_cpu() {
    if gpu_present() {
        eprintln!("skipped: this machine has an NVIDIA device");
        return;
    }
    let (ok, out, err) = bench("auto");
    assert!(ok, "{err}");
    assert!(out.contains("cpu ("), "{out}");
}

#[test]
fn unknown_devices_are_refused() {
    let (ok, _, err) = bench("tpu");
    assert!(!ok);
    assert!(err.contains("unknown device"), "{err}");
}
