//! Anthropic-compatible route: `POST /v1/messages` (streaming events and not).

use std::convert::Infallible;
use std::time::Instant;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use lem_engine::FinishReason;
use lem_tokenizer::ChatMessage;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extract::{ApiJson, session_header};
use crate::generation::start;
use crate::middleware::RequestId;
use crate::params::{self, Content, GenSpec, PromptSpec, SamplingFields};
use crate::state::AppState;
use crate::worker::{Done, Event};

/// One message.
#[derive(Debug, Clone, Deserialize)]
pub struct MessageIn {
    /// `user` or `assistant`.
    pub role: String,
    /// Text or text blocks.
    pub content: Content,
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
        messages.push(ChatMessage::new(role, Content::into_text(Some(m.content), "messages")?));
    }
    let stop = req.stop_sequences.unwrap_or_default();
    let fields =
        SamplingFields { temperature: req.temperature, top_p: req.top_p, top_k: req.top_k, ..Default::default() };
    let spec = GenSpec {
        prompt: PromptSpec::Chat(messages),
        max_tokens: params::max_tokens(Some(req.max_tokens), "max_tokens", state.engine.ctx_size())?,
        sampling: fields.params(&params::ANTHROPIC)?,
        stop: params::StopField::into_vec(Some(params::StopField::Many(stop.clone())))?,
        top_logprobs: None,
        session: params::session_name(req.session.or_else(|| session_header(&headers)))?,
        template_kwargs: serde_json::Value::Null,
        grammar: None,
    };
    let id = format!("msg_{}", rid.0.replace('-', "_"));
    let model = state.names.primary.clone();
    let running = start(&state, spec, rid.0.clone(), received).await?;
    let stop_sequence = move |done: &Done| done.stopped_by.and_then(|i| stop.get(i).cloned());
    if !req.stream.unwrap_or(false) {
        let done = running.collect().await?.done;
        return Ok(axum::Json(json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": done.text}],
            "stop_reason": stop_reason(&done),
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
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    let stream = running.into_stream(move |ev| match ev {
        Event::Token { text, .. } if text.is_empty() => vec![],
        Event::Token { text, .. } => vec![event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        )],
        Event::Done(done) => vec![
            event("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
            event(
                "message_delta",
                json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason(&done), "stop_sequence": stop_sequence(&done)},
                    "usage": usage(&done)}),
            ),
            event("message_stop", json!({"type": "message_stop"})),
        ],
        Event::Failed(e) => vec![event("error", e.body())],
    });
    let stream = futures_util::StreamExt::chain(futures_util::stream::iter(start_events), stream);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}
