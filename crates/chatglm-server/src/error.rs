//! One error type for every endpoint, rendered in OpenAI's shape:
//! `{"error": {"message", "type", "param", "code"}}`. Messages never carry
//! internals beyond what the client sent.

use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chatglm_engine::SubmitError;

/// An HTTP error with an OpenAI-style body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, …
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header.
    pub retry_after_s: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None, code: None, retry_after_s: None }
    }

    fn with_param(mut self, param: impl Into<String>) -> Self {
        let p = param.into();
        self.param = (!p.is_empty()).then_some(p);
        self
    }

    fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// 400 about one field.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message).with_param(param)
    }

    /// 400: the body is not JSON at all.
    pub fn malformed_json(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("We could not parse the JSON body of your request: {detail}"),
        )
        .with_code("invalid_json")
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "Incorrect or missing API key. Send it as `Authorization: Bearer KEY`.",
        )
        .with_code("invalid_api_key")
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", what.to_string()).with_code("not_found")
    }

    pub fn too_large(limit_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("The request body is larger than the server's limit of {limit_bytes} bytes."),
        )
        .with_code("request_too_large")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message).with_code("internal_error")
    }

    /// Maps a refused submission; `prompt_param` names the prompt field.
    pub fn from_submit(e: SubmitError, prompt_param: &str) -> Self {
        match e {
            SubmitError::InvalidParameter { param, message } => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message).with_param(param.unwrap_or(""))
            }
            e @ SubmitError::EmptyPrompt => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", e.to_string()).with_param(prompt_param)
            }
            e @ SubmitError::PromptTooLong { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", format!("{e}; shorten the input"))
                    .with_param(prompt_param)
                    .with_code("context_length_exceeded")
            }
            e @ SubmitError::QueueFull(_) => {
                let mut err =
                    Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", e.to_string()).with_code("queue_full");
                err.retry_after_s = Some(1);
                err
            }
            e => Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", e.to_string()).with_code("unavailable"),
        }
    }

    /// Maps a failure to read the body (413 when over the limit).
    pub fn from_body_rejection(r: BytesRejection, limit_bytes: usize) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::too_large(limit_bytes)
        } else {
            Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", r.body_text())
        }
    }

    /// The JSON body (also sent as an SSE event when a stream fails).
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after_s {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// Parses a JSON body into `T`; data errors name the field by its path.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_data() {
                let param = if path == "." { String::new() } else { path };
                let message = if param.is_empty() {
                    format!("invalid request: {inner}")
                } else {
                    format!("invalid value for `{param}`: {inner}")
                };
                Err(ApiError::invalid_param(&param, message))
            } else {
                Err(ApiError::malformed_json(inner))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_is_the_field_at_fault_not_a_word_of_the_message() {
        // Before: the first word of the message ("the") became `param`.
        let e = ApiError::from_submit(SubmitError::EmptyPrompt, "messages");
        assert_eq!(e.param.as_deref(), Some("messages"));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = ApiError::from_submit(
            SubmitError::InvalidParameter {
                param: Some("top_p"),
                message: "the nucleus mass must be in (0, 1]".into(),
            },
            "prompt",
        );
        assert_eq!(e.param.as_deref(), Some("top_p"));
        let e = ApiError::from_submit(
            SubmitError::InvalidParameter { param: None, message: "the request is odd".into() },
            "prompt",
        );
        assert!(e.param.as_deref().is_none_or(str::is_empty), "{:?}", e.param);
    }
}
