//! `rope_ratio` as each official modeling file applies it, against logits
//! from the official code (`golden/family/`, made by its `generate.py`):
//! ChatGLM2-6B-32K divides positions by the ratio (official file, ratios 16
//! and 4); the ChatGLM3-32K formula (base × ratio) is checked against a
//! reconstruction of its modeling code (the official file was not found).

use chatglm_model::{
    Config, CpuBackend, ForwardState, KvDType, LoadOptions, LogitsWanted, Model, SequenceInput, WeightFormat,
};
use chatglm_weights::{Checkpoint, RopeScaling};
use serde_json::Value;
use std::path::PathBuf;

fn family(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../golden/family").join(name)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// Loads `name`'s tiny model and compares every recorded logits row of
/// every forward case with the official ones (f32: within 1e-4).
fn check(name: &str, scaling: RopeScaling, ratio: f32) {
    let ckpt = Checkpoint::open(&family(name).join("model")).unwrap();
    assert_eq!((ckpt.config.rope_scaling, ckpt.config.rope_ratio), (scaling, ratio), "{name}");
    let cfg: Config = ckpt.config.clone();
    let model =
        Model::load(CpuBackend::for_config(&cfg), &ckpt, LoadOptions::new(WeightFormat::F32), &mut |_, _| {}).unwrap();
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(family(name).join("golden/forward.json")).unwrap()).unwrap();
    let vocab = cfg.padded_vocab_size;
    let mut state = ForwardState::new(&model.backend);
    let mut worst = 0f32;
    for case in golden["cases"].as_array().unwrap() {
        let ids: Vec<u32> = case["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let mut cache = model.new_cache(KvDType::F32);
        let logits = model
            .forward(&mut state, &mut [SequenceInput { tokens: &ids, cache: &mut cache, logits: LogitsWanted::All }])
            .unwrap()
            .to_vec();
        for (pos, row) in case["logits_rows"].as_object().unwrap() {
            let p: usize = pos.parse().unwrap();
            let want = floats(row);
            let got = &logits[p * vocab..(p + 1) * vocab];
            let d = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(d <= 1e-4, "{name}: {} tokens, position {p}: max |Δ| {d}", ids.len());
            worst = worst.max(d);
        }
        let argmax: Vec<u64> =
            case["argmax_per_position"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        for (p, &want) in argmax.iter().enumerate() {
            let row = &logits[p * vocab..(p + 1) * vocab];
            let got = row.iter().enumerate().fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
            assert_eq!(got as u64, want, "{name}: argmax at position {p}");
        }
    }
    eprintln!("{name}: max |Δ| {worst:.2e}");
}

#[test]
fn chatglm2_32k_divides_positions_as_the_official_code() {
    check("chatglm2-32k", RopeScaling::DividePositions, 16.0);
    check("chatglm2-32k-ratio4", RopeScaling::DividePositions, 4.0);
}

#[test]
fn chatglm3_32k_scales_the_base() {
    check("chatglm3-32k-RECONSTRUCTED", RopeScaling::ScaleBase, 50.0);
}

#[test]
fn the_modeling_code_decides_over_the_family() {
    assert_eq!(
        RopeScaling::from_modeling_code("seq_idx = torch.arange(n) / self.rope_ratio"),
        Some(RopeScaling::DividePositions)
    );
    assert_eq!(RopeScaling::from_modeling_code("base = base * self.rope_ratio"), Some(RopeScaling::ScaleBase));
    assert_eq!(RopeScaling::from_modeling_code("no rope ratio here"), None);
}
