//! Tool-call formats of the model families: how a template's model writes a call, how
//! to read it back, how to ask for it when the template does not render tools, and the
//! Lark grammar that forces it.

use serde_json::Value;

use super::FunctionDef;
use super::split::ParsedCall;

/// A family's tool-call format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// Hermes / Qwen 2.5 / Qwen 3 / SmolLM3: `<tool_call>\n{"name": .., "arguments": ..}\n</tool_call>`,
    /// one block per call. Also the format lem asks for when a template does not render
    /// tools (SmolLM2's, ChatML).
    Hermes,
    /// Llama 3.1+: a JSON object `{"name": .., "parameters": ..}` as the whole reply,
    /// optionally after `<|python_tag|>`; several separated by `;`.
    Llama3,
    /// Mistral: `[TOOL_CALLS][{"name": .., "arguments": ..}, ...]`.
    Mistral,
    /// Gemma: a fenced block, ```` ```tool_code ```` (or ```` ```json ````) holding a
    /// JSON call or a list of them.
    Gemma,
}

impl ToolFormat {
    /// The format of a chat template, from its source (`None` for the built-in formats)
    /// and the model's architecture.
    #[must_use]
    pub fn detect(source: Option<&str>, architecture: &str) -> ToolFormat {
        match source {
            Some(s) if s.contains("[TOOL_CALLS]") => ToolFormat::Mistral,
            Some(s) if s.contains("<tool_call>") => ToolFormat::Hermes,
            Some(s) if s.contains("<|python_tag|>") || (s.contains("<|start_header_id|>") && s.contains("tools")) => {
                ToolFormat::Llama3
            }
            Some(s) if s.contains("tool_code") => ToolFormat::Gemma,
            None if architecture.starts_with("gemma") => ToolFormat::Gemma,
            _ => ToolFormat::Hermes,
        }
    }

    /// The format's name, as logs and docs say it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "hermes",
            ToolFormat::Llama3 => "llama3",
            ToolFormat::Mistral => "mistral",
            ToolFormat::Gemma => "gemma",
        }
    }

    /// Markers that open a call anywhere in the reply.
    pub(crate) fn openers(self) -> &'static [&'static str] {
        match self {
            ToolFormat::Hermes => &["<tool_call>"],
            ToolFormat::Llama3 => &["<|python_tag|>"],
            ToolFormat::Mistral => &["[TOOL_CALLS]"],
            ToolFormat::Gemma => &["```tool_code", "```json"],
        }
    }

    /// Openers that count only at the very start of the reply and belong to the body
    /// (a bare JSON call).
    pub(crate) fn bare_openers(self) -> &'static [&'static str] {
        match self {
            ToolFormat::Llama3 => &["{"],
            ToolFormat::Mistral => &["["],
            ToolFormat::Hermes | ToolFormat::Gemma => &[],
        }
    }

    /// The marker that closes a call (`None`: the call runs to the end of the reply).
    pub(crate) fn closer(self) -> Option<&'static str> {
        match self {
            ToolFormat::Hermes => Some("</tool_call>"),
            ToolFormat::Gemma => Some("```"),
            ToolFormat::Llama3 | ToolFormat::Mistral => None,
        }
    }

    /// The calls in a call's body, or `None` if it is not one (bad JSON, no name).
    pub(crate) fn parse_body(self, body: &str) -> Option<Vec<ParsedCall>> {
        let mut calls = Vec::new();
        // One or more JSON values, separated by whitespace or `;` (Llama 3's parallel calls).
        let mut rest = body.trim();
        while !rest.is_empty() {
            let mut it = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
            let value = it.next()?.ok()?;
            rest = rest[it.byte_offset()..].trim_start().trim_start_matches(';').trim_start();
            match value {
                Value::Array(items) => {
                    for item in items {
                        calls.push(call_of(item)?);
                    }
                }
                other => calls.push(call_of(other)?),
            }
        }
        Some(calls)
    }

    /// A call as the model writes it (for past calls when the template does not render
    /// them).
    #[must_use]
    pub fn write_call(self, name: &str, arguments: &Value) -> String {
        let call = |args_key: &str| {
            let mut obj = serde_json::Map::new();
            obj.insert("name".into(), name.into());
            obj.insert(args_key.into(), arguments.clone());
            Value::Object(obj).to_string()
        };
        match self {
            ToolFormat::Hermes => format!("<tool_call>\n{}\n</tool_call>", call("arguments")),
            ToolFormat::Llama3 => call("parameters"),
            ToolFormat::Mistral => format!("[TOOL_CALLS][{}]", call("arguments")),
            ToolFormat::Gemma => format!("```tool_code\n{}\n```", call("arguments")),
        }
    }

    /// System-prompt text that describes `tools` and this format, for templates that do
    /// not render tools themselves.
    #[must_use]
    pub fn instructions(self, tools: &[FunctionDef]) -> String {
        let defs: Vec<String> = tools.iter().map(|t| t.openai_json().to_string()).collect();
        let defs = defs.join("\n");
        let example = self.write_call("<function-name>", &Value::String("<args-json-object>".into()));
        format!(
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
             You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{defs}\n</tools>\n\n\
             For each function call, return a json object with function name and arguments in this format:\n{example}"
        )
    }

    /// A Lark grammar (llguidance's dialect) whose sentences are calls of `tools` in this
    /// format, each call's arguments `%json` of the function's parameter schema; one call,
    /// or one or more when `parallel`.
    #[must_use]
    pub fn grammar(self, tools: &[&FunctionDef], parallel: bool) -> String {
        let args_key = if self == ToolFormat::Llama3 { "parameters" } else { "arguments" };
        let schemas: Vec<String> = tools.iter().map(|t| call_schema(t, args_key)).collect();
        let call =
            if schemas.len() == 1 { schemas[0].clone() } else { format!("{{\"anyOf\": [{}]}}", schemas.join(", ")) };
        let (one, sep) = match self {
            ToolFormat::Hermes => ("\"<tool_call>\\n\" call \"\\n</tool_call>\"", "\"\\n\""),
            ToolFormat::Gemma => ("\"```tool_code\\n\" call \"\\n```\"", "\"\\n\""),
            // The markers of these two are control tokens; the grammar writes the bare
            // JSON, which the parser accepts at the start of the reply.
            ToolFormat::Llama3 => ("call", "\"; \""),
            ToolFormat::Mistral => ("\"[\" call \"]\"", ""),
        };
        let start = match (self, parallel) {
            (_, false) => format!("start: {one}"),
            (ToolFormat::Mistral, true) => {
                format!("start: \"[\" {}\"]\"", at_most("call", "\", \"", MAX_PARALLEL_CALLS))
            }
            (_, true) => format!("start: {}\none: {one}", at_most("one", sep, MAX_PARALLEL_CALLS)),
        };
        format!("{start}\ncall: %json {call}\n")
    }

    /// A new call id in the shape this format's templates check (Mistral's: 9
    /// alphanumerics), with `prefix` (`call_`, `toolu_`) for the others.
    #[must_use]
    pub fn call_id(self, prefix: &str) -> String {
        match self {
            ToolFormat::Mistral => random_alnum(9),
            _ => format!("{prefix}{}", random_alnum(24)),
        }
    }
}

/// Most calls a forced reply may make when parallel calls are allowed: a small model
/// that repeats its call would otherwise fill the context with copies.
pub const MAX_PARALLEL_CALLS: usize = 8;

/// `item`, then up to `n - 1` more after `sep`, as nested optionals (Lark has no bounded
/// repetition llguidance is sure to take): `item (sep item (sep item)?)?`.
fn at_most(item: &str, sep: &str, n: usize) -> String {
    let mut rule = String::new();
    for _ in 1..n {
        rule = format!("({sep} {item} {rule})?");
    }
    format!("{item} {rule}")
}

/// The JSON schema of one call object: `name` (that function's, exactly) then the
/// arguments under `args_key`, validated by the function's parameter schema. Written by
/// hand so that `name` comes first whatever order the JSON map keeps.
fn call_schema(t: &FunctionDef, args_key: &str) -> String {
    format!(
        "{{\"type\": \"object\", \"properties\": {{\"name\": {{\"const\": {}}}, \"{args_key}\": {}}}, \
         \"required\": [\"name\", \"{args_key}\"], \"additionalProperties\": false}}",
        Value::String(t.name.clone()),
        closed(&t.parameters)
    )
}

/// `schema` with `"additionalProperties": false` on every object schema that lists
/// `properties` and does not say (OpenAI's strict mode does the same): arguments still
/// validate against the original schema, and a small model cannot ramble on inventing
/// keys until its token budget ends.
fn closed(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let v = match k.as_str() {
                    "properties" | "$defs" | "definitions" | "patternProperties" => match v {
                        Value::Object(props) => {
                            Value::Object(props.iter().map(|(name, s)| (name.clone(), closed(s))).collect())
                        }
                        other => other.clone(),
                    },
                    "items" | "additionalItems" | "not" => closed(v),
                    "anyOf" | "oneOf" | "allOf" | "prefixItems" => match v {
                        Value::Array(items) => Value::Array(items.iter().map(closed).collect()),
                        other => other.clone(),
                    },
                    _ => v.clone(),
                };
                out.insert(k.clone(), v);
            }
            if out.contains_key("properties") && !out.contains_key("additionalProperties") {
                out.insert("additionalProperties".into(), Value::Bool(false));
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// A call object: `name` and `arguments` / `parameters` (an object, or a JSON string of
/// one, as some models write it).
fn call_of(v: Value) -> Option<ParsedCall> {
    let Value::Object(mut obj) = v else { return None };
    // OpenAI-shaped `{"function": {...}}` too.
    if let Some(Value::Object(f)) = obj.remove("function") {
        obj = f;
    }
    let Some(Value::String(name)) = obj.remove("name") else { return None };
    if name.is_empty() {
        return None;
    }
    let args =
        obj.remove("arguments").or_else(|| obj.remove("parameters")).unwrap_or(Value::Object(Default::default()));
    let arguments = match args {
        Value::String(s) => match serde_json::from_str::<Value>(&s) {
            Ok(v @ Value::Object(_)) => v,
            _ => return None,
        },
        v @ Value::Object(_) => v,
        Value::Null => Value::Object(Default::default()),
        _ => return None,
    };
    Some(ParsedCall { name, arguments })
}

/// `n` random letters and digits (clock and counter through SplitMix64; ids, not secrets).
fn random_alnum(n: usize) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0x5EED);
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    (0..n)
        .map(|_| {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^= x >> 31;
            ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}
