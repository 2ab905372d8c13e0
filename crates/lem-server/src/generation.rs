//! From a checked [`GenSpec`] to a running job: session wake and prompt merge, template,
//! tokenization, context check, submission; then the job's events, with the session put
//! back to sleep when it ends.
//!
//! A session holds a transcript (chat messages, or one `"text"` entry for plain
//! completions) and the KV state of its tokens. A request on a session may send the whole
//! conversation (it starts with the stored messages) or only what is new (it is appended
//! to them); either way the rendered prompt shares its start with the session's tokens,
//! and only the rest is computed.

use std::collections::VecDeque;
use std::time::Instant;

use futures_util::Stream;
use lem_engine::{GenerateRequest, Sequence};
use lem_state::{Transcript, TranscriptMessage};
use lem_tokenizer::{Bos, ChatMessage};
use tokio::sync::OwnedMutexGuard;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::error::ApiError;
use crate::params::{GenSpec, PromptSpec};
use crate::state::AppState;
use crate::worker::{Done, Event, Submission, TokenLogprob};

/// The transcript role of a plain-text session.
const TEXT_ROLE: &str = "text";

/// What a session's transcript becomes once the reply is known.
#[derive(Debug)]
enum Base {
    Chat(Vec<ChatMessage>),
    Text(String),
}

/// A session to put back to sleep when the job ends.
#[derive(Debug)]
struct PendingSave {
    name: String,
    base: Base,
    guard: OwnedMutexGuard<()>,
}

/// A submitted job and its events.
#[derive(Debug)]
pub struct Running {
    /// Prompt tokens (after the session's history, when there is one).
    pub prompt_tokens: usize,
    /// The rendered chat prompt leaves `<think>` open: the reply starts in reasoning.
    pub starts_thinking: bool,
    /// When the request arrived.
    pub received: Instant,
    rx: UnboundedReceiver<Event>,
    save: Option<PendingSave>,
    state: AppState,
    ended: bool,
}

/// A finished non-streaming job.
#[derive(Debug)]
pub struct Collected {
    /// Log-probabilities of the generated tokens, when asked for.
    pub logprobs: Vec<TokenLogprob>,
    /// The end of generation (text, counts, finish reason).
    pub done: Box<Done>,
}

/// Starts `spec` on the engine thread.
pub async fn start(
    state: &AppState,
    spec: GenSpec,
    request_id: String,
    received: Instant,
) -> Result<Running, ApiError> {
    let engine = &state.engine;
    let mut seq = None;
    let mut save = None;
    let kwargs = spec.template_kwargs;
    let prompt = match spec.session.clone() {
        None => spec.prompt,
        Some(name) => {
            let guard = state.session_lock(&name).lock_owned().await;
            let (woken, transcript) = wake(state, &name).await?;
            let (prompt, base) = merge(&name, spec.prompt, &transcript)?;
            seq = woken;
            save = Some(PendingSave { name, base, guard });
            prompt
        }
    };
    let (ids, starts_thinking) = tokenize(state, &prompt, &spec.tools, &kwargs)?;
    let ctx = engine.ctx_size();
    if ids.len() >= ctx {
        return Err(ApiError::ContextLengthExceeded { tokens: ids.len(), ctx });
    }
    let max_tokens = spec.max_tokens.unwrap_or(ctx - ids.len());
    let (tx, rx) = unbounded_channel();
    let prompt_tokens = ids.len();
    state.worker.submit(Submission {
        prompt_ids: ids,
        seq,
        request: GenerateRequest {
            max_tokens,
            sampling: spec.sampling,
            stop: spec.stop,
            grammar: spec.grammar,
            draft: if spec.speculative { state.draft.clone() } else { None },
        },
        top_logprobs: spec.top_logprobs,
        want_seq: save.is_some(),
        received,
        request_id,
        events: tx,
    })?;
    Ok(Running { prompt_tokens, starts_thinking, received, rx, save, state: state.clone(), ended: false })
}

/// Session `name`'s sequence and transcript (none yet: an empty transcript).
async fn wake(state: &AppState, name: &str) -> Result<(Option<Sequence>, Transcript), ApiError> {
    let (store, engine, name) = (state.sessions.clone(), state.engine.clone(), name.to_owned());
    let woken = tokio::task::spawn_blocking(move || store.wake(&name, &engine))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(match woken {
        Some((seq, transcript)) => {
            state.metrics.session_wakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (Some(seq), transcript)
        }
        None => {
            check_session_limits(state).await?;
            (None, Transcript::default())
        }
    })
}

/// Refuses to create a session when the store is at `--max-sessions` or
/// `--sessions-max-mib`.
async fn check_session_limits(state: &AppState) -> Result<(), ApiError> {
    let (store, limits) = (state.sessions.clone(), state.session_limits);
    let all =
        tokio::task::spawn_blocking(move || store.list()).await.map_err(|e| ApiError::Internal(e.to_string()))??;
    let bytes: u64 = all.iter().map(|s| s.bytes).sum();
    if all.len() >= limits.max_sessions {
        return Err(ApiError::SessionLimit(format!(
            "the server holds {} sessions, its limit (--max-sessions)",
            all.len()
        )));
    }
    if bytes >= limits.max_bytes {
        return Err(ApiError::SessionLimit(format!(
            "sessions take {} MiB on disk, the limit is {} MiB (--sessions-max-mib)",
            bytes >> 20,
            limits.max_bytes >> 20
        )));
    }
    Ok(())
}

/// The full prompt of a request on a session with `transcript`.
fn merge(name: &str, prompt: PromptSpec, transcript: &Transcript) -> Result<(PromptSpec, Base), ApiError> {
    let stored_text = match transcript.messages.as_slice() {
        [m] if m.role == TEXT_ROLE => Some(m.content.as_str()),
        _ => None,
    };
    match prompt {
        PromptSpec::Tokens(_) => {
            Err(ApiError::invalid("session", "sessions need a text or chat prompt, not token ids"))
        }
        PromptSpec::Chat(msgs) => {
            if stored_text.is_some() {
                return Err(ApiError::invalid(
                    "session",
                    format!("session `{name}` holds plain text; continue it with a completion"),
                ));
            }
            // Transcripts keep role and text only, so the whole conversation sent again
            // (with its tool calls and results) is recognised by those.
            let resent = msgs.len() >= transcript.messages.len()
                && msgs
                    .iter()
                    .zip(&transcript.messages)
                    .all(|(m, t)| m.role.as_str() == t.role && m.content == t.content);
            let full = if resent { msgs } else { transcript.to_chat().into_iter().chain(msgs).collect() };
            Ok((PromptSpec::Chat(full.clone()), Base::Chat(full)))
        }
        PromptSpec::Text(text) => {
            let full = match stored_text {
                Some(s) if !text.starts_with(s) => format!("{s}{text}"),
                Some(_) => text,
                None if transcript.messages.is_empty() => text,
                None => {
                    return Err(ApiError::invalid(
                        "session",
                        format!("session `{name}` holds a chat; continue it with a chat request"),
                    ));
                }
            };
            Ok((PromptSpec::Text(full.clone()), Base::Text(full)))
        }
    }
}

/// The prompt's token ids (a chat rendered with the template, its `tools` and `kwargs`,
/// an object or null), and whether the rendered chat leaves `<think>` open.
fn tokenize(
    state: &AppState,
    prompt: &PromptSpec,
    tools: &[serde_json::Value],
    kwargs: &serde_json::Value,
) -> Result<(Vec<u32>, bool), ApiError> {
    let engine = &state.engine;
    let tok = engine.tokenizer();
    let mut starts_thinking = false;
    let ids = match prompt {
        PromptSpec::Chat(msgs) => {
            if msgs.is_empty() {
                return Err(ApiError::invalid("messages", "messages must not be empty"));
            }
            let text = state
                .template()
                .render_chat(msgs, tools, true, kwargs)
                .map_err(|e| ApiError::from(lem_engine::EngineError::from(e)))?;
            starts_thinking = crate::reasoning::opens_thinking(&text);
            tok.encode(&text, Bos::ModelDefault).map_err(|e| ApiError::invalid("messages", e.to_string()))?
        }
        PromptSpec::Text(text) => {
            tok.encode(text, Bos::ModelDefault).map_err(|e| ApiError::invalid("prompt", e.to_string()))?
        }
        PromptSpec::Tokens(ids) => {
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= tok.vocab_size()) {
                return Err(ApiError::invalid(
                    "prompt",
                    format!("token id {bad} is outside the vocabulary of {}", tok.vocab_size()),
                ));
            }
            ids.clone()
        }
    };
    if ids.is_empty() {
        return Err(ApiError::invalid("prompt", "the prompt is empty"));
    }
    Ok((ids, starts_thinking))
}

impl Running {
    /// The next event; `None` once the job ended. A session is put back to sleep (in the
    /// background, holding its lock) when `Done` arrives.
    pub async fn next(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        let mut ev = self.rx.recv().await;
        match &mut ev {
            Some(Event::Done(done)) => {
                self.ended = true;
                let seq = done.seq.take();
                if let (Some(save), Some(seq)) = (self.save.take(), seq) {
                    self.sleep(save, seq, &done.text);
                }
            }
            Some(Event::Failed(_)) => self.ended = true,
            Some(Event::Token { .. }) => {}
            None => {
                self.ended = true;
                ev = Some(Event::Failed(ApiError::Internal("the engine stopped".into())));
            }
        }
        ev
    }

    fn sleep(&self, save: PendingSave, seq: Sequence, reply: &str) {
        let PendingSave { name, base, guard } = save;
        let transcript = match base {
            Base::Chat(mut msgs) => {
                msgs.push(ChatMessage::assistant(reply));
                Transcript::from_chat(&msgs)
            }
            Base::Text(text) => Transcript {
                messages: vec![TranscriptMessage { role: TEXT_ROLE.into(), content: format!("{text}{reply}") }],
            },
        };
        let (store, engine, metrics) =
            (self.state.sessions.clone(), self.state.engine.clone(), self.state.metrics.clone());
        self.state.background.spawn_blocking(move || {
            match store.sleep(&name, &engine, &seq, &transcript) {
                Ok(info) => {
                    metrics.session_sleeps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(session = name, tokens = info.tokens, bytes = info.bytes, "session saved");
                }
                Err(e) => tracing::error!(session = name, error = %e, "session save failed"),
            }
            drop(guard);
        });
    }

    /// Waits for the end (non-streaming responses).
    pub async fn collect(mut self) -> Result<Collected, ApiError> {
        let mut logprobs = Vec::new();
        loop {
            match self.next().await {
                Some(Event::Token { logprob: Some(lp), .. }) => logprobs.push(lp),
                Some(Event::Token { .. }) => {}
                Some(Event::Done(done)) => return Ok(Collected { logprobs, done }),
                Some(Event::Failed(e)) => return Err(e),
                None => return Err(ApiError::Internal("the engine stopped".into())),
            }
        }
    }

    /// The job's events as a stream of formatted items: `format` turns each event into
    /// zero or more items (the last event is `Done` or `Failed`).
    pub fn into_stream<T, F>(self, format: F) -> impl Stream<Item = T> + Send + 'static
    where
        T: Send + 'static,
        F: FnMut(Event) -> Vec<T> + Send + 'static,
    {
        futures_util::stream::unfold((self, format, VecDeque::new()), |(mut run, mut format, mut queue)| async move {
            loop {
                if let Some(item) = queue.pop_front() {
                    return Some((item, (run, format, queue)));
                }
                let ev = run.next().await?;
                queue.extend(format(ev));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript(msgs: &[ChatMessage]) -> Transcript {
        Transcript::from_chat(msgs)
    }

    #[test]
    fn chat_sessions_take_whole_or_new_messages() {
        let stored = vec![ChatMessage::user("hi"), ChatMessage::assistant("hello")];
        let t = transcript(&stored);
        // The whole conversation again, plus a new turn.
        let whole = vec![stored[0].clone(), stored[1].clone(), ChatMessage::user("more")];
        let (p, _) = merge("s", PromptSpec::Chat(whole.clone()), &t).unwrap();
        assert_eq!(p, PromptSpec::Chat(whole.clone()));
        // Only the new turn: appended.
        let (p, _) = merge("s", PromptSpec::Chat(vec![ChatMessage::user("more")]), &t).unwrap();
        assert_eq!(p, PromptSpec::Chat(whole));
        // A new session takes the request as is.
        let (p, _) = merge("s", PromptSpec::Chat(vec![ChatMessage::user("x")]), &Transcript::default()).unwrap();
        assert_eq!(p, PromptSpec::Chat(vec![ChatMessage::user("x")]));
        assert!(merge("s", PromptSpec::Text("x".into()), &t).is_err());
        // A conversation with a tool call and its result, sent again whole, keeps its
        // tool fields (the transcript has role and text only).
        let call = lem_tokenizer::ToolCall { id: "c".into(), name: "f".into(), arguments: serde_json::json!({}) };
        let tools = vec![
            ChatMessage::user("hi"),
            ChatMessage::assistant_calls("", vec![call]),
            ChatMessage::tool_result("42", Some("c".into()), None),
        ];
        let (p, _) = merge(
            "s",
            PromptSpec::Chat([tools.clone(), vec![ChatMessage::user("more")]].concat()),
            &transcript(&tools),
        )
        .unwrap();
        assert_eq!(p, PromptSpec::Chat([tools, vec![ChatMessage::user("more")]].concat()));
        assert!(merge("s", PromptSpec::Tokens(vec![1]), &Transcript::default()).is_err());
    }

    #[test]
    fn text_sessions_append() {
        let t =
            Transcript { messages: vec![TranscriptMessage { role: TEXT_ROLE.into(), content: "Once upon".into() }] };
        let (p, _) = merge("s", PromptSpec::Text(" a time".into()), &t).unwrap();
        assert_eq!(p, PromptSpec::Text("Once upon a time".into()));
        let (p, _) = merge("s", PromptSpec::Text("Once upon a time".into()), &t).unwrap();
        assert_eq!(p, PromptSpec::Text("Once upon a time".into()));
        assert!(merge("s", PromptSpec::Chat(vec![ChatMessage::user("x")]), &t).is_err());
    }
}
