//! `chatglm generate`: one chat round, or a raw continuation with `--raw`.

use crate::args::{ModelArgs, PipelineUser, SamplingArgs};
use anyhow::{Context, Result};
use chatglm_engine::{
    generate, history_from_json, Chat3Message, Chat3Reply, Chat3Session, ChatSession, History, Pipeline,
};
use chatglm_model::{Backend, ForwardState, ModelFamily};
use chatglm_tokenizer::Role;
use clap::Args;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// The query (chat mode) or the text to continue (--raw).
    #[arg(short = 'p', long = "prompt")]
    pub prompt: String,
    /// Continue plain text (encoded with the [gMASK] sop prefix) instead of a chat round.
    #[arg(long)]
    pub raw: bool,
    /// Earlier rounds: a JSON file holding a list of [query, response] pairs,
    /// or for a ChatGLM3 model the official list of messages
    /// ({"role", "content", "metadata", "tools"}).
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// Print one JSON object (prompt_ids, generated_ids, text, finish_reason, timings).
    #[arg(long)]
    pub json: bool,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read history file {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
}

/// A history file as ChatGLM2 pairs.
fn pairs(path: &Path, v: Value) -> Result<History> {
    serde_json::from_value(v)
        .with_context(|| format!("{}: expected a JSON list of [query, response] pairs", path.display()))
}

/// A history file as ChatGLM3 messages: the official list of messages, or
/// [query, response] pairs (user and assistant messages).
fn messages(path: &Path, v: Value) -> Result<Vec<Chat3Message>> {
    history_from_json(&v).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub fn run(args: GenerateArgs) -> Result<()> {
    if args.raw && args.history.is_some() {
        anyhow::bail!("--history only applies to chat mode; drop --raw or --history");
    }
    let history = args.history.as_deref().map(read_json).transpose()?;
    args.model.clone().with_pipeline(Generate { args, history })
}

/// One generation, once the model is loaded.
struct Generate {
    args: GenerateArgs,
    /// The history file, read as its model's family needs once loaded.
    history: Option<Value>,
}

impl PipelineUser<()> for Generate {
    fn run<B: Backend + 'static>(self, pipeline: Pipeline<B>) -> Result<()> {
        run_on(pipeline, self.args, self.history)
    }
}

fn run_on<B: Backend>(pipeline: Pipeline<B>, args: GenerateArgs, history: Option<Value>) -> Result<()> {
    let path = args.history.clone().unwrap_or_default();
    let config = args.sampling.generation_config(pipeline.tokenizer.eos_id())?;
    let stream = !args.json;
    let mut stdout = std::io::stdout();
    let mut on_text = |delta: &str| {
        if stream {
            let _ = stdout.write_all(delta.as_bytes());
            let _ = stdout.flush();
        }
        true
    };
    let (prompt_ids, output, text) = if args.raw {
        let ids = pipeline.tokenizer.encode(&args.prompt);
        let mut state = ForwardState::new(&pipeline.model.backend);
        let mut cache = pipeline.model.new_cache(pipeline.kv_dtype);
        let out = generate(&pipeline.model, &pipeline.tokenizer, &mut state, &mut cache, &ids, &config, &mut on_text)?;
        let text = out.text.clone();
        (ids, out, text)
    } else if pipeline.model.config.family == ModelFamily::ChatGlm3 {
        let history = history.map(|v| messages(&path, v)).transpose()?.unwrap_or_default();
        let mut session = Chat3Session::with_history(&pipeline, history);
        let turn = session.chat_stream(&args.prompt, Role::User, &config, &mut on_text)?;
        let text = match turn.reply {
            Ok(Chat3Reply::Text(t)) => t,
            Ok(reply) => reply.to_json().to_string(),
            Err(_) => turn.raw.trim().to_string(),
        };
        (turn.prompt_ids, turn.output, text)
    } else {
        let history = history.map(|v| pairs(&path, v)).transpose()?.unwrap_or_default();
        let mut session = ChatSession::with_history(&pipeline, history);
        let reply = session.chat_stream(&args.prompt, &config, &mut on_text)?;
        (reply.prompt_ids, reply.output, reply.response)
    };
    if args.json {
        let t = &output.timings;
        let v = serde_json::json!({
            "prompt_ids": prompt_ids,
            "generated_ids": output.generated_ids,
            "text": text,
            "finish_reason": output.finish_reason.as_str(),
            "timings": {
                "prompt_tokens": t.prompt_tokens,
                "generated_tokens": t.generated_tokens,
                "prefill_ms": t.prefill.as_secs_f64() * 1e3,
                "decode_ms": t.decode.as_secs_f64() * 1e3,
                "prefill_tokens_per_s": t.prefill_tokens_per_s(),
                "decode_tokens_per_s": t.decode_tokens_per_s(),
            },
        });
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!();
    }
    Ok(())
}
