//! GGUF files as a [`TensorSource`]: tensors already carry their official
//! names (see [`chatglm_weights::gguf::model`]), and are mapped windows, so a
//! quantized file loads with no copy.

use crate::loader::TensorSource;
use crate::ModelError;
use chatglm_weights::gguf::GgufModel;
use chatglm_weights::{ModelConfig, Tensor};

impl TensorSource for GgufModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn tensor(&self, name: &str) -> Result<&Tensor, ModelError> {
        Ok(GgufModel::tensor(self, name)?)
    }
}
