//! A ChatGLM3 conversation, as the official `model.chat(tokenizer, query,
//! history, role)` runs it: the prompt from `build_chat_input` (every turn
//! re-encoded), generation stopping at `</s>`, `<|user|>` or
//! `<|observation|>`, the last generated id dropped (as the official code
//! does, even when generation ended at `max_length`), and the reply read by
//! `process_response` (text or a tool call).

use crate::chat3::{encode_history, process_response3, Chat3Message, Chat3Reply, ToolCallError};
use crate::generate::{generate, FinishReason, GenerationConfig, GenerationOutput};
use crate::{EngineError, Pipeline};
use chatglm_model::{Backend, ForwardState, KvCacheOps};
use chatglm_tokenizer::Role;

/// One ChatGLM3 turn.
#[derive(Debug, Clone)]
pub struct Chat3Turn {
    /// The reply, or why its tool call could not be read.
    pub reply: Result<Chat3Reply, ToolCallError>,
    /// The decoded reply before `process_response`.
    pub raw: String,
    pub prompt_ids: Vec<u32>,
    pub output: GenerationOutput,
}

/// A ChatGLM3 conversation on one pipeline.
pub struct Chat3Session<'p, B: Backend> {
    pipeline: &'p Pipeline<B>,
    state: ForwardState<B>,
    cache: B::Cache,
    history: Vec<Chat3Message>,
}

impl<'p, B: Backend> Chat3Session<'p, B> {
    pub fn new(pipeline: &'p Pipeline<B>) -> Self {
        Self::with_history(pipeline, Vec::new())
    }

    /// Continues `history` (the official list of messages; a system message
    /// with `tools` first for tool calling).
    pub fn with_history(pipeline: &'p Pipeline<B>, history: Vec<Chat3Message>) -> Self {
        Self {
            state: ForwardState::new(&pipeline.model.backend),
            cache: pipeline.model.new_cache(pipeline.kv_dtype),
            pipeline,
            history,
        }
    }

    pub fn history(&self) -> &[Chat3Message] {
        &self.history
    }

    /// Forgets the conversation, keeping a leading system message.
    pub fn clear(&mut self) {
        let keep = usize::from(self.history.first().is_some_and(|m| m.role == Role::System));
        self.history.truncate(keep);
        self.cache.clear();
    }

    /// Tokens of the last turn held in the KV cache.
    pub fn context_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Whether there is a round to drop (a user message after any system one).
    pub fn has_rounds(&self) -> bool {
        self.history.iter().any(|m| m.role != Role::System)
    }

    /// Drops the oldest round (its user message and everything up to the
    /// next user message), keeping a leading system message.
    pub fn drop_oldest_round(&mut self) {
        let start = usize::from(self.history.first().is_some_and(|m| m.role == Role::System));
        let Some(first) = self.history[start..].iter().position(|m| m.role == Role::User).map(|i| start + i) else {
            return;
        };
        let end = self.history[first + 1..]
            .iter()
            .position(|m| m.role == Role::User)
            .map_or(self.history.len(), |i| first + 1 + i);
        self.history.drain(first..end);
    }

    /// The prompt of the next turn: `build_chat_input(query, history, role)`.
    pub fn prompt_ids(&self, query: &str, role: Role) -> Vec<u32> {
        encode_history(&self.pipeline.tokenizer, &self.history, query, role)
    }

    pub fn chat(&mut self, query: &str, role: Role, config: &GenerationConfig) -> Result<Chat3Turn, EngineError> {
        self.chat_stream(query, role, config, &mut |_| true)
    }

    /// As [`Chat3Session::chat`], streaming text as it is generated
    /// (`on_text` returns `false` to stop; a cancelled turn is not added to
    /// the history).
    pub fn chat_stream(
        &mut self,
        query: &str,
        role: Role,
        config: &GenerationConfig,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Chat3Turn, EngineError> {
        let tok = &self.pipeline.tokenizer;
        let mut config = config.clone();
        for stop in [tok.eos_id(), tok.role_id(Role::User), tok.role_id(Role::Observation)] {
            if !config.eos_ids.contains(&stop) {
                config.eos_ids.push(stop);
            }
        }
        let prompt_ids = self.prompt_ids(query, role);
        self.cache.clear();
        let p = self.pipeline;
        let output = generate(&p.model, tok, &mut self.state, &mut self.cache, &prompt_ids, &config, on_text)?;
        if output.finish_reason == FinishReason::Cancelled {
            let raw = output.text.clone();
            return Ok(Chat3Turn { reply: Ok(Chat3Reply::Text(raw.clone())), raw, prompt_ids, output });
        }
        let kept = &output.generated_ids[..output.generated_ids.len().saturating_sub(1)];
        let raw = tok.decode(kept);
        self.history.push(Chat3Message::new(role, query));
        let reply = process_response3(&raw, &mut self.history);
        Ok(Chat3Turn { reply, raw, prompt_ids, output })
    }
}
