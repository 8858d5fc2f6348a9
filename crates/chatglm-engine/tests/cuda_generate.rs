//! Greedy `chat()`/`generate()` on the GPU equal the official outputs.
//! Skips with a message without a usable GPU (`CHATGLM_REQUIRE_GPU=1` fails instead).
#![cfg(feature = "cuda")]

mod common;

use chatglm_engine::{
    generate, ChatSession, Completion, Engine, EngineConfig, EngineError, GenerationConfig, Pipeline, PipelineOptions,
    SamplingParams,
};
use chatglm_model::{Backend, CudaBackend, ForwardState};
use chatglm_testdata::{dir as testdata, history, ids};
use common::{assert_same_as_alone, collect, greedy as greedy_request, submit, QUERIES};
use serde_json::Value;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

fn pipeline() -> Option<Pipeline<CudaBackend>> {
    pipeline_in(PipelineOptions::default())
}

fn pipeline_in(options: PipelineOptions) -> Option<Pipeline<CudaBackend>> {
    let dir = testdata().join("dev/model/safetensors-f32");
    let made = Pipeline::load_with(
        dir.to_str().unwrap(),
        options,
        |cfg| CudaBackend::new(0, cfg).map_err(|e| EngineError::Device(e.to_string())),
        &mut |_, _| {},
    );
    match made {
        Ok(p) => Some(p),
        Err(e) => {
            if std::env::var_os("CHATGLM_REQUIRE_GPU").is_some() {
                panic!("CHATGLM_REQUIRE_GPU is set but the GPU cannot be used: {e}");
            }
            eprintln!("skipped: no usable CUDA GPU ({e})");
            None
        }
    }
}

fn golden() -> Value {
    chatglm_testdata::golden("generate.json")
}

fn greedy(max_length: usize) -> GenerationConfig {
    GenerationConfig { sampling: SamplingParams::greedy(), max_length, ..GenerationConfig::default() }
}

#[test]
fn gpu_chat_cases_match_official() {
    let Some(p) = pipeline() else { return };
    for case in golden()["chat"].as_array().unwrap() {
        let query = case["query"].as_str().unwrap();
        let mut session = ChatSession::with_history(&p, history(&case["history"]));
        let max_length = case["max_length"].as_u64().unwrap() as usize;
        let reply = session.chat(query, &greedy(max_length)).unwrap();
        assert_eq!(reply.output.generated_ids, ids(&case["generated_ids"]), "generated ids of {query}");
        assert_eq!(reply.response, case["response"].as_str().unwrap());
        assert_eq!(session.history(), &history(&case["new_history"]));
    }
}

#[test]
fn gpu_raw_generate_cases_match_official() {
    let Some(p) = pipeline() else { return };
    let mut state = ForwardState::new(&p.model.backend);
    for case in golden()["generate"].as_array().unwrap() {
        let input = ids(&case["input_ids"]);
        let mut cache = p.model.new_cache(p.kv_dtype);
        let config = GenerationConfig { max_new_tokens: Some(32), ..greedy(8192) };
        let out = generate(&p.model, &p.tokenizer, &mut state, &mut cache, &input, &config, &mut |_| true).unwrap();
        assert_eq!(out.generated_ids, ids(&case["new_ids"]));
    }
}

#[test]
fn gpu_greedy_outputs_equal_the_cpu_for_every_quantized_format() {
    use chatglm_model::{CpuBackend, KvDType, LoadOptions, WeightFormat};
    let dir = testdata().join("dev/model/safetensors-f32");
    for format in [WeightFormat::Q8_0, WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q5_0, WeightFormat::Q5_1] {
        let options =
            || PipelineOptions { load: LoadOptions::new(format), kv_dtype: Some(KvDType::F16), ..Default::default() };
        let Some(gpu) = pipeline_in(options()) else { return };
        let cpu = Pipeline::<CpuBackend>::load(dir.to_str().unwrap(), options(), &mut |_, _| {}).unwrap();
        let (mut gs, mut cs) = (ForwardState::new(&gpu.model.backend), ForwardState::new(&cpu.model.backend));
        for case in golden()["generate"].as_array().unwrap() {
            let input = ids(&case["input_ids"]);
            let config = GenerationConfig { max_new_tokens: Some(32), ..greedy(8192) };
            let on_gpu = {
                let mut cache = gpu.model.new_cache(KvDType::F16);
                generate(&gpu.model, &gpu.tokenizer, &mut gs, &mut cache, &input, &config, &mut |_| true)
                    .unwrap()
                    .generated_ids
            };
            let on_cpu = {
                let mut cache = cpu.model.new_cache(KvDType::F16);
                generate(&cpu.model, &cpu.tokenizer, &mut cs, &mut cache, &input, &config, &mut |_| true)
                    .unwrap()
                    .generated_ids
            };
            assert_eq!(on_gpu, on_cpu, "{} greedy ids of a {}-token prompt", format.name(), input.len());
        }
        eprintln!("{}: greedy ids equal on GPU and CPU", format.name());
    }
}

/// Logits rows of several shapes: peaked, flat, tied values, non-finite.
fn sampling_rows(vocab: usize, seed: u64) -> Vec<(String, Vec<f32>)> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut normal = move || {
        // Sum of uniforms: close enough to a normal for shaping logits.
        let mut s = 0.0f32;
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            s += (state >> 40) as f32 / (1u64 << 24) as f32;
        }
        (s - 2.0) * 1.7
    };
    // A handful of likely tokens over a long tail.
    let peaked: Vec<f32> =
        (0..vocab).map(|i| normal() + if i % (vocab / 5).max(1) == 3 { 25.0 } else { 0.0 }).collect();
    let flat: Vec<f32> = (0..vocab).map(|_| 0.3 * normal()).collect();
    let tied: Vec<f32> = (0..vocab).map(|_| (2.0 * normal()).round() * 2.0).collect();
    let mut bad = peaked.clone();
    bad[vocab / 2] = f32::NAN;
    vec![("peaked".into(), peaked), ("flat".into(), flat), ("tied".into(), tied), ("non-finite".into(), bad)]
}

#[test]
fn gpu_sampling_draws_what_the_host_sampler_draws() {
    use chatglm_engine::sampling::Sampler;
    use chatglm_model::TokenChoice;
    let Some(p) = pipeline() else { return };
    let gpu = &p.model.backend;
    let params =
        [(0.0, 1.0, 0), (0.8, 0.8, 0), (1.0, 1.0, 0), (0.7, 0.9, 50), (1.0, 1.0, 5), (0.5, 0.8, 1), (1.3, 0.95, 0)];
    let uniforms = [0.0, 0.000_1, 0.123_4, 0.5, 0.777, 0.999_999];
    let (mut same, mut host, mut total) = (0, 0, 0);
    for vocab in [6usize, 333, 65024] {
        for (name, row) in sampling_rows(vocab, vocab as u64) {
            let mut choices = Vec::new();
            for &(t, top_p, top_k) in &params {
                for &u in &uniforms {
                    choices.push(TokenChoice { temperature: t, top_p, top_k, uniform: u });
                }
            }
            let logits: Vec<f32> = choices.iter().flat_map(|_| row.iter().copied()).collect();
            let got = gpu.sample_logits(&logits, vocab, &choices).unwrap();
            let mut sampler = Sampler::new();
            for (c, g) in choices.iter().zip(&got) {
                let sp = SamplingParams {
                    temperature: c.temperature,
                    top_p: c.top_p,
                    top_k: c.top_k,
                    do_sample: c.temperature > 0.0,
                    ..SamplingParams::default()
                };
                let want = sampler.sample_with_uniform(&mut row.clone(), &sp, &[], c.uniform);
                total += 1;
                match g {
                    Some(id) => {
                        assert_eq!(*id, want, "vocab {vocab}, {name} row, {c:?}");
                        same += 1;
                    }
                    None => {
                        // Only a draw reaching into a long flat tail may be
                        // left to the host.
                        let tail = name != "peaked" || (c.top_p >= 1.0 && c.top_k == 0);
                        assert!(c.temperature > 0.0 && tail, "vocab {vocab}, {name} row, {c:?} left to the host");
                        host += 1;
                    }
                }
            }
        }
    }
    eprintln!(
        "device sampling: {same} of {total} draws on the device (all equal to the host's), {host} left to the host"
    );
    assert!(same * 2 > total, "too few draws on the device: {same} of {total}");
}

#[test]
fn gpu_seeded_sampled_chat_equals_the_cpu_one() {
    // The device draws with the request generator's numbers: a seeded
    // sampled chat gives the CPU's reply.
    let Some(gpu) = pipeline() else { return };
    let cpu = Pipeline::load(
        testdata().join("dev/model/safetensors-f32").to_str().unwrap(),
        PipelineOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();
    for seed in [1u64, 7, 42] {
        let config = GenerationConfig {
            sampling: SamplingParams { seed: Some(seed), ..SamplingParams::default() },
            max_length: 96,
            ..GenerationConfig::default()
        };
        let a = ChatSession::new(&gpu).chat("你好", &config).unwrap();
        let b = ChatSession::new(&cpu).chat("你好", &config).unwrap();
        assert_eq!(a.output.generated_ids, b.output.generated_ids, "seed {seed}");
    }
}

/// Six chat prompts through an engine on `q` with a KV budget of
/// `budget_tokens` ([`PREEMPTING_BUDGET`]: running sequences preempted and recomputed later)
/// and 24 tokens a step (chunked prefill mixed with decodes): each result
/// must equal generate() alone on `p`. Returns the prompts and their lengths.
fn engine_under_preemption_equals_alone(
    p: &Pipeline<CudaBackend>,
    q: Pipeline<CudaBackend>,
    label: &str,
) -> Vec<Vec<u32>> {
    engine_equals_alone(p, q, label, PREEMPTING_BUDGET).0
}

/// Three 64-token GPU blocks for six chats: preemptions whether or not steps
/// are queued (with two blocks, queued steps — which free a finished
/// sequence's blocks a step later, so admit the next request a step later —
/// happened to need none: measured on the CPU with 64-token blocks, 0 against 1;
/// with three, 11 and 11).
const PREEMPTING_BUDGET: usize = 192;

/// As [`engine_under_preemption_equals_alone`] with any budget; also returns
/// the padding rows the engine added.
fn engine_equals_alone(
    p: &Pipeline<CudaBackend>,
    q: Pipeline<CudaBackend>,
    label: &str,
    budget_tokens: usize,
) -> (Vec<Vec<u32>>, u64) {
    let per_token = q.model.kv_bytes_per_token(q.kv_dtype);
    let padded = q.model.backend.pads_decode_steps();
    let config = EngineConfig {
        block_size_tokens: 16,
        kv_budget_bytes: per_token * budget_tokens,
        max_batch_size: 6,
        max_batch_tokens: 24,
        ..EngineConfig::default()
    };
    let engine = Engine::spawn(q.model, Arc::new(q.tokenizer), q.kv_dtype, config).unwrap();
    let h = engine.handle.clone();
    let prompts: Vec<Vec<u32>> = QUERIES.iter().map(|s| p.tokenizer.encode_chat(s, &[])).collect();
    let rxs: Vec<_> = prompts.iter().zip(MAX_NEW).map(|(ids, n)| submit(&h, ids.clone(), greedy_request(n))).collect();
    let results: Vec<Completion> = rxs.iter().map(collect).collect();
    assert_same_as_alone(p, &prompts, &MAX_NEW, &results);
    let stats = h.stats();
    let preempted = stats.preemptions.load(Relaxed);
    eprintln!("{label}: {preempted} preemptions");
    if budget_tokens <= PREEMPTING_BUDGET {
        assert!(preempted > 0, "{label}: the budget did not force a preemption");
    }
    assert_eq!(stats.requests_failed.load(Relaxed), 0);
    assert_eq!(stats.kv_blocks_reserved.load(Relaxed), 0);
    let pad_rows = stats.pad_rows.load(Relaxed);
    eprintln!("{label}: {pad_rows} padding rows");
    assert!(padded || pad_rows == 0, "{label}: padded without the backend asking");
    drop(h);
    engine.shutdown();
    (prompts, pad_rows)
}

const MAX_NEW: [usize; 6] = [40, 30, 33, 60, 20, 45];

#[test]
fn gpu_engine_under_concurrency_preemption_and_chunked_prefill_equals_generate_alone() {
    // Batched steps launched one by one (graphs and padding are the default:
    // the next test).
    let (Some(p), Some(q)) = (pipeline(), pipeline()) else { return };
    q.model.backend.set_batched_graphs(false);
    engine_under_preemption_equals_alone(&p, q, "GPU engine");
}

#[test]
fn gpu_engine_with_batched_graphs_and_padded_steps_equals_generate_alone() {
    // Batched decode steps replayed from CUDA graphs and padded to fixed
    // sizes (the default; `CHATGLM_CUDA_BATCH_GRAPHS=0` turns it off), under the same
    // preemption and chunked prefill: every result equals generate() alone.
    let (Some(p), Some(q)) = (pipeline(), pipeline()) else { return };
    q.model.backend.set_batched_graphs(true);
    // Room for all six at once (their decodes run 3–6 a step: padded to 4 or
    // 8), then the preemption budget again.
    let (_, pad_rows) = engine_equals_alone(&p, q, "GPU engine, batched graphs", 6 * 4 * 64);
    assert!(pad_rows > 0, "no decode step was padded");
    let (Some(p), Some(q)) = (pipeline(), pipeline()) else { return };
    q.model.backend.set_batched_graphs(true);
    engine_under_preemption_equals_alone(&p, q, "GPU engine, batched graphs, preempted");
}

#[test]
fn gpu_engine_with_a_p_tuning_prefix_equals_generate_alone_and_the_cpu() {
    // The tiny ChatGLM3 model with a 4-row prefix: the engine's blocks hold
    // the prefix rows in front of each sequence's tokens, through chunked
    // prefill and preemptions (a preempted sequence's prefix is written again
    // into whatever blocks it gets next).
    let family = testdata().join("../golden/family/chatglm3");
    let options = || PipelineOptions { ptuning: Some(family.join("ptuning-v2")), ..PipelineOptions::default() };
    let dir = family.join("tiny/model");
    let load = || {
        Pipeline::load_with(
            dir.to_str().unwrap(),
            options(),
            |cfg| CudaBackend::new(0, cfg).map_err(|e| EngineError::Device(e.to_string())),
            &mut |_, _| {},
        )
    };
    let (p, q) = match (load(), load()) {
        (Ok(p), Ok(q)) => (p, q),
        (Err(e), _) | (_, Err(e)) => {
            assert!(std::env::var_os("CHATGLM_REQUIRE_GPU").is_none(), "the GPU cannot be used: {e}");
            eprintln!("skipped: no usable CUDA GPU ({e})");
            return;
        }
    };
    let prompts = engine_under_preemption_equals_alone(&p, q, "GPU engine with a prefix");
    // The GPU's greedy ids with the prefix are the CPU's.
    let cpu = Pipeline::<chatglm_model::CpuBackend>::load(dir.to_str().unwrap(), options(), &mut |_, _| {}).unwrap();
    let (mut gs, mut cs) = (ForwardState::new(&p.model.backend), ForwardState::new(&cpu.model.backend));
    for (input, &n) in prompts.iter().zip(&MAX_NEW).take(3) {
        let config = GenerationConfig { max_new_tokens: Some(n), ..greedy(8192) };
        let mut gc = p.model.new_cache(p.kv_dtype);
        let a = generate(&p.model, &p.tokenizer, &mut gs, &mut gc, input, &config, &mut |_| true).unwrap();
        let mut cc = cpu.model.new_cache(p.kv_dtype);
        let b = generate(&cpu.model, &cpu.tokenizer, &mut cs, &mut cc, input, &config, &mut |_| true).unwrap();
        assert_eq!(a.generated_ids, b.generated_ids, "GPU and CPU differ with the prefix");
    }
}

#[test]
fn gpu_engine_next_round_continues_the_previous_round_s_blocks() {
    // As the CPU test: second rounds take their first rounds' blocks over on
    // the GPU (10 of its 64-token blocks).
    let (Some(p), Some(q)) = (pipeline(), pipeline()) else { return };
    common::next_rounds_continue_the_previous_ones(&p, q, 10, None);
}

#[test]
fn gpu_engine_request_copies_the_prefix_it_shares_with_one_running_now() {
    // The GPU cache copies the running request's blocks of the shared
    // opening into the blocks the engine gives the new one.
    let (Some(p), Some(q)) = (pipeline(), pipeline()) else { return };
    common::a_request_copies_a_running_one_s_prefix(&p, q, None);
}
