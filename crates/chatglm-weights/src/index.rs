//! Shard indexes (`model.safetensors.index.json`,
//! `pytorch_model.bin.index.json`): `{"metadata": {"total_size": N},
//! "weight_map": {tensor: shard_file}}`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::WeightsError;

#[derive(Deserialize)]
struct RawIndex {
    weight_map: BTreeMap<String, String>,
}

/// A parsed shard index.
#[derive(Debug, Clone)]
pub struct ShardIndex {
    /// The index file.
    pub path: PathBuf,
    /// Tensor name → shard file name (relative to the index's folder).
    pub weight_map: BTreeMap<String, String>,
}

impl ShardIndex {
    /// Reads an index file and checks that every shard name is a plain file
    /// name in the same folder (no `/`, `..` or absolute paths).
    pub fn from_file(path: &Path) -> Result<Self, WeightsError> {
        let text = std::fs::read_to_string(path).map_err(|e| WeightsError::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses index JSON, naming `path` in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, WeightsError> {
        let bad = |message: String| WeightsError::Index { path: path.to_path_buf(), message };
        let raw: RawIndex = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if raw.weight_map.is_empty() {
            return Err(bad("weight_map is empty".into()));
        }
        for (tensor, shard) in &raw.weight_map {
            let plain = !shard.is_empty()
                && shard != "."
                && shard != ".."
                && !shard.contains(['/', '\\'])
                && Path::new(shard).file_name().is_some_and(|n| n == shard.as_str());
            if !plain {
                return Err(bad(format!(
                    "tensor {tensor}: shard {shard:?} is not a file name in the checkpoint folder"
                )));
            }
        }
        Ok(Self { path: path.to_path_buf(), weight_map: raw.weight_map })
    }

    /// The distinct shard file names, sorted.
    pub fn shards(&self) -> BTreeSet<&str> {
        self.weight_map.values().map(String::as_str).collect()
    }
}
