//! Chat templates come with model files from anywhere: a template that loops without
//! end or recurses without bound fails its render with an error, in bounded time.

use lem_tokenizer::{ChatMessage, ChatTemplate, TemplateError};

#[test]
fn hostile_templates_fail_cleanly() {
    fn check(src: &str, want: &str) {
        let t = ChatTemplate::from_source(src, "<s>", "</s>").expect("compiles");
        match t.render(&[ChatMessage::user("hi")], true) {
            Err(TemplateError::Render(m)) => assert!(m.contains(want), "{src}: {m}"),
            other => panic!("{src}: expected a render error, got {other:?}"),
        }
    }
    check("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", "fuel");
    check("{% for i in range(10**9) %}{% endfor %}", "");
    check("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion");
    check("{{ 'x' * 1000000000 }}", "too large");
}

#[test]
fn real_templates_render_long_conversations_within_the_budget() {
    let src =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/templates/qwen2.5-hermes.jinja"))
            .unwrap();
    let t = ChatTemplate::from_source(&src, "<s>", "</s>").unwrap();
    let msgs: Vec<ChatMessage> = (0..2000)
        .map(|i| if i % 2 == 0 { ChatMessage::user(format!("q{i}")) } else { ChatMessage::assistant(format!("a{i}")) })
        .collect();
    let out = t.render(&msgs, true).unwrap();
    assert!(out.contains("q1998") && out.contains("a1999"));
}
