//! Reasoning: `<think>...</think>` at the start of a reply (Qwen 3, SmolLM3, DeepSeek-R1
//! distills), or the whole reply up to `</think>` when the prompt already opened
//! `<think>`. `--reasoning show` leaves it inline, `hide` drops it, `capture` (the
//! default) returns it separately (OpenAI `reasoning_content`, Anthropic `thinking`
//! blocks, Ollama `message.thinking`).

use crate::error::ApiError;
use crate::tools::{Piece, held_back};

/// Opens reasoning.
pub const THINK_OPEN: &str = "<think>";
/// Closes reasoning.
pub const THINK_CLOSE: &str = "</think>";

/// What happens to reasoning text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReasoningMode {
    /// Left in the content, as the model wrote it.
    Show,
    /// Dropped.
    Hide,
    /// Returned apart from the content.
    #[default]
    Capture,
}

impl ReasoningMode {
    /// `show`, `hide` or `capture`; llama-server's `reasoning_format` words `none`
    /// (show) and `deepseek` / `auto` (capture) are accepted too.
    ///
    /// # Errors
    /// [`ApiError::InvalidRequest`] (param `param`) for another word.
    pub fn parse(s: &str, param: &str) -> Result<ReasoningMode, ApiError> {
        match s {
            "show" | "none" => Ok(ReasoningMode::Show),
            "hide" => Ok(ReasoningMode::Hide),
            "capture" | "deepseek" | "auto" => Ok(ReasoningMode::Capture),
            other => {
                Err(ApiError::invalid(param, format!("unknown reasoning mode `{other}` (use show, hide or capture)")))
            }
        }
    }

    /// The mode's name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ReasoningMode::Show => "show",
            ReasoningMode::Hide => "hide",
            ReasoningMode::Capture => "capture",
        }
    }
}

impl std::str::FromStr for ReasoningMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ReasoningMode::parse(s, "reasoning").map_err(|e| e.to_string())
    }
}

/// Whether a rendered prompt leaves `<think>` open (its generation prompt ends inside a
/// thinking block, so the reply starts in it).
#[must_use]
pub fn opens_thinking(prompt: &str) -> bool {
    match prompt.rfind(THINK_OPEN) {
        Some(open) => !prompt[open..].contains(THINK_CLOSE),
        None => false,
    }
}

/// Sets the chat-template variable `key` to `value` unless the request's
/// `chat_template_kwargs` already set it (`kwargs` is an object or null).
pub fn default_kwarg(kwargs: &mut serde_json::Value, key: &str, value: serde_json::Value) {
    if kwargs.is_null() {
        *kwargs = serde_json::Value::Object(serde_json::Map::new());
    }
    if let Some(map) = kwargs.as_object_mut() {
        map.entry(key.to_owned()).or_insert(value);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace yet: `<think>` may still come.
    Before,
    /// In the reasoning.
    Inside,
    /// Right after `</think>`: whitespace is skipped.
    Closed,
    /// In the answer.
    After,
}

/// Splits reasoning from content, streaming (text that may be half a marker is held).
#[derive(Debug, Clone)]
pub struct ThinkSplitter {
    state: State,
    buf: String,
}

impl ThinkSplitter {
    /// A splitter; `inside`: the reply starts inside the reasoning.
    #[must_use]
    pub fn new(inside: bool) -> ThinkSplitter {
        ThinkSplitter { state: if inside { State::Inside } else { State::Before }, buf: String::new() }
    }

    /// Feeds a delta.
    pub fn push(&mut self, delta: &str) -> Vec<Piece> {
        self.buf.push_str(delta);
        let mut out = Vec::new();
        self.drain(&mut out, false);
        out
    }

    /// Ends the reply (an unclosed reasoning block is all reasoning).
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        self.drain(&mut out, true);
        out
    }

    fn drain(&mut self, out: &mut Vec<Piece>, at_end: bool) {
        loop {
            match self.state {
                State::Before => {
                    let t = self.buf.trim_start();
                    if let Some(rest) = t.strip_prefix(THINK_OPEN) {
                        self.buf = rest.to_owned();
                        self.state = State::Inside;
                    } else if !at_end && THINK_OPEN.starts_with(t) {
                        return;
                    } else {
                        self.state = State::After;
                    }
                }
                State::Inside => {
                    if let Some(pos) = self.buf.find(THINK_CLOSE) {
                        let text: String = self.buf.drain(..pos + THINK_CLOSE.len()).collect();
                        emit(out, Piece::Reasoning(text[..pos].to_owned()));
                        self.state = State::Closed;
                        continue;
                    }
                    let keep = if at_end { 0 } else { held_back(&self.buf, &[THINK_CLOSE]) };
                    let text: String = self.buf.drain(..self.buf.len() - keep).collect();
                    emit(out, Piece::Reasoning(text));
                    return;
                }
                State::Closed => {
                    let t = self.buf.trim_start();
                    if t.is_empty() {
                        self.buf.clear();
                        return;
                    }
                    self.buf = t.to_owned();
                    self.state = State::After;
                }
                State::After => {
                    let text = std::mem::take(&mut self.buf);
                    emit(out, Piece::Content(text));
                    return;
                }
            }
        }
    }
}

fn emit(out: &mut Vec<Piece>, p: Piece) {
    match &p {
        Piece::Reasoning(t) | Piece::Content(t) if t.is_empty() => {}
        _ => out.push(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(inside: bool, text: &str) -> (String, String) {
        let mut s = ThinkSplitter::new(inside);
        let mut pieces = s.push(text);
        pieces.extend(s.finish());
        collect(pieces)
    }

    fn collect(pieces: Vec<Piece>) -> (String, String) {
        let (mut r, mut c) = (String::new(), String::new());
        for p in pieces {
            match p {
                Piece::Reasoning(t) => r.push_str(&t),
                Piece::Content(t) => c.push_str(&t),
                Piece::Call(_) => panic!("no calls here"),
            }
        }
        (r, c)
    }

    #[test]
    fn splits_think_blocks() {
        assert_eq!(split_all(false, "<think>a b</think>\n\nanswer"), ("a b".into(), "answer".into()));
        assert_eq!(split_all(false, "\n<think>x</think>y"), ("x".into(), "y".into()));
        assert_eq!(split_all(true, "still thinking</think>done"), ("still thinking".into(), "done".into()));
        // Unclosed: all reasoning.
        assert_eq!(split_all(true, "cut off"), ("cut off".into(), String::new()));
        assert_eq!(split_all(false, "<think>cut"), ("cut".into(), String::new()));
        // `<think>` later in the reply is content.
        assert_eq!(split_all(false, "hi <think>x</think>"), (String::new(), "hi <think>x</think>".into()));
        assert_eq!(split_all(false, "<thin"), (String::new(), "<thin".into()));
        assert_eq!(split_all(false, ""), (String::new(), String::new()));
    }

    #[test]
    fn streaming_at_every_split_equals_one_shot() {
        for (inside, text) in [
            (false, "<think>é <b> </thin k</think>\n answer </think>"),
            (true, "reason </ </think> done"),
            (false, "  plain <think> text"),
        ] {
            let whole = split_all(inside, text);
            let chars: Vec<(usize, char)> = text.char_indices().collect();
            // Every char a delta.
            let mut s = ThinkSplitter::new(inside);
            let mut pieces = Vec::new();
            for (_, c) in &chars {
                pieces.extend(s.push(&c.to_string()));
            }
            pieces.extend(s.finish());
            assert_eq!(collect(pieces), whole, "{text:?} char by char");
            // Every two-piece split.
            for (i, _) in chars {
                let mut s = ThinkSplitter::new(inside);
                let mut pieces = s.push(&text[..i]);
                pieces.extend(s.push(&text[i..]));
                pieces.extend(s.finish());
                assert_eq!(collect(pieces), whole, "{text:?} split at {i}");
            }
        }
    }

    #[test]
    fn prompt_detection_and_modes() {
        assert!(opens_thinking("<|im_start|>assistant\n<think>\n"));
        assert!(!opens_thinking("<think>\n\n</think>\n\n"));
        assert!(!opens_thinking("<|im_start|>assistant\n"));
        assert_eq!(ReasoningMode::parse("none", "r").unwrap(), ReasoningMode::Show);
        assert_eq!("hide".parse::<ReasoningMode>().unwrap(), ReasoningMode::Hide);
        assert!(
            ReasoningMode::parse("loud", "reasoning_format").unwrap_err().to_string().contains("show, hide or capture")
        );
    }
}
