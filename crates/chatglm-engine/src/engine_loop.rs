//! The engine loop: one plain thread that owns the model, every sequence and
//! the scheduler, and talks to the world only through channels.
//!
//! Each step: take new requests, drop those whose client is gone (freeing
//! their KV blocks), ask the scheduler for a plan, run one batched forward
//! pass, then sample for every sequence whose chunk reached its last known
//! token. Sequences never see each other: the forward pass keeps every row
//! independent, so a greedy request produces the same tokens in any batch.

use crate::generate::FinishReason;
use crate::request::Request;
use crate::scheduler::{Scheduler, SeqId, StepPlan};
use crate::sequence::{Progress, Sequence};
use crate::stats::EngineStats;
use chatglm_model::{
    Backend, ForwardState, KvBlockId, KvCacheOps, KvDType, LogitsWanted, Model, SequenceInput, TokenChoice,
};
use chatglm_tokenizer::ChatGlmTokenizer;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Messages to the loop.
pub(crate) enum Command {
    Submit(Request),
    /// Ends the loop with a panic: tests of what front ends do when the
    /// engine thread dies ([`crate::EngineHandle::crash_for_tests`]).
    Crash,
}

pub(crate) struct LoopSetup<'s, B: Backend> {
    pub model: Model<B>,
    pub tokenizer: Arc<ChatGlmTokenizer>,
    pub kv_dtype: KvDType,
    pub scheduler: Scheduler,
    pub rx: mpsc::Receiver<Command>,
    pub stats: &'s EngineStats,
    /// Finished requests' caches kept for reuse (0: none).
    pub retain_max: usize,
    /// Padding of decode steps: the first of the blocks set aside for the
    /// throwaway rows and how many each row takes (`None`: no padding).
    pub pad_blocks: Option<(usize, usize)>,
    /// Queue greedy steps behind the running one ([`crate::EngineConfig::overlap_steps`]).
    pub overlap: bool,
}

/// Fewest prompt tokens worth continuing from a finished request's cache.
const MIN_REUSE_TOKENS: usize = 16;

/// The candidate sharing the longest prefix with `prompt`, and its length:
/// at least MIN_REUSE_TOKENS and short of the whole prompt (its last token is
/// computed for the logits).
fn longest_reusable<'a, K>(candidates: impl Iterator<Item = (K, &'a [u32])>, prompt: &[u32]) -> Option<(K, usize)> {
    let limit = prompt.len().saturating_sub(1);
    candidates
        .map(|(k, tokens)| (k, tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(limit)))
        .max_by_key(|&(_, n)| n)
        .filter(|&(_, n)| n >= MIN_REUSE_TOKENS)
}

/// A finished request's cache, kept for a prompt that starts with its tokens.
struct Retained<C> {
    id: SeqId,
    /// The tokens in the cache, in order.
    tokens: Vec<u32>,
    cache: C,
}

struct Loop<'t, B: Backend> {
    model: &'t Model<B>,
    tokenizer: &'t ChatGlmTokenizer,
    kv_dtype: KvDType,
    scheduler: Scheduler,
    seqs: HashMap<SeqId, Sequence<'t, B::Cache>>,
    stats: &'t EngineStats,
    /// Oldest first; the scheduler holds their blocks.
    retained: std::collections::VecDeque<Retained<B::Cache>>,
    retain_max: usize,
    /// As [`LoopSetup::pad_blocks`].
    pad_blocks: Option<(usize, usize)>,
    /// Caches of the throwaway rows that pad decode steps (one position each).
    pad_caches: Vec<B::Cache>,
    /// As [`LoopSetup::overlap`].
    overlap: bool,
    /// The step launched and not yet read (with `overlap`).
    in_flight: Option<InFlight>,
}

/// A greedy step queued on the device whose tokens the host has not read.
struct InFlight {
    /// The sequences it samples, in logits-row order.
    sampled: Vec<SeqId>,
    /// Every sequence in it (failed together if the step fails).
    in_batch: Vec<SeqId>,
    /// Sampled sequences the scheduler could not give another token: they
    /// end with this one (their token was counted when the step was queued).
    capped: Vec<SeqId>,
}

/// The token of a row whose real token the step before is choosing on the
/// device (never read: the backend takes the chosen id).
const CHAINED_PLACEHOLDER: [u32; 1] = [0];

/// Sizes padded decode steps take (steps of 3–256 sequences).
const DECODE_STEP_SIZES: [usize; 13] = [4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256];

/// The most throwaway rows a padded step takes (the widest gap between sizes).
pub(crate) const MAX_PAD_ROWS: usize = 31;

/// The size a decode step of `n` sequences is padded to, if any.
fn padded_step_size(n: usize) -> Option<usize> {
    DECODE_STEP_SIZES.iter().copied().find(|&s| s >= n).filter(|&s| n >= 3 && s > n)
}

/// How a step's sampled tokens are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepReadout {
    /// All greedy: the model returns the ids.
    Greedy,
    /// No repetition penalty: the model draws each token (or leaves a row's
    /// logits to the host's sampler, with the draw already made).
    Device,
    /// A repetition penalty somewhere: logits for the host's sampler.
    Host,
}

/// Runs until every sender is dropped and no request is left.
pub(crate) fn run_loop<B: Backend>(setup: LoopSetup<'_, B>) {
    let LoopSetup { model, tokenizer, kv_dtype, scheduler, rx, stats, retain_max, pad_blocks, overlap } = setup;
    let mut state = ForwardState::new(&model.backend);
    let mut this = Loop {
        model: &model,
        tokenizer: &tokenizer,
        kv_dtype,
        scheduler,
        seqs: HashMap::new(),
        stats,
        retained: Default::default(),
        retain_max,
        pad_blocks,
        pad_caches: Vec::new(),
        overlap,
        in_flight: None,
    };
    let mut open = true;
    let (mut row, mut chosen) = (Vec::new(), Vec::new());
    let mut memory_sampled = Instant::now();
    loop {
        if memory_sampled.elapsed() >= Duration::from_secs(1) {
            crate::stats::sample_device_memory(&model.backend, stats);
            memory_sampled = Instant::now();
        }
        // Intake: block only when there is nothing to do.
        if this.scheduler.is_idle() && this.in_flight.is_none() {
            if !open {
                break;
            }
            match rx.recv() {
                Ok(cmd) => this.handle(cmd),
                Err(_) => break,
            }
        }
        while open {
            match rx.try_recv() {
                Ok(cmd) => this.handle(cmd),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => open = false,
            }
        }
        let busy_from = Instant::now();
        let forward_before = this.stats.forward_us.load(Relaxed);
        this.drop_cancelled();
        let plan = this.scheduler.schedule();
        if plan.is_empty() {
            if this.in_flight.is_some() {
                // Nothing more to queue: read the step on the device.
                this.collect_in_flight(&mut state, &mut row, &mut chosen);
                this.publish_gauges();
            } else if !this.scheduler.is_idle() {
                // Nothing runnable (cannot happen with FIFO admission and
                // reservations, but never spin if it does).
                std::thread::sleep(Duration::from_millis(5));
            }
            continue;
        }
        this.step(&mut state, &plan, &mut row, &mut chosen);
        this.publish_gauges();
        let busy = busy_from.elapsed().as_micros() as u64;
        let forward = this.stats.forward_us.load(Relaxed).saturating_sub(forward_before);
        this.stats.host_us.fetch_add(busy.saturating_sub(forward), Relaxed);
    }
    tracing::debug!("engine loop finished");
}

impl<'t, B: Backend> Loop<'t, B> {
    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(request) => self.submit(request),
            Command::Crash => panic!("engine crash requested (EngineHandle::crash_for_tests)"),
        }
    }

    fn submit(&mut self, request: Request) {
        let id = request.id;
        let context = self.model.config.seq_length;
        let prompt_len = request.prompt_ids.len();
        // The most tokens this sequence can reach: what its KV reservation covers.
        let wanted = request
            .params
            .max_length
            .unwrap_or(context)
            .min(context)
            .min(request.params.max_new_tokens.map_or(usize::MAX, |n| prompt_len.saturating_add(n)));
        // Continue a finished request's cache when this prompt starts with
        // its tokens (the next round of a chat), else start empty.
        // Only for a prompt the scheduler can take: a refused one must not use a kept cache up.
        let admissible = prompt_len > 0 && prompt_len < self.scheduler.capacity_tokens();
        let reused = if admissible {
            self.take_longest_prefix(&request.prompt_ids).or_else(|| self.copy_longest_prefix(&request.prompt_ids))
        } else {
            None
        };
        let (cache, added) = match reused {
            Some((cache, blocks, n)) => (cache, self.scheduler.add_reusing(id, prompt_len, wanted, blocks, n)),
            None => (self.model.new_cache(self.kv_dtype), self.scheduler.add(id, prompt_len, wanted)),
        };
        let mut seq = Sequence::new(request, self.tokenizer, cache, wanted);
        match added {
            Ok(granted) => {
                seq.limit_total = granted;
                // What the scheduler counts as computed is what the cache keeps.
                let computed = self.scheduler.computed_tokens(id);
                if KvCacheOps::len(&seq.cache) > computed {
                    KvCacheOps::truncate(&mut seq.cache, computed);
                }
                if computed > 0 {
                    self.stats.prefix_cache_hits.fetch_add(1, Relaxed);
                    self.stats.prefix_cache_tokens.fetch_add(computed as u64, Relaxed);
                }
                self.seqs.insert(id, seq);
            }
            Err(e) => {
                self.stats.queue_depth.fetch_sub(1, Relaxed);
                self.stats.requests_failed.fetch_add(1, Relaxed);
                seq.fail(e.to_string());
            }
        }
        self.publish_gauges();
    }

    /// The retained cache sharing the longest prefix with `prompt` (at least
    /// MIN_REUSE_TOKENS, and short of the whole prompt: its last token is
    /// computed for the logits), cut to that prefix, with its blocks.
    fn take_longest_prefix(&mut self, prompt: &[u32]) -> Option<(B::Cache, Vec<chatglm_model::KvBlockId>, usize)> {
        if self.retain_max == 0 {
            return None;
        }
        let (at, n) = longest_reusable(self.retained.iter().enumerate().map(|(i, r)| (i, &r.tokens[..])), prompt)?;
        let mut r = self.retained.remove(at)?;
        let blocks = self.scheduler.take_retained(r.id, n)?;
        KvCacheOps::truncate(&mut r.cache, n);
        Some((r.cache, blocks, n))
    }

    /// A copy of the longest prefix (as in `take_longest_prefix`) that a
    /// running or waiting sequence's cache shares with `prompt` — a system
    /// prompt or conversation other requests are using now — in fresh blocks,
    /// where the backend can copy caches and blocks are free.
    fn copy_longest_prefix(&mut self, prompt: &[u32]) -> Option<(B::Cache, Vec<chatglm_model::KvBlockId>, usize)> {
        if self.retain_max == 0 {
            return None;
        }
        let (src, n) = longest_reusable(
            self.seqs.iter().map(|(&id, s)| (id, &s.tokens[..KvCacheOps::len(&s.cache).min(s.tokens.len())])),
            prompt,
        )?;
        let blocks = self.scheduler.allocate_blocks_for(n)?;
        let mut cache = self.model.new_cache(self.kv_dtype);
        // A paged cache copies into the blocks it will keep.
        let copied = KvCacheOps::use_blocks(&mut cache, &blocks).is_ok()
            && self.seqs.get(&src).is_some_and(|s| KvCacheOps::copy_prefix_from(&mut cache, &s.cache, n));
        if !copied {
            self.scheduler.free_detached(blocks);
            return None;
        }
        Some((cache, blocks, n))
    }

    /// Ends running sequence `id` in the scheduler, keeping its cache (and
    /// blocks) for a later prompt that continues it, where that is on.
    fn release(&mut self, id: SeqId) {
        let keep = self.retain_max > 0
            && self.scheduler.is_running(id)
            && self.seqs.get(&id).is_some_and(|s| KvCacheOps::len(&s.cache) >= MIN_REUSE_TOKENS);
        let Some(seq) = self.seqs.get_mut(&id).filter(|_| keep) else {
            self.scheduler.remove(id);
            return;
        };
        let cached = KvCacheOps::len(&seq.cache).min(seq.tokens.len());
        let tokens = seq.tokens[..cached].to_vec();
        let cache = std::mem::replace(&mut seq.cache, self.model.new_cache(self.kv_dtype));
        if self.scheduler.retain(id, cached) {
            self.retained.push_back(Retained { id, tokens, cache });
            while self.retained.len() > self.retain_max {
                if let Some(old) = self.retained.pop_front() {
                    self.scheduler.drop_retained(old.id);
                }
            }
        }
    }

    /// Cancels every request whose client is gone, waiting or running.
    fn drop_cancelled(&mut self) {
        let gone: Vec<SeqId> = self.seqs.iter().filter(|(_, s)| s.is_closed()).map(|(&id, _)| id).collect();
        for id in gone {
            self.cancel(id);
        }
    }

    fn cancel(&mut self, id: SeqId) {
        let was_running = self.scheduler.is_running(id);
        self.scheduler.remove(id);
        // Gauges before counters: whoever sees the cancellation sees the blocks freed.
        self.publish_gauges();
        if let Some(seq) = self.seqs.remove(&id) {
            if !was_running {
                self.stats.queue_depth.fetch_sub(1, Relaxed);
            }
            self.stats.requests_cancelled.fetch_add(1, Relaxed);
            let t = seq.timings(Instant::now());
            tracing::info!(
                request = id,
                prompt_tokens = seq.prompt_len,
                completion_tokens = seq.completion_tokens(),
                finish = "cancelled",
                total_ms = t.total.as_millis() as u64,
                "request cancelled"
            );
        }
    }

    fn step(
        &mut self,
        state: &mut ForwardState<B>,
        plan: &StepPlan,
        row: &mut Vec<f32>,
        chosen: &mut Vec<Option<u32>>,
    ) {
        let now = Instant::now();
        // Retained caches whose blocks the scheduler took back.
        for id in &plan.evicted {
            self.retained.retain(|r| r.id != *id);
        }
        // Preempted sequences recompute from scratch when readmitted.
        for id in &plan.preempted {
            if let Some(seq) = self.seqs.get_mut(id) {
                chatglm_model::KvCacheOps::clear(&mut seq.cache);
                self.stats.preemptions.fetch_add(1, Relaxed);
                self.stats.queue_depth.fetch_add(1, Relaxed);
            }
        }
        for id in &plan.admitted {
            if let Some(seq) = self.seqs.get_mut(id) {
                self.stats.queue_depth.fetch_sub(1, Relaxed);
                if seq.mark_admitted(now) {
                    self.stats.prompt_tokens.fetch_add(seq.prompt_len as u64, Relaxed);
                    self.stats.queue_time.observe(seq.timings(now).queued);
                }
            }
        }

        // How this step's tokens are chosen: greedy ids from the model, ids
        // the model draws (each sequence's uniform number drawn here, as its
        // host sampler would), or logits for the host (a repetition penalty).
        let readout = {
            let sampled_seqs = plan.chunks.iter().filter(|c| c.sample).filter_map(|c| self.seqs.get(&c.id));
            let mut greedy = true;
            let mut device = true;
            for seq in sampled_seqs {
                greedy &= seq.greedy_without_penalty();
                device &= seq.penalty_free();
            }
            if greedy {
                StepReadout::Greedy
            } else if device {
                StepReadout::Device
            } else {
                StepReadout::Host
            }
        };
        // A greedy step is queued behind the one on the device, a decode row
        // whose token that step is choosing taking it there; anything else
        // waits for that step's tokens first.
        let queue = self.overlap && readout == StepReadout::Greedy;
        let mut chain_rows: HashMap<SeqId, usize> = match &self.in_flight {
            Some(f) if queue => f.sampled.iter().enumerate().map(|(i, &id)| (id, i)).collect(),
            _ => HashMap::new(),
        };
        let chainable = |c: &crate::scheduler::ScheduledChunk, seq: &Sequence<'t, B::Cache>| {
            c.start + c.n_tokens <= seq.tokens.len()
                || (c.n_tokens == 1 && c.start == seq.tokens.len() && chain_rows.contains_key(&c.id))
        };
        let all_chainable = plan.chunks.iter().all(|c| self.seqs.get(&c.id).is_none_or(|seq| chainable(c, seq)));
        if self.in_flight.is_some() && (!queue || !all_chainable) {
            self.collect_in_flight(state, row, chosen);
            chain_rows.clear();
        }
        // Borrow each planned sequence's tokens and cache, in plan order.
        let mut by_id: HashMap<SeqId, &mut Sequence<'t, B::Cache>> = self
            .seqs
            .iter_mut()
            .filter(|(id, _)| plan.chunks.iter().any(|c| c.id == **id))
            .map(|(&id, s)| (id, s))
            .collect();
        let mut inputs = Vec::with_capacity(plan.chunks.len());
        let mut from_previous = Vec::with_capacity(plan.chunks.len());
        let mut sampled: Vec<SeqId> = Vec::new();
        let mut in_batch: Vec<SeqId> = Vec::new();
        let mut choices = Vec::new();
        let mut failed = Vec::new();
        for c in &plan.chunks {
            let Some(seq) = by_id.remove(&c.id) else {
                continue;
            };
            // The token the step on the device is choosing for this row.
            let chained = (c.start + c.n_tokens > seq.tokens.len()).then(|| chain_rows.remove(&c.id)).flatten();
            if c.start + c.n_tokens > seq.tokens.len() && chained.is_none() {
                continue;
            }
            // The cache reads and writes the blocks the scheduler gave it.
            if let Err(e) = KvCacheOps::use_blocks(&mut seq.cache, self.scheduler.blocks_of(c.id)) {
                failed.push((c.id, format!("KV cache: {e}")));
                continue;
            }
            in_batch.push(c.id);
            if c.sample {
                sampled.push(c.id);
                if readout == StepReadout::Device {
                    choices.extend(seq.token_choice());
                }
            }
            let tokens = match chained {
                Some(_) => &CHAINED_PLACEHOLDER[..],
                None => &seq.tokens[c.start..c.start + c.n_tokens],
            };
            from_previous.push(chained);
            inputs.push(SequenceInput {
                tokens,
                cache: &mut seq.cache,
                logits: if c.sample { LogitsWanted::Last } else { LogitsWanted::None },
            });
        }
        // A decode step of a size the backend replays badly takes throwaway
        // rows (token 0 at position 0 of a cache of their own, their logits
        // unread) up to the next fixed size.
        let pad = padded_step_size(inputs.len())
            .zip(self.pad_blocks)
            .filter(|_| readout != StepReadout::Host)
            .filter(|_| plan.chunks.iter().all(|c| c.n_tokens == 1 && c.sample) && inputs.len() == sampled.len());
        if let Some((size, (first_block, per_row))) = pad {
            let extra = size - inputs.len();
            self.stats.pad_rows.fetch_add(extra as u64, Relaxed);
            while self.pad_caches.len() < extra {
                self.pad_caches.push(self.model.new_cache(self.kv_dtype));
            }
            // Each row's own blocks, set aside from the budget at start-up.
            let ids: Vec<KvBlockId> = (first_block..first_block + extra * per_row).map(|b| b as KvBlockId).collect();
            for (cache, ids) in self.pad_caches.iter_mut().zip(ids.chunks(per_row)) {
                KvCacheOps::clear(cache);
                if let Err(e) = KvCacheOps::use_blocks(cache, ids) {
                    tracing::error!("padding rows: {e}");
                    break;
                }
                inputs.push(SequenceInput { tokens: &[0], cache, logits: LogitsWanted::Last });
                from_previous.push(None);
                if readout == StepReadout::Device {
                    choices.push(TokenChoice { temperature: 0.0, top_p: 1.0, top_k: 0, uniform: 0.0 });
                }
            }
        }
        drop(by_id);
        let forward_from = Instant::now();
        let result = if queue {
            self.stats.queued_steps.fetch_add(1, Relaxed);
            self.stats.chained_rows.fetch_add(from_previous.iter().flatten().count() as u64, Relaxed);
            self.model.launch_greedy(state, &mut inputs, &from_previous).map(|()| {
                chosen.clear();
                &[][..]
            })
        } else {
            match readout {
                StepReadout::Greedy => self.model.forward_greedy(state, &mut inputs).map(|ids| {
                    chosen.clear();
                    chosen.extend(ids.iter().map(|&t| Some(t)));
                    &[][..]
                }),
                StepReadout::Device => self.model.forward_sampled(state, &mut inputs, &choices).map(|step| {
                    chosen.clear();
                    chosen.extend_from_slice(step.ids);
                    step.logits
                }),
                StepReadout::Host => self.model.forward(state, &mut inputs),
            }
        };
        drop(inputs);
        self.stats.forward_us.fetch_add(forward_from.elapsed().as_micros() as u64, Relaxed);
        for (id, message) in failed {
            tracing::error!(request = id, "{message}");
            self.fail(id, message);
        }
        self.stats.steps.fetch_add(1, Relaxed);
        self.stats.step_tokens.fetch_add(plan.total_tokens() as u64, Relaxed);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                let message = format!("the forward pass failed: {e}");
                tracing::error!(error = %e, "forward pass failed; failing its batch");
                for id in in_batch {
                    self.fail(id, message.clone());
                }
                // The step chained onto is read (and its sequences failed
                // with it if the device failed).
                self.collect_in_flight(state, row, chosen);
                return;
            }
        };
        if queue {
            // Each sampled sequence gets its next token now, for the next
            // plan; the value arrives when this step is read.
            let capped = sampled.iter().copied().filter(|&id| !self.scheduler.append_token(id)).collect();
            let queued = InFlight { sampled, in_batch, capped };
            // The device runs the new step while the host takes the tokens of
            // the step before it.
            self.collect_in_flight(state, row, chosen);
            self.in_flight = Some(queued);
            return;
        }
        self.take_tokens(&sampled, readout, chosen, logits, &choices, row, None);
    }

    /// Waits for the step in flight, if any, and takes its tokens.
    fn collect_in_flight(&mut self, state: &mut ForwardState<B>, row: &mut Vec<f32>, chosen: &mut Vec<Option<u32>>) {
        let Some(f) = self.in_flight.take() else {
            return;
        };
        let wait_from = Instant::now();
        let ids = self.model.collect_greedy(state).map(|ids| ids.to_vec());
        self.stats.forward_us.fetch_add(wait_from.elapsed().as_micros() as u64, Relaxed);
        match ids {
            Ok(ids) => {
                chosen.clear();
                chosen.extend(ids.into_iter().map(Some));
                self.take_tokens(&f.sampled, StepReadout::Greedy, chosen, &[], &[], row, Some(&f.capped));
            }
            Err(e) => {
                let message = format!("the forward pass failed: {e}");
                tracing::error!(error = %e, "a queued step failed; failing its batch");
                for id in f.in_batch {
                    self.fail(id, message.clone());
                }
            }
        }
    }

    /// Hands each sampled sequence its token (in `chosen`, or drawn from its
    /// row of `logits`). `counted`: the step was queued, each sequence's token
    /// already counted by the scheduler, these sequences at their limit.
    #[allow(clippy::too_many_arguments)]
    fn take_tokens(
        &mut self,
        sampled: &[SeqId],
        readout: StepReadout,
        chosen: &[Option<u32>],
        logits: &[f32],
        choices: &[TokenChoice],
        row: &mut Vec<f32>,
        counted: Option<&[SeqId]>,
    ) {
        let vocab = self.model.config.padded_vocab_size;
        let now = Instant::now();
        for (i, &id) in sampled.iter().enumerate() {
            let Some(seq) = self.seqs.get_mut(&id) else {
                continue;
            };
            let first = seq.completion_tokens() == 0;
            if let Some(prev) = seq.last_token_at() {
                self.stats.inter_token.observe(now.saturating_duration_since(prev));
            }
            let on_device = match readout {
                StepReadout::Host => None,
                _ => chosen.get(i).copied(),
            };
            let progress = match on_device {
                Some(Some(token)) => seq.on_token(token, now),
                _ => {
                    let Some(r) = logits.get(i * vocab..(i + 1) * vocab) else {
                        continue;
                    };
                    row.clear();
                    row.extend_from_slice(r);
                    match (readout, choices.get(i)) {
                        (StepReadout::Device, Some(c)) => seq.on_logits_drawn(row, c.uniform, now),
                        _ => seq.on_logits(row, now),
                    }
                }
            };
            self.stats.completion_tokens.fetch_add(1, Relaxed);
            if first {
                self.stats.time_to_first_token.observe(seq.timings(now).time_to_first_token());
            }
            match progress {
                Progress::Continue => {
                    let room = match counted {
                        Some(capped) => !capped.contains(&id),
                        None => self.scheduler.append_token(id),
                    };
                    if !room {
                        self.finish(id, FinishReason::Length, now);
                    }
                }
                Progress::Finished(reason) => self.finish(id, reason, now),
                Progress::Cancelled => self.cancel(id),
            }
        }
    }

    fn finish(&mut self, id: SeqId, reason: FinishReason, now: Instant) {
        self.release(id);
        let Some(mut seq) = self.seqs.remove(&id) else {
            return;
        };
        let c = seq.finish(reason, now);
        let counter = match reason {
            FinishReason::Length => &self.stats.requests_finished_length,
            _ => &self.stats.requests_finished_stop,
        };
        counter.fetch_add(1, Relaxed);
        self.stats.request_latency.observe(c.timings.total);
        tracing::info!(
            request = id,
            prompt_tokens = c.prompt_tokens,
            completion_tokens = c.completion_tokens,
            finish = reason.as_str(),
            queue_ms = c.timings.queued.as_millis() as u64,
            ttft_ms = c.timings.time_to_first_token().as_millis() as u64,
            total_ms = c.timings.total.as_millis() as u64,
            "request finished"
        );
        // Statistics first: a client that saw its last event sees them updated.
        self.publish_gauges();
        seq.send_finished(c);
    }

    fn fail(&mut self, id: SeqId, message: String) {
        self.scheduler.remove(id);
        if let Some(mut seq) = self.seqs.remove(&id) {
            self.stats.requests_failed.fetch_add(1, Relaxed);
            self.publish_gauges();
            seq.fail(message);
        }
    }

    fn publish_gauges(&self) {
        let s = self.stats;
        let sch = &self.scheduler;
        s.running.store(sch.running_len() as u64, Relaxed);
        // Blocks kept for finished requests' caches are given back on demand:
        // counted apart, not as reserved.
        let cached = sch.retained_blocks();
        s.kv_blocks_reserved.store(sch.reserved_blocks().saturating_sub(cached) as u64, Relaxed);
        s.kv_blocks_cached.store(cached as u64, Relaxed);
        s.kv_blocks_used.store(sch.used_blocks() as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::padded_step_size;

    #[test]
    fn decode_steps_of_3_to_256_sequences_pad_to_the_next_fixed_size() {
        // 1–2 sequences run the mat-vec kernels (their graphs need no
        // padding); sizes already fixed, and steps past 256, stay as they are.
        for (n, want) in [(1, None), (2, None), (3, Some(4)), (4, None), (5, Some(8)), (17, Some(24))] {
            assert_eq!(padded_step_size(n), want, "{n}");
        }
        for (n, want) in [(64, None), (65, Some(96)), (200, Some(224)), (256, None), (257, None), (1000, None)] {
            assert_eq!(padded_step_size(n), want, "{n}");
        }
    }
}
