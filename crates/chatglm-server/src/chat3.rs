//! `/v1/chat/completions` for ChatGLM3 models: OpenAI messages and `tools`
//! mapped to ChatGLM3's conversation as the official ChatGLM3 OpenAI demo
//! maps them (the tool list becomes a system message "Answer the following
//! questions as best as you can. You have access to the following tools:",
//! which replaces a system message of the request; `role: "tool"` messages
//! are `<|observation|>` rounds; an assistant's `tool_calls` are its
//! `tool_call(...)` blocks), and a reply that calls a tool read back into
//! OpenAI `tool_calls`.

use crate::error::ApiError;
use chatglm_engine::chat3::encode_history;
use chatglm_engine::{process_response3, Chat3Message, Chat3Reply};
use chatglm_tokenizer::{ChatGlmTokenizer, Role};
use serde_json::{json, Value};

/// The official demo's system prompt for a request with tools.
pub(crate) const TOOLS_SYSTEM: &str =
    "Answer the following questions as best as you can. You have access to the following tools:";

/// A request's message, as the chat endpoint reads it.
#[derive(Debug, Clone)]
pub(crate) struct InMessage {
    pub role: String,
    pub text: String,
    /// An assistant's calls: (function name, JSON arguments text).
    pub tool_calls: Vec<(String, String)>,
}

/// A ChatGLM3 prompt: the history, the last message as the query, its role.
#[derive(Debug, Clone)]
pub(crate) struct Chat3Prompt {
    pub history: Vec<Chat3Message>,
    pub query: String,
    pub role: Role,
}

impl Chat3Prompt {
    pub fn ids(&self, tok: &ChatGlmTokenizer) -> Vec<u32> {
        encode_history(tok, &self.history, &self.query, self.role)
    }

    pub fn has_tools(&self) -> bool {
        self.history.first().is_some_and(|m| m.role == Role::System && m.tools.is_some())
    }
}

/// The tools a request offers the model after `tool_choice`: `"none"`
/// offers none, `{"type": "function", "function": {"name": N}}` only N;
/// each as ChatGLM3's tool definition (the OpenAI `function` object).
pub(crate) fn offered_tools(tools: &[Value], tool_choice: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    let bad = |m: String| ApiError::invalid_param("tools", m);
    let mut defs = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        if t.get("type").and_then(Value::as_str).is_some_and(|ty| ty != "function") {
            return Err(bad(format!("tools[{i}]: only tools of type `function` are supported")));
        }
        let f = t.get("function").unwrap_or(t);
        if f.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(bad(format!("tools[{i}]: a function needs a `name`")));
        }
        defs.push(f.clone());
    }
    match tool_choice {
        None => Ok(defs),
        Some(Value::String(s)) if s == "auto" || s == "required" => Ok(defs),
        Some(Value::String(s)) if s == "none" => Ok(Vec::new()),
        Some(v) => {
            let name = v.pointer("/function/name").and_then(Value::as_str).ok_or_else(|| {
                ApiError::invalid_param(
                    "tool_choice",
                    "tool_choice must be \"none\", \"auto\", \"required\" or a function",
                )
            })?;
            let chosen: Vec<Value> = defs.into_iter().filter(|d| d["name"] == name).collect();
            if chosen.is_empty() {
                return Err(ApiError::invalid_param("tool_choice", format!("no tool named `{name}` in tools")));
            }
            Ok(chosen)
        }
    }
}

/// JSON arguments as the `tool_call(...)` block ChatGLM3 writes for a call.
fn call_block(arguments: &str) -> String {
    let args: Value = serde_json::from_str(arguments).unwrap_or(Value::Null);
    let kwargs: Vec<String> = match &args {
        Value::Object(m) => m.iter().map(|(k, v)| format!("{k}={}", py_literal(v))).collect(),
        _ => Vec::new(),
    };
    format!(" ```python\ntool_call({})\n```", kwargs.join(", "))
}

/// A JSON value as a Python literal (what `eval` in the official code reads).
fn py_literal(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Array(a) => format!("[{}]", a.iter().map(py_literal).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), py_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The request's messages as a ChatGLM3 conversation. The last message is
/// the query: a `user` message, or a `tool` result (an observation).
pub(crate) fn chat3_prompt(messages: &[InMessage], tools: Vec<Value>) -> Result<Chat3Prompt, ApiError> {
    let Some((last, earlier)) = messages.split_last() else {
        return Err(ApiError::invalid_param("messages", "messages must not be empty"));
    };
    let role = match last.role.as_str() {
        "user" => Role::User,
        "tool" | "function" => Role::Observation,
        other => {
            return Err(ApiError::invalid_param(
                "messages",
                format!("the last message must have role `user` or `tool`, got `{other}`"),
            ))
        }
    };
    let mut history = Vec::new();
    let with_tools = !tools.is_empty();
    if with_tools {
        history.push(Chat3Message {
            role: Role::System,
            metadata: String::new(),
            content: TOOLS_SYSTEM.into(),
            tools: Some(Value::Array(tools)),
        });
    }
    for (i, m) in earlier.iter().enumerate() {
        match m.role.as_str() {
            // The tool list's system message takes the place of the request's.
            "system" if with_tools => {}
            "system" => history.push(Chat3Message::new(Role::System, m.text.clone())),
            "user" => history.push(Chat3Message::new(Role::User, m.text.clone())),
            "tool" | "function" => history.push(Chat3Message::new(Role::Observation, m.text.clone())),
            "assistant" if !m.tool_calls.is_empty() => {
                for (name, arguments) in &m.tool_calls {
                    history.push(Chat3Message {
                        role: Role::Assistant,
                        metadata: name.clone(),
                        content: call_block(arguments),
                        tools: None,
                    });
                }
            }
            "assistant" => history.push(Chat3Message::new(Role::Assistant, m.text.trim().to_string())),
            other => {
                return Err(ApiError::invalid_param(
                    &format!("messages[{i}]"),
                    format!("unknown role `{other}` (system, user, assistant, tool)"),
                ))
            }
        }
    }
    Ok(Chat3Prompt { history, query: last.text.clone(), role })
}

/// The assistant message and finish reason for a ChatGLM3 reply `text`:
/// `tool_calls` when the prompt offered tools and the reply calls one
/// (`call_id` names the call), else the reply's text.
pub(crate) fn reply_message(prompt: &Chat3Prompt, text: &str, call_id: &str) -> (Value, Option<&'static str>) {
    let mut history = prompt.history.clone();
    match process_response3(text, &mut history) {
        Ok(Chat3Reply::ToolCall { name, parameters }) if prompt.has_tools() => (
            json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "id": call_id,
                    "type": "function",
                    "function": { "name": name, "arguments": parameters.to_string() },
                }],
            }),
            Some("tool_calls"),
        ),
        Ok(Chat3Reply::Text(t)) => (json!({ "role": "assistant", "content": t }), None),
        // A named block without tools, or a call that cannot be read: the text.
        _ => (json!({ "role": "assistant", "content": text.trim() }), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, text: &str) -> InMessage {
        InMessage { role: role.into(), text: text.into(), tool_calls: Vec::new() }
    }

    fn weather() -> Vec<Value> {
        vec![json!({"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})]
    }

    #[test]
    fn a_tool_round_trip_maps_as_the_official_demo() {
        let tools = offered_tools(&weather(), None).unwrap();
        let mut call = msg("assistant", "");
        call.tool_calls.push(("get_weather".into(), r#"{"city": "北京", "days": [1, 2], "exact": true}"#.into()));
        let messages =
            [msg("system", "ignored with tools"), msg("user", "天气？"), call, msg("tool", "{\"temp\": 20}")];
        let p = chat3_prompt(&messages, tools).unwrap();
        assert_eq!(p.role, Role::Observation);
        assert_eq!(p.query, "{\"temp\": 20}");
        assert!(p.has_tools());
        assert_eq!(p.history[0].content, TOOLS_SYSTEM);
        assert_eq!(p.history[0].tools.as_ref().unwrap()[0]["name"], "get_weather");
        assert_eq!((p.history[1].role, p.history[1].content.as_str()), (Role::User, "天气？"));
        assert_eq!(p.history[2].metadata, "get_weather");
        assert_eq!(p.history[2].content, " ```python\ntool_call(city=\"北京\", days=[1, 2], exact=True)\n```");
        // The block we write reads back as the same arguments.
        let (m, finish) = reply_message(&p, &format!("get_weather\n{}", p.history[2].content), "call_1");
        assert_eq!(finish, Some("tool_calls"));
        let args: Value = serde_json::from_str(m["tool_calls"][0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "北京", "days": [1, 2], "exact": true}));
        assert_eq!(m["tool_calls"][0]["id"], "call_1");
        assert!(m["content"].is_null());
    }

    #[test]
    fn text_replies_and_choices() {
        let p = chat3_prompt(&[msg("user", "hi")], Vec::new()).unwrap();
        assert!(!p.has_tools());
        let (m, finish) = reply_message(&p, "\n Hello! ", "x");
        assert_eq!((m["content"].as_str(), finish), (Some("Hello!"), None));
        // Without tools a tool-like reply stays text.
        let (m, finish) = reply_message(&p, "track\n ```python\ntool_call(a=1)\n```", "x");
        assert_eq!(finish, None);
        assert!(m["content"].as_str().unwrap().starts_with("track"));
        assert!(offered_tools(&weather(), Some(&json!("none"))).unwrap().is_empty());
        let one = offered_tools(&weather(), Some(&json!({"type": "function", "function": {"name": "get_weather"}})));
        assert_eq!(one.unwrap().len(), 1);
        assert!(offered_tools(&weather(), Some(&json!({"type": "function", "function": {"name": "x"}}))).is_err());
        assert!(offered_tools(&[json!({"type": "retrieval"})], None).is_err());
        assert!(chat3_prompt(&[msg("assistant", "x")], Vec::new()).is_err());
        assert!(chat3_prompt(&[msg("critic", "x"), msg("user", "y")], Vec::new()).is_err());
    }
}
