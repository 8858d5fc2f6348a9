//! `chatglm chat`: the interactive demo (and a line-per-query script mode).

use crate::args::{ModelArgs, PipelineUser, SamplingArgs};
use anyhow::Result;
use chatglm_engine::{
    Chat3Message, Chat3Reply, Chat3Session, ChatSession, EngineError, FinishReason, GenerationConfig, GenerationOutput,
    Pipeline,
};
use chatglm_model::{Backend, ModelFamily};
use chatglm_tokenizer::Role;
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
    /// System prompt of a ChatGLM3 model ("" for none; ChatGLM2 has no system role).
    #[arg(long, default_value = CHATGLM3_SYSTEM)]
    pub system: String,
}

pub use chatglm_engine::CHATGLM3_SYSTEM;

const HELP: &str =
    "输入内容即可进行对话，clear 清空对话历史，stop 终止程序 (Ctrl-C interrupts an answer, Ctrl-D exits)";

fn welcome(family: ModelFamily) -> String {
    let name = match family {
        ModelFamily::ChatGlm2 => "ChatGLM2-6B",
        ModelFamily::ChatGlm3 => "ChatGLM3-6B",
    };
    format!("欢迎使用 {name} 模型，{HELP}")
}

/// A conversation in the model's own chat format.
enum Conversation<'p, B: Backend> {
    Glm2(ChatSession<'p, B>),
    Glm3(Chat3Session<'p, B>),
}

impl<B: Backend> Conversation<'_, B> {
    fn clear(&mut self) {
        match self {
            Self::Glm2(s) => s.clear(),
            Self::Glm3(s) => s.clear(),
        }
    }

    fn has_rounds(&self) -> bool {
        match self {
            Self::Glm2(s) => !s.history().is_empty(),
            Self::Glm3(s) => s.has_rounds(),
        }
    }

    fn drop_oldest_round(&mut self) {
        match self {
            Self::Glm2(s) => s.drop_oldest_rounds(1),
            Self::Glm3(s) => s.drop_oldest_round(),
        }
    }

    fn context_tokens(&self) -> usize {
        match self {
            Self::Glm2(s) => s.context_tokens(),
            Self::Glm3(s) => s.context_tokens(),
        }
    }

    /// Streams a reply; returns the generation and, for ChatGLM3, a line
    /// about a tool call the reply made (the CLI runs no tools).
    fn chat_stream(
        &mut self,
        query: &str,
        config: &GenerationConfig,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(GenerationOutput, Option<String>), EngineError> {
        match self {
            Self::Glm2(s) => s.chat_stream(query, config, on_text).map(|r| (r.output, None)),
            Self::Glm3(s) => s.chat_stream(query, Role::User, config, on_text).map(|t| {
                let note = match t.reply {
                    Ok(Chat3Reply::ToolCall { name, parameters }) => {
                        Some(format!("[tool call: {name}({parameters}); chat runs no tools]"))
                    }
                    Err(e) => Some(format!("[{e}]")),
                    _ => None,
                };
                (t.output, note)
            }),
        }
    }
}

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
    let family = pipeline.model.config.family;
    let mut session = match family {
        ModelFamily::ChatGlm2 => Conversation::Glm2(ChatSession::new(&pipeline)),
        ModelFamily::ChatGlm3 => {
            let history = if args.system.is_empty() {
                Vec::new()
            } else {
                vec![Chat3Message::new(Role::System, args.system.clone())]
            };
            Conversation::Glm3(Chat3Session::with_history(&pipeline, history))
        }
    };
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
        println!("{}", welcome(family));
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
                    println!("{}", welcome(family));
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
    session: &mut Conversation<'_, B>,
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
            Ok((output, note)) => {
                println!();
                if let Some(note) = note {
                    eprintln!("{note}");
                }
                if output.finish_reason == FinishReason::Cancelled {
                    eprintln!("[interrupted; this round is not kept in the history]");
                }
                if verbose {
                    let t = &output.timings;
                    eprintln!(
                        "[{} prompt tokens in {:.0} ms ({:.1} tok/s); {} new tokens, {:.2} tok/s; context {} tokens; {}]",
                        t.prompt_tokens,
                        t.prefill.as_secs_f64() * 1e3,
                        t.prefill_tokens_per_s(),
                        t.generated_tokens,
                        t.decode_tokens_per_s(),
                        session.context_tokens(),
                        output.finish_reason.as_str()
                    );
                }
                return Ok(());
            }
            Err(EngineError::ContextFull { prompt_tokens, limit, which, .. }) if session.has_rounds() => {
                eprintln!(
                    "[the dialogue is {prompt_tokens} tokens, over {which} ({limit}); dropping the oldest round]"
                );
                session.drop_oldest_round();
            }
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(());
            }
        }
    }
}
