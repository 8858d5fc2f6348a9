//! P-Tuning v2 (`pre_seq_len`): the official prefix encoder's keys and values
//! in front of every layer's cache, against the official code's logits for
//! the tiny ChatGLM3 model with a prefix encoder of each kind
//! (`golden/family/chatglm3/ptuning_golden.json`), loaded both ways people
//! publish them: the encoder alone over the base model, and a whole model.

mod common;

use chatglm_model::{CpuBackend, LoadOptions, Model, TensorSource, WeightFormat};
use chatglm_weights::{ptuning, serialize_safetensors, Checkpoint, ModelConfig};
use common::{all_logits, check_ptuning_case};
use serde_json::Value;
use std::path::PathBuf;

fn family(path: &str) -> PathBuf {
    chatglm_testdata::dir().join("../golden/family").join(path)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn base(ckpt: &Checkpoint) -> Model<CpuBackend> {
    Model::load(CpuBackend::for_config(&ckpt.config), ckpt, LoadOptions::new(WeightFormat::F32), &mut |_, _| {})
        .unwrap()
}

#[test]
fn prefix_encoders_over_the_base_model_match_the_official_logits() {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(family("chatglm3/ptuning_golden.json")).unwrap()).unwrap();
    let ckpt = Checkpoint::open(&family("chatglm3/tiny/model")).unwrap();
    let plain = all_logits(&base(&ckpt), &ids(&golden["cases"]["ptuning-v2"]["input_ids"]));
    for name in ["ptuning-v2", "ptuning-v2-projection"] {
        let case = &golden["cases"][name];
        let prefix = ptuning::open(&family(&format!("chatglm3/{name}")), &ckpt.config).unwrap();
        assert_eq!(prefix.len as u64, case["config"]["pre_seq_len"].as_u64().unwrap());
        let mut model = base(&ckpt);
        model.set_prefix(Some(prefix)).unwrap();
        check_ptuning_case(&model, case, name, 1e-4);
        let moved = max_diff(&all_logits(&model, &ids(&case["input_ids"])), &plain);
        assert!(moved > 1e-2, "{name}: the prefix changed nothing ({moved})");
    }
}

/// A checkpoint's tensors under another config.
struct WithConfig<'a>(ModelConfig, &'a Checkpoint);

impl TensorSource for WithConfig<'_> {
    fn config(&self) -> &ModelConfig {
        &self.0
    }
    fn tensor(&self, name: &str) -> Result<&chatglm_weights::Tensor, chatglm_model::ModelError> {
        Ok(self.1.tensor(name)?)
    }
}

#[test]
fn a_whole_p_tuning_checkpoint_loads_with_its_prefix() {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(family("chatglm3/ptuning_golden.json")).unwrap()).unwrap();
    let base_dir = family("chatglm3/tiny/model");
    let encoder = family("chatglm3/ptuning-v2-projection");
    // The base model's tensors and the encoder's in one file, config with pre_seq_len.
    let dir = std::env::temp_dir().join(format!("chatglm-ptuning-whole-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut tensors = chatglm_weights::load_safetensors(&base_dir.join("model.safetensors")).unwrap();
    tensors.extend(chatglm_weights::load_safetensors(&encoder.join("model.safetensors")).unwrap());
    let entries: Vec<(&str, _, &[usize], &[u8])> =
        tensors.iter().map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice(), &t.data[..])).collect();
    std::fs::write(dir.join("model.safetensors"), serialize_safetensors(&entries).unwrap()).unwrap();
    std::fs::copy(encoder.join("config.json"), dir.join("config.json")).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    assert_eq!(ckpt.config.pre_seq_len, Some(4));
    check_ptuning_case(&base(&ckpt), &golden["cases"]["ptuning-v2-projection"], "whole checkpoint", 1e-4);

    // pre_seq_len without an encoder, or an encoder for another model, is refused with the reason.
    let bare = Checkpoint::open(&base_dir).unwrap();
    let mut cfg = bare.config.clone();
    cfg.pre_seq_len = Some(4);
    let source = WithConfig(cfg.clone(), &bare);
    let e = Model::load(CpuBackend::for_config(&cfg), &source, LoadOptions::new(WeightFormat::F32), &mut |_, _| {});
    assert!(e.is_err_and(|e| e.to_string().contains("--ptuning")));
    let mut other: ModelConfig = bare.config.clone();
    other.num_layers = 3;
    let e = ptuning::open(&encoder, &other).unwrap_err().to_string();
    assert!(e.contains("num_layers"), "{e}");
    assert!(ptuning::open(&base_dir, &bare.config).is_err());
    std::fs::remove_dir_all(&dir).ok();
}
