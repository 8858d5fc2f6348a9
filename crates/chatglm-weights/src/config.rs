//! [`ModelConfig`]: the official ChatGLM2/ChatGLM3 `config.json`, with the
//! same field names, and the checks that tell a user early and clearly when a
//! checkpoint uses an architecture variant this engine does not implement.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::WeightsError;

/// Which release a checkpoint is: its chat format follows (ChatGLM3 adds role
/// tokens, tool calls and a different prompt layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelFamily {
    #[default]
    ChatGlm2,
    ChatGlm3,
}

impl ModelFamily {
    /// From the official remote code's text, where it says (ChatGLM3's
    /// tokenizer and modeling files build prompts with `build_chat_input`
    /// and its role tokens).
    pub fn from_remote_code(code: &str) -> Option<Self> {
        (code.contains("build_chat_input") || code.contains("<|observation|>")).then_some(Self::ChatGlm3)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::ChatGlm2 => "chatglm2",
            Self::ChatGlm3 => "chatglm3",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "chatglm2" => Some(Self::ChatGlm2),
            "chatglm3" => Some(Self::ChatGlm3),
            _ => None,
        }
    }
}

/// How a config's `rope_ratio` enters the rotary angles, as each official
/// modeling file defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RopeScaling {
    /// ChatGLM2-6B-32K: positions are divided by `rope_ratio` (position
    /// interpolation; the official file: `seq_idx = arange(seq_len) / self.rope_ratio`).
    #[default]
    DividePositions,
    /// ChatGLM3-6B-32K/128K: the base is multiplied (`base = base * self.rope_ratio`).
    ScaleBase,
}

impl RopeScaling {
    /// From the official modeling code's text, where it says.
    pub fn from_modeling_code(code: &str) -> Option<Self> {
        if code.contains("/ self.rope_ratio") {
            Some(Self::DividePositions)
        } else if code.contains("base * self.rope_ratio") {
            Some(Self::ScaleBase)
        } else {
            None
        }
    }

    /// The GGUF/`inspect` name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::DividePositions => "positions",
            Self::ScaleBase => "base",
        }
    }
}

/// The model hyper-parameters from `config.json` (field names as in the
/// official file; unknown fields are ignored). Sizes are required; flags
/// default as in the official `configuration_chatglm.py`.
///
/// ChatGLM2-6B: 28 layers, hidden 4096, 32 heads × 128 (`kv_channels`),
/// multi-query attention with 2 groups, ffn 13696, vocab 65024.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ModelConfig {
    /// Transformer layers (28 for the 6B model).
    pub num_layers: usize,
    /// Residual stream width (4096).
    pub hidden_size: usize,
    /// Query heads (32).
    pub num_attention_heads: usize,
    /// Dimension of one attention head (128).
    pub kv_channels: usize,
    /// Grouped/multi-query attention; this engine requires it (ChatGLM2 uses it).
    #[serde(default)]
    pub multi_query_attention: bool,
    /// Number of key/value heads when `multi_query_attention` (2).
    #[serde(default = "one_usize")]
    pub multi_query_group_num: usize,
    /// Width of each SwiGLU half (13696); `dense_h_to_4h` outputs twice this.
    pub ffn_hidden_size: usize,
    /// Rows of the embedding and output matrices (65024).
    pub padded_vocab_size: usize,
    /// Context length the model was trained for (ChatGLM2-6B: 32768).
    pub seq_length: usize,
    /// RMSNorm epsilon (1e-5).
    #[serde(default = "default_eps")]
    pub layernorm_epsilon: f32,
    /// RoPE scaling for long-context variants (absent = 1.0). Its meaning
    /// differs between releases: [`ModelConfig::rope_scaling`] says which.
    #[serde(default = "one_f32")]
    pub rope_ratio: f32,
    /// How `rope_ratio` applies. Not a config.json field: it follows the
    /// checkpoint's family (see [`RopeScaling`]), decided when the config is
    /// read and refined from the modeling code beside it.
    #[serde(skip)]
    pub rope_scaling: RopeScaling,
    /// The release (chat format). Not a config.json field: from the remote
    /// code beside the weights, else `_name_or_path`.
    #[serde(skip)]
    pub family: ModelFamily,
    /// The official `_name_or_path` (`THUDM/chatglm2-6b-32k`, …): which
    /// release a checkpoint says it is when its modeling code is not beside it.
    #[serde(default, rename = "_name_or_path")]
    pub name_or_path: Option<String>,
    /// End-of-sequence token id (2).
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    /// Padding token id (0).
    #[serde(default)]
    pub pad_token_id: u32,
    /// The dtype the checkpoint was saved in (`float16`, `bfloat16`, `float32`), informational.
    #[serde(default)]
    pub torch_dtype: Option<String>,
    /// RMSNorm instead of LayerNorm; required.
    #[serde(default = "yes")]
    pub rmsnorm: bool,
    /// Bias on the fused QKV projection (true for ChatGLM2).
    #[serde(default)]
    pub add_qkv_bias: bool,
    /// Biases on the other linear layers; must be false.
    #[serde(default)]
    pub add_bias_linear: bool,
    /// Final RMSNorm before the output layer; required.
    #[serde(default = "yes")]
    pub post_layer_norm: bool,
    /// Interleaved-pair RoPE on half of each head, as in ChatGLM2; required.
    #[serde(default = "yes")]
    pub original_rope: bool,
    /// Residual taken after the norm; must be false.
    #[serde(default)]
    pub apply_residual_connection_post_layernorm: bool,
    /// `"chatglm"` for ChatGLM2/ChatGLM3.
    #[serde(default)]
    pub model_type: Option<String>,
    /// Output layer shares the embedding matrix; must be false (ChatGLM2 is untied).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bits of the official in-place quantization (`chatglm2-6b-int4`: 4); must be 0.
    #[serde(default)]
    pub quantization_bit: u32,
    /// P-Tuning v2 prefix length: the checkpoint then carries the prefix
    /// encoder (`transformer.prefix_encoder.*`, see [`crate::ptuning`]).
    #[serde(default)]
    pub pre_seq_len: Option<usize>,
}

fn one_usize() -> usize {
    1
}
fn one_f32() -> f32 {
    1.0
}
fn default_eps() -> f32 {
    1e-5
}
fn default_eos() -> u32 {
    2
}
fn yes() -> bool {
    true
}

/// Label used in errors for configs parsed from memory.
const IN_MEMORY: &str = "<config.json string>";

/// The published ChatGLM2-6B config.json.
const CHATGLM2_6B: &str = r#"{"num_layers":28,"hidden_size":4096,"num_attention_heads":32,"kv_channels":128,
"multi_query_attention":true,"multi_query_group_num":2,"ffn_hidden_size":13696,"padded_vocab_size":65024,
"seq_length":32768,"layernorm_epsilon":1e-5,"add_qkv_bias":true,"rmsnorm":true,"post_layer_norm":true,
"original_rope":true,"torch_dtype":"float16","model_type":"chatglm"}"#;
/// The tiny "dev" test model's shape.
const DEV: &str = r#"{"num_layers":2,"hidden_size":64,"num_attention_heads":4,"kv_channels":16,
"multi_query_attention":true,"multi_query_group_num":2,"ffn_hidden_size":160,"padded_vocab_size":4032,
"seq_length":512,"layernorm_epsilon":1e-5,"add_qkv_bias":true,"rmsnorm":true,"post_layer_norm":true,
"original_rope":true,"model_type":"chatglm"}"#;

/// The largest value accepted for each size field of `config.json`.
pub fn size_limit(field: &str) -> usize {
    match field {
        "num_layers" => 1024,
        "hidden_size" => 65_536,
        "num_attention_heads" | "multi_query_group_num" | "kv_channels" => 1024,
        "ffn_hidden_size" => 262_144,
        "padded_vocab_size" => 1 << 20,
        "seq_length" => 1 << 21,
        _ => usize::MAX,
    }
}

impl ModelConfig {
    /// A known model shape by name (`chatglm2-6b`, `chatglm3-6b` — same shape —
    /// or `dev`, the tiny test model), for synthetic weights; `None` if unknown.
    pub fn known(name: &str) -> Option<Result<Self, WeightsError>> {
        let json = match name {
            "chatglm2-6b" | "chatglm3-6b" => CHATGLM2_6B,
            "dev" | "tiny" => DEV,
            _ => return None,
        };
        Some(Self::from_json_str(json).map(|mut c| {
            if name.starts_with("chatglm3") {
                c.family = ModelFamily::ChatGlm3;
                c.rope_scaling = c.family_rope_scaling();
            }
            c
        }))
    }

    /// Parses and [validates](Self::validate) a `config.json` document.
    pub fn from_json_str(s: &str) -> Result<Self, WeightsError> {
        Self::parse(s, Path::new(IN_MEMORY))
    }

    /// Reads, parses and [validates](Self::validate) a `config.json` file.
    pub fn from_file(path: &Path) -> Result<Self, WeightsError> {
        let text = std::fs::read_to_string(path).map_err(|e| WeightsError::io(path, e))?;
        Self::parse(&text, path)
    }

    fn parse(s: &str, path: &Path) -> Result<Self, WeightsError> {
        let mut cfg: Self = serde_json::from_str(s)
            .map_err(|e| WeightsError::Config { path: path.to_path_buf(), message: e.to_string() })?;
        cfg.family = if cfg.name_or_path.as_deref().is_some_and(|n| n.to_ascii_lowercase().contains("chatglm3")) {
            ModelFamily::ChatGlm3
        } else {
            ModelFamily::ChatGlm2
        };
        cfg.rope_scaling = cfg.family_rope_scaling();
        cfg.validate_at(path)?;
        Ok(cfg)
    }

    /// The rope scaling of this config's family ([`ModelConfig::family`]:
    /// ChatGLM3 scales the base, ChatGLM2 divides positions). The modeling
    /// code, where present, is the better witness
    /// ([`RopeScaling::from_modeling_code`]).
    pub fn family_rope_scaling(&self) -> RopeScaling {
        match self.family {
            ModelFamily::ChatGlm3 => RopeScaling::ScaleBase,
            ModelFamily::ChatGlm2 => RopeScaling::DividePositions,
        }
    }

    /// The RoPE base and the factor positions are multiplied by before the
    /// angles are taken (`rope_ratio` applied as [`ModelConfig::rope_scaling`] says).
    pub fn rope_base_and_position_scale(&self) -> (f32, f32) {
        match self.rope_scaling {
            RopeScaling::DividePositions => (10000.0, 1.0 / self.rope_ratio),
            RopeScaling::ScaleBase => (10000.0 * self.rope_ratio, 1.0),
        }
    }

    /// Checks that the sizes are consistent and that the architecture flags
    /// are the ones this engine implements (ChatGLM2/ChatGLM3 6B family).
    pub fn validate(&self) -> Result<(), WeightsError> {
        self.validate_at(Path::new(IN_MEMORY))
    }

    fn validate_at(&self, path: &Path) -> Result<(), WeightsError> {
        let path = path.to_path_buf();
        let bad = |message: String| WeightsError::Config { path: path.clone(), message };
        let sizes = [
            ("num_layers", self.num_layers),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("kv_channels", self.kv_channels),
            ("multi_query_group_num", self.multi_query_group_num),
            ("ffn_hidden_size", self.ffn_hidden_size),
            ("padded_vocab_size", self.padded_vocab_size),
            ("seq_length", self.seq_length),
        ];
        for (field, value) in sizes {
            if value == 0 {
                return Err(bad(format!("{field} must be positive, found 0")));
            }
            // Untrusted files must not make the loader build absurd tables:
            // generous caps (10× the largest GLM models) stop a crafted config
            // before anything is allocated from it.
            let limit = size_limit(field);
            if value > limit {
                return Err(bad(format!("{field} = {value} exceeds the supported maximum {limit}")));
            }
        }
        let flags: [(&'static str, bool, bool, &str); 6] = [
            ("multi_query_attention", self.multi_query_attention, true, "ChatGLM2 multi-query attention"),
            ("rmsnorm", self.rmsnorm, true, "RMSNorm"),
            ("add_bias_linear", self.add_bias_linear, false, "no biases outside QKV"),
            ("post_layer_norm", self.post_layer_norm, true, "a final RMSNorm"),
            ("original_rope", self.original_rope, true, "ChatGLM2 interleaved RoPE"),
            (
                "apply_residual_connection_post_layernorm",
                self.apply_residual_connection_post_layernorm,
                false,
                "pre-norm residuals",
            ),
        ];
        for (field, found, expected, what) in flags {
            if found != expected {
                return Err(unsupported(&path, field, format!("{expected} ({what})"), found));
            }
        }
        if self.tie_word_embeddings {
            return Err(unsupported(&path, "tie_word_embeddings", "false (a separate output_layer)".into(), true));
        }
        if ![0, 4, 8].contains(&self.quantization_bit) {
            return Err(unsupported(
                &path,
                "quantization_bit",
                "0, 4 or 8 (the official INT4/INT8 checkpoints)".into(),
                self.quantization_bit,
            ));
        }
        if let Some(t) = &self.model_type {
            if t != "chatglm" {
                return Err(unsupported(&path, "model_type", "\"chatglm\"".into(), format!("{t:?}")));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.multi_query_group_num) {
            return Err(bad(format!(
                "num_attention_heads ({}) must be a multiple of multi_query_group_num ({})",
                self.num_attention_heads, self.multi_query_group_num
            )));
        }
        if !self.kv_channels.is_multiple_of(4) {
            return Err(bad(format!(
                "kv_channels must be a multiple of 4 (RoPE rotates pairs in the first half of each head), found {}",
                self.kv_channels
            )));
        }
        if !(self.layernorm_epsilon.is_finite() && self.layernorm_epsilon > 0.0) {
            return Err(bad(format!("layernorm_epsilon must be a positive number, found {}", self.layernorm_epsilon)));
        }
        if !(self.rope_ratio.is_finite() && self.rope_ratio > 0.0) {
            return Err(bad(format!("rope_ratio must be a positive number, found {}", self.rope_ratio)));
        }
        for (field, id) in [("eos_token_id", self.eos_token_id), ("pad_token_id", self.pad_token_id)] {
            if id as usize >= self.padded_vocab_size {
                return Err(bad(format!(
                    "{field} ({id}) must be below padded_vocab_size ({})",
                    self.padded_vocab_size
                )));
            }
        }
        if self.checked_parameter_count().is_none() {
            return Err(bad("the sizes overflow a 64-bit parameter count".into()));
        }
        Ok(())
    }

    /// Dimension of one head (`kv_channels`, 128).
    pub fn head_dim(&self) -> usize {
        self.kv_channels
    }

    /// Key/value heads (2 for ChatGLM2-6B).
    pub fn n_kv_heads(&self) -> usize {
        self.multi_query_group_num
    }

    /// Query heads × head_dim (4096): the input width of `self_attention.dense`.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads.saturating_mul(self.kv_channels)
    }

    /// Rows of the fused QKV projection: (heads + 2·groups)·head_dim (4608).
    pub fn qkv_out_dim(&self) -> usize {
        self.num_attention_heads
            .saturating_add(self.multi_query_group_num.saturating_mul(2))
            .saturating_mul(self.kv_channels)
    }

    /// Learned parameters (6,243,584,000 for ChatGLM2-6B), excluding the
    /// `rotary_pos_emb.inv_freq` buffer. Saturates on absurd sizes
    /// ([`validate`](Self::validate) rejects those).
    pub fn parameter_count(&self) -> u64 {
        self.checked_parameter_count().unwrap_or(u64::MAX)
    }

    fn checked_parameter_count(&self) -> Option<u64> {
        let h = self.hidden_size as u64;
        let qkv = (self.num_attention_heads as u64)
            .checked_add((self.multi_query_group_num as u64).checked_mul(2)?)?
            .checked_mul(self.kv_channels as u64)?;
        let q = (self.num_attention_heads as u64).checked_mul(self.kv_channels as u64)?;
        let f = self.ffn_hidden_size as u64;
        let per_layer = [
            h.checked_mul(2)?,                       // two RMSNorms
            qkv.checked_mul(h)?,                     // query_key_value.weight
            if self.add_qkv_bias { qkv } else { 0 }, // query_key_value.bias
            h.checked_mul(q)?,                       // dense
            f.checked_mul(2)?.checked_mul(h)?,       // dense_h_to_4h
            h.checked_mul(f)?,                       // dense_4h_to_h
        ]
        .into_iter()
        .try_fold(0u64, u64::checked_add)?;
        let vocab = (self.padded_vocab_size as u64).checked_mul(h)?;
        per_layer.checked_mul(self.num_layers as u64)?.checked_add(vocab.checked_mul(2)?)?.checked_add(h)
    }
}

fn unsupported(path: &Path, field: &'static str, expected: String, found: impl ToString) -> WeightsError {
    WeightsError::UnsupportedConfig { path: PathBuf::from(path), field, expected, found: found.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The official THUDM/chatglm2-6b config.json fields that matter here.
    const CHATGLM2_6B: &str = r#"{
        "_name_or_path": "THUDM/chatglm2-6b", "model_type": "chatglm",
        "add_bias_linear": false, "add_qkv_bias": true, "apply_query_key_layer_scaling": true,
        "apply_residual_connection_post_layernorm": false, "attention_dropout": 0.0,
        "attention_softmax_in_fp32": true, "bias_dropout_fusion": true, "ffn_hidden_size": 13696,
        "fp32_residual_connection": false, "hidden_dropout": 0.0, "hidden_size": 4096,
        "kv_channels": 128, "layernorm_epsilon": 1e-05, "multi_query_attention": true,
        "multi_query_group_num": 2, "num_attention_heads": 32, "num_layers": 28,
        "original_rope": true, "padded_vocab_size": 65024, "post_layer_norm": true,
        "rmsnorm": true, "seq_length": 32768, "use_cache": true, "torch_dtype": "float16",
        "transformers_version": "4.27.1", "tie_word_embeddings": false, "eos_token_id": 2, "pad_token_id": 0
    }"#;

    #[test]
    fn absurd_sizes_are_refused_naming_the_field() {
        let base: serde_json::Value = serde_json::from_str(CHATGLM2_6B).unwrap();
        for (field, value) in [
            ("num_layers", 1_000_000_000u64),
            ("hidden_size", 1 << 40),
            ("padded_vocab_size", 1 << 32),
            ("seq_length", u32::MAX as u64),
            ("ffn_hidden_size", 10_000_000),
        ] {
            let mut cfg = base.clone();
            cfg[field] = serde_json::json!(value);
            let e = ModelConfig::from_json_str(&cfg.to_string()).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains("exceeds"), "{field}: {e}");
        }
        // The real model is well inside the limits.
        assert!(ModelConfig::from_json_str(CHATGLM2_6B).is_ok());
    }

    #[test]
    fn chatglm2_6b() {
        let c = ModelConfig::from_json_str(CHATGLM2_6B).unwrap();
        assert_eq!(c.qkv_out_dim(), 4608);
        assert_eq!(c.head_dim(), 128);
        assert_eq!(c.rope_ratio, 1.0);
        // total_size of the official f16 index is 12487168064 bytes, of which
        // 64 bytes are the 32-element inv_freq buffer.
        assert_eq!(c.parameter_count(), (12_487_168_064 - 64) / 2);
    }

    #[test]
    fn unsupported_settings_are_named() {
        for (field, json) in [
            ("multi_query_attention", r#""multi_query_attention": false"#),
            ("rmsnorm", r#""rmsnorm": false"#),
            ("add_bias_linear", r#""add_bias_linear": true"#),
            ("post_layer_norm", r#""post_layer_norm": false"#),
            ("original_rope", r#""original_rope": false"#),
            ("apply_residual_connection_post_layernorm", r#""apply_residual_connection_post_layernorm": true"#),
            ("quantization_bit", r#""quantization_bit": 3"#),
            ("num_attention_heads", r#""num_attention_heads": 31"#),
            ("hidden_size", r#""hidden_size": 0"#),
            ("rope_ratio", r#""rope_ratio": -1"#),
        ] {
            // Duplicate keys are a serde error, so replace the value in place.
            let key = json.split(':').next().unwrap();
            let mut doc: serde_json::Value = serde_json::from_str(CHATGLM2_6B).unwrap();
            let value: serde_json::Value = serde_json::from_str(json.split_once(": ").unwrap().1).unwrap();
            doc[key.trim_matches('"')] = value;
            let err = ModelConfig::from_json_str(&doc.to_string()).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn missing_field_is_named() {
        let mut doc: serde_json::Value = serde_json::from_str(CHATGLM2_6B).unwrap();
        doc.as_object_mut().unwrap().remove("kv_channels");
        let err = ModelConfig::from_json_str(&doc.to_string()).unwrap_err().to_string();
        assert!(err.contains("missing field `kv_channels`"), "{err}");
    }
}
