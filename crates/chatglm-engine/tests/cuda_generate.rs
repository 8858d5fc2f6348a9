//! Greedy `chat()`/`generate()` on the GPU equal the official outputs.
//! Skips with a message without a usable GPU (`CHATGLM_REQUIRE_GPU=1` fails instead).
#![cfg(feature = "cuda")]

use chatglm_engine::{generate, ChatSession, EngineError, GenerationConfig, Pipeline, PipelineOptions, SamplingParams};
use chatglm_model::{CudaBackend, ForwardState};
use chatglm_testdata::{dir as testdata, history, ids};
use serde_json::Value;

fn pipeline() -> Option<Pipeline<CudaBackend>> {
    let dir = testdata().join("dev/model/safetensors-f32");
    let made = Pipeline::load_with(
        dir.to_str().unwrap(),
        PipelineOptions::default(),
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
