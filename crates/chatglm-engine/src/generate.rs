//! Single-sequence generation: prefill in chunks, then decode token by token.

use crate::sampling::{uniform_for, Sampler, SamplingParams};
use crate::text::StopMatcher;
use crate::EngineError;
use chatglm_model::{Backend, ForwardState, KvCacheOps, LogitsWanted, Model, SequenceInput, TokenChoice};
use chatglm_tokenizer::{ChatGlmTokenizer, Detokenizer};
use rand::SeedableRng;
use std::time::{Duration, Instant};

/// Prompt tokens per forward call during prefill: large enough for the
/// matrix-matrix kernels to reuse each weight row, small enough that the
/// `(tokens, 2·ffn)` activations stay well under 100 MB for the 6B model.
pub const PREFILL_CHUNK_TOKENS: usize = 512;

/// What to generate and when to stop.
#[derive(Debug, Clone)]
pub struct GenerationConfig {
    pub sampling: SamplingParams,
    /// Total length (context + prompt + generated), as the official `max_length`.
    pub max_length: usize,
    /// At most this many new tokens.
    pub max_new_tokens: Option<usize>,
    /// Stop when the text contains one of these (the stop string is not returned).
    pub stop: Vec<String>,
    /// Token ids that end generation (ChatGLM2: `</s>` = 2).
    pub eos_ids: Vec<u32>,
    /// Greedy decoding with each step queued before the host reads the one
    /// ahead (its token taken on the device), so the device does not wait
    /// for the host between tokens; a token that ends the reply (end of
    /// text, a stop string) then costs one step computed and dropped.
    /// `None`: where the backend queues steps (a GPU); `Some(true)` on a
    /// backend that computes at launch is for tests.
    pub queue_steps: Option<bool>,
}

impl Default for GenerationConfig {
    /// The official `chat()` defaults.
    fn default() -> Self {
        Self {
            sampling: SamplingParams::default(),
            max_length: 8192,
            max_new_tokens: None,
            stop: Vec::new(),
            eos_ids: vec![2],
            queue_steps: None,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token or a stop string.
    Stop,
    /// `max_length`, `max_new_tokens` or the model's context.
    Length,
    /// The caller asked to stop (Ctrl-C, client gone).
    Cancelled,
}

impl FinishReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Wall-clock split of one generation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub prompt_tokens: usize,
    pub prefill: Duration,
    pub generated_tokens: usize,
    pub decode: Duration,
}

impl Timings {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }
    /// Decode rate over the tokens after the first (the first comes from prefill).
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// The result of one generation.
#[derive(Debug, Clone)]
pub struct GenerationOutput {
    /// Sampled ids, including a final EOS id if one was produced.
    pub generated_ids: Vec<u32>,
    /// Decoded text (cut before a stop string).
    pub text: String,
    pub finish_reason: FinishReason,
    pub timings: Timings,
}

/// Generates after `cache` (which may hold earlier rounds) from `new_ids`.
/// `on_text` receives text deltas as they become final; returning `false`
/// cancels. The cache ends holding everything fed to the model (the last
/// sampled token is not fed, as in the official code).
#[allow(clippy::too_many_arguments)]
pub fn generate<B: Backend>(
    model: &Model<B>,
    tokenizer: &ChatGlmTokenizer,
    state: &mut ForwardState<B>,
    cache: &mut B::Cache,
    new_ids: &[u32],
    config: &GenerationConfig,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<GenerationOutput, EngineError> {
    config.sampling.validate().map_err(|e| EngineError::InvalidParameter(e.to_string()))?;
    if new_ids.is_empty() {
        return Err(EngineError::InvalidParameter("the prompt is empty".into()));
    }
    let context_limit = model.config.seq_length;
    let total_prompt = cache.len() + new_ids.len();
    if total_prompt >= config.max_length {
        return Err(EngineError::ContextFull {
            prompt_tokens: total_prompt,
            limit: config.max_length,
            which: "max_length",
            hint: " or raise --max-length",
        });
    }
    if total_prompt >= context_limit {
        return Err(EngineError::ContextFull {
            prompt_tokens: total_prompt,
            limit: context_limit,
            which: "the model's seq_length",
            hint: "",
        });
    }
    let mut rng = match config.sampling.seed {
        Some(seed) => rand::rngs::StdRng::seed_from_u64(seed),
        None => rand::rngs::StdRng::from_entropy(),
    };
    let vocab = model.config.padded_vocab_size;
    let start_len = cache.len();

    // Prefill.
    let t0 = Instant::now();
    // Without a repetition penalty the model chooses each token (on a GPU
    // only its id crosses to the host): the greedy one, or a draw with the
    // uniform number this generator makes for it. A penalty needs the host's
    // sampler and the full logits; so does a row the device leaves to it.
    let mut step = TokenStep {
        sampling: &config.sampling,
        greedy: config.sampling.is_greedy() && config.sampling.repetition_penalty == 1.0,
        on_device: config.sampling.repetition_penalty == 1.0,
        logits: Vec::with_capacity(vocab),
        chosen: None,
        drawn: None,
    };
    let chunks: Vec<&[u32]> = new_ids.chunks(model.backend.prefill_chunk_tokens()).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let wanted = if i + 1 == chunks.len() { LogitsWanted::Last } else { LogitsWanted::None };
        let mut batch = [SequenceInput { tokens: chunk, cache: &mut *cache, logits: wanted }];
        if let Err(e) = step.run(model, state, &mut batch, &mut rng) {
            cache.truncate(start_len);
            return Err(e.into());
        }
    }
    let prefill = t0.elapsed();

    // Decode.
    let t1 = Instant::now();
    let stops = StopMatcher::new(&config.stop);
    let mut detok = Detokenizer::new(tokenizer);
    let mut text = String::new();
    let mut emitted = 0;
    let mut generated = Vec::new();
    // Repetition penalty looks at the whole visible sequence of this round.
    let mut previous: Vec<u32> = if config.sampling.repetition_penalty != 1.0 { new_ids.to_vec() } else { Vec::new() };
    let max_new = config.max_new_tokens.unwrap_or(usize::MAX);
    let mut sampler = Sampler::new();
    let queued = step.greedy && config.queue_steps.unwrap_or_else(|| model.backend.queues_steps());
    // Whether the token making the reply `generated` long, at `total` tokens
    // in all, is the last by length (known before its value).
    let last_by_length =
        |generated: usize, total: usize| total >= config.max_length || generated >= max_new || total >= context_limit;
    // Queued decoding: a step feeding the current token is on the device.
    let mut in_flight = false;
    let finish = loop {
        let token = match (step.chosen, step.drawn) {
            (Some(id), _) => id,
            (None, Some(u)) => sampler.sample_with_uniform(&mut step.logits, &config.sampling, &previous, u),
            (None, None) => sampler.sample(&mut step.logits, &config.sampling, &previous, &mut rng),
        };
        generated.push(token);
        if config.sampling.repetition_penalty != 1.0 {
            previous.push(token);
        }
        let total = cache.len() - usize::from(in_flight) + 1;
        if queued && !in_flight && !last_by_length(generated.len(), total) {
            // Feed the token before looking at it (dropped if it ends the reply).
            let mut batch = [SequenceInput { tokens: &[token], cache: &mut *cache, logits: LogitsWanted::Last }];
            if let Err(e) = model.launch_greedy(state, &mut batch, &[None]) {
                drain_launched(model, state);
                return Err(e.into());
            }
            in_flight = true;
        }
        if config.eos_ids.contains(&token) {
            break FinishReason::Stop;
        }
        let before = text.len();
        detok.push_into(token, &mut text);
        if let Some(at) = stops.find_new(&text, before) {
            text.truncate(at);
            break FinishReason::Stop;
        }
        let ready = text.len() - stops.holdback(&text);
        if ready > emitted {
            if !on_text(&text[emitted..ready]) {
                emitted = ready;
                break FinishReason::Cancelled;
            }
            emitted = ready;
        }
        if last_by_length(generated.len(), total) {
            break FinishReason::Length;
        }
        if queued {
            // The step feeding this token is on the device; queue the one
            // feeding the next (unless that one is the last by length), then
            // read this one's choice.
            let feed_next = !last_by_length(generated.len() + 1, total + 1);
            if feed_next {
                let mut batch = [SequenceInput { tokens: &[0], cache: &mut *cache, logits: LogitsWanted::Last }];
                if let Err(e) = model.launch_greedy(state, &mut batch, &[Some(0)]) {
                    drain_launched(model, state);
                    return Err(e.into());
                }
            }
            match model.collect_greedy(state) {
                Ok(ids) => step.chosen = ids.first().copied(),
                Err(e) => {
                    drain_launched(model, state);
                    return Err(e.into());
                }
            }
            in_flight = feed_next;
            continue;
        }
        let mut batch = [SequenceInput { tokens: &[token], cache: &mut *cache, logits: LogitsWanted::Last }];
        step.run(model, state, &mut batch, &mut rng)?;
    };
    if in_flight {
        // The queued step fed a token that ended the reply: drop it.
        drain_launched(model, state);
        cache.truncate(cache.len() - 1);
    }
    if finish != FinishReason::Cancelled {
        text.push_str(&detok.finish());
        if let Some(at) = stops.find(&text) {
            text.truncate(at);
        }
        if text.len() > emitted {
            on_text(&text[emitted..]);
        }
    }
    let timings =
        Timings { prompt_tokens: new_ids.len(), prefill, generated_tokens: generated.len(), decode: t1.elapsed() };
    Ok(GenerationOutput { generated_ids: generated, text, finish_reason: finish, timings })
}

/// Reads (and drops) every step launched and not yet read.
fn drain_launched<B: Backend>(model: &Model<B>, state: &mut ForwardState<B>) {
    while state.launched_steps() > 0 {
        let _ = model.collect_greedy(state);
    }
}

/// One forward step of [`generate`] and what it leaves for choosing the next
/// token: the model's choice, or logits for the host's sampler (with the
/// uniform draw already made when the device was asked to draw).
struct TokenStep<'p> {
    sampling: &'p SamplingParams,
    greedy: bool,
    on_device: bool,
    logits: Vec<f32>,
    chosen: Option<u32>,
    drawn: Option<f64>,
}

impl TokenStep<'_> {
    fn run<B: Backend>(
        &mut self,
        model: &Model<B>,
        state: &mut ForwardState<B>,
        batch: &mut [SequenceInput<'_, B::Cache>],
        rng: &mut rand::rngs::StdRng,
    ) -> Result<(), chatglm_model::ModelError> {
        let wants_logits = batch.iter().any(|s| s.logits != LogitsWanted::None);
        self.chosen = None;
        self.drawn = None;
        if self.greedy {
            self.chosen = model.forward_greedy(state, batch)?.first().copied();
        } else if self.on_device {
            let choices: Vec<TokenChoice> = if wants_logits {
                let uniform = uniform_for(self.sampling, rng);
                self.drawn = Some(uniform);
                let p = self.sampling;
                vec![TokenChoice { temperature: p.temperature, top_p: p.top_p, top_k: p.top_k, uniform }]
            } else {
                Vec::new()
            };
            let step = model.forward_sampled(state, batch, &choices)?;
            self.chosen = step.ids.first().copied().flatten();
            self.logits.clear();
            self.logits.extend_from_slice(step.logits);
        } else {
            let l = model.forward(state, batch)?;
            self.logits.clear();
            self.logits.extend_from_slice(l);
        }
        Ok(())
    }
}
