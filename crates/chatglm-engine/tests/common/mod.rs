//! Helpers shared by the engine tests (CPU and GPU): submitting requests,
//! collecting their events, and comparing with `generate()` alone.
#![allow(dead_code)]

use chatglm_engine::{
    generate, Completion, EngineHandle, GenerationConfig, Pipeline, Request, RequestEvent, RequestParams,
    SamplingParams,
};
use chatglm_model::{Backend, ForwardState};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn greedy(max_new: usize) -> RequestParams {
    RequestParams { sampling: SamplingParams::greedy(), max_new_tokens: Some(max_new), ..RequestParams::default() }
}

pub fn submit(h: &EngineHandle, ids: Vec<u32>, params: RequestParams) -> mpsc::Receiver<RequestEvent> {
    let (tx, rx) = mpsc::channel();
    h.submit(Request { id: h.next_id(), prompt_ids: ids, params, sink: Box::new(tx), arrived: Instant::now() })
        .unwrap();
    rx
}

/// Collects deltas until the final event; checks the deltas add up.
pub fn collect(rx: &mpsc::Receiver<RequestEvent>) -> Completion {
    let mut streamed = String::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)).unwrap() {
            RequestEvent::Text(t) => streamed.push_str(&t),
            RequestEvent::Finished(c) => {
                assert_eq!(streamed, c.text);
                return c;
            }
            RequestEvent::Failed(m) => panic!("request failed: {m}"),
        }
    }
}

/// Each engine result equals greedy `generate()` of the same prompt alone.
pub fn assert_same_as_alone<B: Backend>(
    p: &Pipeline<B>,
    prompts: &[Vec<u32>],
    max_new: &[usize],
    results: &[Completion],
) {
    let mut state = ForwardState::new(&p.model.backend);
    for ((ids, &n), got) in prompts.iter().zip(max_new).zip(results) {
        let mut cache = p.model.new_cache(p.kv_dtype);
        let config = GenerationConfig {
            sampling: SamplingParams::greedy(),
            max_new_tokens: Some(n),
            max_length: 100_000,
            ..GenerationConfig::default()
        };
        let alone = generate(&p.model, &p.tokenizer, &mut state, &mut cache, ids, &config, &mut |_| true).unwrap();
        assert_eq!(got.generated_ids, alone.generated_ids);
        assert_eq!(got.text, alone.text);
        assert_eq!(got.finish_reason, alone.finish_reason);
        assert_eq!(got.prompt_tokens, ids.len());
        assert_eq!(got.completion_tokens, alone.generated_ids.len());
    }
}

pub const QUERIES: [&str; 6] = [
    "你好",
    "hello world",
    "写一首诗",
    "What is the capital of France? Answer briefly.",
    "1 + 1 = ?",
    "请用三句话介绍一下你自己，并说明你能做什么。",
];
