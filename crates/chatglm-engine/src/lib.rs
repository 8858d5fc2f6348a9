//! Generation and chat on top of [`chatglm_model`].
//!
//! Principal types: [`Pipeline`] (model + tokenizer), [`ChatSession`]
//! (history with KV-cache reuse, `chat` / `chat_stream`), [`generate()`]
//! (one sequence: prefill, decode, stop conditions), [`SamplingParams`] and
//! the pure [`sampling::sample`] function.
//!
//! Serving: [`Engine`] runs a continuous-batching loop on its own thread
//! ([`scheduler::Scheduler`] plans each step, [`kv_blocks::BlockAllocator`]
//! accounts KV memory); clients [`EngineHandle::submit`] a [`Request`] that
//! carries its own [`EventSink`] and receive [`RequestEvent`]s.
//!
//! What comes in: text or token ids and parameters. What goes out: token
//! ids, text deltas and finish reasons.

#![forbid(unsafe_code)]
pub mod chat3;
mod engine_loop;
mod error;
pub mod generate;
pub mod gguf_vocab;
mod handle;
pub mod kv_blocks;
mod pipeline;
mod pyliteral;
pub mod request;
pub mod sampling;
pub mod scheduler;
mod sequence;
mod session;
mod session3;
pub mod stats;
pub mod text;

pub use chat3::{history_from_json, process_response3, Chat3Message, Chat3Reply, ToolCallError, CHATGLM3_SYSTEM};
pub use error::EngineError;
pub use generate::{generate, FinishReason, GenerationConfig, GenerationOutput, Timings};
pub use handle::{Engine, EngineConfig, EngineHandle, EngineLimits, SubmitError};
pub use pipeline::{Pipeline, PipelineOptions, SYNTHETIC_PREFIX};
pub use request::{Completion, EventSink, Request, RequestEvent, RequestParams, RequestTimings};
pub use sampling::{ParamError, SamplingParams};
pub use session::{ChatReply, ChatSession, History};
pub use session3::{Chat3Session, Chat3Turn};
