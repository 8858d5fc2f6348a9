//! Test scaffolding: the tiny dev model behind a real engine, requests
//! through the router (no socket) or over loopback with a plain hyper client.
#![allow(dead_code)]

use axum::body::Body;
use axum::body::Bytes;
use axum::http::{Request, StatusCode};
use chatglm_engine::{Engine, EngineConfig, Pipeline, PipelineOptions};
use chatglm_model::CpuBackend;
use chatglm_server::{app, AppState, ServerConfig};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpStream;
use tower::ServiceExt;

pub fn testdata() -> PathBuf {
    chatglm_testdata::dir()
}

pub fn model_dir() -> PathBuf {
    testdata().join("dev/model/safetensors-f32")
}

pub fn pipeline() -> Pipeline<CpuBackend> {
    Pipeline::load(model_dir().to_str().unwrap(), PipelineOptions::default(), &mut |_, _| {}).unwrap()
}

/// A server state over a fresh engine on the dev model.
pub struct TestServer {
    pub state: AppState,
    pub engine: Engine,
}

/// The tiny ChatGLM3 model of the family golden data.
pub fn chatglm3_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../golden/family/chatglm3/tiny/model")
}

impl TestServer {
    pub fn new(engine: EngineConfig, server: ServerConfig) -> Self {
        Self::on(pipeline(), engine, server)
    }

    /// A server over the tiny ChatGLM3 model.
    pub fn chatglm3() -> Self {
        let p = Pipeline::load(chatglm3_dir().to_str().unwrap(), PipelineOptions::default(), &mut |_, _| {}).unwrap();
        Self::on(p, EngineConfig::default(), ServerConfig { chatglm3: true, ..ServerConfig::default() })
    }

    fn on(p: Pipeline<CpuBackend>, engine: EngineConfig, server: ServerConfig) -> Self {
        let tokenizer = Arc::new(p.tokenizer);
        let e = Engine::spawn(p.model, Arc::clone(&tokenizer), p.kv_dtype, engine).unwrap();
        let state = AppState::new(e.handle.clone(), tokenizer, server);
        Self { state, engine: e }
    }

    /// Drops the state and waits for the engine to finish what it holds.
    pub fn shutdown(self) {
        drop(self.state);
        self.engine.shutdown();
    }

    pub fn default() -> Self {
        Self::new(EngineConfig::default(), ServerConfig::default())
    }

    /// One request through the router, no socket: `(status, headers, body)`.
    pub async fn call(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let resp = app(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
        (status, headers, body)
    }

    pub async fn post_json(&self, path: &str, body: &str) -> (StatusCode, Value) {
        let req =
            Request::post(path).header("content-type", "application/json").body(Body::from(body.to_string())).unwrap();
        let (status, _, body) = self.call(req).await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Vec<u8>) {
        let (s, _, b) = self.call(Request::get(path).body(Body::empty()).unwrap()).await;
        (s, b)
    }

    /// The value of one sample in `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        metric_value(&String::from_utf8_lossy(&body), name)
    }
}

pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name).then(|| v.parse().ok())?
        })
        .unwrap_or_else(|| panic!("metric {name} not found in\n{text}"))
}

/// The `data:` payloads of an SSE body.
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(str::to_string)
        .collect()
}

/// Concatenated `delta.content` of chat chunks, and the finish reason.
pub fn chat_stream_text(data: &[String]) -> (String, Option<String>) {
    let mut text = String::new();
    let mut finish = None;
    for d in data {
        if d == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(d).unwrap();
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(c);
        }
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    (text, finish)
}

/// A served test server on a free loopback port.
pub async fn start(s: &TestServer) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let state = s.state.clone();
    let task = tokio::spawn(async move {
        chatglm_server::serve(listener, state, async {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
    });
    (addr, stop_tx, task)
}

/// Sends one request on a fresh connection; returns the response with the
/// connection task (abort it to hang up).
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: String,
) -> (hyper::Response<hyper::body::Incoming>, tokio::task::JoinHandle<()>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    let conn_task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    (sender.send_request(req).await.unwrap(), conn_task)
}

pub async fn read_all(addr: SocketAddr, method: &str, path: &str, body: String) -> (u16, String) {
    let (resp, _conn) = send(addr, method, path, body).await;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}
