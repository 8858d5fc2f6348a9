//! Shared helpers for the integration tests: locating and loading golden data.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use chatglm_tokenizer::ChatGlmTokenizer;
use serde_json::Value;

/// `$CHATGLM_TESTDATA`, else the repository's `testdata/`.
pub fn testdata_dir() -> PathBuf {
    chatglm_testdata::dir()
}

/// A tokenizer with its golden files.
pub struct Golden {
    pub name: &'static str,
    pub model_path: PathBuf,
    pub tokenizer_json: PathBuf,
    pub prompts_json: PathBuf,
}

pub fn real() -> Golden {
    let dir = testdata_dir().join("chatglm2-tokenizer");
    Golden {
        name: "chatglm2 (real)",
        model_path: dir.join("tokenizer.model"),
        tokenizer_json: dir.join("tokenizer.json"),
        prompts_json: dir.join("prompts.json"),
    }
}

pub fn dev() -> Golden {
    let dir = testdata_dir().join("dev");
    Golden {
        name: "dev",
        model_path: dir.join("model/safetensors-f32/tokenizer.model"),
        tokenizer_json: dir.join("golden/tokenizer.json"),
        prompts_json: dir.join("golden/prompts.json"),
    }
}

pub fn both() -> [Golden; 2] {
    [real(), dev()]
}

impl Golden {
    pub fn tokenizer(&self) -> ChatGlmTokenizer {
        ChatGlmTokenizer::from_file(&self.model_path)
            .unwrap_or_else(|e| panic!("{}: {e} (set CHATGLM_TESTDATA to the testdata folder)", self.name))
    }

    pub fn model_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.model_path).unwrap_or_else(|e| panic!("{}: {e}", self.model_path.display()))
    }

    pub fn tokenizer_cases(&self) -> Value {
        read_json(&self.tokenizer_json)
    }

    pub fn prompt_cases(&self) -> Value {
        read_json(&self.prompts_json)
    }
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (set CHATGLM_TESTDATA to the testdata folder)", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an id array, got {v}"))
        .iter()
        .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()).unwrap_or_else(|| panic!("bad id {x}")))
        .collect()
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a string array, got {v}"))
        .iter()
        .map(|x| x.as_str().unwrap_or_else(|| panic!("bad string {x}")).to_owned())
        .collect()
}

pub fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("missing string field {key}"))
}

pub fn history(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .unwrap_or_else(|| panic!("history is not an array: {v}"))
        .iter()
        .map(|round| {
            let pair = strings(round);
            assert_eq!(pair.len(), 2, "history round {round}");
            (pair[0].clone(), pair[1].clone())
        })
        .collect()
}
