//! The official ChatGLM2 state-dict names and the shapes `config.json`
//! implies for them, in one table (the official order).

use crate::ModelConfig;

/// Token embeddings, `[padded_vocab, hidden]`.
pub const WORD_EMBEDDINGS: &str = "transformer.embedding.word_embeddings.weight";
/// RoPE inverse frequencies, `[kv_channels / 4]`: a persistent buffer the
/// math does not need (it is recomputed); may be absent.
pub const ROTARY_INV_FREQ: &str = "transformer.rotary_pos_emb.inv_freq";
/// Final RMSNorm weight, `[hidden]`.
pub const FINAL_LAYERNORM: &str = "transformer.encoder.final_layernorm.weight";
/// Output projection (not tied to the embeddings), `[padded_vocab, hidden]`.
pub const OUTPUT_LAYER: &str = "transformer.output_layer.weight";

/// RMSNorm before attention, `[hidden]`.
pub const INPUT_LAYERNORM: &str = "input_layernorm.weight";
/// Fused QKV projection, `[(heads + 2·groups)·head_dim, hidden]`.
pub const QKV_WEIGHT: &str = "self_attention.query_key_value.weight";
/// Fused QKV bias, `[(heads + 2·groups)·head_dim]` (when `add_qkv_bias`).
pub const QKV_BIAS: &str = "self_attention.query_key_value.bias";
/// Attention output projection, `[hidden, heads·head_dim]`.
pub const ATTENTION_DENSE: &str = "self_attention.dense.weight";
/// RMSNorm before the MLP, `[hidden]`.
pub const POST_ATTENTION_LAYERNORM: &str = "post_attention_layernorm.weight";
/// SwiGLU up projection (gate half then up half), `[2·ffn, hidden]`.
pub const DENSE_H_TO_4H: &str = "mlp.dense_h_to_4h.weight";
/// MLP down projection, `[hidden, ffn]`.
pub const DENSE_4H_TO_H: &str = "mlp.dense_4h_to_h.weight";

/// Full name of a per-layer tensor: `layer(3, QKV_BIAS)` =
/// `transformer.encoder.layers.3.self_attention.query_key_value.bias`.
pub fn layer(i: usize, suffix: &str) -> String {
    format!("transformer.encoder.layers.{i}.{suffix}")
}

/// The per-layer tensors (suffix, shape) in the official order.
pub fn layer_tensors(cfg: &ModelConfig) -> Vec<(&'static str, Vec<usize>)> {
    let h = cfg.hidden_size;
    let qkv = cfg.qkv_out_dim();
    let ffn = cfg.ffn_hidden_size;
    let mut out = vec![
        (INPUT_LAYERNORM, vec![h]),
        (QKV_WEIGHT, vec![qkv, h]),
        (QKV_BIAS, vec![qkv]),
        (ATTENTION_DENSE, vec![h, cfg.q_dim()]),
        (POST_ATTENTION_LAYERNORM, vec![h]),
        (DENSE_H_TO_4H, vec![ffn.saturating_mul(2), h]),
        (DENSE_4H_TO_H, vec![h, ffn]),
    ];
    if !cfg.add_qkv_bias {
        out.retain(|(suffix, _)| *suffix != QKV_BIAS);
    }
    out
}

/// Every tensor the model needs, with its shape, in the official order
/// (without the optional [`ROTARY_INV_FREQ`]).
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let h = cfg.hidden_size;
    let vocab = cfg.padded_vocab_size;
    let per_layer = layer_tensors(cfg);
    let mut out = Vec::with_capacity(3 + cfg.num_layers.min(1024) * per_layer.len());
    out.push((WORD_EMBEDDINGS.to_string(), vec![vocab, h]));
    for i in 0..cfg.num_layers {
        for (suffix, shape) in &per_layer {
            out.push((layer(i, suffix), shape.clone()));
        }
    }
    out.push((FINAL_LAYERNORM.to_string(), vec![h]));
    out.push((OUTPUT_LAYER.to_string(), vec![vocab, h]));
    out
}

/// Tensors that may be present and are then checked (name, shape).
pub fn optional_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    vec![(ROTARY_INV_FREQ.to_string(), vec![cfg.kv_channels / 4])]
}
