//! Chat templates: golden renders for the real models (tests/fixtures/templates/, update
//! with `UPDATE_EXPECT=1`), Hugging Face template features, and template errors.

mod common;

use common::{GEMMA3, Model, SMOLLM2};
use expect_test::{ExpectFile, expect_file};
use lem_tokenizer::{Bos, ChatMessage, ChatTemplate, TemplateError};

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::system("You are a terse assistant."),
        ChatMessage::user("What is the capital of France?"),
        ChatMessage::assistant("Paris."),
        ChatMessage::user("And of Japan? Answer in one word."),
    ]
}

/// Renders the model's template (from its GGUF, or the built-in for its architecture)
/// and compares with the golden file; the prompt must also tokenize with the turn markers
/// as single special tokens.
fn check_golden(model: Model, golden: ExpectFile, turn_marker: &str, turns: usize) {
    let tok = common::tokenizer(model);
    let tmpl = ChatTemplate::for_model(&tok, tok.architecture()).unwrap();
    let text = tmpl.render(&conversation(), true).unwrap();
    golden.assert_eq(&text);
    let marker = tok.token_id(turn_marker).unwrap();
    let ids = tok.encode(&text, Bos::ModelDefault).unwrap();
    assert_eq!(ids.iter().filter(|&&id| id == marker).count(), turns, "one {turn_marker} per turn");
}

#[test]
fn smollm2_golden() {
    check_golden(SMOLLM2, expect_file!["../../../tests/fixtures/templates/smollm2-135m.txt"], "<|im_start|>", 5);
}

#[test]
fn gemma3_builtin_golden() {
    // Gemma 3's GGUF has no template: the built-in llama.cpp "gemma" format applies.
    assert!(common::tokenizer(GEMMA3).chat_template_source().is_none());
    check_golden(
        GEMMA3,
        expect_file!["../../../tests/fixtures/templates/gemma3-270m.txt"],
        "<start_of_turn>",
        4, // the system prompt joins the first user turn
    );
}

#[test]
fn smollm2_default_system_prompt_and_no_generation_prompt() {
    let tok = common::tokenizer(SMOLLM2);
    let tmpl = ChatTemplate::for_model(&tok, "llama").unwrap();
    assert_eq!(tmpl.source(), tok.chat_template_source());
    let text = tmpl.render(&[ChatMessage::user("hi")], false).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nhi<|im_end|>\n"
    );
}

#[test]
fn fallback_is_chatml() {
    let tmpl = ChatTemplate::for_model(&common::tokenizer(GEMMA3), "qwen2").unwrap();
    assert_eq!(
        tmpl.render(&[ChatMessage::system("s"), ChatMessage::user("u")], true).unwrap(),
        "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n"
    );
}

/// A small template exercising one Hugging Face convention, rendered on one user message.
fn check_feature(src: &str, expected: &str) {
    let tmpl =
        ChatTemplate::from_source(src, "<s>", "</s>").unwrap_or_else(|e| panic!("{src:?} does not compile: {e}"));
    let got = tmpl
        .render(&[ChatMessage::user("  Hello World  ")], true)
        .unwrap_or_else(|e| panic!("{src:?} does not render: {e}"));
    assert_eq!(got, expected, "{src:?}");
}

#[test]
fn hugging_face_template_features() {
    check_feature("{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}", "<s>  Hello World  </s>");
    check_feature("{{ messages[0].content.strip() }}", "Hello World");
    check_feature("{{ messages[0].content | trim | lower }}", "hello world");
    check_feature("{{ messages[0]['content'].split()|length }}", "2");
    // Booleans print the Python way, as in Jinja2.
    check_feature("{{ messages[0].content.strip().startswith('Hello') }}", "True");
    check_feature("{{ messages[0].role.upper() }}{{ add_generation_prompt }}", "USERTrue");
    check_feature("{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}", "012");
    check_feature(
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}",
        "1",
    );
    // transformers' tojson is Python's json.dumps: spaces after separators, no HTML escaping.
    check_feature("{{ {'a': [1, \"<b>\"]} | tojson }}", "{\"a\": [1, \"<b>\"]}");
    check_feature("{{ {'a': 1} | tojson(indent=2) }}", "{\n  \"a\": 1\n}");
    check_feature("{{ (strftime_now('%Y') | int) > 2000 }}", "True");
    // trim_blocks / lstrip_blocks, as transformers renders templates.
    check_feature("{% if true %}\n    x\n{% endif %}\n", "    x\n");
}

/// A template that cannot be used must give the right TemplateError, never a panic.
fn check_error(src: &str, want_syntax: bool, needle: &str) {
    let err = match ChatTemplate::from_source(src, "", "") {
        Err(e) => e,
        Ok(tmpl) => tmpl.render(&[ChatMessage::user("hi")], true).expect_err("rendering should fail"),
    };
    match (&err, want_syntax) {
        (TemplateError::Syntax(_), true) | (TemplateError::Render(_), false) => {}
        _ => panic!("{src:?}: unexpected error kind {err:?}"),
    }
    assert!(err.to_string().contains(needle), "{src:?}: {err} lacks {needle:?}");
}

#[test]
fn broken_templates_are_errors() {
    check_error("{% for m in messages %}{{ m.content }}", true, "invalid chat template");
    check_error("{{ messages[0].content ", true, "syntax error");
    check_error("{% if %}{% endif %}", true, "syntax error");
    check_error(
        "{% if messages[0].role == 'user' %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}",
        false,
        "Conversation roles must alternate",
    );
    check_error("{{ messages[0].content | no_such_filter }}", false, "no_such_filter");
    check_error("{% for x in 42 %}{% endfor %}", false, "failed to render");
    check_error("{{ messages[0].content.no_such_method() }}", false, "no_such_method");
}
