//! Request middleware: API-key check, declared body size, HTTP status counting.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

/// Routes anyone may call: the health check and the chat page.
fn is_public(req: &Request) -> bool {
    req.method() == Method::GET && matches!(req.uri().path(), "/" | "/health")
}

/// With an API key configured, every other route needs
/// `Authorization: Bearer KEY` (compared in constant time).
pub(crate) async fn require_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.config().api_key.as_deref() else {
        return next.run(req).await;
    };
    if is_public(&req) {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        next.run(req).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

/// A body whose declared `Content-Length` is over the limit is refused
/// before any of it is read (the extractor's limit still bounds bodies
/// without a length): a client cannot make the server buffer megabytes only
/// to refuse them.
pub(crate) async fn refuse_declared_oversize(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.config().max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return ApiError::too_large(limit).into_response();
    }
    next.run(req).await
}

/// Counts every response by status code for `/metrics`.
pub(crate) async fn count_status(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    state.0.http.record(resp.status().as_u16());
    resp
}
