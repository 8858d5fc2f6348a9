//! ChatGLM3 replies as the official `process_response` reads them: a reply
//! is split at `<|assistant|>`; each segment's first line is its metadata (a
//! tool name) and the rest its content. A segment without metadata is text
//! (trimmed, `[[训练时间]]` → `2023年`); one with metadata is a tool call when
//! the conversation's system message lists tools (the content between its
//! code fences is `tool_call(keyword=literal, …)`, parsed, never evaluated),
//! else a named block (e.g. the code interpreter's). Every segment joins the
//! history as an assistant message; the last one is the reply.

use crate::pyliteral::parse_tool_call;
use chatglm_tokenizer::{ChatGlmTokenizer, ChatMessage, Role};
use serde_json::Value;

/// The official ChatGLM3 demos' system prompt (the CLI's and the web page's default).
pub const CHATGLM3_SYSTEM: &str = "You are ChatGLM3, a large language model trained by Zhipu.AI. Follow the user's instructions carefully. Respond using markdown.";

/// One message of a ChatGLM3 conversation (the official history item).
#[derive(Debug, Clone, PartialEq)]
pub struct Chat3Message {
    pub role: Role,
    /// A tool name after an assistant's call; usually empty.
    pub metadata: String,
    pub content: String,
    /// A system message's tool list (JSON), rendered after its content.
    pub tools: Option<Value>,
}

impl Chat3Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, metadata: String::new(), content: content.into(), tools: None }
    }

    /// The message as the official history holds it: `role` and `content`,
    /// `metadata` for assistant messages (and any other that has one), a
    /// system message's `tools`.
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("role".into(), self.role.name().into());
        if self.role == Role::Assistant || !self.metadata.is_empty() {
            m.insert("metadata".into(), self.metadata.clone().into());
        }
        m.insert("content".into(), self.content.clone().into());
        if let Some(t) = &self.tools {
            m.insert("tools".into(), t.clone());
        }
        Value::Object(m)
    }
}

/// The official list of messages (`{"role", "content", "metadata"?,
/// "tools"?}`), or `[query, response]` pairs (user and assistant messages);
/// the error says what is wrong.
pub fn history_from_json(v: &Value) -> Result<Vec<Chat3Message>, String> {
    let bad = "expected a list of messages ({\"role\", \"content\"}) or of [query, response] pairs";
    let items = v.as_array().ok_or(bad)?;
    let mut out = Vec::new();
    for item in items {
        if let Some([q, r]) = item.as_array().map(Vec::as_slice) {
            let (q, r) = (q.as_str().ok_or(bad)?, r.as_str().ok_or(bad)?);
            out.push(Chat3Message::new(Role::User, q));
            out.push(Chat3Message::new(Role::Assistant, r));
            continue;
        }
        let role = item["role"]
            .as_str()
            .and_then(Role::parse)
            .ok_or("a message needs a role: system, user, assistant or observation")?;
        out.push(Chat3Message {
            role,
            metadata: item["metadata"].as_str().unwrap_or_default().to_string(),
            content: item["content"].as_str().ok_or(bad)?.to_string(),
            tools: item.get("tools").cloned(),
        });
    }
    Ok(out)
}

/// What a ChatGLM3 reply means.
#[derive(Debug, Clone, PartialEq)]
pub enum Chat3Reply {
    Text(String),
    /// A call of one of the conversation's tools with its keyword arguments.
    ToolCall {
        name: String,
        parameters: Value,
    },
    /// A block under a name without a tool list (the code interpreter's).
    Named {
        name: String,
        content: String,
    },
}

impl Chat3Reply {
    /// As the official `chat()` returns it: the text, or `{"name",
    /// "parameters"}` for a tool call, `{"name", "content"}` for a named block.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Text(t) => t.clone().into(),
            Self::ToolCall { name, parameters } => serde_json::json!({ "name": name, "parameters": parameters }),
            Self::Named { name, content } => serde_json::json!({ "name": name, "content": content }),
        }
    }
}

/// The reply's tool call could not be read (the official code raises there).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the model's tool call cannot be read: {0}")]
pub struct ToolCallError(pub String);

/// The official `process_response(output, history)`: the reply, with every
/// segment appended to `history` (also when the tool call fails to parse).
pub fn process_response3(output: &str, history: &mut Vec<Chat3Message>) -> Result<Chat3Reply, ToolCallError> {
    let mut reply = Chat3Reply::Text(String::new());
    for segment in output.split("<|assistant|>") {
        let (metadata, content) = segment.split_once('\n').unwrap_or(("", segment));
        if metadata.trim().is_empty() {
            let content = content.trim();
            history.push(Chat3Message {
                role: Role::Assistant,
                metadata: metadata.to_string(),
                content: content.to_string(),
                tools: None,
            });
            reply = Chat3Reply::Text(content.replace("[[训练时间]]", "2023年"));
        } else {
            history.push(Chat3Message {
                role: Role::Assistant,
                metadata: metadata.to_string(),
                content: content.to_string(),
                tools: None,
            });
            let name = metadata.trim().to_string();
            let has_tools = history.first().is_some_and(|m| m.role == Role::System && m.tools.is_some());
            reply = if has_tools {
                // The lines between the code fences.
                let lines: Vec<&str> = content.split('\n').collect();
                let code = if lines.len() > 2 { lines[1..lines.len() - 1].join("\n") } else { String::new() };
                let parameters = parse_tool_call(&code).map_err(ToolCallError)?;
                Chat3Reply::ToolCall { name, parameters }
            } else {
                Chat3Reply::Named { name, content: content.to_string() }
            };
        }
    }
    Ok(reply)
}

/// Python's `json.dumps(tools, indent=4, ensure_ascii=False)`, which the
/// official `build_chat_input` appends to a system message that has tools.
pub fn render_tools(tools: &Value) -> String {
    use serde::Serialize;
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    if tools.serialize(&mut serde_json::Serializer::with_formatter(&mut out, fmt)).is_err() {
        return tools.to_string();
    }
    String::from_utf8(out).unwrap_or_else(|_| tools.to_string())
}

/// `build_chat_input(query, history, role)` for a history of messages (a
/// system message's tools rendered after its content, as the official code does).
pub fn encode_history(tok: &ChatGlmTokenizer, history: &[Chat3Message], query: &str, role: Role) -> Vec<u32> {
    let contents: Vec<String> = history
        .iter()
        .map(|m| match (&m.tools, m.role) {
            (Some(tools), Role::System) => format!("{}\n{}", m.content, render_tools(tools)),
            _ => m.content.clone(),
        })
        .collect();
    let messages: Vec<ChatMessage<'_>> = history
        .iter()
        .zip(&contents)
        .map(|(m, c)| ChatMessage { role: m.role, metadata: &m.metadata, content: c })
        .collect();
    tok.encode_chat3(&messages, query, role)
}
