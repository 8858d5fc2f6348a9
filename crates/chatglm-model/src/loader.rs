//! Building [`Weights`] from checkpoint tensors, one tensor at a time (so
//! quantize-on-load peaks near the quantized size, not the float size).

use crate::{Backend, LayerWeights, ModelError, Weights};
use chatglm_weights::{names, Checkpoint, DType, ModelConfig, Tensor};

/// The storage format of the weight matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// Keep what the checkpoint stores (memory-mapped, no copy).
    Auto,
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
}

impl WeightFormat {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
        }
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self, Self::Q8_0 | Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1)
    }

    /// The format a tensor stored as `dtype` gets under this choice.
    pub fn resolve(&self, dtype: DType) -> WeightFormat {
        match self {
            Self::Auto => match dtype {
                DType::F32 => Self::F32,
                DType::F16 => Self::F16,
                DType::BF16 => Self::BF16,
                DType::Q8_0 => Self::Q8_0,
                DType::Q4_0 => Self::Q4_0,
                DType::Q4_1 => Self::Q4_1,
                DType::Q5_0 => Self::Q5_0,
                DType::Q5_1 => Self::Q5_1,
                #[allow(unreachable_patterns)]
                _ => Self::F32,
            },
            other => *other,
        }
    }
}

/// Whether a tensor stored as `dtype` already is in `format` (no conversion).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn stored_as(format: WeightFormat, dtype: DType) -> bool {
    matches!(
        (format, dtype),
        (WeightFormat::F32, DType::F32)
            | (WeightFormat::F16, DType::F16)
            | (WeightFormat::BF16, DType::BF16)
            | (WeightFormat::Q8_0, DType::Q8_0)
            | (WeightFormat::Q4_0, DType::Q4_0)
            | (WeightFormat::Q4_1, DType::Q4_1)
            | (WeightFormat::Q5_0, DType::Q5_0)
            | (WeightFormat::Q5_1, DType::Q5_1)
    )
}

impl std::str::FromStr for WeightFormat {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => Self::Auto,
            "f32" | "float32" => Self::F32,
            "f16" | "float16" | "half" => Self::F16,
            "bf16" | "bfloat16" => Self::BF16,
            "q8_0" | "int8" => Self::Q8_0,
            "q4_0" | "int4" => Self::Q4_0,
            "q4_1" => Self::Q4_1,
            "q5_0" => Self::Q5_0,
            "q5_1" => Self::Q5_1,
            other => return Err(ModelError::UnknownFormat(other.to_string())),
        })
    }
}

/// What to load and how.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Format of the layer matrices.
    pub format: WeightFormat,
    /// Format of the output layer; `None`: q8_0 when `format` is 4/5-bit (the
    /// logits are the most quantization-sensitive product), else `format`.
    pub output_format: Option<WeightFormat>,
    /// Format of the embedding table; `None`: as `format` (only one row per
    /// token is read, so its format costs memory, not speed).
    pub embedding_format: Option<WeightFormat>,
    /// Use weights in place from the memory-mapped checkpoint where its
    /// layout already fits (instant start, pages shared with the OS cache).
    /// Off by default: copies live in anonymous memory, which the kernel backs
    /// with huge pages, and f16 decode measured 18% faster that way (280 →
    /// 230 ms/token for 6B on 2 cores): a 4 KiB-paged stream stalls the
    /// hardware prefetchers at every page boundary.
    pub mmap: bool,
}

impl LoadOptions {
    pub fn new(format: WeightFormat) -> Self {
        Self { format, output_format: None, embedding_format: None, mmap: false }
    }

    fn output(&self) -> WeightFormat {
        self.output_format.unwrap_or(match self.format {
            WeightFormat::Q4_0 | WeightFormat::Q4_1 | WeightFormat::Q5_0 | WeightFormat::Q5_1 => WeightFormat::Q8_0,
            f => f,
        })
    }

    fn embedding(&self) -> WeightFormat {
        self.embedding_format.unwrap_or(self.format)
    }
}

/// Where [`Model::load`](crate::Model::load) reads tensors from: a
/// [`Checkpoint`] folder or a [`chatglm_weights::gguf::GgufModel`] (official
/// state-dict names in both).
pub trait TensorSource {
    fn config(&self) -> &ModelConfig;
    fn tensor(&self, name: &str) -> Result<&Tensor, ModelError>;
}

impl TensorSource for Checkpoint {
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn tensor(&self, name: &str) -> Result<&Tensor, ModelError> {
        Ok(Checkpoint::tensor(self, name)?)
    }
}

/// Weights per block of every quantized format.
const QUANT_BLOCK: usize = 32;

/// `format`, or f16 when it is quantized and its blocks do not tile rows of
/// `cols` weights (as llama.cpp falls back), with a warning naming `tensor`.
fn fallback_if_untiled(format: WeightFormat, cols: usize, tensor: &str) -> WeightFormat {
    if format.is_quantized() && !cols.is_multiple_of(QUANT_BLOCK) {
        tracing::warn!(
            tensor,
            cols,
            "rows of {cols} weights are not whole {QUANT_BLOCK}-weight {} blocks: kept as f16",
            format.name()
        );
        WeightFormat::F16
    } else {
        format
    }
}

/// Loads every weight, calling `progress(done, total)` after each tensor.
pub fn load_weights<B: Backend, S: TensorSource + ?Sized>(
    backend: &B,
    source: &S,
    options: LoadOptions,
    adapters: &[chatglm_weights::lora::LoraAdapter],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Weights<B>, ModelError> {
    let cfg = source.config();
    let total = 3 + cfg.num_layers * 7;
    let mut done = 0;
    let mut step = |done: &mut usize| {
        *done += 1;
        progress(*done, total);
    };
    let vector =
        |name: &str| -> Result<B::Vector, ModelError> { Ok(backend.load_vector(source.tensor(name)?.to_f32()?)) };
    let matrix = |name: &str, format: WeightFormat| -> Result<B::Matrix, ModelError> {
        let t = source.tensor(name)?;
        let cols = t.shape.last().copied().unwrap_or(0);
        let format = fallback_if_untiled(format.resolve(t.dtype), cols, name);
        // LoRA deltas merge in f32, one matrix at a time, before conversion;
        // the merged matrix keeps the format its source would have had.
        if let Some(merged) = chatglm_weights::lora::merge_adapters(adapters, name, t)? {
            return backend.load_matrix(&merged, format, false);
        }
        backend.load_matrix(t, format, options.mmap)
    };

    let embedding = {
        let t = source.tensor(names::WORD_EMBEDDINGS)?;
        let cols = t.shape.last().copied().unwrap_or(0);
        let format = fallback_if_untiled(options.embedding().resolve(t.dtype), cols, names::WORD_EMBEDDINGS);
        backend.load_embedding(t, format, options.mmap)?
    };
    step(&mut done);
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for i in 0..cfg.num_layers {
        let l = |suffix: &str| names::layer(i, suffix);
        let input_norm = vector(&l(names::INPUT_LAYERNORM))?;
        let qkv = matrix(&l(names::QKV_WEIGHT), options.format)?;
        let qkv_bias = if cfg.add_qkv_bias {
            vector(&l(names::QKV_BIAS))?
        } else {
            backend.load_vector(vec![0.0; cfg.qkv_out_dim()])
        };
        let dense = matrix(&l(names::ATTENTION_DENSE), options.format)?;
        let post_norm = vector(&l(names::POST_ATTENTION_LAYERNORM))?;
        let h_to_4h = matrix(&l(names::DENSE_H_TO_4H), options.format)?;
        let four_h_to_h = matrix(&l(names::DENSE_4H_TO_H), options.format)?;
        for _ in 0..7 {
            step(&mut done);
        }
        layers.push(LayerWeights { input_norm, qkv, qkv_bias, dense, post_norm, h_to_4h, four_h_to_h });
    }
    let final_norm = vector(names::FINAL_LAYERNORM)?;
    step(&mut done);
    let output = matrix(names::OUTPUT_LAYER, options.output())?;
    step(&mut done);
    Ok(Weights { embedding, layers, final_norm, output })
}

/// Random weights of the shapes `cfg` implies, built in memory without a
/// file (for `chatglm bench --synthetic`). `Auto` means f16.
pub fn synthetic_weights<B: Backend>(backend: &B, cfg: &ModelConfig, options: LoadOptions, seed: u64) -> Weights<B> {
    let pick = |f: WeightFormat| if f == WeightFormat::Auto { WeightFormat::F16 } else { f };
    let (h, ffn, vocab) = (cfg.hidden_size, cfg.ffn_hidden_size, cfg.padded_vocab_size);
    let mut seed = seed;
    let embedding = {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let format = fallback_if_untiled(pick(options.embedding()), h, "synthetic embedding");
        backend.random_embedding(vocab, h, format, seed)
    };
    let mut matrix = |rows: usize, cols: usize, f: WeightFormat| {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        backend.random_matrix(rows, cols, fallback_if_untiled(pick(f), cols, "synthetic matrix"), seed)
    };
    let norm = |n: usize| backend.load_vector(vec![1.0; n]);
    let layers = (0..cfg.num_layers)
        .map(|_| LayerWeights {
            input_norm: norm(h),
            qkv: matrix(cfg.qkv_out_dim(), h, options.format),
            qkv_bias: backend.load_vector(vec![0.0; cfg.qkv_out_dim()]),
            dense: matrix(h, cfg.q_dim(), options.format),
            post_norm: norm(h),
            h_to_4h: matrix(2 * ffn, h, options.format),
            four_h_to_h: matrix(h, ffn, options.format),
        })
        .collect();
    let output = matrix(vocab, h, options.output());
    Weights { embedding, layers, final_norm: norm(h), output }
}
