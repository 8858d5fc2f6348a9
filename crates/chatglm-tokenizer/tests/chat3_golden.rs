//! ChatGLM3 prompts against the official `build_chat_input` (21
//! conversations through the real tokenizer: system prompts, multi-turn,
//! tools, observations, metadata, special-token text inside messages), from
//! `golden/family/chatglm3/prompts.json`.

use chatglm_tokenizer::{ChatGlmTokenizer, ChatMessage, Role};
use serde_json::Value;
use std::path::PathBuf;

fn golden() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../golden/family/chatglm3/prompts.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Python's `json.dumps(v, indent=4, ensure_ascii=False)` (insertion order
/// kept: serde_json's `preserve_order`).
fn python_json(v: &Value) -> String {
    use serde::Serialize;
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    v.serialize(&mut serde_json::Serializer::with_formatter(&mut out, fmt)).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn build_chat_input_matches_official() {
    let tok = ChatGlmTokenizer::from_file(&chatglm_testdata::dir().join("chatglm2-tokenizer/tokenizer.model")).unwrap();
    let g = golden();
    for (name, id) in g["special"]["special_tokens"].as_object().unwrap() {
        if let Some(role) = Role::ALL.into_iter().find(|r| r.token() == name) {
            assert_eq!(tok.role_id(role) as u64, id.as_u64().unwrap(), "{name}");
        }
    }
    let cases = g["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        // Contents as the official code renders them (tools appended to a system message).
        let contents: Vec<String> = case["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let mut c = m["content"].as_str().unwrap().to_string();
                if m["role"] == "system" {
                    if let Some(tools) = m.get("tools") {
                        c = format!("{c}\n{}", python_json(tools));
                    }
                }
                c
            })
            .collect();
        let history: Vec<ChatMessage<'_>> = case["history"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&contents)
            .map(|(m, c)| ChatMessage {
                role: Role::parse(m["role"].as_str().unwrap()).unwrap(),
                metadata: m.get("metadata").and_then(Value::as_str).unwrap_or(""),
                content: c,
            })
            .collect();
        let role = Role::parse(case["role"].as_str().unwrap()).unwrap();
        let ids = tok.encode_chat3(&history, case["query"].as_str().unwrap(), role);
        let want: Vec<u32> = case["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(ids, want, "{name}");
    }
}
