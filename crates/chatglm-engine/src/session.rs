//! Multi-round chat with the official semantics and KV-cache reuse.

use crate::generate::{generate, FinishReason, GenerationConfig, GenerationOutput};
use crate::text::process_response;
use crate::{EngineError, Pipeline};
use chatglm_model::{Backend, ForwardState, KvCacheOps};

/// `(query, response)` pairs, oldest first, as the official `history`.
pub type History = Vec<(String, String)>;

/// One answered round.
#[derive(Debug, Clone)]
pub struct ChatReply {
    /// After `process_response`.
    pub response: String,
    /// The ids fed to the model for this round.
    pub prompt_ids: Vec<u32>,
    pub output: GenerationOutput,
}

/// A conversation: history plus the KV cache of everything said so far.
///
/// The first round (or any round after the history was changed from
/// outside) encodes the full official prompt; later rounds feed only the new
/// round's ids, exactly as the official `stream_chat` with `past_key_values`.
pub struct ChatSession<'p, B: Backend> {
    pipeline: &'p Pipeline<B>,
    state: ForwardState<B>,
    cache: B::Cache,
    history: History,
    /// Whether `cache` holds the dialogue in `history` (so only the next
    /// round needs feeding).
    cache_matches_history: bool,
}

impl<'p, B: Backend> ChatSession<'p, B> {
    pub fn new(pipeline: &'p Pipeline<B>) -> Self {
        Self {
            state: ForwardState::new(&pipeline.model.backend),
            cache: pipeline.model.new_cache(pipeline.kv_dtype),
            pipeline,
            history: Vec::new(),
            cache_matches_history: false,
        }
    }

    /// Starts from a given history (the next round re-encodes it in full).
    pub fn with_history(pipeline: &'p Pipeline<B>, history: History) -> Self {
        let mut s = Self::new(pipeline);
        s.history = history;
        s
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    /// Tokens in the KV cache.
    pub fn context_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Forgets the conversation.
    pub fn clear(&mut self) {
        self.history.clear();
        self.cache.clear();
        self.cache_matches_history = false;
    }

    /// Drops the oldest `n` rounds (to make room); the next round re-encodes
    /// the remaining history.
    pub fn drop_oldest_rounds(&mut self, n: usize) {
        self.history.drain(..n.min(self.history.len()));
        self.cache.clear();
        self.cache_matches_history = false;
    }

    /// Whether the next round continues the cached dialogue (feeding only its
    /// own ids) rather than re-encoding the whole history.
    fn reuses_cache(&self) -> bool {
        self.cache_matches_history && !self.history.is_empty()
    }

    /// The ids the next round would feed for `query`.
    pub fn next_prompt_ids(&self, query: &str) -> Vec<u32> {
        let tok = &self.pipeline.tokenizer;
        if self.reuses_cache() {
            tok.encode_chat_incremental(query, &self.history)
        } else {
            tok.encode_chat(query, &self.history)
        }
    }

    /// `response, history = model.chat(tokenizer, query, history)`.
    pub fn chat(&mut self, query: &str, config: &GenerationConfig) -> Result<ChatReply, EngineError> {
        self.chat_stream(query, config, &mut |_| true)
    }

    /// The streaming variant: `on_text` gets raw text deltas; return `false`
    /// to stop. A cancelled round is not added to the history.
    pub fn chat_stream(
        &mut self,
        query: &str,
        config: &GenerationConfig,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<ChatReply, EngineError> {
        if !self.reuses_cache() {
            self.cache.clear();
        }
        let prompt_ids = self.next_prompt_ids(query);
        let before = self.cache.len();
        let p = self.pipeline;
        let result = generate(&p.model, &p.tokenizer, &mut self.state, &mut self.cache, &prompt_ids, config, on_text);
        let output = match result {
            Ok(o) => o,
            Err(e) => {
                self.cache.truncate(before);
                return Err(e);
            }
        };
        if output.finish_reason == FinishReason::Cancelled {
            self.cache.truncate(before);
            self.cache_matches_history = before > 0;
            return Ok(ChatReply { response: process_response(&output.text), prompt_ids, output });
        }
        // The official code decodes the generated ids as a whole.
        let response = process_response(&p.tokenizer.decode(&output.generated_ids));
        let response = if config.stop.is_empty() { response } else { process_response(&output.text) };
        self.history.push((query.to_string(), response.clone()));
        self.cache_matches_history = true;
        Ok(ChatReply { response, prompt_ids, output })
    }
}
