//! Encode throughput benchmark (not a timed test).
//!
//! `cargo run --release -p chatglm-tokenizer --example encode_bench -- TOKENIZER_MODEL TEXT_FILE [N] [--ids OUT]`
//!
//! Encodes the whole file as one string N times on one thread and prints
//! MB/s and tokens/s (best and mean over the N runs). `--ids OUT` writes the
//! ids one per line (`bench/tokenizer/run.sh` compares them with SentencePiece).

use std::path::PathBuf;
use std::time::Instant;

use chatglm_tokenizer::ChatGlmTokenizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let ids_out = match args.iter().position(|a| a == "--ids") {
        Some(i) if i + 1 < args.len() => {
            let path = PathBuf::from(args.remove(i + 1));
            args.remove(i);
            Some(path)
        }
        Some(_) => return Err("--ids needs a path".into()),
        None => None,
    };
    let usage = "usage: encode_bench TOKENIZER_MODEL TEXT_FILE [N] [--ids OUT]";
    let model = PathBuf::from(args.first().ok_or(usage)?);
    let text_path = PathBuf::from(args.get(1).ok_or(usage)?);
    let runs: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(10).max(1);

    let tokenizer = ChatGlmTokenizer::from_file(&model)?;
    let text = std::fs::read_to_string(&text_path)?;
    let megabytes = text.len() as f64 / 1e6;

    // Warm-up (page faults, allocator), also gives the token count.
    let ids = tokenizer.encode_no_special(&text);
    let n_tokens = ids.len();
    if let Some(path) = ids_out {
        let lines: Vec<String> = ids.iter().map(u32::to_string).collect();
        std::fs::write(path, lines.join("\n") + "\n")?;
    }
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
