//! Chat templates: the GGUF's Jinja template (rendered with minijinja the way Hugging Face
//! transformers renders it), or a built-in format when the file has none.

use std::collections::BTreeMap;

use minijinja::{Environment, Error, ErrorKind, Value};

use crate::error::TemplateError;
use crate::tokenizer::Tokenizer;

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The human.
    User,
    /// The model.
    Assistant,
    /// The result of a tool call, given back to the model.
    Tool,
}

impl Role {
    /// The role name chat templates expect: `"system"`, `"user"`, `"assistant"` or
    /// `"tool"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// A function call an assistant message made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The call's id (OpenAI `call_...`, Anthropic `toolu_...`); tool results refer to it.
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments, a JSON value (an object for every API lem serves). Templates see it
    /// as a mapping, as transformers passes it.
    pub arguments: serde_json::Value,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// What it says.
    pub content: String,
    /// Calls an assistant message made (empty for other messages).
    pub tool_calls: Vec<ToolCall>,
    /// For a tool result: the id of the call it answers.
    pub tool_call_id: Option<String>,
    /// For a tool result: the name of the function that produced it.
    pub name: Option<String>,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: Role, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role, content: content.into(), tool_calls: Vec::new(), tool_call_id: None, name: None }
    }

    /// An assistant message that calls tools (with optional text before the calls).
    pub fn assistant_calls(content: impl Into<String>, calls: Vec<ToolCall>) -> ChatMessage {
        ChatMessage { tool_calls: calls, ..ChatMessage::new(Role::Assistant, content) }
    }

    /// A tool result: `content` answers the call `tool_call_id` of function `name`.
    pub fn tool_result(content: impl Into<String>, tool_call_id: Option<String>, name: Option<String>) -> ChatMessage {
        ChatMessage { tool_call_id, name, ..ChatMessage::new(Role::Tool, content) }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new(Role::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        ChatMessage::new(Role::Assistant, content)
    }
}

/// Instructions one render may execute: real chat templates use a few thousand per
/// message; a render past this fails with [`TemplateError::Render`].
const RENDER_FUEL: u64 = 5_000_000;

/// Deepest nesting (macro calls, includes, nested blocks) one render may reach.
const RENDER_RECURSION: usize = 64;

/// Name under which the template source is registered in the environment.
const TEMPLATE_NAME: &str = "chat_template";

enum Inner {
    Jinja {
        env: Box<Environment<'static>>,
        source: String,
        bos_token: String,
        eos_token: String,
        /// Extra template variables given with [`ChatTemplate::with_kwargs`].
        kwargs: serde_json::Map<String, serde_json::Value>,
    },
    /// llama.cpp's built-in "gemma" format.
    Gemma,
    /// llama.cpp's built-in "chatml" format.
    ChatMl,
}

/// Turns a conversation into the prompt text a model was trained on.
pub struct ChatTemplate {
    inner: Inner,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Jinja { source, .. } => {
                f.debug_struct("ChatTemplate::Jinja").field("source_len", &source.len()).finish_non_exhaustive()
            }
            Inner::Gemma => f.write_str("ChatTemplate::Gemma"),
            Inner::ChatMl => f.write_str("ChatTemplate::ChatMl"),
        }
    }
}

impl ChatTemplate {
    /// The template for a model: the GGUF's `tokenizer.chat_template` if present;
    /// otherwise a built-in for the architecture (Gemma family: llama.cpp's "gemma"
    /// format, see [`ChatTemplate::gemma`]); otherwise ChatML ([`ChatTemplate::chatml`]).
    ///
    /// # Errors
    /// [`TemplateError::Syntax`] if the file's template does not compile.
    pub fn for_model(tok: &Tokenizer, architecture: &str) -> Result<ChatTemplate, TemplateError> {
        if let Some(src) = tok.chat_template_source() {
            let (bos, eos) = tok.template_special_texts();
            return ChatTemplate::from_source(src, bos, eos);
        }
        if architecture.starts_with("gemma") { Ok(ChatTemplate::gemma()) } else { Ok(ChatTemplate::chatml()) }
    }

    /// A named template that came with the tokenizer (a Hugging Face directory's
    /// tokenizer_config.json `chat_template` list, e.g. `"tool_use"`; `"default"` is the
    /// default template), or `None` when there is none of that name.
    ///
    /// # Errors
    /// [`TemplateError::Syntax`] if the template does not compile.
    pub fn for_model_named(tok: &Tokenizer, name: &str) -> Result<Option<ChatTemplate>, TemplateError> {
        let Some(src) = tok.chat_template_source_named(name) else {
            return Ok(None);
        };
        let (bos, eos) = tok.template_special_texts();
        ChatTemplate::from_source(src, bos, eos).map(Some)
    }

    /// The same template with extra variables for every render, like transformers'
    /// `apply_chat_template(..., **kwargs)` / an OpenAI request's `chat_template_kwargs`
    /// (e.g. `{"enable_thinking": false}` for Qwen 3). Replaces earlier ones; the built-in
    /// formats ignore them.
    ///
    /// # Errors
    /// [`TemplateError::Render`] if `kwargs` is not a JSON object (or null).
    pub fn with_kwargs(mut self, kwargs: serde_json::Value) -> Result<ChatTemplate, TemplateError> {
        let map = kwargs_object(&kwargs)?.clone();
        if let Inner::Jinja { kwargs, .. } = &mut self.inner {
            *kwargs = map;
        }
        Ok(self)
    }

    /// Compiles a Jinja chat template (Hugging Face conventions: `messages`,
    /// `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`,
    /// `strftime_now`, Python string/dict methods, loop controls; blocks trimmed like
    /// transformers' `trim_blocks` + `lstrip_blocks`).
    ///
    /// # Errors
    /// [`TemplateError::Syntax`] if the source does not compile.
    pub fn from_source(src: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Templates come with model files from anywhere: bound every render's work and
        // nesting so a hostile template fails with an error instead of running forever.
        env.set_fuel(Some(RENDER_FUEL));
        env.set_recursion_limit(RENDER_RECURSION);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, src.to_string()).map_err(|e| TemplateError::Syntax(describe(&e)))?;
        Ok(ChatTemplate {
            inner: Inner::Jinja {
                env: Box::new(env),
                source: src.to_string(),
                bos_token: bos_token.to_string(),
                eos_token: eos_token.to_string(),
                kwargs: serde_json::Map::new(),
            },
        })
    }

    /// llama.cpp's built-in "gemma" format: `<start_of_turn>{role}\n{content}<end_of_turn>\n`
    /// per message with contents trimmed, the assistant role written `model`, system
    /// messages prepended to the next user turn followed by `"\n\n"`, and
    /// `<start_of_turn>model\n` as the generation prompt. (BOS is not part of the text.)
    #[must_use]
    pub fn gemma() -> ChatTemplate {
        ChatTemplate { inner: Inner::Gemma }
    }

    /// llama.cpp's built-in "chatml" format:
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` per message, `<|im_start|>assistant\n`
    /// as the generation prompt.
    #[must_use]
    pub fn chatml() -> ChatTemplate {
        ChatTemplate { inner: Inner::ChatMl }
    }

    /// The Jinja source, for templates that have one (not the built-ins).
    #[must_use]
    pub fn source(&self) -> Option<&str> {
        match &self.inner {
            Inner::Jinja { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Renders a conversation; with `add_generation_prompt` the text ends with the opening
    /// of an assistant turn. The template sees the variables of [`ChatTemplate::with_kwargs`].
    ///
    /// # Errors
    /// [`TemplateError::Render`] with the template's own message (e.g. the text given to
    /// `raise_exception`) if rendering fails.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, TemplateError> {
        self.render_with_kwargs(messages, add_generation_prompt, &serde_json::Value::Null)
    }

    /// [`ChatTemplate::render`] with extra template variables (a JSON object, or null for
    /// none), which win over those of [`ChatTemplate::with_kwargs`]. `messages`,
    /// `add_generation_prompt`, `bos_token` and `eos_token` always have their own values.
    ///
    /// # Errors
    /// [`TemplateError::Render`] if `kwargs` is not an object or rendering fails.
    pub fn render_with_kwargs(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        kwargs: &serde_json::Value,
    ) -> Result<String, TemplateError> {
        self.render_chat(messages, &[], add_generation_prompt, kwargs)
    }

    /// Whether the template renders a `tools` list itself (its source names `tools`, as
    /// Hugging Face tool-calling templates do). The built-in formats do not.
    #[must_use]
    pub fn renders_tools(&self) -> bool {
        self.source().is_some_and(|s| s.contains("tools"))
    }

    /// [`ChatTemplate::render_with_kwargs`] with tool definitions: `tools` (OpenAI
    /// function definitions, `{"type": "function", "function": {name, description,
    /// parameters}}`) is the template's `tools` variable (`none` when empty, as
    /// transformers passes it), each message carries `tool_calls`
    /// (`[{id, type, function: {name, arguments}}]`, arguments a mapping) when it made
    /// calls and `tool_call_id` / `name` when it is a tool result. The built-in formats
    /// render tool results as a `tool` turn and ignore `tools`.
    ///
    /// # Errors
    /// [`TemplateError::Render`] if `kwargs` is not an object or rendering fails.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
        add_generation_prompt: bool,
        kwargs: &serde_json::Value,
    ) -> Result<String, TemplateError> {
        let call_kwargs = kwargs_object(kwargs)?;
        match &self.inner {
            Inner::Jinja { env, bos_token, eos_token, kwargs, .. } => {
                let msgs: Vec<Value> = messages.iter().map(message_value).collect();
                let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
                for (k, v) in kwargs.iter().chain(call_kwargs) {
                    ctx.insert(k.clone(), Value::from_serialize(v));
                }
                if !tools.is_empty() {
                    ctx.insert("tools".into(), Value::from_serialize(tools));
                } else {
                    ctx.entry("tools".into()).or_insert(Value::from(()));
                }
                ctx.insert("messages".into(), Value::from(msgs));
                ctx.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
                ctx.insert("bos_token".into(), Value::from(bos_token.as_str()));
                ctx.insert("eos_token".into(), Value::from(eos_token.as_str()));
                let tmpl = env.get_template(TEMPLATE_NAME).map_err(|e| TemplateError::Render(describe(&e)))?;
                tmpl.render(ctx).map_err(|e| TemplateError::Render(describe(&e)))
            }
            Inner::Gemma => Ok(render_gemma(messages, add_generation_prompt)),
            Inner::ChatMl => Ok(render_chatml(messages, add_generation_prompt)),
        }
    }
}

/// A message as Hugging Face templates see it: `role`, `content`, and `tool_calls`,
/// `tool_call_id`, `name` only where they are set (templates test `'tool_calls' in
/// message`).
fn message_value(m: &ChatMessage) -> Value {
    let mut obj = serde_json::Map::new();
    obj.insert("role".into(), m.role.as_str().into());
    obj.insert("content".into(), m.content.as_str().into());
    if !m.tool_calls.is_empty() {
        let calls: Vec<serde_json::Value> = m
            .tool_calls
            .iter()
            .map(|c| {
                serde_json::json!({
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                })
            })
            .collect();
        obj.insert("tool_calls".into(), calls.into());
    }
    if let Some(id) = &m.tool_call_id {
        obj.insert("tool_call_id".into(), id.as_str().into());
    }
    if let Some(name) = &m.name {
        obj.insert("name".into(), name.as_str().into());
    }
    Value::from_serialize(serde_json::Value::Object(obj))
}

/// The object of template kwargs (`null` is none).
fn kwargs_object(v: &serde_json::Value) -> Result<&serde_json::Map<String, serde_json::Value>, TemplateError> {
    static EMPTY: std::sync::OnceLock<serde_json::Map<String, serde_json::Value>> = std::sync::OnceLock::new();
    match v {
        serde_json::Value::Object(m) => Ok(m),
        serde_json::Value::Null => Ok(EMPTY.get_or_init(serde_json::Map::new)),
        _ => Err(TemplateError::Render("chat template kwargs must be a JSON object".into())),
    }
}

/// The error, its detail and its causes in one line-oriented message.
fn describe(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// transformers' `tojson`: Python's `json.dumps(x, ensure_ascii=False, indent=indent)`
/// (`", "` and `": "` separators, `","` before a newline when indented, no HTML escaping;
/// minijinja's own filter writes compact, HTML-escaped JSON, which is not what the models
/// were trained on).
fn tojson(value: &Value, indent: Option<Value>, kwargs: minijinja::value::Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = match kwargs.get::<Option<usize>>("indent")? {
        Some(n) => Some(n),
        None => indent.map(usize::try_from).transpose()?,
    };
    // transformers accepts `separators` and `sort_keys` too; only their defaults are
    // supported here.
    let _: Option<Value> = kwargs.get("separators")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json =
        serde_json::to_value(value).map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    python_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

/// Writes `v` the way Python's `json.dumps(v, ensure_ascii=False, indent=indent)` does.
fn python_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push_str(": ");
                python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// llama.cpp's `trim`: strips ASCII whitespace (`isspace`) at both ends.
fn trim_ascii_ws(s: &str) -> &str {
    s.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\x0B' | '\x0C' | '\r'))
}

fn render_gemma(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    let mut system_prompt = String::new();
    for m in messages {
        if m.role == Role::System {
            system_prompt.push_str(trim_ascii_ws(&m.content));
            continue;
        }
        let role = if m.role == Role::Assistant { "model" } else { m.role.as_str() };
        out.push_str("<start_of_turn>");
        out.push_str(role);
        out.push('\n');
        if !system_prompt.is_empty() && role != "model" {
            out.push_str(&system_prompt);
            out.push_str("\n\n");
            system_prompt.clear();
        }
        out.push_str(trim_ascii_ws(&m.content));
        out.push_str("<end_of_turn>\n");
    }
    if add_generation_prompt {
        out.push_str("<start_of_turn>model\n");
    }
    out
}

fn render_chatml(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str("<|im_start|>");
        out.push_str(m.role.as_str());
        out.push('\n');
        out.push_str(&m.content);
        out.push_str("<|im_end|>\n");
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}

/// `strftime_now(format)`: the current UTC time formatted with the common `strftime`
/// directives (`%Y %m %d %e %H %I %M %S %p %y %j %a %A %b %B %h %F %T %%`); others are
/// left as written.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    strftime(&format, secs)
}

/// Formats `secs` since the Unix epoch (UTC) with a subset of `strftime`.
fn strftime(format: &str, secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let days = (secs / 86_400) as i64;
    let tod = secs % 86_400;
    let (hour, min, sec) = (tod / 3600, (tod / 60) % 60, tod % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let day = doy_mar - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let month_name = MONTHS[(month - 1) as usize];
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('I') => out.push_str(&format!("{hour12:02}")),
            Some('M') => out.push_str(&format!("{min:02}")),
            Some('S') => out.push_str(&format!("{sec:02}")),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('b' | 'h') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('F') => out.push_str(&format!("{year}-{month:02}-{day:02}")),
            Some('T') => out.push_str(&format!("{hour:02}:{min:02}:{sec:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %a %A %b %B %j %I%p %%", t),
            "2024-02-29 13:05:09 Thu Thursday Feb February 060 01PM %"
        );
        assert_eq!(strftime("%d %b %Y", 0), "01 Jan 1970");
        assert_eq!(strftime("%F %T %q", 951_868_800), "2000-03-01 00:00:00 %q");
    }

    #[test]
    fn gemma_builtin_matches_llama_cpp_format() {
        let msgs = [
            ChatMessage::system("  Be brief. "),
            ChatMessage::user("Hi\n"),
            ChatMessage::assistant(" Hello! "),
            ChatMessage::user("Bye"),
        ];
        assert_eq!(
            render_gemma(&msgs, true),
            "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n\
             <start_of_turn>model\nHello!<end_of_turn>\n\
             <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
    }
}
