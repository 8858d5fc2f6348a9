//! Shared state of every handler: the engine handle, the tokenizer, the
//! server's settings and HTTP counters.

use chatglm_engine::EngineHandle;
use chatglm_tokenizer::ChatGlmTokenizer;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::SystemTime;

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The id `/v1/models` lists and responses carry.
    pub model_id: String,
    /// When set, every API call must send `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
    /// Cap on prompt + generated tokens of any request (the official
    /// `max_length` default, 8192); the model's context caps it too.
    pub max_length: usize,
    /// The model is a ChatGLM3 release: chat prompts use its role tokens,
    /// and `tools` are offered to it (ChatGLM2 refuses them).
    pub chatglm3: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            model_id: "chatglm2-6b".into(),
            api_key: None,
            max_body_bytes: 2 << 20,
            max_length: 8192,
            chatglm3: false,
        }
    }
}

/// HTTP status codes counted for `/metrics`.
pub(crate) const COUNTED_STATUSES: [u16; 9] = [200, 400, 401, 404, 405, 413, 429, 500, 503];

/// Responses by status code (the last slot counts every other code).
#[derive(Debug, Default)]
pub(crate) struct HttpCounters {
    pub by_status: [AtomicU64; COUNTED_STATUSES.len() + 1],
    /// Handlers that panicked (answered 500 by the catch-panic layer).
    pub panics: AtomicU64,
}

impl HttpCounters {
    pub fn record(&self, status: u16) {
        let i = COUNTED_STATUSES.iter().position(|&s| s == status).unwrap_or(COUNTED_STATUSES.len());
        self.by_status[i].fetch_add(1, Relaxed);
    }
}

pub(crate) struct Inner {
    pub engine: EngineHandle,
    pub tokenizer: Arc<ChatGlmTokenizer>,
    pub config: ServerConfig,
    pub http: HttpCounters,
    /// Unix seconds at start (the model's `created`).
    pub started_unix: u64,
}

/// Cheap to clone; what [`crate::app`] is built from.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

impl AppState {
    pub fn new(engine: EngineHandle, tokenizer: Arc<ChatGlmTokenizer>, config: ServerConfig) -> Self {
        Self(Arc::new(Inner { engine, tokenizer, config, http: HttpCounters::default(), started_unix: unix_now() }))
    }

    pub fn config(&self) -> &ServerConfig {
        &self.0.config
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.0.engine
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
