//! Counters and histograms the engine loop updates and front ends read
//! (lock-free atomics; the server renders them as Prometheus text).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS_S: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// A cumulative latency histogram (Prometheus semantics).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations ≤ each bound in [`LATENCY_BUCKETS_S`] (non-cumulative; summed when read).
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

/// A point-in-time copy of a [`Histogram`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, cumulative count)`, ending before `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_s: f64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS_S.iter().position(|&b| s <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let buckets = LATENCY_BUCKETS_S
            .iter()
            .zip(&self.buckets)
            .map(|(&b, c)| {
                acc += c.load(Relaxed);
                (b, acc)
            })
            .collect();
        HistogramSnapshot { buckets, count: self.count.load(Relaxed), sum_s: self.sum_us.load(Relaxed) as f64 * 1e-6 }
    }
}

/// Everything the engine counts. Totals only grow; gauges are current values.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Whether the engine thread is running (false once it has ended, by a
    /// panic or after its last handle went away).
    pub engine_alive: std::sync::atomic::AtomicBool,
    /// Panics of the engine thread (0 or 1: it does not restart).
    pub engine_panics: AtomicU64,
    /// Requests accepted into the queue.
    pub requests_submitted: AtomicU64,
    /// Requests refused at submission (queue full, too long, never fits).
    pub requests_rejected: AtomicU64,
    pub requests_finished_stop: AtomicU64,
    pub requests_finished_length: AtomicU64,
    /// Client gone before the end.
    pub requests_cancelled: AtomicU64,
    /// Failed inside the engine.
    pub requests_failed: AtomicU64,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: AtomicU64,
    /// Sampled tokens.
    pub completion_tokens: AtomicU64,
    /// Forward steps run, and the tokens they computed.
    pub steps: AtomicU64,
    /// Running sequences sent back to the queue for KV blocks (they recompute).
    pub preemptions: AtomicU64,
    /// Throwaway rows added to pad decode steps to fixed sizes.
    pub pad_rows: AtomicU64,
    /// Steps queued behind the one on the device, and their rows whose token
    /// that step chose on the device (`EngineConfig::overlap_steps`).
    pub queued_steps: AtomicU64,
    pub chained_rows: AtomicU64,
    /// Microseconds of the engine loop spent in forward passes, and in
    /// everything else while it had work (scheduling, step inputs, sampling
    /// on the host, token handling): the host's share of each step.
    pub forward_us: AtomicU64,
    pub host_us: AtomicU64,
    pub step_tokens: AtomicU64,
    /// Gauge: submitted, not yet running.
    pub queue_depth: AtomicU64,
    /// Gauge: sequences in the running batch.
    pub running: AtomicU64,
    /// Gauges: KV blocks.
    pub kv_blocks_total: AtomicU64,
    pub kv_blocks_reserved: AtomicU64,
    pub kv_blocks_used: AtomicU64,
    /// Gauge: blocks holding finished requests' caches kept for reuse.
    pub kv_blocks_cached: AtomicU64,
    /// Requests that continued a finished request's KV cache, and the prompt
    /// tokens they did not recompute.
    pub prefix_cache_hits: AtomicU64,
    pub prefix_cache_tokens: AtomicU64,
    /// Gauges: bytes of the model's weights (as loaded on its device) and of
    /// the KV budget's blocks.
    pub weight_bytes: AtomicU64,
    pub kv_budget_bytes: AtomicU64,
    /// Gauges of a GPU's memory (sampled about once a second while the
    /// engine runs; 0 with host memory).
    pub device_memory_used_bytes: AtomicU64,
    pub device_memory_total_bytes: AtomicU64,
    pub device_workspace_bytes: AtomicU64,
    /// Gauge and counters: CUDA graphs kept, steps captured, steps replayed.
    pub device_graphs_cached: AtomicU64,
    pub device_graph_captures: AtomicU64,
    pub device_graph_replays: AtomicU64,
    /// Arrival to end, finished requests.
    pub request_latency: Histogram,
    /// Arrival to first token.
    pub time_to_first_token: Histogram,
    /// Arrival to admission.
    pub queue_time: Histogram,
    /// Between consecutive tokens of a request.
    pub inter_token: Histogram,
}

impl EngineStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }
}

/// Stores `backend`'s device memory gauges (nothing for host memory).
pub(crate) fn sample_device_memory<B: chatglm_model::Backend>(backend: &B, stats: &EngineStats) {
    if let Some(m) = backend.device_memory() {
        stats.device_memory_used_bytes.store(m.used_bytes as u64, Relaxed);
        stats.device_memory_total_bytes.store(m.total_bytes as u64, Relaxed);
        stats.device_workspace_bytes.store(m.workspace_bytes as u64, Relaxed);
        stats.device_graphs_cached.store(m.graphs_cached as u64, Relaxed);
        stats.device_graph_captures.store(m.graph_captures, Relaxed);
        stats.device_graph_replays.store(m.graph_replays, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(1000));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.005, 1));
        assert_eq!(s.buckets[3], (0.05, 2));
        assert_eq!(s.buckets.last().map(|b| b.1), Some(2));
        assert!((s.sum_s - 1000.033).abs() < 1e-6);
    }
}
