use serde_json::json;

use super::*;
use crate::reasoning::ReasoningMode;

fn call(name: &str, arguments: Value) -> ParsedCall {
    ParsedCall { name: name.into(), arguments }
}

fn one_shot(format: ToolFormat, text: &str) -> Reply {
    ReplyParser::new(ReasoningMode::Show, false, Some(format)).parse(text)
}

fn check_streaming(format: ToolFormat, text: &str) -> Reply {
    check_streaming_in(ReasoningMode::Show, false, format, text)
}

/// Streams `text` char by char and at every two-piece split; each must give the one-shot
/// reply, and no content delta may carry part of a marker.
fn check_streaming_in(mode: ReasoningMode, thinking: bool, format: ToolFormat, text: &str) -> Reply {
    let parser = || ReplyParser::new(mode, thinking, Some(format));
    let whole = parser().parse(text);
    let chars: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let mut p = parser();
    let mut pieces = Vec::new();
    for (k, &i) in chars.iter().enumerate() {
        let end = chars.get(k + 1).copied().unwrap_or(text.len());
        pieces.extend(p.push(&text[i..end]));
    }
    pieces.extend(p.finish());
    if !whole.calls.is_empty() {
        for piece in &pieces {
            if let Piece::Content(t) = piece {
                for marker in format.openers() {
                    assert!(!marker.starts_with(t.trim()) || t.trim().is_empty(), "{text:?}: half marker {t:?} leaked");
                }
            }
        }
    }
    assert_eq!(Reply::collect(pieces), whole, "{text:?} char by char");
    for &i in &chars {
        let mut p = parser();
        let mut pieces = p.push(&text[..i]);
        pieces.extend(p.push(&text[i..]));
        pieces.extend(p.finish());
        assert_eq!(Reply::collect(pieces), whole, "{text:?} split at {i}");
    }
    whole
}

#[test]
fn hermes_single_parallel_and_text() {
    let r = check_streaming(
        ToolFormat::Hermes,
        "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n\
         <tool_call>\n{\"name\": \"get_time\", \"arguments\": \"{\\\"tz\\\": \\\"CET\\\"}\"}\n</tool_call>\n",
    );
    assert_eq!(r.content, "Let me check.");
    assert_eq!(r.calls, vec![call("get_weather", json!({"city": "Paris"})), call("get_time", json!({"tz": "CET"}))]);
    // No call: the text as written, trailing whitespace and all.
    let r = check_streaming(ToolFormat::Hermes, "Just text <tool_ x\n");
    assert_eq!((r.content.as_str(), r.calls.len()), ("Just text <tool_ x\n", 0));
    // A broken call stays text; an unterminated but complete one is a call.
    let r = check_streaming(ToolFormat::Hermes, "<tool_call>{\"name\": oops}</tool_call> ok");
    assert_eq!((r.content.as_str(), r.calls.len()), ("<tool_call>{\"name\": oops}</tool_call> ok", 0));
    let r = check_streaming(ToolFormat::Hermes, "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}");
    assert_eq!((r.content.as_str(), r.calls), ("", vec![call("f", json!({}))]));
}

#[test]
fn llama3_bare_json_and_python_tag() {
    let r = check_streaming(ToolFormat::Llama3, " {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}");
    assert_eq!((r.content.as_str(), r.calls), ("", vec![call("get_weather", json!({"city": "Oslo"}))]));
    let r = check_streaming(
        ToolFormat::Llama3,
        "<|python_tag|>{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": {\"x\": 1}}",
    );
    assert_eq!(r.calls, vec![call("a", json!({})), call("b", json!({"x": 1}))]);
    // JSON that is not a call is content; braces later in the text are not calls.
    let r = check_streaming(ToolFormat::Llama3, "{\"answer\": 42}");
    assert_eq!((r.content.as_str(), r.calls.len()), ("{\"answer\": 42}", 0));
    let r = check_streaming(ToolFormat::Llama3, "Use {\"name\": \"a\"} like this");
    assert_eq!(r.calls.len(), 0);
}

#[test]
fn mistral_tool_calls_array() {
    let r = check_streaming(
        ToolFormat::Mistral,
        "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"q\": \"x\"}, \"id\": \"abcDEF123\"}, {\"name\": \"b\", \"arguments\": {}}]",
    );
    assert_eq!(r.calls, vec![call("a", json!({"q": "x"})), call("b", json!({}))]);
    let r = check_streaming(ToolFormat::Mistral, "[{\"name\": \"a\", \"arguments\": {}}]");
    assert_eq!(r.calls, vec![call("a", json!({}))]);
    let r = check_streaming(ToolFormat::Mistral, "[1, 2] are numbers");
    assert_eq!((r.content.as_str(), r.calls.len()), ("[1, 2] are numbers", 0));
}

#[test]
fn gemma_fenced_blocks() {
    let r = check_streaming(
        ToolFormat::Gemma,
        "Sure.\n```tool_code\n{\"name\": \"f\", \"arguments\": {\"n\": 2}}\n```\n```json\n[{\"name\": \"g\"}]\n```",
    );
    assert_eq!(r.content, "Sure.");
    assert_eq!(r.calls, vec![call("f", json!({"n": 2})), call("g", json!({}))]);
    let r = check_streaming(ToolFormat::Gemma, "Code:\n```python\nprint(1)\n```");
    assert_eq!((r.content.as_str(), r.calls.len()), ("Code:\n```python\nprint(1)\n```", 0));
}

#[test]
fn reasoning_then_calls_streaming() {
    let r = check_streaming_in(
        ReasoningMode::Capture,
        false,
        ToolFormat::Hermes,
        "<think>look up</think>\n\nOK <tool_call>\n{\"name\": \"w\", \"arguments\": {\"c\": 1}}\n</tool_call>",
    );
    assert_eq!((r.reasoning.as_deref(), r.content.as_str()), (Some("look up"), "OK"));
    assert_eq!(r.calls, vec![call("w", json!({"c": 1}))]);
    let r = check_streaming_in(
        ReasoningMode::Capture,
        true,
        ToolFormat::Llama3,
        "hmm</think>{\"name\": \"w\", \"parameters\": {}}",
    );
    assert_eq!((r.reasoning.as_deref(), r.content.as_str(), r.calls.len()), (Some("hmm"), "", 1));
}

#[test]
fn reasoning_then_calls() {
    let text = "<think>need weather</think>\n<tool_call>\n{\"name\": \"w\", \"arguments\": {}}\n</tool_call>";
    let r = ReplyParser::new(ReasoningMode::Capture, false, Some(ToolFormat::Hermes)).parse(text);
    assert_eq!((r.reasoning.as_deref(), r.content.as_str(), r.calls.len()), (Some("need weather"), "", 1));
    let r = ReplyParser::new(ReasoningMode::Hide, false, Some(ToolFormat::Hermes)).parse(text);
    assert_eq!((r.reasoning, r.calls.len()), (None, 1));
    let r = ReplyParser::new(ReasoningMode::Show, false, None).parse(text);
    assert_eq!((r.content.as_str(), r.calls.len()), (text, 0));
}

#[test]
fn detection_from_templates() {
    assert_eq!(ToolFormat::detect(Some("{{ '<tool_call>' }} tools"), "qwen2"), ToolFormat::Hermes);
    assert_eq!(ToolFormat::detect(Some("[AVAILABLE_TOOLS] [TOOL_CALLS]"), "llama"), ToolFormat::Mistral);
    assert_eq!(ToolFormat::detect(Some("<|start_header_id|>{% if tools %}"), "llama"), ToolFormat::Llama3);
    assert_eq!(ToolFormat::detect(None, "gemma3"), ToolFormat::Gemma);
    assert_eq!(ToolFormat::detect(Some("<|im_start|>{{ m.content }}"), "llama"), ToolFormat::Hermes);
}

#[test]
fn choices_and_definitions() {
    let def = FunctionDef::from_openai(
        &json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}),
    )
    .unwrap();
    assert_eq!(def.name, "f");
    assert!(FunctionDef::from_openai(&json!({"type": "code_interpreter"})).is_err());
    assert!(FunctionDef::from_openai(&json!({"type": "function", "function": {"name": "bad name"}})).is_err());
    assert!(FunctionDef::from_anthropic(&json!({"name": "f", "input_schema": 3})).is_err());
    assert!(FunctionDef::from_anthropic(&json!({"type": "web_search_20250305", "name": "web_search"})).is_err());
    assert_eq!(ToolChoice::from_openai(Some(&json!("required"))).unwrap(), ToolChoice::Required);
    assert_eq!(
        ToolChoice::from_openai(Some(&json!({"type": "function", "function": {"name": "f"}}))).unwrap(),
        ToolChoice::Named("f".into())
    );
    assert!(ToolChoice::from_openai(Some(&json!("always"))).is_err());
    assert_eq!(
        ToolChoice::from_anthropic(Some(&json!({"type": "tool", "name": "f", "disable_parallel_tool_use": true})))
            .unwrap(),
        (ToolChoice::Named("f".into()), false)
    );
    assert!(ToolRequest::new(vec![def.clone()], ToolChoice::Named("g".into()), true).is_err());
    assert!(ToolRequest::new(vec![], ToolChoice::Required, true).is_err());
    let req = ToolRequest::new(vec![def], ToolChoice::None, true).unwrap();
    assert!(!req.parses() && req.grammar(ToolFormat::Hermes).is_none());
}

#[test]
fn grammars_name_the_function_and_embed_its_schema() {
    let f = FunctionDef::new(
        "get_weather".into(),
        None,
        Some(json!({"type": "object", "properties": {"city": {"type": "string"}}})),
    )
    .unwrap();
    let req = ToolRequest::new(vec![f], ToolChoice::Required, false).unwrap();
    let g = req.grammar(ToolFormat::Hermes).unwrap();
    assert!(g.starts_with("start: \"<tool_call>\\n\" call \"\\n</tool_call>\"\ncall: %json {"), "{g}");
    assert!(g.contains("\"name\": {\"const\": \"get_weather\"}, \"arguments\": {"), "{g}");
    let parallel = ToolRequest { parallel: true, ..req }.grammar(ToolFormat::Llama3).unwrap();
    let first = parallel.lines().next().unwrap();
    assert_eq!(first.matches("one").count(), format::MAX_PARALLEL_CALLS, "{parallel}");
    assert!(
        parallel.starts_with("start: one (\"; \" one (\"; \" one ") && parallel.contains("\"parameters\""),
        "{parallel}"
    );
}

#[test]
fn templates_without_tools_get_them_in_the_system_prompt() {
    let tmpl = ChatTemplate::chatml();
    let f = FunctionDef::new("f".into(), Some("does f".into()), None).unwrap();
    let msgs = vec![
        ChatMessage::user("do f"),
        ChatMessage::assistant_calls(
            "",
            vec![lem_tokenizer::ToolCall { id: "c".into(), name: "f".into(), arguments: json!({"a": 1}) }],
        ),
        ChatMessage::tool_result("r1", Some("c".into()), None),
        ChatMessage::tool_result("r2", Some("d".into()), None),
    ];
    let (out, tools) = render_inputs(&tmpl, ToolFormat::Hermes, msgs, std::slice::from_ref(&f));
    assert!(tools.is_empty());
    assert_eq!(out[0].role, Role::System);
    let system = &out[0].content;
    assert!(system.contains("<tools>\n{") && system.contains("\"description\":\"does f\""), "{system}");
    assert!(
        system.ends_with(
            "<tool_call>\n{\"name\":\"<function-name>\",\"arguments\":\"<args-json-object>\"}\n</tool_call>"
        ) || system.ends_with(
            "<tool_call>\n{\"arguments\":\"<args-json-object>\",\"name\":\"<function-name>\"}\n</tool_call>"
        ),
        "{system}"
    );
    let written = ToolFormat::Hermes.write_call("f", &json!({"a": 1}));
    assert_eq!(out[2].content, written);
    assert_eq!(one_shot(ToolFormat::Hermes, &written).calls, vec![call("f", json!({"a": 1}))]);
    assert_eq!(
        (out[3].role, out[3].content.as_str()),
        (Role::User, "<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response>")
    );
    assert_eq!(out.len(), 4);
}

#[test]
fn formats_of_the_template_fixtures() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../lem-tokenizer/tests/fixtures/templates");
    for (file, want) in [
        ("qwen2.5-hermes.jinja", ToolFormat::Hermes),
        ("qwen3.jinja", ToolFormat::Hermes),
        ("llama3.1.jinja", ToolFormat::Llama3),
        ("mistral-v3.jinja", ToolFormat::Mistral),
    ] {
        let src = std::fs::read_to_string(dir.join(file)).unwrap();
        assert_eq!(ToolFormat::detect(Some(&src), "llama"), want, "{file}");
        // What the format writes for a past call, its parser reads back.
        let written = want.write_call("get_weather", &json!({"city": "Paris"}));
        let r = check_streaming(want, &written);
        assert_eq!((r.content.as_str(), r.calls), ("", vec![call("get_weather", json!({"city": "Paris"}))]), "{file}");
    }
    let hermes = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/server/fixtures/hermes-tools.jinja"),
    )
    .unwrap();
    assert_eq!(ToolFormat::detect(Some(&hermes), "llama"), ToolFormat::Hermes);
}
