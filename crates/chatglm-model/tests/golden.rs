//! The forward pass against logits recorded from the official PyTorch code.

use chatglm_model::{CpuBackend, ForwardState, KvDType, LoadOptions, LogitsWanted, Model, SequenceInput, WeightFormat};
use chatglm_testdata::{argmax, dir as testdata, floats, golden, ids, max_abs_diff};
use chatglm_weights::Checkpoint;

fn load(layout: &str, format: WeightFormat) -> Model<CpuBackend> {
    let ckpt = Checkpoint::open(&testdata().join("dev/model").join(layout)).unwrap();
    let backend = CpuBackend::for_config(&ckpt.config);
    Model::load(backend, &ckpt, LoadOptions::new(format), &mut |_, _| {}).unwrap()
}

fn check_forward(layout: &str, format: WeightFormat, tol: f32, exact_argmax: bool) {
    let model = load(layout, format);
    let vocab = model.config.padded_vocab_size;
    let fw = golden("forward.json");
    let mut state = ForwardState::new(&model.backend);
    for case in fw["cases"].as_array().unwrap() {
        let input = ids(&case["input_ids"]);
        let mut cache = model.new_cache(KvDType::F32);
        let logits = model
            .forward(&mut state, &mut [SequenceInput { tokens: &input, cache: &mut cache, logits: LogitsWanted::All }])
            .unwrap();
        let n = input.len();
        assert_eq!(logits.len(), n * vocab);
        let first = &logits[..vocab];
        let last = &logits[(n - 1) * vocab..];
        let d1 = max_abs_diff(first, &floats(&case["logits_first"]));
        let d2 = max_abs_diff(last, &floats(&case["logits_last"]));
        assert!(d1 <= tol && d2 <= tol, "{layout} len {n}: first {d1}, last {d2} > {tol}");
        if exact_argmax {
            let want = ids(&case["argmax_per_position"]);
            let got: Vec<u32> = logits.chunks_exact(vocab).map(argmax).collect();
            assert_eq!(got, want, "{layout} len {n}: argmax per position");
        }
    }
}

#[test]
fn safetensors_f32_matches_official_logits() {
    check_forward("safetensors-f32", WeightFormat::Auto, 1e-4, true);
}

#[test]
fn pytorch_f32_matches_official_logits() {
    check_forward("pytorch-f32", WeightFormat::Auto, 1e-4, true);
}

#[test]
fn sharded_f16_matches_within_fp16_tolerance() {
    check_forward("safetensors-sharded-f16", WeightFormat::Auto, 2e-2, false);
}

#[test]
fn sharded_bf16_matches_within_bf16_tolerance() {
    check_forward("pytorch-sharded-bf16", WeightFormat::Auto, 0.15, false);
}

#[test]
fn incremental_decoding_matches_recorded_steps() {
    let model = load("safetensors-f32", WeightFormat::Auto);
    let g = golden("incremental.json");
    let tokens = ids(&g["token_ids"]);
    let prefill = g["prefill_len"].as_u64().unwrap() as usize;
    let steps = g["incremental"].as_array().unwrap();
    let mut state = ForwardState::new(&model.backend);
    let mut cache = model.new_cache(KvDType::F32);
    let logits = model
        .forward(
            &mut state,
            &mut [SequenceInput { tokens: &tokens[..prefill], cache: &mut cache, logits: LogitsWanted::Last }],
        )
        .unwrap()
        .to_vec();
    let d = max_abs_diff(&logits, &floats(&steps[0]));
    assert!(d <= 1e-4, "prefill: {d}");
    for (i, want) in steps.iter().enumerate().skip(1) {
        let tok = &tokens[prefill - 1 + i..prefill + i];
        let logits = model
            .forward(&mut state, &mut [SequenceInput { tokens: tok, cache: &mut cache, logits: LogitsWanted::Last }])
            .unwrap();
        let d = max_abs_diff(logits, &floats(want));
        assert!(d <= 1e-4, "step {i}: {d}");
    }
    assert_eq!(cache.len(), prefill + steps.len() - 1);
}

#[test]
fn chunk_after_prefill_matches_full_recompute() {
    let model = load("safetensors-f32", WeightFormat::Auto);
    let g = golden("incremental.json");
    let tokens = ids(&g["token_ids"]);
    let full = g["full_recompute"].as_array().unwrap();
    let mut state = ForwardState::new(&model.backend);
    let mut cache = model.new_cache(KvDType::F32);
    model
        .forward(
            &mut state,
            &mut [SequenceInput { tokens: &tokens[..7], cache: &mut cache, logits: LogitsWanted::None }],
        )
        .unwrap();
    let vocab = model.config.padded_vocab_size;
    let logits = model
        .forward(
            &mut state,
            &mut [SequenceInput { tokens: &tokens[7..12], cache: &mut cache, logits: LogitsWanted::All }],
        )
        .unwrap();
    // full_recompute[i] is position 6 + i, so positions 7..12 are rows 1..6.
    for (row, want) in logits.chunks_exact(vocab).zip(&full[1..6]) {
        let d = max_abs_diff(row, &floats(want));
        assert!(d <= 1e-4, "chunk: {d}");
    }
}

#[test]
fn batched_sequences_are_independent() {
    let model = load("safetensors-f32", WeightFormat::Auto);
    let fw = golden("forward.json");
    let cases = fw["cases"].as_array().unwrap();
    let a = ids(&cases[1]["input_ids"]);
    let b = ids(&cases[2]["input_ids"]);
    let mut state = ForwardState::new(&model.backend);
    let (mut ca, mut cb) = (model.new_cache(KvDType::F32), model.new_cache(KvDType::F32));
    let logits = model
        .forward(
            &mut state,
            &mut [
                SequenceInput { tokens: &a, cache: &mut ca, logits: LogitsWanted::Last },
                SequenceInput { tokens: &b, cache: &mut cb, logits: LogitsWanted::Last },
            ],
        )
        .unwrap();
    let vocab = model.config.padded_vocab_size;
    assert!(max_abs_diff(&logits[..vocab], &floats(&cases[1]["logits_last"])) <= 1e-4);
    assert!(max_abs_diff(&logits[vocab..], &floats(&cases[2]["logits_last"])) <= 1e-4);
}

#[test]
fn f16_kv_cache_stays_close() {
    let model = load("safetensors-f32", WeightFormat::Auto);
    let fw = golden("forward.json");
    let case = &fw["cases"].as_array().unwrap()[3];
    let input = ids(&case["input_ids"]);
    let mut state = ForwardState::new(&model.backend);
    let mut cache = model.new_cache(KvDType::F16);
    let logits = model
        .forward(&mut state, &mut [SequenceInput { tokens: &input, cache: &mut cache, logits: LogitsWanted::Last }])
        .unwrap();
    assert!(max_abs_diff(logits, &floats(&case["logits_last"])) <= 2e-2);
}

#[test]
fn errors_instead_of_panics() {
    let model = load("safetensors-f32", WeightFormat::Auto);
    let mut state = ForwardState::new(&model.backend);
    let mut cache = model.new_cache(KvDType::F32);
    let bad = [999_999u32];
    assert!(model
        .forward(&mut state, &mut [SequenceInput { tokens: &bad, cache: &mut cache, logits: LogitsWanted::Last }])
        .is_err());
    assert!(model
        .forward(&mut state, &mut [SequenceInput { tokens: &[], cache: &mut cache, logits: LogitsWanted::Last }])
        .is_err());
    let long = vec![5u32; model.config.seq_length + 1];
    assert!(model
        .forward(&mut state, &mut [SequenceInput { tokens: &long, cache: &mut cache, logits: LogitsWanted::Last }])
        .is_err());
}

/// A q8_0 KV cache stays close to an f32 one (synthetic model with 32-wide heads,
/// since the dev model's 16-wide heads cannot hold q8_0 blocks).
#[test]
fn q8_0_kv_cache_stays_close_to_f32() {
    let cfg = chatglm_model::Config::from_json_str(
        r#"{"num_layers":2,"hidden_size":64,"num_attention_heads":4,"kv_channels":32,"multi_query_attention":true,
        "multi_query_group_num":2,"ffn_hidden_size":96,"padded_vocab_size":256,"seq_length":256,"add_qkv_bias":true,
        "model_type":"chatglm"}"#,
    )
    .unwrap();
    let model = Model::synthetic(CpuBackend::for_config(&cfg), cfg, LoadOptions::new(WeightFormat::F32), 3);
    model.check_kv_dtype(KvDType::Q8_0).unwrap();
    let tokens: Vec<u32> = (0..48).map(|i| (i * 37 % 250) as u32 + 3).collect();
    let run = |dtype: KvDType| {
        let mut state = ForwardState::new(&model.backend);
        let mut cache = model.new_cache(dtype);
        let mut out = Vec::new();
        model
            .forward(
                &mut state,
                &mut [SequenceInput { tokens: &tokens[..40], cache: &mut cache, logits: LogitsWanted::None }],
            )
            .unwrap();
        for t in &tokens[40..] {
            let l = model
                .forward(
                    &mut state,
                    &mut [SequenceInput { tokens: &[*t], cache: &mut cache, logits: LogitsWanted::Last }],
                )
                .unwrap();
            out.extend_from_slice(l);
        }
        out
    };
    let exact = run(KvDType::F32);
    let q8 = run(KvDType::Q8_0);
    let scale = exact.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = max_abs_diff(&exact, &q8);
    assert!(d <= 0.02 * scale, "q8_0 KV drifts {d} (logit scale {scale})");
    // The dev model (16-wide heads) refuses it with a clear error.
    let dev = load("safetensors-f32", WeightFormat::Auto);
    assert!(dev.check_kv_dtype(KvDType::Q8_0).unwrap_err().to_string().contains("multiple of 32"));
}
