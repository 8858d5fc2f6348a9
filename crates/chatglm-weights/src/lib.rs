//! chatglm-weights: ChatGLM2 checkpoints from disk (or the Hugging Face hub)
//! to named, typed, memory-mapped tensors. It never computes anything.
//!
//! In: a checkpoint folder with `config.json` and weights as
//! `model.safetensors`, `model.safetensors.index.json` + shards,
//! `pytorch_model.bin` or `pytorch_model.bin.index.json` + shards (the
//! `torch.save` zip format, read by an allow-listed unpickler that refuses
//! any pickle trying to run code). [`hub::resolve`] turns `owner/name[@rev]`
//! into such a folder.
//!
//! Out: a [`Checkpoint`]: the validated [`ModelConfig`] and a [`Tensor`] per
//! state-dict name (the official names are in [`names`]), whose
//! [`TensorData`] is a window of the mapped file: opening a 12.5 GB
//! checkpoint copies nothing. [`Checkpoint::validate_shapes`] checks every
//! tensor against the shapes the config implies.
//!
//! GGUF ([`gguf`]): [`gguf::GgufModel`] opens a ChatGLM `.gguf` file the
//! same way (config from metadata, tensors mapped under their official
//! names, quantized blocks included); [`gguf::GgufWriter`] streams one out,
//! and [`gguf::QuantizePlan`] with [`gguf::convert_rows`] is what
//! `chatglm quantize` uses to convert tensor by tensor.
//!
//! Errors are [`WeightsError`]s naming the file, the tensor, what was
//! expected and what was found. Untrusted-byte parsers
//! ([`parse_safetensors_bytes`], [`pickle::read_state_dict`],
//! [`gguf::parse_gguf_bytes`]) never panic and
//! have fuzz targets.

mod checkpoint;
mod config;
mod dtype;
mod error;
pub mod gguf;
pub mod hub;
pub mod index;
pub mod lora;
mod mapped;
pub mod names;
pub mod official_quant;
pub mod pickle;
pub mod ptuning;
mod pytorch;
pub mod quant;
mod safetensors;
mod tensor;
pub mod zip;

pub use checkpoint::{Checkpoint, CheckpointFormat};
pub use config::{ModelConfig, ModelFamily, RopeScaling};
pub use dtype::DType;
pub use error::WeightsError;
pub use pytorch::load_pytorch_bin;
pub use safetensors::{load_safetensors, parse_safetensors_bytes, serialize_safetensors, SafetensorsEntry};
pub use tensor::{decode_f32, Tensor, TensorData};
