//! `GET /metrics`: Prometheus text exposition of the engine's counters,
//! gauges and latency histograms, and HTTP responses by status.

use crate::state::{AppState, COUNTED_STATUSES};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use chatglm_engine::stats::HistogramSnapshot;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

fn scalar(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

fn scalar_f64(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &HistogramSnapshot) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (le, n) in &h.buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum_s);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

/// The exposition text.
pub fn render(state: &AppState) -> String {
    let s = state.engine().stats();
    let g = |a: &AtomicU64| a.load(Relaxed);
    let mut out = String::with_capacity(4096);
    scalar(
        &mut out,
        "chatglm_requests_total",
        "counter",
        "Requests accepted into the queue.",
        g(&s.requests_submitted),
    );
    scalar(
        &mut out,
        "chatglm_requests_rejected_total",
        "counter",
        "Requests refused at submission (queue full, prompt too long, bad parameters).",
        g(&s.requests_rejected),
    );
    let _ = writeln!(
        out,
        "# HELP chatglm_requests_finished_total Requests that ended, by reason.\n# TYPE chatglm_requests_finished_total counter"
    );
    for (reason, v) in [
        ("stop", &s.requests_finished_stop),
        ("length", &s.requests_finished_length),
        ("cancelled", &s.requests_cancelled),
        ("failed", &s.requests_failed),
    ] {
        let _ = writeln!(out, "chatglm_requests_finished_total{{reason=\"{reason}\"}} {}", g(v));
    }
    scalar(
        &mut out,
        "chatglm_prompt_tokens_total",
        "counter",
        "Prompt tokens of admitted requests (tokens in).",
        g(&s.prompt_tokens),
    );
    scalar(
        &mut out,
        "chatglm_completion_tokens_total",
        "counter",
        "Generated tokens (tokens out).",
        g(&s.completion_tokens),
    );
    scalar(&mut out, "chatglm_engine_steps_total", "counter", "Batched forward steps run.", g(&s.steps));
    scalar(
        &mut out,
        "chatglm_preemptions_total",
        "counter",
        "Running sequences sent back to the queue when KV blocks ran out (they recompute their tokens).",
        g(&s.preemptions),
    );
    let seconds = |v: &AtomicU64| v.load(Relaxed) as f64 * 1e-6;
    scalar_f64(
        &mut out,
        "chatglm_step_forward_seconds_total",
        "counter",
        "Engine time in forward passes.",
        seconds(&s.forward_us),
    );
    scalar_f64(
        &mut out,
        "chatglm_step_host_seconds_total",
        "counter",
        "Engine time outside forward passes while it had work (scheduling, step inputs, host sampling, token handling).",
        seconds(&s.host_us),
    );
    scalar(
        &mut out,
        "chatglm_pad_rows_total",
        "counter",
        "Throwaway rows added to decode steps to pad them to the batch sizes the GPU replays from CUDA graphs.",
        g(&s.pad_rows),
    );
    scalar(
        &mut out,
        "chatglm_steps_queued_total",
        "counter",
        "Greedy steps queued behind the step the device was running (the host handled that step's tokens meanwhile).",
        g(&s.queued_steps),
    );
    scalar(
        &mut out,
        "chatglm_chained_rows_total",
        "counter",
        "Rows of queued steps whose token the step before chose on the device, before the host read it.",
        g(&s.chained_rows),
    );
    scalar(
        &mut out,
        "chatglm_engine_alive",
        "gauge",
        "1 while the engine thread runs, 0 once it has stopped.",
        u64::from(s.engine_alive.load(Relaxed)),
    );
    scalar(&mut out, "chatglm_engine_panics_total", "counter", "Panics of the engine thread.", g(&s.engine_panics));
    scalar(
        &mut out,
        "chatglm_http_panics_total",
        "counter",
        "HTTP handlers that panicked (answered 500).",
        g(&state.0.http.panics),
    );
    scalar(
        &mut out,
        "chatglm_engine_step_tokens_total",
        "counter",
        "Tokens computed by forward steps (prefill and decode).",
        g(&s.step_tokens),
    );
    scalar(&mut out, "chatglm_queue_depth", "gauge", "Requests waiting to join the batch.", g(&s.queue_depth));
    scalar(&mut out, "chatglm_running_sequences", "gauge", "Sequences in the running batch.", g(&s.running));
    let (total, reserved) = (g(&s.kv_blocks_total), g(&s.kv_blocks_reserved));
    scalar(&mut out, "chatglm_kv_blocks_total", "gauge", "KV-cache blocks in the memory budget.", total);
    scalar(
        &mut out,
        "chatglm_kv_blocks_reserved",
        "gauge",
        "KV blocks reserved by running sequences (for their maximum length).",
        reserved,
    );
    scalar(&mut out, "chatglm_kv_blocks_used", "gauge", "KV blocks holding computed tokens.", g(&s.kv_blocks_used));
    scalar(&mut out, "chatglm_kv_blocks_free", "gauge", "KV blocks not reserved.", total.saturating_sub(reserved));
    scalar(
        &mut out,
        "chatglm_kv_blocks_cached",
        "gauge",
        "KV blocks holding finished requests' caches for prompts that continue them (given back first).",
        g(&s.kv_blocks_cached),
    );
    scalar(
        &mut out,
        "chatglm_prefix_cache_hits_total",
        "counter",
        "Requests that continued a finished request's KV cache.",
        g(&s.prefix_cache_hits),
    );
    scalar(
        &mut out,
        "chatglm_prefix_cache_tokens_total",
        "counter",
        "Prompt tokens taken from finished requests' caches instead of computed.",
        g(&s.prefix_cache_tokens),
    );
    scalar(&mut out, "chatglm_weights_bytes", "gauge", "Bytes of the model's weights as loaded.", g(&s.weight_bytes));
    scalar(&mut out, "chatglm_kv_budget_bytes", "gauge", "Bytes of the KV budget's blocks.", g(&s.kv_budget_bytes));
    scalar(
        &mut out,
        "chatglm_kv_capacity_tokens",
        "gauge",
        "Tokens the KV budget holds.",
        state.engine().limits().kv_capacity_tokens as u64,
    );
    if g(&s.device_memory_total_bytes) > 0 {
        scalar(
            &mut out,
            "chatglm_device_memory_used_bytes",
            "gauge",
            "GPU memory in use (every process, CUDA contexts included), sampled about once a second.",
            g(&s.device_memory_used_bytes),
        );
        scalar(&mut out, "chatglm_device_memory_total_bytes", "gauge", "GPU memory.", g(&s.device_memory_total_bytes));
        scalar(
            &mut out,
            "chatglm_device_workspace_bytes",
            "gauge",
            "Library workspace held on the GPU (cuBLASLt).",
            g(&s.device_workspace_bytes),
        );
        scalar(
            &mut out,
            "chatglm_cuda_graphs",
            "gauge",
            "CUDA graphs of decode steps kept for replay (their memory counts in chatglm_device_memory_used_bytes).",
            g(&s.device_graphs_cached),
        );
        scalar(
            &mut out,
            "chatglm_cuda_graph_captures_total",
            "counter",
            "Decode steps captured into CUDA graphs.",
            g(&s.device_graph_captures),
        );
        scalar(
            &mut out,
            "chatglm_cuda_graph_replays_total",
            "counter",
            "Decode steps replayed from CUDA graphs.",
            g(&s.device_graph_replays),
        );
    }
    scalar(
        &mut out,
        "chatglm_kv_block_size_tokens",
        "gauge",
        "Tokens per KV block.",
        state.engine().limits().block_size_tokens as u64,
    );
    histogram(
        &mut out,
        "chatglm_request_duration_seconds",
        "Arrival to last token, finished requests.",
        &s.request_latency.snapshot(),
    );
    histogram(
        &mut out,
        "chatglm_time_to_first_token_seconds",
        "Arrival to first generated token.",
        &s.time_to_first_token.snapshot(),
    );
    histogram(&mut out, "chatglm_queue_time_seconds", "Arrival to joining the batch.", &s.queue_time.snapshot());
    histogram(
        &mut out,
        "chatglm_inter_token_seconds",
        "Between consecutive generated tokens of a request.",
        &s.inter_token.snapshot(),
    );
    let _ = writeln!(
        out,
        "# HELP chatglm_http_responses_total HTTP responses by status code.\n# TYPE chatglm_http_responses_total counter"
    );
    let http = &state.0.http.by_status;
    for (code, v) in COUNTED_STATUSES.iter().zip(http.iter()) {
        let _ = writeln!(out, "chatglm_http_responses_total{{status=\"{code}\"}} {}", g(v));
    }
    if let Some(other) = http.last() {
        let _ = writeln!(out, "chatglm_http_responses_total{{status=\"other\"}} {}", g(other));
    }
    out
}

pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render(&state))
}
