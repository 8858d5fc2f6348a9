//! Starting the engine loop and talking to it: [`Engine::spawn`],
//! [`EngineHandle::submit`] and the limits a front end validates against.

use crate::engine_loop::{run_loop, Command, LoopSetup};
use crate::kv_blocks::BlockAllocator;
use crate::request::Request;
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::stats::EngineStats;
use crate::EngineError;
use chatglm_model::{Backend, KvDType, Model};
use chatglm_tokenizer::ChatGlmTokenizer;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

/// Knobs of the engine loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Tokens computed per step, prefill and decode together.
    pub max_batch_tokens: usize,
    /// Sequences running at once.
    pub max_batch_size: usize,
    /// Requests waiting to join the batch before new ones are refused.
    pub max_queue: usize,
    /// Tokens per KV block.
    pub block_size_tokens: usize,
    /// Bytes of KV cache all running sequences may hold together.
    pub kv_budget_bytes: usize,
    /// Finished requests whose KV cache is kept (inside the budget, given
    /// back first when blocks run short) for a request whose prompt starts
    /// with their tokens — the next round of a chat — to continue from;
    /// 0 turns the reuse off.
    pub prefix_cache_entries: usize,
    /// Pad decode steps of 3–256 sequences to the next of a few batch sizes
    /// with throwaway rows, so the backend replays one CUDA graph per size
    /// instead of capturing one for every count. `None`: as the backend asks
    /// ([`chatglm_model::Backend::pads_decode_steps`]).
    pub pad_decode_steps: Option<bool>,
    /// Queue each greedy step behind the one the device is running, its
    /// decode rows taking their tokens on the device, and handle the step
    /// ahead's tokens (detokenizing, streaming, scheduling) meanwhile.
    /// `None`: where the backend queues steps
    /// ([`chatglm_model::Backend::queues_steps`]: a GPU); on a backend that
    /// computes at launch it only delays each token's delivery by a step
    /// (`Some(true)` there is for tests).
    pub overlap_steps: Option<bool>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch_tokens: 512,
            max_batch_size: 32,
            max_queue: 256,
            block_size_tokens: 16,
            kv_budget_bytes: 4 << 30,
            prefix_cache_entries: 8,
            pad_decode_steps: None,
            overlap_steps: None,
        }
    }
}

/// Fixed facts about a running engine, for validation and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// The model's context (`seq_length`).
    pub context_tokens: usize,
    /// Tokens the whole KV budget holds.
    pub kv_capacity_tokens: usize,
    pub kv_total_blocks: usize,
    pub block_size_tokens: usize,
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub max_queue: usize,
}

/// Why a request was not queued. Each is the client's doing except
/// `EngineStopped`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// `param` names the request field (none where no field is to blame).
    #[error("invalid parameter: {message}")]
    InvalidParameter { param: Option<&'static str>, message: String },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt is {prompt_tokens} tokens but the limit is {limit} ({which})")]
    PromptTooLong { prompt_tokens: usize, limit: usize, which: &'static str },
    #[error("the queue is full ({0} requests waiting); retry later")]
    QueueFull(usize),
    #[error("the engine has stopped")]
    EngineStopped,
}

struct Shared {
    stats: EngineStats,
    limits: EngineLimits,
    next_id: AtomicU64,
}

/// A cheap, cloneable way to submit requests and read statistics. The loop
/// ends once every handle is dropped and the last request has finished.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

/// The engine thread and a handle to it.
pub struct Engine {
    pub handle: EngineHandle,
    thread: JoinHandle<()>,
}

impl Engine {
    /// Starts the loop on its own thread. The model and tokenizer move there;
    /// the tokenizer is shared with the caller (for encoding prompts).
    pub fn spawn<B: Backend + Send + 'static>(
        model: Model<B>,
        tokenizer: Arc<ChatGlmTokenizer>,
        kv_dtype: KvDType,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        // A paged backend fixes the block size; the engine's blocks are its.
        let block = model.backend.kv_block_tokens().unwrap_or(config.block_size_tokens).max(1);
        let total_blocks =
            BlockAllocator::blocks_in_budget(config.kv_budget_bytes, model.kv_bytes_per_token(kv_dtype), block);
        // Padded decode steps' throwaway rows get blocks of their own after
        // the budget's (allocated with them, never handed to a sequence).
        let lead_rows = model.prefix.as_ref().map_or(0, |p| p.len);
        let pad_blocks = config
            .pad_decode_steps
            .unwrap_or_else(|| model.backend.pads_decode_steps())
            .then_some((total_blocks, (lead_rows + 1).div_ceil(block)));
        let pad_total = pad_blocks.map_or(0, |(_, per_row)| crate::engine_loop::MAX_PAD_ROWS * per_row);
        model.backend.provide_kv_blocks(kv_dtype, total_blocks + pad_total)?;
        let sched_config = SchedulerConfig {
            max_batch_tokens: config.max_batch_tokens,
            max_batch_size: config.max_batch_size,
            block_size_tokens: block,
            total_blocks,
            lead_rows,
        };
        let scheduler = Scheduler::new(sched_config).map_err(EngineError::InvalidParameter)?;
        let limits = EngineLimits {
            context_tokens: model.config.seq_length,
            kv_capacity_tokens: scheduler.capacity_tokens(),
            kv_total_blocks: total_blocks,
            block_size_tokens: block,
            max_batch_size: config.max_batch_size,
            max_batch_tokens: config.max_batch_tokens,
            max_queue: config.max_queue,
        };
        let shared = Arc::new(Shared { stats: EngineStats::default(), limits, next_id: AtomicU64::new(1) });
        shared.stats.kv_blocks_total.store(total_blocks as u64, Relaxed);
        let embedding = model.backend.matrix_bytes(&model.weights.embedding);
        shared.stats.weight_bytes.store((model.weight_bytes() + embedding) as u64, Relaxed);
        let block_bytes = model.kv_bytes_per_token(kv_dtype) * block;
        shared.stats.kv_budget_bytes.store((total_blocks * block_bytes) as u64, Relaxed);
        crate::stats::sample_device_memory(&model.backend, &shared.stats);
        let overlap = config.overlap_steps.unwrap_or_else(|| model.backend.queues_steps());
        let (tx, rx) = mpsc::channel();
        let loop_shared = Arc::clone(&shared);
        shared.stats.engine_alive.store(true, Relaxed);
        let thread = std::thread::Builder::new()
            .name("chatglm-engine".into())
            .spawn(move || {
                let _alive = AliveGuard(&loop_shared.stats);
                run_loop(LoopSetup {
                    model,
                    tokenizer,
                    kv_dtype,
                    scheduler,
                    rx,
                    stats: &loop_shared.stats,
                    retain_max: config.prefix_cache_entries,
                    pad_blocks,
                    overlap,
                })
            })
            .map_err(|e| EngineError::InvalidParameter(format!("cannot start the engine thread: {e}")))?;
        Ok(Self { handle: EngineHandle { tx, shared }, thread })
    }

    /// Drops this handle and waits for the loop to finish every request
    /// (other handles must be dropped too).
    pub fn shutdown(self) {
        drop(self.handle);
        if self.thread.join().is_err() {
            tracing::error!("the engine thread panicked");
        }
    }
}

/// Marks the engine dead when its thread ends, and counts a panic if that is
/// how it ended (drops run while a panic unwinds).
struct AliveGuard<'a>(&'a EngineStats);

impl Drop for AliveGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.engine_panics.fetch_add(1, Relaxed);
            tracing::error!("the engine thread panicked; requests now fail with 'the engine has stopped'");
        }
        self.0.engine_alive.store(false, Relaxed);
    }
}

impl EngineHandle {
    /// Whether the engine thread is still running.
    pub fn is_alive(&self) -> bool {
        self.shared.stats.engine_alive.load(Relaxed)
    }

    /// Makes the engine thread panic, for tests of how front ends report a
    /// dead engine. Never called by the front ends themselves.
    #[doc(hidden)]
    pub fn crash_for_tests(&self) {
        let _ = self.tx.send(Command::Crash);
    }

    /// A fresh request id.
    pub fn next_id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Relaxed)
    }

    pub fn limits(&self) -> &EngineLimits {
        &self.shared.limits
    }

    pub fn stats(&self) -> &EngineStats {
        &self.shared.stats
    }

    /// Validates and queues a request; events then arrive in its sink.
    pub fn submit(&self, request: Request) -> Result<(), SubmitError> {
        let stats = &self.shared.stats;
        let result = self.check(&request).and_then(|()| {
            let depth = stats.queue_depth.fetch_add(1, Relaxed) as usize;
            if depth >= self.shared.limits.max_queue {
                stats.queue_depth.fetch_sub(1, Relaxed);
                return Err(SubmitError::QueueFull(depth));
            }
            self.tx.send(Command::Submit(request)).map_err(|_| {
                stats.queue_depth.fetch_sub(1, Relaxed);
                SubmitError::EngineStopped
            })
        });
        match &result {
            Ok(()) => stats.requests_submitted.fetch_add(1, Relaxed),
            Err(_) => stats.requests_rejected.fetch_add(1, Relaxed),
        };
        result
    }

    fn check(&self, request: &Request) -> Result<(), SubmitError> {
        let limits = &self.shared.limits;
        let p = &request.params;
        p.sampling
            .validate()
            .map_err(|e| SubmitError::InvalidParameter { param: Some(e.param), message: e.message })?;
        let n = request.prompt_ids.len();
        if n == 0 {
            return Err(SubmitError::EmptyPrompt);
        }
        if p.max_new_tokens == Some(0) {
            return Err(SubmitError::InvalidParameter {
                param: Some("max_tokens"),
                message: "max_tokens must be at least 1".into(),
            });
        }
        // As `generate`: the prompt plus one sampled token must fit each limit.
        let too_long = |limit: usize, which| {
            if n >= limit {
                Err(SubmitError::PromptTooLong { prompt_tokens: n, limit, which })
            } else {
                Ok(())
            }
        };
        if let Some(max_length) = p.max_length {
            too_long(max_length, "max_length")?;
        }
        too_long(limits.context_tokens, "the model's context length")?;
        too_long(limits.kv_capacity_tokens, "the server's KV-cache budget")?;
        Ok(())
    }
}
