//! Encode throughput benchmark (not a timed test).
//!
//! `cargo run --release -p chatglm-tokenizer --example encode_bench -- TOKENIZER_MODEL TEXT_FILE [N]`
//!
//! Encodes the whole file as one string N times on one thread and prints
//! MB/s and tokens/s (best and mean over the N runs).

use std::path::PathBuf;
use std::time::Instant;

use chatglm_tokenizer::ChatGlmTokenizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: encode_bench TOKENIZER_MODEL TEXT_FILE [N]";
    let model = PathBuf::from(args.next().ok_or(usage)?);
    let text_path = PathBuf::from(args.next().ok_or(usage)?);
    let runs: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10).max(1);

    let tokenizer = ChatGlmTokenizer::from_file(&model)?;
    let text = std::fs::read_to_string(&text_path)?;
    let megabytes = text.len() as f64 / 1e6;

    // Warm-up (page faults, allocator), also gives the token count.
    let n_tokens = tokenizer.encode_no_special(&text).len();
    let mut seconds = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let ids = tokenizer.encode_no_special(&text);
        seconds.push(start.elapsed().as_secs_f64());
        std::hint::black_box(ids);
    }
    let best = seconds.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = seconds.iter().sum::<f64>() / runs as f64;
    println!(
        "rust chatglm-tokenizer: {:.3} MB, {n_tokens} tokens, {runs} runs: best {:.2} MB/s {:.0} tokens/s, mean {:.2} MB/s {:.0} tokens/s",
        megabytes,
        megabytes / best,
        n_tokens as f64 / best,
        megabytes / mean,
        n_tokens as f64 / mean
    );
    Ok(())
}
