//! Quantizing on load: a matrix whose rows are not whole 32-weight blocks
//! stays f16 (as llama.cpp falls back) instead of failing the whole model.

mod common;

use chatglm_model::{Backend, CpuBackend, LoadOptions, Model, WeightFormat};
use common::{all_logits, random_model};

/// hidden 64 (rows of QKV, h→4h, output, embedding: whole blocks), ffn 80
/// (rows of 4h→h: not), 4 heads of 20 (rows of dense: 80, not).
const MIXED: &str = r#"{"num_layers":2,"hidden_size":64,"num_attention_heads":4,"kv_channels":20,
"multi_query_attention":true,"multi_query_group_num":2,"ffn_hidden_size":80,"padded_vocab_size":300,
"seq_length":256,"layernorm_epsilon":1e-5,"add_qkv_bias":true,"rmsnorm":true,"post_layer_norm":true,
"original_rope":true,"model_type":"chatglm"}"#;

#[test]
fn untiled_matrices_stay_f16_and_the_model_runs() {
    let src = random_model(MIXED, 3);
    let load = |f| Model::load(CpuBackend::for_config(&src.config), &src, LoadOptions::new(f), &mut |_, _| {});
    let q4 = load(WeightFormat::Q4_0).unwrap();
    let f16 = load(WeightFormat::F16).unwrap();
    let b = &q4.backend;
    for layer in &q4.weights.layers {
        assert_eq!(b.matrix_format(&layer.qkv), "q4_0");
        assert_eq!(b.matrix_format(&layer.h_to_4h), "q4_0");
        assert_eq!(b.matrix_format(&layer.dense), "f16");
        assert_eq!(b.matrix_format(&layer.four_h_to_h), "f16");
    }
    let ids: Vec<u32> = (0..20).map(|i| (i * 31) % 300).collect();
    let (a, r) = (all_logits(&q4, &ids), all_logits(&f16, &ids));
    let scale = r.iter().fold(1f32, |m, v| m.max(v.abs()));
    let d = a.iter().zip(&r).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(a.iter().all(|v| v.is_finite()));
    assert!(d < 0.5 * scale, "q4_0 with f16 fallbacks drifts {d} from f16 (logits up to {scale})");
}
