//! Times `ChatSession::chat` on a synthetic model (random weights of a known
//! shape, a real tokenizer), as `bench/python/chat_overhead.py` times the same
//! call through the Python package:
//! `cargo run --release -p chatglm-engine --example chat_timing -- TOKENIZER [DTYPE] [RUNS] [NEW_TOKENS] [MODEL]`.

use chatglm_engine::{ChatSession, GenerationConfig, Pipeline, PipelineOptions, SamplingParams};
use chatglm_model::{Config, CpuBackend, LoadOptions, Model, WeightFormat};
use chatglm_tokenizer::ChatGlmTokenizer;
use std::time::Instant;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tokenizer = args.first().ok_or("usage: chat_timing TOKENIZER [DTYPE] [RUNS] [NEW_TOKENS] [MODEL]")?;
    let format: WeightFormat = args.get(1).map_or("q4_0", String::as_str).parse()?;
    let runs: usize = args.get(2).map_or(Ok(5), |s| s.parse())?;
    let new_tokens: usize = args.get(3).map_or(Ok(16), |s| s.parse())?;
    let shape = args.get(4).map_or("chatglm2-6b", String::as_str);
    let cfg = Config::known(shape).ok_or("unknown model shape")??;
    let options = PipelineOptions { load: LoadOptions::new(format), kv_dtype: None, ..Default::default() };
    let model = Model::synthetic(CpuBackend::for_config(&cfg), cfg, options.load, 1);
    let pipeline =
        Pipeline::assemble(model, ChatGlmTokenizer::from_file(std::path::Path::new(tokenizer))?, options, "synthetic")?;
    let config = GenerationConfig {
        sampling: SamplingParams { do_sample: false, ..SamplingParams::default() },
        max_new_tokens: Some(new_tokens),
        ..GenerationConfig::default()
    };
    ChatSession::new(&pipeline).chat("你好", &config)?;
    let mut ms = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        ChatSession::new(&pipeline).chat("你好", &config)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "rust chat(): median {:.2} ms, best {:.2} ms over {runs} runs ({new_tokens} new tokens)",
        ms[runs / 2],
        ms[0]
    );
    Ok(())
}
