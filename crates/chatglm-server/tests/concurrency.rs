//! Over a real loopback socket: 32 clients streaming at once get exactly
//! what they get alone (greedy), a client that hangs up mid-stream frees its
//! resources (visible in `/metrics`), and shutdown drains running requests.

mod common;

use common::{chat_stream_text, metric_value, read_all, send, sse_data, start, TestServer};
use http_body_util::BodyExt;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

async fn metrics(addr: SocketAddr) -> String {
    read_all(addr, "GET", "/metrics", String::new()).await.1
}

fn stream_body(query: &str, max_tokens: usize) -> String {
    json!({
        "messages": [{"role": "user", "content": query}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": true,
    })
    .to_string()
}

async fn stream_chat(addr: SocketAddr, query: String, max_tokens: usize) -> (String, Option<String>) {
    let (status, body) = read_all(addr, "POST", "/v1/chat/completions", stream_body(&query, max_tokens)).await;
    assert_eq!(status, 200, "{body}");
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    chat_stream_text(&data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_streams_at_once_match_each_alone() {
    let s = TestServer::default();
    let (addr, stop, task) = start(&s).await;
    let queries: Vec<String> = (0..32).map(|i| format!("第{i}个问题：what is {i} + {}?", i * 7)).collect();
    let max_tokens = |i: usize| 8 + (i * 5) % 41;

    let mut alone = Vec::new();
    for (i, q) in queries.iter().enumerate() {
        alone.push(stream_chat(addr, q.clone(), max_tokens(i)).await);
    }
    let steps_alone = metric_value(&metrics(addr).await, "chatglm_engine_steps_total");
    let t0 = Instant::now();
    let handles: Vec<_> =
        queries.iter().enumerate().map(|(i, q)| tokio::spawn(stream_chat(addr, q.clone(), max_tokens(i)))).collect();
    let mut together = Vec::new();
    for h in handles {
        together.push(h.await.unwrap());
    }
    let elapsed = t0.elapsed();
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, b, "client {i} differs when batched");
    }
    // The batch really formed: far fewer steps than tokens.
    let m = metrics(addr).await;
    let steps = metric_value(&m, "chatglm_engine_steps_total") - steps_alone;
    assert_eq!(metric_value(&m, "chatglm_requests_total"), 64.0);
    eprintln!("32 concurrent streams in {elapsed:?}, {steps} steps (alone: {steps_alone})");
    assert!(steps * 4.0 < steps_alone, "{steps} batched steps vs {steps_alone} alone");
    assert_eq!(metric_value(&m, "chatglm_kv_blocks_reserved"), 0.0);
    let _ = stop.send(());
    task.await.unwrap();
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_frees_its_resources() {
    let s = TestServer::default();
    let (addr, stop, task) = start(&s).await;
    let (resp, conn) = send(addr, "POST", "/v1/chat/completions", stream_body("你好", 480)).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // Read until the first content arrives, then hang up.
    let mut seen = String::new();
    while !seen.contains("\"content\":\"") || seen.matches("data:").count() < 3 {
        let frame = body.frame().await.unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    drop(body);
    conn.abort();
    let t0 = Instant::now();
    loop {
        let m = metrics(addr).await;
        let cancelled = metric_value(&m, "chatglm_requests_finished_total{reason=\"cancelled\"}");
        if cancelled == 1.0 {
            assert_eq!(metric_value(&m, "chatglm_running_sequences"), 0.0);
            assert_eq!(metric_value(&m, "chatglm_kv_blocks_reserved"), 0.0);
            assert_eq!(metric_value(&m, "chatglm_kv_blocks_used"), 0.0);
            let out = metric_value(&m, "chatglm_completion_tokens_total");
            assert!(out < 480.0, "generation ran to the end: {out}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "not cancelled:\n{m}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Still serving.
    let (text, finish) = stream_chat(addr, "hi".into(), 4).await;
    assert_eq!(finish.as_deref(), Some("length"));
    assert!(!text.is_empty());
    let _ = stop.send(());
    task.await.unwrap();
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_running_requests() {
    let s = TestServer::default();
    let (addr, stop, task) = start(&s).await;
    let clients: Vec<_> = (0..4).map(|i| tokio::spawn(stream_chat(addr, format!("q{i}"), 200))).collect();
    // Wait until they are all running, then ask the server to stop.
    let t0 = Instant::now();
    while metric_value(&metrics(addr).await, "chatglm_requests_total") < 4.0 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = stop.send(());
    for c in clients {
        let (_, finish) = c.await.unwrap();
        assert_eq!(finish.as_deref(), Some("length"), "a running stream was cut");
    }
    task.await.unwrap();
    // No new connections after shutdown.
    assert!(TcpStream::connect(addr).await.is_err());
    s.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_forever_for_a_stalled_client() {
    use tokio::io::AsyncWriteExt;
    let s = TestServer::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let state = s.state.clone();
    let grace = Duration::from_millis(300);
    let task = tokio::spawn(async move {
        chatglm_server::serve_with_grace(
            listener,
            state,
            async {
                let _ = stop_rx.await;
            },
            grace,
        )
        .await
        .unwrap();
    });
    // A client that sends headers promising a body, a few bytes of it, then stalls.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"mess")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    let _ = stop_tx.send(());
    // Before: graceful shutdown waited for this request's body forever.
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("serve did not return").unwrap();
    let waited = t0.elapsed();
    assert!(waited >= grace && waited < grace + Duration::from_secs(3), "returned after {waited:?}");
    drop(stalled);
    s.shutdown();
}
