//! `POST /` with the official ChatGLM2 `api.py` contract:
//! `{prompt, history, max_length, top_p, temperature}` →
//! `{response, history, status: 200, time: "YYYY-MM-DD HH:MM:SS"}`.
//!
//! As the official code, a falsy field (absent, null, 0) takes the default:
//! max_length 2048, top_p 0.7, temperature 0.95 (so temperature 0 does not
//! mean greedy here; use `/v1/chat/completions` for that).

use crate::bridge::{collect, submit};
use crate::error::{parse_json, ApiError};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::Json;
use chatglm_engine::text::process_response;
use chatglm_engine::{RequestParams, SamplingParams};
use serde_json::{json, Value};
use std::time::SystemTime;

const DEFAULT_MAX_LENGTH: u64 = 2048;
const DEFAULT_TOP_P: f64 = 0.7;
const DEFAULT_TEMPERATURE: f64 = 0.95;

/// Python truthiness of a JSON value.
fn truthy(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    })
}

fn number(body: &Value, field: &str, default: f64) -> Result<f64, ApiError> {
    match truthy(body.get(field)) {
        None => Ok(default),
        Some(v) => v.as_f64().ok_or_else(|| ApiError::invalid_param(field, format!("{field} must be a number"))),
    }
}

fn history(body: &Value) -> Result<Vec<(String, String)>, ApiError> {
    let Some(v) = truthy(body.get("history")) else {
        return Ok(Vec::new());
    };
    let bad = || ApiError::invalid_param("history", "history must be a list of [query, response] pairs of strings");
    let list = v.as_array().ok_or_else(bad)?;
    list.iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([Value::String(q), Value::String(r)]) => Ok((q.clone(), r.clone())),
            _ => Err(bad()),
        })
        .collect()
}

pub(crate) async fn create_item(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(|r| ApiError::from_body_rejection(r, state.config().max_body_bytes))?;
    let body: Value = parse_json(&body)?;
    let Some(prompt) = body.get("prompt").and_then(Value::as_str) else {
        return Err(ApiError::invalid_param("prompt", "prompt must be a string"));
    };
    let mut history = history(&body)?;
    let max_length = number(&body, "max_length", DEFAULT_MAX_LENGTH as f64)?;
    if !(max_length >= 1.0 && max_length.fract() == 0.0) {
        return Err(ApiError::invalid_param(
            "max_length",
            format!("max_length must be a positive integer, got {max_length}"),
        ));
    }
    let top_p = number(&body, "top_p", DEFAULT_TOP_P)?;
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid_param("top_p", format!("top_p must be in (0, 1], got {top_p}")));
    }
    let temperature = number(&body, "temperature", DEFAULT_TEMPERATURE)?;
    if !(temperature > 0.0 && temperature <= 100.0) {
        return Err(ApiError::invalid_param("temperature", format!("temperature must be > 0, got {temperature}")));
    }
    let params = RequestParams {
        sampling: SamplingParams { temperature: temperature as f32, top_p: top_p as f32, ..SamplingParams::default() },
        max_new_tokens: None,
        max_length: Some((max_length as usize).min(state.config().max_length.max(1))),
        stop: Vec::new(),
        eos_ids: vec![state.0.tokenizer.eos_id()],
    };
    let (query, past) = (prompt.to_string(), history.clone());
    let prompt_ids = crate::bridge::encode_off_runtime(&state, move |t| t.encode_chat(&query, &past)).await?;
    let c = collect(submit(&state, prompt_ids, params, "prompt")?).await?;
    let response = process_response(&c.text);
    history.push((prompt.to_string(), response.clone()));
    Ok(Json(json!({
        "response": response,
        "history": history,
        "status": 200,
        "time": format_utc(SystemTime::now()),
    })))
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
pub(crate) fn format_utc(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_dates() {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(format_utc(t(0)), "1970-01-01 00:00:00");
        assert_eq!(format_utc(t(951_782_400)), "2000-02-29 00:00:00");
        assert_eq!(format_utc(t(1_700_000_000)), "2023-11-14 22:13:20");
    }

    #[test]
    fn python_truthiness() {
        assert!(truthy(Some(&json!(0))).is_none());
        assert!(truthy(Some(&json!(0.0))).is_none());
        assert!(truthy(Some(&json!(null))).is_none());
        assert!(truthy(Some(&json!(0.5))).is_some());
    }
}
