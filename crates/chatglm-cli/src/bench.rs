//! `chatglm bench`: load time, prefill and decode speed, achieved bandwidth, peak memory.

use crate::args::{init_threads, physical_cores, BackendUser, Device};
use anyhow::{bail, Context, Result};
use chatglm_engine::{EngineError, Pipeline, PipelineOptions};
use chatglm_model::{
    Backend, Config, ForwardState, KvCacheOps, KvDType, LoadOptions, LogitsWanted, Model, SequenceInput, WeightFormat,
};
use clap::Args;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model folder, .gguf file or hub id (see `chatglm chat --help`).
    #[arg(short = 'm', long = "model", conflicts_with = "synthetic", required_unless_present = "synthetic")]
    pub model: Option<String>,
    /// Random weights of a known shape built in memory, no file needed: chatglm2-6b or dev (tiny).
    #[arg(long)]
    pub synthetic: Option<String>,
    /// Weight format: auto, f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1 (auto = as stored; f16 for --synthetic).
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// KV-cache element type: f32, f16 or q8_0.
    #[arg(long, default_value = "f16")]
    pub kv_dtype: String,
    /// Use weights in place from the mapped file where possible (see `chatglm chat --help`).
    #[arg(long)]
    pub mmap: bool,
    /// Worker threads (default: physical cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Where to run: auto (a CUDA GPU when one is usable, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", env = "CHATGLM_DEVICE")]
    pub device: Device,
    /// Prompt tokens for the prefill measurement (0 skips it).
    #[arg(long, default_value_t = 512)]
    pub prompt_len: usize,
    /// Decode steps measured after the prompt (EOS is ignored; always the full length).
    #[arg(long, default_value_t = 128)]
    pub gen_len: usize,
    /// Repeat the prefill+decode measurement and report best and median.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Also time decoding at these context positions (comma-separated token
    /// counts, e.g. 1024,8192,32768), with a synthetic KV cache of that length.
    #[arg(long, value_delimiter = ',')]
    pub context: Vec<usize>,
    /// Decode steps timed at each --context position.
    #[arg(long, default_value_t = 8)]
    pub context_steps: usize,
    /// Also time batched decoding: for each N (comma-separated, e.g.
    /// 16,64,128), N sequences with distinct --prompt-len prompts (128 when 0)
    /// decode --gen-len tokens together, one step for all; reports aggregate
    /// tokens/s.
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// CPU: after the measurements, ROUNDS rounds (default 8) of 4 decode
    /// steps each followed by read-only passes over the same weights (every
    /// byte a step streams, on the same threads, summed instead of
    /// multiplied; with and without software prefetch, the faster counted),
    /// reporting decode's bandwidth as a share of that read's, round by
    /// round: on a shared machine whose bandwidth drifts, the two are
    /// comparable only when measured in the same seconds.
    #[arg(long, value_name = "ROUNDS", num_args = 0..=1, default_missing_value = "8")]
    pub read_probe: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn synthetic_config(name: &str) -> Result<Config> {
    match Config::known(name) {
        Some(cfg) => Ok(cfg?),
        None => bail!("unknown --synthetic model `{name}` (known: chatglm2-6b, dev)"),
    }
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

struct Run {
    prefill: Option<Duration>,
    decode_per_token: Duration,
    /// Host time a decode step takes to launch (where steps are queued, the
    /// device idles between steps when this exceeds a step's device time).
    launch_per_token: Duration,
}

fn one_run<B: Backend>(
    model: &Model<B>,
    state: &mut ForwardState<B>,
    cache: &mut B::Cache,
    prompt: &[u32],
    gen_len: usize,
) -> Result<Run> {
    cache.clear();
    let mut next = 5u32;
    let prefill = if prompt.is_empty() {
        None
    } else {
        let t = Instant::now();
        let chunks: Vec<&[u32]> = prompt.chunks(model.backend.prefill_chunk_tokens()).collect();
        for (i, c) in chunks.iter().enumerate() {
            let want = if i + 1 == chunks.len() { LogitsWanted::Last } else { LogitsWanted::None };
            let l = model.forward_greedy(state, &mut [SequenceInput { tokens: c, cache, logits: want }])?;
            if let Some(&id) = l.first() {
                next = id;
            }
        }
        Some(t.elapsed())
    };
    let t = Instant::now();
    let (_, launch) = decode_queued(model, state, std::slice::from_mut(cache), &[next], gen_len)?;
    let steps = gen_len.max(1) as u32;
    Ok(Run { prefill, decode_per_token: t.elapsed() / steps, launch_per_token: launch / steps })
}

/// `steps` greedy decode steps of every sequence of `caches` (first tokens
/// `first`), each step queued before the host reads the one ahead, its
/// tokens taken on the device, as the engine runs them: where the backend
/// queues steps (`CHATGLM_CUDA_QUEUE_STEPS=0`: not), the host's turn-around
/// hides behind the device's work. On a GPU only the chosen ids are read
/// back. Returns the last step's ids and the host time spent launching.
fn decode_queued<B: Backend>(
    model: &Model<B>,
    state: &mut ForwardState<B>,
    caches: &mut [B::Cache],
    first: &[u32],
    steps: usize,
) -> Result<(Vec<u32>, Duration)> {
    let n = caches.len();
    let chained: Vec<Option<usize>> = (0..n).map(Some).collect();
    let unchained = vec![None; n];
    let tokens: Vec<[u32; 1]> = first.iter().map(|&t| [t]).collect();
    let mut last = first.to_vec();
    let mut launching = Duration::ZERO;
    for i in 0..steps {
        let mut batch: Vec<SequenceInput<'_, B::Cache>> = caches
            .iter_mut()
            .zip(&tokens)
            .map(|(cache, t)| SequenceInput { tokens: t, cache, logits: LogitsWanted::Last })
            .collect();
        let t = Instant::now();
        model.launch_greedy(state, &mut batch, if i == 0 { &unchained } else { &chained })?;
        launching += t.elapsed();
        if i > 0 {
            last.copy_from_slice(model.collect_greedy(state)?);
        }
    }
    if steps > 0 {
        last.copy_from_slice(model.collect_greedy(state)?);
    }
    Ok((last, launching))
}

/// Decode steps per `--read-probe` round.
const PROBE_STEPS: usize = 4;

/// `--read-probe`'s medians over its rounds.
struct ReadProbe {
    rounds: usize,
    /// Bytes one read pass reads (the weights a decode step streams).
    bytes: usize,
    decode_gb_s: f64,
    read_gb_s: f64,
    /// Median of the rounds' decode / read bandwidth ratios.
    share: f64,
}

/// Rounds of [`PROBE_STEPS`] greedy decode steps, each followed by one
/// read-only pass over the weights ([`Model::read_weights`]).
fn read_probe<B: Backend>(
    model: &Model<B>,
    state: &mut ForwardState<B>,
    cache: &mut B::Cache,
    rounds: usize,
) -> Result<ReadProbe> {
    let weight_bytes = model.weight_bytes() as f64;
    cache.clear();
    let mut next = 5u32;
    let (mut decode, mut read, mut share) = (Vec::new(), Vec::new(), Vec::new());
    let mut read_bytes = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let (last, _) = decode_queued(model, state, std::slice::from_mut(cache), &[next], PROBE_STEPS)?;
        let d = weight_bytes * PROBE_STEPS as f64 / t.elapsed().as_secs_f64() / 1e9;
        next = last[0];
        // As the 1 GiB probe of bench/chatglm_cpp does: a pass with the
        // kernels' software prefetch and one without, the faster counted.
        let mut r = 0f64;
        for prefetch in [true, false] {
            let t = Instant::now();
            let bytes = model.read_weights(prefetch).context("--read-probe: this backend has no read-only pass")?;
            r = r.max(bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
            read_bytes = bytes;
        }
        decode.push(d);
        read.push(r);
        share.push(d / r);
    }
    Ok(ReadProbe {
        rounds,
        bytes: read_bytes,
        decode_gb_s: median(decode),
        read_gb_s: median(read),
        share: median(share),
    })
}

/// Batched decoding of `n` sequences: prefill all (in steps of at most the
/// backend's chunk size), then `gen_len` greedy steps of all `n` at once.
/// Returns (aggregate tokens/s, ms per step).
fn batched_run<B: Backend>(
    model: &Model<B>,
    state: &mut ForwardState<B>,
    kv_dtype: KvDType,
    n: usize,
    prompt_len: usize,
    gen_len: usize,
) -> Result<(f64, f64, f64)> {
    let vocab = model.config.padded_vocab_size.min(60000) as u64;
    let prompts: Vec<Vec<u32>> = (0..n as u64)
        .map(|s| (0..prompt_len as u64).map(|i| (3 + (i * 7919 + s * 104729 + 13) % (vocab - 3)) as u32).collect())
        .collect();
    let mut caches: Vec<B::Cache> = (0..n).map(|_| model.new_cache(kv_dtype)).collect();
    let mut next = vec![5u32; n];
    let per_step = (model.backend.prefill_chunk_tokens() / prompt_len.max(1)).max(1);
    for group in (0..n).step_by(per_step) {
        let end = (group + per_step).min(n);
        let mut batch: Vec<SequenceInput<'_, B::Cache>> = caches[group..end]
            .iter_mut()
            .zip(&prompts[group..end])
            .map(|(cache, p)| SequenceInput { tokens: p, cache, logits: LogitsWanted::Last })
            .collect();
        let ids = model.forward_greedy(state, &mut batch)?;
        next[group..end].copy_from_slice(ids);
    }
    let t = Instant::now();
    let (_, launching) = decode_queued(model, state, &mut caches, &next, gen_len)?;
    let secs = t.elapsed().as_secs_f64();
    let steps = gen_len.max(1) as f64;
    Ok(((n * gen_len) as f64 / secs, secs * 1e3 / steps, launching.as_secs_f64() * 1e3 / steps))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(args: BenchArgs) -> Result<()> {
    init_threads(args.threads)?;
    let threads = args.threads.unwrap_or_else(physical_cores);
    let format: WeightFormat = args.dtype.parse()?;
    let kv_dtype: KvDType = args.kv_dtype.parse()?;
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if args.concurrency.contains(&0) {
        bail!("--concurrency values must be at least 1");
    }
    if args.read_probe == Some(0) {
        bail!("--read-probe needs at least 1 round");
    }
    args.device.dispatch(Bench { args, threads, format, kv_dtype })
}

/// The benchmark, once the device is chosen.
struct Bench {
    args: BenchArgs,
    threads: usize,
    format: WeightFormat,
    kv_dtype: KvDType,
}

impl BackendUser<()> for Bench {
    fn run<B: Backend + 'static>(self, make_backend: impl FnOnce(&Config) -> Result<B, EngineError>) -> Result<()> {
        let Self { args, threads, format, kv_dtype } = self;
        let t_load = Instant::now();
        let (model, source) = if let Some(name) = &args.synthetic {
            let cfg = synthetic_config(name)?;
            let backend = make_backend(&cfg)?;
            (Model::synthetic(backend, cfg, LoadOptions::new(format), 1), format!("synthetic {name}"))
        } else {
            let spec = args.model.clone().context("-m or --synthetic is required")?;
            let load = LoadOptions { mmap: args.mmap, ..LoadOptions::new(format) };
            let options = PipelineOptions { load, kv_dtype: Some(kv_dtype), ..Default::default() };
            let p = Pipeline::load_with(&spec, options, make_backend, &mut |_, _| {})?;
            (p.model, spec)
        };
        let load = t_load.elapsed();
        if let Some(plan) = model.memory_plan(kv_dtype) {
            eprintln!("{plan}");
        }
        measure(&args, threads, format, kv_dtype, &model, &source, load)
    }
}

fn measure<B: Backend>(
    args: &BenchArgs,
    threads: usize,
    format: WeightFormat,
    kv_dtype: KvDType,
    model: &Model<B>,
    source: &str,
    load: Duration,
) -> Result<()> {
    model.check_kv_dtype(kv_dtype)?;
    let cfg = model.config.clone();
    let vocab_for_prompt = cfg.padded_vocab_size.min(60000) as u64;
    let prompt: Vec<u32> =
        (0..args.prompt_len as u64).map(|i| (3 + (i * 7919 + 13) % (vocab_for_prompt - 3)) as u32).collect();
    if args.prompt_len + args.gen_len > cfg.seq_length {
        bail!(
            "--prompt-len + --gen-len = {} exceeds the model context {}",
            args.prompt_len + args.gen_len,
            cfg.seq_length
        );
    }
    if let Some(rounds) = args.read_probe {
        if rounds * PROBE_STEPS > cfg.seq_length {
            bail!(
                "--read-probe {rounds}: {} decode steps exceed the model context {}",
                rounds * PROBE_STEPS,
                cfg.seq_length
            );
        }
        // Also the first touch of every weight before anything is timed.
        if model.read_weights(true).is_none() {
            bail!(
                "--read-probe needs the CPU backend (`--device cpu`): {} has no read-only pass",
                model.backend.name()
            );
        }
    }
    let mut state = ForwardState::new(&model.backend);
    let mut cache = model.new_cache(kv_dtype);
    // Warm-up: first-touch of weights and buffers.
    one_run(model, &mut state, &mut cache, &prompt[..prompt.len().min(8)], 2)?;
    let mut runs = Vec::new();
    for _ in 0..args.repeat {
        runs.push(one_run(model, &mut state, &mut cache, &prompt, args.gen_len)?);
    }
    let weight_bytes = model.weight_bytes() as f64;
    let decode_ms: Vec<f64> = runs.iter().map(|r| r.decode_per_token.as_secs_f64() * 1e3).collect();
    let prefill_tps: Vec<f64> =
        runs.iter().filter_map(|r| r.prefill).map(|d| args.prompt_len as f64 / d.as_secs_f64()).collect();
    let best_ms = decode_ms.iter().copied().fold(f64::INFINITY, f64::min);
    let med_ms = median(decode_ms.clone());
    let launch_ms = median(runs.iter().map(|r| r.launch_per_token.as_secs_f64() * 1e3).collect());
    let mut ctx_results = Vec::new();
    for &pos in &args.context {
        if pos + args.context_steps > cfg.seq_length {
            bail!("--context {pos} + {} steps exceeds the model context {}", args.context_steps, cfg.seq_length);
        }
        cache.clear();
        cache.fill_synthetic(pos);
        let t = Instant::now();
        decode_queued(model, &mut state, std::slice::from_mut(&mut cache), &[5], args.context_steps)?;
        let ms = t.elapsed().as_secs_f64() * 1e3 / args.context_steps.max(1) as f64;
        ctx_results.push((pos, ms));
    }
    let mut batched = Vec::new();
    for &n in &args.concurrency {
        let prompt_len = if args.prompt_len == 0 { 128 } else { args.prompt_len };
        if prompt_len + args.gen_len > cfg.seq_length {
            bail!("--prompt-len + --gen-len exceeds the model context {}", cfg.seq_length);
        }
        let (tps, ms, host_ms) = batched_run(model, &mut state, kv_dtype, n, prompt_len, args.gen_len)?;
        batched.push((n, prompt_len, tps, ms, host_ms));
    }
    let probe = match args.read_probe {
        Some(rounds) => Some(read_probe(model, &mut state, &mut cache, rounds)?),
        None => None,
    };
    let rss = peak_rss_bytes();
    let gbps = |ms: f64| weight_bytes / (ms / 1e3) / 1e9;
    if args.json {
        let v = serde_json::json!({
            "source": source,
            "dtype": format.name(),
            "kv_dtype": args.kv_dtype,
            "threads": threads,
            "backend": model.backend.name(),
            "load_s": load.as_secs_f64(),
            "weight_bytes_per_token": weight_bytes,
            "prompt_len": args.prompt_len,
            "gen_len": args.gen_len,
            "prefill_tokens_per_s_best": prefill_tps.iter().copied().fold(0.0, f64::max),
            "prefill_tokens_per_s_median": if prefill_tps.is_empty() { 0.0 } else { median(prefill_tps.clone()) },
            "decode_ms_per_token_best": best_ms,
            "decode_ms_per_token_median": med_ms,
            "decode_tokens_per_s_best": 1e3 / best_ms,
            "decode_gb_per_s_best": gbps(best_ms),
            "decode_host_launch_ms_per_token": launch_ms,
            "decode_at_context": ctx_results.iter().map(|(p, ms)| serde_json::json!({"position": p, "ms_per_token": ms, "tokens_per_s": 1e3 / ms})).collect::<Vec<_>>(),
            "batched_decode": batched.iter().map(|(n, p, tps, ms, host_ms)| serde_json::json!({"sequences": n, "prompt_len": p, "tokens_per_s": tps, "ms_per_step": ms, "host_launch_ms_per_step": host_ms})).collect::<Vec<_>>(),
            "read_probe": probe.as_ref().map(|p| serde_json::json!({"rounds": p.rounds, "read_bytes": p.bytes, "steps_per_round": PROBE_STEPS, "decode_gb_per_s_median": p.decode_gb_s, "read_gb_per_s_median": p.read_gb_s, "decode_share_of_read_median": p.share})),
            "peak_rss_bytes": rss,
        });
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    println!("model        {source} ({} weights, KV {}), {}", format.name(), args.kv_dtype, model.backend.name());
    println!("load         {:.2} s", load.as_secs_f64());
    println!("weights/tok  {:.3} GB streamed per decoded token", weight_bytes / 1e9);
    if !prefill_tps.is_empty() {
        println!(
            "prefill      {} tokens: best {:.2} tok/s, median {:.2} tok/s",
            args.prompt_len,
            prefill_tps.iter().copied().fold(0.0, f64::max),
            median(prefill_tps.clone())
        );
    }
    println!(
        "decode       {} tokens: best {:.1} ms/tok ({:.2} tok/s, {:.1} GB/s), median {:.1} ms/tok",
        args.gen_len,
        best_ms,
        1e3 / best_ms,
        gbps(best_ms),
        med_ms
    );
    if args.gen_len > 0 {
        println!("decode host  {launch_ms:.2} ms/tok launching steps (median; queued steps keep the device busy while it is shorter than a step)");
    }
    for (pos, ms) in &ctx_results {
        println!("decode @ {pos:>6}  {ms:.1} ms/tok ({:.2} tok/s)", 1e3 / ms);
    }
    for (n, p, tps, ms, host_ms) in &batched {
        println!(
            "batch {n:>4}   prompts of {p}, {} new tokens each: {tps:.0} tok/s aggregate ({ms:.2} ms/step; the host \
             {host_ms:.2} ms/step launching them, queued one step ahead)",
            args.gen_len
        );
    }
    if let Some(p) = &probe {
        println!(
            "read probe   {} rounds of {PROBE_STEPS} decode steps, each then read-only passes over the same weights: decode {:.1} GB/s, read {:.1} GB/s (medians); decode at {:.0}% of the read (median of the rounds' ratios)",
            p.rounds,
            p.decode_gb_s,
            p.read_gb_s,
            100.0 * p.share
        );
    }
    println!("peak RSS     {:.2} GiB", rss as f64 / (1u64 << 30) as f64);
    Ok(())
}
