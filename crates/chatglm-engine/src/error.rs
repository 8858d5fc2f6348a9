use thiserror::Error;

/// Errors from generation and chat sessions.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] chatglm_model::ModelError),
    #[error(transparent)]
    Weights(#[from] chatglm_weights::WeightsError),
    #[error(transparent)]
    Tokenizer(#[from] chatglm_tokenizer::TokenizerError),
    #[error("the prompt is {prompt_tokens} tokens but the limit is {limit} ({which}); shorten the input{hint}")]
    ContextFull { prompt_tokens: usize, limit: usize, which: &'static str, hint: &'static str },
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    #[error("no tokenizer.model found next to the weights in {0}")]
    MissingTokenizer(String),
    /// The compute device (a GPU) is unusable or could not be started.
    #[error("device: {0}")]
    Device(String),
}
