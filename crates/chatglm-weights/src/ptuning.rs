//! P-Tuning v2 prefixes (`pre_seq_len` in config.json): the official
//! fine-tuning scripts train a prefix encoder whose output becomes
//! `pre_seq_len` keys and values in front of every layer's cache.
//!
//! The official `PrefixEncoder` is `embedding: [pre_seq_len, E]`, and with
//! `prefix_projection` an MLP `trans.0` (Linear E→H), Tanh, `trans.2` (Linear
//! H→kv_size); without it E = kv_size. `get_prompt` views the output as
//! `[pre_seq_len, 2·layers, groups, kv_channels]`: entry `2i` is layer i's
//! keys, `2i + 1` its values — used as past keys/values as they are (no
//! RoPE), visible to every token, with the tokens' positions not shifted.
//! Checkpoints carry the encoder as `transformer.prefix_encoder.*` (a whole
//! model, or the prefix encoder alone as the scripts save it).

use crate::{load_pytorch_bin, load_safetensors, ModelConfig, Tensor, WeightsError};
use std::collections::HashMap;
use std::path::Path;

/// Tensor names of the prefix encoder.
pub const EMBEDDING: &str = "transformer.prefix_encoder.embedding.weight";
const TRANS: [&str; 4] = [
    "transformer.prefix_encoder.trans.0.weight",
    "transformer.prefix_encoder.trans.0.bias",
    "transformer.prefix_encoder.trans.2.weight",
    "transformer.prefix_encoder.trans.2.bias",
];

/// Every layer's prefix keys and values, f32, `[pre_seq_len][groups · kv_channels]` each.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixKv {
    pub len: usize,
    /// Per layer: (keys, values).
    pub layers: Vec<(Vec<f32>, Vec<f32>)>,
}

fn bad(root: &Path, tensor: &str, message: String) -> WeightsError {
    WeightsError::BadTensor { path: root.to_path_buf(), tensor: tensor.into(), message }
}

/// `x [rows, n] · wᵀ + b` for `w [m, n]`.
fn linear(x: &[f32], rows: usize, w: &[f32], b: &[f32], m: usize) -> Vec<f32> {
    let n = x.len() / rows.max(1);
    let mut out = vec![0f32; rows * m];
    for r in 0..rows {
        for j in 0..m {
            let dot: f64 =
                x[r * n..(r + 1) * n].iter().zip(&w[j * n..(j + 1) * n]).map(|(a, b)| *a as f64 * *b as f64).sum();
            out[r * m + j] = dot as f32 + b[j];
        }
    }
    out
}

/// The prefix of a model of `cfg` from its encoder's tensors (looked up by
/// official name with `get`), or `None` when there is no encoder.
pub fn prefix_kv<'a>(
    cfg: &ModelConfig,
    pre_seq_len: usize,
    get: impl Fn(&str) -> Option<&'a Tensor>,
    root: &Path,
) -> Result<Option<PrefixKv>, WeightsError> {
    let Some(embedding) = get(EMBEDDING) else { return Ok(None) };
    let kv_width = cfg.multi_query_group_num * cfg.kv_channels;
    let kv_size = cfg.num_layers * 2 * kv_width;
    let [rows, e] = embedding.shape[..] else {
        return Err(bad(root, EMBEDDING, format!("expected [pre_seq_len, width], found {:?}", embedding.shape)));
    };
    if rows != pre_seq_len {
        return Err(bad(root, EMBEDDING, format!("{rows} rows for pre_seq_len {pre_seq_len}")));
    }
    let mut x = embedding.to_f32()?;
    let trans: Vec<Option<&Tensor>> = TRANS.iter().map(|n| get(n)).collect();
    if trans.iter().any(|t| t.is_some()) {
        let [Some(w0), Some(b0), Some(w2), Some(b2)] = trans[..] else {
            return Err(bad(
                root,
                TRANS[0],
                "the projection MLP is incomplete (trans.0 and trans.2, weights and biases)".into(),
            ));
        };
        let (hidden, out) = (w0.shape.first().copied().unwrap_or(0), w2.shape.first().copied().unwrap_or(0));
        if w0.shape != [hidden, e] || b0.shape != [hidden] || w2.shape != [out, hidden] || b2.shape != [out] {
            return Err(bad(
                root,
                TRANS[0],
                format!(
                    "projection shapes {:?} {:?} {:?} {:?} do not chain from width {e}",
                    w0.shape, b0.shape, w2.shape, b2.shape
                ),
            ));
        }
        let h = linear(&x, rows, &w0.to_f32()?, &b0.to_f32()?, hidden);
        let h: Vec<f32> = h.iter().map(|v| v.tanh()).collect();
        x = linear(&h, rows, &w2.to_f32()?, &b2.to_f32()?, out);
    }
    let width = x.len() / rows.max(1);
    if width != kv_size {
        return Err(bad(
            root,
            EMBEDDING,
            format!(
                "the prefix encoder gives {width} values a position; this model needs {kv_size} \
             (layers {} × 2 × groups {} × kv_channels {})",
                cfg.num_layers, cfg.multi_query_group_num, cfg.kv_channels
            ),
        ));
    }
    let mut layers: Vec<(Vec<f32>, Vec<f32>)> = (0..cfg.num_layers)
        .map(|_| (Vec::with_capacity(rows * kv_width), Vec::with_capacity(rows * kv_width)))
        .collect();
    for p in 0..rows {
        let row = &x[p * kv_size..(p + 1) * kv_size];
        for (i, (k, v)) in layers.iter_mut().enumerate() {
            k.extend_from_slice(&row[(2 * i) * kv_width..(2 * i + 1) * kv_width]);
            v.extend_from_slice(&row[(2 * i + 1) * kv_width..(2 * i + 2) * kv_width]);
        }
    }
    Ok(Some(PrefixKv { len: rows, layers }))
}

/// A P-Tuning v2 checkpoint folder as the official scripts save it
/// (config.json with `pre_seq_len`, and the prefix encoder in
/// `pytorch_model.bin` or `model.safetensors`), for a base model of `cfg`.
pub fn open(dir: &Path, cfg: &ModelConfig) -> Result<PrefixKv, WeightsError> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| WeightsError::io(&cfg_path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| WeightsError::Config { path: cfg_path.clone(), message: e.to_string() })?;
    let pre_seq_len = json.get("pre_seq_len").and_then(|v| v.as_u64()).filter(|&n| n > 0).ok_or_else(|| {
        WeightsError::Config { path: cfg_path.clone(), message: "no pre_seq_len: not a P-Tuning v2 checkpoint".into() }
    })? as usize;
    for (field, ours) in [
        ("num_layers", cfg.num_layers),
        ("multi_query_group_num", cfg.multi_query_group_num),
        ("kv_channels", cfg.kv_channels),
    ] {
        if let Some(theirs) = json.get(field).and_then(|v| v.as_u64()) {
            if theirs as usize != ours {
                return Err(WeightsError::Config {
                    path: cfg_path.clone(),
                    message: format!(
                        "{field} is {theirs} here but {ours} in the base model: trained for another model"
                    ),
                });
            }
        }
    }
    let tensors = ["model.safetensors", "pytorch_model.bin"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| WeightsError::NoWeights { root: dir.to_path_buf() })
        .and_then(|p| {
            if p.extension().is_some_and(|e| e == "bin") {
                load_pytorch_bin(&p)
            } else {
                load_safetensors(&p)
            }
        })?;
    // The scripts save the encoder under its full name; accept it without the prefix too.
    let by_name: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|t| {
            let name = if t.name.starts_with("transformer.") {
                t.name.clone()
            } else {
                format!("transformer.prefix_encoder.{}", t.name)
            };
            (name, t)
        })
        .collect();
    prefix_kv(cfg, pre_seq_len, |n| by_name.get(n), dir)?
        .ok_or_else(|| bad(dir, EMBEDDING, "the checkpoint has no prefix encoder".into()))
}
