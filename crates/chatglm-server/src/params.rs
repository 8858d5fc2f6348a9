//! Sampling fields shared by the OpenAI endpoints, validated into the
//! engine's [`RequestParams`]; every error names its field.

use crate::error::ApiError;
use crate::state::AppState;
use chatglm_engine::{RequestParams, SamplingParams};
use serde::Deserialize;

/// Most stop strings a request may give.
const MAX_STOP_STRINGS: usize = 16;
/// Bytes of one stop string: a stop string is a marker, not a document (each
/// token checks the reply's tail against every stop string).
const MAX_STOP_BYTES: usize = 256;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum StopField {
    One(String),
    Many(Vec<String>),
}

/// The sampling fields of a request, as sent.
#[derive(Debug, Clone, Default)]
pub(crate) struct SamplingFields {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub repetition_penalty: Option<f64>,
    pub max_tokens: Option<u64>,
    pub stop: Option<StopField>,
    pub seed: Option<serde_json::Number>,
    pub n: Option<u64>,
}

/// Defaults when a field is absent.
pub(crate) struct Defaults {
    pub temperature: f64,
    pub top_p: f64,
    /// `None`: up to the context.
    pub max_tokens: Option<usize>,
}

impl SamplingFields {
    pub fn to_params(&self, state: &AppState, d: Defaults) -> Result<RequestParams, ApiError> {
        let temperature = self.temperature.unwrap_or(d.temperature);
        if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
            return Err(ApiError::invalid_param(
                "temperature",
                format!("temperature must be between 0 and 2, got {temperature}"),
            ));
        }
        let top_p = self.top_p.unwrap_or(d.top_p);
        if !(top_p.is_finite() && top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid_param("top_p", format!("top_p must be in (0, 1], got {top_p}")));
        }
        let repetition_penalty = self.repetition_penalty.unwrap_or(1.0);
        if !(repetition_penalty.is_finite() && repetition_penalty > 0.0) {
            return Err(ApiError::invalid_param(
                "repetition_penalty",
                format!("repetition_penalty must be > 0, got {repetition_penalty}"),
            ));
        }
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::invalid_param("n", format!("only n = 1 is supported, got {n}")));
            }
        }
        let max_new_tokens = match self.max_tokens {
            Some(0) => return Err(ApiError::invalid_param("max_tokens", "max_tokens must be at least 1")),
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            None => d.max_tokens,
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOP_STRINGS {
            return Err(ApiError::invalid_param(
                "stop",
                format!("at most {MAX_STOP_STRINGS} stop strings, got {}", stop.len()),
            ));
        }
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid_param("stop", "stop strings must not be empty"));
        }
        if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::invalid_param(
                "stop",
                format!("a stop string may be at most {MAX_STOP_BYTES} bytes, got {}", long.len()),
            ));
        }
        // Any integer is a seed: negative ones keep their two's-complement bits.
        let seed = match &self.seed {
            None => None,
            Some(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => Some(u),
                (None, Some(i)) => Some(i as u64),
                _ => return Err(ApiError::invalid_param("seed", format!("seed must be an integer, got {n}"))),
            },
        };
        let top_k = usize::try_from(self.top_k.unwrap_or(0)).unwrap_or(usize::MAX);
        Ok(RequestParams {
            sampling: SamplingParams {
                temperature: temperature as f32,
                top_p: top_p as f32,
                top_k,
                repetition_penalty: repetition_penalty as f32,
                do_sample: temperature > 0.0,
                seed,
            },
            max_new_tokens,
            max_length: Some(state.config().max_length),
            stop,
            eos_ids: vec![state.0.tokenizer.eos_id()],
        })
    }
}
