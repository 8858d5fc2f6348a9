//! Decoding (and re-encoding) SentencePiece's `ModelProto` (`tokenizer.model`).

mod model;
mod wire;

pub(crate) use model::{ModelProto, NormalizerSpec, TrainerSpec, MODEL_TYPE_BPE};
