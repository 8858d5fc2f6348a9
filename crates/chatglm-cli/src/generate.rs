//! `chatglm generate`: one chat round, or a raw continuation with `--raw`.

use crate::args::{ModelArgs, PipelineUser, SamplingArgs};
use anyhow::{Context, Result};
use chatglm_engine::{generate, ChatSession, History, Pipeline};
use chatglm_model::{Backend, ForwardState};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

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
    /// Earlier rounds: a JSON file holding a list of [query, response] pairs.
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// Print one JSON object (prompt_ids, generated_ids, text, finish_reason, timings).
    #[arg(long)]
    pub json: bool,
}

pub fn read_history(path: &PathBuf) -> Result<History> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read history file {}", path.display()))?;
    let pairs: Vec<(String, String)> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON list of [query, response] pairs", path.display()))?;
    Ok(pairs)
}

pub fn run(args: GenerateArgs) -> Result<()> {
    if args.raw && args.history.is_some() {
        anyhow::bail!("--history only applies to chat mode; drop --raw or --history");
    }
    let history = args.history.as_ref().map(read_history).transpose()?.unwrap_or_default();
    args.model.clone().with_pipeline(Generate { args, history })
}

/// One generation, once the model is loaded.
struct Generate {
    args: GenerateArgs,
    history: History,
}

impl PipelineUser<()> for Generate {
    fn run<B: Backend + 'static>(self, pipeline: Pipeline<B>) -> Result<()> {
        run_on(pipeline, self.args, self.history)
    }
}

fn run_on<B: Backend>(pipeline: Pipeline<B>, args: GenerateArgs, history: History) -> Result<()> {
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
    } else {
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
