//! ChatGLM3 `model.chat()` against the official code on a tiny random
//! ChatGLM3 model (`golden/family/chatglm3/tiny`): prompts, greedy ids, the
//! dropped last id, the reply and the new history, with and without a
//! system message, over several rounds, and an observation turn with tools.

use chatglm_engine::{
    Chat3Message, Chat3Reply, Chat3Session, GenerationConfig, Pipeline, PipelineOptions, SamplingParams,
};
use chatglm_model::ModelFamily;
use chatglm_tokenizer::Role;
use serde_json::Value;
use std::path::PathBuf;

fn family(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../golden/family").join(path)
}

fn message(v: &Value) -> Chat3Message {
    Chat3Message {
        role: Role::parse(v["role"].as_str().unwrap()).unwrap(),
        metadata: v.get("metadata").and_then(Value::as_str).unwrap_or("").to_string(),
        content: v["content"].as_str().unwrap().to_string(),
        tools: v.get("tools").cloned(),
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn tiny_chatglm3_chats_as_the_official_code() {
    let dir = family("chatglm3/tiny/model");
    let p = Pipeline::load(dir.to_str().unwrap(), PipelineOptions::default(), &mut |_, _| {}).unwrap();
    assert_eq!(p.model.config.family, ModelFamily::ChatGlm3, "detected from the checkpoint");
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(family("chatglm3/tiny/golden/generate.json")).unwrap()).unwrap();
    let mut checked = 0;
    for case in golden["chat"].as_array().unwrap() {
        if !case["forced"].is_null() {
            continue; // a logits processor forced the stop token: not reproducible here
        }
        let query = case["query"].as_str().unwrap();
        let history: Vec<Chat3Message> = case["history"].as_array().unwrap().iter().map(message).collect();
        let role = Role::parse(case["role"].as_str().unwrap()).unwrap();
        let mut session = Chat3Session::with_history(&p, history);
        let config = GenerationConfig {
            sampling: SamplingParams::greedy(),
            max_length: case["max_length"].as_u64().unwrap() as usize,
            ..GenerationConfig::default()
        };
        let turn = session.chat(query, role, &config).unwrap();
        assert_eq!(turn.prompt_ids, ids(&case["prompt_ids"]), "{query}: prompt");
        assert_eq!(turn.output.generated_ids, ids(&case["generated_ids"]), "{query}: generated ids");
        assert_eq!(turn.raw, case["raw_decode"].as_str().unwrap(), "{query}: decoded reply");
        match turn.reply.unwrap() {
            Chat3Reply::Text(t) => assert_eq!(t, case["response"].as_str().unwrap(), "{query}: reply"),
            other => panic!("{query}: {other:?}"),
        }
        let want: Vec<Chat3Message> = case["new_history"].as_array().unwrap().iter().map(message).collect();
        assert_eq!(session.history(), &want[..], "{query}: history");
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} cases checked");
}
