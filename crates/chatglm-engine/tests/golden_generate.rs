//! Greedy generation and chat against the official `model.chat()` / `generate()` outputs.

use chatglm_engine::{
    generate, ChatSession, FinishReason, GenerationConfig, Pipeline, PipelineOptions, SamplingParams,
};
use chatglm_model::ForwardState;
use chatglm_testdata::{dir as testdata, history, ids};
use serde_json::Value;

fn pipeline() -> Pipeline<chatglm_model::CpuBackend> {
    let dir = testdata().join("dev/model/safetensors-f32");
    Pipeline::load(dir.to_str().unwrap(), PipelineOptions::default(), &mut |_, _| {}).unwrap()
}

fn golden() -> Value {
    chatglm_testdata::golden("generate.json")
}

fn greedy(max_length: usize) -> GenerationConfig {
    GenerationConfig { sampling: SamplingParams::greedy(), max_length, ..GenerationConfig::default() }
}

#[test]
fn chat_cases_match_official() {
    let p = pipeline();
    for case in golden()["chat"].as_array().unwrap() {
        let query = case["query"].as_str().unwrap();
        let mut session = ChatSession::with_history(&p, history(&case["history"]));
        let max_length = case["max_length"].as_u64().unwrap() as usize;
        let reply = session.chat(query, &greedy(max_length)).unwrap();
        assert_eq!(reply.prompt_ids, ids(&case["prompt_ids"]), "prompt of {query}");
        assert_eq!(reply.output.generated_ids, ids(&case["generated_ids"]), "generated ids of {query}");
        assert_eq!(reply.output.text, case["raw_decode"].as_str().unwrap());
        assert_eq!(reply.response, case["response"].as_str().unwrap());
        assert_eq!(session.history(), &history(&case["new_history"]));
        assert_eq!(reply.output.finish_reason, FinishReason::Length);
    }
}

#[test]
fn streaming_chat_gives_the_same_text() {
    let p = pipeline();
    let case = &golden()["chat"][1];
    let query = case["query"].as_str().unwrap();
    let max_length = case["max_length"].as_u64().unwrap() as usize;
    let mut session = ChatSession::with_history(&p, history(&case["history"]));
    let mut streamed = String::new();
    let reply = session
        .chat_stream(query, &greedy(max_length), &mut |delta| {
            streamed.push_str(delta);
            true
        })
        .unwrap();
    assert_eq!(streamed, case["raw_decode"].as_str().unwrap());
    assert_eq!(reply.response, case["response"].as_str().unwrap());
}

#[test]
fn raw_generate_cases_match_official() {
    let p = pipeline();
    let mut state = ForwardState::new(&p.model.backend);
    for case in golden()["generate"].as_array().unwrap() {
        let input = ids(&case["input_ids"]);
        assert_eq!(p.tokenizer.encode(case["text"].as_str().unwrap()), input);
        let mut cache = p.model.new_cache(p.kv_dtype);
        let config = GenerationConfig { max_new_tokens: Some(32), ..greedy(8192) };
        let out = generate(&p.model, &p.tokenizer, &mut state, &mut cache, &input, &config, &mut |_| true).unwrap();
        assert_eq!(out.generated_ids, ids(&case["new_ids"]));
    }
}

#[test]
fn second_round_reuses_the_cache_with_official_incremental_ids() {
    let p = pipeline();
    let mut session = ChatSession::new(&p);
    let config = GenerationConfig { max_new_tokens: Some(8), ..greedy(8192) };
    let first = session.chat("你好", &config).unwrap();
    let cached = session.context_tokens();
    assert_eq!(cached, first.prompt_ids.len() + first.output.generated_ids.len() - 1);
    let expected = p.tokenizer.encode_chat_incremental("再见", session.history());
    let second = session.chat("再见", &config).unwrap();
    assert_eq!(second.prompt_ids, expected);
    assert_eq!(session.history().len(), 2);
    session.clear();
    assert_eq!(session.context_tokens(), 0);
    let third = session.chat("你好", &config).unwrap();
    assert_eq!(third.output.generated_ids, first.output.generated_ids);
}

#[test]
fn context_overflow_is_an_error_not_a_crash() {
    let p = pipeline();
    let mut session = ChatSession::new(&p);
    let long = "你好".repeat(600);
    let err = session.chat(&long, &greedy(8192)).unwrap_err();
    assert!(err.to_string().contains("seq_length"), "{err}");
    let err = session.chat("你好", &greedy(5)).unwrap_err();
    assert!(err.to_string().contains("max_length"), "{err}");
    // The session still works afterwards.
    assert!(session.chat("你好", &GenerationConfig { max_new_tokens: Some(2), ..greedy(8192) }).is_ok());
}

#[test]
fn official_guard_and_process_response_vectors() {
    let g = golden();
    let v = &g["invalid_score_logits_processor"];
    let mut input: Vec<f32> =
        v["input"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().parse::<f32>().unwrap()).collect();
    chatglm_engine::sampling::guard_invalid_scores(&mut input);
    let want: Vec<f32> = v["output"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert_eq!(input, want);
    for (k, want) in g["process_response"].as_object().unwrap() {
        assert_eq!(chatglm_engine::text::process_response(k), want.as_str().unwrap());
    }
}

#[test]
fn queued_generation_matches_step_by_step_and_leaves_the_same_cache() {
    // generate() with each step queued before the one ahead is read (as on a
    // GPU; forced here on the CPU): the official ids, the same text, and the
    // cache ending where step-by-step decoding leaves it — after length
    // limits, an end-of-text token, a stop string and a cancellation alike.
    let p = pipeline();
    let mut state = ForwardState::new(&p.model.backend);
    let input = p.tokenizer.encode_chat("你好", &[]);
    let full = {
        let mut cache = p.model.new_cache(p.kv_dtype);
        let config = GenerationConfig { max_new_tokens: Some(40), ..greedy(8192) };
        generate(&p.model, &p.tokenizer, &mut state, &mut cache, &input, &config, &mut |_| true).unwrap()
    };
    let stop: String = full.text.chars().skip(3).take(2).collect();
    let eos = full.generated_ids[5];
    let configs = [
        GenerationConfig { max_new_tokens: Some(40), ..greedy(8192) },
        GenerationConfig { max_new_tokens: Some(1), ..greedy(8192) },
        GenerationConfig { max_new_tokens: Some(2), ..greedy(8192) },
        greedy(input.len() + 7),
        GenerationConfig { max_new_tokens: Some(40), eos_ids: vec![eos], ..greedy(8192) },
        GenerationConfig { max_new_tokens: Some(40), stop: vec![stop], ..greedy(8192) },
    ];
    for (i, config) in configs.into_iter().enumerate() {
        for cancel_after in [None, Some(3)] {
            let run = |queue: bool, state: &mut ForwardState<_>| {
                let mut cache = p.model.new_cache(p.kv_dtype);
                let config = GenerationConfig { queue_steps: Some(queue), ..config.clone() };
                let mut deltas = 0;
                let out = generate(&p.model, &p.tokenizer, state, &mut cache, &input, &config, &mut |_| {
                    deltas += 1;
                    cancel_after.is_none_or(|n| deltas < n)
                })
                .unwrap();
                (out.generated_ids, out.text, out.finish_reason, chatglm_model::KvCacheOps::len(&cache))
            };
            let (want, got) = (run(false, &mut state), run(true, &mut state));
            assert_eq!(got, want, "config {i}, cancel after {cancel_after:?}");
            assert_eq!(state.launched_steps(), 0);
        }
    }
}
