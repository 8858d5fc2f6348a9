//! chatglm-server: an OpenAI-compatible (and official-`api.py`-compatible)
//! HTTP front end to the continuous-batching engine, built on axum.
//!
//! Principal items: [`app`] (the [`axum::Router`], testable without a
//! socket), [`AppState`] (engine handle + tokenizer + [`ServerConfig`]),
//! [`serve`] (bind, serve, drain on shutdown) and [`ApiError`] (every error
//! as `{"error": {message, type, param, code}}`).
//!
//! What comes in: HTTP requests — `POST /v1/chat/completions`,
//! `POST /v1/completions`, `GET /v1/models`, `POST /` (api.py), `GET /health`,
//! `GET /metrics`, `GET /` (the web chat page). What goes out: JSON or
//! server-sent events. Prompts are tokenized here; the engine thread only
//! sees token ids, and tokio stops at this crate.

#![forbid(unsafe_code)]
mod api_py;
mod bridge;
mod chat3;
mod error;
pub mod metrics;
mod middleware;
mod openai;
mod params;
mod state;
mod stream;

pub use error::ApiError;
pub use state::{AppState, ServerConfig};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::future::{Future, IntoFuture};
use tower_http::catch_panic::CatchPanicLayer;

/// The web chat page (a single self-contained file).
const INDEX_HTML: &str = include_str!("../ui/dist/index.html");

/// The whole HTTP API over `state`.
pub fn app(state: AppState) -> Router {
    let routes = Router::new()
        .route("/", get(index).post(api_py::create_item))
        .route("/health", get(health))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions));
    with_layers(routes, state)
}

/// The fallbacks and layers every route runs under: body limit, API key,
/// status counters, and a 500 (counted) for a handler that panics.
fn with_layers(routes: Router<AppState>, state: AppState) -> Router {
    let limit = state.config().max_body_bytes;
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::refuse_declared_oversize))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::require_key))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::count_status))
        .layer(CatchPanicLayer::custom({
            let state = state.clone();
            move |_| {
                // The panic skipped the status counter; count it here.
                state.0.http.panics.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                state.0.http.record(500);
                ApiError::internal("internal error").into_response()
            }
        }))
        .with_state(state)
}

/// How long shutdown waits for open requests (streams included) to finish
/// before closing them: a client that stalls mid-request must not keep the
/// server from exiting.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves `app(state)` on `listener` until `shutdown` resolves, then stops
/// accepting and waits up to [`SHUTDOWN_GRACE`] for open requests (streams
/// included) to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_grace(listener, state, shutdown, SHUTDOWN_GRACE).await
}

/// [`serve`] with another drain deadline; connections still open after it
/// are dropped (with the runtime that runs them).
pub async fn serve_with_grace(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: std::time::Duration,
) -> std::io::Result<()> {
    let (requested_tx, requested_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = requested_tx.send(());
    };
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(signal).into_future();
    tokio::pin!(server);
    let deadline = async move {
        // Only once shutdown was asked for (an error means the server ended first).
        if requested_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = &mut server => served,
        () = deadline => {
            tracing::warn!("requests still open {grace:?} after shutdown was requested; closing them");
            Ok(())
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested: draining running requests");
}

async fn index() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(INDEX_HTML)).into_response()
}

/// Liveness and readiness: 200 while the engine thread runs (the model is
/// loaded before the server starts), 503 once it has stopped (a panic).
async fn health(State(state): State<AppState>) -> Response {
    if state.engine().is_alive() {
        Json(serde_json::json!({ "status": "ok", "engine": "running" })).into_response()
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "unavailable", "engine": "stopped" })),
        )
            .into_response()
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("Unknown endpoint. See /v1/models, /v1/chat/completions, /v1/completions, /health, /metrics.")
}

async fn method_not_allowed() -> ApiError {
    let mut e = ApiError::not_found("This method is not allowed on this endpoint.");
    e.status = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    e.code = Some("method_not_allowed");
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatglm_engine::{Engine, EngineConfig, Pipeline, PipelineOptions};
    use std::sync::Arc;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_is_a_counted_500() {
        let dir = chatglm_testdata::path("dev/model/safetensors-f32");
        let p = Pipeline::load(dir.to_str().unwrap_or_default(), PipelineOptions::default(), &mut |_, _| {}).unwrap();
        let tokenizer = Arc::new(p.tokenizer);
        let engine = Engine::spawn(p.model, Arc::clone(&tokenizer), p.kv_dtype, EngineConfig::default()).unwrap();
        let state = AppState::new(engine.handle.clone(), tokenizer, ServerConfig::default());
        async fn boom() -> &'static str {
            panic!("handler bug")
        }
        let router = with_layers(
            Router::new().route("/boom", get(boom)).route("/metrics", get(metrics::metrics)),
            state.clone(),
        );
        let req = axum::http::Request::get("/boom").body(axum::body::Body::empty()).unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        // Before: the panic was answered but never counted.
        assert_eq!(state.0.http.panics.load(std::sync::atomic::Ordering::Relaxed), 1);
        let req = axum::http::Request::get("/metrics").body(axum::body::Body::empty()).unwrap();
        let body = router.oneshot(req).await.unwrap().into_body();
        let text =
            String::from_utf8(http_body_util::BodyExt::collect(body).await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(text.contains("chatglm_http_panics_total 1"), "{text}");
        assert!(text.contains("chatglm_http_responses_total{status=\"500\"} 1"), "{text}");
    }
}
