//! The ChatGLM2 model: configuration, weights, KV cache and the forward pass.
//!
//! Principal types: [`Model`] (config + [`Weights`] on a [`Backend`]),
//! [`KvCache`] (one sequence's keys and values), [`SequenceInput`] (a chunk of
//! tokens of one sequence to run) and [`ForwardState`] (reusable activation
//! buffers). [`forward`](Model::forward) runs a batch of independent sequences,
//! each at its own positions with its own cache, and returns logits.
//!
//! What comes in: a [`chatglm_weights::Checkpoint`] (or GGUF tensors) and token
//! ids. What goes out: f32 logits over the padded vocabulary.

pub mod backend;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
mod forward;
mod gguf_source;
mod kv_cache;
mod loader;
mod weights;

pub use backend::{greedy_token, Backend, DeviceMemory};
pub use chatglm_weights::ModelConfig as Config;
pub use chatglm_weights::{ModelFamily, RopeScaling};
pub use cpu::CpuBackend;
#[cfg(feature = "cuda")]
pub use cuda::{CudaBackend, CudaKvCache, GemvLean};
pub use error::ModelError;
pub use forward::{ForwardState, LogitsWanted, Model, SampledStep, SequenceInput, TokenChoice, TokenLayout};
pub use kv_cache::{KvBlockId, KvCache, KvCacheOps, KvDType};
pub use loader::{LoadOptions, TensorSource, WeightFormat};
pub use weights::{LayerWeights, Weights};
