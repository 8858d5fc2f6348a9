//! Flags shared by the subcommands that load a model.

use anyhow::{Context, Result};
use chatglm_engine::{GenerationConfig, Pipeline, PipelineOptions, SamplingParams};
use chatglm_model::{CpuBackend, KvDType, LoadOptions, WeightFormat};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

/// The model every command uses when `-m` is not given.
pub const DEFAULT_MODEL: &str = "THUDM/chatglm2-6b";

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model: a local folder (config.json, tokenizer.model, safetensors or
    /// PyTorch .bin), a .gguf file, or a Hugging Face id such as
    /// THUDM/chatglm2-6b[@revision] (downloaded to the HF cache on first use;
    /// honours HF_HOME, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE).
    #[arg(short = 'm', long = "model", default_value = DEFAULT_MODEL, env = "CHATGLM_MODEL")]
    pub model: String,
    /// Weight format: auto (as stored), f32, f16, bf16, q8_0, q4_0. Float
    /// checkpoints are quantized while loading.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// KV-cache element type: f32, f16 or q8_0 (default: f32 for f32 weights, else f16;
    /// q8_0 halves f16's memory and needs a head size that is a multiple of 32).
    #[arg(long)]
    pub kv_dtype: Option<String>,
    /// Worker threads (default: the number of physical cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Use weights in place from the memory-mapped file where their layout
    /// allows (f16/f32/bf16 as stored): starts instantly and shares the OS
    /// page cache, but decodes slower (4 KiB pages; measured 280 vs 230
    /// ms/token for 6B f16 on 2 cores). Default: copy into memory.
    #[arg(long)]
    pub mmap: bool,
}

impl ModelArgs {
    pub fn load_options(&self) -> Result<PipelineOptions> {
        let format: WeightFormat = self.dtype.parse()?;
        let kv_dtype = self.kv_dtype.as_deref().map(str::parse::<KvDType>).transpose()?;
        Ok(PipelineOptions { load: LoadOptions { mmap: self.mmap, ..LoadOptions::new(format) }, kv_dtype })
    }

    /// Sizes the thread pool, then loads with a progress bar on stderr.
    pub fn load(&self) -> Result<Pipeline<CpuBackend>> {
        init_threads(self.threads)?;
        let options = self.load_options()?;
        let bar = ProgressBar::new(1).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} tensors ({elapsed})")
                .expect("invariant: static template")
                .progress_chars("=> "),
        );
        bar.set_message(format!("loading {}", self.model));
        let pipeline = Pipeline::load(&self.model, options, &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })
        .with_context(|| format!("cannot load model `{}`", self.model))?;
        bar.finish_and_clear();
        Ok(pipeline)
    }
}

/// Sizes rayon's global pool once (physical cores by default).
pub fn init_threads(threads: Option<usize>) -> Result<()> {
    let n = threads.unwrap_or_else(physical_cores);
    if n == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    // A second call (tests, re-entry) keeps the first pool.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    Ok(())
}

/// Physical cores from /proc/cpuinfo (distinct (physical id, core id)),
/// falling back to the logical CPU count.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return logical;
    };
    let mut cores = std::collections::HashSet::new();
    let (mut phys, mut core) = (None, None);
    for line in info.lines() {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim() {
                "physical id" => phys = Some(v.trim().to_string()),
                "core id" => core = Some(v.trim().to_string()),
                _ => {}
            }
        }
        if line.trim().is_empty() {
            if let (Some(p), Some(c)) = (phys.take(), core.take()) {
                cores.insert((p, c));
            }
        }
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Nucleus sampling mass in (0, 1].
    #[arg(long, default_value_t = 0.8)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Repetition penalty (1 = off; transformers' definition).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Random seed (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Maximum total length, prompt included (the official max_length).
    #[arg(long, default_value_t = 8192)]
    pub max_length: usize,
    /// Maximum number of new tokens.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Stop when this text is generated (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    pub fn generation_config(&self, eos: u32) -> Result<GenerationConfig> {
        let sampling = SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            repetition_penalty: self.repetition_penalty,
            do_sample: self.temperature > 0.0,
            seed: self.seed,
        };
        sampling.validate().map_err(anyhow::Error::msg)?;
        if self.max_length == 0 {
            anyhow::bail!("--max-length must be at least 1");
        }
        Ok(GenerationConfig {
            sampling,
            max_length: self.max_length,
            max_new_tokens: self.max_new_tokens,
            stop: self.stop.clone(),
            eos_ids: vec![eos],
        })
    }
}
