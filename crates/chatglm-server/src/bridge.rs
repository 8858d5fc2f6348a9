//! From async handlers to the engine thread and back: a tokio channel is the
//! request's event sink, so dropping the receiver (the client went away and
//! its handler or stream was dropped) cancels the request.

use crate::error::ApiError;
use crate::state::AppState;
use chatglm_engine::{Completion, EventSink, Request, RequestEvent, RequestParams};
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

struct TokioSink(UnboundedSender<RequestEvent>);

impl EventSink for TokioSink {
    fn send(&mut self, event: RequestEvent) -> bool {
        self.0.send(event).is_ok()
    }
    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// A queued request: its id and where its events arrive.
pub(crate) struct Submitted {
    pub id: u64,
    pub events: UnboundedReceiver<RequestEvent>,
}

/// Queues `prompt_ids`; `prompt_param` names the field to blame if too long.
/// Runs `encode` on the blocking pool: tokenizing a 2 MiB body takes tens of
/// milliseconds, which on one of the async runtime's few threads would stall
/// every other connection it serves.
pub(crate) async fn encode_off_runtime(
    state: &AppState,
    encode: impl FnOnce(&chatglm_tokenizer::ChatGlmTokenizer) -> Vec<u32> + Send + 'static,
) -> Result<Vec<u32>, ApiError> {
    let tokenizer = std::sync::Arc::clone(&state.0.tokenizer);
    tokio::task::spawn_blocking(move || encode(&tokenizer))
        .await
        .map_err(|e| ApiError::internal(format!("tokenization failed: {e}")))
}

pub(crate) fn submit(
    state: &AppState,
    prompt_ids: Vec<u32>,
    params: RequestParams,
    prompt_param: &str,
) -> Result<Submitted, ApiError> {
    let engine = state.engine();
    let (tx, rx) = unbounded_channel();
    let id = engine.next_id();
    engine
        .submit(Request { id, prompt_ids, params, sink: Box::new(TokioSink(tx)), arrived: Instant::now() })
        .map_err(|e| ApiError::from_submit(e, prompt_param))?;
    Ok(Submitted { id, events: rx })
}

/// Waits for the whole completion (the non-streaming endpoints).
pub(crate) async fn collect(mut s: Submitted) -> Result<Completion, ApiError> {
    while let Some(event) = s.events.recv().await {
        match event {
            RequestEvent::Text(_) => {}
            RequestEvent::Finished(c) => return Ok(c),
            RequestEvent::Failed(m) => return Err(ApiError::internal(m)),
        }
    }
    Err(ApiError::internal("the engine stopped before the request finished"))
}
