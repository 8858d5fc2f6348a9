//! A model and its tokenizer, loaded together from one model source.

use crate::EngineError;
use chatglm_model::{Backend, CpuBackend, KvDType, LoadOptions, Model, WeightFormat};
use chatglm_tokenizer::ChatGlmTokenizer;
use chatglm_weights::Checkpoint;
use std::path::Path;

/// How to load a [`Pipeline`].
#[derive(Debug, Clone, Copy)]
pub struct PipelineOptions {
    pub load: LoadOptions,
    /// `None`: f32 when the weights are f32 (exact), else f16.
    pub kv_dtype: Option<KvDType>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self { load: LoadOptions::new(WeightFormat::Auto), kv_dtype: None }
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
    /// Loads from a local directory or a Hugging Face hub id
    /// (`THUDM/chatglm2-6b[@revision]`, downloaded on first use).
    pub fn load(
        spec: &str,
        options: PipelineOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, EngineError> {
        let dir = chatglm_weights::hub::resolve(spec)?;
        Self::load_dir(&dir, spec, options, progress)
    }

    fn load_dir(
        dir: &Path,
        spec: &str,
        options: PipelineOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, EngineError> {
        let ckpt = Checkpoint::open(dir)?;
        ckpt.validate_shapes()?;
        let tok_path =
            ckpt.tokenizer_path.clone().ok_or_else(|| EngineError::MissingTokenizer(dir.display().to_string()))?;
        let tokenizer = ChatGlmTokenizer::from_file(&tok_path)?;
        let backend = CpuBackend::for_config(&ckpt.config);
        let model = Model::load(backend, &ckpt, options.load, progress)?;
        let all_f32 = model.backend.matrix_format(&model.weights.output) == "f32"
            && model.weights.layers.iter().all(|l| model.backend.matrix_format(&l.qkv) == "f32");
        let kv_dtype = options.kv_dtype.unwrap_or(if all_f32 { KvDType::F32 } else { KvDType::F16 });
        Ok(Self { model, tokenizer, kv_dtype, source: spec.to_string() })
    }
}
