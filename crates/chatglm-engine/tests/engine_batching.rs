//! The continuous-batching engine on the tiny dev model: batched greedy
//! output equals `generate()` alone, chunked prefill, cancellation frees KV
//! blocks, queue limits. The `_queued` tests run the same with each greedy
//! step queued before the one ahead is read (as on a GPU).

mod common;

use common::{assert_same_as_alone, collect, greedy, submit, QUERIES};

use chatglm_engine::{
    Completion, Engine, EngineConfig, FinishReason, Pipeline, PipelineOptions, Request, RequestEvent, RequestParams,
    SamplingParams, SubmitError,
};
use chatglm_model::CpuBackend;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

fn testdata() -> PathBuf {
    chatglm_testdata::dir()
}

fn pipeline() -> Pipeline<CpuBackend> {
    let dir = testdata().join("dev/model/safetensors-f32");
    Pipeline::load(dir.to_str().unwrap(), PipelineOptions::default(), &mut |_, _| {}).unwrap()
}

fn spawn(config: EngineConfig) -> (Engine, Pipeline<CpuBackend>) {
    let p = pipeline();
    let q = pipeline();
    let engine = Engine::spawn(q.model, Arc::new(q.tokenizer), q.kv_dtype, config).unwrap();
    (engine, p)
}

#[test]
fn batched_greedy_equals_generate_alone() {
    batched_greedy_equals_alone(None);
}

#[test]
fn batched_greedy_equals_generate_alone_queued() {
    batched_greedy_equals_alone(Some(true));
}

fn batched_greedy_equals_alone(overlap: Option<bool>) {
    let (engine, p) = spawn(EngineConfig {
        max_batch_tokens: 24, // forces chunked prefill mixed with decodes
        max_batch_size: 4,    // forces queueing
        overlap_steps: overlap,
        ..EngineConfig::default()
    });
    let h = engine.handle.clone();
    let prompts: Vec<Vec<u32>> = QUERIES.iter().map(|q| p.tokenizer.encode_chat(q, &[])).collect();
    let max_new = [40, 7, 33, 60, 1, 25];
    let rxs: Vec<_> = prompts.iter().zip(max_new).map(|(ids, n)| submit(&h, ids.clone(), greedy(n))).collect();
    let results: Vec<Completion> = rxs.iter().map(collect).collect();
    assert_same_as_alone(&p, &prompts, &max_new, &results);
    let stats = h.stats();
    assert_eq!(stats.requests_submitted.load(Relaxed), 6);
    // Time in forward passes and around them is counted.
    assert!(stats.forward_us.load(Relaxed) > 0 && stats.host_us.load(Relaxed) > 0);
    assert_eq!(stats.queue_depth.load(Relaxed), 0);
    if overlap == Some(true) {
        // Decode steps were queued with their tokens chained from the step before.
        assert!(stats.queued_steps.load(Relaxed) > 0 && stats.chained_rows.load(Relaxed) > 0);
    } else {
        assert_eq!(stats.queued_steps.load(Relaxed), 0);
    }
    drop(h);
    engine.shutdown();
}

#[test]
fn decode_steps_padded_to_fixed_sizes_keep_every_output() {
    // Steps of 3–6 sequences take throwaway rows up to 4 or 8 (what a GPU
    // replaying one graph per size does): greedy outputs equal generate()
    // alone, and seeded sampled outputs equal those of an engine without
    // padding.
    let (engine, p) =
        spawn(EngineConfig { max_batch_size: 6, pad_decode_steps: Some(true), ..EngineConfig::default() });
    let h = engine.handle.clone();
    let prompts: Vec<Vec<u32>> = QUERIES.iter().map(|q| p.tokenizer.encode_chat(q, &[])).collect();
    let max_new = [40, 7, 33, 60, 12, 25];
    let rxs: Vec<_> = prompts.iter().zip(max_new).map(|(ids, n)| submit(&h, ids.clone(), greedy(n))).collect();
    let results: Vec<Completion> = rxs.iter().map(collect).collect();
    assert_same_as_alone(&p, &prompts, &max_new, &results);
    assert!(h.stats().pad_rows.load(Relaxed) > 0, "no step was padded");
    let sampled = |engine: &Engine| -> Vec<Vec<u32>> {
        let rxs: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, ids)| {
                let params = RequestParams {
                    sampling: SamplingParams {
                        temperature: 0.9,
                        top_p: 0.8,
                        seed: Some(100 + i as u64),
                        ..SamplingParams::default()
                    },
                    max_new_tokens: Some(24),
                    ..RequestParams::default()
                };
                submit(&engine.handle, ids.clone(), params)
            })
            .collect();
        rxs.iter().map(|rx| collect(rx).generated_ids).collect()
    };
    let padded = sampled(&engine);
    drop(h);
    engine.shutdown();
    let (plain, _) =
        spawn(EngineConfig { max_batch_size: 6, pad_decode_steps: Some(false), ..EngineConfig::default() });
    assert_eq!(padded, sampled(&plain));
    plain.shutdown();
}

#[test]
fn seeded_sampling_is_reproducible_in_a_batch() {
    let (engine, p) = spawn(EngineConfig::default());
    let h = &engine.handle;
    let ids = p.tokenizer.encode_chat("你好", &[]);
    let params = RequestParams {
        sampling: SamplingParams { temperature: 1.0, top_p: 0.9, seed: Some(1234), ..SamplingParams::default() },
        max_new_tokens: Some(20),
        ..RequestParams::default()
    };
    let a = submit(h, ids.clone(), params.clone());
    let b = submit(h, ids.clone(), params.clone());
    let (a, b) = (collect(&a), collect(&b));
    assert_eq!(a.generated_ids, b.generated_ids);
    let c = collect(&submit(h, ids, params));
    assert_eq!(a.generated_ids, c.generated_ids);
    engine.shutdown();
}

#[test]
fn context_and_stop_conditions() {
    stop_conditions(None);
}

#[test]
fn context_and_stop_conditions_queued() {
    stop_conditions(Some(true));
}

fn stop_conditions(overlap: Option<bool>) {
    let (engine, p) = spawn(EngineConfig { overlap_steps: overlap, ..EngineConfig::default() });
    let h = &engine.handle;
    let ids = p.tokenizer.encode_chat("你好", &[]);
    // max_length counts the prompt, as the official max_length.
    let c = collect(&submit(h, ids.clone(), RequestParams { max_length: Some(ids.len() + 5), ..greedy(1000) }));
    assert_eq!(c.finish_reason, FinishReason::Length);
    assert_eq!(c.completion_tokens, 5);
    // A stop string taken from the greedy output cuts the text before it.
    let full = collect(&submit(h, ids.clone(), greedy(30)));
    let stop: String = full.text.chars().skip(4).take(2).collect();
    let cut = collect(&submit(h, ids.clone(), RequestParams { stop: vec![stop.clone()], ..greedy(30) }));
    assert_eq!(cut.finish_reason, FinishReason::Stop);
    assert!(full.text.starts_with(&cut.text));
    assert!(!cut.text.contains(&stop));
    // Too long for the model's context: refused at submission.
    let long = vec![5u32; 600];
    let (tx, _rx) = mpsc::channel();
    let err = h
        .submit(Request {
            id: h.next_id(),
            prompt_ids: long,
            params: greedy(1),
            sink: Box::new(tx),
            arrived: Instant::now(),
        })
        .unwrap_err();
    assert!(matches!(err, SubmitError::PromptTooLong { limit: 512, .. }), "{err}");
    engine.shutdown();
}

/// Forwards events, but holds the engine thread at the second text delta
/// until the test opens the gate, so the request cannot finish on its own
/// between the test's observations (the tiny model generates 400 tokens in
/// well under a second). The second, not the first: the engine publishes its
/// statistics at the end of a step, so the first step's are visible by then.
struct GatedSink {
    tx: mpsc::Sender<RequestEvent>,
    texts: usize,
    gate: Option<mpsc::Receiver<()>>,
}

impl chatglm_engine::EventSink for GatedSink {
    fn send(&mut self, event: RequestEvent) -> bool {
        let is_text = matches!(event, RequestEvent::Text(_));
        let delivered = self.tx.send(event).is_ok();
        if is_text {
            self.texts += 1;
            if self.texts == 2 {
                if let Some(gate) = self.gate.take() {
                    let _ = gate.recv();
                }
            }
        }
        delivered
    }
}

#[test]
fn a_dropped_receiver_cancels_and_frees_blocks() {
    dropped_receiver_frees_blocks(None);
}

#[test]
fn a_dropped_receiver_cancels_and_frees_blocks_queued() {
    dropped_receiver_frees_blocks(Some(true));
}

fn dropped_receiver_frees_blocks(overlap: Option<bool>) {
    let (engine, p) = spawn(EngineConfig { overlap_steps: overlap, ..EngineConfig::default() });
    let h = engine.handle.clone();
    let ids = p.tokenizer.encode_chat("你好", &[]);
    let (tx, rx) = mpsc::channel();
    let (open_gate, gate) = mpsc::channel();
    h.submit(Request {
        id: h.next_id(),
        prompt_ids: ids.clone(),
        params: greedy(400),
        sink: Box::new(GatedSink { tx, texts: 0, gate: Some(gate) }),
        arrived: Instant::now(),
    })
    .unwrap();
    // Wait for the second delta (the engine now waits at the gate), then hang up.
    let mut texts = 0;
    while texts < 2 {
        if let RequestEvent::Text(_) = rx.recv_timeout(Duration::from_secs(30)).unwrap() {
            texts += 1;
        }
    }
    // Blocks cover the tokens computed so far (the prompt and a few sampled
    // ones, in 16-token blocks), not the 400 it may reach.
    let held = h.stats().kv_blocks_reserved.load(Relaxed) as usize;
    assert!(held >= ids.len().div_ceil(16) && held < (ids.len() + 400).div_ceil(16), "{held} blocks");
    drop(rx);
    drop(open_gate);
    let t0 = Instant::now();
    while h.stats().requests_cancelled.load(Relaxed) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "not cancelled");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(h.stats().kv_blocks_reserved.load(Relaxed), 0);
    assert_eq!(h.stats().running.load(Relaxed), 0);
    // The engine still serves.
    let c = collect(&submit(&h, ids, greedy(3)));
    assert_eq!(c.completion_tokens, 3);
    drop(h);
    engine.shutdown();
}

#[test]
fn the_queue_has_a_limit() {
    let (engine, p) = spawn(EngineConfig { max_batch_size: 1, max_queue: 2, ..EngineConfig::default() });
    let h = &engine.handle;
    let ids = p.tokenizer.encode_chat("你好", &[]);
    let mut rxs = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        let (tx, rx) = mpsc::channel();
        match h.submit(Request {
            id: h.next_id(),
            prompt_ids: ids.clone(),
            params: greedy(200),
            sink: Box::new(tx),
            arrived: Instant::now(),
        }) {
            Ok(()) => rxs.push(rx),
            Err(SubmitError::QueueFull(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    // At most 2 queued + 1 running at any time; submissions are faster than a
    // 200-token generation, so some must be refused.
    assert!(refused >= 1 && rxs.len() <= 3, "refused {refused}");
    drop(rxs);
    engine.shutdown();
}

#[test]
fn preemption_under_a_tiny_kv_budget_keeps_greedy_outputs() {
    preemption_keeps_greedy_outputs(None);
}

#[test]
fn preemption_under_a_tiny_kv_budget_keeps_greedy_outputs_queued() {
    preemption_keeps_greedy_outputs(Some(true));
}

fn preemption_keeps_greedy_outputs(overlap: Option<bool>) {
    // Room for 8 blocks of 16 tokens: each request fits alone, all six together do not,
    // so running sequences are preempted (and recompute) as others grow.
    let p0 = pipeline();
    let per_token = p0.model.kv_bytes_per_token(p0.kv_dtype);
    let (engine, p) = spawn(EngineConfig {
        block_size_tokens: 16,
        kv_budget_bytes: per_token * 16 * 8,
        max_batch_size: 6,
        overlap_steps: overlap,
        ..EngineConfig::default()
    });
    let h = engine.handle.clone();
    let prompts: Vec<Vec<u32>> = QUERIES.iter().map(|q| p.tokenizer.encode_chat(q, &[])).collect();
    let max_new = [40, 30, 33, 60, 20, 45];
    let rxs: Vec<_> = prompts.iter().zip(max_new).map(|(ids, n)| submit(&h, ids.clone(), greedy(n))).collect();
    let results: Vec<Completion> = rxs.iter().map(collect).collect();
    assert_same_as_alone(&p, &prompts, &max_new, &results);
    let stats = h.stats();
    let preempted = stats.preemptions.load(Relaxed);
    eprintln!("preemptions: {preempted}");
    assert!(preempted > 0, "the budget did not force a preemption");
    assert_eq!(stats.queue_depth.load(Relaxed), 0);
    assert_eq!(stats.kv_blocks_reserved.load(Relaxed), 0);
    assert_eq!(stats.requests_failed.load(Relaxed), 0);
    drop(h);
    engine.shutdown();
}

#[test]
fn the_next_round_continues_the_previous_round_s_cache() {
    // 40 blocks of 8 tokens: the third wave also makes the engine give kept caches back.
    common::next_rounds_continue_the_previous_ones(&pipeline(), pipeline(), 40, None);
}

#[test]
fn the_next_round_continues_the_previous_round_s_cache_queued() {
    common::next_rounds_continue_the_previous_ones(&pipeline(), pipeline(), 40, Some(true));
}

#[test]
fn prefix_reuse_can_be_turned_off() {
    let (engine, p) = spawn(EngineConfig { prefix_cache_entries: 0, ..EngineConfig::default() });
    let h = engine.handle.clone();
    let ids = p.tokenizer.encode_chat(QUERIES[0], &[]);
    let first = collect(&submit(&h, ids.clone(), greedy(20)));
    let next: Vec<u32> = ids.iter().chain(&first.generated_ids).chain(&ids).copied().collect();
    let second = collect(&submit(&h, next.clone(), greedy(10)));
    assert_same_as_alone(&p, &[next], &[10], &[second]);
    assert_eq!(h.stats().prefix_cache_hits.load(Relaxed), 0);
    drop(h);
    engine.shutdown();
}

#[test]
fn a_request_copies_the_prefix_it_shares_with_one_running_now() {
    common::a_request_copies_a_running_one_s_prefix(&pipeline(), pipeline(), None);
}

#[test]
fn a_request_copies_the_prefix_it_shares_with_one_running_now_queued() {
    common::a_request_copies_a_running_one_s_prefix(&pipeline(), pipeline(), Some(true));
}

#[test]
fn greedy_and_sampled_requests_mixed_with_queued_steps() {
    // Greedy steps are queued, steps with a sampled request wait for the one
    // ahead: outputs equal an engine that never queues (seeded sampling) and
    // generate() alone (greedy).
    let p = pipeline();
    let prompts: Vec<Vec<u32>> = QUERIES.iter().map(|q| p.tokenizer.encode_chat(q, &[])).collect();
    let run = |overlap: bool| -> Vec<Completion> {
        let (engine, _) =
            spawn(EngineConfig { max_batch_size: 6, overlap_steps: Some(overlap), ..EngineConfig::default() });
        let rxs: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, ids)| {
                let params = if i % 3 == 1 {
                    RequestParams {
                        sampling: SamplingParams {
                            temperature: 0.9,
                            top_p: 0.8,
                            seed: Some(7 + i as u64),
                            ..SamplingParams::default()
                        },
                        max_new_tokens: Some(18 + 3 * i),
                        ..RequestParams::default()
                    }
                } else {
                    greedy(18 + 3 * i)
                };
                submit(&engine.handle, ids.clone(), params)
            })
            .collect();
        let out = rxs.iter().map(collect).collect();
        engine.shutdown();
        out
    };
    let (queued, plain) = (run(true), run(false));
    for (i, (a, b)) in queued.iter().zip(&plain).enumerate() {
        assert_eq!(a.generated_ids, b.generated_ids, "request {i}");
        assert_eq!(a.text, b.text, "request {i}");
    }
}
