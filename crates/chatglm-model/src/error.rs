use thiserror::Error;

/// Errors from building or running the model.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error(transparent)]
    Weights(#[from] chatglm_weights::WeightsError),
    #[error("tensor `{tensor}`: {message}")]
    BadTensor { tensor: String, message: String },
    #[error("unknown weight format `{0}` (expected one of: auto, f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1)")]
    UnknownFormat(String),
    #[error("unknown KV-cache type `{0}` (expected f32, f16 or q8_0)")]
    UnknownKvDType(String),
    #[error("a {dtype} KV cache is not possible for this model: {reason}")]
    UnsupportedKvDType { dtype: &'static str, reason: String },
    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error(
        "context overflow: the sequence would hold {needed} tokens but the model's context is {limit} (seq_length)"
    )]
    ContextOverflow { needed: usize, limit: usize },
    #[error("empty input: a sequence in the batch has no tokens")]
    EmptyInput,
    #[error("{op}: {message}")]
    Backend { op: String, message: String },
    #[error(
        "out of KV-cache memory: the step needs room for {needed_tokens} more tokens but only {free_tokens} are free \
         (use a shorter context, fewer concurrent sequences, or a smaller --kv-dtype)"
    )]
    KvPoolExhausted { needed_tokens: usize, free_tokens: usize },
}
