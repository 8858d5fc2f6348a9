//! The CUDA backend against the official logits and against the CPU backend
//! (the reference for every kernel) on random models of awkward shapes.
//!
//! Without a usable GPU each test prints that it was skipped; with
//! `CHATGLM_REQUIRE_GPU=1` a missing GPU fails instead (the GPU machine's
//! script sets it).
#![cfg(feature = "cuda")]

mod common;

use chatglm_model::{
    Backend, Config, CpuBackend, CudaBackend, ForwardState, GemvLean, KvCacheOps, KvDType, LoadOptions, LogitsWanted,
    Model, ModelError, SequenceInput, WeightFormat,
};
use chatglm_testdata::{argmax, dir as testdata, floats, golden, ids, max_abs_diff};
use chatglm_weights::Checkpoint;
use common::random_model;

/// The GPU backend for `cfg`, or `None` (with a message) where there is none.
fn cuda(cfg: &Config) -> Option<CudaBackend> {
    match CudaBackend::new(0, cfg) {
        Ok(b) => Some(b),
        Err(e) => {
            if std::env::var_os("CHATGLM_REQUIRE_GPU").is_some() {
                panic!("CHATGLM_REQUIRE_GPU is set but the GPU cannot be used: {e}");
            }
            eprintln!("skipped: no usable CUDA GPU ({e})");
            None
        }
    }
}

fn load_gpu(layout: &str, format: WeightFormat) -> Option<Model<CudaBackend>> {
    let ckpt = Checkpoint::open(&testdata().join("dev/model").join(layout)).unwrap();
    let backend = cuda(&ckpt.config)?;
    Some(Model::load(backend, &ckpt, LoadOptions::new(format), &mut |_, _| {}).unwrap())
}

fn check_forward(layout: &str, format: WeightFormat, kv: KvDType, tol: f32, exact_argmax: bool) {
    let Some(model) = load_gpu(layout, format) else { return };
    let vocab = model.config.padded_vocab_size;
    let fw = golden("forward.json");
    let mut state = ForwardState::new(&model.backend);
    for case in fw["cases"].as_array().unwrap() {
        let input = ids(&case["input_ids"]);
        let mut cache = model.new_cache(kv);
        let logits = model
            .forward(&mut state, &mut [SequenceInput { tokens: &input, cache: &mut cache, logits: LogitsWanted::All }])
            .unwrap();
        let n = input.len();
        let d1 = max_abs_diff(&logits[..vocab], &floats(&case["logits_first"]));
        let d2 = max_abs_diff(&logits[(n - 1) * vocab..], &floats(&case["logits_last"]));
        eprintln!("{layout} {kv:?} len {n}: max |Δ| first {d1:.2e}, last {d2:.2e}");
        assert!(d1 <= tol && d2 <= tol, "{layout} len {n}: first {d1}, last {d2} > {tol}");
        if exact_argmax {
            let got: Vec<u32> = logits.chunks_exact(vocab).map(argmax).collect();
            assert_eq!(got, ids(&case["argmax_per_position"]), "{layout} len {n}: argmax per position");
        }
    }
}

#[test]
fn gpu_safetensors_f32_matches_official_logits() {
    check_forward("safetensors-f32", WeightFormat::Auto, KvDType::F32, 1e-4, true);
}

#[test]
fn gpu_pytorch_f32_matches_official_logits() {
    check_forward("pytorch-f32", WeightFormat::Auto, KvDType::F32, 1e-4, true);
}

#[test]
fn gpu_sharded_f16_matches_within_fp16_tolerance() {
    check_forward("safetensors-sharded-f16", WeightFormat::Auto, KvDType::F16, 2e-2, false);
}

#[test]
fn gpu_sharded_bf16_matches_within_bf16_tolerance() {
    check_forward("pytorch-sharded-bf16", WeightFormat::Auto, KvDType::F16, 0.15, false);
}

#[test]
fn gpu_incremental_decoding_matches_recorded_steps() {
    let Some(model) = load_gpu("safetensors-f32", WeightFormat::Auto) else { return };
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
    assert!(max_abs_diff(&logits, &floats(&steps[0])) <= 1e-4);
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
fn gpu_chunk_after_prefill_matches_full_recompute() {
    let Some(model) = load_gpu("safetensors-f32", WeightFormat::Auto) else { return };
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
    for (row, want) in logits.chunks_exact(vocab).zip(&full[1..6]) {
        let d = max_abs_diff(row, &floats(want));
        assert!(d <= 1e-4, "chunk: {d}");
    }
}

#[test]
fn gpu_batched_sequences_are_independent() {
    let Some(model) = load_gpu("safetensors-f32", WeightFormat::Auto) else { return };
    let fw = golden("forward.json");
    let cases = fw["cases"].as_array().unwrap();
    let a = ids(&cases[1]["input_ids"]);
    let b = ids(&cases[3]["input_ids"]);
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
    assert!(max_abs_diff(&logits[vocab..], &floats(&cases[3]["logits_last"])) <= 1e-4);
}

#[test]
fn gpu_errors_instead_of_panics() {
    let Some(model) = load_gpu("safetensors-f32", WeightFormat::Auto) else { return };
    let mut state = ForwardState::new(&model.backend);
    let mut cache = model.new_cache(KvDType::F32);
    let too_long = vec![5u32; model.config.seq_length + 1];
    let e = model
        .forward(&mut state, &mut [SequenceInput { tokens: &too_long, cache: &mut cache, logits: LogitsWanted::Last }]);
    assert!(matches!(e, Err(ModelError::ContextOverflow { .. })), "{:?}", e.err());
    let mut q8 = model.new_cache(KvDType::Q8_0);
    let e =
        model.forward(&mut state, &mut [SequenceInput { tokens: &[5, 6], cache: &mut q8, logits: LogitsWanted::Last }]);
    assert!(e.is_err());
    // Still usable afterwards.
    let ok = model
        .forward(&mut state, &mut [SequenceInput { tokens: &[5, 6], cache: &mut cache, logits: LogitsWanted::Last }]);
    assert!(ok.is_ok());
}

// ---- CPU vs GPU on random models of awkward shapes -------------------------

/// A head size of 128 with 64-token blocks takes the tensor-core prefill
/// path; ffn 350 is not a multiple of 8 (the scalar mat-vec); 3 groups of 4
/// heads.
const FLASH_SHAPE: &str = r#"{"num_layers":2,"hidden_size":384,"num_attention_heads":12,"kv_channels":128,
"multi_query_attention":true,"multi_query_group_num":3,"ffn_hidden_size":350,"padded_vocab_size":1000,
"seq_length":4096,"layernorm_epsilon":1e-5,"add_qkv_bias":true,"rmsnorm":true,"post_layer_norm":true,
"original_rope":true,"model_type":"chatglm"}"#;

/// The 6B model's head layout (32 heads of 128 in 2 groups) at a small width.
const GLM_HEADS: &str = r#"{"num_layers":1,"hidden_size":4096,"num_attention_heads":32,"kv_channels":128,
"multi_query_attention":true,"multi_query_group_num":2,"ffn_hidden_size":1024,"padded_vocab_size":512,
"seq_length":40000,"layernorm_epsilon":1e-5,"add_qkv_bias":true,"rmsnorm":true,"post_layer_norm":true,
"original_rope":true,"model_type":"chatglm"}"#;

/// Odd sizes everywhere: head 20, 5 heads in 1 group, hidden 100.
const ODD_SHAPE: &str = r#"{"num_layers":2,"hidden_size":100,"num_attention_heads":5,"kv_channels":20,
"multi_query_attention":true,"multi_query_group_num":1,"ffn_hidden_size":77,"padded_vocab_size":333,
"seq_length":1024,"layernorm_epsilon":1e-5,"add_qkv_bias":true,"rmsnorm":true,"post_layer_norm":true,
"original_rope":true,"model_type":"chatglm"}"#;

/// Runs the same schedule of steps on both backends and compares every
/// step's logits: `steps[i]` lists, per sequence, how many new tokens it
/// gets in step i (0 = not in the step).
fn compare_schedule(json: &str, format: WeightFormat, kv: KvDType, steps: &[Vec<usize>], tol: f32) {
    // Every mat-vec block shape (the device picks one per matrix size):
    // 4 rows, 8 rows held to 5 blocks per SM (one token) and 8 rows.
    for (rows, lean) in [(4, GemvLean::Never), (8, GemvLean::Always), (8, GemvLean::Never)] {
        let setup = GpuSetup { gemv_rows: rows, gemv_lean: lean, ..GpuSetup::default() };
        compare_schedule_with(json, format, kv, steps, tol, setup);
    }
}

/// How the GPU backend of a compared schedule is set up.
struct GpuSetup<'a> {
    /// Mat-vec rows per block (`CudaBackend::force_gemv_rows`; 0: the device's choice).
    gemv_rows: usize,
    gemv_lean: GemvLean,
    /// The quantized products' activations (`CudaBackend::set_gpu_activations`).
    activations: &'a str,
    /// `CudaBackend::set_short_attention` (None: the default).
    short_attention: Option<usize>,
    /// `CudaBackend::set_short_attention_blocks` (None: the default).
    short_blocks: Option<(usize, usize)>,
}

impl Default for GpuSetup<'_> {
    fn default() -> Self {
        Self {
            gemv_rows: 0,
            gemv_lean: GemvLean::ByShape,
            activations: "q8",
            short_attention: None,
            short_blocks: None,
        }
    }
}

/// CPU and GPU logits of the same schedule, step by step, the GPU backend
/// set up as `setup` says.
fn compare_schedule_with(
    json: &str,
    format: WeightFormat,
    kv: KvDType,
    steps: &[Vec<usize>],
    tol: f32,
    setup: GpuSetup,
) {
    let GpuSetup { gemv_rows, gemv_lean, activations, short_attention, short_blocks } = setup;
    let src = random_model(json, 42);
    let Some(gpu_backend) = cuda(&src.config) else { return };
    gpu_backend.force_gemv_rows(gemv_rows);
    gpu_backend.set_gemv_lean(gemv_lean);
    gpu_backend.set_gpu_activations(activations).unwrap();
    if let Some(limit) = short_attention {
        gpu_backend.set_short_attention(limit);
    }
    if let Some((subs, warps)) = short_blocks {
        gpu_backend.set_short_attention_blocks(subs, warps).unwrap();
    }
    let cpu = Model::load(CpuBackend::for_config(&src.config), &src, LoadOptions::new(format), &mut |_, _| {}).unwrap();
    let gpu = Model::load(gpu_backend, &src, LoadOptions::new(format), &mut |_, _| {}).unwrap();
    let n_seqs = steps.iter().map(|s| s.len()).max().unwrap();
    let vocab = src.config.padded_vocab_size;
    let mut tok_state = 7u32;
    let mut next_tok = move || {
        tok_state = tok_state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (tok_state >> 8) % vocab as u32
    };
    let mut cpu_caches: Vec<_> = (0..n_seqs).map(|_| cpu.new_cache(kv)).collect();
    let mut gpu_caches: Vec<_> = (0..n_seqs).map(|_| gpu.new_cache(kv)).collect();
    let (mut cs, mut gs) = (ForwardState::new(&cpu.backend), ForwardState::new(&gpu.backend));
    for (i, step) in steps.iter().enumerate() {
        let tokens: Vec<Vec<u32>> = step.iter().map(|&n| (0..n).map(|_| next_tok()).collect()).collect();
        let mut cb: Vec<_> = cpu_caches
            .iter_mut()
            .zip(&tokens)
            .filter(|(_, t)| !t.is_empty())
            .map(|(c, t)| SequenceInput { tokens: t, cache: c, logits: LogitsWanted::All })
            .collect();
        let want = cpu.forward(&mut cs, &mut cb).unwrap().to_vec();
        let mut gb: Vec<_> = gpu_caches
            .iter_mut()
            .zip(&tokens)
            .filter(|(_, t)| !t.is_empty())
            .map(|(c, t)| SequenceInput { tokens: t, cache: c, logits: LogitsWanted::All })
            .collect();
        let got = gpu.forward(&mut gs, &mut gb).unwrap();
        let d = max_abs_diff(got, &want);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!(
            "{format:?} {kv:?} {gemv_rows}-row mat-vec, step {i} {step:?}: max |Δ| {d:.3e} (logits up to {scale:.2})"
        );
        assert!(d <= tol * scale.max(1.0), "{format:?} step {i} {step:?}: max |Δ| {d} > {tol} × {scale}");
    }
    for (c, g) in cpu_caches.iter().zip(&gpu_caches) {
        assert_eq!(c.len(), g.len());
    }
    if let Some(limit) = short_attention {
        let launches = gpu.backend.short_attention_launches();
        assert_eq!(launches > 0, limit > 0, "short-context attention limit {limit}: {launches} launches");
    }
}

#[test]
fn gpu_matches_cpu_f32_prefill_decode_across_blocks() {
    // Sequence 0: prefill 70 (crosses a block), then decode; sequence 1 joins
    // later with a 1-token prompt, then a 130-token chunk.
    let steps = vec![vec![70], vec![1], vec![1, 1], vec![3, 130], vec![1, 1], vec![9, 1]];
    compare_schedule(FLASH_SHAPE, WeightFormat::F32, KvDType::F32, &steps, 1e-4);
    compare_schedule(ODD_SHAPE, WeightFormat::F32, KvDType::F32, &steps, 1e-4);
}

#[test]
fn gpu_matches_cpu_f16_tensor_core_prefill() {
    // 16+ new tokens of an f16 cache take the tensor-core kernel: prompts of
    // odd lengths, a chunk continuing a cache at an unaligned position, and
    // decode beside them.
    let steps = vec![vec![200, 1], vec![1, 16], vec![65, 1], vec![1, 1, 17], vec![1, 100, 1]];
    compare_schedule(FLASH_SHAPE, WeightFormat::F16, KvDType::F16, &steps, 2e-2);
}

#[test]
fn gpu_matches_cpu_bf16_and_odd_shapes() {
    let steps = vec![vec![33, 5], vec![1, 1], vec![12, 1]];
    compare_schedule(ODD_SHAPE, WeightFormat::BF16, KvDType::F16, &steps, 2e-2);
    compare_schedule(ODD_SHAPE, WeightFormat::F16, KvDType::F32, &steps, 2e-2);
}

#[test]
fn gpu_q8_0_kv_cache_matches_the_cpu_s() {
    // Rows quantized on the GPU as the CPU quantizes them (34 bytes per 32
    // values, the same codes and f16 scales); keys and values dequantized in
    // the attention. Prompts crossing blocks, a 700-token chunk whose decode
    // splits the context, sequences decoding beside chunks; f32, f16 and
    // int4 weights. A value that lands on a rounding edge of its block may
    // take the neighbouring code (its f32 input differs in the last bits).
    let steps = vec![vec![70, 1], vec![1, 1], vec![3, 130], vec![1, 700], vec![1, 1], vec![9, 1]];
    compare_schedule(FLASH_SHAPE, WeightFormat::F32, KvDType::Q8_0, &steps, 1e-2);
    compare_schedule(GLM_HEADS, WeightFormat::F16, KvDType::Q8_0, &steps, 2e-2);
    compare_schedule_with(GLM_HEADS, WeightFormat::Q4_0, KvDType::Q8_0, &steps, 4e-2, GpuSetup::default());
}

#[test]
fn gpu_q8_0_kv_cache_with_a_p_tuning_prefix_matches_the_cpu_s() {
    // Prefix rows quantized on the host (136-byte rows of the 6B head size,
    // copied into the blocks 8 bytes at a time) in front of the tokens; a
    // prompt that crosses a block, then decoding.
    let src = random_model(GLM_HEADS, 5);
    let Some(gpu_backend) = cuda(&src.config) else { return };
    let width = src.config.multi_query_group_num * src.config.kv_channels;
    let rows = 21;
    let mut state = 9u32;
    let mut value = move || {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        ((state >> 9) % 2001) as f32 / 1000.0 - 1.0
    };
    let layers = (0..src.config.num_layers)
        .map(|_| ((0..rows * width).map(|_| value()).collect(), (0..rows * width).map(|_| value()).collect()))
        .collect();
    let prefix = chatglm_weights::ptuning::PrefixKv { len: rows, layers };
    let mut cpu =
        Model::load(CpuBackend::for_config(&src.config), &src, LoadOptions::new(WeightFormat::F16), &mut |_, _| {})
            .unwrap();
    let mut gpu = Model::load(gpu_backend, &src, LoadOptions::new(WeightFormat::F16), &mut |_, _| {}).unwrap();
    cpu.set_prefix(Some(prefix.clone())).unwrap();
    gpu.set_prefix(Some(prefix)).unwrap();
    let tokens: Vec<u32> = (0..80).map(|i| (i * 37 + 11) % src.config.padded_vocab_size as u32).collect();
    let (mut cs, mut gs) = (ForwardState::new(&cpu.backend), ForwardState::new(&gpu.backend));
    let (mut cc, mut gc) = (cpu.new_cache(KvDType::Q8_0), gpu.new_cache(KvDType::Q8_0));
    for chunk in std::iter::once(&tokens[..70]).chain(tokens[70..].chunks(1)) {
        let want = cpu
            .forward(&mut cs, &mut [SequenceInput { tokens: chunk, cache: &mut cc, logits: LogitsWanted::Last }])
            .unwrap()
            .to_vec();
        let got = gpu
            .forward(&mut gs, &mut [SequenceInput { tokens: chunk, cache: &mut gc, logits: LogitsWanted::Last }])
            .unwrap()
            .to_vec();
        let d = max_abs_diff(&got, &want);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!(
            "q8_0 KV with a {rows}-row prefix, {} tokens: max |Δ| {d:.3e} (logits up to {scale:.2})",
            chunk.len()
        );
        assert!(d <= 2e-2 * scale.max(1.0), "max |Δ| {d} against logits up to {scale}");
    }
    assert_eq!(gc.len(), tokens.len());
}

#[test]
fn gpu_q8_0_kv_cache_needs_whole_blocks_per_head() {
    // A head of 20 values cannot hold whole q8_0 blocks: a clear error.
    let src = random_model(ODD_SHAPE, 3);
    let Some(gpu_backend) = cuda(&src.config) else { return };
    let gpu = Model::load(gpu_backend, &src, LoadOptions::new(WeightFormat::F32), &mut |_, _| {}).unwrap();
    let mut state = ForwardState::new(&gpu.backend);
    let mut cache = gpu.new_cache(KvDType::Q8_0);
    let e = gpu
        .forward(&mut state, &mut [SequenceInput { tokens: &[5, 6], cache: &mut cache, logits: LogitsWanted::Last }]);
    let message = e.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("multiple of 32"), "{message}");
}

#[test]
fn gpu_quantized_products_match_cpu_for_every_format() {
    // Steps of 1..8 tokens quantize x inside the product, 9..64 in a launch
    // of their own (2, 4 and 8 token tiles), more dequantize for cuBLAS;
    // FLASH_SHAPE's 350-wide FFN keeps dense_4h_to_h in f16 (not whole
    // blocks) and its SwiGLU halves are not whole tiles (the unfused path),
    // GLM_HEADS has whole tiles everywhere (the fused SwiGLU and QKV).
    // Both sides quantize activations to 8 bits (the kernel test holds the
    // products to 1e-4 of the host reference), but from RMSNorms summed in
    // f32 here and f64 there: an activation that lands on a rounding edge
    // takes the neighbouring code, which moves logits by up to ~2% of their
    // range; steps past 64 tokens multiply f16 activations by dequantized
    // weights instead. Exact agreement is asserted where it must hold:
    // greedy ids (cuda_generate) and the official checkpoints.
    let small = vec![vec![1], vec![3, 5], vec![1, 1], vec![2, 2]];
    // The CPU's multi-token kernels (≥ 16 tokens) take f32 activations.
    let large = vec![vec![3, 9], vec![17, 1], vec![40, 24], vec![100, 1], vec![1, 1], vec![2, 70]];
    // Steps of 12 sequences: a prompt step, then decode steps, in q8_0 codes
    // and with f16 activations for the decode steps.
    let batched = vec![vec![3; 12], vec![1; 12], vec![1; 12], vec![1; 12]];
    // Decode steps of 24 sequences over f16 activations: the qmmx module's
    // products of 17–32 tokens.
    let batched24 = vec![vec![3; 24], vec![1; 24], vec![1; 24]];
    for format in [WeightFormat::Q8_0, WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q5_0, WeightFormat::Q5_1] {
        for shape in [FLASH_SHAPE, GLM_HEADS] {
            compare_schedule_with(shape, format, KvDType::F16, &small, 4e-2, GpuSetup::default());
            compare_schedule_with(shape, format, KvDType::F16, &large, 4e-2, GpuSetup::default());
            for activations in ["q8", "batched"] {
                let setup = GpuSetup { activations, ..GpuSetup::default() };
                compare_schedule_with(shape, format, KvDType::F16, &batched, 4e-2, setup);
            }
            let setup = GpuSetup { activations: "batched", ..GpuSetup::default() };
            compare_schedule_with(shape, format, KvDType::F16, &batched24, 4e-2, setup);
        }
    }
}

#[test]
fn gpu_official_int4_and_int8_checkpoints_match_the_cpu_and_their_reference() {
    for bits in [4, 8] {
        let dir = common::official_quant(&format!("chatglm2-int{bits}-tiny"));
        let q = Checkpoint::open(&dir).unwrap();
        let r = Checkpoint::open(&common::official_quant(&format!("chatglm2-int{bits}-tiny-dequantized"))).unwrap();
        let Some(gpu_backend) = cuda(&q.config) else { return };
        let gpu = Model::load(gpu_backend, &q, LoadOptions::new(WeightFormat::Auto), &mut |_, _| {}).unwrap();
        let cpu =
            Model::load(CpuBackend::for_config(&q.config), &q, LoadOptions::new(WeightFormat::Auto), &mut |_, _| {})
                .unwrap();
        let reference =
            Model::load(CpuBackend::for_config(&r.config), &r, LoadOptions::new(WeightFormat::F32), &mut |_, _| {})
                .unwrap();
        let ids: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % q.config.padded_vocab_size as u32).collect();
        let g = common::all_logits(&gpu, &ids);
        let (d, scale) = common::diff_and_scale(&g, &common::all_logits(&cpu, &ids));
        eprintln!("official int{bits}: GPU vs CPU max |Δ| {d:.3e} (logits up to {scale:.2})");
        assert!(d <= 1e-3 * scale.max(1.0), "int{bits} GPU vs CPU: {d}");
        let (d, scale) = common::diff_and_scale(&g, &common::all_logits(&reference, &ids));
        eprintln!("official int{bits}: GPU vs dequantized reference max |Δ| {d:.3e}");
        assert!(d <= 3e-2 * scale.max(1.0), "int{bits} GPU vs reference: {d}");
    }
}

#[test]
fn gpu_batched_decode_with_16_heads_per_group_matches_cpu() {
    // The 6B head layout takes the tensor-core decode kernel: prompts under
    // 16 tokens (one decode-kernel row per token, partial key tiles), contexts
    // either side of 16, 64 and 128 keys, and sequences leaving and joining.
    let steps = vec![
        vec![15, 1, 129, 64],
        vec![1, 1, 1, 1],
        vec![1, 0, 1, 1],
        vec![2, 1, 0, 1],
        vec![1, 1, 1, 1, 16],
        vec![1, 1, 1, 1, 1],
        // 74 rows for the decode kernel: enough blocks for its 4-warp form.
        vec![14, 15, 15, 15, 15],
        vec![1, 1, 1, 1, 1],
    ];
    compare_schedule(GLM_HEADS, WeightFormat::F16, KvDType::F16, &steps, 2e-2);
    // The same steps through each decode-attention kernel: the tensor-core
    // one alone, and the short-context one at every length (the 129-key
    // contexts take two tiles a warp).
    for short_attention in [0, usize::MAX] {
        let setup = GpuSetup { short_attention: Some(short_attention), ..GpuSetup::default() };
        compare_schedule_with(GLM_HEADS, WeightFormat::F16, KvDType::F16, &steps, 2e-2, setup);
    }
    // The short kernel with its heads split over 2 and 16 blocks a group
    // (fewer as the steps' tokens grow), of 8 and 4 warps.
    for blocks in [(2, 8), (16, 4), (4, 4)] {
        let setup = GpuSetup { short_attention: Some(usize::MAX), short_blocks: Some(blocks), ..GpuSetup::default() };
        compare_schedule_with(GLM_HEADS, WeightFormat::F16, KvDType::F16, &steps, 2e-2, setup);
    }
}

#[test]
fn gpu_cache_on_engine_block_ids_matches_cpu() {
    // The engine's allocator hands out block ids; a cache given ids out of
    // order reads and writes exactly those blocks (others stay untouched).
    let src = random_model(FLASH_SHAPE, 5);
    let Some(gpu_backend) = cuda(&src.config) else { return };
    let cpu =
        Model::load(CpuBackend::for_config(&src.config), &src, LoadOptions::new(WeightFormat::F16), &mut |_, _| {})
            .unwrap();
    let gpu = Model::load(gpu_backend, &src, LoadOptions::new(WeightFormat::F16), &mut |_, _| {}).unwrap();
    let block = gpu.backend.kv_block_tokens().unwrap();
    gpu.backend.provide_kv_blocks(KvDType::F16, 16).unwrap();
    let (mut cc, mut gc, mut other) =
        (cpu.new_cache(KvDType::F16), gpu.new_cache(KvDType::F16), gpu.new_cache(KvDType::F16));
    let (mut cs, mut gs) = (ForwardState::new(&cpu.backend), ForwardState::new(&gpu.backend));
    let prompt: Vec<u32> = (0..150u32).map(|i| (i * 37) % 1000).collect();
    let ids = [9u32, 3, 12, 0];
    gc.use_blocks(&ids[..prompt.len().div_ceil(block)]).unwrap();
    // A second sequence on other blocks, run in between, must not disturb it.
    other.use_blocks(&[1, 2]).unwrap();
    let mut step = |tokens: &[u32], cc: &mut chatglm_model::KvCache, gc: &mut chatglm_model::CudaKvCache| {
        let want = cpu
            .forward(&mut cs, &mut [SequenceInput { tokens, cache: cc, logits: LogitsWanted::Last }])
            .unwrap()
            .to_vec();
        let got = gpu
            .forward(&mut gs, &mut [SequenceInput { tokens, cache: gc, logits: LogitsWanted::Last }])
            .unwrap()
            .to_vec();
        let d = max_abs_diff(&got, &want);
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        eprintln!("engine blocks {:?}, {} tokens: max |Δ| {d:.3e}", &ids, cc.len());
        assert!(d <= 2e-2 * scale);
    };
    step(&prompt, &mut cc, &mut gc);
    let mut ignored = ForwardState::new(&gpu.backend);
    gpu.forward(
        &mut ignored,
        &mut [SequenceInput { tokens: &[7; 100], cache: &mut other, logits: LogitsWanted::None }],
    )
    .unwrap();
    for t in [5u32, 6, 7] {
        step(&[t], &mut cc, &mut gc);
    }
    // Growing past the given blocks needs more ids first.
    gc.use_blocks(&ids).unwrap();
    step(&(0..60u32).collect::<Vec<_>>(), &mut cc, &mut gc);
    // Ids outside the provided blocks, and too few blocks for the step, are errors.
    assert!(gpu.new_cache(KvDType::F16).use_blocks(&[16]).is_err());
    let mut short = gpu.new_cache(KvDType::F16);
    short.use_blocks(&[4]).unwrap();
    let tokens: Vec<u32> = (0..block as u32 + 1).collect();
    let err =
        gpu.forward(&mut gs, &mut [SequenceInput { tokens: &tokens, cache: &mut short, logits: LogitsWanted::None }]);
    assert!(err.is_err(), "a step past the engine's blocks ran");
}

#[test]
fn gpu_long_context_decode_uses_split_attention() {
    // The 6B head layout; decode at a 5000-token context is split over many
    // blocks of the device and merged.
    let src = random_model(GLM_HEADS, 9);
    let Some(gpu_backend) = cuda(&src.config) else { return };
    let cpu =
        Model::load(CpuBackend::for_config(&src.config), &src, LoadOptions::new(WeightFormat::F16), &mut |_, _| {})
            .unwrap();
    let gpu = Model::load(gpu_backend, &src, LoadOptions::new(WeightFormat::F16), &mut |_, _| {}).unwrap();
    let prompt: Vec<u32> = (0..5000u32).map(|i| (i * 7919) % 512).collect();
    let (mut cc, mut gc) = (cpu.new_cache(KvDType::F16), gpu.new_cache(KvDType::F16));
    let (mut cs, mut gs) = (ForwardState::new(&cpu.backend), ForwardState::new(&gpu.backend));
    for chunk in prompt.chunks(1000) {
        cpu.forward(&mut cs, &mut [SequenceInput { tokens: chunk, cache: &mut cc, logits: LogitsWanted::None }])
            .unwrap();
        gpu.forward(&mut gs, &mut [SequenceInput { tokens: chunk, cache: &mut gc, logits: LogitsWanted::None }])
            .unwrap();
    }
    for t in [3u32, 77, 400, 9] {
        // The last token through the short-context kernel: 5,000 keys, ~20
        // pairs of tiles a warp.
        let short = t == 9;
        gpu.backend.set_short_attention(if short { usize::MAX } else { 0 });
        let launches = gpu.backend.short_attention_launches();
        let want = cpu
            .forward(&mut cs, &mut [SequenceInput { tokens: &[t], cache: &mut cc, logits: LogitsWanted::Last }])
            .unwrap()
            .to_vec();
        let got = gpu
            .forward(&mut gs, &mut [SequenceInput { tokens: &[t], cache: &mut gc, logits: LogitsWanted::Last }])
            .unwrap();
        let d = max_abs_diff(got, &want);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        eprintln!("decode at {} (short kernel: {short}): max |Δ| {d:.3e} (logits up to {scale:.2})", gc.len());
        assert!(d <= 2e-2 * scale.max(1.0));
        assert_eq!(gpu.backend.short_attention_launches() > launches, short);
    }
    // Truncating hands blocks back; the cache keeps working.
    gc.truncate(100);
    cc.truncate(100);
    let want = cpu
        .forward(&mut cs, &mut [SequenceInput { tokens: &[5], cache: &mut cc, logits: LogitsWanted::Last }])
        .unwrap()
        .to_vec();
    let got = gpu
        .forward(&mut gs, &mut [SequenceInput { tokens: &[5], cache: &mut gc, logits: LogitsWanted::Last }])
        .unwrap();
    assert!(max_abs_diff(got, &want) <= 2e-2 * want.iter().fold(1f32, |m, v| m.max(v.abs())));
    let _ = gpu.backend.name();
}

#[test]
fn gpu_graph_replay_and_greedy_tokens_match_eager_launches() {
    // Decode steps are replayed from CUDA graphs: the logits must be the same
    // bits as launching the kernels one by one, across contexts that cross
    // cache blocks and change the split count; forward_greedy must return
    // the greedy token of those logits.
    let src = random_model(FLASH_SHAPE, 21);
    let Some(backend) = cuda(&src.config) else { return };
    let gpu = Model::load(backend, &src, LoadOptions::new(WeightFormat::F16), &mut |_, _| {}).unwrap();
    let prompt: Vec<u32> = (0..300u32).map(|i| (i * 31 + 7) % 1000).collect();
    let mut caches: Vec<_> = (0..3).map(|_| gpu.new_cache(KvDType::F16)).collect();
    let mut state = ForwardState::new(&gpu.backend);
    for c in caches.iter_mut() {
        gpu.forward(&mut state, &mut [SequenceInput { tokens: &prompt, cache: c, logits: LogitsWanted::None }])
            .unwrap();
    }
    let before = gpu.backend.graph_stats();
    let mut token = 11u32;
    for step in 0..70 {
        let [eager, replayed, greedy] = &mut caches[..] else { unreachable!() };
        gpu.backend.set_graphs(false);
        let want = gpu
            .forward(&mut state, &mut [SequenceInput { tokens: &[token], cache: eager, logits: LogitsWanted::Last }])
            .unwrap()
            .to_vec();
        gpu.backend.set_graphs(true);
        let got = gpu
            .forward(&mut state, &mut [SequenceInput { tokens: &[token], cache: replayed, logits: LogitsWanted::Last }])
            .unwrap()
            .to_vec();
        assert_eq!(got, want, "graph replay differs from eager launches at step {step}");
        let ids = gpu
            .forward_greedy(
                &mut state,
                &mut [SequenceInput { tokens: &[token], cache: greedy, logits: LogitsWanted::Last }],
            )
            .unwrap();
        assert_eq!(ids, &[chatglm_model::greedy_token(&want)], "step {step}");
        token = ids[0];
    }
    let after = gpu.backend.graph_stats();
    eprintln!("graphs: {before:?} -> {after:?}");
    assert!(after.replays >= before.replays + 100, "decode steps were not replayed: {after:?}");
    // A batch of sequences at different lengths replays as one graph too.
    let [a, b, c] = &mut caches[..] else { unreachable!() };
    c.truncate(5);
    let mut batch = [
        SequenceInput { tokens: &[1], cache: a, logits: LogitsWanted::Last },
        SequenceInput { tokens: &[2], cache: b, logits: LogitsWanted::Last },
        SequenceInput { tokens: &[3], cache: c, logits: LogitsWanted::Last },
    ];
    let ids = gpu.forward_greedy(&mut state, &mut batch).unwrap().to_vec();
    assert_eq!(ids.len(), 3);
}

#[test]
fn gpu_batched_decode_replays_graphs_bit_for_bit() {
    // Batched decode steps replayed from graphs (quantized products in our
    // kernels, float ones through cuBLASLt recorded with them): the logits
    // must be the same bits as launching one by one, for sequences at
    // different lengths crossing cache blocks.
    // The 6B head layout (the 16-heads-a-group tensor-core attention, widths
    // cuBLASLt has algorithms for) in two layers: two QKV products of one
    // shape with different biases in one graph; and FLASH_SHAPE's groups of 4.
    let glm2 = GLM_HEADS.replace("\"num_layers\":1", "\"num_layers\":2");
    for (shape, format) in
        [(&glm2[..], WeightFormat::F16), (&glm2[..], WeightFormat::Q4_0), (FLASH_SHAPE, WeightFormat::Q4_0)]
    {
        batched_decode_replays_bit_for_bit(shape, format);
    }
}

fn batched_decode_replays_bit_for_bit(shape: &str, format: WeightFormat) {
    let src = random_model(shape, 23);
    let Some(backend) = cuda(&src.config) else { return };
    let gpu = Model::load(backend, &src, LoadOptions::new(format), &mut |_, _| {}).unwrap();
    gpu.backend.set_batched_graphs(true);
    let vocab = src.config.padded_vocab_size;
    let n_seqs = 5u32;
    let mut eager: Vec<_> = (0..n_seqs).map(|_| gpu.new_cache(KvDType::F16)).collect();
    let mut replayed: Vec<_> = (0..n_seqs).map(|_| gpu.new_cache(KvDType::F16)).collect();
    let mut state = ForwardState::new(&gpu.backend);
    for (i, (e, r)) in eager.iter_mut().zip(replayed.iter_mut()).enumerate() {
        let i = i as u32;
        let prompt: Vec<u32> = (0..40 + 17 * i).map(|j| (j * 13 + i) % src.config.padded_vocab_size as u32).collect();
        for c in [e, r] {
            gpu.forward(&mut state, &mut [SequenceInput { tokens: &prompt, cache: c, logits: LogitsWanted::None }])
                .unwrap();
        }
    }
    let before = gpu.backend.graph_stats();
    let mut tokens: Vec<u32> = (0..n_seqs).map(|i| 5 + i).collect();
    for step in 0..40 {
        let mut run = |caches: &mut Vec<_>, graphs: bool| {
            gpu.backend.set_graphs(graphs);
            let mut batch: Vec<_> = caches
                .iter_mut()
                .zip(&tokens)
                .map(|(cache, t)| SequenceInput { tokens: std::slice::from_ref(t), cache, logits: LogitsWanted::Last })
                .collect();
            gpu.forward(&mut state, &mut batch).unwrap().to_vec()
        };
        let want = run(&mut eager, false);
        let got = run(&mut replayed, true);
        assert_eq!(want.len(), n_seqs as usize * vocab);
        assert!(got == want, "{format:?}: graph replay of a batched step differs from eager launches at step {step}");
        tokens = want.chunks(vocab).map(chatglm_model::greedy_token).collect();
    }
    let after = gpu.backend.graph_stats();
    eprintln!("{format:?} graphs: {before:?} -> {after:?}");
    assert!(after.replays >= before.replays + 30, "{format:?}: batched steps were not replayed: {after:?}");
}

/// Two caches of `gpu` fed the same prompt, then `steps` one-token decode
/// steps of each, the first with `set(false)`, the second with `set(true)`:
/// their logits must be the same bits at every step (`what` names the
/// setting in the failure).
fn assert_setting_keeps_decode_bits(
    gpu: &Model<CudaBackend>,
    prompt: &[u32],
    steps: usize,
    what: &str,
    set: impl Fn(&CudaBackend, bool),
) {
    let mut caches: Vec<_> = (0..2).map(|_| gpu.new_cache(KvDType::F16)).collect();
    let mut state = ForwardState::new(&gpu.backend);
    for c in caches.iter_mut() {
        gpu.forward(&mut state, &mut [SequenceInput { tokens: prompt, cache: c, logits: LogitsWanted::None }]).unwrap();
    }
    let mut token = 7u32;
    for step in 0..steps {
        let mut logits = Vec::new();
        for (on, cache) in caches.iter_mut().enumerate() {
            set(&gpu.backend, on == 1);
            let input = SequenceInput { tokens: &[token], cache, logits: LogitsWanted::Last };
            logits.push(gpu.forward(&mut state, &mut [input]).unwrap().to_vec());
        }
        assert!(logits[0] == logits[1], "{what}: a decode step differs at step {step}");
        token = chatglm_model::greedy_token(&logits[0]);
    }
    set(&gpu.backend, false);
}

#[test]
fn gpu_chained_decode_steps_equal_unchained_ones_bit_for_bit() {
    // Kernels of a recorded decode step linked through counters (chain.rs)
    // compute exactly what they compute waiting for whole grids: the 6B head
    // layout (tensor-core decode attention, linked between the quantized
    // products) in two layers, one-token steps replayed from graphs, contexts
    // crossing cache blocks.
    let glm2 = GLM_HEADS.replace("\"num_layers\":1", "\"num_layers\":2");
    for format in [WeightFormat::Q4_0, WeightFormat::Q8_0] {
        let src = random_model(&glm2, 29);
        let Some(backend) = cuda(&src.config) else { return };
        let gpu = Model::load(backend, &src, LoadOptions::new(format), &mut |_, _| {}).unwrap();
        let prompt: Vec<u32> = (0..50u32).map(|i| (i * 17 + 3) % src.config.padded_vocab_size as u32).collect();
        let before = gpu.backend.graph_stats();
        let what = format!("{format:?} chained");
        assert_setting_keeps_decode_bits(&gpu, &prompt, 40, &what, |b, on| b.set_chain_sync(on));
        let after = gpu.backend.graph_stats();
        assert!(after.replays >= before.replays + 60, "{format:?}: decode steps were not replayed: {after:?}");
    }
}

#[test]
fn gpu_q8_handoff_keeps_decode_bits() {
    // One-token steps handing activations over as q8_0 codes (handoff.rs:
    // the short attention's output to the dense product, SwiGLU's to 4h→h)
    // compute exactly what the products quantizing floats compute: the 6B
    // head layout, two layers, every kernel format, steps replayed from
    // graphs, contexts crossing cache blocks; and the codes were taken.
    let glm2 = GLM_HEADS.replace("\"num_layers\":1", "\"num_layers\":2");
    for format in [WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q8_0, WeightFormat::Q5_1] {
        let src = random_model(&glm2, 37);
        let Some(backend) = cuda(&src.config) else { return };
        let gpu = Model::load(backend, &src, LoadOptions::new(format), &mut |_, _| {}).unwrap();
        let prompt: Vec<u32> = (0..45u32).map(|i| (i * 11 + 7) % src.config.padded_vocab_size as u32).collect();
        let uses = gpu.backend.q8_handoff_uses();
        let what = format!("{format:?} q8_0 hand-off");
        assert_setting_keeps_decode_bits(&gpu, &prompt, 30, &what, |b, on| b.set_q8_handoff(on));
        // Two products a layer a step (dense, 4h→h), minus the first steps' graph recording.
        let used = gpu.backend.q8_handoff_uses() - uses;
        assert!(used >= 2 * 2 * 20, "{format:?}: codes handed over {used} times");
    }
}

/// Batched decode steps of 12 sequences (prompts of different lengths
/// crossing cache blocks) run twice on one model, `setting(backend, side)`
/// before each side's step: each step's logits of both sides, the tokens
/// following the first side's greedy choices.
fn batched_steps_both_ways(
    gpu: &Model<CudaBackend>,
    steps: usize,
    setting: impl Fn(&CudaBackend, bool),
) -> Vec<[Vec<f32>; 2]> {
    batched_steps_of(gpu, 12, steps, setting)
}

/// [`batched_steps_both_ways`] with `n_seqs` sequences.
fn batched_steps_of(
    gpu: &Model<CudaBackend>,
    n_seqs: u32,
    steps: usize,
    setting: impl Fn(&CudaBackend, bool),
) -> Vec<[Vec<f32>; 2]> {
    let vocab = gpu.config.padded_vocab_size;
    let mut caches: [Vec<_>; 2] = std::array::from_fn(|_| (0..n_seqs).map(|_| gpu.new_cache(KvDType::F16)).collect());
    let mut state = ForwardState::new(&gpu.backend);
    for side in caches.iter_mut() {
        for (i, c) in side.iter_mut().enumerate() {
            let i = i as u32;
            let prompt: Vec<u32> = (0..20 + 9 * i).map(|j| (j * 13 + i) % vocab as u32).collect();
            let input = SequenceInput { tokens: &prompt, cache: c, logits: LogitsWanted::None };
            gpu.forward(&mut state, &mut [input]).unwrap();
        }
    }
    let mut tokens: Vec<u32> = (0..n_seqs).map(|i| 5 + i).collect();
    let mut all = Vec::new();
    for _ in 0..steps {
        let mut logits: [Vec<f32>; 2] = Default::default();
        for (on, side) in caches.iter_mut().enumerate() {
            setting(&gpu.backend, on == 1);
            let mut batch: Vec<_> = side
                .iter_mut()
                .zip(&tokens)
                .map(|(cache, t)| SequenceInput { tokens: std::slice::from_ref(t), cache, logits: LogitsWanted::Last })
                .collect();
            logits[on] = gpu.forward(&mut state, &mut batch).unwrap().to_vec();
        }
        tokens = logits[0].chunks(vocab).map(chatglm_model::greedy_token).collect();
        all.push(logits);
    }
    all
}

#[test]
fn gpu_step_handoff_keeps_batched_decode_bits() {
    // Batched decode steps of 12 sequences (the grouped products) handing
    // the SwiGLU output to 4h→h and the short attention's to the dense
    // product in quantize_x's form (handoff.rs) compute exactly what the
    // separate quantize_x launches compute: the 6B head layout, two layers,
    // every kernel format, both activation forms, sequences at different
    // lengths crossing cache blocks; and the activations were taken (two
    // products a layer a step). (The norm fold, not bit for bit, is off.)
    let glm2 = GLM_HEADS.replace("\"num_layers\":1", "\"num_layers\":2");
    for format in [WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q8_0, WeightFormat::Q5_1] {
        for activations in ["q8", "batched"] {
            let src = random_model(&glm2, 41);
            let Some(backend) = cuda(&src.config) else { return };
            let gpu = Model::load(backend, &src, LoadOptions::new(format), &mut |_, _| {}).unwrap();
            gpu.backend.set_gpu_activations(activations).unwrap();
            gpu.backend.set_norm_fold(false);
            let uses = gpu.backend.q8_handoff_uses();
            let steps = 12;
            let logits = batched_steps_both_ways(&gpu, steps, |b, on| b.set_q8_handoff(on));
            for (step, [off, on]) in logits.iter().enumerate() {
                assert!(off == on, "{format:?} {activations}: a batched step with the hand-off differs at step {step}");
            }
            gpu.backend.set_q8_handoff(true);
            let used = gpu.backend.q8_handoff_uses() - uses;
            assert!(used >= 4 * steps as u64 - 4, "{format:?} {activations}: activations handed over {used} times");
        }
    }
}

#[test]
fn gpu_qmmx_residual_products_keep_batched_decode_bits() {
    // Batched decode steps of 24 and 32 sequences over f16 activations: the
    // residual and QKV products compiled into the qmmx module (placed apart
    // from the qmma module's code) against the qmma module's — the same bits;
    // every kernel format, two layers, the 6B head layout (QKV with RoPE and
    // cache rows, dense and 4h→h, split groups), sequences at different
    // lengths crossing cache blocks. (The norm fold, learned from the step
    // before, is off.)
    let glm2 = GLM_HEADS.replace("\"num_layers\":1", "\"num_layers\":2");
    for format in [WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q8_0, WeightFormat::Q5_1] {
        for n_seqs in [24, 32] {
            let src = random_model(&glm2, 47);
            let Some(backend) = cuda(&src.config) else { return };
            let gpu = Model::load(backend, &src, LoadOptions::new(format), &mut |_, _| {}).unwrap();
            gpu.backend.set_gpu_activations("batched").unwrap();
            gpu.backend.set_norm_fold(false);
            let logits = batched_steps_of(&gpu, n_seqs, 6, |b, on| b.set_qmmx_residual(on));
            for (step, [off, on]) in logits.iter().enumerate() {
                assert!(off == on, "{format:?} {n_seqs} sequences: the qmmx products change step {step}");
            }
            gpu.backend.set_qmmx_residual(true);
        }
    }
}

#[test]
fn gpu_norm_fold_matches_the_separate_norm_launch() {
    // f16 batched steps with the residual products folding the next RMSNorm
    // (dense → h→4h, 4h→h → the next layer's QKV: f16 of x·g and sums of
    // squares, the norm applied to the consumer's sums) against the separate
    // quantize_x launches: every kernel format, two layers, the 6B head
    // layout and a hidden size ending in a partial 128-row group; the same logits
    // to f16 rounding, and the folds were taken (after the first step, which
    // teaches each residual product its norm).
    let glm2 = GLM_HEADS.replace("\"num_layers\":1", "\"num_layers\":2");
    let narrow = glm2.replace("\"hidden_size\":4096", "\"hidden_size\":1120");
    for shape in [glm2, narrow] {
        for format in [WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q8_0, WeightFormat::Q5_1] {
            let src = random_model(&shape, 43);
            let Some(backend) = cuda(&src.config) else { return };
            let gpu = Model::load(backend, &src, LoadOptions::new(format), &mut |_, _| {}).unwrap();
            gpu.backend.set_gpu_activations("batched").unwrap();
            let uses = gpu.backend.norm_fold_uses();
            let steps = 8;
            let logits = batched_steps_both_ways(&gpu, steps, |b, on| b.set_norm_fold(on));
            for (step, [off, on]) in logits.iter().enumerate() {
                let d = max_abs_diff(on, off);
                let scale = off.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
                eprintln!(
                    "{format:?} hidden {}: step {step} max |Δ| {d:.3e} (logits up to {scale:.2})",
                    src.config.hidden_size
                );
                assert!(d <= 1e-2 * scale, "{format:?} step {step}: the fold moves logits by {d} (up to {scale})");
            }
            gpu.backend.set_norm_fold(true);
            let used = gpu.backend.norm_fold_uses() - uses;
            assert!(used >= 3 * (steps as u64 - 1), "{format:?}: folded activations taken {used} times");
        }
    }
}

#[test]
fn gpu_fused_mlp_blocks_equal_the_three_products_bit_for_bit() {
    // One-token steps' dense + MLP as one kernel (mlp_stream.cu: weights
    // streamed through a shared-memory ring, counters between the products)
    // against the three products it replaces: every kernel format, a row
    // ending in half a 4-bit unit (ffn 1,056), two layers, steps replayed
    // from graphs, contexts crossing cache blocks.
    for ffn in [1024, 1056] {
        let cfg = GLM_HEADS
            .replace("\"num_layers\":1", "\"num_layers\":2")
            .replace("\"ffn_hidden_size\":1024", &format!("\"ffn_hidden_size\":{ffn}"));
        for format in [WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q8_0, WeightFormat::Q5_1] {
            let src = random_model(&cfg, 31);
            let Some(backend) = cuda(&src.config) else { return };
            let gpu = Model::load(backend, &src, LoadOptions::new(format), &mut |_, _| {}).unwrap();
            let fused_here = gpu.backend.device().compute_capability.0 >= 9;
            let prompt: Vec<u32> = (0..40u32).map(|i| (i * 13 + 5) % src.config.padded_vocab_size as u32).collect();
            let launches = gpu.backend.mlp_block_launches();
            let what = format!("{format:?} ffn {ffn} fused");
            assert_setting_keeps_decode_bits(&gpu, &prompt, 30, &what, |b, on| b.set_mlp_stream(on));
            let ran = gpu.backend.mlp_block_launches() > launches;
            assert_eq!(ran, fused_here, "{format:?} ffn {ffn}: the fused kernel ran: {ran}");
        }
    }
}

#[test]
fn gpu_greedy_token_follows_the_invalid_score_rule() {
    // The argmax kernel alone, on rows with ties, NaN and infinities.
    let cfg = Config::from_json_str(FLASH_SHAPE).unwrap();
    let Some(gpu) = cuda(&cfg) else { return };
    let rows: Vec<Vec<f32>> = vec![
        vec![1.0, 3.0, 3.0, 2.0, 0.0, 0.0, 0.0],
        vec![0.5, f32::NAN, 9.0, 0.0, 0.0, 0.0, 0.0],
        vec![f32::NEG_INFINITY, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
        vec![-2.0, -1.0, -1.0, -3.0, -1.0, -5.0, -1.5],
    ];
    let cols = rows[0].len();
    let flat: Vec<f32> = rows.concat();
    let mut x = gpu.new_activations();
    gpu.resize(&mut x, rows.len(), cols);
    gpu.upload_activations(&flat, &mut x).unwrap();
    let mut got = Vec::new();
    gpu.read_greedy(&x, cols, &mut got);
    let want: Vec<u32> = rows.iter().map(|r| chatglm_model::greedy_token(r)).collect();
    assert_eq!(got, want);
    assert_eq!(want, [1, 5, 5, 1]);
    // Many rows of a real vocabulary width.
    let mut rng = 12345u64;
    let flat: Vec<f32> = (0..6 * 65024)
        .map(|_| {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((rng >> 40) % 1000) as f32 / 10.0
        })
        .collect();
    gpu.resize(&mut x, 6, 65024);
    gpu.upload_activations(&flat, &mut x).unwrap();
    gpu.read_greedy(&x, 65024, &mut got);
    let want: Vec<u32> = flat.chunks(65024).map(chatglm_model::greedy_token).collect();
    assert_eq!(got, want);
    // Rows split over several blocks (chatglm_cuda::argmax_slices): equal
    // maxima in different blocks (the first wins), a NaN in the last block,
    // the maximum at the very end, widths that are not a multiple of 4 (the
    // scalar loads), each width twice (the row counters are reset).
    for cols in [65024usize, 65023, 8195, 4097, 13] {
        let mut rows = vec![vec![0.0f32; cols]; 4];
        for (c, v) in rows[0].iter_mut().enumerate() {
            *v = ((c * 7919) % 1000) as f32;
        }
        rows[1][cols / 3] = 7.0;
        rows[1][cols - 2] = 7.0;
        rows[2][cols - 1] = f32::NAN;
        rows[2][1] = 3.0;
        rows[3][cols - 1] = 1.0;
        let flat: Vec<f32> = rows.concat();
        gpu.resize(&mut x, rows.len(), cols);
        gpu.upload_activations(&flat, &mut x).unwrap();
        let want: Vec<u32> = rows.iter().map(|r| chatglm_model::greedy_token(r)).collect();
        for _ in 0..2 {
            gpu.read_greedy(&x, cols, &mut got);
            assert_eq!(got, want, "{cols} columns, {} blocks a row", chatglm_cuda::argmax_slices(cols));
        }
    }
    // Steps of changing sizes share the scratch (an engine's batches): a
    // launch of fewer rows must not leave the counters of more rows dirty.
    for n in [3usize, 1, 2, 3, 1, 3] {
        let flat: Vec<f32> = (0..n * 65024).map(|i| ((i * 7919 + n * 31) % 65521) as f32).collect();
        gpu.resize(&mut x, n, 65024);
        gpu.upload_activations(&flat, &mut x).unwrap();
        gpu.read_greedy(&x, 65024, &mut got);
        let want: Vec<u32> = flat.chunks(65024).map(chatglm_model::greedy_token).collect();
        assert_eq!(got, want, "{n} rows after other sizes");
    }
}

/// P-Tuning v2 on the GPU: the prefix rows in front of every cache (keys
/// rotated by the prefix length, tokens at rows and positions after it)
/// against the official logits of the tiny ChatGLM3 model with each kind of
/// prefix encoder: a prompt, then token-by-token decoding (graph replay),
/// and a cleared cache that keeps its prefix.
#[test]
fn gpu_p_tuning_prefix_matches_the_official_logits() {
    use chatglm_weights::ptuning;
    let family = testdata().join("../golden/family");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(family.join("chatglm3/ptuning_golden.json")).unwrap()).unwrap();
    let ckpt = Checkpoint::open(&family.join("chatglm3/tiny/model")).unwrap();
    for name in ["ptuning-v2", "ptuning-v2-projection"] {
        let Some(backend) = cuda(&ckpt.config) else { return };
        let case = &golden["cases"][name];
        let mut model = Model::load(backend, &ckpt, LoadOptions::new(WeightFormat::F32), &mut |_, _| {}).unwrap();
        model.set_prefix(Some(ptuning::open(&family.join(format!("chatglm3/{name}")), &ckpt.config).unwrap())).unwrap();
        // f32 weights: the official logits to 1e-3 (the CPU holds 1e-4).
        common::check_ptuning_case(&model, case, name, 1e-3);
    }
}

#[test]
fn gpu_queued_steps_with_chained_tokens_match_step_by_step_decoding() {
    // Each step queued behind the one before, its tokens taken on the device
    // from the ids the step before chose (the host reads them a step later):
    // the same ids as step-by-step greedy decoding. Replayed graphs (the 6B
    // head layout), eager launches (FLASH_SHAPE), and quantized models (their
    // embedding tables in mapped host memory, in every ggml block format,
    // gathered on the device by the ids it chose).
    let glm2 = GLM_HEADS.replace("\"num_layers\":1", "\"num_layers\":2");
    for (shape, format, queued) in [
        (&glm2[..], WeightFormat::F16, true),
        (FLASH_SHAPE, WeightFormat::F16, true),
        (FLASH_SHAPE, WeightFormat::Q4_0, true),
        (&glm2[..], WeightFormat::Q4_0, true),
        (FLASH_SHAPE, WeightFormat::Q8_0, true),
        (FLASH_SHAPE, WeightFormat::Q4_1, true),
        (FLASH_SHAPE, WeightFormat::Q5_0, true),
        (FLASH_SHAPE, WeightFormat::Q5_1, true),
    ] {
        let src = random_model(shape, 29);
        let Some(backend) = cuda(&src.config) else { return };
        let gpu = Model::load(backend, &src, LoadOptions::new(format), &mut |_, _| {}).unwrap();
        assert_eq!(gpu.backend.queues_steps(), queued, "{format:?}");
        common::check_queued_steps_match_synchronous(&gpu, 70);
    }
}
