//! ChatGLM in GGUF: llama.cpp's `chatglm` architecture names, the config
//! in metadata, [`GgufModel`] (tensors under their official state-dict
//! names, so the model loader does not care where they came from) and the
//! precision plan and row conversion `chatglm quantize` streams with.
//!
//! Names follow llama.cpp (`gguf-py` `MODEL_ARCH.CHATGLM`,
//! `convert_hf_to_gguf.py` `ChatGLMModel`): the fused SwiGLU
//! `dense_h_to_4h` (`[gate | up]`, `2·ffn` rows) is stored whole as
//! `blk.N.ffn_up.weight`, as llama.cpp does (its graph splits it with
//! `LLM_FFN_SWIGLU`); `rotary_pos_emb.inv_freq` is dropped (recomputed).
//!
//! The exact [`ModelConfig`] travels as JSON in `chatglm_rs.config_json`;
//! files without it (e.g. converted by llama.cpp) get a config rebuilt from
//! the standard `chatglm.*` keys.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use super::reader::GgufFile;
use super::value::GgufValue;
use super::writer::GgufTensorSpec;
use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QuantBlock, QK};
use crate::{names, DType, ModelConfig, ModelFamily, RopeScaling, Tensor, WeightsError};

/// `general.architecture`.
pub const ARCHITECTURE: &str = "chatglm";
/// Our key holding the original config as JSON (exact round trip).
pub const CONFIG_JSON_KEY: &str = "chatglm_rs.config_json";

/// (official suffix after `transformer.encoder.layers.N.`, GGUF suffix after `blk.N.`).
const LAYER_NAMES: [(&str, &str); 7] = [
    (names::INPUT_LAYERNORM, "attn_norm.weight"),
    (names::QKV_WEIGHT, "attn_qkv.weight"),
    (names::QKV_BIAS, "attn_qkv.bias"),
    (names::ATTENTION_DENSE, "attn_output.weight"),
    (names::POST_ATTENTION_LAYERNORM, "ffn_norm.weight"),
    (names::DENSE_H_TO_4H, "ffn_up.weight"),
    (names::DENSE_4H_TO_H, "ffn_down.weight"),
];
/// (official name, GGUF name) of the tensors outside the layers.
const GLOBAL_NAMES: [(&str, &str); 3] = [
    (names::WORD_EMBEDDINGS, "token_embd.weight"),
    (names::FINAL_LAYERNORM, "output_norm.weight"),
    (names::OUTPUT_LAYER, "output.weight"),
];

/// Splits `{prefix}{i}.{rest}` into `(i, rest)`, with `i` canonical decimal.
fn split_layer<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let (i, rest) = name.strip_prefix(prefix)?.split_once('.')?;
    let n: usize = i.parse().ok()?;
    (n.to_string() == i).then_some((n, rest))
}

/// The GGUF name of an official state-dict name (`None` for tensors GGUF
/// files do not carry, like `rotary_pos_emb.inv_freq`).
pub fn gguf_name(official: &str) -> Option<String> {
    if let Some((_, g)) = GLOBAL_NAMES.iter().find(|(o, _)| *o == official) {
        return Some(g.to_string());
    }
    let (i, suffix) = split_layer(official, "transformer.encoder.layers.")?;
    LAYER_NAMES.iter().find(|(o, _)| *o == suffix).map(|(_, g)| format!("blk.{i}.{g}"))
}

/// The official state-dict name of a GGUF tensor name.
pub fn official_name(gguf: &str) -> Option<String> {
    if let Some((o, _)) = GLOBAL_NAMES.iter().find(|(_, g)| *g == gguf) {
        return Some(o.to_string());
    }
    let (i, suffix) = split_layer(gguf, "blk.")?;
    LAYER_NAMES.iter().find(|(_, g)| *g == suffix).map(|(o, _)| names::layer(i, o))
}

/// llama.cpp's `general.file_type` (`llama_ftype`) for a file mostly in `dtype`.
pub fn file_type(dtype: DType) -> u32 {
    match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q4_1 => 3,
        DType::Q8_0 => 7,
        DType::Q5_0 => 8,
        DType::Q5_1 => 9,
        DType::BF16 => 32,
        // Raw int8 is never a file's main format (official INT8/INT4 weights
        // are q8_0/q4_0 by the time a GGUF file is written).
        DType::I8 => 0,
    }
}

fn key(k: &str) -> String {
    format!("{ARCHITECTURE}.{k}")
}

/// The model metadata: `general.*`, llama.cpp's `chatglm.*` hyper-parameters
/// and [`CONFIG_JSON_KEY`]. `dtype` is the format of the layer matrices.
pub fn config_metadata(cfg: &ModelConfig, dtype: DType) -> Vec<(String, GgufValue)> {
    let u32v = |v: usize| GgufValue::U32(u32::try_from(v).unwrap_or(u32::MAX));
    let mut m = vec![
        ("general.architecture".to_string(), GgufValue::String(ARCHITECTURE.into())),
        ("general.alignment".to_string(), GgufValue::U32(super::DEFAULT_ALIGNMENT as u32)),
        ("general.file_type".to_string(), GgufValue::U32(file_type(dtype))),
    ];
    if dtype.is_quantized() {
        m.push(("general.quantization_version".to_string(), GgufValue::U32(2)));
    }
    m.extend([
        (key("context_length"), u32v(cfg.seq_length)),
        (key("embedding_length"), u32v(cfg.hidden_size)),
        (key("feed_forward_length"), u32v(cfg.ffn_hidden_size)),
        (key("block_count"), u32v(cfg.num_layers)),
        (key("vocab_size"), u32v(cfg.padded_vocab_size)),
        (key("attention.head_count"), u32v(cfg.num_attention_heads)),
        (key("attention.head_count_kv"), u32v(cfg.multi_query_group_num)),
        (key("attention.key_length"), u32v(cfg.kv_channels)),
        (key("attention.value_length"), u32v(cfg.kv_channels)),
        (key("attention.layer_norm_rms_epsilon"), GgufValue::F32(cfg.layernorm_epsilon)),
        // ChatGLM2 rotates the first half of each head.
        (key("rope.dimension_count"), u32v(cfg.kv_channels / 2)),
        (CONFIG_JSON_KEY.to_string(), GgufValue::String(config_json(cfg))),
    ]);
    m.push((FAMILY_KEY.to_string(), GgufValue::String(cfg.family.name().into())));
    // rope_ratio as llama.cpp spells the two ways the releases use it:
    // position interpolation ("linear" scaling) or a larger base.
    let (base, position_scale) = cfg.rope_base_and_position_scale();
    m.push((key("rope.freq_base"), GgufValue::F32(base)));
    match cfg.rope_scaling {
        RopeScaling::DividePositions => {
            m.push((key("rope.scaling.type"), GgufValue::String("linear".into())));
            m.push((key("rope.scaling.factor"), GgufValue::F32(1.0 / position_scale)));
        }
        RopeScaling::ScaleBase => m.push((key("rope.scaling.type"), GgufValue::String("none".into()))),
    }
    m
}

/// The release (chat format) of the model in a file we wrote.
const FAMILY_KEY: &str = "chatglm_rs.family";

/// A file's release where it records one ([`FAMILY_KEY`]; llama.cpp's files
/// do not, and then the config's `_name_or_path` decides).
fn family_of(file: &GgufFile) -> Option<ModelFamily> {
    file.get(FAMILY_KEY).and_then(GgufValue::as_str).and_then(ModelFamily::parse)
}

/// How a file's rope_ratio applies: its `rope.scaling.type` ("linear":
/// positions divided), else (files written before the key, and "none") a
/// scaled base.
fn rope_scaling_of(file: &GgufFile) -> RopeScaling {
    match file.get(&key("rope.scaling.type")).and_then(GgufValue::as_str) {
        Some("linear") => RopeScaling::DividePositions,
        _ => RopeScaling::ScaleBase,
    }
}

/// Every [`ModelConfig`] field as config.json spells it.
fn config_json(cfg: &ModelConfig) -> String {
    serde_json::json!({
        "model_type": cfg.model_type,
        "_name_or_path": cfg.name_or_path,
        "num_layers": cfg.num_layers,
        "hidden_size": cfg.hidden_size,
        "num_attention_heads": cfg.num_attention_heads,
        "kv_channels": cfg.kv_channels,
        "multi_query_attention": cfg.multi_query_attention,
        "multi_query_group_num": cfg.multi_query_group_num,
        "ffn_hidden_size": cfg.ffn_hidden_size,
        "padded_vocab_size": cfg.padded_vocab_size,
        "seq_length": cfg.seq_length,
        "layernorm_epsilon": cfg.layernorm_epsilon,
        "rope_ratio": cfg.rope_ratio,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": cfg.torch_dtype,
        "rmsnorm": cfg.rmsnorm,
        "add_qkv_bias": cfg.add_qkv_bias,
        "add_bias_linear": cfg.add_bias_linear,
        "post_layer_norm": cfg.post_layer_norm,
        "original_rope": cfg.original_rope,
        "apply_residual_connection_post_layernorm": cfg.apply_residual_connection_post_layernorm,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "quantization_bit": cfg.quantization_bit,
        "pre_seq_len": cfg.pre_seq_len,
    })
    .to_string()
}

/// The config of a GGUF file: [`CONFIG_JSON_KEY`] if present, else rebuilt
/// from the `chatglm.*` keys (and the tensor table for the vocabulary size
/// and the QKV bias).
pub fn config_from_file(file: &GgufFile) -> Result<ModelConfig, WeightsError> {
    let path = file.path();
    let bad = |message: String| WeightsError::Gguf { path: path.to_path_buf(), message };
    match file.get("general.architecture").and_then(GgufValue::as_str) {
        Some(ARCHITECTURE) => {}
        Some(other) => {
            return Err(bad(format!("general.architecture is {other:?}; this engine runs \"{ARCHITECTURE}\" models")))
        }
        None => return Err(bad("general.architecture is missing (expected \"chatglm\")".into())),
    }
    let in_file = |e: WeightsError| bad(format!("model config: {e}"));
    if let Some(v) = file.get(CONFIG_JSON_KEY) {
        let json = v.as_str().ok_or_else(|| bad(format!("{CONFIG_JSON_KEY} must be a string, found {v}")))?;
        let mut cfg = ModelConfig::from_json_str(json).map_err(in_file)?;
        cfg.family = family_of(file).unwrap_or(cfg.family);
        cfg.rope_scaling = rope_scaling_of(file);
        return Ok(cfg);
    }
    let get = |k: &str| -> Result<u64, WeightsError> {
        let full = key(k);
        file.get(&full).and_then(GgufValue::as_u64).ok_or_else(|| bad(format!("{full} is missing or not an integer")))
    };
    let hidden = get("embedding_length")?;
    let heads = get("attention.head_count")?;
    let head_dim = match get("attention.key_length") {
        Ok(d) => d,
        Err(_) => hidden.checked_div(heads).ok_or_else(|| bad(format!("{} is 0", key("attention.head_count"))))?,
    };
    let vocab = match file.header().tensor_info("token_embd.weight") {
        Some(t) => t.shape.first().copied().unwrap_or(0) as u64,
        None => get("vocab_size")?,
    };
    let opt_f = |k: &str, default: f64| file.get(&key(k)).and_then(GgufValue::as_f64).unwrap_or(default);
    let token_id = |k: &str, default: u64| file.get(k).and_then(GgufValue::as_u64).unwrap_or(default);
    let json = serde_json::json!({
        "model_type": "chatglm",
        "num_layers": get("block_count")?,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "kv_channels": head_dim,
        "multi_query_attention": true,
        "multi_query_group_num": get("attention.head_count_kv")?,
        "ffn_hidden_size": get("feed_forward_length")?,
        "padded_vocab_size": vocab,
        "seq_length": get("context_length")?,
        "layernorm_epsilon": opt_f("attention.layer_norm_rms_epsilon", 1e-5),
        "rope_ratio": match rope_scaling_of(file) {
            RopeScaling::DividePositions => opt_f("rope.scaling.factor", 1.0),
            RopeScaling::ScaleBase => opt_f("rope.freq_base", 10000.0) / 10000.0,
        },
        "add_qkv_bias": file.header().tensor_info("blk.0.attn_qkv.bias").is_some(),
        "eos_token_id": token_id("tokenizer.ggml.eos_token_id", 2),
        "pad_token_id": token_id("tokenizer.ggml.padding_token_id", 0),
    });
    let mut cfg = ModelConfig::from_json_str(&json.to_string()).map_err(in_file)?;
    cfg.family = family_of(file).unwrap_or(cfg.family);
    cfg.rope_scaling = rope_scaling_of(file);
    Ok(cfg)
}

/// A ChatGLM GGUF file opened as a model: its config and its tensors under
/// their official state-dict names (windows of the mapping, no copy).
pub struct GgufModel {
    /// The mapped file (metadata such as the tokenizer is read from here).
    pub file: GgufFile,
    /// The model config.
    pub config: ModelConfig,
    tensors: BTreeMap<String, Tensor>,
}

impl std::fmt::Debug for GgufModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufModel").field("file", &self.file).field("tensors", &self.tensors.len()).finish()
    }
}

impl GgufModel {
    /// Opens `path`, rebuilds the config and checks that every tensor the
    /// model needs is present with the shape the config implies. Tensors
    /// with names outside the ChatGLM mapping are left in [`Self::file`].
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        let file = GgufFile::open(path)?;
        let config = config_from_file(&file)?;
        let mut tensors = BTreeMap::new();
        for info in &file.header().tensors {
            if let Some(official) = official_name(&info.name) {
                let t = file.tensor_from_info(info, official.clone())?;
                tensors.insert(official, t);
            }
        }
        let model = Self { file, config, tensors };
        for (name, expected) in names::expected_tensors(&model.config) {
            let t = model.tensor(&name)?;
            if t.shape != expected {
                return Err(WeightsError::Gguf {
                    path: path.to_path_buf(),
                    message: format!(
                        "tensor {} ({name}): expected shape {expected:?} (ne {:?}) from the config, found {:?}",
                        gguf_name(&name).unwrap_or_default(),
                        expected.iter().rev().collect::<Vec<_>>(),
                        t.shape
                    ),
                });
            }
        }
        Ok(model)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The tensor with official name `name`.
    pub fn tensor(&self, name: &str) -> Result<&Tensor, WeightsError> {
        self.tensors.get(name).ok_or_else(|| WeightsError::MissingTensor {
            root: PathBuf::from(self.file.path()),
            tensor: format!("{name} (GGUF {})", gguf_name(name).unwrap_or_else(|| "-".into())),
        })
    }

    /// All mapped tensors, sorted by official name.
    pub fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        self.tensors.values()
    }
}

/// The precision of each tensor `chatglm quantize` writes. Norms and biases
/// stay f32 (they are tiny and feed every token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantizePlan {
    /// The layer matrices (QKV, attention output, both MLP matrices).
    pub format: DType,
    /// The output layer; `None`: q8_0 when `format` is 4/5-bit (the logits
    /// are the most quantization-sensitive product), else `format`.
    pub output: Option<DType>,
    /// The embedding table; `None`: `format` (one row is read per token, so
    /// its precision costs memory, not speed).
    pub embedding: Option<DType>,
}

/// One tensor of the plan: where it comes from and what is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorPlan {
    /// The official state-dict name in the source checkpoint.
    pub source: String,
    /// GGUF name, dtype and shape in the output.
    pub spec: GgufTensorSpec,
    /// The format asked for when its blocks do not tile the rows, so the
    /// tensor is written as f16 instead (llama.cpp's fallback).
    pub fallback_from: Option<DType>,
}

impl QuantizePlan {
    /// Every layer matrix in `format`, defaults for the rest.
    pub fn new(format: DType) -> Self {
        Self { format, output: None, embedding: None }
    }

    /// The output layer's dtype.
    pub fn output_dtype(&self) -> DType {
        self.output.unwrap_or(match self.format {
            DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 => DType::Q8_0,
            f => f,
        })
    }

    /// The embedding table's dtype.
    pub fn embedding_dtype(&self) -> DType {
        self.embedding.unwrap_or(self.format)
    }

    /// The tensors to write, in the official order, each with its dtype. A
    /// matrix whose rows a quantized format's 32-weight blocks do not tile is
    /// written as f16 instead (`fallback_from` says so), as llama.cpp does.
    pub fn tensors(&self, cfg: &ModelConfig) -> Result<Vec<TensorPlan>, WeightsError> {
        let mut out = Vec::new();
        for (name, shape) in names::expected_tensors(cfg) {
            let dtype = if shape.len() == 1 {
                DType::F32
            } else if name == names::WORD_EMBEDDINGS {
                self.embedding_dtype()
            } else if name == names::OUTPUT_LAYER {
                self.output_dtype()
            } else {
                self.format
            };
            let gguf = gguf_name(&name).ok_or_else(|| WeightsError::BadTensor {
                path: "<plan>".into(),
                tensor: name.clone(),
                message: "no GGUF name for this tensor".into(),
            })?;
            let mut spec = GgufTensorSpec { name: gguf, dtype, shape };
            let mut fallback_from = None;
            if spec.n_bytes().is_none() {
                fallback_from = Some(dtype);
                spec.dtype = DType::F16;
            }
            if spec.n_bytes().is_none() {
                return Err(WeightsError::BadTensor {
                    path: "<plan>".into(),
                    tensor: name,
                    message: format!("shape {:?} is too large", spec.shape),
                });
            }
            out.push(TensorPlan { source: name, spec, fallback_from });
        }
        Ok(out)
    }

    /// The file's model metadata (without the tokenizer).
    pub fn metadata(&self, cfg: &ModelConfig) -> Vec<(String, GgufValue)> {
        config_metadata(cfg, self.format)
    }
}

/// Rows of a tensor seen as a matrix `[rows, last dim]` (a vector is one row).
pub fn row_count(t: &Tensor) -> usize {
    match t.shape.last() {
        Some(&cols) if cols > 0 => t.n_elements() / cols,
        _ => 0,
    }
}

/// Converts rows `rows` of `src` (a matrix `[rows, last dim]`, any dtype) to
/// `dst`, appending the bytes to `out`. Same dtype: the bytes are copied
/// (exact). Otherwise rows are decoded to f32 in `scratch` and encoded with
/// the reference quantizers of [`crate::quant`] (or rounded to f16/bf16,
/// nearest-even), exactly as quantize-on-load does.
pub fn convert_rows(
    src: &Tensor,
    dst: DType,
    rows: Range<usize>,
    scratch: &mut Vec<f32>,
    out: &mut Vec<u8>,
) -> Result<(), WeightsError> {
    let bad = |message: String| WeightsError::BadTensor { path: "<convert>".into(), tensor: src.name.clone(), message };
    let cols = src.shape.last().copied().unwrap_or(1);
    if rows.start > rows.end || rows.end > row_count(src) {
        return Err(bad(format!("rows {rows:?} outside the {} rows of {:?}", row_count(src), src.shape)));
    }
    let (Some(src_row), Some(_)) = (src.dtype.size_in_bytes(cols), dst.size_in_bytes(cols)) else {
        return Err(bad(format!("rows of {cols} are not whole {} / {dst} blocks", src.dtype)));
    };
    let bytes = src
        .data
        .get(rows.start * src_row..rows.end * src_row)
        .ok_or_else(|| bad(format!("data holds {} bytes, rows {rows:?} need more", src.data.len())))?;
    if src.dtype == dst {
        out.extend_from_slice(bytes);
        return Ok(());
    }
    scratch.clear();
    scratch.resize(rows.len() * cols, 0.0);
    crate::tensor::decode_f32(src.dtype, bytes, scratch);
    encode_f32(dst, scratch, out);
    Ok(())
}

/// Encodes f32 values as `dst` (for block formats `values.len()` must be a
/// multiple of 32; a partial block at the end is ignored).
pub fn encode_f32(dst: DType, values: &[f32], out: &mut Vec<u8>) {
    fn blocks<B: QuantBlock>(values: &[f32], out: &mut Vec<u8>) {
        for chunk in values.chunks_exact(QK) {
            out.extend_from_slice(bytemuck::bytes_of(&B::quantize(chunk)));
        }
    }
    match dst {
        DType::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::F16 => values.iter().for_each(|&v| out.extend_from_slice(&f16::from_f32(v).to_le_bytes())),
        DType::BF16 => values.iter().for_each(|&v| out.extend_from_slice(&bf16::from_f32(v).to_le_bytes())),
        DType::Q8_0 => blocks::<BlockQ8_0>(values, out),
        DType::Q4_0 => blocks::<BlockQ4_0>(values, out),
        DType::Q4_1 => blocks::<BlockQ4_1>(values, out),
        DType::Q5_0 => blocks::<BlockQ5_0>(values, out),
        DType::Q5_1 => blocks::<BlockQ5_1>(values, out),
        DType::I8 => values.iter().for_each(|&v| out.push(v.round().clamp(-128.0, 127.0) as i8 as u8)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        let cfg = ModelConfig::from_json_str(
            r#"{"num_layers":12,"hidden_size":64,"num_attention_heads":4,"kv_channels":16,
            "multi_query_attention":true,"multi_query_group_num":2,"ffn_hidden_size":160,
            "padded_vocab_size":4032,"seq_length":512,"add_qkv_bias":true}"#,
        )
        .unwrap();
        for (name, _) in names::expected_tensors(&cfg) {
            let g = gguf_name(&name).unwrap();
            assert_eq!(official_name(&g).as_deref(), Some(name.as_str()), "{g}");
        }
        assert_eq!(gguf_name(&names::layer(11, names::DENSE_H_TO_4H)).unwrap(), "blk.11.ffn_up.weight");
        assert_eq!(gguf_name(names::ROTARY_INV_FREQ), None);
        assert_eq!(official_name("blk.01.ffn_up.weight"), None);
        assert_eq!(official_name("blk.1.ffn_gate.weight"), None);
        assert_eq!(official_name("rope_freqs.weight"), None);
    }

    #[test]
    fn matrices_whose_rows_are_not_whole_blocks_fall_back_to_f16() {
        // hidden 100 (QKV, h→4h, output, embedding rows), ffn 80 (4h→h rows)
        // and q 4·20 = 80 (dense rows): none is a multiple of 32.
        let cfg = ModelConfig::from_json_str(
            r#"{"num_layers":1,"hidden_size":100,"num_attention_heads":4,"kv_channels":20,
            "multi_query_attention":true,"multi_query_group_num":2,"ffn_hidden_size":80,
            "padded_vocab_size":333,"seq_length":512,"add_qkv_bias":true}"#,
        )
        .unwrap();
        let plan = QuantizePlan::new(DType::Q4_0).tensors(&cfg).unwrap();
        let fell_back: Vec<&TensorPlan> = plan.iter().filter(|t| t.fallback_from.is_some()).collect();
        assert_eq!(fell_back.len(), plan.iter().filter(|t| t.spec.shape.len() == 2).count());
        for t in &fell_back {
            assert_eq!(t.spec.dtype, DType::F16, "{}", t.source);
            assert!(matches!(t.fallback_from, Some(DType::Q4_0 | DType::Q8_0)), "{}", t.source);
        }
        // Rows of 64 tile: nothing falls back.
        let cfg = ModelConfig::from_json_str(
            r#"{"num_layers":1,"hidden_size":64,"num_attention_heads":4,"kv_channels":16,
            "multi_query_attention":true,"multi_query_group_num":2,"ffn_hidden_size":160,
            "padded_vocab_size":333,"seq_length":512,"add_qkv_bias":true}"#,
        )
        .unwrap();
        let plan = QuantizePlan::new(DType::Q4_0).tensors(&cfg).unwrap();
        assert!(plan.iter().all(|t| t.fallback_from.is_none()));
        assert!(plan.iter().any(|t| t.spec.dtype == DType::Q4_0));
    }
}
