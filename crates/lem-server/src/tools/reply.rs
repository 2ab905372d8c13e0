//! One reply's output parsing: reasoning split off first, then tool calls out of what is
//! left.

use super::format::ToolFormat;
use super::split::{CallSplitter, ParsedCall, Piece};
use crate::reasoning::{ReasoningMode, ThinkSplitter};

/// Turns a reply's text deltas into content, reasoning and call pieces.
#[derive(Debug, Clone)]
pub struct ReplyParser {
    think: Option<ThinkSplitter>,
    hide: bool,
    calls: Option<CallSplitter>,
}

/// A whole parsed reply (non-streaming responses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// The content text.
    pub content: String,
    /// The reasoning, when captured and there was some.
    pub reasoning: Option<String>,
    /// The tool calls, in order.
    pub calls: Vec<ParsedCall>,
}

impl ReplyParser {
    /// A parser: reasoning handled as `mode` (`starts_thinking`: the prompt left a
    /// `<think>` open, so the reply starts inside it), calls parsed in `format` (`None`:
    /// no tool parsing).
    #[must_use]
    pub fn new(mode: ReasoningMode, starts_thinking: bool, format: Option<ToolFormat>) -> ReplyParser {
        ReplyParser {
            think: (mode != ReasoningMode::Show).then(|| ThinkSplitter::new(starts_thinking)),
            hide: mode == ReasoningMode::Hide,
            calls: format.map(CallSplitter::new),
        }
    }

    /// Whether the parser changes anything (otherwise deltas are content as they are).
    #[must_use]
    pub fn is_identity(&self) -> bool {
        self.think.is_none() && self.calls.is_none()
    }

    /// Feeds a delta; returns the pieces decided so far.
    pub fn push(&mut self, delta: &str) -> Vec<Piece> {
        let pieces = match &mut self.think {
            Some(t) => t.push(delta),
            None => vec![Piece::Content(delta.to_owned())],
        };
        let mut out = Vec::new();
        self.route(pieces, &mut out);
        out
    }

    /// Ends the reply; returns what was held.
    pub fn finish(&mut self) -> Vec<Piece> {
        let pieces = self.think.as_mut().map(ThinkSplitter::finish).unwrap_or_default();
        let mut out = Vec::new();
        self.route(pieces, &mut out);
        if let Some(c) = &mut self.calls {
            out.extend(c.finish());
        }
        out
    }

    fn route(&mut self, pieces: Vec<Piece>, out: &mut Vec<Piece>) {
        for p in pieces {
            match p {
                Piece::Reasoning(_) if self.hide => {}
                Piece::Content(text) => match &mut self.calls {
                    Some(c) => out.extend(c.push(&text)),
                    None if text.is_empty() => {}
                    None => out.push(Piece::Content(text)),
                },
                other => out.push(other),
            }
        }
    }

    /// Parses a whole reply.
    #[must_use]
    pub fn parse(mut self, text: &str) -> Reply {
        let mut pieces = self.push(text);
        pieces.extend(self.finish());
        Reply::collect(pieces)
    }
}

impl Reply {
    /// A reply from its pieces.
    #[must_use]
    pub fn collect(pieces: impl IntoIterator<Item = Piece>) -> Reply {
        let mut r = Reply::default();
        for p in pieces {
            match p {
                Piece::Content(t) => r.content.push_str(&t),
                Piece::Reasoning(t) => r.reasoning.get_or_insert_with(String::new).push_str(&t),
                Piece::Call(c) => r.calls.push(c),
            }
        }
        r
    }
}
