//! Anthropic-compatible route: `POST /v1/messages` (streaming events and not).

use std::convert::Infallible;
use std::time::Instant;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use lem_engine::FinishReason;
use lem_tokenizer::{ChatMessage, Role, ToolCall};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extract::{ApiJson, session_header};
use crate::generation::start;
use crate::middleware::RequestId;
use crate::params::{self, Content, GenSpec, PromptSpec, SamplingFields};
use crate::reasoning::{self, ReasoningMode};
use crate::state::AppState;
use crate::tools::{self, FunctionDef, Piece, ToolChoice, ToolFormat, ToolRequest};
use crate::worker::{Done, Event};

/// One message.
#[derive(Debug, Clone, Deserialize)]
pub struct MessageIn {
    /// `user` or `assistant`.
    pub role: String,
    /// Text, or content blocks: `text`, `tool_use` (assistant), `tool_result` (user);
    /// `thinking` blocks of earlier turns are dropped.
    pub content: Value,
}

/// `POST /v1/messages` body.
#[derive(Debug, Clone, Deserialize)]
pub struct MessagesRequest {
    /// The model name.
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<MessageIn>,
    /// Most tokens to generate (required, as Anthropic's API has it).
    pub max_tokens: i64,
    /// System prompt: text or text blocks.
    pub system: Option<Content>,
    /// Stop sequences.
    pub stop_sequences: Option<Vec<String>>,
    /// Temperature (0 to 1).
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Top-k.
    pub top_k: Option<i64>,
    /// Stream server-sent events.
    pub stream: Option<bool>,
    /// A lem session to continue.
    pub session: Option<String>,
    /// lem: `false` opts out of the server's speculative decoding.
    pub speculative: Option<bool>,
    /// Tools the model may use: `{name, description, input_schema}`.
    pub tools: Option<Vec<Value>>,
    /// `{type: auto | any | tool | none, name, disable_parallel_tool_use}`.
    pub tool_choice: Option<Value>,
    /// `{type: enabled | disabled}`: thinking returned as `thinking` blocks, or not at all
    /// (and `enable_thinking` false for the template); default: the server's `--reasoning`.
    pub thinking: Option<Value>,
}

fn stop_reason(done: &Done) -> &'static str {
    match done.finish {
        FinishReason::Length | FinishReason::ContextFull => "max_tokens",
        _ if done.stopped_by.is_some() => "stop_sequence",
        _ => "end_turn",
    }
}

fn usage(done: &Done) -> Value {
    json!({
        "input_tokens": done.prompt_tokens - done.cached_tokens,
        "cache_read_input_tokens": done.cached_tokens,
        "cache_creation_input_tokens": 0,
        "output_tokens": done.completion_tokens,
    })
}

fn event(name: &str, data: Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().event(name).data(data.to_string()))
}

/// A request message's content blocks as chat messages: text (joined), `tool_use` blocks
/// as the assistant's calls, each `tool_result` as a tool message (before the user's
/// text, as the results answer the previous turn).
fn blocks_in(role: Role, content: Value, out: &mut Vec<ChatMessage>) -> Result<(), ApiError> {
    let blocks = match content {
        Value::String(s) => {
            out.push(ChatMessage::new(role, s));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => return Err(ApiError::invalid("messages", "message content must be a string or a list of blocks")),
    };
    let (mut text, mut calls) = (String::new(), Vec::new());
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("thinking" | "redacted_thinking") => {}
            Some("tool_use") if role == Role::Assistant => calls.push(ToolCall {
                id: b.get("id").and_then(Value::as_str).unwrap_or_default().to_owned(),
                name: b.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
                arguments: tools::arguments_in(b.get("input").cloned().unwrap_or(Value::Null))?,
            }),
            Some("tool_result") if role == Role::User => {
                let result = match b.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => {
                        let parts: Content = serde_json::from_value(v.clone())
                            .map_err(|e| ApiError::invalid("messages", format!("bad tool_result content: {e}")))?;
                        Content::into_text(Some(parts), "messages")?
                    }
                };
                let id = b.get("tool_use_id").and_then(Value::as_str).map(str::to_owned);
                out.push(ChatMessage::tool_result(result, id, None));
            }
            other => {
                return Err(ApiError::invalid(
                    "messages",
                    format!(
                        "content blocks of type `{}` are not supported in {} messages",
                        other.unwrap_or("(none)"),
                        role.as_str()
                    ),
                ));
            }
        }
    }
    if !calls.is_empty() {
        out.push(ChatMessage::assistant_calls(text, calls));
    } else if !text.is_empty() || out.last().is_none_or(|m| m.role != Role::Tool) {
        out.push(ChatMessage::new(role, text));
    }
    Ok(())
}

/// The content blocks of a streamed reply: opened as pieces of a new kind arrive,
/// closed when the kind changes.
#[derive(Debug, Default)]
struct Blocks {
    /// Index of the open block and whether it is text (`Some(true)`), thinking (`Some(false)`).
    open: Option<(usize, bool)>,
    next: usize,
    calls: usize,
}

impl Blocks {
    fn close(&mut self, at_end: bool) -> Vec<Result<SseEvent, Infallible>> {
        let mut out = Vec::new();
        if at_end && self.next == 0 {
            // An empty reply still has its (empty) text block.
            out.extend(self.open_block(json!({"type": "text", "text": ""}), true));
        }
        if let Some((index, _)) = self.open.take() {
            out.push(event("content_block_stop", json!({"type": "content_block_stop", "index": index})));
        }
        out
    }

    fn open_block(&mut self, block: Value, text: bool) -> Vec<Result<SseEvent, Infallible>> {
        let index = self.next;
        self.next += 1;
        self.open = Some((index, text));
        vec![event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        )]
    }

    fn delta(&self, delta: Value) -> Result<SseEvent, Infallible> {
        let index = self.open.map_or(0, |(i, _)| i);
        event("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": delta}))
    }

    fn events(&mut self, pieces: Vec<Piece>, format: ToolFormat) -> Vec<Result<SseEvent, Infallible>> {
        let mut out = Vec::new();
        for p in pieces {
            match p {
                Piece::Content(t) => {
                    if self.open.map(|(_, text)| text) != Some(true) {
                        out.extend(self.close(false));
                        out.extend(self.open_block(json!({"type": "text", "text": ""}), true));
                    }
                    out.push(self.delta(json!({"type": "text_delta", "text": t})));
                }
                Piece::Reasoning(t) => {
                    if self.open.map(|(_, text)| text) != Some(false) {
                        out.extend(self.close(false));
                        out.extend(
                            self.open_block(json!({"type": "thinking", "thinking": "", "signature": ""}), false),
                        );
                    }
                    out.push(self.delta(json!({"type": "thinking_delta", "thinking": t})));
                }
                Piece::Call(c) => {
                    out.extend(self.close(false));
                    let block =
                        json!({"type": "tool_use", "id": format.call_id("toolu_"), "name": c.name, "input": {}});
                    out.extend(self.open_block(block, false));
                    out.push(self.delta(json!({"type": "input_json_delta", "partial_json": c.arguments.to_string()})));
                    out.extend(self.close(false));
                    self.calls += 1;
                }
            }
        }
        out
    }
}

/// `POST /v1/messages`.
pub async fn messages(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<MessagesRequest>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    state.names.check(req.model.as_deref())?;
    let mut messages = Vec::with_capacity(req.messages.len() + 1);
    let system = Content::into_text(req.system, "system")?;
    if !system.is_empty() {
        messages.push(ChatMessage::system(system));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    for m in req.messages {
        let role = match m.role.as_str() {
            "user" | "assistant" => params::role(&m.role)?,
            other => {
                return Err(ApiError::invalid(
                    "messages",
                    format!("unsupported message role `{other}` (use user or assistant)"),
                ));
            }
        };
        blocks_in(role, m.content, &mut messages)?;
    }
    let defs = req.tools.unwrap_or_default().iter().map(FunctionDef::from_anthropic).collect::<Result<Vec<_>, _>>()?;
    let (choice, parallel) = ToolChoice::from_anthropic(req.tool_choice.as_ref())?;
    let tool_req = ToolRequest::new(defs, choice, parallel)?;
    let mut template_kwargs = serde_json::Value::Null;
    let mode = match req.thinking.as_ref().map(|t| t.get("type").and_then(Value::as_str)) {
        None => state.reasoning,
        Some(Some("enabled" | "adaptive")) => {
            reasoning::default_kwarg(&mut template_kwargs, "enable_thinking", Value::Bool(true));
            ReasoningMode::Capture
        }
        Some(Some("disabled")) => {
            reasoning::default_kwarg(&mut template_kwargs, "enable_thinking", Value::Bool(false));
            ReasoningMode::Hide
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "thinking",
                "thinking must be {\"type\": \"enabled\"} or {\"type\": \"disabled\"}",
            ));
        }
    };
    let stop = req.stop_sequences.unwrap_or_default();
    let fields =
        SamplingFields { temperature: req.temperature, top_p: req.top_p, top_k: req.top_k, ..Default::default() };
    let mut spec = GenSpec {
        prompt: PromptSpec::Chat(messages),
        max_tokens: params::max_tokens(Some(req.max_tokens), "max_tokens", state.engine.ctx_size())?,
        sampling: fields.params(&params::ANTHROPIC)?,
        stop: params::StopField::into_vec(Some(params::StopField::Many(stop.clone())))?,
        top_logprobs: None,
        session: params::session_name(req.session.or_else(|| session_header(&headers)))?,
        template_kwargs,
        grammar: None,
        tools: Vec::new(),
        speculative: req.speculative.unwrap_or(true),
    };
    let id = format!("msg_{}", rid.0.replace('-', "_"));
    let model = state.names.primary.clone();
    tools::apply(&state, &tool_req, &mut spec)?;
    let running = start(&state, spec, rid.0.clone(), received).await?;
    let mut parser = tools::reply_parser(&state, &tool_req, mode, running.starts_thinking);
    let format = state.tool_format;
    let stop_sequence = move |done: &Done| done.stopped_by.and_then(|i| stop.get(i).cloned());
    if !req.stream.unwrap_or(false) {
        let done = running.collect().await?.done;
        let reply = parser.parse(&done.text);
        let mut content = Vec::new();
        if let Some(r) = reply.reasoning {
            content.push(json!({"type": "thinking", "thinking": r, "signature": ""}));
        }
        if !reply.content.is_empty() || reply.calls.is_empty() {
            content.push(json!({"type": "text", "text": reply.content}));
        }
        for c in &reply.calls {
            content.push(
                json!({"type": "tool_use", "id": format.call_id("toolu_"), "name": c.name, "input": c.arguments}),
            );
        }
        let stop = if reply.calls.is_empty() { stop_reason(&done) } else { "tool_use" };
        return Ok(axum::Json(json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": stop_sequence(&done),
            "usage": usage(&done),
        }))
        .into_response());
    }
    let start_events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": running.prompt_tokens, "output_tokens": 0},
            }}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    let mut blocks = Blocks::default();
    let stream = running.into_stream(move |ev| match ev {
        Event::Token { text, .. } if text.is_empty() => vec![],
        Event::Token { text, .. } => blocks.events(parser.push(&text), format),
        Event::Done(done) => {
            let mut out = blocks.events(parser.finish(), format);
            out.extend(blocks.close(true));
            let stop = if blocks.calls > 0 { "tool_use" } else { stop_reason(&done) };
            out.push(event(
                "message_delta",
                json!({"type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": stop_sequence(&done)},
                    "usage": usage(&done)}),
            ));
            out.push(event("message_stop", json!({"type": "message_stop"})));
            out
        }
        Event::Failed(e) => vec![event("error", e.body())],
    });
    let stream = futures_util::StreamExt::chain(futures_util::stream::iter(start_events), stream);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}
