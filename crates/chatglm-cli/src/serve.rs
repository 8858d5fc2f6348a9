//! `chatglm serve`: the OpenAI-compatible HTTP server with continuous batching.

use crate::args::{ModelArgs, PipelineUser};
use anyhow::{Context, Result};
use chatglm_engine::{Engine, EngineConfig, Pipeline};
use chatglm_model::Backend;
use chatglm_server::{AppState, ServerConfig};
use clap::Args;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to bind (loopback by default; 0.0.0.0 exposes the server to the network).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind (0 picks a free one).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every API call.
    #[arg(long, env = "CHATGLM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Sequences decoded together (the running batch).
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Tokens computed per step, prefill chunks and decodes together.
    #[arg(long, default_value_t = 512)]
    pub max_batch_tokens: usize,
    /// Requests waiting for a batch slot before new ones get 429.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// KV-cache budget in MiB, shared by all running requests; each takes
    /// blocks as it grows, and when they run out the youngest running
    /// request is paused and recomputed later (never failed).
    #[arg(long, default_value_t = 4096)]
    pub kv_cache_mb: usize,
    /// Finished requests whose KV cache is kept for a request that continues
    /// them (the next round of a chat, sent with its history): that request
    /// computes only its new tokens. Kept caches live in the KV budget and
    /// are given back first when it runs short; 0 turns this off.
    #[arg(long, default_value_t = 8)]
    pub prefix_cache: usize,
    /// Cap on prompt + generated tokens of any request (the model's context caps it too).
    #[arg(long, default_value_t = 8192)]
    pub max_length: usize,
    /// Largest accepted request body in bytes (larger: 413).
    #[arg(long, default_value_t = 2 << 20)]
    pub max_body_bytes: usize,
    /// Model id reported by /v1/models and in responses (default: the model's folder or repo name).
    #[arg(long)]
    pub model_id: Option<String>,
}

fn default_model_id(spec: &str) -> String {
    if let Some(rest) = spec.strip_prefix(chatglm_engine::SYNTHETIC_PREFIX) {
        return format!("synthetic-{}", rest.split(':').next().unwrap_or("model"));
    }
    let base = spec.split('@').next().unwrap_or(spec);
    base.trim_end_matches('/').rsplit('/').next().filter(|s| !s.is_empty()).unwrap_or("chatglm2-6b").to_string()
}

pub fn run(args: ServeArgs) -> Result<()> {
    if args.max_length == 0 {
        anyhow::bail!("--max-length must be at least 1");
    }
    args.model.clone().with_pipeline(args)
}

impl PipelineUser<()> for ServeArgs {
    fn run<B: Backend + 'static>(self, pipeline: Pipeline<B>) -> Result<()> {
        run_on(pipeline, self)
    }
}

fn run_on<B: Backend + 'static>(pipeline: Pipeline<B>, args: ServeArgs) -> Result<()> {
    let Pipeline { model, tokenizer, kv_dtype, source } = pipeline;
    let model_is_chatglm3 = model.config.family == chatglm_model::ModelFamily::ChatGlm3;
    let tokenizer = Arc::new(tokenizer);
    let engine_config = EngineConfig {
        max_batch_tokens: args.max_batch_tokens,
        max_batch_size: args.max_batch,
        max_queue: args.max_queue,
        kv_budget_bytes: args.kv_cache_mb.saturating_mul(1 << 20),
        prefix_cache_entries: args.prefix_cache,
        ..EngineConfig::default()
    };
    let engine =
        Engine::spawn(model, Arc::clone(&tokenizer), kv_dtype, engine_config).context("cannot start the engine")?;
    let limits = *engine.handle.limits();
    let config = ServerConfig {
        model_id: args.model_id.clone().unwrap_or_else(|| default_model_id(&source)),
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        max_body_bytes: args.max_body_bytes,
        max_length: args.max_length,
        chatglm3: model_is_chatglm3,
    };
    let state = AppState::new(engine.handle.clone(), tokenizer, config);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("cannot bind {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "chatglm serve: {} on http://{addr} (model id `{}`, batch {} seqs / {} tokens, KV budget {} tokens, queue {}{})",
            source,
            state.config().model_id,
            limits.max_batch_size,
            limits.max_batch_tokens,
            limits.kv_capacity_tokens,
            limits.max_queue,
            if state.config().api_key.is_some() { ", API key required" } else { "" },
        );
        chatglm_server::serve(listener, state, chatglm_server::shutdown_signal())
            .await
            .context("server error")
    });
    // Every handler is gone; the engine finishes what it holds, then stops.
    engine.shutdown();
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_models_are_named_by_their_shape() {
        assert_eq!(default_model_id("synthetic:chatglm2-6b:/x/tokenizer.model"), "synthetic-chatglm2-6b");
    }

    #[test]
    fn model_ids_come_from_the_source() {
        assert_eq!(default_model_id("THUDM/chatglm2-6b@abc"), "chatglm2-6b");
        assert_eq!(default_model_id("/models/glm/"), "glm");
        assert_eq!(default_model_id("x.gguf"), "x.gguf");
    }
}
