//! The one error type of this crate. Every variant names the file (or
//! checkpoint folder) and, where there is one, the tensor, with what was
//! expected and what was found.

use std::path::PathBuf;

/// Everything that can go wrong while reading a checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WeightsError {
    /// The operating system refused to open, read or map a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// `config.json` is not valid JSON, or a required field is missing or has the wrong type.
    #[error("{}: invalid config.json: {message}", path.display())]
    Config {
        /// The config file (`<string>` when parsed from memory).
        path: PathBuf,
        /// What serde or our checks found.
        message: String,
    },

    /// `config.json` describes a model this engine does not implement.
    #[error("{}: unsupported config: {field} = {found}, this engine needs {expected}", path.display())]
    UnsupportedConfig {
        /// The config file (`<string>` when parsed from memory).
        path: PathBuf,
        /// The offending field, as named in config.json.
        field: &'static str,
        /// What this engine supports.
        expected: String,
        /// The value in the file.
        found: String,
    },

    /// A safetensors file whose header or layout is broken.
    #[error("{}: malformed safetensors file: {message}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A tensor stored in a dtype this crate cannot read (yet).
    #[error("{}: tensor {tensor}: unsupported dtype {dtype} (supported: F32, F16, BF16)", path.display())]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The dtype as spelled in the file.
        dtype: String,
    },

    /// A zip archive (PyTorch `.bin`) whose directory is broken or uses a feature we do not read.
    #[error("{}: malformed zip archive: {message}", path.display())]
    Zip {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A pickle stream (`data.pkl`) we cannot read.
    #[error("{}: malformed pickle: {message}", path.display())]
    Pickle {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the byte offset in the pickle.
        message: String,
    },

    /// The pickle names a callable outside the allow-list: loading it with
    /// Python would run code. We never execute anything; we refuse the file.
    #[error(
        "{}: refusing to load: the pickle tries to run code ({global}); only plain tensor state dicts are accepted \
         (convert the checkpoint to safetensors if you trust it)",
        path.display()
    )]
    UnsafePickle {
        /// The file.
        path: PathBuf,
        /// `module.name` of the refused callable.
        global: String,
    },

    /// A tensor whose bytes, shape or strides do not fit its storage.
    #[error("{}: tensor {tensor}: {message}", path.display())]
    BadTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong (expected and found).
        message: String,
    },

    /// A GGUF file whose header, metadata or tensor table is broken, or that
    /// uses a type or layout this crate does not read.
    #[error("{}: malformed GGUF file: {message}", path.display())]
    Gguf {
        /// The file (`<memory>` when parsed from bytes).
        path: PathBuf,
        /// What is wrong, naming the key or tensor, with expected and found values.
        message: String,
    },

    /// A shard index (`*.index.json`) that is broken or disagrees with its shards.
    #[error("{}: shard index: {message}", path.display())]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The same tensor name appears twice.
    #[error("tensor {tensor} appears twice: in {} and in {}", first.display(), second.display())]
    DuplicateTensor {
        /// The tensor's name.
        tensor: String,
        /// Where it was first seen.
        first: PathBuf,
        /// Where it was seen again.
        second: PathBuf,
    },

    /// A folder with no weights in a format we know.
    #[error(
        "{}: no weights found (looked for model.safetensors, model.safetensors.index.json, \
         pytorch_model.bin, pytorch_model.bin.index.json)",
        root.display()
    )]
    NoWeights {
        /// The checkpoint folder.
        root: PathBuf,
    },

    /// A tensor the model needs is not in the checkpoint.
    #[error("checkpoint {}: tensor {tensor} not found", root.display())]
    MissingTensor {
        /// The checkpoint folder.
        root: PathBuf,
        /// The tensor's name.
        tensor: String,
    },

    /// A tensor's shape disagrees with what config.json implies.
    #[error("checkpoint {}: tensor {tensor}: expected shape {expected:?} (from config.json), found {found:?}", root.display())]
    ShapeMismatch {
        /// The checkpoint folder.
        root: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The shape config.json implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },

    /// A model spec could not be resolved to a local folder.
    #[error("cannot resolve model {spec:?}: {message}")]
    Hub {
        /// What the user asked for (`owner/name[@revision]` or a path).
        spec: String,
        /// Why, with a hint.
        message: String,
    },
}

impl WeightsError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}
