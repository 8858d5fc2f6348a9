//! The OpenAI endpoints: `POST /v1/chat/completions`, `POST /v1/completions`
//! and `GET /v1/models`.

use crate::bridge::{collect, encode_off_runtime, submit};
use crate::chat3::{chat3_prompt, offered_tools, reply_message, InMessage};
use crate::error::{parse_json, ApiError};
use crate::params::{Defaults, SamplingFields, StopField};
use crate::state::{unix_now, AppState};
use crate::stream::{sse_response, whole_reply_stream, Flavor, StreamSpec};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chatglm_engine::text::process_response;
use chatglm_tokenizer::Role;
use serde::Deserialize;
use serde_json::{json, Value};

/// The official `chat()` sampling defaults.
const CHAT_TEMPERATURE: f64 = 0.8;
const CHAT_TOP_P: f64 = 0.8;
/// OpenAI's default `max_tokens` for `/v1/completions`.
const COMPLETION_MAX_TOKENS: usize = 16;

#[derive(Debug, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Message content: a string, or a list of parts of which the text ones count.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: Option<Content>,
    /// An assistant's calls of the request's tools (ChatGLM3).
    tool_calls: Option<Vec<ToolCallIn>>,
}

#[derive(Debug, Deserialize)]
struct ToolCallIn {
    function: FunctionCallIn,
}

#[derive(Debug, Deserialize)]
struct FunctionCallIn {
    name: String,
    #[serde(default)]
    arguments: String,
}

impl Message {
    fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(Content::Text(s)) => s.clone(),
            Some(Content::Parts(parts)) => parts.iter().filter_map(|p| p.text.as_deref()).collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Vec<Message>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u64>,
    repetition_penalty: Option<f64>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    stop: Option<StopField>,
    seed: Option<serde_json::Number>,
    n: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    /// OpenAI function tools (ChatGLM3 models).
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    prompt: PromptField,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u64>,
    repetition_penalty: Option<f64>,
    max_tokens: Option<u64>,
    stop: Option<StopField>,
    seed: Option<serde_json::Number>,
    n: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

pub(crate) fn usage_json(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// The official `openai_api.py` folding: the last message is the user's
/// query; a leading system message is prepended to it; the messages between
/// are `(user, assistant)` pairs of history.
fn fold_messages(messages: &[Message]) -> Result<(String, Vec<(String, String)>), ApiError> {
    let Some((last, earlier)) = messages.split_last() else {
        return Err(ApiError::invalid_param("messages", "messages must not be empty"));
    };
    if last.role != "user" {
        return Err(ApiError::invalid_param(
            "messages",
            format!("the last message must have role `user`, got `{}`", last.role),
        ));
    }
    let mut query = last.text();
    let mut earlier = earlier;
    if let Some((first, rest)) = earlier.split_first() {
        if first.role == "system" {
            query = first.text() + &query;
            earlier = rest;
        }
    }
    if earlier.len() % 2 != 0 {
        return Err(ApiError::invalid_param(
            "messages",
            "messages before the last must alternate user, assistant (after an optional leading system message)",
        ));
    }
    let mut history = Vec::with_capacity(earlier.len() / 2);
    for (i, pair) in earlier.chunks_exact(2).enumerate() {
        if pair[0].role != "user" || pair[1].role != "assistant" {
            return Err(ApiError::invalid_param(
                &format!("messages[{}]", 2 * i + usize::from(messages.len() > earlier.len() + 1)),
                format!(
                    "expected a user message followed by an assistant message, got `{}`, `{}`",
                    pair[0].role, pair[1].role
                ),
            ));
        }
        history.push((pair[0].text(), pair[1].text()));
    }
    Ok((query, history))
}

pub(crate) async fn chat_completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| ApiError::from_body_rejection(r, state.config().max_body_bytes))?;
    let req: ChatRequest = parse_json(&body)?;
    let fields = SamplingFields {
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        repetition_penalty: req.repetition_penalty,
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        stop: req.stop,
        seed: req.seed,
        n: req.n,
    };
    let mut params =
        fields.to_params(&state, Defaults { temperature: CHAT_TEMPERATURE, top_p: CHAT_TOP_P, max_tokens: None })?;
    let tools = req.tools.as_deref().unwrap_or_default();
    let chat3 = if state.config().chatglm3 {
        let messages: Vec<InMessage> = req
            .messages
            .iter()
            .map(|m| InMessage {
                role: m.role.clone(),
                text: m.text(),
                tool_calls: m
                    .tool_calls
                    .iter()
                    .flatten()
                    .map(|c| (c.function.name.clone(), c.function.arguments.clone()))
                    .collect(),
            })
            .collect();
        Some(chat3_prompt(&messages, offered_tools(tools, req.tool_choice.as_ref())?)?)
    } else {
        if !tools.is_empty() {
            return Err(ApiError::invalid_param(
                "tools",
                "this model is ChatGLM2, which has no tool calling; tools need a ChatGLM3 model",
            ));
        }
        None
    };
    let prompt_ids = match chat3.clone() {
        Some(prompt) => {
            // ChatGLM3 also stops where the next turn would begin.
            let tok = &state.0.tokenizer;
            params.eos_ids.extend([tok.role_id(Role::User), tok.role_id(Role::Observation)]);
            encode_off_runtime(&state, move |t| prompt.ids(t)).await?
        }
        None => {
            let (query, history) = fold_messages(&req.messages)?;
            encode_off_runtime(&state, move |t| t.encode_chat(&query, &history)).await?
        }
    };
    let submitted = submit(&state, prompt_ids, params, "messages")?;
    let id = format!("chatcmpl-{}", submitted.id);
    let call_id = format!("call_{}", submitted.id);
    let model = state.config().model_id.clone();
    let created = unix_now();
    let stream = req.stream.unwrap_or(false);
    let include_usage = req.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
    let with_tools = chat3.as_ref().is_some_and(|p| p.has_tools());
    if stream && !with_tools {
        let spec = StreamSpec { flavor: Flavor::Chat, id, model, created, include_usage };
        return Ok(sse_response(spec, submitted));
    }
    let c = collect(submitted).await?;
    let (message, tool_finish) = match &chat3 {
        Some(prompt) => reply_message(prompt, &c.text, &call_id),
        None => (json!({ "role": "assistant", "content": process_response(&c.text) }), None),
    };
    let finish_reason = tool_finish.unwrap_or(c.finish_reason.as_str());
    let usage = usage_json(c.prompt_tokens, c.completion_tokens);
    if stream {
        // With tools the reply is read whole (a tool call or text), then sent
        // as one delta: OpenAI clients assemble tool calls from deltas.
        let spec = StreamSpec { flavor: Flavor::Chat, id, model, created, include_usage };
        return Ok(whole_reply_stream(spec, message, finish_reason, usage));
    }
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": usage,
    }))
    .into_response())
}

pub(crate) async fn completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| ApiError::from_body_rejection(r, state.config().max_body_bytes))?;
    let req: CompletionRequest = parse_json(&body)?;
    let prompt = match req.prompt {
        PromptField::One(s) => s,
        PromptField::Many(mut v) if v.len() == 1 => v.remove(0),
        PromptField::Many(v) => {
            return Err(ApiError::invalid_param("prompt", format!("exactly one prompt is supported, got {}", v.len())))
        }
    };
    let fields = SamplingFields {
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        repetition_penalty: req.repetition_penalty,
        max_tokens: req.max_tokens,
        stop: req.stop,
        seed: req.seed,
        n: req.n,
    };
    let params =
        fields.to_params(&state, Defaults { temperature: 1.0, top_p: 1.0, max_tokens: Some(COMPLETION_MAX_TOKENS) })?;
    let prompt_ids = encode_off_runtime(&state, move |t| t.encode(&prompt)).await?;
    let submitted = submit(&state, prompt_ids, params, "prompt")?;
    let id = format!("cmpl-{}", submitted.id);
    let model = state.config().model_id.clone();
    let created = unix_now();
    if req.stream.unwrap_or(false) {
        let include_usage = req.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
        let spec = StreamSpec { flavor: Flavor::Completion, id, model, created, include_usage };
        return Ok(sse_response(spec, submitted));
    }
    let c = collect(submitted).await?;
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "text": c.text,
            "logprobs": null,
            "finish_reason": c.finish_reason.as_str(),
        }],
        "usage": usage_json(c.prompt_tokens, c.completion_tokens),
    }))
    .into_response())
}

/// The served model; besides OpenAI's fields, its `family` (`chatglm2` or
/// `chatglm3`) and, for ChatGLM3, the demos' `system_prompt` (the web page
/// starts conversations with it).
pub(crate) async fn models(State(state): State<AppState>) -> Json<Value> {
    let chatglm3 = state.config().chatglm3;
    let mut model = json!({
        "id": state.config().model_id,
        "object": "model",
        "created": state.0.started_unix,
        "owned_by": "chatglm.rs",
        "family": if chatglm3 { "chatglm3" } else { "chatglm2" },
    });
    if chatglm3 {
        model["system_prompt"] = chatglm_engine::CHATGLM3_SYSTEM.into();
    }
    Json(json!({ "object": "list", "data": [model] }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: Some(Content::Text(content.into())), tool_calls: None }
    }

    #[test]
    fn folds_like_the_official_openai_api() {
        let (q, h) = fold_messages(&[msg("user", "hi")]).unwrap();
        assert_eq!((q.as_str(), h.len()), ("hi", 0));
        let (q, h) =
            fold_messages(&[msg("system", "Be brief. "), msg("user", "a"), msg("assistant", "b"), msg("user", "c")])
                .unwrap();
        assert_eq!(q, "Be brief. c");
        assert_eq!(h, vec![("a".to_string(), "b".to_string())]);
    }

    #[test]
    fn rejects_bad_message_orders() {
        assert!(fold_messages(&[]).is_err());
        assert!(fold_messages(&[msg("assistant", "x")]).is_err());
        let e = fold_messages(&[msg("user", "a"), msg("user", "b"), msg("user", "c")]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0]"));
        assert!(fold_messages(&[msg("user", "a"), msg("user", "b")]).is_err());
    }
}
