//! One request inside the engine loop: its tokens, KV cache, sampler state,
//! detokenizer and stop conditions. The per-token logic mirrors
//! [`crate::generate()`] exactly, so a request run in a batch produces what
//! `generate` produces alone.

use crate::generate::FinishReason;
use crate::request::{Completion, EventSink, Request, RequestEvent, RequestParams, RequestTimings};
use crate::sampling::{uniform_for, Sampler};
use crate::text::StopMatcher;
use chatglm_model::{KvCache, KvCacheOps, TokenChoice};
use chatglm_tokenizer::{ChatGlmTokenizer, Detokenizer};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::time::Instant;

/// What happened after a token was sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// The token was appended; feed it next step.
    Continue,
    Finished(FinishReason),
    /// The client is gone.
    Cancelled,
}

/// `C`: the backend's KV cache.
pub(crate) struct Sequence<'t, C: KvCacheOps = KvCache> {
    /// Prompt, then every sampled token that is to be fed.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    pub cache: C,
    /// Generation ends with `Length` when prompt + generated reaches this.
    pub limit_total: usize,
    params: RequestParams,
    max_new: usize,
    rng: StdRng,
    sampler: Sampler,
    stops: StopMatcher,
    detok: Detokenizer<'t>,
    text: String,
    emitted: usize,
    generated: Vec<u32>,
    sink: Box<dyn EventSink>,
    arrived: Instant,
    admitted: Option<Instant>,
    first_token: Option<Instant>,
    /// When the last token was taken (for inter-token latency).
    last_token: Option<Instant>,
}

impl<'t, C: KvCacheOps> Sequence<'t, C> {
    pub fn new(request: Request, tokenizer: &'t ChatGlmTokenizer, cache: C, limit_total: usize) -> Self {
        let rng = match request.params.sampling.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Self {
            prompt_len: request.prompt_ids.len(),
            tokens: request.prompt_ids,
            cache,
            limit_total,
            max_new: request.params.max_new_tokens.unwrap_or(usize::MAX),
            stops: StopMatcher::new(&request.params.stop),
            params: request.params,
            rng,
            sampler: Sampler::new(),
            detok: Detokenizer::new(tokenizer),
            text: String::new(),
            emitted: 0,
            generated: Vec::new(),
            sink: request.sink,
            arrived: request.arrived,
            admitted: None,
            first_token: None,
            last_token: None,
        }
    }

    /// Records the first admission; returns whether this was it (a
    /// sequence readmitted after preemption keeps its first time).
    pub fn mark_admitted(&mut self, now: Instant) -> bool {
        let first = self.admitted.is_none();
        self.admitted.get_or_insert(now);
        first
    }

    pub fn is_closed(&self) -> bool {
        self.sink.is_closed()
    }

    pub fn completion_tokens(&self) -> usize {
        self.generated.len()
    }

    /// Samples from this sequence's logits row (modified in place), streams
    /// any text that became final and applies the stop conditions.
    pub fn on_logits(&mut self, logits: &mut [f32], now: Instant) -> Progress {
        // Repetition penalty looks at the whole visible sequence (prompt + generated).
        let previous: &[u32] = if self.params.sampling.repetition_penalty != 1.0 { &self.tokens } else { &[] };
        let token = self.sampler.sample(logits, &self.params.sampling, previous, &mut self.rng);
        self.on_token(token, now)
    }

    /// How the device may choose this sequence's next token (drawing its
    /// uniform number now, as the host sampler would), or `None` with a
    /// repetition penalty, which the host applies.
    pub fn token_choice(&mut self) -> Option<TokenChoice> {
        if !self.penalty_free() {
            return None;
        }
        let p = &self.params.sampling;
        let uniform = uniform_for(p, &mut self.rng);
        Some(TokenChoice {
            temperature: if p.is_greedy() { 0.0 } else { p.temperature },
            top_p: p.top_p,
            top_k: p.top_k,
            uniform,
        })
    }

    /// Samples from this sequence's logits row with the draw `token_choice`
    /// already made (the device left this row to the host).
    pub fn on_logits_drawn(&mut self, logits: &mut [f32], uniform: f64, now: Instant) -> Progress {
        let token = self.sampler.sample_with_uniform(logits, &self.params.sampling, &[], uniform);
        self.on_token(token, now)
    }

    /// Whether the model may choose this sequence's tokens (no repetition
    /// penalty, which needs the host).
    pub fn penalty_free(&self) -> bool {
        self.params.sampling.repetition_penalty == 1.0
    }

    /// Whether this sequence's next token is the greedy one with nothing to
    /// apply first, so the model may choose it (`Model::forward_greedy`; on a
    /// GPU only the id crosses to the host) instead of returning logits.
    pub fn greedy_without_penalty(&self) -> bool {
        self.params.sampling.is_greedy() && self.params.sampling.repetition_penalty == 1.0
    }

    /// When the previous token was taken (None before the first).
    pub fn last_token_at(&self) -> Option<Instant> {
        self.last_token
    }

    /// Takes the next token, chosen by the sampler or by the model.
    pub fn on_token(&mut self, token: u32, now: Instant) -> Progress {
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
        self.generated.push(token);
        let total = self.prompt_len + self.generated.len();
        if self.params.eos_ids.contains(&token) {
            return Progress::Finished(FinishReason::Stop);
        }
        let before = self.text.len();
        self.detok.push_into(token, &mut self.text);
        if let Some(at) = self.stops.find_new(&self.text, before) {
            self.text.truncate(at);
            return Progress::Finished(FinishReason::Stop);
        }
        let ready = self.text.len() - self.stops.holdback(&self.text);
        if ready > self.emitted {
            let delta = self.text[self.emitted..ready].to_string();
            self.emitted = ready;
            if !self.sink.send(RequestEvent::Text(delta)) {
                return Progress::Cancelled;
            }
        }
        if total >= self.limit_total || self.generated.len() >= self.max_new {
            return Progress::Finished(FinishReason::Length);
        }
        self.tokens.push(token);
        Progress::Continue
    }

    /// Flushes held-back text (sending the last delta) and returns the
    /// completion; [`Self::send_finished`] then ends the stream.
    pub fn finish(&mut self, reason: FinishReason, now: Instant) -> Completion {
        self.text.push_str(&self.detok.finish());
        if let Some(at) = self.stops.find(&self.text) {
            self.text.truncate(at);
        }
        if self.text.len() > self.emitted {
            let delta = self.text[self.emitted..].to_string();
            self.emitted = self.text.len();
            self.sink.send(RequestEvent::Text(delta));
        }
        Completion {
            finish_reason: reason,
            text: self.text.clone(),
            generated_ids: self.generated.clone(),
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated.len(),
            timings: self.timings(now),
        }
    }

    pub fn send_finished(&mut self, completion: Completion) {
        self.sink.send(RequestEvent::Finished(completion));
    }

    /// Tells the client the request failed.
    pub fn fail(&mut self, message: String) {
        self.sink.send(RequestEvent::Failed(message));
    }

    pub fn timings(&self, now: Instant) -> RequestTimings {
        let admitted = self.admitted.unwrap_or(now);
        let first = self.first_token.unwrap_or(now);
        RequestTimings {
            queued: admitted.saturating_duration_since(self.arrived),
            prefill: first.saturating_duration_since(admitted),
            decode: now.saturating_duration_since(first),
            total: now.saturating_duration_since(self.arrived),
        }
    }
}
