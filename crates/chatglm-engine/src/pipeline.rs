//! A model and its tokenizer, loaded together from one model source: a
//! checkpoint folder, a Hugging Face hub id, a single `.gguf` file (config,
//! tokenizer and tensors all read from the file), or
//! `synthetic:NAME:TOKENIZER` (random weights of a known model's shapes built
//! on the device, with a real tokenizer: load tests and benchmarks with no
//! download).

use crate::{gguf_vocab, EngineError};
use chatglm_model::{Backend, CpuBackend, KvDType, LoadOptions, Model, WeightFormat};
use chatglm_tokenizer::ChatGlmTokenizer;
use chatglm_weights::gguf::GgufModel;
use chatglm_weights::lora::LoraAdapter;
use chatglm_weights::Checkpoint;
use std::path::{Path, PathBuf};

/// Model specs starting with this name a synthetic model (see the module notes).
pub const SYNTHETIC_PREFIX: &str = "synthetic:";

/// How to load a [`Pipeline`].
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub load: LoadOptions,
    /// `None`: f32 when the weights are f32 (exact), else f16.
    pub kv_dtype: Option<KvDType>,
    /// LoRA adapter folders (PEFT layout) and their scales, merged into the
    /// weights at load in this order.
    pub lora: Vec<(PathBuf, f32)>,
    /// A P-Tuning v2 checkpoint folder (the prefix encoder as the official
    /// scripts save it) whose prefix every conversation starts with.
    pub ptuning: Option<PathBuf>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self { load: LoadOptions::new(WeightFormat::Auto), kv_dtype: None, lora: Vec::new(), ptuning: None }
    }
}

impl PipelineOptions {
    fn adapters(&self) -> Result<Vec<LoraAdapter>, EngineError> {
        self.lora.iter().map(|(dir, scale)| Ok(LoraAdapter::open(dir, *scale)?)).collect()
    }

    /// Puts the `--ptuning` checkpoint's prefix on `model` (none given: as loaded).
    fn attach_prefix<B: Backend>(&self, model: &mut Model<B>) -> Result<(), EngineError> {
        if let Some(dir) = &self.ptuning {
            let prefix = chatglm_weights::ptuning::open(dir, &model.config)?;
            model.set_prefix(Some(prefix))?;
        }
        Ok(())
    }
}

/// The model, its tokenizer and the KV-cache type sessions use.
pub struct Pipeline<B: Backend> {
    pub model: Model<B>,
    pub tokenizer: ChatGlmTokenizer,
    pub kv_dtype: KvDType,
    /// Where the model came from (shown by front ends).
    pub source: String,
}

impl Pipeline<CpuBackend> {
    /// Loads onto the CPU from a `.gguf` file, a local directory or a
    /// Hugging Face hub id (`THUDM/chatglm2-6b[@revision]`, downloaded on
    /// first use). With [`WeightFormat::Auto`] a GGUF file's tensors are used
    /// as stored (mapped, no copy); another format converts them while
    /// loading.
    pub fn load(
        spec: &str,
        options: PipelineOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, EngineError> {
        Self::load_with(spec, options, |config| Ok(CpuBackend::for_config(config)), progress)
    }
}

impl<B: Backend> Pipeline<B> {
    /// Loads as [`Pipeline::load`] does, onto the backend `make_backend`
    /// builds for the model's config (called once the config is read, before
    /// any weight is loaded).
    pub fn load_with(
        spec: &str,
        options: PipelineOptions,
        make_backend: impl FnOnce(&chatglm_model::Config) -> Result<B, EngineError>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, EngineError> {
        if let Some(rest) = spec.strip_prefix(SYNTHETIC_PREFIX) {
            return Self::load_synthetic(rest, spec, options, make_backend);
        }
        let path = Path::new(spec);
        if path.is_file() {
            return Self::load_gguf(path, spec, options, make_backend, progress);
        }
        let dir = chatglm_weights::hub::resolve(spec)?;
        Self::load_dir(&dir, spec, options, make_backend, progress)
    }

    fn load_gguf(
        path: &Path,
        spec: &str,
        options: PipelineOptions,
        make_backend: impl FnOnce(&chatglm_model::Config) -> Result<B, EngineError>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, EngineError> {
        let file = GgufModel::open(path)?;
        let tokenizer = gguf_vocab::tokenizer_from_gguf(&file.file)?;
        let adapters = options.adapters()?;
        let backend = make_backend(&file.config)?;
        let mut model = Model::load_with_adapters(backend, &file, options.load, &adapters, progress)?;
        options.attach_prefix(&mut model)?;
        Self::assemble(model, tokenizer, options, spec)
    }

    fn load_synthetic(
        rest: &str,
        spec: &str,
        options: PipelineOptions,
        make_backend: impl FnOnce(&chatglm_model::Config) -> Result<B, EngineError>,
    ) -> Result<Self, EngineError> {
        let (name, tok_path) = rest.split_once(':').ok_or_else(|| {
            EngineError::InvalidParameter(format!(
                "`{spec}`: a synthetic model is `{SYNTHETIC_PREFIX}NAME:PATH/tokenizer.model` (NAME: chatglm2-6b or dev)"
            ))
        })?;
        let config = chatglm_model::Config::known(name)
            .ok_or_else(|| {
                EngineError::InvalidParameter(format!("unknown synthetic model `{name}` (known: chatglm2-6b, dev)"))
            })?
            .map_err(EngineError::Weights)?;
        let tokenizer = ChatGlmTokenizer::from_file(Path::new(tok_path))?;
        if tokenizer.vocab_size() > config.padded_vocab_size {
            return Err(EngineError::InvalidParameter(format!(
                "the tokenizer has {} tokens but the synthetic {name} model only {}",
                tokenizer.vocab_size(),
                config.padded_vocab_size
            )));
        }
        if !options.lora.is_empty() || options.ptuning.is_some() {
            return Err(EngineError::InvalidParameter(
                "LoRA adapters and P-Tuning prefixes apply to checkpoints, not to synthetic models".into(),
            ));
        }
        let mut load = options.load;
        if load.format == WeightFormat::Auto {
            load.format = WeightFormat::F16;
        }
        let backend = make_backend(&config)?;
        let model = Model::synthetic(backend, config, load, 1);
        Self::assemble(model, tokenizer, options, spec)
    }

    fn load_dir(
        dir: &Path,
        spec: &str,
        options: PipelineOptions,
        make_backend: impl FnOnce(&chatglm_model::Config) -> Result<B, EngineError>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, EngineError> {
        let ckpt = Checkpoint::open(dir)?;
        ckpt.validate_shapes()?;
        let tok_path =
            ckpt.tokenizer_path.clone().ok_or_else(|| EngineError::MissingTokenizer(dir.display().to_string()))?;
        let tokenizer = ChatGlmTokenizer::from_file(&tok_path)?;
        let adapters = options.adapters()?;
        let backend = make_backend(&ckpt.config)?;
        let mut model = Model::load_with_adapters(backend, &ckpt, options.load, &adapters, progress)?;
        options.attach_prefix(&mut model)?;
        Self::assemble(model, tokenizer, options, spec)
    }

    /// A pipeline from a loaded model: picks the KV-cache type (`options`, or
    /// f32 for all-f32 weights, else f16) and checks the model supports it.
    pub fn assemble(
        model: Model<B>,
        tokenizer: ChatGlmTokenizer,
        options: PipelineOptions,
        spec: &str,
    ) -> Result<Self, EngineError> {
        let all_f32 = model.backend.matrix_format(&model.weights.output) == "f32"
            && model.weights.layers.iter().all(|l| model.backend.matrix_format(&l.qkv) == "f32");
        let kv_dtype = options.kv_dtype.unwrap_or(if all_f32 { KvDType::F32 } else { KvDType::F16 });
        model.check_kv_dtype(kv_dtype)?;
        Ok(Self { model, tokenizer, kv_dtype, source: spec.to_string() })
    }
}
