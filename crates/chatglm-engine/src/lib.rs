//! Generation and chat on top of [`chatglm_model`].
//!
//! Principal types: [`Pipeline`] (model + tokenizer), [`ChatSession`]
//! (history with KV-cache reuse, `chat` / `chat_stream`), [`generate()`]
//! (one sequence: prefill, decode, stop conditions), [`SamplingParams`] and
//! the pure [`sampling::sample`] function.
//!
//! What comes in: text or token ids and parameters. What goes out: token
//! ids, text deltas and finish reasons.

mod error;
pub mod generate;
mod pipeline;
pub mod sampling;
mod session;
pub mod text;

pub use error::EngineError;
pub use generate::{generate, FinishReason, GenerationConfig, GenerationOutput, Timings};
pub use pipeline::{Pipeline, PipelineOptions};
pub use sampling::SamplingParams;
pub use session::{ChatReply, ChatSession, History};
