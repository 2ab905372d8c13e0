//! The streaming splitter: text deltas in, content deltas and completed tool calls out.
//! Text that may be the start of a call marker is held back until it is decided, so no
//! half marker ever reaches the content.

use serde_json::Value;

use super::format::ToolFormat;

/// A call parsed from the model's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    /// The function's name.
    pub name: String,
    /// The arguments (an object).
    pub arguments: Value,
}

/// One piece of the model's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text for the reply's content.
    Content(String),
    /// Reasoning text (between `<think>` and `</think>`).
    Reasoning(String),
    /// A complete tool call.
    Call(ParsedCall),
}

/// Bytes at the end of `buf` that may be the start of one of `markers` (the longest
/// proper prefix of a marker that `buf` ends with), on a character boundary.
pub(crate) fn held_back(buf: &str, markers: &[&str]) -> usize {
    let mut keep = 0;
    for m in markers {
        for k in (1..m.len().min(buf.len() + 1)).rev() {
            if k <= keep {
                break;
            }
            if buf.is_char_boundary(buf.len() - k) && m.is_char_boundary(k) && buf.ends_with(&m[..k]) {
                keep = k;
                break;
            }
        }
    }
    keep
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Ordinary text.
    Text,
    /// Inside a call that `opener` opened; a bare call (JSON at the start of the reply)
    /// keeps its opening character in the body.
    Call { opener: &'static str, bare: bool },
}

/// Splits a reply into content and the tool calls of one [`ToolFormat`].
#[derive(Debug, Clone)]
pub struct CallSplitter {
    format: ToolFormat,
    state: State,
    buf: String,
    /// Whitespace held at the end of the emitted content (dropped when a call follows,
    /// or at the end once a call was made).
    ws: String,
    /// Whether any non-whitespace content or call came before.
    started: bool,
    calls: usize,
}

impl CallSplitter {
    /// A splitter for `format`'s calls.
    #[must_use]
    pub fn new(format: ToolFormat) -> CallSplitter {
        CallSplitter { format, state: State::Text, buf: String::new(), ws: String::new(), started: false, calls: 0 }
    }

    /// Feeds a delta; returns what is decided.
    pub fn push(&mut self, delta: &str) -> Vec<Piece> {
        self.buf.push_str(delta);
        let mut out = Vec::new();
        self.drain(&mut out, false);
        out
    }

    /// Ends the reply: an unterminated call is parsed as it stands (a model may stop
    /// right after the JSON), or, if it does not parse, returned as content.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        self.drain(&mut out, true);
        if let State::Call { opener, bare } = self.state {
            let body = std::mem::take(&mut self.buf);
            self.close_call(opener, bare, &body, "", &mut out);
            self.state = State::Text;
        }
        let rest = std::mem::take(&mut self.buf);
        self.content(&rest, &mut out);
        if self.calls == 0 {
            let ws = std::mem::take(&mut self.ws);
            push_content(&mut out, ws);
        }
        out
    }

    fn drain(&mut self, out: &mut Vec<Piece>, at_end: bool) {
        loop {
            match self.state {
                State::Text => {
                    if !self.started {
                        let trimmed = self.buf.trim_start();
                        let lead = self.buf.len() - trimmed.len();
                        let openers = self.format.openers();
                        let marked = openers.iter().any(|o| trimmed.starts_with(o));
                        if !marked && !at_end && openers.iter().any(|o| o.starts_with(trimmed)) && !trimmed.is_empty() {
                            // Could still become a marker (`[TOOL_CALLS]` starts with `[`).
                            return;
                        }
                        let bare = if marked {
                            None
                        } else {
                            self.format.bare_openers().iter().find(|o| trimmed.starts_with(**o))
                        };
                        if let Some(opener) = bare {
                            // A bare JSON call at the very start of the reply (Llama 3,
                            // Mistral without its control token): the opener belongs
                            // to the body.
                            self.buf.drain(..lead);
                            self.started = true;
                            self.state = State::Call { opener, bare: true };
                            continue;
                        }
                        if trimmed.is_empty() && !at_end {
                            return;
                        }
                    }
                    let openers = self.format.openers();
                    let found = openers.iter().filter_map(|o| self.buf.find(o).map(|p| (p, *o))).min();
                    if let Some((pos, opener)) = found {
                        let before: String = self.buf.drain(..pos + opener.len()).collect();
                        self.content(&before[..pos], out);
                        self.ws.clear();
                        self.started = true;
                        self.state = State::Call { opener, bare: false };
                        continue;
                    }
                    let keep = if at_end { 0 } else { held_back(&self.buf, openers) };
                    let text: String = self.buf.drain(..self.buf.len() - keep).collect();
                    self.content(&text, out);
                    return;
                }
                State::Call { opener, bare } => {
                    let Some(closer) = self.format.closer() else { return };
                    let Some(pos) = self.buf.find(closer) else { return };
                    let body: String = self.buf.drain(..pos + closer.len()).collect();
                    self.close_call(opener, bare, &body[..pos], closer, out);
                    self.state = State::Text;
                }
            }
        }
    }

    /// Text for the content, with trailing whitespace held.
    fn content(&mut self, text: &str, out: &mut Vec<Piece>) {
        if text.is_empty() {
            return;
        }
        let body = text.trim_end();
        if body.is_empty() {
            self.ws.push_str(text);
            return;
        }
        let mut s = std::mem::take(&mut self.ws);
        s.push_str(body);
        self.ws.push_str(&text[body.len()..]);
        self.started = true;
        push_content(out, s);
    }

    fn close_call(&mut self, opener: &str, bare: bool, body: &str, closer: &str, out: &mut Vec<Piece>) {
        match self.format.parse_body(body) {
            Some(calls) if !calls.is_empty() => {
                self.calls += calls.len();
                out.extend(calls.into_iter().map(Piece::Call));
            }
            _ => {
                // Not a call after all: the text goes to the content as written.
                let shown = if bare { format!("{body}{closer}") } else { format!("{opener}{body}{closer}") };
                let mut s = std::mem::take(&mut self.ws);
                s.push_str(&shown);
                push_content(out, s);
            }
        }
    }
}

fn push_content(out: &mut Vec<Piece>, s: String) {
    if s.is_empty() {
        return;
    }
    if let Some(Piece::Content(last)) = out.last_mut() {
        last.push_str(&s);
    } else {
        out.push(Piece::Content(s));
    }
}
