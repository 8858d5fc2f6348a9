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

mod api_py;
mod bridge;
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
use std::future::Future;
use tower_http::catch_panic::CatchPanicLayer;

/// The web chat page (a single self-contained file).
const INDEX_HTML: &str = include_str!("../ui/dist/index.html");

/// The whole HTTP API over `state`.
pub fn app(state: AppState) -> Router {
    let limit = state.config().max_body_bytes;
    Router::new()
        .route("/", get(index).post(api_py::create_item))
        .route("/health", get(health))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::require_key))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::count_status))
        .layer(CatchPanicLayer::custom(|_| ApiError::internal("internal error").into_response()))
        .with_state(state)
}

/// Serves `app(state)` on `listener` until `shutdown` resolves, then stops
/// accepting and waits for open requests (streams included) to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown).await
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
