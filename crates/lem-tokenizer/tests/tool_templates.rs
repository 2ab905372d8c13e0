//! Tool calling through chat templates: faithful copies of the Hermes/Qwen 2.5, Llama 3.1
//! and Mistral v0.3 templates (tests/fixtures/templates/*.jinja) render a conversation
//! with tool definitions, an assistant tool call and its result; the renders are
//! snapshots (update with `UPDATE_EXPECT=1`) and their tool-specific parts are checked.

mod common;

use expect_test::{ExpectFile, expect_file};
use lem_tokenizer::{ChatMessage, ChatTemplate, Role, ToolCall};
use serde_json::json;

fn template(name: &str) -> ChatTemplate {
    let path = format!("{}/tests/fixtures/templates/{name}", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    ChatTemplate::from_source(&src, "<s>", "</s>").unwrap_or_else(|e| panic!("{name} does not compile: {e}"))
}

fn tools() -> Vec<serde_json::Value> {
    // Keys in sorted order: the render is then the same whether or not serde_json keeps
    // insertion order (a feature another crate of the workspace turns on).
    vec![json!({
        "function": {
            "description": "Current weather in a city",
            "name": "get_weather",
            "parameters": {
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"], "type": "string"}},
                "required": ["city"],
                "type": "object",
            },
        },
        "type": "function",
    })]
}

fn conversation(call_id: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::system("You are helpful."),
        ChatMessage::user("Weather in Paris?"),
        ChatMessage::assistant_calls(
            "",
            vec![ToolCall { id: call_id.into(), name: "get_weather".into(), arguments: json!({"city": "Paris"}) }],
        ),
        ChatMessage::tool_result("{\"temp\": 21}", Some(call_id.into()), Some("get_weather".into())),
    ]
}

fn check(name: &str, call_id: &str, golden: ExpectFile, must_contain: &[&str]) -> String {
    let tmpl = template(name);
    assert!(tmpl.renders_tools(), "{name} names `tools`");
    let text = tmpl.render_chat(&conversation(call_id), &tools(), true, &serde_json::Value::Null).unwrap();
    golden.assert_eq(&text);
    for needle in must_contain {
        assert!(text.contains(needle), "{name}: render lacks {needle:?}:\n{text}");
    }
    text
}

#[test]
fn hermes_qwen_renders_tools_calls_and_results() {
    let text = check(
        "qwen2.5-hermes.jinja",
        "call_1",
        expect_file!["fixtures/templates/qwen2.5-hermes.txt"],
        &[
            // The definition as transformers' tojson writes it (spaces after separators,
            // no HTML escaping).
            r#"{"function": {"description": "Current weather in a city", "name": "get_weather", "parameters": {"properties": {"city": {"type": "string"}"#,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>",
            "<|im_start|>user\n<tool_response>\n{\"temp\": 21}\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
        ],
    );
    assert!(!text.contains("\\u003c"), "no HTML escaping");
    // Without tools the same template takes its plain branch.
    let plain = template("qwen2.5-hermes.jinja").render(&[ChatMessage::user("hi")], true).unwrap();
    assert!(!plain.contains("# Tools"), "{plain}");
}

#[test]
fn llama31_renders_json_call_and_ipython_result() {
    check(
        "llama3.1.jinja",
        "call_1",
        expect_file!["fixtures/templates/llama3.1.txt"],
        &[
            "Environment: ipython\n",
            // tojson(indent=4), Python style.
            "{\n    \"function\": {\n        \"description\": \"Current weather in a city\",",
            "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}<|eot_id|>",
            // A string result is iterable, so the template JSON-quotes it, as with Jinja2.
            "<|start_header_id|>ipython<|end_header_id|>\n\n\"{\\\"temp\\\": 21}\"<|eot_id|>",
        ],
    );
}

#[test]
fn mistral_renders_available_tools_and_results() {
    check(
        "mistral-v3.jinja",
        "abcDEF123",
        expect_file!["fixtures/templates/mistral-v3.txt"],
        &[
            "[AVAILABLE_TOOLS] [{\"type\": \"function\", \"function\": {",
            "[TOOL_CALLS] [{\"arguments\": {\"city\": \"Paris\"}, \"name\": \"get_weather\", \"id\": \"abcDEF123\"}]</s>",
            "[TOOL_RESULTS] {\"content\": {\"temp\": 21}, \"call_id\": \"abcDEF123\"}[/TOOL_RESULTS]",
        ],
    );
    // The template's own check on call ids is an error, not a panic.
    let err = template("mistral-v3.jinja")
        .render_chat(&conversation("call_1"), &tools(), true, &serde_json::Value::Null)
        .unwrap_err();
    assert!(err.to_string().contains("Tool call IDs should be alphanumeric strings with length 9"), "{err}");
}

#[test]
fn tool_messages_reach_templates_with_their_fields() {
    let tmpl = ChatTemplate::from_source(
        "{% for m in messages %}{{ m.role }}|{{ m.tool_call_id }}|{{ m.name }}|{{ 'tool_calls' in m }}|\
         {% for c in m.tool_calls or [] %}{{ c.id }}:{{ c.type }}:{{ c.function.name }}:{{ c.function.arguments.city }}{% endfor %}\n{% endfor %}\
         {{ tools is none }}",
        "",
        "",
    )
    .unwrap();
    let text = tmpl.render(&conversation("c9"), false).unwrap();
    assert_eq!(
        text,
        "system|||False|user|||False|assistant|||True|c9:function:get_weather:Paristool|c9|get_weather|False|True"
    );
    assert_eq!(Role::Tool.as_str(), "tool");
}

#[test]
fn builtin_formats_render_tool_turns() {
    let msgs = [ChatMessage::user("u"), ChatMessage::tool_result("r", None, None)];
    assert!(!ChatTemplate::chatml().renders_tools());
    assert_eq!(
        ChatTemplate::chatml().render(&msgs, true).unwrap(),
        "<|im_start|>user\nu<|im_end|>\n<|im_start|>tool\nr<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn smollm2_template_does_not_render_tools_but_renders_tool_turns() {
    // SmolLM2's GGUF template is plain ChatML with a default system prompt: it ignores
    // `tools` (so the server puts them in the system prompt) and writes any role as is.
    let tok = common::tokenizer(common::SMOLLM2);
    let tmpl = ChatTemplate::for_model(&tok, tok.architecture()).unwrap();
    assert!(!tmpl.renders_tools());
    let with = tmpl.render_chat(&conversation("c1"), &tools(), false, &serde_json::Value::Null).unwrap();
    let without = tmpl.render(&conversation("c1"), false).unwrap();
    assert_eq!(with, without);
    assert!(
        with.ends_with("<|im_start|>assistant\n<|im_end|>\n<|im_start|>tool\n{\"temp\": 21}<|im_end|>\n"),
        "{with}"
    );
}

#[test]
fn qwen3_thinking_switch_and_past_reasoning() {
    let tmpl = template("qwen3.jinja");
    let mut msgs = conversation("call_1");
    // A past answer's reasoning is dropped from the history, as Qwen 3's template does.
    msgs.insert(2, ChatMessage::assistant("<think>\nhmm\n</think>\n\nLet me look."));
    msgs.insert(3, ChatMessage::user("Please do."));
    let on = tmpl.render_chat(&msgs, &tools(), true, &serde_json::Value::Null).unwrap();
    let off = tmpl.render_chat(&msgs, &tools(), true, &json!({"enable_thinking": false})).unwrap();
    expect_file!["fixtures/templates/qwen3.txt"].assert_eq(&off);
    assert!(on.contains("<|im_start|>assistant\nLet me look.<|im_end|>") && !on.contains("hmm"), "{on}");
    assert!(on.ends_with("</tool_response><|im_end|>\n<|im_start|>assistant\n"), "{on}");
    assert_eq!(off, format!("{on}<think>\n\n</think>\n\n"));
    assert!(on.contains("<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>"), "{on}");
}
