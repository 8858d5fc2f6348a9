//! Every endpoint and error case through the router (no socket), on the
//! tiny dev model behind a real engine.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chatglm_engine::{
    ChatSession, EngineConfig, GenerationConfig, Request as EngineRequest, RequestParams, SamplingParams,
};
use chatglm_server::ServerConfig;
use common::{chat_stream_text, pipeline, sse_data, TestServer};
use serde_json::{json, Value};
use std::time::Instant;

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, param: Option<&str>) {
    assert_eq!(status, want, "{body}");
    let e = &body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(e["type"].is_string(), "{body}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{body}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{body}");
    }
}

#[tokio::test]
async fn chat_completion_matches_the_chat_session() {
    let s = TestServer::default();
    let (status, v) = s
        .post_json(
            "/v1/chat/completions",
            r#"{"model": "x", "messages": [{"role": "user", "content": "你好"}],
                "temperature": 0, "max_tokens": 20, "some_unknown_field": {"a": 1}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "chatglm2-6b");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let usage = &v["usage"];
    assert_eq!(usage["completion_tokens"], 20);
    assert_eq!(usage["total_tokens"].as_u64(), Some(usage["prompt_tokens"].as_u64().unwrap() + 20));

    let p = pipeline();
    let mut session = ChatSession::new(&p);
    let reply = session
        .chat(
            "你好",
            &GenerationConfig {
                sampling: SamplingParams::greedy(),
                max_new_tokens: Some(20),
                ..GenerationConfig::default()
            },
        )
        .unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], reply.response);
    assert_eq!(usage["prompt_tokens"].as_u64(), Some(reply.prompt_ids.len() as u64));
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn system_and_history_are_folded_as_the_official_api() {
    let s = TestServer::default();
    let (status, a) = s
        .post_json(
            "/v1/chat/completions",
            r#"{"messages": [{"role": "system", "content": "Be brief. "},
                {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": [{"type": "text", "text": "c"}]}],
                "temperature": 0, "max_tokens": 8}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{a}");
    let p = pipeline();
    let ids = p.tokenizer.encode_chat("Be brief. c", &[("a".into(), "b".into())]);
    assert_eq!(a["usage"]["prompt_tokens"].as_u64(), Some(ids.len() as u64));
}

#[tokio::test]
async fn streaming_chat_sends_role_content_finish_usage_done() {
    let s = TestServer::default();
    let body = r#"{"messages": [{"role": "user", "content": "hello"}], "temperature": 0,
                   "max_tokens": 12, "stream": true, "stream_options": {"include_usage": true}}"#;
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let (status, headers, bytes) = s.call(req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let data = sse_data(&String::from_utf8(bytes).unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 12);
    let (text, finish) = chat_stream_text(&data);
    assert_eq!(finish.as_deref(), Some("length"));

    let (_, v) = s
        .post_json(
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "hello"}], "temperature": 0, "max_tokens": 12}"#,
        )
        .await;
    // Streams keep trailing whitespace (it cannot be known in advance).
    assert_eq!(text.trim_end(), v["choices"][0]["message"]["content"].as_str().unwrap());
}

#[tokio::test]
async fn completions_models_health_metrics_and_the_page() {
    let s = TestServer::default();
    let (status, v) =
        s.post_json("/v1/completions", r#"{"model": "m", "prompt": "hello", "temperature": 0, "seed": -5}"#).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["completion_tokens"], 16, "OpenAI's default max_tokens");
    let p = pipeline();
    assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(p.tokenizer.encode("hello").len() as u64));
    assert!(v["choices"][0]["text"].is_string());

    let req = Request::post("/v1/completions")
        .body(Body::from(r#"{"prompt": ["hi"], "max_tokens": 3, "stream": true}"#))
        .unwrap();
    let (status, _, bytes) = s.call(req).await;
    assert_eq!(status, StatusCode::OK);
    let data = sse_data(&String::from_utf8(bytes).unwrap());
    let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(last["object"], "text_completion");
    assert_eq!(last["choices"][0]["finish_reason"], "length");

    let (status, body) = s.get("/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "chatglm2-6b");
    assert_eq!(v["data"][0]["family"], "chatglm2");
    assert!(v["data"][0].get("system_prompt").is_none());

    let (status, body) = s.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["status"], "ok");

    let (status, body) = s.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("<html"));

    assert_eq!(s.metric("chatglm_requests_total").await, 2.0);
    assert_eq!(s.metric("chatglm_completion_tokens_total").await, 19.0);
    assert_eq!(s.metric("chatglm_running_sequences").await, 0.0);
    assert_eq!(s.metric("chatglm_kv_blocks_reserved").await, 0.0);
    assert!(s.metric("chatglm_kv_blocks_free").await > 0.0);
    // Memory accounting: the weights and the KV budget (the GPU gauges only
    // appear with a GPU).
    assert!(s.metric("chatglm_weights_bytes").await > 0.0);
    assert!(s.metric("chatglm_kv_budget_bytes").await > 0.0);
    assert!(s.metric("chatglm_kv_capacity_tokens").await > 0.0);
    assert_eq!(s.metric("chatglm_request_duration_seconds_count").await, 2.0);
    // 19 tokens in 2 requests: 17 gaps between consecutive tokens.
    assert_eq!(s.metric("chatglm_inter_token_seconds_count").await, 17.0);
    assert_eq!(s.metric("chatglm_preemptions_total").await, 0.0);
    assert_eq!(s.metric("chatglm_pad_rows_total").await, 0.0);
    // The CPU computes each step at once: nothing is queued behind another.
    assert_eq!(s.metric("chatglm_steps_queued_total").await, 0.0);
    assert_eq!(s.metric("chatglm_chained_rows_total").await, 0.0);
    assert!(s.metric("chatglm_step_forward_seconds_total").await >= 0.0);
    assert!(s.metric("chatglm_step_host_seconds_total").await >= 0.0);
    assert!(s.metric("chatglm_http_responses_total{status=\"200\"}").await >= 6.0);
    s.shutdown();
}

#[tokio::test]
async fn the_official_api_py_route() {
    let s = TestServer::default();
    let (status, v) = s
        .post_json(
            "/",
            r#"{"prompt": "你好", "history": [["a", "b"]], "max_length": 80, "top_p": 0.7, "temperature": 0.95}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], 200);
    let response = v["response"].as_str().unwrap();
    assert_eq!(v["history"], json!([["a", "b"], ["你好", response]]));
    let time = v["time"].as_str().unwrap();
    assert_eq!(time.len(), 19);
    assert_eq!(&time[4..5], "-");
    assert_eq!(&time[13..14], ":");
    let (status, v) = s.post_json("/", r#"{"history": []}"#).await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, Some("prompt"));
    let (status, v) = s.post_json("/", r#"{"prompt": "x", "history": [["a"]]}"#).await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, Some("history"));
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let s =
        TestServer::new(EngineConfig::default(), ServerConfig { max_body_bytes: 64 * 1024, ..ServerConfig::default() });
    let chat = "/v1/chat/completions";
    let (status, v) = s.post_json(chat, r#"{"messages": [{"role": "user""#).await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, None);
    assert_eq!(v["error"]["code"], "invalid_json");
    let (status, v) = s.post_json(chat, "not json").await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, None);

    let msgs = r#""messages": [{"role": "user", "content": "hi"}]"#;
    for (extra, param) in [
        (r#""temperature": 3"#, "temperature"),
        (r#""temperature": -0.5"#, "temperature"),
        (r#""top_p": 0"#, "top_p"),
        (r#""top_p": 1.5"#, "top_p"),
        (r#""max_tokens": 0"#, "max_tokens"),
        (r#""max_tokens": -3"#, "max_tokens"),
        (r#""max_tokens": "ten""#, "max_tokens"),
        (r#""n": 2"#, "n"),
        (r#""stop": [""]"#, "stop"),
        (r#""stop": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q"]"#, "stop"),
        (r#""seed": 1.5"#, "seed"),
        (r#""temperature": "hot""#, "temperature"),
    ] {
        let (status, v) = s.post_json(chat, &format!("{{{msgs}, {extra}}}")).await;
        assert_error(status, &v, StatusCode::BAD_REQUEST, Some(param));
    }
    // A stop string longer than 256 bytes (it would be rescanned at every token).
    let long_stop = format!(r#""stop": ["{}"]"#, "x".repeat(257));
    let (status, v) = s.post_json(chat, &format!("{{{msgs}, {long_stop}}}")).await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, Some("stop"));
    let (status, v) = s.post_json(chat, r#"{"messages": []}"#).await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, Some("messages"));
    let (status, v) = s.post_json(chat, r#"{"temperature": 0}"#).await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, None);
    let (status, v) = s.post_json(chat, r#"{"messages": [{"role": "assistant", "content": "hi"}]}"#).await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, Some("messages"));

    // Longer than the dev model's 512-token context.
    let long = "你好 ".repeat(400);
    let (status, v) = s.post_json(chat, &json!({"messages": [{"role": "user", "content": long}]}).to_string()).await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, Some("messages"));
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let (status, v) = s.post_json("/v1/completions", &json!({"prompt": long}).to_string()).await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, Some("prompt"));

    // Over the body limit.
    let huge = "x".repeat(100 * 1024);
    let (status, v) = s.post_json(chat, &json!({"messages": [{"role": "user", "content": huge}]}).to_string()).await;
    assert_error(status, &v, StatusCode::PAYLOAD_TOO_LARGE, None);

    let (status, v) = s.post_json("/v1/nope", "{}").await;
    assert_error(status, &v, StatusCode::NOT_FOUND, None);
    let (status, body) = s.get(chat).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_error(status, &v, StatusCode::METHOD_NOT_ALLOWED, None);
    assert_eq!(s.metric("chatglm_requests_total").await, 0.0);
    assert!(s.metric("chatglm_http_responses_total{status=\"400\"}").await >= 15.0);
}

#[tokio::test]
async fn api_keys_are_required_when_configured() {
    let s = TestServer::new(
        EngineConfig::default(),
        ServerConfig { api_key: Some("sekrit".into()), ..ServerConfig::default() },
    );
    let body = r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}"#;
    for auth in [None, Some("Bearer wrong"), Some("sekrit"), Some("Bearer sekri")] {
        let mut req = Request::post("/v1/chat/completions");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let (status, _, bytes) = s.call(req.body(Body::from(body)).unwrap()).await;
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_error(status, &v, StatusCode::UNAUTHORIZED, None);
        assert_eq!(v["error"]["code"], "invalid_api_key");
    }
    let req =
        Request::post("/v1/chat/completions").header("authorization", "Bearer sekrit").body(Body::from(body)).unwrap();
    assert_eq!(s.call(req).await.0, StatusCode::OK);
    // Metrics and models need the key; the health check and the page do not.
    assert_eq!(s.get("/v1/models").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(s.get("/metrics").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(s.get("/health").await.0, StatusCode::OK);
    assert_eq!(s.get("/").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let s = TestServer::new(
        EngineConfig { max_batch_size: 1, max_queue: 1, ..EngineConfig::default() },
        ServerConfig::default(),
    );
    // Occupy the batch and the queue with long generations whose receivers we keep.
    let p = pipeline();
    let ids = p.tokenizer.encode_chat("你好", &[]);
    let engine = s.state.engine().clone();
    let mut keep = Vec::new();
    let mut queued = 0;
    while queued < 2 {
        let (tx, rx) = std::sync::mpsc::channel();
        let r = engine.submit(EngineRequest {
            id: engine.next_id(),
            prompt_ids: ids.clone(),
            params: RequestParams {
                max_new_tokens: Some(450),
                eos_ids: Vec::new(), // never ends early
                ..RequestParams::default()
            },
            sink: Box::new(tx),
            arrived: Instant::now(),
        });
        if r.is_ok() {
            queued += 1;
            keep.push(rx);
        }
        // Let the first one join the batch, so the second waits in the queue.
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let req = Request::post("/v1/chat/completions")
        .body(Body::from(r#"{"messages": [{"role": "user", "content": "hi"}]}"#))
        .unwrap();
    let (status, headers, bytes) = s.call(req).await;
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_error(status, &v, StatusCode::TOO_MANY_REQUESTS, None);
    assert_eq!(headers["retry-after"], "1");
    assert!(s.metric("chatglm_requests_rejected_total").await >= 1.0);
    drop(keep);
}

#[tokio::test]
async fn health_reports_a_dead_engine() {
    let s = TestServer::default();
    let (status, body) = s.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("running"));
    assert_eq!(s.metric("chatglm_engine_alive").await, 1.0);

    // Before: /health said ok whatever the engine thread's state.
    s.state.engine().crash_for_tests();
    let mut status = StatusCode::OK;
    for _ in 0..200 {
        status = s.get("/health").await.0;
        if status != StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(s.metric("chatglm_engine_alive").await, 0.0);
    assert_eq!(s.metric("chatglm_engine_panics_total").await, 1.0);
    // Requests then fail cleanly, naming the cause.
    let (status, v) = s.post_json("/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "hi"}]}"#).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("stopped"), "{v}");
}

#[tokio::test(flavor = "current_thread")]
async fn tokenizing_a_large_body_does_not_stall_other_requests() {
    // One runtime thread: whatever runs on it inline blocks every other request.
    let s = TestServer::default();
    let text = "ChatGLM.rs 你好，世界。 ".repeat(60_000); // ~1.6 MB
    let direct = {
        let tok = chatglm_tokenizer::ChatGlmTokenizer::from_file(&common::model_dir().join("tokenizer.model")).unwrap();
        let t = Instant::now();
        let ids = tok.encode(&text);
        assert!(ids.len() > 100_000);
        t.elapsed()
    };
    let body = json!({"prompt": text, "max_tokens": 1}).to_string();
    let app = chatglm_server::app(s.state.clone());
    let big = tokio::spawn({
        let app = app.clone();
        async move {
            let req = axum::http::Request::post("/v1/completions")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body))
                .unwrap();
            tower::ServiceExt::oneshot(app, req).await.unwrap().status()
        }
    });
    // Let the big request start tokenizing (it runs when this task yields),
    // then ask for a health check; time both from here.
    let t = Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let req = axum::http::Request::get("/health").body(axum::body::Body::empty()).unwrap();
    let health = tower::ServiceExt::oneshot(app, req).await.unwrap().status();
    let waited = t.elapsed();
    assert_eq!(health, StatusCode::OK);
    // The prompt is far over the dev model's context: refused after tokenizing.
    assert_eq!(big.await.unwrap(), StatusCode::BAD_REQUEST);
    // Before: the health check waited for the whole tokenization.
    eprintln!("health answered after {waited:?}; tokenizing the body takes {direct:?}");
    assert!(
        waited < std::time::Duration::from_millis(5) + direct / 3,
        "health took {waited:?} while tokenizing took {direct:?}"
    );
}

const WEATHER_TOOL: &str = r#"{"type": "function", "function": {"name": "get_weather",
    "description": "Weather of a city", "parameters": {"type": "object",
    "properties": {"city": {"type": "string"}}, "required": ["city"]}}}"#;

#[tokio::test]
async fn chatglm2_refuses_tools_with_the_reason() {
    let s = TestServer::default();
    let body = format!(r#"{{"messages": [{{"role": "user", "content": "hi"}}], "tools": [{WEATHER_TOOL}]}}"#);
    let (status, v) = s.post_json("/v1/chat/completions", &body).await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, Some("tools"));
    assert!(v["error"]["message"].as_str().unwrap().contains("ChatGLM3"), "{v}");
}

#[tokio::test]
async fn a_chatglm3_model_says_so_with_its_system_prompt() {
    let s = TestServer::chatglm3();
    let (status, body) = s.get("/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["data"][0]["family"], "chatglm3");
    assert_eq!(v["data"][0]["system_prompt"], chatglm_engine::CHATGLM3_SYSTEM);
}

#[tokio::test]
async fn chatglm3_tool_round_trip_prompts_as_the_official_demo() {
    use chatglm_engine::chat3::render_tools;
    use chatglm_tokenizer::{ChatMessage, Role};
    let s = TestServer::chatglm3();
    // The model is told about the tool, calls it (the client's history says
    // so), and gets the result as an observation.
    let body = format!(
        r#"{{"messages": [{{"role": "user", "content": "北京天气？"}},
            {{"role": "assistant", "content": null, "tool_calls": [{{"id": "call_1", "type": "function",
              "function": {{"name": "get_weather", "arguments": "{{\"city\": \"北京\"}}"}}}}]}},
            {{"role": "tool", "tool_call_id": "call_1", "content": "{{\"temp\": 20}}"}}],
            "tools": [{WEATHER_TOOL}], "temperature": 0, "max_tokens": 6}}"#
    );
    let (status, v) = s.post_json("/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    // The prompt is the official layout: tools in the system message, the
    // call as its tool_call block, the result as an observation.
    let tok = chatglm_tokenizer::ChatGlmTokenizer::from_file(&common::chatglm3_dir().join("tokenizer.model")).unwrap();
    let tools: Value = serde_json::from_str(&format!("[{WEATHER_TOOL}]")).unwrap();
    let system = format!(
        "Answer the following questions as best as you can. You have access to the following tools:\n{}",
        render_tools(&json!([tools[0]["function"]]))
    );
    let history = [
        ChatMessage { role: Role::System, metadata: "", content: &system },
        ChatMessage { role: Role::User, metadata: "", content: "北京天气？" },
        ChatMessage {
            role: Role::Assistant,
            metadata: "get_weather",
            content: " ```python\ntool_call(city=\"北京\")\n```",
        },
    ];
    let want = tok.encode_chat3(&history, "{\"temp\": 20}", Role::Observation);
    assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(want.len() as u64), "{v}");
    let message = &v["choices"][0]["message"];
    assert_eq!(message["role"], "assistant");
    // A random tiny model answers with text (or, by chance, a call): either shape is valid.
    assert!(message["content"].is_string() || message["tool_calls"].is_array(), "{v}");

    // Streamed with tools: one delta with the whole reply, then the finish reason.
    let streamed = body.replace("\"max_tokens\": 6", "\"max_tokens\": 6, \"stream\": true");
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(streamed))
        .unwrap();
    let (status, _, bytes) = s.call(req).await;
    assert_eq!(status, StatusCode::OK);
    let data = sse_data(&String::from_utf8(bytes).unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    s.shutdown();
}

#[tokio::test]
async fn the_second_round_of_a_chat_continues_the_first_round_s_cache() {
    let s = TestServer::default();
    let q1 = "Please describe, in a few sentences, how a paged KV cache lets a server batch many chats.";
    let body = |messages: Value| json!({"messages": messages, "temperature": 0, "max_tokens": 24}).to_string();
    let (status, a) = s.post_json("/v1/chat/completions", &body(json!([{"role": "user", "content": q1}]))).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    let a1 = a["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert_eq!(s.metric("chatglm_prefix_cache_hits_total").await, 0.0);
    // Round 2 sends the history again, as OpenAI clients do.
    let messages = json!([
        {"role": "user", "content": q1},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": "And in one word?"}
    ]);
    let (status, b) = s.post_json("/v1/chat/completions", &body(messages)).await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(s.metric("chatglm_prefix_cache_hits_total").await, 1.0);
    assert!(s.metric("chatglm_prefix_cache_tokens_total").await >= 16.0);
    // The same reply as computing the whole round-2 prompt alone.
    let p = pipeline();
    let ids = p.tokenizer.encode_chat("And in one word?", &[(q1.to_string(), a1.clone())]);
    assert_eq!(b["usage"]["prompt_tokens"].as_u64(), Some(ids.len() as u64));
    let mut state = chatglm_model::ForwardState::new(&p.model.backend);
    let mut cache = p.model.new_cache(p.kv_dtype);
    let config = GenerationConfig {
        sampling: SamplingParams::greedy(),
        max_new_tokens: Some(24),
        ..GenerationConfig::default()
    };
    let alone =
        chatglm_engine::generate(&p.model, &p.tokenizer, &mut state, &mut cache, &ids, &config, &mut |_| true).unwrap();
    assert_eq!(b["choices"][0]["message"]["content"].as_str().unwrap(), alone.text.trim());
}
