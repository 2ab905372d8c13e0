//! Tool calls: function definitions and `tool_choice` from the three APIs, the messages
//! and `tools` a chat template gets, the per-family output formats ([`ToolFormat`]), the
//! streaming splitter that finds calls in the model's output ([`CallSplitter`]), and the
//! grammar that forces a call for `required` / a named function.
//!
//! A template that renders `tools` itself (Hugging Face tool-calling templates) gets
//! them as its `tools` variable and the messages as they are; for one that does not
//! (SmolLM2's, the built-in formats), the definitions and the format go into the system
//! prompt, past calls are written into the assistant text and tool results become user
//! turns, in the format the parser then reads.

mod format;
mod reply;
mod split;

pub use format::ToolFormat;
pub use reply::{Reply, ReplyParser};
pub use split::{CallSplitter, ParsedCall, Piece};

pub(crate) use split::held_back;

use lem_tokenizer::{ChatMessage, ChatTemplate, Role};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::params::{GenSpec, PromptSpec};
use crate::reasoning::ReasoningMode;
use crate::state::ServerState;

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionDef {
    /// Its name (letters, digits, `_`, `-`; at most 64).
    pub name: String,
    /// What it does.
    pub description: Option<String>,
    /// The JSON schema of its arguments (an object schema).
    pub parameters: Value,
}

impl FunctionDef {
    /// A checked definition.
    ///
    /// # Errors
    /// [`ApiError::InvalidRequest`] (param `tools`) for a bad name or a parameter schema
    /// that is not an object.
    pub fn new(name: String, description: Option<String>, parameters: Option<Value>) -> Result<FunctionDef, ApiError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(ApiError::invalid(
                "tools",
                format!("invalid function name `{name}`: use 1-64 letters, digits, '_' or '-'"),
            ));
        }
        let parameters = match parameters {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p,
            Some(_) => {
                return Err(ApiError::invalid(
                    "tools",
                    format!("the parameters of `{name}` must be a JSON schema object"),
                ));
            }
        };
        Ok(FunctionDef { name, description, parameters })
    }

    /// An OpenAI (and Ollama) tool: `{"type": "function", "function": {name, description,
    /// parameters}}`.
    ///
    /// # Errors
    /// [`ApiError::InvalidRequest`] for another tool type or a bad definition.
    pub fn from_openai(v: &Value) -> Result<FunctionDef, ApiError> {
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("function");
        if kind != "function" {
            return Err(ApiError::invalid(
                "tools",
                format!("tools of type `{kind}` are not supported (only function)"),
            ));
        }
        let Some(f) = v.get("function").and_then(Value::as_object) else {
            return Err(ApiError::invalid("tools", "a function tool needs a `function` object"));
        };
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let description = f.get("description").and_then(Value::as_str).map(str::to_owned);
        FunctionDef::new(name, description, f.get("parameters").cloned())
    }

    /// An Anthropic tool: `{name, description, input_schema}`.
    ///
    /// # Errors
    /// [`ApiError::InvalidRequest`] for a server tool (one with a `type`) or a bad
    /// definition.
    pub fn from_anthropic(v: &Value) -> Result<FunctionDef, ApiError> {
        if let Some(kind) = v.get("type").and_then(Value::as_str).filter(|k| *k != "custom") {
            return Err(ApiError::invalid(
                "tools",
                format!("tools of type `{kind}` are not supported (only custom tools)"),
            ));
        }
        let name = v.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let description = v.get("description").and_then(Value::as_str).map(str::to_owned);
        FunctionDef::new(name, description, v.get("input_schema").cloned())
    }

    /// The OpenAI-shaped definition templates read.
    #[must_use]
    pub fn openai_json(&self) -> Value {
        let mut f = serde_json::Map::new();
        f.insert("name".into(), self.name.clone().into());
        if let Some(d) = &self.description {
            f.insert("description".into(), d.clone().into());
        }
        f.insert("parameters".into(), self.parameters.clone());
        json!({"type": "function", "function": Value::Object(f)})
    }
}

/// Which calls the model may or must make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Whatever it writes (calls are parsed out).
    Auto,
    /// No tools: none rendered, nothing parsed.
    None,
    /// At least one call, of any tool (forced by a grammar).
    Required,
    /// A call of this function (forced by a grammar).
    Named(String),
}

impl ToolChoice {
    /// OpenAI's `tool_choice`: `"auto"`, `"none"`, `"required"` or
    /// `{"type": "function", "function": {"name": ...}}` (absent: auto).
    ///
    /// # Errors
    /// [`ApiError::InvalidRequest`] (param `tool_choice`) for anything else.
    pub fn from_openai(v: Option<&Value>) -> Result<ToolChoice, ApiError> {
        match v {
            None | Some(Value::Null) => Ok(ToolChoice::Auto),
            Some(Value::String(s)) => match s.as_str() {
                "auto" => Ok(ToolChoice::Auto),
                "none" => Ok(ToolChoice::None),
                "required" => Ok(ToolChoice::Required),
                other => Err(ApiError::invalid(
                    "tool_choice",
                    format!("unknown tool_choice `{other}` (use auto, none, required or a function)"),
                )),
            },
            Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
                Some(name) if v.get("type").and_then(Value::as_str) == Some("function") => {
                    Ok(ToolChoice::Named(name.to_owned()))
                }
                _ => Err(ApiError::invalid(
                    "tool_choice",
                    "tool_choice must be auto, none, required or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                )),
            },
        }
    }

    /// Anthropic's `tool_choice`: `{type: auto|any|tool|none, name, disable_parallel_tool_use}`;
    /// returns the choice and whether parallel calls are allowed.
    ///
    /// # Errors
    /// [`ApiError::InvalidRequest`] (param `tool_choice`) for anything else.
    pub fn from_anthropic(v: Option<&Value>) -> Result<(ToolChoice, bool), ApiError> {
        let Some(v) = v.filter(|v| !v.is_null()) else { return Ok((ToolChoice::Auto, true)) };
        let parallel = !v.get("disable_parallel_tool_use").and_then(Value::as_bool).unwrap_or(false);
        let choice = match (v.get("type").and_then(Value::as_str), v.get("name").and_then(Value::as_str)) {
            (Some("auto"), _) => ToolChoice::Auto,
            (Some("any"), _) => ToolChoice::Required,
            (Some("none"), _) => ToolChoice::None,
            (Some("tool"), Some(name)) => ToolChoice::Named(name.to_owned()),
            _ => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "tool_choice must be {\"type\": \"auto\" | \"any\" | \"none\"} or {\"type\": \"tool\", \"name\": ...}",
                ));
            }
        };
        Ok((choice, parallel))
    }
}

/// A request's tools, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolRequest {
    /// The definitions (empty: no tools).
    pub tools: Vec<FunctionDef>,
    /// The choice.
    pub choice: ToolChoice,
    /// Whether several calls may come in one reply.
    pub parallel: bool,
}

impl ToolRequest {
    /// Checks the choice against the tools: a named function must be defined, and
    /// `required` / a named choice need tools.
    ///
    /// # Errors
    /// [`ApiError::InvalidRequest`] (param `tool_choice`).
    pub fn new(tools: Vec<FunctionDef>, choice: ToolChoice, parallel: bool) -> Result<ToolRequest, ApiError> {
        match &choice {
            ToolChoice::Required if tools.is_empty() => {
                return Err(ApiError::invalid("tool_choice", "tool_choice requires tools, but none were given"));
            }
            ToolChoice::Named(name) if !tools.iter().any(|t| &t.name == name) => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("tool_choice names `{name}`, which is not in tools"),
                ));
            }
            _ => {}
        }
        Ok(ToolRequest { tools, choice, parallel })
    }

    /// The tools the model sees (none with `tool_choice: none`).
    #[must_use]
    pub fn offered(&self) -> &[FunctionDef] {
        if self.choice == ToolChoice::None { &[] } else { &self.tools }
    }

    /// Whether the reply is parsed for calls.
    #[must_use]
    pub fn parses(&self) -> bool {
        !self.offered().is_empty()
    }

    /// The Lark grammar forcing calls (`required`, a named function), or `None`.
    #[must_use]
    pub fn grammar(&self, format: ToolFormat) -> Option<String> {
        let tools: Vec<&FunctionDef> = match &self.choice {
            ToolChoice::Required => self.tools.iter().collect(),
            ToolChoice::Named(name) => self.tools.iter().filter(|t| &t.name == name).collect(),
            ToolChoice::Auto | ToolChoice::None => return None,
        };
        Some(format.grammar(&tools, self.parallel))
    }
}

/// The messages and `tools` variable for `template` (whose calls are in `format`):
/// unchanged with the definitions as `tools` when the template renders tools; otherwise
/// the definitions and format in the system prompt, past calls written into assistant
/// text and tool results as user turns (`<tool_response>` blocks).
#[must_use]
pub fn render_inputs(
    template: &ChatTemplate,
    format: ToolFormat,
    messages: Vec<ChatMessage>,
    tools: &[FunctionDef],
) -> (Vec<ChatMessage>, Vec<Value>) {
    if template.renders_tools() {
        return (messages, tools.iter().map(FunctionDef::openai_json).collect());
    }
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    for m in messages {
        match m.role {
            Role::Assistant if !m.tool_calls.is_empty() => {
                let mut text = m.content.clone();
                for c in &m.tool_calls {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&format.write_call(&c.name, &c.arguments));
                }
                out.push(ChatMessage::assistant(text));
            }
            Role::Tool => {
                let block = format!("<tool_response>\n{}\n</tool_response>", m.content);
                match out.last_mut() {
                    Some(prev) if prev.role == Role::User && prev.content.ends_with("</tool_response>") => {
                        prev.content.push('\n');
                        prev.content.push_str(&block);
                    }
                    _ => out.push(ChatMessage::user(block)),
                }
            }
            _ => out.push(m),
        }
    }
    if !tools.is_empty() {
        let text = format.instructions(tools);
        match out.first_mut() {
            Some(first) if first.role == Role::System => {
                first.content = format!("{}\n\n{text}", first.content);
            }
            _ => out.insert(0, ChatMessage::system(text)),
        }
    }
    (out, Vec::new())
}

/// Applies a request's tools to its spec: the chat messages and `tools` variable the
/// template gets ([`render_inputs`]) and, for `required` / a named function, the grammar
/// that forces the calls (checked to compile here, so a bad parameter schema is a 400).
///
/// # Errors
/// [`ApiError::InvalidRequest`] when a forced call meets another grammar
/// (`response_format`, `grammar`), or the call grammar does not compile.
pub fn apply(state: &ServerState, request: &ToolRequest, spec: &mut GenSpec) -> Result<(), ApiError> {
    let format = state.tool_format;
    if let PromptSpec::Chat(msgs) = &mut spec.prompt {
        let (msgs2, tools) = render_inputs(state.template(), format, std::mem::take(msgs), request.offered());
        *msgs = msgs2;
        spec.tools = tools;
    }
    if let Some(lark) = request.grammar(format) {
        if spec.grammar.is_some() {
            return Err(ApiError::invalid(
                "tool_choice",
                "a required or named tool_choice cannot be combined with response_format or a grammar",
            ));
        }
        spec.grammar = Some(crate::params::checked(&state.engine, lem_engine::Grammar::Lark(lark), "tools")?);
    }
    Ok(())
}

/// The parser of a reply to a request with `request`'s tools, reasoning handled as `mode`.
#[must_use]
pub fn reply_parser(
    state: &ServerState,
    request: &ToolRequest,
    mode: ReasoningMode,
    starts_thinking: bool,
) -> ReplyParser {
    ReplyParser::new(mode, starts_thinking, request.parses().then_some(state.tool_format))
}

/// The arguments of a call in a request (OpenAI sends a JSON string, Ollama an object).
///
/// # Errors
/// [`ApiError::InvalidRequest`] (param `messages`) if it is neither an object nor a JSON
/// string of one.
pub fn arguments_in(v: Value) -> Result<Value, ApiError> {
    match v {
        Value::Object(_) => Ok(v),
        Value::Null => Ok(json!({})),
        Value::String(s) if s.trim().is_empty() => Ok(json!({})),
        Value::String(s) => match serde_json::from_str::<Value>(&s) {
            Ok(v @ Value::Object(_)) => Ok(v),
            _ => Err(ApiError::invalid("messages", format!("tool call arguments are not a JSON object: {s}"))),
        },
        other => Err(ApiError::invalid("messages", format!("tool call arguments are not a JSON object: {other}"))),
    }
}

#[cfg(test)]
mod tests;
