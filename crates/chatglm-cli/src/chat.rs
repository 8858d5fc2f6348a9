//! `chatglm chat`: the interactive demo (and a line-per-query script mode).

use crate::args::{ModelArgs, PipelineUser, SamplingArgs};
use anyhow::Result;
use chatglm_engine::{ChatSession, EngineError, FinishReason, GenerationConfig, Pipeline};
use chatglm_model::Backend;
use clap::Args;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print prompt/answer token counts and tokens per second after each answer.
    #[arg(short, long)]
    pub verbose: bool,
}

const WELCOME: &str = "欢迎使用 ChatGLM2-6B 模型，输入内容即可进行对话，clear 清空对话历史，stop 终止程序 (Ctrl-C interrupts an answer, Ctrl-D exits)";

pub fn run(args: ChatArgs) -> Result<()> {
    args.model.clone().with_pipeline(args)
}

impl PipelineUser<()> for ChatArgs {
    fn run<B: Backend + 'static>(self, pipeline: Pipeline<B>) -> Result<()> {
        run_on(pipeline, self)
    }
}

fn run_on<B: Backend>(pipeline: Pipeline<B>, args: ChatArgs) -> Result<()> {
    let interactive = std::io::stdin().is_terminal();
    let config = args.sampling.generation_config(pipeline.tokenizer.eos_id())?;
    let mut session = ChatSession::new(&pipeline);
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // Without a handler Ctrl-C would kill the process mid-answer.
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .map_err(|e| anyhow::anyhow!("cannot install the Ctrl-C handler: {e}"))?;
    }
    if interactive {
        if args.verbose {
            eprintln!("model: {} on {}", pipeline.source, pipeline.model.backend.name());
        }
        println!("{WELCOME}");
        let mut editor = rustyline::DefaultEditor::new()?;
        loop {
            interrupted.store(false, Ordering::SeqCst);
            let line = match editor.readline("\n用户：") {
                Ok(l) => l,
                Err(rustyline::error::ReadlineError::Interrupted) => continue,
                Err(rustyline::error::ReadlineError::Eof) => break,
                Err(e) => return Err(e.into()),
            };
            let query = line.trim();
            if query.is_empty() {
                continue;
            }
            let _ = editor.add_history_entry(query);
            match query {
                "stop" => break,
                "clear" => {
                    session.clear();
                    print!("\x1b[2J\x1b[H");
                    println!("{WELCOME}");
                    continue;
                }
                _ => {}
            }
            print!("\nChatGLM：");
            answer(&mut session, query, &config, &interrupted, args.verbose)?;
        }
    } else {
        for line in std::io::stdin().lock().lines() {
            let line = line?;
            let query = line.trim();
            match query {
                "" => continue,
                "stop" => break,
                "clear" => {
                    session.clear();
                    continue;
                }
                _ => answer(&mut session, query, &config, &interrupted, args.verbose)?,
            }
        }
    }
    Ok(())
}

/// Streams one answer; drops the oldest rounds (with a notice) when the
/// dialogue no longer fits the context.
fn answer<B: Backend>(
    session: &mut ChatSession<'_, B>,
    query: &str,
    config: &GenerationConfig,
    interrupted: &AtomicBool,
    verbose: bool,
) -> Result<()> {
    loop {
        let mut stdout = std::io::stdout();
        let mut started = false;
        let result = session.chat_stream(query, config, &mut |delta| {
            // The official demo shows the stripped response; strip its start as it streams.
            let delta = if started { delta } else { delta.trim_start() };
            started |= !delta.is_empty();
            let _ = stdout.write_all(delta.as_bytes());
            let _ = stdout.flush();
            !interrupted.load(Ordering::SeqCst)
        });
        match result {
            Ok(reply) => {
                println!();
                if reply.output.finish_reason == FinishReason::Cancelled {
                    eprintln!("[interrupted; this round is not kept in the history]");
                }
                if verbose {
                    let t = &reply.output.timings;
                    eprintln!(
                        "[{} prompt tokens in {:.0} ms ({:.1} tok/s); {} new tokens, {:.2} tok/s; context {} tokens; {}]",
                        t.prompt_tokens,
                        t.prefill.as_secs_f64() * 1e3,
                        t.prefill_tokens_per_s(),
                        t.generated_tokens,
                        t.decode_tokens_per_s(),
                        session.context_tokens(),
                        reply.output.finish_reason.as_str()
                    );
                }
                return Ok(());
            }
            Err(EngineError::ContextFull { prompt_tokens, limit, which, .. }) if !session.history().is_empty() => {
                eprintln!(
                    "[the dialogue is {prompt_tokens} tokens, over {which} ({limit}); dropping the oldest round]"
                );
                session.drop_oldest_rounds(1);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(());
            }
        }
    }
}
