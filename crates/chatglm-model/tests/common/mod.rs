//! A random model with the official tensor names, shared by the model tests.
#![allow(dead_code)]

use chatglm_model::{
    Backend, Config, ForwardState, KvCacheOps, KvDType, LogitsWanted, Model, ModelError, SequenceInput, TensorSource,
};
use chatglm_testdata::{floats, ids, max_abs_diff as max_diff};
use chatglm_weights::{names, DType, Tensor, TensorData};
use std::collections::HashMap;

/// Random tensors with the official names (f32 on the host; each backend
/// converts as it loads).
pub struct RandomModel {
    pub config: Config,
    tensors: HashMap<String, Tensor>,
}

impl TensorSource for RandomModel {
    fn config(&self) -> &Config {
        &self.config
    }
    fn tensor(&self, name: &str) -> Result<&Tensor, ModelError> {
        Ok(self.tensors.get(name).expect("every expected tensor is generated"))
    }
}

pub fn random_model(json: &str, seed: u64) -> RandomModel {
    let config = Config::from_json_str(json).unwrap();
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let mut tensors = HashMap::new();
    for (name, shape) in names::expected_tensors(&config) {
        let n: usize = shape.iter().product();
        let fan_in = *shape.last().unwrap() as f32;
        let values: Vec<f32> = if shape.len() == 1 && name.contains("norm") {
            (0..n).map(|_| 1.0 + 0.2 * next()).collect()
        } else if shape.len() == 1 {
            (0..n).map(|_| 0.2 * next()).collect()
        } else {
            (0..n).map(|_| 3.4 * next() / fan_in.sqrt()).collect()
        };
        let data = TensorData::from_vec(values.iter().flat_map(|v| v.to_le_bytes()).collect());
        tensors.insert(name.clone(), Tensor { name, dtype: DType::F32, shape, data });
    }
    RandomModel { config, tensors }
}

/// Logits of every position of `ids`, from an empty f32 cache.
pub fn all_logits<B: Backend>(model: &Model<B>, ids: &[u32]) -> Vec<f32> {
    let mut state = ForwardState::new(&model.backend);
    let mut cache = model.new_cache(KvDType::F32);
    model
        .forward(&mut state, &mut [SequenceInput { tokens: ids, cache: &mut cache, logits: LogitsWanted::All }])
        .unwrap()
        .to_vec()
}

/// The tiny official-INT4/INT8-layout checkpoints (`golden/official-quant`,
/// next to the golden test data folder).
#[allow(dead_code)]
pub fn official_quant(name: &str) -> std::path::PathBuf {
    chatglm_testdata::dir().join("../golden/official-quant").join(name)
}

/// The largest |a − b| and the largest |b|.
#[allow(dead_code)]
pub fn diff_and_scale(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    (d, b.iter().fold(0f32, |m, v| m.max(v.abs())))
}

/// Every golden check of one P-Tuning case (`golden/family/chatglm3/ptuning_golden.json`) against
/// `model` (a prefix set), to `tol`: the logits of a prompt, then token by token, and a cleared cache
/// that keeps its prefix.
pub fn check_ptuning_case<B: Backend>(model: &Model<B>, case: &serde_json::Value, label: &str, tol: f32) {
    let vocab = model.config.padded_vocab_size;
    let input = ids(&case["input_ids"]);
    let got = all_logits(model, &input);
    let d = max_diff(&got[(input.len() - 1) * vocab..], &floats(&case["logits_last"]));
    assert!(d <= tol, "{label}: last logits max |Δ| {d}");
    let (argmax, maxes) = (ids(&case["argmax_per_position"]), floats(&case["max_per_position"]));
    for (p, row) in got.chunks_exact(vocab).enumerate() {
        let best = row.iter().enumerate().fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
        assert_eq!(best as u32, argmax[p], "{label}: argmax at {p}");
        assert!((row[best] - maxes[p]).abs() <= tol, "{label}: max at {p}");
    }
    // Incremental: a prompt, then one token a step, as generation runs.
    let tokens = ids(&case["incremental_token_ids"]);
    let prefill = case["incremental_prefill"].as_u64().unwrap() as usize;
    let mut state = ForwardState::new(&model.backend);
    let mut cache = model.new_cache(KvDType::F32);
    let mut last = Vec::new();
    for chunk in std::iter::once(&tokens[..prefill]).chain(tokens[prefill..].chunks(1)) {
        let seq = SequenceInput { tokens: chunk, cache: &mut cache, logits: LogitsWanted::Last };
        last = model.forward(&mut state, &mut [seq]).unwrap().to_vec();
    }
    assert_eq!(cache.len(), tokens.len(), "{label}: the prefix is not counted as tokens");
    let d = max_diff(&last, &floats(&case["incremental_last"]));
    assert!(d <= tol, "{label}: incremental last step max |Δ| {d}");
    // A cleared cache keeps the prefix: the same prompt gives the same logits.
    cache.clear();
    let seq = SequenceInput { tokens: &tokens, cache: &mut cache, logits: LogitsWanted::Last };
    let again = model.forward(&mut state, &mut [seq]).unwrap().to_vec();
    assert!(max_diff(&again, &last) <= tol, "{label}: after clear()");
}

/// Greedy decoding of a few sequences with each step queued before the one
/// ahead is read (`launch_greedy` with tokens chained from the step before)
/// must give exactly the ids of step-by-step `forward_greedy`. Along the way
/// one sequence leaves and comes back with a token the host gives (not
/// chained), and a step of one sequence runs alone.
#[allow(dead_code)]
pub fn check_queued_steps_match_synchronous<B: Backend>(model: &Model<B>, steps: usize) {
    use chatglm_model::{ForwardState, KvDType, LogitsWanted, SequenceInput};
    let vocab = model.config.padded_vocab_size as u32;
    let prompts: Vec<Vec<u32>> =
        (0..3u32).map(|s| (0..20 + 23 * s).map(|i| (i * 37 + s * 11 + 3) % vocab).collect()).collect();
    // Which sequences run at each step: all, except sequence 1 skips steps
    // 5–7 and step 12 is sequence 2 alone.
    let runs = |step: usize| -> Vec<usize> {
        match step {
            5..=7 => vec![0, 2],
            12 => vec![2],
            _ => vec![0, 1, 2],
        }
    };
    let mut state = ForwardState::new(&model.backend);
    let prefill = |caches: &mut Vec<B::Cache>, state: &mut ForwardState<B>| -> Vec<u32> {
        let mut batch: Vec<_> = caches
            .iter_mut()
            .zip(&prompts)
            .map(|(cache, p)| SequenceInput { tokens: p, cache, logits: LogitsWanted::Last })
            .collect();
        model.forward_greedy(state, &mut batch).unwrap().to_vec()
    };
    // Step by step.
    let mut caches: Vec<B::Cache> = (0..3).map(|_| model.new_cache(KvDType::F16)).collect();
    let mut last = prefill(&mut caches, &mut state);
    let mut want: Vec<Vec<(usize, u32)>> = Vec::new();
    for step in 0..steps {
        let seqs = runs(step);
        let tokens: Vec<[u32; 1]> = seqs.iter().map(|&s| [last[s]]).collect();
        let mut batch = decode_batch(&mut caches, &seqs, &tokens);
        let ids = model.forward_greedy(&mut state, &mut batch).unwrap().to_vec();
        for (&s, &id) in seqs.iter().zip(&ids) {
            last[s] = id;
        }
        want.push(seqs.iter().copied().zip(ids).collect());
    }
    // Queued: step k + 1 launched before step k is collected.
    let mut caches: Vec<B::Cache> = (0..3).map(|_| model.new_cache(KvDType::F16)).collect();
    let mut last = prefill(&mut caches, &mut state);
    let mut got: Vec<Vec<(usize, u32)>> = Vec::new();
    let mut prev_rows: Vec<usize> = Vec::new(); // sequences of the launched step, in row order
    for step in 0..=steps {
        if step < steps {
            let seqs = runs(step);
            // Chained where the sequence was in the step just launched; its
            // token is still on the device. Otherwise the host knows it.
            let from: Vec<Option<usize>> = seqs.iter().map(|s| prev_rows.iter().position(|p| p == s)).collect();
            let tokens: Vec<[u32; 1]> = seqs.iter().map(|&s| [last[s]]).collect();
            let mut batch = decode_batch(&mut caches, &seqs, &tokens);
            model.launch_greedy(&mut state, &mut batch, &from).unwrap();
            if step > 0 {
                let ids = model.collect_greedy(&mut state).unwrap().to_vec();
                let done = runs(step - 1);
                for (&s, &id) in done.iter().zip(&ids) {
                    last[s] = id;
                }
                got.push(done.iter().copied().zip(ids).collect());
            }
            prev_rows = seqs;
        } else {
            let ids = model.collect_greedy(&mut state).unwrap().to_vec();
            got.push(runs(step - 1).iter().copied().zip(ids).collect());
        }
    }
    assert_eq!(state.launched_steps(), 0);
    for (step, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "queued step {step} differs from step-by-step decoding");
    }
}

/// One decode step's inputs: the caches of sequences `seqs` (in order), each
/// with its token from `tokens`.
fn decode_batch<'a, C>(
    caches: &'a mut [C],
    seqs: &[usize],
    tokens: &'a [[u32; 1]],
) -> Vec<chatglm_model::SequenceInput<'a, C>> {
    caches
        .iter_mut()
        .enumerate()
        .filter(|(s, _)| seqs.contains(s))
        .zip(tokens)
        .map(|((_, cache), t)| chatglm_model::SequenceInput {
            tokens: t,
            cache,
            logits: chatglm_model::LogitsWanted::Last,
        })
        .collect()
}
