//! The API-independent request: what every endpoint's JSON is checked and turned into.
//!
//! The OpenAI, Anthropic and Ollama handlers each parse their own request shape, then
//! build a [`GenSpec`] through the checks here, so that a limit means the same on every
//! route (and is unit-tested once).

use std::sync::atomic::{AtomicU64, Ordering};

use lem_engine::constraint::json_kind;
use lem_engine::sampling::SamplingParams;
use lem_engine::{Engine, Grammar};
use lem_tokenizer::{ChatMessage, Role};
use serde::Deserialize;

use crate::error::ApiError;

/// The prompt before the chat template is applied.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptSpec {
    /// A conversation, rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
    /// Plain text, tokenized as is (special-token text is parsed).
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
}

/// A checked generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenSpec {
    /// The prompt.
    pub prompt: PromptSpec,
    /// Most new tokens; `None` runs until end of generation or a full context.
    pub max_tokens: Option<usize>,
    /// Sampling parameters (checked).
    pub sampling: SamplingParams,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Report log-probabilities with this many alternatives per token.
    pub top_logprobs: Option<usize>,
    /// Continue and update this named session.
    pub session: Option<String>,
    /// Extra chat-template variables (a JSON object, or null for none): an OpenAI chat
    /// request's `chat_template_kwargs`, e.g. `{"enable_thinking": false}` for Qwen 3.
    pub template_kwargs: serde_json::Value,
    /// Constrained decoding (`response_format`, `grammar`, `regex`, Ollama `format`),
    /// already checked to compile.
    pub grammar: Option<lem_engine::Grammar>,
    /// Tool definitions for the chat template's `tools` variable (OpenAI function
    /// objects; empty: none). See [`crate::tools::render_inputs`].
    pub tools: Vec<serde_json::Value>,
    /// Whether the server's speculative decoding (`--draft`) applies; a request opts out
    /// with `"speculative": false`. The output is the same either way.
    pub speculative: bool,
}

/// Checks `chat_template_kwargs`: absent or null means none; otherwise it must be a JSON
/// object (its keys become template variables).
pub fn template_kwargs(v: Option<serde_json::Value>) -> Result<serde_json::Value, ApiError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(serde_json::Value::Null),
        Some(v @ serde_json::Value::Object(_)) => Ok(v),
        Some(other) => Err(ApiError::invalid(
            "chat_template_kwargs",
            format!("chat_template_kwargs must be a JSON object, got {}", json_kind(&other)),
        )),
    }
}

/// The constrained-decoding fields of an OpenAI chat or completions body: OpenAI
/// `response_format`, llama-server's `grammar` (GBNF, or Lark after `%llguidance`) and
/// `json_schema`, and lem's `regex`. At most one may constrain a request.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct GrammarFields {
    /// `{"type": "text"}`, `{"type": "json_object"}` (llama-server: with an optional
    /// `schema`) or `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`.
    pub response_format: Option<serde_json::Value>,
    /// A GBNF grammar, or Lark when it starts with `%llguidance`.
    pub grammar: Option<String>,
    /// A JSON Schema (llama-server's field).
    pub json_schema: Option<serde_json::Value>,
    /// A regular expression the whole output must match (lem's extension).
    pub regex: Option<String>,
}

impl GrammarFields {
    /// The grammar these fields ask for and the field it came from (`None`: unconstrained).
    ///
    /// # Errors
    /// [`ApiError::InvalidRequest`] for a malformed `response_format`, or when more than
    /// one field constrains the request.
    pub fn parse(&self) -> Result<Option<(Grammar, &'static str)>, ApiError> {
        let mut found: Vec<(Grammar, &'static str)> = Vec::new();
        if let Some(rf) = &self.response_format
            && let Some(g) = response_format(rf)?
        {
            found.push((g, "response_format"));
        }
        if let Some(g) = &self.grammar {
            found.push((Grammar::from_llama_grammar(g), "grammar"));
        }
        if let Some(schema) = &self.json_schema {
            found.push((Grammar::JsonSchema(schema.clone()), "json_schema"));
        }
        if let Some(rx) = &self.regex {
            found.push((Grammar::Regex(rx.clone()), "regex"));
        }
        if found.len() > 1 {
            let names: Vec<&str> = found.iter().map(|(_, n)| *n).collect();
            return Err(ApiError::invalid(
                names[1],
                format!(
                    "give at most one of response_format, grammar, json_schema and regex (got {})",
                    names.join(", ")
                ),
            ));
        }
        Ok(found.pop())
    }

    /// [`GrammarFields::parse`], then compiled once against `engine`'s vocabulary, so a
    /// schema llguidance cannot handle is a 400 naming the field.
    ///
    /// # Errors
    /// As `parse`, and [`ApiError::InvalidRequest`] with llguidance's message.
    pub fn grammar(&self, engine: &Engine) -> Result<Option<Grammar>, ApiError> {
        self.parse()?.map(|(g, param)| checked(engine, g, param)).transpose()
    }
}

/// OpenAI's `response_format` object as a grammar (`None` for `text`).
fn response_format(v: &serde_json::Value) -> Result<Option<Grammar>, ApiError> {
    const P: &str = "response_format";
    let kind = v.get("type").and_then(serde_json::Value::as_str);
    match kind {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(match v.get("schema") {
            Some(schema) => Grammar::JsonSchema(schema.clone()),
            None => Grammar::JsonObject,
        })),
        Some("json_schema") => {
            let Some(js) = v.get("json_schema").filter(|js| js.is_object()) else {
                return Err(ApiError::invalid(P, "response_format of type json_schema needs a json_schema object"));
            };
            match js.get("schema") {
                Some(schema) => Ok(Some(Grammar::JsonSchema(schema.clone()))),
                None => Err(ApiError::invalid(P, "response_format.json_schema needs a schema")),
            }
        }
        Some(other) => Err(ApiError::invalid(
            P,
            format!("unknown response_format type {other:?} (expected text, json_object or json_schema)"),
        )),
        None => Err(ApiError::invalid(P, "response_format must be an object with a type")),
    }
}

/// Ollama's `format`: `"json"` (any JSON object), a JSON Schema object, or `""`/null for
/// none; compiled once against `engine`'s vocabulary.
///
/// # Errors
/// [`ApiError::InvalidRequest`] (param `format`) for another value or a schema that does
/// not compile.
pub fn ollama_format(v: Option<&serde_json::Value>, engine: &Engine) -> Result<Option<Grammar>, ApiError> {
    let g = match v {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::String(s)) if s.is_empty() => return Ok(None),
        Some(serde_json::Value::String(s)) if s == "json" => Grammar::JsonObject,
        Some(schema @ serde_json::Value::Object(_)) => Grammar::JsonSchema(schema.clone()),
        Some(other) => {
            return Err(ApiError::invalid(
                "format",
                format!("format must be \"json\" or a JSON schema object, got {}", json_kind(other)),
            ));
        }
    };
    checked(engine, g, "format").map(Some)
}

/// `g` if it compiles against `engine`'s vocabulary; otherwise a 400 naming `param`.
pub(crate) fn checked(engine: &Engine, g: Grammar, param: &str) -> Result<Grammar, ApiError> {
    let compiled = engine.constraint_factory().and_then(|f| f.compile(&g));
    match compiled {
        Ok(_) => Ok(g),
        Err(e) => Err(ApiError::invalid(param, e.to_string())),
    }
}

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl StopField {
    /// The stop strings, checked: at most [`MAX_STOPS`], none empty.
    pub fn into_vec(field: Option<StopField>) -> Result<Vec<String>, ApiError> {
        let v = match field {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s],
            Some(StopField::Many(v)) => v,
        };
        if v.len() > MAX_STOPS {
            return Err(ApiError::invalid(
                "stop",
                format!("at most {MAX_STOPS} stop strings are allowed, got {}", v.len()),
            ));
        }
        if v.iter().any(String::is_empty) {
            return Err(ApiError::invalid("stop", "stop strings must not be empty"));
        }
        Ok(v)
    }
}

/// Most stop strings per request.
pub const MAX_STOPS: usize = 16;

/// Message content: a string, or a list of parts of which only text is supported.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts (`{"type": "text", "text": ...}`).
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ContentPart {
    /// The part's type; only `"text"` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a text part.
    #[serde(default)]
    pub text: Option<String>,
}

impl Content {
    /// The text, with text parts joined; other parts are refused.
    pub fn into_text(content: Option<Content>, param: &str) -> Result<String, ApiError> {
        match content {
            None => Ok(String::new()),
            Some(Content::Text(s)) => Ok(s),
            Some(Content::Parts(parts)) => {
                let mut out = String::new();
                for p in parts {
                    match (p.kind.as_str(), p.text) {
                        ("text" | "input_text", Some(t)) => out.push_str(&t),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                param,
                                format!("content parts of type `{kind}` are not supported (only text)"),
                            ));
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

/// A chat role name as the APIs spell it.
pub fn role(name: &str) -> Result<Role, ApiError> {
    match name {
        "system" | "developer" => Ok(Role::System),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        "tool" => Ok(Role::Tool),
        other => Err(ApiError::invalid(
            "messages",
            format!("unsupported message role `{other}` (use system, user, assistant or tool)"),
        )),
    }
}

/// Checks `max_tokens` (any API's spelling of it) against the context.
pub fn max_tokens(value: Option<i64>, param: &str, ctx: usize) -> Result<Option<usize>, ApiError> {
    match value {
        None => Ok(None),
        Some(n) if n < 1 => Err(ApiError::invalid(param, format!("{param} must be at least 1, got {n}"))),
        Some(n) if n as u64 > ctx as u64 => Err(ApiError::invalid(
            param,
            format!("{param} is too large: {n}; this server's context holds {ctx} tokens"),
        )),
        Some(n) => Ok(Some(n as usize)),
    }
}

/// Sampling fields common to the APIs; `None` takes the API's default. The OpenAI and
/// Ollama request types flatten it into their bodies.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize)]
pub struct SamplingFields {
    /// Temperature.
    pub temperature: Option<f32>,
    /// Nucleus threshold.
    pub top_p: Option<f32>,
    /// Top-k.
    pub top_k: Option<i64>,
    /// Min-p.
    pub min_p: Option<f32>,
    /// Repeat penalty (llama.cpp style).
    pub repeat_penalty: Option<f32>,
    /// Presence penalty.
    pub presence_penalty: Option<f32>,
    /// Frequency penalty.
    pub frequency_penalty: Option<f32>,
    /// Seed.
    pub seed: Option<i64>,
}

/// An API's defaults and allowed ranges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingRules {
    /// Temperature when none is given.
    pub default_temperature: f32,
    /// Highest temperature accepted.
    pub max_temperature: f32,
    /// Top-k when none is given (0: off).
    pub default_top_k: usize,
    /// Top-p when none is given.
    pub default_top_p: f32,
}

/// OpenAI's: temperature 1 by default, at most 2.
pub const OPENAI: SamplingRules =
    SamplingRules { default_temperature: 1.0, max_temperature: 2.0, default_top_k: 0, default_top_p: 1.0 };
/// Anthropic's: temperature 1 by default, at most 1.
pub const ANTHROPIC: SamplingRules =
    SamplingRules { default_temperature: 1.0, max_temperature: 1.0, default_top_k: 0, default_top_p: 1.0 };
/// Ollama's: temperature 0.8, top-k 40, top-p 0.9.
pub const OLLAMA: SamplingRules =
    SamplingRules { default_temperature: 0.8, max_temperature: 100.0, default_top_k: 40, default_top_p: 0.9 };

impl SamplingFields {
    /// Checks the fields against `rules` and builds the parameters (a random seed when
    /// none is given).
    pub fn params(&self, rules: &SamplingRules) -> Result<SamplingParams, ApiError> {
        let temperature = self.temperature.unwrap_or(rules.default_temperature);
        if !(temperature.is_finite() && (0.0..=rules.max_temperature).contains(&temperature)) {
            return Err(ApiError::invalid(
                "temperature",
                format!("temperature must be between 0 and {}, got {temperature}", rules.max_temperature),
            ));
        }
        let top_p = self.top_p.unwrap_or(rules.default_top_p);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid("top_p", format!("top_p must be in (0, 1], got {top_p}")));
        }
        let top_k = match self.top_k {
            None => rules.default_top_k,
            Some(k) if k < 0 => return Err(ApiError::invalid("top_k", format!("top_k must be >= 0, got {k}"))),
            Some(k) => k as usize,
        };
        let min_p = self.min_p.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&min_p) {
            return Err(ApiError::invalid("min_p", format!("min_p must be in [0, 1], got {min_p}")));
        }
        let repeat_penalty = self.repeat_penalty.unwrap_or(1.0);
        if !(repeat_penalty.is_finite() && repeat_penalty > 0.0) {
            return Err(ApiError::invalid(
                "repeat_penalty",
                format!("repeat_penalty must be > 0, got {repeat_penalty}"),
            ));
        }
        let penalty = |v: Option<f32>, name: &str| -> Result<f32, ApiError> {
            let v = v.unwrap_or(0.0);
            if !(-2.0..=2.0).contains(&v) {
                return Err(ApiError::invalid(name, format!("{name} must be between -2 and 2, got {v}")));
            }
            Ok(v)
        };
        let presence_penalty = penalty(self.presence_penalty, "presence_penalty")?;
        let frequency_penalty = penalty(self.frequency_penalty, "frequency_penalty")?;
        let seed = self.seed.map_or_else(random_seed, |s| s as u64);
        let p = SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            presence_penalty,
            frequency_penalty,
            penalty_last_n: 64,
            seed,
        };
        p.validate().map_err(|e| ApiError::InvalidRequest { message: e.to_string(), param: None })?;
        Ok(p)
    }
}

/// A seed from the clock, different for every call.
fn random_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    // SplitMix64 of the clock and a counter.
    let mut z = nanos ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Checks a requested number of log-probability alternatives.
pub fn top_logprobs(n: Option<i64>, param: &str, max: usize) -> Result<usize, ApiError> {
    match n {
        None => Ok(0),
        Some(n) if n < 0 || n as u64 > max as u64 => {
            Err(ApiError::invalid(param, format!("{param} must be between 0 and {max}, got {n}")))
        }
        Some(n) => Ok(n as usize),
    }
}

/// Checks a session name.
pub fn session_name(name: Option<String>) -> Result<Option<String>, ApiError> {
    match name {
        Some(n) if !lem_state::valid_session_name(&n) => Err(ApiError::invalid(
            "session",
            format!(
                "invalid session name `{n}`: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
            ),
        )),
        other => Ok(other),
    }
}

/// The names the served model answers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelNames {
    /// The name reported in responses (the alias when the file is a packaged model).
    pub primary: String,
    /// Every accepted name (primary, file name, file stem, `default`).
    pub accepted: Vec<String>,
}

impl ModelNames {
    /// The names for the model file at `path`, given as `arg` on the command line.
    pub fn for_model(path: &std::path::Path, arg: &str) -> ModelNames {
        let file = path.file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        let alias = lem_hub::registry().iter().find(|s| s.file_name == file).map(|s| s.alias.to_owned());
        let primary = alias.clone().unwrap_or_else(|| file.clone());
        let stem = path.file_stem().map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        let mut accepted = vec![primary.clone()];
        for n in [alias, Some(file), Some(stem), Some(arg.to_owned()), Some("default".to_owned())].into_iter().flatten()
        {
            if !n.is_empty() && !accepted.contains(&n) {
                accepted.push(n);
            }
        }
        ModelNames { primary, accepted }
    }

    /// Accepts a requested model name (absent means the default; Ollama's `:latest` tag
    /// is ignored).
    pub fn check(&self, requested: Option<&str>) -> Result<(), ApiError> {
        let Some(name) = requested else { return Ok(()) };
        let bare = name.strip_suffix(":latest").unwrap_or(name);
        if self.accepted.iter().any(|a| a == name || a == bare) {
            Ok(())
        } else {
            Err(ApiError::ModelNotFound { requested: name.to_owned(), served: self.primary.clone() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: serde_json::Value) -> GrammarFields {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn response_format_and_grammar_fields_become_grammars() {
        use serde_json::json;
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let cases = [
            (json!({}), None),
            (json!({"response_format": {"type": "text"}}), None),
            (json!({"response_format": {"type": "json_object"}}), Some((Grammar::JsonObject, "response_format"))),
            (
                json!({"response_format": {"type": "json_object", "schema": schema}}),
                Some((Grammar::JsonSchema(schema.clone()), "response_format")),
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}}}),
                Some((Grammar::JsonSchema(schema.clone()), "response_format")),
            ),
            (json!({"grammar": "root ::= \"a\""}), Some((Grammar::Gbnf("root ::= \"a\"".into()), "grammar"))),
            (
                json!({"grammar": "%llguidance {}\nstart: \"a\""}),
                Some((Grammar::Lark("%llguidance {}\nstart: \"a\"".into()), "grammar")),
            ),
            (json!({"json_schema": schema}), Some((Grammar::JsonSchema(schema.clone()), "json_schema"))),
            (json!({"regex": "[0-9]+"}), Some((Grammar::Regex("[0-9]+".into()), "regex"))),
        ];
        for (body, want) in cases {
            assert_eq!(fields(body.clone()).parse().unwrap(), want, "{body}");
        }
        for (body, msg) in [
            (json!({"response_format": {"type": "xml"}}), "unknown response_format type \"xml\""),
            (json!({"response_format": {"type": "json_schema"}}), "needs a json_schema object"),
            (json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}), "needs a schema"),
            (json!({"response_format": "json"}), "must be an object with a type"),
            (json!({"regex": "a", "grammar": "root ::= \"a\""}), "at most one of"),
        ] {
            let e = fields(body.clone()).parse().unwrap_err();
            assert!(e.to_string().contains(msg), "{body}: {e}");
        }
    }

    #[test]
    fn template_kwargs_must_be_an_object() {
        assert_eq!(template_kwargs(None), Ok(serde_json::Value::Null));
        assert_eq!(template_kwargs(Some(serde_json::Value::Null)), Ok(serde_json::Value::Null));
        let obj = serde_json::json!({"enable_thinking": false});
        assert_eq!(template_kwargs(Some(obj.clone())), Ok(obj));
        for bad in [serde_json::json!("x"), serde_json::json!([1]), serde_json::json!(true), serde_json::json!(3)] {
            let e = template_kwargs(Some(bad)).unwrap_err();
            assert!(e.to_string().contains("chat_template_kwargs must be a JSON object"), "{e}");
        }
    }

    #[test]
    fn max_tokens_limits() {
        assert_eq!(max_tokens(None, "max_tokens", 100), Ok(None));
        assert_eq!(max_tokens(Some(1), "max_tokens", 100), Ok(Some(1)));
        assert_eq!(max_tokens(Some(100), "max_tokens", 100), Ok(Some(100)));
        for bad in [0, -1, -1_000_000, 101, i64::MAX] {
            let e = max_tokens(Some(bad), "max_tokens", 100).unwrap_err();
            assert_eq!(e.status().as_u16(), 400, "{bad}");
            assert!(matches!(e, ApiError::InvalidRequest { ref param, .. } if param.as_deref() == Some("max_tokens")));
        }
    }

    #[test]
    fn sampling_defaults_and_ranges() {
        let p = SamplingFields { seed: Some(5), ..Default::default() }.params(&OPENAI).unwrap();
        assert_eq!((p.temperature, p.top_p, p.top_k, p.seed), (1.0, 1.0, 0, 5));
        let p = SamplingFields { seed: Some(-1), ..Default::default() }.params(&OLLAMA).unwrap();
        assert_eq!((p.temperature, p.top_k, p.seed), (0.8, 40, u64::MAX));
        let greedy = SamplingFields { temperature: Some(0.0), ..Default::default() }.params(&OPENAI).unwrap();
        assert!(greedy.is_greedy());
        let bad = [
            SamplingFields { temperature: Some(-0.5), ..Default::default() },
            SamplingFields { temperature: Some(2.5), ..Default::default() },
            SamplingFields { temperature: Some(f32::NAN), ..Default::default() },
            SamplingFields { top_p: Some(0.0), ..Default::default() },
            SamplingFields { top_p: Some(1.5), ..Default::default() },
            SamplingFields { top_k: Some(-3), ..Default::default() },
            SamplingFields { min_p: Some(2.0), ..Default::default() },
            SamplingFields { repeat_penalty: Some(0.0), ..Default::default() },
            SamplingFields { presence_penalty: Some(3.0), ..Default::default() },
            SamplingFields { frequency_penalty: Some(-2.5), ..Default::default() },
        ];
        for f in bad {
            assert_eq!(f.params(&OPENAI).unwrap_err().status().as_u16(), 400, "{f:?}");
        }
        assert!(SamplingFields { temperature: Some(1.5), ..Default::default() }.params(&ANTHROPIC).is_err());
        // Random seeds differ.
        let a = SamplingFields::default().params(&OPENAI).unwrap().seed;
        let b = SamplingFields::default().params(&OPENAI).unwrap().seed;
        assert_ne!(a, b);
    }

    #[test]
    fn stops_content_roles() {
        assert_eq!(StopField::into_vec(None).unwrap(), Vec::<String>::new());
        let one: StopField = serde_json::from_str(r#""\n""#).unwrap();
        assert_eq!(StopField::into_vec(Some(one)).unwrap(), vec!["\n"]);
        let many: StopField = serde_json::from_str(r#"["a","b"]"#).unwrap();
        assert_eq!(StopField::into_vec(Some(many)).unwrap(), vec!["a", "b"]);
        assert!(StopField::into_vec(Some(StopField::Many(vec![String::new()]))).is_err());
        assert!(StopField::into_vec(Some(StopField::Many(vec!["x".into(); 17]))).is_err());
        assert!(serde_json::from_str::<StopField>("3").is_err());

        let c: Content = serde_json::from_str(r#"[{"type":"text","text":"a"},{"type":"text","text":"b"}]"#).unwrap();
        assert_eq!(Content::into_text(Some(c), "messages").unwrap(), "ab");
        let c: Content = serde_json::from_str(r#"[{"type":"image_url","image_url":{"url":"x"}}]"#).unwrap();
        assert!(Content::into_text(Some(c), "messages").is_err());
        assert_eq!(Content::into_text(None, "messages").unwrap(), "");

        assert_eq!(role("developer").unwrap(), Role::System);
        assert_eq!(role("tool").unwrap(), Role::Tool);
        assert!(role("function").is_err());
        assert_eq!(top_logprobs(Some(20), "top_logprobs", 20), Ok(20));
        assert!(top_logprobs(Some(21), "top_logprobs", 20).is_err());
        assert!(top_logprobs(Some(-1), "top_logprobs", 20).is_err());
        assert!(session_name(Some("../etc".into())).is_err());
        assert_eq!(session_name(Some("alice-1".into())), Ok(Some("alice-1".into())));
    }

    #[test]
    fn model_names() {
        let names = ModelNames::for_model("/m/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), "smollm2-135m");
        assert_eq!(names.primary, "smollm2-135m");
        for ok in ["smollm2-135m", "smollm2-135m:latest", "SmolLM2-135M-Instruct.Q4_1.gguf", "default"] {
            assert_eq!(names.check(Some(ok)), Ok(()), "{ok}");
        }
        assert_eq!(names.check(None), Ok(()));
        let e = names.check(Some("gpt-4o")).unwrap_err();
        assert_eq!((e.status().as_u16(), e.code()), (404, Some("model_not_found")));
        let other = ModelNames::for_model("/x/my-model.gguf".as_ref(), "/x/my-model.gguf");
        assert_eq!(other.primary, "my-model.gguf");
        assert!(other.check(Some("my-model")).is_ok());
        assert!(other.check(Some("/x/my-model.gguf")).is_ok());
    }
}
