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
use lem_tokenizer::{ChatMessage, Role, ToolCall};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extract::{ApiJson, session_header};
use crate::generation::start;
use crate::middleware::RequestId;
use crate::params::{self, GenSpec, PromptSpec, SamplingFields, StopField};
use crate::reasoning::{self, ReasoningMode};
use crate::state::{AppState, ServerState};
use crate::tools::{self, FunctionDef, Piece, Reply, ToolChoice, ToolRequest};
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
    /// lem: `false` opts out of the server's speculative decoding.
    pub speculative: Option<bool>,
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct MessageIn {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    #[serde(default)]
    pub content: String,
    /// The calls an assistant message made: `[{function: {name, arguments}}]`.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// For a `tool` message: the function that produced it.
    #[serde(default)]
    pub tool_name: Option<String>,
}

/// A call in an assistant message of a request.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolCallIn {
    /// The function and its arguments (an object).
    pub function: FunctionIn,
}

/// The function of a [`ToolCallIn`].
#[derive(Debug, Clone, Deserialize)]
pub struct FunctionIn {
    /// The function's name.
    pub name: String,
    /// The arguments (an object; a JSON string of one is accepted).
    #[serde(default)]
    pub arguments: Value,
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
    /// Function tools the model may call (OpenAI-shaped definitions).
    pub tools: Option<Vec<Value>>,
    /// lem's extension: OpenAI's `tool_choice` (`auto`, `none`, `required`, a function).
    pub tool_choice: Option<Value>,
    /// Thinking: `true` returns it as `message.thinking`, `false` drops it (and sets
    /// `enable_thinking` false for the template); default: the server's `--reasoning`.
    pub think: Option<Value>,
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
    /// Thinking, as for `/api/chat`.
    pub think: Option<Value>,
}

/// The reasoning mode of Ollama's `think` (absent: the server's), setting
/// `enable_thinking` for the template when it is given.
fn think_mode(state: &ServerState, think: Option<&Value>, kwargs: &mut Value) -> Result<ReasoningMode, ApiError> {
    let on = match think {
        None | Some(Value::Null) => return Ok(state.reasoning),
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if matches!(s.as_str(), "low" | "medium" | "high") => {
            reasoning::default_kwarg(kwargs, "reasoning_effort", Value::String(s.clone()));
            true
        }
        Some(_) => {
            return Err(ApiError::invalid("think", "think must be true, false, \"low\", \"medium\" or \"high\""));
        }
    };
    reasoning::default_kwarg(kwargs, "enable_thinking", Value::Bool(on));
    Ok(if on { ReasoningMode::Capture } else { ReasoningMode::Hide })
}

/// A request message as a chat message.
fn message_in(m: MessageIn) -> Result<ChatMessage, ApiError> {
    let role = params::role(&m.role)?;
    let mut calls = Vec::new();
    for c in m.tool_calls.unwrap_or_default() {
        calls.push(ToolCall {
            id: String::new(),
            name: c.function.name,
            arguments: tools::arguments_in(c.function.arguments)?,
        });
    }
    Ok(match role {
        Role::Tool => ChatMessage::tool_result(m.content, None, m.tool_name),
        Role::Assistant if !calls.is_empty() => ChatMessage::assistant_calls(m.content, calls),
        _ => ChatMessage::new(role, m.content),
    })
}

/// Which Ollama reply shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `/api/chat`: `message`.
    Chat,
    /// `/api/generate`: `response`.
    Generate,
}

/// Writes parsed pieces into a reply object: `message` {role, content, thinking,
/// tool_calls} for chat, `response` and `thinking` for generate.
fn put_pieces(obj: &mut Value, shape: Shape, pieces: Vec<Piece>) {
    let reply = Reply::collect(pieces);
    let thinking = reply.reasoning.filter(|r| !r.is_empty());
    match shape {
        Shape::Chat => {
            let mut message = json!({"role": "assistant", "content": reply.content});
            if let Some(t) = thinking {
                message["thinking"] = Value::String(t);
            }
            if !reply.calls.is_empty() {
                message["tool_calls"] = reply
                    .calls
                    .iter()
                    .map(|c| json!({"function": {"name": c.name, "arguments": c.arguments}}))
                    .collect();
            }
            obj["message"] = message;
        }
        Shape::Generate => {
            obj["response"] = Value::String(reply.content);
            if let Some(t) = thinking {
                obj["thinking"] = Value::String(t);
            }
        }
    }
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
            tools: Vec::new(),
            speculative: self.speculative.unwrap_or(true),
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

/// Runs a spec and answers in Ollama's `shape`, the reply parsed for `tool_req`'s calls
/// and reasoning in `mode`.
async fn respond(
    state: &AppState,
    spec: GenSpec,
    rid: &RequestId,
    stream: bool,
    shape: Shape,
    tool_req: &ToolRequest,
    mode: ReasoningMode,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let model = state.names.primary.clone();
    let running = start(state, spec, rid.0.clone(), received).await?;
    let mut parser = tools::reply_parser(state, tool_req, mode, running.starts_thinking);
    if !stream {
        let done = running.collect().await?.done;
        let mut obj = json!({"model": model, "created_at": rfc3339_now(), "done": true});
        let mut pieces = parser.push(&done.text);
        pieces.extend(parser.finish());
        put_pieces(&mut obj, shape, pieces);
        done_fields(&mut obj, &done, received);
        return Ok(axum::Json(obj).into_response());
    }
    let line = |v: Value| Ok::<String, Infallible>(format!("{v}\n"));
    let stream = running.into_stream(move |ev| match ev {
        Event::Token { text, .. } if text.is_empty() => vec![],
        Event::Token { text, .. } => {
            let pieces = parser.push(&text);
            if pieces.is_empty() {
                return vec![];
            }
            let mut obj = json!({"model": model, "created_at": rfc3339_now(), "done": false});
            put_pieces(&mut obj, shape, pieces);
            vec![line(obj)]
        }
        Event::Done(done) => {
            let mut out = Vec::new();
            let pieces = parser.finish();
            if !pieces.is_empty() {
                let mut obj = json!({"model": model, "created_at": rfc3339_now(), "done": false});
                put_pieces(&mut obj, shape, pieces);
                out.push(line(obj));
            }
            let mut obj = json!({"model": model, "created_at": rfc3339_now(), "done": true});
            put_pieces(&mut obj, shape, Vec::new());
            done_fields(&mut obj, &done, received);
            out.push(line(obj));
            out
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
        messages.push(message_in(m)?);
    }
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let defs = req.tools.unwrap_or_default().iter().map(FunctionDef::from_openai).collect::<Result<Vec<_>, _>>()?;
    let tool_req = ToolRequest::new(defs, ToolChoice::from_openai(req.tool_choice.as_ref())?, true)?;
    let mut spec =
        req.options.spec(&state, PromptSpec::Chat(messages), req.session.or_else(|| session_header(&headers)))?;
    spec.grammar = params::ollama_format(req.format.as_ref(), &state.engine)?;
    let mode = think_mode(&state, req.think.as_ref(), &mut spec.template_kwargs)?;
    tools::apply(&state, &tool_req, &mut spec)?;
    respond(&state, spec, &rid, req.stream.unwrap_or(true), Shape::Chat, &tool_req, mode).await
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
    let mode = think_mode(&state, req.think.as_ref(), &mut spec.template_kwargs)?;
    let no_tools = ToolRequest::new(Vec::new(), ToolChoice::None, false)?;
    respond(&state, spec, &rid, req.stream.unwrap_or(true), Shape::Generate, &no_tools, mode).await
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
