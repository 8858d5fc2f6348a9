//! Server-sent events for `stream: true`: OpenAI chunk objects, a final
//! chunk with `finish_reason`, an optional usage chunk, then `data: [DONE]`.
//!
//! The stream owns the request's event receiver: when the client goes away
//! hyper drops the stream, the receiver with it, and the engine cancels the
//! request within one step.

use crate::bridge::Submitted;
use crate::error::ApiError;
use crate::openai::usage_json;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chatglm_engine::RequestEvent;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;

/// Which object the chunks are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// `chat.completion.chunk` with `delta`s.
    Chat,
    /// `text_completion` with `text`.
    Completion,
}

/// Fixed fields of every chunk of one response.
#[derive(Debug, Clone)]
pub(crate) struct StreamSpec {
    pub flavor: Flavor,
    pub id: String,
    pub model: String,
    pub created: u64,
    pub include_usage: bool,
}

struct StreamState {
    spec: StreamSpec,
    submitted: Submitted,
    pending: VecDeque<Event>,
    /// Whether non-whitespace content was sent (leading whitespace is
    /// stripped, as the official `process_response`).
    content_started: bool,
    done: bool,
}

/// Python's `str.isspace`, as `process_response` strips.
pub(crate) fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

impl StreamState {
    fn chunk(&self, choice: Value, usage: Option<Value>) -> Event {
        let s = &self.spec;
        let object = match s.flavor {
            Flavor::Chat => "chat.completion.chunk",
            Flavor::Completion => "text_completion",
        };
        let choices = if choice.is_null() { json!([]) } else { json!([choice]) };
        let mut v = json!({
            "id": s.id,
            "object": object,
            "created": s.created,
            "model": s.model,
            "choices": choices,
        });
        if s.include_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        Event::default().data(v.to_string())
    }

    fn choice(&self, text: Option<&str>, finish_reason: Option<&str>) -> Value {
        match self.spec.flavor {
            Flavor::Chat => {
                let delta = match text {
                    Some(t) => json!({ "content": t }),
                    None => json!({}),
                };
                json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason })
            }
            Flavor::Completion => json!({
                "index": 0,
                "text": text.unwrap_or(""),
                "logprobs": null,
                "finish_reason": finish_reason,
            }),
        }
    }

    fn on_event(&mut self, event: Option<RequestEvent>) {
        match event {
            Some(RequestEvent::Text(t)) => {
                let text = if self.spec.flavor == Flavor::Chat && !self.content_started {
                    t.trim_start_matches(is_python_space)
                } else {
                    &t
                };
                if !text.is_empty() {
                    self.content_started = true;
                    let ev = self.chunk(self.choice(Some(text), None), None);
                    self.pending.push_back(ev);
                }
            }
            Some(RequestEvent::Finished(c)) => {
                let ev = self.chunk(self.choice(None, Some(c.finish_reason.as_str())), None);
                self.pending.push_back(ev);
                if self.spec.include_usage {
                    let usage = usage_json(c.prompt_tokens, c.completion_tokens);
                    let ev = self.chunk(Value::Null, Some(usage));
                    self.pending.push_back(ev);
                }
                self.end();
            }
            Some(RequestEvent::Failed(m)) => {
                let body = ApiError::internal(m).body();
                self.pending.push_back(Event::default().data(body.to_string()));
                self.end();
            }
            None => {
                let body = ApiError::internal("the engine stopped before the request finished").body();
                self.pending.push_back(Event::default().data(body.to_string()));
                self.end();
            }
        }
    }

    fn end(&mut self) {
        self.pending.push_back(Event::default().data("[DONE]"));
        self.done = true;
    }
}

/// The SSE response for a queued request.
pub(crate) fn sse_response(spec: StreamSpec, submitted: Submitted) -> Response {
    let mut state = StreamState { spec, submitted, pending: VecDeque::new(), content_started: false, done: false };
    if state.spec.flavor == Flavor::Chat {
        let first = json!({ "index": 0, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null });
        let ev = state.chunk(first, None);
        state.pending.push_back(ev);
    }
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop_front() {
                return Some((Ok::<Event, Infallible>(ev), st));
            }
            if st.done {
                return None;
            }
            let event = st.submitted.events.recv().await;
            st.on_event(event);
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// A reply known whole (a ChatGLM3 reply to a request with tools) as server-
/// sent events: the assistant message as one delta (its `tool_calls` with an
/// `index`, as streamed calls are), the finish reason, usage, `[DONE]`.
pub(crate) fn whole_reply_stream(spec: StreamSpec, message: Value, finish_reason: &str, usage: Value) -> Response {
    let mut delta = message;
    if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
        for (i, c) in calls.iter_mut().enumerate() {
            c["index"] = json!(i);
        }
    }
    let chunk = |choice: Value, usage: Option<Value>| {
        let choices = if choice.is_null() { json!([]) } else { json!([choice]) };
        let mut v = json!({
            "id": spec.id, "object": "chat.completion.chunk", "created": spec.created, "model": spec.model,
            "choices": choices,
        });
        if spec.include_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        Event::default().data(v.to_string())
    };
    let mut events = vec![
        chunk(json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": null }), None),
        chunk(json!({ "index": 0, "delta": {}, "logprobs": null, "finish_reason": finish_reason }), None),
    ];
    if spec.include_usage {
        events.push(chunk(Value::Null, Some(usage)));
    }
    events.push(Event::default().data("[DONE]"));
    let stream = futures_util::stream::iter(events.into_iter().map(Ok::<Event, Infallible>));
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
