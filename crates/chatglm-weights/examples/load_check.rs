//! Opens a checkpoint, validates its shapes, touches every byte of every
//! tensor, and prints the load time and peak RSS.
//!
//! ```text
//! cargo run --release -p chatglm-weights --example load_check -- /work/synth6b
//! ```

use std::path::PathBuf;
use std::time::Instant;

use chatglm_weights::Checkpoint;

/// A `/proc/self/status` field in KiB (Linux only).
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Peak resident set size in KiB (`VmHWM`); it counts touched pages of the
/// mapped files, which are page cache, not private memory.
fn peak_rss_kib() -> Option<u64> {
    status_kib("VmHWM:")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir: PathBuf = std::env::args_os().nth(1).ok_or("usage: load_check <checkpoint dir>")?.into();

    let t0 = Instant::now();
    let ckpt = Checkpoint::open(&dir)?;
    ckpt.validate_shapes()?;
    let open_s = t0.elapsed().as_secs_f64();
    let rss_after_open = peak_rss_kib().unwrap_or(0);

    // Touch every byte (sum them) so every page is read from disk or cache.
    let t1 = Instant::now();
    let mut checksum = 0u64;
    for t in ckpt.tensors() {
        checksum = t.data.iter().fold(checksum, |acc, &b| acc.wrapping_add(u64::from(b)));
    }
    let touch_s = t1.elapsed().as_secs_f64();
    let gb = ckpt.total_bytes() as f64 / 1e9;

    println!("checkpoint      {}", dir.display());
    println!("format          {:?}, {} files, {} tensors", ckpt.format, ckpt.weight_files.len(), ckpt.len());
    println!("parameters      {} (config)", ckpt.config.parameter_count());
    println!("tensor bytes    {:.3} GB", gb);
    println!("open+validate   {:.3} s (peak RSS so far {} MiB)", open_s, rss_after_open / 1024);
    println!("touch all bytes {:.2} s ({:.2} GB/s), byte sum {checksum}", touch_s, gb / touch_s);
    println!("peak RSS        {} MiB", peak_rss_kib().unwrap_or(0) / 1024);
    println!(
        "RSS now         anon {} MiB, file-backed {} MiB",
        status_kib("RssAnon:").unwrap_or(0) / 1024,
        status_kib("RssFile:").unwrap_or(0) / 1024
    );
    Ok(())
}
