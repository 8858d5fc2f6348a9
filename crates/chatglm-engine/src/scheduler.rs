//! The continuous-batching scheduler: a model-free state machine.
//!
//! Each step, [`Scheduler::schedule`] returns a [`StepPlan`]: how many tokens
//! to compute for which sequence. Prefill and decode are the same thing — a
//! sequence has tokens it knows but has not computed yet (its whole prompt at
//! first, then the one token sampled last step) — so one step mixes them
//! under a token budget, and long prompts are prefilled in chunks over
//! several steps.
//!
//! Policy, in order, within `max_batch_tokens`:
//! 1. every running sequence that is decoding gets its one token (steady
//!    inter-token latency for streaming clients);
//! 2. running sequences still prefilling get chunks, oldest first;
//! 3. waiting sequences are admitted strictly first-in first-out while the
//!    batch has room (`max_batch_size`) and the head's first chunk fits in
//!    the free KV blocks; a head that does not fit yet blocks those behind
//!    it (no overtaking, so no starvation).
//!
//! KV blocks are taken as sequences grow, not reserved for their maximum
//! length at admission, so a budget holds as many chats as their actual
//! lengths allow. When a running sequence needs a block and none is free,
//! the youngest running sequence is preempted: its blocks are freed, it goes
//! back to the front of the queue, and when readmitted it recomputes its
//! prompt and what it generated so far (listed in [`StepPlan::preempted`], so
//! the engine clears its cache). The oldest running sequence can always
//! grow (one sequence never needs more than the budget), so a step never
//! deadlocks on memory and no request fails for lack of it.
//!
//! Finished sequences may leave their blocks *retained* (oldest first out):
//! a new sequence whose prompt starts with a retained one's tokens (the next
//! round of a chat) takes those blocks over and starts computing after them.
//! Retained blocks are the first to go when blocks run short — before any
//! running sequence is preempted (listed in [`StepPlan::evicted`], so the
//! engine drops their caches).

use crate::kv_blocks::BlockAllocator;
use chatglm_model::KvBlockId;
use std::collections::{HashMap, VecDeque};

/// Identifies a sequence (one request).
pub type SeqId = u64;

/// Limits of one scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Tokens computed per step, all sequences together.
    pub max_batch_tokens: usize,
    /// Sequences running at once.
    pub max_batch_size: usize,
    /// Tokens per KV block.
    pub block_size_tokens: usize,
    /// KV blocks in the memory budget.
    pub total_blocks: usize,
    /// Cache rows in front of every sequence's tokens (a P-Tuning v2 prefix).
    pub lead_rows: usize,
}

impl SchedulerConfig {
    /// Checks the limits; the error names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch_size == 0 {
            return Err("max_batch_size must be at least 1".into());
        }
        if self.max_batch_tokens < self.max_batch_size {
            return Err(format!(
                "max_batch_tokens ({}) must be at least max_batch_size ({}) so every running sequence can decode each step",
                self.max_batch_tokens, self.max_batch_size
            ));
        }
        if self.block_size_tokens == 0 {
            return Err("block_size_tokens must be at least 1".into());
        }
        if self.total_blocks == 0 {
            return Err("the KV budget holds no block; raise it".into());
        }
        Ok(())
    }
}

/// Why a sequence was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmitError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("sequence {0} is already scheduled")]
    DuplicateId(SeqId),
    #[error(
        "the prompt needs {needed_tokens} tokens of KV cache but the whole KV budget holds {capacity_tokens}; shorten it or raise the KV budget"
    )]
    NeverFits { needed_tokens: usize, capacity_tokens: usize },
}

/// Tokens to compute for one sequence this step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledChunk {
    pub id: SeqId,
    /// Tokens already in the sequence's cache (where this chunk starts).
    pub start: usize,
    pub n_tokens: usize,
    /// Whether the chunk ends at the last known token, so the step's logits
    /// for it are sampled.
    pub sample: bool,
}

/// One step's work, in batch order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    pub chunks: Vec<ScheduledChunk>,
    /// Sequences that left the queue and joined the batch this step.
    pub admitted: Vec<SeqId>,
    /// Sequences preempted this step: their caches must be cleared (they
    /// recompute everything when readmitted).
    pub preempted: Vec<SeqId>,
    /// Retained (finished) sequences whose blocks were taken back this step.
    pub evicted: Vec<SeqId>,
}

impl StepPlan {
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub fn total_tokens(&self) -> usize {
        self.chunks.iter().map(|c| c.n_tokens).sum()
    }
}

#[derive(Debug, Clone)]
struct SeqEntry {
    /// Tokens the sequence knows (prompt, then sampled ones).
    known_tokens: usize,
    /// Tokens computed (in the cache, or being computed this step).
    computed_tokens: usize,
    prompt_tokens: usize,
    /// The most tokens the sequence may hold (what `add` returned).
    max_tokens: usize,
    /// Blocks held for its computed tokens (this step's included), in
    /// position order.
    blocks: Vec<KvBlockId>,
    running: bool,
}

/// Waiting queue, running batch and KV accounting.
#[derive(Debug, Clone)]
pub struct Scheduler {
    config: SchedulerConfig,
    blocks: BlockAllocator,
    waiting: VecDeque<SeqId>,
    /// In admission order.
    running: Vec<SeqId>,
    seqs: HashMap<SeqId, SeqEntry>,
    /// Finished sequences' blocks kept for reuse, oldest first.
    retained: VecDeque<(SeqId, Vec<KvBlockId>)>,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self, String> {
        config.validate()?;
        Ok(Self {
            blocks: BlockAllocator::new(config.block_size_tokens, config.total_blocks).with_lead_rows(config.lead_rows),
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            seqs: HashMap::new(),
            retained: VecDeque::new(),
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Tokens the whole KV budget holds.
    pub fn capacity_tokens(&self) -> usize {
        self.config.total_blocks * self.config.block_size_tokens
    }

    /// Queues a sequence with `prompt_tokens` tokens that may grow to
    /// `max_total_tokens`. Returns the most tokens it may reach
    /// (`max_total_tokens`, or less when the whole budget is smaller): the
    /// caller must end the sequence there.
    pub fn add(&mut self, id: SeqId, prompt_tokens: usize, max_total_tokens: usize) -> Result<usize, AdmitError> {
        self.add_reusing(id, prompt_tokens, max_total_tokens, Vec::new(), 0)
    }

    /// As [`Scheduler::add`], for a sequence whose first `computed` prompt
    /// tokens are already in `blocks` (taken with
    /// [`Scheduler::take_retained`]); it computes from there. On an error
    /// the blocks are freed.
    pub fn add_reusing(
        &mut self,
        id: SeqId,
        prompt_tokens: usize,
        max_total_tokens: usize,
        mut blocks: Vec<KvBlockId>,
        computed: usize,
    ) -> Result<usize, AdmitError> {
        let checked = if prompt_tokens == 0 {
            Err(AdmitError::EmptyPrompt)
        } else if self.seqs.contains_key(&id) {
            Err(AdmitError::DuplicateId(id))
        } else if prompt_tokens + 1 > self.capacity_tokens() {
            // Room for the prompt and at least one sampled token.
            Err(AdmitError::NeverFits { needed_tokens: prompt_tokens + 1, capacity_tokens: self.capacity_tokens() })
        } else {
            Ok(())
        };
        if let Err(e) = checked {
            self.blocks.free(&mut blocks);
            return Err(e);
        }
        let computed = computed.min(prompt_tokens - 1);
        let keep = self.blocks.blocks_for(computed).min(blocks.len());
        let mut extra = blocks.split_off(keep);
        self.blocks.free(&mut extra);
        let computed = if blocks.len() < self.blocks.blocks_for(computed) { 0 } else { computed };
        if computed == 0 {
            self.blocks.free(&mut blocks);
        }
        let total = max_total_tokens.max(prompt_tokens + 1).min(self.capacity_tokens());
        self.seqs.insert(
            id,
            SeqEntry {
                known_tokens: prompt_tokens,
                computed_tokens: computed,
                prompt_tokens,
                max_tokens: total,
                blocks,
                running: false,
            },
        );
        self.waiting.push_back(id);
        Ok(total)
    }

    /// Ends sequence `id` keeping the blocks of its first `tokens` computed
    /// tokens for a later sequence to take over (the rest are freed).
    /// Returns `false` for an unknown sequence (nothing retained).
    pub fn retain(&mut self, id: SeqId, tokens: usize) -> bool {
        let Some(mut s) = self.seqs.remove(&id) else {
            return false;
        };
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
        let keep = self.blocks.blocks_for(tokens.min(s.computed_tokens)).min(s.blocks.len());
        let mut extra = s.blocks.split_off(keep);
        self.blocks.free(&mut extra);
        if s.blocks.is_empty() {
            return false;
        }
        self.retained.push_back((id, s.blocks));
        true
    }

    /// Takes over retained sequence `id`'s blocks for its first `tokens`
    /// tokens (the rest are freed); `None` if it is not retained (any more).
    pub fn take_retained(&mut self, id: SeqId, tokens: usize) -> Option<Vec<KvBlockId>> {
        let at = self.retained.iter().position(|(r, _)| *r == id)?;
        let (_, mut blocks) = self.retained.remove(at)?;
        let mut extra = blocks.split_off(self.blocks.blocks_for(tokens).min(blocks.len()));
        self.blocks.free(&mut extra);
        Some(blocks)
    }

    /// Frees retained sequence `id`'s blocks. Returns `false` if it was not retained.
    pub fn drop_retained(&mut self, id: SeqId) -> bool {
        let Some(at) = self.retained.iter().position(|(r, _)| *r == id) else {
            return false;
        };
        if let Some((_, mut blocks)) = self.retained.remove(at) {
            self.blocks.free(&mut blocks);
        }
        true
    }

    /// `blocks_for(tokens)` free blocks for a sequence about to be added with
    /// [`Scheduler::add_reusing`] (its first tokens copied in); `None` if
    /// that many are not free (nothing is evicted or preempted for it).
    pub fn allocate_blocks_for(&mut self, tokens: usize) -> Option<Vec<KvBlockId>> {
        let mut blocks = Vec::new();
        self.blocks.allocate(self.blocks.blocks_for(tokens), &mut blocks).then_some(blocks)
    }

    /// Gives back blocks from [`Scheduler::allocate_blocks_for`] that were not used.
    pub fn free_detached(&mut self, mut blocks: Vec<KvBlockId>) {
        self.blocks.free(&mut blocks);
    }

    /// Blocks held by retained sequences.
    pub fn retained_blocks(&self) -> usize {
        self.retained.iter().map(|(_, b)| b.len()).sum()
    }

    /// Allocates `n` blocks into `blocks`, taking retained sequences' blocks
    /// back (oldest first) while too few are free.
    fn allocate_evicting(&mut self, n: usize, blocks: &mut Vec<KvBlockId>, plan: &mut StepPlan) -> bool {
        loop {
            if self.blocks.allocate(n, blocks) {
                return true;
            }
            let Some((id, mut held)) = self.retained.pop_front() else {
                return false;
            };
            self.blocks.free(&mut held);
            plan.evicted.push(id);
        }
    }

    /// Plans the next step and marks its tokens as computed.
    pub fn schedule(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.config.max_batch_tokens;

        // 1. Decodes, then 2. prefill chunks, each in admission order.
        for decoding in [true, false] {
            let mut i = 0;
            while i < self.running.len() && budget > 0 {
                let id = self.running[i];
                let Some(s) = self.seqs.get(&id) else {
                    i += 1;
                    continue;
                };
                let pending = s.known_tokens - s.computed_tokens;
                let is_decode = s.computed_tokens >= s.prompt_tokens;
                if pending == 0 || is_decode != decoding {
                    i += 1;
                    continue;
                }
                let n = pending.min(budget);
                // Room for the chunk, preempting the youngest others if needed.
                if !self.grow(id, s.computed_tokens + n, &mut plan, &mut budget) {
                    // `id` was the youngest: it was preempted itself.
                    continue;
                }
                let Some(s) = self.seqs.get_mut(&id) else { continue };
                plan.chunks.push(chunk(id, s, n));
                s.computed_tokens += n;
                budget -= n;
                i = self.running.iter().position(|&r| r == id).map_or(i, |p| p + 1);
            }
        }

        // 3. Admission, strictly FIFO, while the head's first chunk fits.
        while budget > 0 && self.running.len() < self.config.max_batch_size {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            let Some(s) = self.seqs.get_mut(&id) else {
                self.waiting.pop_front();
                continue;
            };
            let n = (s.known_tokens - s.computed_tokens).min(budget);
            let need = self.blocks.blocks_for(s.computed_tokens + n).saturating_sub(s.blocks.len());
            let mut got = Vec::new();
            if !self.allocate_evicting(need, &mut got, &mut plan) {
                break;
            }
            let Some(s) = self.seqs.get_mut(&id) else { continue };
            s.blocks.extend(got);
            self.waiting.pop_front();
            s.running = true;
            plan.chunks.push(chunk(id, s, n));
            s.computed_tokens += n;
            budget -= n;
            self.running.push(id);
            plan.admitted.push(id);
        }
        plan
    }

    /// Gives running sequence `id` blocks for `tokens` computed tokens,
    /// preempting the youngest other running sequences while blocks are
    /// short. Returns `false` when `id` itself was the youngest and was
    /// preempted instead.
    fn grow(&mut self, id: SeqId, tokens: usize, plan: &mut StepPlan, budget: &mut usize) -> bool {
        loop {
            let Some(s) = self.seqs.get_mut(&id) else { return false };
            let need = self.blocks.blocks_for(tokens).saturating_sub(s.blocks.len());
            let mut got = Vec::new();
            if self.allocate_evicting(need, &mut got, plan) {
                if let Some(s) = self.seqs.get_mut(&id) {
                    s.blocks.extend(got);
                }
                return true;
            }
            let Some(&victim) = self.running.last() else { return false };
            self.preempt(victim, plan, budget);
            if victim == id {
                return false;
            }
        }
    }

    /// Frees a running sequence's blocks and requeues it at the front, to
    /// recompute its tokens when readmitted; a chunk it had in `plan` goes.
    fn preempt(&mut self, id: SeqId, plan: &mut StepPlan, budget: &mut usize) {
        let Some(s) = self.seqs.get_mut(&id) else { return };
        self.blocks.free(&mut s.blocks);
        s.computed_tokens = 0;
        s.running = false;
        if let Some(at) = plan.chunks.iter().position(|c| c.id == id) {
            *budget += plan.chunks.remove(at).n_tokens;
        }
        plan.admitted.retain(|&a| a != id);
        self.running.retain(|&r| r != id);
        self.waiting.push_front(id);
        plan.preempted.push(id);
    }

    /// Records the token sampled for `id`; it is computed next step.
    /// Returns `false` for an unknown sequence or one already at the length
    /// `add` returned (the caller must end it).
    pub fn append_token(&mut self, id: SeqId) -> bool {
        match self.seqs.get_mut(&id) {
            Some(s) if s.known_tokens < s.max_tokens => {
                s.known_tokens += 1;
                true
            }
            _ => false,
        }
    }

    /// Removes a sequence (finished or cancelled, waiting or running) and
    /// frees its blocks at once. Returns `false` for an unknown sequence.
    pub fn remove(&mut self, id: SeqId) -> bool {
        let Some(mut s) = self.seqs.remove(&id) else {
            return false;
        };
        // A waiting sequence may hold blocks it took over from a retained one.
        self.blocks.free(&mut s.blocks);
        if s.running {
            self.running.retain(|&r| r != id);
        } else {
            self.waiting.retain(|&w| w != id);
        }
        true
    }

    pub fn is_idle(&self) -> bool {
        self.seqs.is_empty()
    }

    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// Tokens of sequence `id` counted as computed (0 for an unknown one).
    pub fn computed_tokens(&self, id: SeqId) -> usize {
        self.seqs.get(&id).map_or(0, |s| s.computed_tokens)
    }

    pub fn is_running(&self, id: SeqId) -> bool {
        self.seqs.get(&id).is_some_and(|s| s.running)
    }

    pub fn total_blocks(&self) -> usize {
        self.blocks.total_blocks()
    }

    /// The blocks sequence `id` holds, in position order (empty when it is
    /// not running).
    pub fn blocks_of(&self, id: SeqId) -> &[KvBlockId] {
        self.seqs.get(&id).map_or(&[], |s| &s.blocks)
    }

    pub fn free_blocks(&self) -> usize {
        self.blocks.free_blocks()
    }

    /// Blocks reserved by running sequences.
    pub fn reserved_blocks(&self) -> usize {
        self.blocks.reserved_blocks()
    }

    /// Blocks actually holding computed tokens (≤ reserved).
    pub fn used_blocks(&self) -> usize {
        self.running.iter().filter_map(|id| self.seqs.get(id)).map(|s| self.blocks.blocks_for(s.computed_tokens)).sum()
    }
}

fn chunk(id: SeqId, s: &SeqEntry, n: usize) -> ScheduledChunk {
    ScheduledChunk { id, start: s.computed_tokens, n_tokens: n, sample: s.computed_tokens + n == s.known_tokens }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
