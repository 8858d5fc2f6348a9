//! `synthetic:NAME:TOKENIZER` model specs: random weights of a known shape with
//! a real tokenizer, for load tests and benchmarks without a download.

use chatglm_engine::{ChatSession, EngineError, GenerationConfig, Pipeline, PipelineOptions, SamplingParams};
use chatglm_testdata::dir as testdata;

fn tokenizer() -> String {
    testdata().join("dev/model/safetensors-f32/tokenizer.model").to_str().unwrap().to_string()
}

#[test]
fn a_synthetic_dev_model_chats() {
    let spec = format!("synthetic:dev:{}", tokenizer());
    let p = Pipeline::load(&spec, PipelineOptions::default(), &mut |_, _| {}).unwrap();
    assert_eq!(p.model.config.num_layers, chatglm_model::Config::known("dev").unwrap().unwrap().num_layers);
    assert_eq!(p.source, spec);
    let config =
        GenerationConfig { sampling: SamplingParams::greedy(), max_new_tokens: Some(5), ..GenerationConfig::default() };
    let reply = ChatSession::new(&p).chat("你好", &config).unwrap();
    assert!(!reply.output.generated_ids.is_empty());
}

#[test]
fn bad_synthetic_specs_are_refused_with_the_reason() {
    let cases = [
        ("synthetic:dev".to_string(), "synthetic:NAME:"),
        (format!("synthetic:gpt5:{}", tokenizer()), "unknown synthetic model `gpt5`"),
        ("synthetic:dev:/nonexistent/tokenizer.model".to_string(), ""),
    ];
    for (spec, want) in cases {
        let err = match Pipeline::load(&spec, PipelineOptions::default(), &mut |_, _| {}) {
            Ok(_) => panic!("{spec} loaded"),
            Err(e) => e,
        };
        assert!(err.to_string().contains(want), "{spec}: {err}");
        if want.is_empty() {
            assert!(matches!(err, EngineError::Tokenizer(_)), "{spec}: {err:?}");
        }
    }
}
