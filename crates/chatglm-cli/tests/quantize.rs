//! `chatglm quantize` end to end on the dev model: every format reads back
//! bytes-equal with the same config and tokenizer, greedy generation from the
//! .gguf equals the source loaded at the same precision, q8_0 stays close to
//! f32, and existing files are not overwritten without --force.

use chatglm_engine::gguf_vocab::tokenizer_from_gguf;
use chatglm_engine::{generate, GenerationConfig, Pipeline, PipelineOptions, SamplingParams};
use chatglm_model::{ForwardState, KvDType, LoadOptions, LogitsWanted, SequenceInput, WeightFormat};
use chatglm_tokenizer::ChatGlmTokenizer;
use chatglm_weights::gguf::{GgufModel, QuantizePlan};
use chatglm_weights::quant::{quantize_row, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QuantBlock};
use chatglm_weights::{Checkpoint, DType, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn testdata() -> PathBuf {
    chatglm_testdata::dir()
}

fn dev() -> PathBuf {
    testdata().join("dev/model/safetensors-f32")
}

/// A fresh folder under the target dir for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("quantize-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn chatglm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chatglm")).args(args).env("CHATGLM_LOG", "warn").output().unwrap()
}

fn quantize(dtype: &str, out: &Path) -> PathBuf {
    let o = chatglm(&["quantize", "-m", dev().to_str().unwrap(), "--dtype", dtype, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "quantize {dtype}: {}", String::from_utf8_lossy(&o.stderr));
    out.to_path_buf()
}

/// The bytes a tensor should have at `dtype`, computed independently of the
/// writer: f32 → the reference quantizers / half's rounding, row by row.
fn expected_bytes(src: &Tensor, dtype: DType) -> Vec<u8> {
    let values = src.to_f32().unwrap();
    fn q<B: QuantBlock>(v: &[f32]) -> Vec<u8> {
        bytemuck::cast_slice(&quantize_row::<B>(v)).to_vec()
    }
    match dtype {
        DType::F32 => bytemuck::cast_slice(&values).to_vec(),
        DType::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        DType::BF16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        DType::Q8_0 => q::<BlockQ8_0>(&values),
        DType::Q4_0 => q::<BlockQ4_0>(&values),
        DType::Q4_1 => q::<BlockQ4_1>(&values),
        DType::Q5_0 => q::<BlockQ5_0>(&values),
        DType::Q5_1 => q::<BlockQ5_1>(&values),
        other => panic!("no reference for {other}"),
    }
}

const FORMATS: [(&str, DType); 8] = [
    ("f32", DType::F32),
    ("f16", DType::F16),
    ("bf16", DType::BF16),
    ("q8_0", DType::Q8_0),
    ("q4_0", DType::Q4_0),
    ("q4_1", DType::Q4_1),
    ("q5_0", DType::Q5_0),
    ("q5_1", DType::Q5_1),
];

#[test]
fn every_format_reads_back_identically() {
    let dir = scratch("readback");
    let ckpt = Checkpoint::open(&dev()).unwrap();
    let source_tok = ChatGlmTokenizer::from_file(&dev().join("tokenizer.model")).unwrap();
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(testdata().join("dev/golden/tokenizer.json")).unwrap()).unwrap();
    let texts: Vec<&str> = golden["cases"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap()).collect();
    assert!(texts.len() > 100);
    for (name, dtype) in FORMATS {
        let path = quantize(name, &dir.join(format!("dev-{name}.gguf")));
        let model = GgufModel::open(&path).unwrap();
        assert_eq!(model.config, ckpt.config, "{name}: config");
        let plan = QuantizePlan::new(dtype).tensors(&ckpt.config).unwrap();
        assert_eq!(model.tensors().count(), plan.len());
        for t in &plan {
            let got = model.tensor(&t.source).unwrap();
            let src = ckpt.tensor(&t.source).unwrap();
            assert_eq!(got.shape, src.shape);
            assert_eq!(got.dtype, t.spec.dtype);
            assert!(*got.data == expected_bytes(src, t.spec.dtype)[..], "{name}: {} differs", t.source);
        }
        // Norms and biases stay f32; the output layer is q8_0 under 4/5-bit formats.
        let out = model.tensor("transformer.output_layer.weight").unwrap().dtype;
        assert_eq!(out, if name.starts_with('q') && name != "q8_0" { DType::Q8_0 } else { dtype });
        let tok = tokenizer_from_gguf(&model.file).unwrap();
        assert_eq!(tok.pieces(), source_tok.pieces());
        assert_eq!(tok.settings(), source_tok.settings());
        assert_eq!((tok.eos_id(), tok.bos_id(), tok.gmask_id()), (source_tok.eos_id(), source_tok.bos_id(), 4001));
        for text in &texts {
            assert_eq!(tok.encode(text), source_tok.encode(text), "{name}: {text:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refuses_to_overwrite_without_force() {
    let dir = scratch("force");
    let out = quantize("q8_0", &dir.join("m.gguf"));
    let before = std::fs::read(&out).unwrap();
    let o = chatglm(&["quantize", "-m", dev().to_str().unwrap(), "--dtype", "q4_0", "-o", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), before);
    let o = chatglm(&[
        "quantize",
        "-m",
        dev().to_str().unwrap(),
        "--dtype",
        "q4_0",
        "-o",
        out.to_str().unwrap(),
        "--force",
    ]);
    assert!(o.status.success());
    assert_ne!(std::fs::read(&out).unwrap(), before);
    // Only the result is left: no temporary files.
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("m.gguf")]);
    // A broken source leaves nothing behind either.
    let o = chatglm(&["quantize", "-m", "/nonexistent/model", "-o", dir.join("x.gguf").to_str().unwrap()]);
    assert!(!o.status.success());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

fn greedy_ids(p: &Pipeline<chatglm_model::CpuBackend>, prompt: &str, n: usize) -> Vec<u32> {
    let ids = p.tokenizer.encode_chat(prompt, &[]);
    let config = GenerationConfig {
        sampling: SamplingParams::greedy(),
        max_length: ids.len() + n,
        max_new_tokens: Some(n),
        eos_ids: vec![],
        ..GenerationConfig::default()
    };
    let mut state = ForwardState::new(&p.model.backend);
    let mut cache = p.model.new_cache(KvDType::F32);
    generate(&p.model, &p.tokenizer, &mut state, &mut cache, &ids, &config, &mut |_| true).unwrap().generated_ids
}

fn load(spec: &Path, format: WeightFormat) -> Pipeline<chatglm_model::CpuBackend> {
    let options =
        PipelineOptions { load: LoadOptions::new(format), kv_dtype: Some(KvDType::F32), ..Default::default() };
    Pipeline::load(spec.to_str().unwrap(), options, &mut |_, _| {}).unwrap()
}

#[test]
fn greedy_from_gguf_equals_source_at_the_same_dtype() {
    let dir = scratch("greedy");
    for (name, format) in [
        ("f32", WeightFormat::F32),
        ("f16", WeightFormat::F16),
        ("bf16", WeightFormat::BF16),
        ("q8_0", WeightFormat::Q8_0),
        ("q4_0", WeightFormat::Q4_0),
        ("q5_1", WeightFormat::Q5_1),
    ] {
        let path = quantize(name, &dir.join(format!("{name}.gguf")));
        let from_gguf = load(&path, WeightFormat::Auto);
        let from_source = load(&dev(), format);
        assert_eq!(from_gguf.model.weight_bytes(), from_source.model.weight_bytes(), "{name}");
        for prompt in ["你好", "Write a poem about the sea."] {
            let a = greedy_ids(&from_gguf, prompt, 24);
            let b = greedy_ids(&from_source, prompt, 24);
            assert_eq!(a, b, "{name}: {prompt}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The documented bound (docs/quant-formats.md): on the dev model, q8_0's
/// mean KL against f32 is ~3e-4 nats; we allow 1e-3 mean and 3e-3 max.
#[test]
fn q8_0_stays_close_to_f32() {
    let o = chatglm(&["quantize", "--report", "--json", "-m", dev().to_str().unwrap(), "--formats", "q8_0,q4_0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["reference"], "f32");
    let q8 = &doc["formats"][0];
    assert_eq!(q8["format"], "q8_0");
    let (kl_mean, kl_max, top1) =
        (q8["kl_mean"].as_f64().unwrap(), q8["kl_max"].as_f64().unwrap(), q8["top1_agreement"].as_f64().unwrap());
    assert!(kl_mean > 0.0 && kl_mean < 1e-3 && kl_max < 3e-3, "q8_0 KL {kl_mean} / {kl_max}");
    assert!(top1 >= 0.95, "q8_0 top-1 {top1}");
    let q4_kl = doc["formats"][1]["kl_mean"].as_f64().unwrap();
    assert!(q4_kl > kl_mean, "q4_0 ({q4_kl}) should lose more than q8_0 ({kl_mean})");

    // Greedy agreement: feed f32's greedy continuation to the q8_0 .gguf and
    // count the steps where q8_0 would have picked the same token.
    let dir = scratch("agree");
    let f32 = load(&dev(), WeightFormat::F32);
    let q8 = load(&quantize("q8_0", &dir.join("q8.gguf")), WeightFormat::Auto);
    let prompt = f32.tokenizer.encode_chat("你好，请介绍一下你自己。", &[]);
    let generated = greedy_ids(&f32, "你好，请介绍一下你自己。", 64);
    let all: Vec<u32> = prompt.iter().chain(&generated).copied().collect();
    let mut state = ForwardState::new(&q8.model.backend);
    let mut cache = q8.model.new_cache(KvDType::F32);
    let mut batch = [SequenceInput { tokens: &all[..all.len() - 1], cache: &mut cache, logits: LogitsWanted::All }];
    let logits = q8.model.forward(&mut state, &mut batch).unwrap();
    let vocab = q8.model.config.padded_vocab_size;
    let agree = generated
        .iter()
        .enumerate()
        .filter(|&(i, &want)| {
            let row = &logits[(prompt.len() - 1 + i) * vocab..][..vocab];
            let best = row.iter().enumerate().fold((0, f32::MIN), |b, (j, &v)| if v > b.1 { (j, v) } else { b }).0;
            best as u32 == want
        })
        .count();
    assert!(agree * 10 >= generated.len() * 9, "q8_0 agrees with f32 greedy on {agree}/{} steps", generated.len());
    let _ = std::fs::remove_dir_all(&dir);
}
