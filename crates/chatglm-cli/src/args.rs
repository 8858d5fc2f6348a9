//! Flags shared by the subcommands that load a model.

use anyhow::{Context, Result};
use chatglm_engine::{EngineError, GenerationConfig, Pipeline, PipelineOptions, SamplingParams};
use chatglm_model::{Backend, Config, CpuBackend, KvDType, LoadOptions, WeightFormat};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

/// The model every command uses when `-m` is not given.
pub const DEFAULT_MODEL: &str = "THUDM/chatglm2-6b";

/// Where to run (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// A CUDA GPU when one is usable, else the CPU.
    Auto,
    Cpu,
    /// The CUDA GPU of this ordinal (`cuda` = `cuda:0`).
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match lower.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!("unknown device `{s}` (expected auto, cpu, cuda or cuda:N with N a GPU number)")),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Code to run once the device is chosen, generic over its backend (a
/// generic closure, which Rust does not have). `make_backend` builds the
/// backend for a model config; [`Device::dispatch`] calls `run` with the
/// backend the device names.
pub trait BackendUser<R> {
    fn run<B: Backend + 'static>(self, make_backend: impl FnOnce(&Config) -> Result<B, EngineError>) -> Result<R>;
}

/// Code to run on a loaded pipeline, whichever backend holds it (see
/// [`ModelArgs::with_pipeline`]).
pub trait PipelineUser<R> {
    fn run<B: Backend + 'static>(self, pipeline: Pipeline<B>) -> Result<R>;
}

impl Device {
    /// The one place a device becomes a backend: every command that runs a
    /// model comes through here.
    pub fn dispatch<R>(self, user: impl BackendUser<R>) -> Result<R> {
        match self {
            Self::Cpu => user.run(|cfg| Ok(CpuBackend::for_config(cfg))),
            Self::Auto if cuda_usable() => run_on_cuda(0, user),
            Self::Auto => user.run(|cfg| Ok(CpuBackend::for_config(cfg))),
            Self::Cuda(ordinal) => run_on_cuda(ordinal, user),
        }
    }
}

// ---------------------------------------------------------------------------
// CUDA plug-in point. With `#[cfg(feature = "cuda")]`, `run_on_cuda` calls
// `user.run(|cfg| chatglm_model::CudaBackend::new(ordinal, cfg)...)` (mapping
// its error to `EngineError::Device`), and `cuda_usable` probes for a GPU, so
// that every command gets a `Pipeline<chatglm_model::CudaBackend>`.
// ---------------------------------------------------------------------------

/// Whether `--device auto` should pick CUDA GPU 0 (libraries present and a
/// device found); says why not in the log.
#[cfg(feature = "cuda")]
fn cuda_usable() -> bool {
    match chatglm_model::cuda::usable_device_count() {
        Ok(n) if n > 0 => true,
        Ok(_) => false,
        Err(e) => {
            tracing::info!("no usable CUDA GPU ({e}); running on the CPU");
            false
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_usable() -> bool {
    false
}

/// Runs `user` on CUDA GPU `ordinal`.
#[cfg(feature = "cuda")]
fn run_on_cuda<R>(ordinal: usize, user: impl BackendUser<R>) -> Result<R> {
    user.run(move |cfg| {
        let backend = chatglm_model::CudaBackend::new(ordinal, cfg).map_err(|e| EngineError::Device(e.to_string()))?;
        eprintln!("device: {}", backend.device());
        Ok(backend)
    })
}

#[cfg(not(feature = "cuda"))]
fn run_on_cuda<R>(ordinal: usize, user: impl BackendUser<R>) -> Result<R> {
    let _ = (ordinal, user);
    anyhow::bail!("this build has no CUDA support (rebuild with `--features cuda`)")
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model: a local folder (config.json, tokenizer.model, safetensors or
    /// PyTorch .bin), a .gguf file, or a Hugging Face id such as
    /// THUDM/chatglm2-6b[@revision] (downloaded to the HF cache on first use;
    /// honours HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE). For load tests:
    /// synthetic:chatglm2-6b:PATH/tokenizer.model (random weights of the real
    /// shapes, built on the device, with that tokenizer).
    #[arg(short = 'm', long = "model", default_value = DEFAULT_MODEL, env = "CHATGLM_MODEL")]
    pub model: String,
    /// Weight format: auto (as stored), f32, f16, bf16, q8_0, q4_0, q4_1,
    /// q5_0, q5_1. Float checkpoints are quantized while loading.
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
    /// Where to run: auto (a CUDA GPU when one is usable, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", env = "CHATGLM_DEVICE")]
    pub device: Device,
    /// A LoRA adapter folder as PEFT saves it (adapter_config.json +
    /// adapter_model.safetensors or .bin), merged into the weights at load,
    /// before any quantization: DIR or DIR:SCALE (scale 1 = as trained).
    /// Repeatable; adapters merge in order.
    #[arg(long = "lora", value_name = "DIR[:SCALE]")]
    pub lora: Vec<String>,
    /// A P-Tuning v2 checkpoint folder as the official fine-tuning scripts
    /// save it (config.json with pre_seq_len + the prefix encoder in
    /// pytorch_model.bin or model.safetensors), over the base model given
    /// with -m: every conversation starts with its prefix (CPU and GPU).
    #[arg(long = "ptuning", value_name = "DIR")]
    pub ptuning: Option<std::path::PathBuf>,
}

/// `DIR` or `DIR:SCALE` of `--lora` (a trailing `:number` is the scale).
pub fn parse_lora(spec: &str) -> Result<(std::path::PathBuf, f32)> {
    if let Some((dir, scale)) = spec.rsplit_once(':') {
        if let Ok(s) = scale.parse::<f32>() {
            if !s.is_finite() {
                anyhow::bail!("--lora {spec}: the scale must be a finite number");
            }
            return Ok((dir.into(), s));
        }
    }
    Ok((spec.into(), 1.0))
}

impl ModelArgs {
    pub fn load_options(&self) -> Result<PipelineOptions> {
        let format: WeightFormat = self.dtype.parse()?;
        let kv_dtype = self.kv_dtype.as_deref().map(str::parse::<KvDType>).transpose()?;
        let lora = self.lora.iter().map(|spec| parse_lora(spec)).collect::<Result<Vec<_>>>()?;
        Ok(PipelineOptions {
            load: LoadOptions { mmap: self.mmap, ..LoadOptions::new(format) },
            kv_dtype,
            lora,
            ptuning: self.ptuning.clone(),
        })
    }

    /// Sizes the thread pool, loads on `--device` with a progress bar on
    /// stderr, then runs `user` on the pipeline.
    pub fn with_pipeline<R>(&self, user: impl PipelineUser<R>) -> Result<R> {
        init_threads(self.threads)?;
        let options = self.load_options()?;
        self.device.dispatch(LoadThen { args: self, options, user })
    }
}

/// Loads `args`'s model onto the dispatched backend, then hands it to `user`.
struct LoadThen<'a, U> {
    args: &'a ModelArgs,
    options: PipelineOptions,
    user: U,
}

impl<R, U: PipelineUser<R>> BackendUser<R> for LoadThen<'_, U> {
    fn run<B: Backend + 'static>(self, make_backend: impl FnOnce(&Config) -> Result<B, EngineError>) -> Result<R> {
        let spec = &self.args.model;
        // Made at the first tensor, once the backend is up: opening a GPU
        // may draw a bar of its own (a first start's kernel compile).
        let mut bar: Option<ProgressBar> = None;
        let loaded = Pipeline::load_with(spec, self.options, make_backend, &mut |done, total| {
            let bar = bar.get_or_insert_with(|| {
                let bar = ProgressBar::new(total as u64).with_style(
                    ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} tensors ({elapsed})")
                        .expect("invariant: static template")
                        .progress_chars("=> "),
                );
                bar.set_message(format!("loading {spec}"));
                bar
            });
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        });
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let pipeline = loaded.with_context(|| format!("cannot load model `{spec}`"))?;
        if let Some(plan) = pipeline.model.memory_plan(pipeline.kv_dtype) {
            eprintln!("{plan}");
        }
        self.user.run(pipeline)
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
            queue_steps: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!("auto".parse::<Device>(), Ok(Device::Auto));
        assert_eq!("CPU".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse::<Device>(), Ok(Device::Cuda(3)));
        for bad in ["", "cuda:", "cuda:x", "cuda:-1", "tpu", "cpu:0"] {
            let e = bad.parse::<Device>().unwrap_err();
            assert!(e.contains("expected auto, cpu, cuda or cuda:N"), "{bad}: {e}");
        }
        for d in [Device::Auto, Device::Cpu, Device::Cuda(2)] {
            assert_eq!(d.to_string().parse::<Device>(), Ok(d));
        }
    }

    #[test]
    #[cfg(not(feature = "cuda"))]
    fn cuda_is_refused_without_cuda_support() {
        struct Never;
        impl BackendUser<()> for Never {
            fn run<B: Backend + 'static>(self, _: impl FnOnce(&Config) -> Result<B, EngineError>) -> Result<()> {
                panic!("no backend expected")
            }
        }
        let e = Device::Cuda(1).dispatch(Never).unwrap_err();
        assert!(e.to_string().contains("this build has no CUDA support"), "{e}");
    }
}
