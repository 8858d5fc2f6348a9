//! Helpers shared by the engine tests (CPU and GPU): submitting requests,
//! collecting their events, and comparing with `generate()` alone.
#![allow(dead_code)]

use chatglm_engine::{
    generate, Completion, Engine, EngineConfig, EngineHandle, GenerationConfig, Pipeline, Request, RequestEvent,
    RequestParams, SamplingParams,
};

/// Two requests with the same long opening (a system prompt, say), the second
/// sent while the first is generating, through an engine on `q`: the second
/// copies the first's cache of the shared part (one prefix hit) instead of
/// computing it, and both equal `generate()` alone on `p`.
/// `overlap`: [`EngineConfig::overlap_steps`].
pub fn a_request_copies_a_running_one_s_prefix<B: Backend + Send + 'static>(
    p: &Pipeline<B>,
    q: Pipeline<B>,
    overlap: Option<bool>,
) where
    B::Cache: Send,
{
    let config = EngineConfig { overlap_steps: overlap, ..EngineConfig::default() };
    let engine = Engine::spawn(q.model, Arc::new(q.tokenizer), q.kv_dtype, config).unwrap();
    let h = engine.handle.clone();
    let opening = p.tokenizer.encode_chat(&format!("{} {}", QUERIES[0], QUERIES[1]), &[]);
    let a: Vec<u32> = opening.iter().chain(&p.tokenizer.encode_chat(QUERIES[2], &[])).copied().collect();
    let b: Vec<u32> = opening.iter().chain(&p.tokenizer.encode_chat(QUERIES[3], &[])).copied().collect();
    let rx_a = submit(&h, a.clone(), greedy(60));
    // Once A streams, its prompt is in its cache.
    match rx_a.recv_timeout(Duration::from_secs(60)).unwrap() {
        RequestEvent::Text(_) => {}
        other => panic!("expected text first, got {other:?}"),
    }
    let got_b = collect(&submit(&h, b.clone(), greedy(20)));
    // The rest of A's stream (its first text was taken above).
    let got_a = loop {
        match rx_a.recv_timeout(Duration::from_secs(60)).unwrap() {
            RequestEvent::Finished(c) => break c,
            RequestEvent::Failed(m) => panic!("{m}"),
            RequestEvent::Text(_) => {}
        }
    };
    assert_same_as_alone(p, &[a, b], &[60, 20], &[got_a, got_b]);
    let stats = h.stats();
    assert_eq!(stats.prefix_cache_hits.load(Relaxed), 1);
    assert!(stats.prefix_cache_tokens.load(Relaxed) >= opening.len() as u64 - 1);
    drop(h);
    engine.shutdown();
}
use chatglm_model::{Backend, ForwardState};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::sync::Arc;
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

/// Three chats, then their second rounds (each prompt = the first round's
/// prompt and reply and more), then three unrelated prompts, through an
/// engine on `q` with `blocks` KV blocks of 8 tokens (a paged backend uses its
/// own block size): every result equals `generate()` alone on `p`, second
/// rounds continue their first rounds' caches, and the third wave takes the
/// kept blocks back as it needs them. `overlap`: [`EngineConfig::overlap_steps`].
pub fn next_rounds_continue_the_previous_ones<B: Backend + Send + 'static>(
    p: &Pipeline<B>,
    q: Pipeline<B>,
    blocks: usize,
    overlap: Option<bool>,
) where
    B::Cache: Send,
{
    let per_token = q.model.kv_bytes_per_token(q.kv_dtype);
    let block = q.model.backend.kv_block_tokens().unwrap_or(8);
    let config = EngineConfig {
        block_size_tokens: 8,
        kv_budget_bytes: per_token * block * blocks,
        max_batch_tokens: 32,
        overlap_steps: overlap,
        ..EngineConfig::default()
    };
    let engine = Engine::spawn(q.model, Arc::new(q.tokenizer), q.kv_dtype, config).unwrap();
    let h = engine.handle.clone();
    let first: Vec<Vec<u32>> = QUERIES[..3].iter().map(|s| p.tokenizer.encode_chat(s, &[])).collect();
    let rxs: Vec<_> = first.iter().map(|ids| submit(&h, ids.clone(), greedy(20))).collect();
    let replies: Vec<Completion> = rxs.iter().map(collect).collect();
    assert_same_as_alone(p, &first, &[20; 3], &replies);
    let extra = p.tokenizer.encode_chat(QUERIES[4], &[]);
    let second: Vec<Vec<u32>> = first
        .iter()
        .zip(&replies)
        .map(|(ids, r)| ids.iter().chain(&r.generated_ids).chain(&extra).copied().collect())
        .collect();
    let rxs: Vec<_> = second.iter().map(|ids| submit(&h, ids.clone(), greedy(15))).collect();
    let results: Vec<Completion> = rxs.iter().map(collect).collect();
    assert_same_as_alone(p, &second, &[15; 3], &results);
    let stats = h.stats();
    let (hits, reused) = (stats.prefix_cache_hits.load(Relaxed), stats.prefix_cache_tokens.load(Relaxed));
    assert!(hits >= 1, "no round continued its previous round's cache");
    assert!(reused >= 16 * hits, "{reused} tokens reused by {hits} requests");
    let third: Vec<Vec<u32>> = QUERIES[3..].iter().map(|s| p.tokenizer.encode_chat(s, &[])).collect();
    let rxs: Vec<_> = third.iter().map(|ids| submit(&h, ids.clone(), greedy(30))).collect();
    let results: Vec<Completion> = rxs.iter().map(collect).collect();
    assert_same_as_alone(p, &third, &[30; 3], &results);
    assert_eq!(stats.requests_failed.load(Relaxed), 0);
    assert_eq!(stats.kv_blocks_reserved.load(Relaxed), 0);
    drop(h);
    engine.shutdown();
}
