//! Ollama-compatible routes: `POST /api/chat`, `POST /api/generate` (NDJSON streaming,
//! the default, or one object with `"stream": false`), `GET /api/tags`, `GET /api/version`.

use std::convert::Infallible;
use std::time::Instant;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use lem_engine::FinishReason;
use lem_tokenizer::ChatMessage;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extract::{ApiJson, session_header};
use crate::generation::start;
use crate::middleware::RequestId;
use crate::params::{self, GenSpec, PromptSpec, SamplingFields, StopField};
use crate::state::{AppState, ServerState};
use crate::worker::{Done, Event};

/// `options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Options {
    /// Sampling parameters (`temperature`, `top_p`, `top_k`, `min_p`, `repeat_penalty`,
    /// `presence_penalty`, `frequency_penalty`, `seed`).
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Most tokens (-1 or -2: no limit but the context).
    pub num_predict: Option<i64>,
    /// Stop strings.
    pub stop: Option<StopField>,
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct MessageIn {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    #[serde(default)]
    pub content: String,
}

/// `POST /api/chat` body.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The model name.
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<MessageIn>,
    /// Stream NDJSON (default true).
    pub stream: Option<bool>,
    /// Sampling options.
    #[serde(default)]
    pub options: Options,
    /// A lem session to continue.
    pub session: Option<String>,
    /// Structured output: `"json"` or a JSON schema object.
    pub format: Option<Value>,
}

/// `POST /api/generate` body.
#[derive(Debug, Clone, Deserialize)]
pub struct GenerateRequest {
    /// The model name.
    pub model: Option<String>,
    /// The prompt.
    pub prompt: String,
    /// A system message (ignored with `raw`).
    pub system: Option<String>,
    /// Use the prompt as is, without the chat template.
    pub raw: Option<bool>,
    /// Stream NDJSON (default true).
    pub stream: Option<bool>,
    /// Sampling options.
    #[serde(default)]
    pub options: Options,
    /// A lem session to continue.
    pub session: Option<String>,
    /// Structured output: `"json"` or a JSON schema object.
    pub format: Option<Value>,
}

impl Options {
    fn spec(&self, state: &ServerState, prompt: PromptSpec, session: Option<String>) -> Result<GenSpec, ApiError> {
        let max_tokens = match self.num_predict {
            Some(-1 | -2) | None => None,
            n => params::max_tokens(n, "num_predict", state.engine.ctx_size())?,
        };
        let fields = self.sampling;
        Ok(GenSpec {
            prompt,
            max_tokens,
            sampling: fields.params(&params::OLLAMA)?,
            stop: StopField::into_vec(self.stop.clone())?,
            top_logprobs: None,
            session: params::session_name(session)?,
            template_kwargs: serde_json::Value::Null,
            grammar: None,
        })
    }
}

fn rfc3339(t: std::time::SystemTime) -> String {
    lem_state::rfc3339(t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

fn rfc3339_now() -> String {
    rfc3339(std::time::SystemTime::now())
}

fn done_fields(obj: &mut Value, done: &Done, received: Instant) {
    let total_ns = received.elapsed().as_nanos() as u64;
    let ttft_ns = (done.ttft_ms * 1e6) as u64;
    obj["done_reason"] = json!(match done.finish {
        FinishReason::Length | FinishReason::ContextFull => "length",
        _ => "stop",
    });
    obj["total_duration"] = json!(total_ns);
    obj["load_duration"] = json!(0);
    obj["prompt_eval_count"] = json!(done.prompt_tokens);
    obj["prompt_eval_duration"] = json!(ttft_ns);
    obj["eval_count"] = json!(done.completion_tokens);
    obj["eval_duration"] = json!(total_ns.saturating_sub(ttft_ns));
    obj["prompt_cache_count"] = json!(done.cached_tokens);
}

fn ndjson<S>(stream: S) -> Response
where
    S: futures_util::Stream<Item = Result<String, Infallible>> + Send + 'static,
{
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    resp
}

/// Runs a spec and answers in Ollama's shape; `piece(text)` is the per-chunk payload
/// (`message` for chat, `response` for generate).
async fn respond(
    state: &AppState,
    spec: GenSpec,
    rid: &RequestId,
    stream: bool,
    piece: fn(&str) -> (&'static str, Value),
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let model = state.names.primary.clone();
    let running = start(state, spec, rid.0.clone(), received).await?;
    if !stream {
        let done = running.collect().await?.done;
        let (key, value) = piece(&done.text);
        let mut obj = json!({"model": model, "created_at": rfc3339_now(), "done": true});
        obj[key] = value;
        done_fields(&mut obj, &done, received);
        return Ok(axum::Json(obj).into_response());
    }
    let line = |v: Value| Ok::<String, Infallible>(format!("{v}\n"));
    let stream = running.into_stream(move |ev| match ev {
        Event::Token { text, .. } if text.is_empty() => vec![],
        Event::Token { text, .. } => {
            let (key, value) = piece(&text);
            let mut obj = json!({"model": model, "created_at": rfc3339_now(), "done": false});
            obj[key] = value;
            vec![line(obj)]
        }
        Event::Done(done) => {
            let (key, value) = piece("");
            let mut obj = json!({"model": model, "created_at": rfc3339_now(), "done": true});
            obj[key] = value;
            done_fields(&mut obj, &done, received);
            vec![line(obj)]
        }
        Event::Failed(e) => vec![line(json!({"error": e.to_string()}))],
    });
    Ok(ndjson(stream))
}

/// `POST /api/chat`.
pub async fn chat(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    state.names.check(req.model.as_deref())?;
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in req.messages {
        messages.push(ChatMessage::new(params::role(&m.role)?, m.content));
    }
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let mut spec =
        req.options.spec(&state, PromptSpec::Chat(messages), req.session.or_else(|| session_header(&headers)))?;
    spec.grammar = params::ollama_format(req.format.as_ref(), &state.engine)?;
    respond(&state, spec, &rid, req.stream.unwrap_or(true), |t| ("message", json!({"role": "assistant", "content": t})))
        .await
}

/// `POST /api/generate`.
pub async fn generate(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<GenerateRequest>,
) -> Result<Response, ApiError> {
    state.names.check(req.model.as_deref())?;
    let prompt = if req.raw.unwrap_or(false) {
        PromptSpec::Text(req.prompt)
    } else {
        let mut messages = Vec::new();
        if let Some(s) = req.system.filter(|s| !s.is_empty()) {
            messages.push(ChatMessage::system(s));
        }
        messages.push(ChatMessage::user(req.prompt));
        PromptSpec::Chat(messages)
    };
    let mut spec = req.options.spec(&state, prompt, req.session.or_else(|| session_header(&headers)))?;
    spec.grammar = params::ollama_format(req.format.as_ref(), &state.engine)?;
    respond(&state, spec, &rid, req.stream.unwrap_or(true), |t| ("response", json!(t))).await
}

/// `GET /api/tags`.
pub async fn tags(State(state): State<AppState>) -> axum::Json<Value> {
    let path = state.engine.path();
    let meta = std::fs::metadata(path).ok();
    let modified = meta.as_ref().and_then(|m| m.modified().ok()).map_or_else(rfc3339_now, rfc3339);
    let config = state.engine.model().config();
    let name = &state.names.primary;
    axum::Json(json!({"models": [{
        "name": name,
        "model": name,
        "modified_at": modified,
        "size": meta.map_or(0, |m| m.len()),
        "digest": state.engine.model_fingerprint().unwrap_or_default(),
        "details": {
            "format": "gguf",
            "family": config.architecture,
            "families": [config.architecture],
            "parameter_size": "",
            "quantization_level": "",
        },
    }]}))
}

/// `GET /api/version`.
pub async fn version() -> axum::Json<Value> {
    axum::Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}
