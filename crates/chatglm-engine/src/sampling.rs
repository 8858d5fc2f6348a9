//! Sampling: a pure function of (logits, params, previous tokens, seeded RNG).
//!
//! Order and definitions follow the official `model.chat()` path through
//! transformers' `generate`: the NaN/Inf guard, repetition penalty, then
//! temperature, top-k and top-p, then a multinomial draw (or argmax).

use rand::Rng;

/// Generation parameters of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// `<= 0` or `do_sample = false` means greedy.
    pub temperature: f32,
    /// Nucleus mass in `(0, 1]`; 1 disables.
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens; 0 disables.
    pub top_k: usize,
    /// transformers' definition: logits of tokens already in the sequence are
    /// divided by the penalty when positive, multiplied when negative. 1 disables.
    pub repetition_penalty: f32,
    pub do_sample: bool,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    /// The official `chat()` defaults: sampling with temperature 0.8, top-p 0.8.
    fn default() -> Self {
        Self { temperature: 0.8, top_p: 0.8, top_k: 0, repetition_penalty: 1.0, do_sample: true, seed: None }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self { do_sample: false, temperature: 0.0, ..Self::default() }
    }

    pub fn is_greedy(&self) -> bool {
        !self.do_sample || self.temperature <= 0.0
    }

    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), ParamError> {
        let err = |param, message| Err(ParamError { param, message });
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return err("temperature", format!("temperature must be a finite number >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return err("top_p", format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return err(
                "repetition_penalty",
                format!("repetition_penalty must be > 0, got {}", self.repetition_penalty),
            );
        }
        Ok(())
    }
}

/// A parameter out of range: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// The field, as the APIs name it (`temperature`, `top_p`, …).
    pub param: &'static str,
    pub message: String,
}

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParamError {}

/// The official `InvalidScoreLogitsProcessor`: if any logit is NaN or ±inf,
/// all are zeroed and index 5 is set to 5e4.
pub fn guard_invalid_scores(logits: &mut [f32]) {
    if logits.iter().any(|v| !v.is_finite()) {
        logits.fill(0.0);
        if let Some(v) = logits.get_mut(5) {
            *v = 5e4;
        }
    }
}

/// transformers' `RepetitionPenaltyLogitsProcessor` over `previous` (prompt and generated ids).
pub fn apply_repetition_penalty(logits: &mut [f32], previous: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    // Each id is penalised once, however often it occurs (torch.gather/scatter semantics).
    let mut seen = std::collections::HashSet::with_capacity(previous.len());
    for &id in previous {
        if let Some(v) = logits.get_mut(id as usize) {
            if seen.insert(id) {
                *v = if *v < 0.0 { *v * penalty } else { *v / penalty };
            }
        }
    }
}

/// Index of the largest logit; the first one on ties (as `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Candidates examined before falling back to sorting the whole vocabulary:
/// with top-p 0.8 the nucleus is almost always far smaller.
const PARTIAL_SORT_CANDIDATES: usize = 1024;

/// Reusable buffers for sampling, so decoding does not allocate per token.
#[derive(Debug, Default, Clone)]
pub struct Sampler {
    cands: Vec<(u32, f32)>,
}

/// Descending by logit, then ascending by id (the order a stable sort of the
/// ids by logit gives), so the result does not depend on the selection algorithm.
fn by_logit_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

impl Sampler {
    pub fn new() -> Self {
        Self::default()
    }

    /// The distribution sampling draws from after temperature, top-k and
    /// top-p, as `(token, probability)` pairs, most likely first
    /// (probabilities sum to 1). Valid until the next call.
    pub fn distribution(&mut self, logits: &[f32], params: &SamplingParams) -> &[(u32, f32)] {
        let t = params.temperature.max(1e-6);
        let cands = &mut self.cands;
        cands.clear();
        cands.extend(logits.iter().enumerate().map(|(i, &v)| (i as u32, v / t)));
        if cands.is_empty() {
            return cands;
        }
        let max = cands.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        // Softmax denominator over the whole vocabulary (before any filtering).
        let total: f64 = cands.iter().map(|c| ((c.1 - max) as f64).exp()).sum();
        let mut keep = cands.len();
        if params.top_k > 0 && params.top_k < cands.len() {
            keep = params.top_k;
        }
        // Bring the `limit` most likely to the front, sorted.
        let sort_prefix = |cands: &mut Vec<(u32, f32)>, limit: usize| {
            if limit < cands.len() {
                cands.select_nth_unstable_by(limit - 1, by_logit_desc);
                cands[..limit].sort_unstable_by(by_logit_desc);
            } else {
                cands.sort_unstable_by(by_logit_desc);
            }
        };
        let mut sorted = keep.min(PARTIAL_SORT_CANDIDATES);
        sort_prefix(cands, sorted);
        if params.top_p < 1.0 && sorted < keep {
            // Enough candidates sorted when their mass already reaches top_p.
            let mass: f64 = cands[..sorted].iter().map(|c| ((c.1 - max) as f64).exp()).sum::<f64>() / total;
            if mass < params.top_p as f64 {
                sorted = keep;
                sort_prefix(cands, keep);
            }
        } else if sorted < keep {
            sorted = keep;
            sort_prefix(cands, keep);
        }
        if params.top_k > 0 && params.top_k < cands.len() {
            // transformers keeps every token tied with the k-th logit; past
            // the sorted prefix the ties may sit anywhere, so count them all.
            let kth = cands[params.top_k - 1].1;
            let n = params.top_k + cands[params.top_k..].iter().filter(|c| c.1 >= kth).count();
            if n > sorted {
                sort_prefix(cands, n);
            }
            keep = n;
        }
        cands.truncate(keep.max(1));
        let mut sum = 0.0f64;
        for c in cands.iter_mut() {
            c.1 = (c.1 - max).exp();
            sum += c.1 as f64;
        }
        for c in cands.iter_mut() {
            c.1 = (c.1 as f64 / sum) as f32;
        }
        if params.top_p < 1.0 {
            // transformers removes tokens whose ascending cumulative mass is <= 1 - top_p:
            // walking from the most likely token, keep while the mass *after* this
            // token (the ascending cumsum below it) is still > 1 - top_p.
            let threshold = 1.0 - params.top_p as f64;
            let mut below: f64 = 1.0;
            let mut n = 0;
            for c in cands.iter() {
                if below <= threshold && n > 0 {
                    break;
                }
                n += 1;
                below -= c.1 as f64;
            }
            cands.truncate(n.max(1));
            let s: f64 = cands.iter().map(|c| c.1 as f64).sum();
            for c in cands.iter_mut() {
                c.1 = (c.1 as f64 / s) as f32;
            }
        }
        cands
    }

    /// Picks the next token. `logits` is modified (guard, penalty).
    pub fn sample<R: Rng + ?Sized>(
        &mut self,
        logits: &mut [f32],
        params: &SamplingParams,
        previous: &[u32],
        rng: &mut R,
    ) -> u32 {
        // The one draw per sampled token comes first, so a caller that draws
        // it ahead (`uniform_for`, for device sampling) gets the same stream.
        let r = uniform_for(params, rng);
        self.sample_with_uniform(logits, params, previous, r)
    }

    /// [`Sampler::sample`] with the uniform draw in `[0, 1)` already made
    /// ([`uniform_for`]); `r` is ignored for greedy parameters.
    pub fn sample_with_uniform(
        &mut self,
        logits: &mut [f32],
        params: &SamplingParams,
        previous: &[u32],
        r: f64,
    ) -> u32 {
        guard_invalid_scores(logits);
        apply_repetition_penalty(logits, previous, params.repetition_penalty);
        if params.is_greedy() {
            return argmax(logits);
        }
        let dist = self.distribution(logits, params);
        let mut acc = 0.0f64;
        for &(id, p) in dist {
            acc += p as f64;
            if r < acc {
                return id;
            }
        }
        dist.last().map(|c| c.0).unwrap_or(0)
    }
}

/// The uniform draw a sampled token takes from `rng` (none for greedy
/// parameters, which draw nothing).
pub fn uniform_for<R: Rng + ?Sized>(params: &SamplingParams, rng: &mut R) -> f64 {
    if params.is_greedy() {
        0.0
    } else {
        rng.gen::<f64>()
    }
}

/// [`Sampler::distribution`] with fresh buffers.
pub fn candidate_distribution(logits: &[f32], params: &SamplingParams) -> Vec<(u32, f32)> {
    Sampler::new().distribution(logits, params).to_vec()
}

/// [`Sampler::sample`] with fresh buffers.
pub fn sample<R: Rng + ?Sized>(logits: &mut [f32], params: &SamplingParams, previous: &[u32], rng: &mut R) -> u32 {
    Sampler::new().sample(logits, params, previous, rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_greedy_sampler_agrees_with_the_models_greedy_token() {
        // forward_greedy (the GPU's argmax kernel) must pick what sample() picks.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut rows: Vec<Vec<f32>> =
            (0..50).map(|n| (0..(n % 9 + 1) * 37).map(|_| rng.gen_range(-3.0f32..3.0)).collect()).collect();
        rows.push(vec![1.0, 2.0, 2.0, 1.0]);
        rows.push(vec![f32::NAN, 1.0, 3.0, 0.0, 0.0, 0.0, 9.0]);
        rows.push(vec![0.0, f32::INFINITY, 3.0]);
        rows.push(vec![f32::NEG_INFINITY; 8]);
        rows.push(vec![-1.0; 6]);
        let mut sampler = Sampler::new();
        for row in rows {
            let expected = chatglm_model::greedy_token(&row);
            let mut l = row.clone();
            assert_eq!(sampler.sample(&mut l, &SamplingParams::greedy(), &[], &mut rng), expected, "{row:?}");
        }
    }

    #[test]
    fn guard_replaces_invalid_scores() {
        let mut l = vec![1.0, f32::NAN, 2.0, 0.0, 0.0, 0.0, 3.0];
        guard_invalid_scores(&mut l);
        assert_eq!(l, vec![0.0, 0.0, 0.0, 0.0, 0.0, 5e4, 0.0]);
        let mut l = vec![1.0, f32::NEG_INFINITY, 2.0, 0.0, 0.0, 0.0];
        guard_invalid_scores(&mut l);
        assert_eq!(argmax(&l), 5);
        let mut ok = vec![1.0, 2.0];
        guard_invalid_scores(&mut ok);
        assert_eq!(ok, vec![1.0, 2.0]);
    }

    #[test]
    fn repetition_penalty_matches_transformers() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1, 0], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn top_k_keeps_every_tie_of_the_kth_wherever_it_sits() {
        // Ties with the k-th logit scattered through the vocabulary (the GPU
        // sampler found the host keeping only the ties a partial sort left
        // next to it).
        for k in [1usize, 2, 3] {
            let mut logits: Vec<f32> = (0..1000).map(|i| -((i % 17) as f32)).collect();
            for &i in &[10usize, 500, 990] {
                logits[i] = 3.0;
            }
            let p = SamplingParams { temperature: 1.0, top_p: 1.0, top_k: k, ..SamplingParams::default() };
            let mut ids: Vec<u32> = candidate_distribution(&logits, &p).iter().map(|c| c.0).collect();
            ids.sort_unstable();
            assert_eq!(ids, vec![10, 500, 990], "top_k {k}");
        }
    }

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // probs 0.5, 0.3, 0.15, 0.05 (temperature 1)
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let p = SamplingParams { temperature: 1.0, top_p: 0.75, ..Default::default() };
        let d = candidate_distribution(&logits, &p);
        // ascending cumsum: 0.05, 0.2, 0.5, 1.0; removed where <= 0.25 → tokens 3 and 2.
        assert_eq!(d.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 1]);
        assert!((d[0].1 - 0.625).abs() < 1e-6);
        let p = SamplingParams { temperature: 1.0, top_p: 0.85, ..Default::default() };
        assert_eq!(candidate_distribution(&logits, &p).len(), 3);
    }

    #[test]
    fn top_k_and_temperature() {
        let logits = vec![1.0f32, 2.0, 3.0, 4.0];
        let p = SamplingParams { temperature: 0.5, top_k: 2, top_p: 1.0, ..Default::default() };
        let d = candidate_distribution(&logits, &p);
        assert_eq!(d.len(), 2);
        let e = (2.0f32).exp(); // (4-3)/0.5
        assert!((d[0].1 - e / (1.0 + e)).abs() < 1e-6);
    }

    #[test]
    fn draws_follow_the_distribution() {
        // Chi-square goodness of fit over 20k draws, 3 degrees of freedom.
        let probs = [0.1f32, 0.2, 0.3, 0.4];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        let params = SamplingParams { temperature: 1.0, top_p: 1.0, ..Default::default() };
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let n = 20_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[sample(&mut logits.clone(), &params, &[], &mut rng) as usize] += 1;
        }
        let chi2: f64 = counts
            .iter()
            .zip(probs)
            .map(|(&c, p)| {
                let e = n as f64 * p as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum();
        assert!(chi2 < 16.27, "chi2 {chi2} (p < 0.001 critical value 16.27), counts {counts:?}");
    }

    /// The partial selection gives exactly what sorting everything gives.
    #[test]
    fn partial_sort_equals_full_sort() {
        let logits: Vec<f32> = (0..5000).map(|i| ((i * 7919 % 1000) as f32 / 100.0).sin() * 3.0).collect();
        for (top_k, top_p) in [(0, 0.8), (0, 0.999), (40, 0.9), (3000, 1.0), (0, 1.0)] {
            let p = SamplingParams { temperature: 0.7, top_k, top_p, ..Default::default() };
            let got = candidate_distribution(&logits, &p);
            // Reference: stable sort of everything, then the same filters.
            let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &v)| (i as u32, v / 0.7)).collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1));
            let ids: Vec<u32> = got.iter().map(|c| c.0).collect();
            assert_eq!(ids[..], all.iter().map(|c| c.0).take(ids.len()).collect::<Vec<_>>()[..], "k={top_k} p={top_p}");
            let s: f32 = got.iter().map(|c| c.1).sum();
            assert!((s - 1.0).abs() < 1e-4);
        }
    }

    #[test]
    fn seeded_sampling_is_reproducible() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = SamplingParams { seed: Some(7), ..Default::default() };
        let run = || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            (0..20).map(|_| sample(&mut logits.clone(), &p, &[], &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }
}
