//! OpenAI-compatible routes: `POST /v1/chat/completions`, `POST /v1/completions`,
//! `GET /v1/models[/{id}]`.

use std::convert::Infallible;
use std::time::Instant;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use lem_engine::FinishReason;
use lem_tokenizer::{ChatMessage, Role, ToolCall};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extract::{ApiJson, session_header};
use crate::generation::{Collected, start};
use crate::middleware::RequestId;
use crate::params::{self, Content, GenSpec, PromptSpec, SamplingFields, StopField};
use crate::reasoning::{self, ReasoningMode};
use crate::state::{AppState, ServerState};
use crate::tools::{self, FunctionDef, Piece, ToolChoice, ToolRequest};
use crate::worker::{Done, Event, TokenLogprob};

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage`.
    #[serde(default)]
    pub include_usage: bool,
}

/// One message of a chat request.
#[derive(Debug, Clone, Deserialize)]
pub struct MessageIn {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text or text parts.
    #[serde(default)]
    pub content: Option<Content>,
    /// The calls an assistant message made.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// For a `tool` message: the call it answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// For a `tool` message: the function's name.
    #[serde(default)]
    pub name: Option<String>,
}

/// A call in an assistant message of a request.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolCallIn {
    /// The call's id.
    #[serde(default)]
    pub id: Option<String>,
    /// The function and its arguments.
    pub function: FunctionCallIn,
}

/// The function of a [`ToolCallIn`].
#[derive(Debug, Clone, Deserialize)]
pub struct FunctionCallIn {
    /// The function's name.
    pub name: String,
    /// The arguments: a JSON string (as OpenAI sends them) or an object.
    #[serde(default)]
    pub arguments: Value,
}

/// Fields of both chat and text completions.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CommonFields {
    /// The model name.
    pub model: Option<String>,
    /// Stream the response as server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Sampling parameters (`temperature` 0 to 2, `top_p`, `presence_penalty` and
    /// `frequency_penalty` -2 to 2, `seed`; lem extensions `top_k`, `min_p`,
    /// `repeat_penalty`).
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Most tokens to generate.
    pub max_tokens: Option<i64>,
    /// Stop strings.
    pub stop: Option<StopField>,
    /// Number of choices (only 1).
    pub n: Option<i64>,
    /// A lem session to continue.
    pub session: Option<String>,
    /// Structured outputs: `response_format`, `grammar`, `json_schema`, `regex`.
    #[serde(flatten)]
    pub structured: params::GrammarFields,
    /// lem: `false` opts out of the server's speculative decoding.
    pub speculative: Option<bool>,
}

/// `POST /v1/chat/completions` body.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<MessageIn>,
    /// The newer name of `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    /// Return log-probabilities.
    pub logprobs: Option<bool>,
    /// Alternatives per token (0 to 20).
    pub top_logprobs: Option<i64>,
    /// Function tools the model may call.
    pub tools: Option<Vec<Value>>,
    /// `auto`, `none`, `required` or `{"type": "function", "function": {"name": ...}}`.
    pub tool_choice: Option<Value>,
    /// Whether one reply may make several calls (default true).
    pub parallel_tool_calls: Option<bool>,
    /// Reasoning for this request: `show`, `hide` or `capture` (llama-server's `none` and
    /// `deepseek` too); default: the server's `--reasoning`.
    pub reasoning_format: Option<String>,
    /// Passed to the chat template as `reasoning_effort`.
    pub reasoning_effort: Option<String>,
    /// Extra chat-template variables (an object, as vLLM and llama-server take it; e.g.
    /// `{"enable_thinking": false}` for Qwen 3).
    pub chat_template_kwargs: Option<Value>,
    /// Everything else.
    #[serde(flatten)]
    pub common: CommonFields,
}

/// A completion prompt: text, a one-element list of text, or token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptIn {
    /// Text.
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
    /// A list of texts (one supported).
    Texts(Vec<String>),
}

/// `POST /v1/completions` body.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The prompt.
    pub prompt: PromptIn,
    /// Log-probabilities of this many alternatives (0 to 5).
    pub logprobs: Option<i64>,
    /// Return the prompt before the completion.
    pub echo: Option<bool>,
    /// Everything else.
    #[serde(flatten)]
    pub common: CommonFields,
}

impl CommonFields {
    fn spec(
        &self,
        state: &ServerState,
        prompt: PromptSpec,
        max_tokens: Option<i64>,
        headers: &HeaderMap,
    ) -> Result<GenSpec, ApiError> {
        state.names.check(self.model.as_deref())?;
        if let Some(n) = self.n.filter(|&n| n != 1) {
            return Err(ApiError::invalid("n", format!("only n = 1 is supported, got {n}")));
        }
        let fields = self.sampling;
        Ok(GenSpec {
            prompt,
            max_tokens: params::max_tokens(max_tokens, "max_tokens", state.engine.ctx_size())?,
            sampling: fields.params(&params::OPENAI)?,
            stop: StopField::into_vec(self.stop.clone())?,
            top_logprobs: None,
            session: params::session_name(self.session.clone().or_else(|| session_header(headers)))?,
            template_kwargs: Value::Null,
            grammar: self.structured.grammar(&state.engine)?,
            tools: Vec::new(),
            speculative: self.speculative.unwrap_or(true),
        })
    }

    fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }
}

/// A request message as a chat message (with its calls or the call it answers).
fn message_in(m: MessageIn) -> Result<ChatMessage, ApiError> {
    let role = params::role(&m.role)?;
    let content = Content::into_text(m.content, "messages")?;
    let mut calls = Vec::new();
    for c in m.tool_calls.unwrap_or_default() {
        calls.push(ToolCall {
            id: c.id.unwrap_or_default(),
            name: c.function.name,
            arguments: tools::arguments_in(c.function.arguments)?,
        });
    }
    Ok(match role {
        Role::Tool => ChatMessage::tool_result(content, m.tool_call_id, m.name),
        Role::Assistant if !calls.is_empty() => ChatMessage::assistant_calls(content, calls),
        _ => ChatMessage::new(role, content),
    })
}

/// OpenAI's name of a finish reason.
pub fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length | FinishReason::ContextFull => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

/// The `usage` object.
pub fn usage(done: &Done) -> Value {
    json!({
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
    })
}

fn chat_logprob(lp: &TokenLogprob) -> Value {
    json!({
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": lp.bytes,
        "top_logprobs": lp.top.iter().map(|(t, b, l)| json!({"token": t, "logprob": l, "bytes": b})).collect::<Vec<_>>(),
    })
}

fn sse(v: &Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(v.to_string()))
}

fn done_marker() -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data("[DONE]"))
}

fn sse_response<S>(stream: S) -> Response
where
    S: futures_util::Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
{
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// `POST /v1/chat/completions`.
pub async fn chat(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in req.messages {
        messages.push(message_in(m)?);
    }
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let defs = req.tools.unwrap_or_default().iter().map(FunctionDef::from_openai).collect::<Result<Vec<_>, _>>()?;
    let tool_req = ToolRequest::new(
        defs,
        ToolChoice::from_openai(req.tool_choice.as_ref())?,
        req.parallel_tool_calls.unwrap_or(true),
    )?;
    let mode = match &req.reasoning_format {
        Some(f) => ReasoningMode::parse(f, "reasoning_format")?,
        None => state.reasoning,
    };
    let mut template_kwargs = params::template_kwargs(req.chat_template_kwargs)?;
    if let Some(effort) = req.reasoning_effort {
        reasoning::default_kwarg(&mut template_kwargs, "reasoning_effort", Value::String(effort));
    }
    let max = req.max_completion_tokens.or(req.common.max_tokens);
    let mut spec = req.common.spec(&state, PromptSpec::Chat(messages), max, &headers)?;
    spec.template_kwargs = template_kwargs;
    tools::apply(&state, &tool_req, &mut spec)?;
    if req.logprobs.unwrap_or(false) {
        spec.top_logprobs = Some(params::top_logprobs(req.top_logprobs, "top_logprobs", 20)?);
    }
    let logprobs = spec.top_logprobs.is_some();
    let id = format!("chatcmpl-{}", rid.0);
    let model = state.names.primary.clone();
    let created = ServerState::now_unix();
    let running = start(&state, spec, rid.0.clone(), received).await?;
    let mut parser = tools::reply_parser(&state, &tool_req, mode, running.starts_thinking);
    let format = state.tool_format;
    if !req.common.stream() {
        let Collected { logprobs: lps, done } = running.collect().await?;
        let lp = if logprobs {
            json!({"content": lps.iter().map(chat_logprob).collect::<Vec<_>>(), "refusal": null})
        } else {
            Value::Null
        };
        let reply = parser.parse(&done.text);
        let mut message = json!({"role": "assistant", "content": reply.content, "refusal": null});
        let finish = if reply.calls.is_empty() {
            finish_reason(done.finish)
        } else {
            if reply.content.is_empty() {
                message["content"] = Value::Null;
            }
            message["tool_calls"] = reply
                .calls
                .iter()
                .map(|c| {
                    json!({"id": format.call_id("call_"), "type": "function",
                           "function": {"name": c.name, "arguments": c.arguments.to_string()}})
                })
                .collect();
            "tool_calls"
        };
        if let Some(r) = reply.reasoning {
            message["reasoning_content"] = Value::String(r);
        }
        return Ok(axum::Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": lp,
                "finish_reason": finish,
            }],
            "usage": usage(&done),
        }))
        .into_response());
    }
    let include_usage = req.common.include_usage();
    let chunk = std::sync::Arc::new(move |delta: Value, lp: Value, finish: Value| {
        let mut c = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        c
    });
    let first = sse(&chunk(json!({"role": "assistant", "content": ""}), Value::Null, Value::Null));
    // Calls streamed so far (read again when the stream ends, for the finish reason).
    let calls_made = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls_made.clone();
    let delta_chunk = chunk.clone();
    let deltas = move |pieces: Vec<Piece>, mut lp: Value| -> Vec<Value> {
        let mut out = Vec::new();
        for p in pieces {
            match p {
                Piece::Content(t) => out.push(json!({"content": t})),
                Piece::Reasoning(t) => out.push(json!({"reasoning_content": t})),
                Piece::Call(c) => {
                    let calls = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let id = format.call_id("call_");
                    out.push(json!({"tool_calls": [{"index": calls, "id": id, "type": "function",
                                                     "function": {"name": c.name, "arguments": ""}}]}));
                    out.push(
                        json!({"tool_calls": [{"index": calls, "function": {"arguments": c.arguments.to_string()}}]}),
                    );
                }
            }
        }
        if out.is_empty() && !lp.is_null() {
            out.push(json!({"content": ""}));
        }
        out.into_iter().map(|d| delta_chunk(d, std::mem::take(&mut lp), Value::Null)).collect()
    };
    let stream = running.into_stream(move |ev| match ev {
        Event::Token { text, logprob } => {
            if text.is_empty() && logprob.is_none() {
                return vec![];
            }
            let lp = logprob.map_or(Value::Null, |l| json!({"content": [chat_logprob(&l)], "refusal": null}));
            deltas(parser.push(&text), lp).iter().map(sse).collect()
        }
        Event::Done(done) => {
            let mut out: Vec<_> = deltas(parser.finish(), Value::Null).iter().map(sse).collect();
            let calls = calls_made.load(std::sync::atomic::Ordering::Relaxed);
            let finish = if calls > 0 { "tool_calls" } else { finish_reason(done.finish) };
            out.push(sse(&chunk(json!({}), Value::Null, json!(finish))));
            if include_usage {
                let mut u = chunk(json!({}), Value::Null, Value::Null);
                u["choices"] = json!([]);
                u["usage"] = usage(&done);
                out.push(sse(&u));
            }
            out.push(done_marker());
            out
        }
        Event::Failed(e) => vec![sse(&e.body()), done_marker()],
    });
    Ok(sse_response(futures_util::StreamExt::chain(futures_util::stream::once(async { first }), stream)))
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let prompt = match req.prompt {
        PromptIn::Text(t) => PromptSpec::Text(t),
        PromptIn::Tokens(ids) => PromptSpec::Tokens(ids),
        PromptIn::Texts(mut v) if v.len() == 1 => PromptSpec::Text(v.remove(0)),
        PromptIn::Texts(v) => {
            return Err(ApiError::invalid("prompt", format!("one prompt per request is supported, got {}", v.len())));
        }
    };
    let echo = match (&prompt, req.echo.unwrap_or(false)) {
        (PromptSpec::Text(t), true) => t.clone(),
        (PromptSpec::Tokens(ids), true) => state.engine.tokenizer().decode(ids).unwrap_or_default(),
        _ => String::new(),
    };
    let mut spec = req.common.spec(&state, prompt, req.common.max_tokens, &headers)?;
    if let Some(n) = req.logprobs {
        spec.top_logprobs = Some(params::top_logprobs(Some(n), "logprobs", 5)?);
    }
    let logprobs = spec.top_logprobs.is_some();
    let id = format!("cmpl-{}", rid.0);
    let model = state.names.primary.clone();
    let created = ServerState::now_unix();
    let running = start(&state, spec, rid.0.clone(), received).await?;
    if !req.common.stream() {
        let Collected { logprobs: lps, done } = running.collect().await?;
        let lp = if logprobs { completion_logprobs(&lps, echo.len()) } else { Value::Null };
        return Ok(axum::Json(json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "text": format!("{echo}{}", done.text),
                "logprobs": lp,
                "finish_reason": finish_reason(done.finish),
            }],
            "usage": usage(&done),
        }))
        .into_response());
    }
    let include_usage = req.common.include_usage();
    let mut offset = echo.len();
    let chunk = move |text: &str, lp: Value, finish: Value| {
        let mut c = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": lp, "finish_reason": finish}],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let mut echo = Some(echo).filter(|e| !e.is_empty());
    let stream = running.into_stream(move |ev| {
        let mut out = Vec::new();
        if let Some(e) = echo.take() {
            out.push(sse(&chunk(&e, Value::Null, Value::Null)));
        }
        match ev {
            Event::Token { text, logprob } => {
                if text.is_empty() && logprob.is_none() {
                    return out;
                }
                let lp = logprob.map_or(Value::Null, |l| completion_logprobs(&[l], offset));
                offset += text.len();
                out.push(sse(&chunk(&text, lp, Value::Null)));
            }
            Event::Done(done) => {
                out.push(sse(&chunk("", Value::Null, json!(finish_reason(done.finish)))));
                if include_usage {
                    let mut u = chunk("", Value::Null, Value::Null);
                    u["choices"] = json!([]);
                    u["usage"] = usage(&done);
                    out.push(sse(&u));
                }
                out.push(done_marker());
            }
            Event::Failed(e) => {
                out.push(sse(&e.body()));
                out.push(done_marker());
            }
        }
        out
    });
    Ok(sse_response(stream))
}

/// The legacy completions `logprobs` object, with text offsets from `offset`.
fn completion_logprobs(lps: &[TokenLogprob], mut offset: usize) -> Value {
    let mut offsets = Vec::with_capacity(lps.len());
    for lp in lps {
        offsets.push(offset);
        offset += lp.token.len();
    }
    json!({
        "tokens": lps.iter().map(|l| l.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": lps
            .iter()
            .map(|l| l.top.iter().map(|(t, _, p)| (t.clone(), json!(p))).collect::<serde_json::Map<_, _>>())
            .collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

fn model_object(state: &ServerState) -> Value {
    let created = state.started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    json!({"id": state.names.primary, "object": "model", "created": created, "owned_by": "lem"})
}

/// `GET /v1/models`.
pub async fn models(State(state): State<AppState>) -> axum::Json<Value> {
    axum::Json(json!({"object": "list", "data": [model_object(&state)]}))
}

/// `GET /v1/models/{id}`.
pub async fn model(State(state): State<AppState>, Path(id): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    state.names.check(Some(&id))?;
    Ok(axum::Json(model_object(&state)))
}
