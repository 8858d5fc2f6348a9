//! What a client hands the engine loop, and what it streams back.
//!
//! A [`Request`] carries its own [`EventSink`]. The loop sends
//! [`RequestEvent`]s into it; a sink that reports itself closed, or a send
//! that fails, means the client is gone and the request is cancelled (its KV
//! blocks are freed within one step).

use crate::generate::FinishReason;
use crate::sampling::SamplingParams;
use std::time::{Duration, Instant};

/// Per-request generation parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestParams {
    pub sampling: SamplingParams,
    /// At most this many new tokens.
    pub max_new_tokens: Option<usize>,
    /// Total length (prompt + generated), as the official `max_length`;
    /// `None`: the model's context.
    pub max_length: Option<usize>,
    /// Stop when the text contains one of these (the stop string is not returned).
    pub stop: Vec<String>,
    /// Token ids that end generation (ChatGLM2: `</s>` = 2).
    pub eos_ids: Vec<u32>,
}

impl Default for RequestParams {
    fn default() -> Self {
        Self {
            sampling: SamplingParams::default(),
            max_new_tokens: None,
            max_length: None,
            stop: Vec::new(),
            eos_ids: vec![2],
        }
    }
}

/// Where a request's events go.
pub trait EventSink: Send {
    /// Delivers one event; `false` when the receiver is gone (= cancel).
    fn send(&mut self, event: RequestEvent) -> bool;
    /// Whether the receiver is known to be gone, checked every step so that a
    /// request is cancelled even while it produces no output (queued, prefill).
    fn is_closed(&self) -> bool {
        false
    }
}

impl EventSink for std::sync::mpsc::Sender<RequestEvent> {
    fn send(&mut self, event: RequestEvent) -> bool {
        std::sync::mpsc::Sender::send(self, event).is_ok()
    }
}

/// One generation request.
pub struct Request {
    /// Unique among live requests; [`crate::EngineHandle::next_id`] hands them out.
    pub id: u64,
    /// The full prompt, special tokens included.
    pub prompt_ids: Vec<u32>,
    pub params: RequestParams,
    pub sink: Box<dyn EventSink>,
    /// When the client's request arrived (queue time starts here).
    pub arrived: Instant,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("id", &self.id)
            .field("prompt_tokens", &self.prompt_ids.len())
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// What the engine streams for a request: text deltas, then exactly one
/// `Finished` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestEvent {
    /// Text that became final (never splits a character or a possible stop string).
    Text(String),
    Finished(Completion),
    /// The request could not be run (the message is safe to show a client).
    Failed(String),
}

/// The end of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// `Stop` or `Length` (a cancelled request gets no event).
    pub finish_reason: FinishReason,
    /// All generated text, cut before a stop string (not post-processed).
    pub text: String,
    /// Sampled ids, including a final EOS id if one was produced.
    pub generated_ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub timings: RequestTimings,
}

/// Wall-clock split of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RequestTimings {
    /// Arrival to joining the batch.
    pub queued: Duration,
    /// Joining the batch to the first sampled token (prefill).
    pub prefill: Duration,
    /// First token to the end.
    pub decode: Duration,
    /// Arrival to the end.
    pub total: Duration,
}

impl RequestTimings {
    /// Arrival to the first token.
    pub fn time_to_first_token(&self) -> Duration {
        self.queued + self.prefill
    }
}
