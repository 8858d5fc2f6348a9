//! [`Checkpoint`]: a checkpoint folder (config.json + weights in one of the
//! supported layouts + tokenizer.model), opened with every tensor mapped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::index::ShardIndex;
use crate::pytorch::load_pytorch_bin;
use crate::safetensors::load_safetensors;
use crate::{names, ModelConfig, Tensor, WeightsError};

/// How the weights of a checkpoint are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckpointFormat {
    /// `model.safetensors` or `model.safetensors.index.json` + shards.
    Safetensors,
    /// `pytorch_model.bin` or `pytorch_model.bin.index.json` + shards (torch.save zip).
    PyTorchBin,
}

impl CheckpointFormat {
    fn load(self, path: &Path) -> Result<Vec<Tensor>, WeightsError> {
        match self {
            CheckpointFormat::Safetensors => load_safetensors(path),
            CheckpointFormat::PyTorchBin => load_pytorch_bin(path),
        }
    }
}

/// Weight layouts in the order Hugging Face transformers looks for them.
const LAYOUTS: [(&str, CheckpointFormat, bool); 4] = [
    ("model.safetensors", CheckpointFormat::Safetensors, false),
    ("model.safetensors.index.json", CheckpointFormat::Safetensors, true),
    ("pytorch_model.bin", CheckpointFormat::PyTorchBin, false),
    ("pytorch_model.bin.index.json", CheckpointFormat::PyTorchBin, true),
];

/// An opened checkpoint folder. Tensors are windows of memory-mapped files:
/// opening costs page-table entries, not RAM.
pub struct Checkpoint {
    /// The checkpoint folder.
    pub root: PathBuf,
    /// Its validated config.json.
    pub config: ModelConfig,
    /// The weight format found.
    pub format: CheckpointFormat,
    /// `tokenizer.model`, when the folder has one.
    pub tokenizer_path: Option<PathBuf>,
    /// The weight files read (one, or the shards in name order).
    pub weight_files: Vec<PathBuf>,
    tensors: BTreeMap<String, Tensor>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("root", &self.root)
            .field("format", &self.format)
            .field("tensors", &self.tensors.len())
            .field("total_bytes", &self.total_bytes())
            .finish()
    }
}

impl Checkpoint {
    /// Opens a checkpoint folder: reads and validates config.json, finds the
    /// weights (single file or shard index; safetensors preferred), maps
    /// every file and checks every header. Shapes against the config are
    /// checked by [`validate_shapes`](Self::validate_shapes).
    pub fn open(dir: &Path) -> Result<Self, WeightsError> {
        if !dir.is_dir() {
            return Err(WeightsError::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "checkpoint folder not found"),
            ));
        }
        let mut config = ModelConfig::from_file(&dir.join("config.json"))?;
        // The official modeling code beside the weights says how rope_ratio
        // applies (ChatGLM2-32K and ChatGLM3-32K differ); config.json alone
        // only tells the family.
        // The remote code also tells the release (and so the chat format).
        for file in ["tokenization_chatglm.py", "modeling_chatglm.py"] {
            if let Ok(code) = std::fs::read_to_string(dir.join(file)) {
                if let Some(family) = crate::ModelFamily::from_remote_code(&code) {
                    config.family = family;
                    config.rope_scaling = config.family_rope_scaling();
                }
            }
        }
        if let Ok(code) = std::fs::read_to_string(dir.join("modeling_chatglm.py")) {
            if let Some(scaling) = crate::RopeScaling::from_modeling_code(&code) {
                config.rope_scaling = scaling;
            }
        }
        let (file, format, sharded) = LAYOUTS
            .iter()
            .find(|(file, ..)| dir.join(file).is_file())
            .copied()
            .ok_or_else(|| WeightsError::NoWeights { root: dir.to_path_buf() })?;

        let mut tensors = BTreeMap::new();
        let mut sources: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut weight_files = Vec::new();
        let mut add = |loaded: Vec<Tensor>, from: &Path| -> Result<(), WeightsError> {
            for t in loaded {
                if let Some(first) = sources.get(&t.name) {
                    return Err(WeightsError::DuplicateTensor {
                        tensor: t.name,
                        first: first.clone(),
                        second: from.to_path_buf(),
                    });
                }
                sources.insert(t.name.clone(), from.to_path_buf());
                tensors.insert(t.name.clone(), t);
            }
            Ok(())
        };

        if sharded {
            let index_path = dir.join(file);
            let index = ShardIndex::from_file(&index_path)?;
            for shard in index.shards() {
                let shard_path = dir.join(shard);
                if !shard_path.is_file() {
                    return Err(WeightsError::Index {
                        path: index_path.clone(),
                        message: format!("shard {shard} is listed but {} does not exist", shard_path.display()),
                    });
                }
                let loaded = format.load(&shard_path)?;
                add(loaded, &shard_path)?;
                weight_files.push(shard_path);
            }
            for (tensor, shard) in &index.weight_map {
                let found_in = sources.get(tensor);
                if found_in.is_none_or(|p| p.file_name().is_none_or(|n| n != shard.as_str())) {
                    return Err(WeightsError::Index {
                        path: index_path.clone(),
                        message: format!(
                            "tensor {tensor} should be in {shard}, but {}",
                            match found_in {
                                Some(p) => format!("it is in {}", p.display()),
                                None => format!("{shard} does not contain it"),
                            }
                        ),
                    });
                }
            }
        } else {
            let path = dir.join(file);
            let loaded = format.load(&path)?;
            add(loaded, &path)?;
            weight_files.push(path);
        }

        if config.quantization_bit != 0 {
            crate::official_quant::convert(&mut tensors, config.quantization_bit, dir)?;
        }
        let tokenizer = dir.join("tokenizer.model");
        Ok(Self {
            root: dir.to_path_buf(),
            config,
            format,
            tokenizer_path: tokenizer.is_file().then_some(tokenizer),
            weight_files,
            tensors,
        })
    }

    /// The tensor called `name`, or an error naming it and the checkpoint.
    pub fn tensor(&self, name: &str) -> Result<&Tensor, WeightsError> {
        self.tensors
            .get(name)
            .ok_or_else(|| WeightsError::MissingTensor { root: self.root.clone(), tensor: name.to_string() })
    }

    /// All tensors, sorted by name.
    pub fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        self.tensors.values()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the checkpoint has no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Checks that every tensor of [`names::expected_tensors`] is present
    /// with the shape config.json implies (and `inv_freq`, if present).
    pub fn validate_shapes(&self) -> Result<(), WeightsError> {
        for (name, expected) in names::expected_tensors(&self.config) {
            let t = self.tensor(&name)?;
            self.check_shape(t, expected)?;
        }
        for (name, expected) in names::optional_tensors(&self.config) {
            if let Some(t) = self.tensors.get(&name) {
                self.check_shape(t, expected)?;
            }
        }
        Ok(())
    }

    fn check_shape(&self, t: &Tensor, expected: Vec<usize>) -> Result<(), WeightsError> {
        if t.shape != expected {
            return Err(WeightsError::ShapeMismatch {
                root: self.root.clone(),
                tensor: t.name.clone(),
                expected,
                found: t.shape.clone(),
            });
        }
        Ok(())
    }

    /// Bytes of tensor data (12,487,168,064 for ChatGLM2-6B in f16).
    pub fn total_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.n_bytes() as u64).sum()
    }
}
