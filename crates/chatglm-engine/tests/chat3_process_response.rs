//! ChatGLM3 replies against the official `process_response` (26 fixed model
//! outputs: text, tool calls in the official format and variations,
//! malformed ones), from `golden/family/chatglm3/process_response.json`.
//! Where the official code raises (it `eval`s the call), we return an error.

use chatglm_engine::{process_response3, Chat3Message, Chat3Reply};
use chatglm_tokenizer::Role;
use serde_json::{json, Value};
use std::path::PathBuf;

fn message(v: &Value) -> Chat3Message {
    Chat3Message {
        role: Role::parse(v["role"].as_str().unwrap()).unwrap(),
        metadata: v.get("metadata").and_then(Value::as_str).unwrap_or("").to_string(),
        content: v["content"].as_str().unwrap().to_string(),
        tools: v.get("tools").cloned(),
    }
}

#[test]
fn replies_match_the_official_process_response() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../golden/family/chatglm3/process_response.json");
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mut history: Vec<Chat3Message> = case["history"].as_array().unwrap().iter().map(message).collect();
        let official = &case["model_process_response"];
        let got = process_response3(case["output"].as_str().unwrap(), &mut history);
        if official["ok"] == false {
            assert!(got.is_err(), "{name}: the official code raises {}, we returned {got:?}", official["exception"]);
            continue;
        }
        let got = match got.unwrap() {
            Chat3Reply::Text(t) => Value::String(t),
            Chat3Reply::ToolCall { name, parameters } => json!({"name": name, "parameters": parameters}),
            Chat3Reply::Named { name, content } => json!({"name": name, "content": content}),
        };
        assert_eq!(got, official["response"], "{name}");
        let want_history: Vec<Chat3Message> = official["new_history"].as_array().unwrap().iter().map(message).collect();
        assert_eq!(history, want_history, "{name}: history");
    }
}
