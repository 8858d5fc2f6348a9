//! `chatglm_rs._native`: the Rust half of the `chatglm_rs` Python package.
//!
//! Principal types: [`Pipeline`] (a loaded model and tokenizer on the CPU or
//! a CUDA GPU: chat, streaming chat, generate, logits), [`Tokenizer`] and
//! [`ChatStream`] (the deltas of a streaming chat, produced on a Rust thread).
//! The official `AutoTokenizer` / `AutoModel` API is Python on top of these
//! (`python/chatglm_rs/__init__.py`). Model work runs with the GIL released;
//! Ctrl-C is checked at every generated token.

#![forbid(unsafe_code)]
use chatglm_engine::{
    generate, ChatSession, EngineError, GenerationConfig, History, Pipeline as EnginePipeline, PipelineOptions,
    SamplingParams,
};
use chatglm_model::{
    Backend, CpuBackend, ForwardState, KvDType, LoadOptions, LogitsWanted, SequenceInput, WeightFormat,
};
use chatglm_tokenizer::ChatGlmTokenizer;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn engine_error(e: EngineError) -> PyErr {
    match e {
        EngineError::InvalidParameter(m) => PyValueError::new_err(m),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

/// A pipeline on whichever device it was loaded on.
enum AnyPipeline {
    Cpu(Box<EnginePipeline<CpuBackend>>),
    #[cfg(feature = "cuda")]
    Cuda(Box<EnginePipeline<chatglm_model::CudaBackend>>),
}

/// Runs `$body` with `$p` bound to the pipeline, whatever its backend.
macro_rules! on_pipeline {
    ($any:expr, $p:ident => $body:expr) => {
        match $any {
            AnyPipeline::Cpu($p) => $body,
            #[cfg(feature = "cuda")]
            AnyPipeline::Cuda($p) => $body,
        }
    };
}

struct Shared {
    /// Seconds the last chat/generate/logits call spent inside Rust (model
    /// work included), to measure what Python adds around it.
    last_call: Mutex<f64>,
    pipeline: AnyPipeline,
    /// One generation at a time: a backend's step buffers are shared.
    busy: Mutex<()>,
    device: String,
}

fn chat_on<B: Backend>(
    p: &EnginePipeline<B>,
    query: &str,
    history: History,
    config: &GenerationConfig,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<(String, History), EngineError> {
    let mut session = ChatSession::with_history(p, history);
    let reply = session.chat_stream(query, config, on_text)?;
    Ok((reply.response, session.history().clone()))
}

/// A ChatGLM3 turn: the official `chat(tokenizer, query, history, role)`,
/// history and reply as JSON (the reply a string, or an object for a tool call).
fn chat3_on<B: Backend>(
    p: &EnginePipeline<B>,
    query: &str,
    history: Vec<chatglm_engine::Chat3Message>,
    role: chatglm_tokenizer::Role,
    config: &GenerationConfig,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<(String, String), EngineError> {
    let mut session = chatglm_engine::Chat3Session::with_history(p, history);
    let turn = session.chat_stream(query, role, config, on_text)?;
    let reply = match turn.reply {
        Ok(r) => r.to_json(),
        Err(e) => return Err(EngineError::InvalidParameter(e.to_string())),
    };
    let history: Vec<serde_json::Value> = session.history().iter().map(|m| m.to_json()).collect();
    Ok((reply.to_string(), serde_json::Value::Array(history).to_string()))
}

fn generate_on<B: Backend>(
    p: &EnginePipeline<B>,
    ids: &[u32],
    config: &GenerationConfig,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Vec<u32>, EngineError> {
    let mut state = ForwardState::new(&p.model.backend);
    let mut cache = p.model.new_cache(p.kv_dtype);
    Ok(generate(&p.model, &p.tokenizer, &mut state, &mut cache, ids, config, on_text)?.generated_ids)
}

fn logits_on<B: Backend>(p: &EnginePipeline<B>, ids: &[u32], all: bool) -> Result<(Vec<f32>, usize), EngineError> {
    let mut state = ForwardState::new(&p.model.backend);
    let mut cache = p.model.new_cache(p.kv_dtype);
    let wanted = if all { LogitsWanted::All } else { LogitsWanted::Last };
    let logits =
        p.model.forward(&mut state, &mut [SequenceInput { tokens: ids, cache: &mut cache, logits: wanted }])?;
    Ok((logits.to_vec(), p.model.config.padded_vocab_size))
}

impl Shared {
    fn tokenizer(&self) -> &ChatGlmTokenizer {
        on_pipeline!(&self.pipeline, p => &p.tokenizer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a model is loaded with besides its path.
struct Extras {
    lora: Vec<(std::path::PathBuf, f32)>,
    ptuning: Option<std::path::PathBuf>,
}

fn load(path: &str, device: &str, dtype: &str, kv_dtype: Option<&str>, extras: Extras) -> Result<Shared, PyErr> {
    let format: WeightFormat = dtype.parse().map_err(value_error)?;
    let kv_dtype = kv_dtype.map(str::parse::<KvDType>).transpose().map_err(value_error)?;
    let options =
        PipelineOptions { load: LoadOptions::new(format), kv_dtype, lora: extras.lora, ptuning: extras.ptuning };
    let device = device.trim().to_ascii_lowercase();
    let cuda_ordinal = match device.as_str() {
        "cpu" => None,
        "cuda" | "gpu" => Some(0),
        "auto" => auto_cuda(),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Some(n),
            _ => return Err(value_error(format!("unknown device `{other}` (expected auto, cpu, cuda or cuda:N)"))),
        },
    };
    let progress = &mut |_: usize, _: usize| {};
    match cuda_ordinal {
        None => {
            let p = EnginePipeline::load(path, options, progress).map_err(engine_error)?;
            Ok(Shared {
                last_call: Mutex::new(0.0),
                pipeline: AnyPipeline::Cpu(Box::new(p)),
                busy: Mutex::new(()),
                device: "cpu".into(),
            })
        }
        Some(n) => load_cuda(path, n, options),
    }
}

fn synthetic(tokenizer: &str, model: &str, device: &str, dtype: &str, seed: u64) -> PyResult<Shared> {
    let cfg = chatglm_model::Config::known(model)
        .ok_or_else(|| value_error(format!("unknown model shape `{model}` (chatglm2-6b or dev)")))?
        .map_err(value_error)?;
    let format: WeightFormat = dtype.parse().map_err(value_error)?;
    let format = if format == WeightFormat::Auto { WeightFormat::F16 } else { format };
    let tok = ChatGlmTokenizer::from_file(Path::new(tokenizer)).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let options = PipelineOptions { load: LoadOptions::new(format), kv_dtype: None, ..Default::default() };
    let spec = format!("synthetic {model}");
    match device {
        "cpu" => {
            let m = chatglm_model::Model::synthetic(CpuBackend::for_config(&cfg), cfg, options.load, seed);
            let p = EnginePipeline::assemble(m, tok, options, &spec).map_err(engine_error)?;
            Ok(Shared {
                last_call: Mutex::new(0.0),
                pipeline: AnyPipeline::Cpu(Box::new(p)),
                busy: Mutex::new(()),
                device: "cpu".into(),
            })
        }
        #[cfg(feature = "cuda")]
        "cuda" => {
            let b = chatglm_model::CudaBackend::new(0, &cfg).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
            let m = chatglm_model::Model::synthetic(b, cfg, options.load, seed);
            let p = EnginePipeline::assemble(m, tok, options, &spec).map_err(engine_error)?;
            Ok(Shared {
                last_call: Mutex::new(0.0),
                pipeline: AnyPipeline::Cuda(Box::new(p)),
                busy: Mutex::new(()),
                device: "cuda:0".into(),
            })
        }
        other => Err(value_error(format!("synthetic models run on cpu or cuda, not `{other}`"))),
    }
}

#[cfg(feature = "cuda")]
fn auto_cuda() -> Option<usize> {
    matches!(chatglm_model::cuda::usable_device_count(), Ok(n) if n > 0).then_some(0)
}

#[cfg(not(feature = "cuda"))]
fn auto_cuda() -> Option<usize> {
    None
}

#[cfg(feature = "cuda")]
fn load_cuda(path: &str, ordinal: usize, options: PipelineOptions) -> Result<Shared, PyErr> {
    let p = EnginePipeline::load_with(
        path,
        options,
        |cfg| chatglm_model::CudaBackend::new(ordinal, cfg).map_err(|e| EngineError::Device(e.to_string())),
        &mut |_, _| {},
    )
    .map_err(engine_error)?;
    Ok(Shared {
        last_call: Mutex::new(0.0),
        pipeline: AnyPipeline::Cuda(Box::new(p)),
        busy: Mutex::new(()),
        device: format!("cuda:{ordinal}"),
    })
}

#[cfg(not(feature = "cuda"))]
fn load_cuda(_: &str, _: usize, _: PipelineOptions) -> Result<Shared, PyErr> {
    Err(PyRuntimeError::new_err("this build of chatglm_rs has no CUDA support"))
}

/// Generation settings from the keyword arguments (validated in Rust).
#[allow(clippy::too_many_arguments)]
fn config(
    max_length: usize,
    max_new_tokens: Option<usize>,
    do_sample: bool,
    temperature: f32,
    top_p: f32,
    top_k: usize,
    repetition_penalty: f32,
    seed: Option<u64>,
    stop: Vec<String>,
) -> PyResult<GenerationConfig> {
    let sampling = SamplingParams { temperature, top_p, top_k, repetition_penalty, do_sample, seed };
    sampling.validate().map_err(value_error)?;
    if max_length == 0 {
        return Err(value_error("max_length must be at least 1"));
    }
    Ok(GenerationConfig { sampling, max_length, max_new_tokens, stop, ..GenerationConfig::default() })
}

/// A ChatGLM tokenizer (SentencePiece BPE plus ChatGLM's special tokens).
#[pyclass(module = "chatglm_rs._native", frozen)]
struct Tokenizer {
    inner: Arc<ChatGlmTokenizer>,
}

#[pymethods]
impl Tokenizer {
    /// Loads the tokenizer of a model folder, a `.gguf` file or a Hugging Face
    /// hub id (downloaded into the Hugging Face cache on first use).
    #[staticmethod]
    fn load(py: Python<'_>, path: &str) -> PyResult<Self> {
        let path = path.to_string();
        let tok = py.allow_threads(move || -> Result<ChatGlmTokenizer, String> {
            let p = Path::new(&path);
            if p.is_file() {
                let file = chatglm_weights::gguf::GgufModel::open(p).map_err(|e| e.to_string())?;
                return chatglm_engine::gguf_vocab::tokenizer_from_gguf(&file.file).map_err(|e| e.to_string());
            }
            let dir = chatglm_weights::hub::resolve(&path).map_err(|e| e.to_string())?;
            let file = dir.join("tokenizer.model");
            ChatGlmTokenizer::from_file(&file).map_err(|e| e.to_string())
        });
        Ok(Self { inner: Arc::new(tok.map_err(PyRuntimeError::new_err)?) })
    }

    /// Token ids of `text`; with special tokens, prefixed by `[gMASK] sop`.
    #[pyo3(signature = (text, add_special_tokens = true))]
    fn encode(&self, text: &str, add_special_tokens: bool) -> Vec<u32> {
        if add_special_tokens {
            self.inner.encode(text)
        } else {
            self.inner.encode_no_special(text)
        }
    }

    /// Text of `ids` (special tokens decode to nothing, as the official tokenizer).
    fn decode(&self, ids: Vec<u32>) -> String {
        self.inner.decode(&ids)
    }

    /// The pieces of `text`.
    fn tokenize(&self, text: &str) -> Vec<String> {
        self.inner.tokenize(text)
    }

    /// The official `build_prompt(query, history)` string.
    #[pyo3(signature = (query, history = None))]
    fn build_prompt(&self, query: &str, history: Option<History>) -> String {
        chatglm_tokenizer::build_prompt(query, &history.unwrap_or_default())
    }

    /// Ids the model is fed for `query` after `history` (the chat prompt).
    #[pyo3(signature = (query, history = None))]
    fn encode_chat(&self, query: &str, history: Option<History>) -> Vec<u32> {
        self.inner.encode_chat(query, &history.unwrap_or_default())
    }

    #[getter]
    fn eos_token_id(&self) -> u32 {
        self.inner.eos_id()
    }

    #[getter]
    fn pad_token_id(&self) -> u32 {
        self.inner.pad_id()
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
}

/// A model and its tokenizer, loaded on the CPU or a CUDA GPU.
#[pyclass(module = "chatglm_rs._native", frozen)]
struct Pipeline {
    shared: Arc<Shared>,
}

#[pymethods]
impl Pipeline {
    /// Loads `path` (a model folder, a `.gguf` file or a hub id) on `device`
    /// (`auto`, `cpu`, `cuda`, `cuda:N`) with weights in `dtype` (`auto` = as
    /// stored, `f32`, `f16`, `bf16`, `q8_0`, `q4_0`, …); `lora`: PEFT adapter
    /// folders and their scales, merged at load; `ptuning`: a P-Tuning v2
    /// checkpoint folder whose prefix every conversation starts with.
    #[new]
    #[pyo3(signature = (path, device = "auto", dtype = "auto", kv_dtype = None, lora = None, ptuning = None))]
    fn new(
        py: Python<'_>,
        path: &str,
        device: &str,
        dtype: &str,
        kv_dtype: Option<&str>,
        lora: Option<Vec<(String, f32)>>,
        ptuning: Option<String>,
    ) -> PyResult<Self> {
        let (path, device, dtype, kv) =
            (path.to_string(), device.to_string(), dtype.to_string(), kv_dtype.map(String::from));
        let extras = Extras {
            lora: lora.unwrap_or_default().into_iter().map(|(d, s)| (d.into(), s)).collect(),
            ptuning: ptuning.map(Into::into),
        };
        let shared = py.allow_threads(move || load(&path, &device, &dtype, kv.as_deref(), extras))?;
        Ok(Self { shared: Arc::new(shared) })
    }

    /// Random weights of a known shape (`chatglm2-6b` or `dev`) with a real
    /// tokenizer file, built in memory (benchmarks: no checkpoint needed).
    #[staticmethod]
    #[pyo3(signature = (tokenizer, model = "chatglm2-6b", device = "cpu", dtype = "q4_0", seed = 1))]
    fn synthetic(py: Python<'_>, tokenizer: &str, model: &str, device: &str, dtype: &str, seed: u64) -> PyResult<Self> {
        let (tokenizer, model, device, dtype) =
            (tokenizer.to_string(), model.to_string(), device.to_string(), dtype.to_string());
        let shared = py.allow_threads(move || synthetic(&tokenizer, &model, &device, &dtype, seed))?;
        Ok(Self { shared: Arc::new(shared) })
    }

    /// Seconds the last `chat` spent in Rust (from after the arguments were
    /// converted to before the result is), for measuring Python's overhead.
    #[getter]
    fn last_call_seconds(&self) -> f64 {
        *self.shared.last_call.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the model runs, e.g. `cpu` or `cuda:0`.
    #[getter]
    fn device(&self) -> String {
        self.shared.device.clone()
    }

    /// The pipeline's tokenizer.
    #[getter]
    fn tokenizer(&self) -> Tokenizer {
        Tokenizer { inner: Arc::new(self.shared.tokenizer().clone()) }
    }

    /// One chat round: `(response, new_history)` with the official history
    /// format. `on_text(delta)` (optional) receives the reply as it is
    /// generated. The GIL is released while the model runs.
    #[pyo3(signature = (query, history = None, max_length = 8192, max_new_tokens = None, do_sample = true,
        temperature = 0.8, top_p = 0.8, top_k = 0, repetition_penalty = 1.0, seed = None, stop = Vec::new(),
        on_text = None))]
    #[allow(clippy::too_many_arguments)]
    fn chat(
        &self,
        py: Python<'_>,
        query: &str,
        history: Option<History>,
        max_length: usize,
        max_new_tokens: Option<usize>,
        do_sample: bool,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        repetition_penalty: f32,
        seed: Option<u64>,
        stop: Vec<String>,
        on_text: Option<PyObject>,
    ) -> PyResult<(String, History)> {
        let cfg =
            config(max_length, max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty, seed, stop)?;
        let shared = self.shared.clone();
        let query = query.to_string();
        let history = history.unwrap_or_default();
        let mut stopped: Option<PyErr> = None;
        let result = py.allow_threads(|| {
            let _one_at_a_time = shared.lock();
            let started = std::time::Instant::now();
            let mut each = |delta: &str| python_callback(on_text.as_ref(), delta, &mut stopped);
            let r = on_pipeline!(&shared.pipeline, p => chat_on(p, &query, history, &cfg, &mut each));
            *shared.last_call.lock().unwrap_or_else(|e| e.into_inner()) = started.elapsed().as_secs_f64();
            r
        });
        if let Some(e) = stopped {
            return Err(e);
        }
        result.map_err(engine_error)
    }

    /// The model family the checkpoint declares: `chatglm2` or `chatglm3`.
    #[getter]
    fn family(&self) -> &'static str {
        let family = on_pipeline!(&self.shared.pipeline, p => p.model.config.family);
        if family == chatglm_model::ModelFamily::ChatGlm3 {
            "chatglm3"
        } else {
            "chatglm2"
        }
    }

    /// One ChatGLM3 round, as the official `chat(tokenizer, query, history,
    /// role)`: `history_json` is the official list of messages as JSON; returns
    /// `(reply_json, new_history_json)` (the reply a JSON string, or an object
    /// `{"name", "parameters"}` for a tool call). `on_text(delta)` (optional)
    /// receives the raw text as it is generated.
    #[pyo3(signature = (query, history_json = "[]", role = "user", max_length = 8192, max_new_tokens = None,
        do_sample = true, temperature = 0.8, top_p = 0.8, top_k = 0, repetition_penalty = 1.0, seed = None,
        on_text = None))]
    #[allow(clippy::too_many_arguments)]
    fn chat3(
        &self,
        py: Python<'_>,
        query: &str,
        history_json: &str,
        role: &str,
        max_length: usize,
        max_new_tokens: Option<usize>,
        do_sample: bool,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        repetition_penalty: f32,
        seed: Option<u64>,
        on_text: Option<PyObject>,
    ) -> PyResult<(String, String)> {
        let cfg = config(
            max_length,
            max_new_tokens,
            do_sample,
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            seed,
            Vec::new(),
        )?;
        let value: serde_json::Value =
            serde_json::from_str(history_json).map_err(|e| value_error(format!("history: not JSON ({e})")))?;
        let history = chatglm_engine::history_from_json(&value).map_err(|e| value_error(format!("history: {e}")))?;
        let role = chatglm_tokenizer::Role::parse(role)
            .ok_or_else(|| value_error(format!("role `{role}` (expected system, user, assistant or observation)")))?;
        let shared = self.shared.clone();
        let query = query.to_string();
        let mut stopped: Option<PyErr> = None;
        let result = py.allow_threads(|| {
            let _one_at_a_time = shared.lock();
            let mut each = |delta: &str| python_callback(on_text.as_ref(), delta, &mut stopped);
            on_pipeline!(&shared.pipeline, p => chat3_on(p, &query, history, role, &cfg, &mut each))
        });
        if let Some(e) = stopped {
            return Err(e);
        }
        result.map_err(engine_error)
    }

    /// Starts a chat round on a Rust thread and returns a [`ChatStream`] of
    /// its text deltas; `stream.result()` then gives `(response, new_history)`.
    /// Dropping the stream cancels the generation.
    #[pyo3(signature = (query, history = None, max_length = 8192, max_new_tokens = None, do_sample = true,
        temperature = 0.8, top_p = 0.8, top_k = 0, repetition_penalty = 1.0, seed = None, stop = Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn stream_chat(
        &self,
        query: &str,
        history: Option<History>,
        max_length: usize,
        max_new_tokens: Option<usize>,
        do_sample: bool,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        repetition_penalty: f32,
        seed: Option<u64>,
        stop: Vec<String>,
    ) -> PyResult<ChatStream> {
        let cfg =
            config(max_length, max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty, seed, stop)?;
        let shared = self.shared.clone();
        let query = query.to_string();
        let history = history.unwrap_or_default();
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("chatglm-stream".into())
            .spawn(move || {
                let _one_at_a_time = shared.lock();
                let deltas = tx.clone();
                let mut each = |delta: &str| deltas.send(StreamMsg::Text(delta.to_string())).is_ok();
                let result = on_pipeline!(&shared.pipeline, p => chat_on(p, &query, history, &cfg, &mut each));
                let _ = tx.send(StreamMsg::Done(result.map_err(|e| e.to_string())));
            })
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the generation thread: {e}")))?;
        Ok(ChatStream { rx: Mutex::new(rx), result: Mutex::new(None) })
    }

    /// Generated ids after the prompt ids `ids` (a fresh context each call);
    /// stops at EOS, `max_new_tokens` or `max_length`.
    #[pyo3(signature = (ids, max_length = 8192, max_new_tokens = None, do_sample = false, temperature = 1.0,
        top_p = 1.0, top_k = 0, repetition_penalty = 1.0, seed = None, on_text = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        ids: Vec<u32>,
        max_length: usize,
        max_new_tokens: Option<usize>,
        do_sample: bool,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        repetition_penalty: f32,
        seed: Option<u64>,
        on_text: Option<PyObject>,
    ) -> PyResult<Vec<u32>> {
        let cfg = config(
            max_length,
            max_new_tokens,
            do_sample,
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            seed,
            Vec::new(),
        )?;
        let shared = self.shared.clone();
        let mut stopped: Option<PyErr> = None;
        let result = py.allow_threads(|| {
            let _one_at_a_time = shared.lock();
            let mut each = |delta: &str| python_callback(on_text.as_ref(), delta, &mut stopped);
            on_pipeline!(&shared.pipeline, p => generate_on(p, &ids, &cfg, &mut each))
        });
        if let Some(e) = stopped {
            return Err(e);
        }
        result.map_err(engine_error)
    }

    /// f32 logits over the padded vocabulary for `ids` (a fresh context):
    /// the last position's, or with `all` every position's, as a list of rows.
    #[pyo3(signature = (ids, all = false))]
    fn logits(&self, py: Python<'_>, ids: Vec<u32>, all: bool) -> PyResult<Vec<Vec<f32>>> {
        if ids.is_empty() {
            return Err(value_error("ids must not be empty"));
        }
        let shared = self.shared.clone();
        let (flat, vocab) = py
            .allow_threads(|| {
                let _one_at_a_time = shared.lock();
                on_pipeline!(&shared.pipeline, p => logits_on(p, &ids, all))
            })
            .map_err(engine_error)?;
        Ok(flat.chunks(vocab.max(1)).map(<[f32]>::to_vec).collect())
    }
}

/// Called for every text delta (with the GIL): checks for Ctrl-C and calls
/// the user's callback; an exception stops the generation and is re-raised.
fn python_callback(callback: Option<&PyObject>, delta: &str, stopped: &mut Option<PyErr>) -> bool {
    Python::with_gil(|py| {
        if let Err(e) = py.check_signals() {
            *stopped = Some(e);
            return false;
        }
        if let Some(f) = callback {
            if let Err(e) = f.call1(py, (delta,)) {
                *stopped = Some(e);
                return false;
            }
        }
        true
    })
}

enum StreamMsg {
    Text(String),
    Done(Result<(String, History), String>),
}

/// The text deltas of a streaming chat round, as they are generated.
#[pyclass(module = "chatglm_rs._native", frozen)]
struct ChatStream {
    rx: Mutex<Receiver<StreamMsg>>,
    result: Mutex<Option<(String, History)>>,
}

#[pymethods]
impl ChatStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next delta; waits with the GIL released (and Ctrl-C checked every
    /// 50 ms).
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let mut guard = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        let rx: &mut Receiver<StreamMsg> = &mut guard;
        loop {
            let r: &mut Receiver<StreamMsg> = &mut *rx;
            match py.allow_threads(move || r.recv_timeout(Duration::from_millis(50))) {
                Ok(StreamMsg::Text(t)) => return Ok(Some(t)),
                Ok(StreamMsg::Done(Ok(done))) => {
                    *self.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(done);
                    return Ok(None);
                }
                Ok(StreamMsg::Done(Err(e))) => return Err(PyRuntimeError::new_err(e)),
                Err(RecvTimeoutError::Timeout) => py.check_signals()?,
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
            }
        }
    }

    /// `(response, new_history)` once the stream is exhausted, else `None`.
    fn result(&self) -> Option<(String, History)> {
        self.result.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The official `process_response`: strip, then `[[训练时间]]` → `2023年`.
#[pyfunction]
fn process_response(text: &str) -> String {
    chatglm_engine::text::process_response(text)
}

/// Whether this build can use CUDA GPUs, and how many are usable now.
#[pyfunction]
fn cuda_device_count() -> usize {
    #[cfg(feature = "cuda")]
    {
        chatglm_model::cuda::usable_device_count().unwrap_or(0)
    }
    #[cfg(not(feature = "cuda"))]
    {
        0
    }
}

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Tokenizer>()?;
    m.add_class::<Pipeline>()?;
    m.add_class::<ChatStream>()?;
    m.add_function(wrap_pyfunction!(process_response, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_device_count, m)?)?;
    Ok(())
}
