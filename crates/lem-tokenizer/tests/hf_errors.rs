//! Bad Hugging Face tokenizer files give typed one-line errors naming the file, never
//! panics: not JSON, missing or mistyped fields, unknown model types and pre-tokenizers,
//! merges outside the vocabulary, bad tokenizer_config.json.

use std::path::Path;

use lem_tokenizer::{Bos, Tokenizer, TokenizerError};
use serde_json::{Value, json};

/// A minimal valid byte-level BPE tokenizer.json: "a", "b", "ab", "Ġ" and two added tokens.
fn minimal() -> Value {
    json!({
        "version": "1.0",
        "added_tokens": [
            {"id": 4, "content": "<s>", "special": true, "normalized": false},
            {"id": 5, "content": "<|end|>", "special": true, "normalized": false}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3}, "merges": ["a b"]}
    })
}

fn write(dir: &Path, name: &str, v: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, v).unwrap();
    p
}

/// Loading `tokenizer.json` (and optionally a tokenizer_config.json) fails with an error
/// `matches` accepts, on one line, naming the file.
fn check(what: &str, tokenizer_json: &str, config: Option<&str>, matches: fn(&TokenizerError) -> bool, file: &str) {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "tokenizer.json", tokenizer_json);
    if let Some(c) = config {
        write(dir.path(), "tokenizer_config.json", c);
    }
    match Tokenizer::from_hf_dir(dir.path()) {
        Ok(_) => panic!("{what}: loaded without error"),
        Err(e) => {
            let msg = e.to_string();
            assert!(matches(&e), "{what}: unexpected error {e:?}");
            assert!(msg.contains(file), "{what}: error names no file: {msg}");
            assert!(!msg.contains('\n'), "{what}: not one line: {msg}");
        }
    }
}

fn with(f: impl FnOnce(&mut Value)) -> String {
    let mut v = minimal();
    f(&mut v);
    v.to_string()
}

fn invalid(e: &TokenizerError) -> bool {
    matches!(e, TokenizerError::InvalidHf { .. })
}

fn unsupported(e: &TokenizerError) -> bool {
    matches!(e, TokenizerError::UnsupportedHf { .. })
}

#[test]
fn the_minimal_file_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "tokenizer.json", &minimal().to_string());
    let tok = Tokenizer::from_tokenizer_json(&path, None).unwrap();
    assert_eq!(tok.encode("ab a<|end|>b", Bos::Omit).unwrap(), vec![2, 3, 0, 5, 1]);
    assert_eq!(tok.vocab_size(), 6);
    assert!(tok.is_control(5) && !tok.is_control(2));
    assert!(tok.is_eog(5), "llama.cpp's end-of-generation texts apply to added tokens");
    assert_eq!(tok.decode(&[2, 3, 0, 5]).unwrap(), "ab a<|end|>");
}

#[test]
fn malformed_files() {
    check("not JSON", "{\"model\": ", None, invalid, "tokenizer.json");
    check("not an object", "[1, 2]", None, invalid, "tokenizer.json");
    check("no model", &with(|v| drop(v.as_object_mut().unwrap().remove("model"))), None, invalid, "tokenizer.json");
    check("no vocab", &with(|v| v["model"]["vocab"] = Value::Null), None, invalid, "tokenizer.json");
    check(
        "no merges",
        &with(|v| drop(v["model"].as_object_mut().unwrap().remove("merges"))),
        None,
        invalid,
        "tokenizer.json",
    );
    check("vocab id not a number", &with(|v| v["model"]["vocab"]["a"] = json!("x")), None, invalid, "tokenizer.json");
    check("duplicate ids", &with(|v| v["model"]["vocab"]["b"] = json!(0)), None, invalid, "tokenizer.json");
    check(
        "merge with three parts",
        &with(|v| v["model"]["merges"] = json!(["a b c"])),
        None,
        invalid,
        "tokenizer.json",
    );
    check("merge as a number", &with(|v| v["model"]["merges"] = json!([7])), None, invalid, "tokenizer.json");
    check(
        "merge outside the vocabulary",
        &with(|v| v["model"]["merges"] = json!([["a", "z"]])),
        None,
        invalid,
        "tokenizer.json",
    );
    check(
        "added token without content",
        &with(|v| v["added_tokens"] = json!([{"id": 4}])),
        None,
        invalid,
        "tokenizer.json",
    );
    check(
        "added token id negative",
        &with(|v| v["added_tokens"][0]["id"] = json!(-1)),
        None,
        invalid,
        "tokenizer.json",
    );
    check(
        "split without pattern",
        &with(|v| {
            v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "behavior": "Isolated"}, {"type": "ByteLevel", "add_prefix_space": false}]});
        }),
        None,
        invalid,
        "tokenizer.json",
    );
    check(
        "bad regex",
        &with(|v| {
            v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"},
            {"type": "ByteLevel", "add_prefix_space": false}]});
        }),
        None,
        invalid,
        "tokenizer.json",
    );
    check("config not JSON", &minimal().to_string(), Some("{"), invalid, "tokenizer_config.json");
    check(
        "config bos not a token",
        &minimal().to_string(),
        Some(r#"{"bos_token": "<nope>"}"#),
        invalid,
        "tokenizer_config.json",
    );
    check(
        "config template list entry without name",
        &minimal().to_string(),
        Some(r#"{"chat_template": [{"template": "x"}]}"#),
        invalid,
        "tokenizer_config.json",
    );
}

#[test]
fn unsupported_tokenizers() {
    for kind in ["WordPiece", "Unigram", "WordLevel"] {
        check(kind, &with(|v| v["model"]["type"] = json!(kind)), None, unsupported, "tokenizer.json");
    }
    // SentencePiece-style files (no pre-tokenizer or Metaspace, byte fallback) load, but
    // not mixed with byte-level parts.
    check(
        "byte fallback with ByteLevel",
        &with(|v| v["model"]["byte_fallback"] = json!(true)),
        None,
        unsupported,
        "tokenizer.json",
    );
    check("dropout", &with(|v| v["model"]["dropout"] = json!(0.1)), None, unsupported, "tokenizer.json");
    check(
        "subword prefix",
        &with(|v| v["model"]["continuing_subword_prefix"] = json!("##")),
        None,
        unsupported,
        "tokenizer.json",
    );
    check(
        "no pre-tokenizer, ByteLevel decoder",
        &with(|v| v["pre_tokenizer"] = Value::Null),
        None,
        unsupported,
        "tokenizer.json",
    );
    check(
        "Metaspace, ByteLevel decoder",
        &with(|v| v["pre_tokenizer"] = json!({"type": "Metaspace"})),
        None,
        unsupported,
        "tokenizer.json",
    );
    check(
        "Whitespace",
        &with(|v| v["pre_tokenizer"] = json!({"type": "Whitespace"})),
        None,
        unsupported,
        "tokenizer.json",
    );
    check(
        "Split behavior",
        &with(|v| {
            v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Removed"}, {"type": "ByteLevel"}]});
        }),
        None,
        unsupported,
        "tokenizer.json",
    );
    check("normalizer", &with(|v| v["normalizer"] = json!({"type": "Lowercase"})), None, unsupported, "tokenizer.json");
    check("decoder", &with(|v| v["decoder"] = json!({"type": "WordPiece"})), None, unsupported, "tokenizer.json");
}

#[test]
fn missing_files_are_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = Tokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(matches!(e, TokenizerError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
    let path = write(dir.path(), "tokenizer.json", &minimal().to_string());
    let e = Tokenizer::from_tokenizer_json(&path, Some(&dir.path().join("nope.json"))).unwrap_err();
    assert!(matches!(e, TokenizerError::Io { .. }) && e.to_string().contains("nope.json"), "{e:?}");
}

#[test]
fn configuration_files() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "tokenizer.json", &minimal().to_string());
    write(
        dir.path(),
        "tokenizer_config.json",
        r#"{"bos_token": {"content": "<s>"}, "eos_token": "<|end|>", "add_bos_token": true, "chat_template": "{{ bos_token }}hi"}"#,
    );
    write(dir.path(), "generation_config.json", r#"{"eos_token_id": [5, 1]}"#);
    write(dir.path(), "config.json", r#"{"model_type": "qwen3"}"#);
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.add_bos_default()), (Some(4), Some(5), true));
    assert_eq!(tok.encode("a", Bos::ModelDefault).unwrap(), vec![4, 0]);
    assert_eq!(tok.eog_ids(), &[1, 5], "generation_config's eos ids end generation");
    assert_eq!(tok.architecture(), "qwen3");
    assert_eq!(tok.chat_template_source(), Some("{{ bos_token }}hi"));
    assert_eq!(tok.template_special_texts(), ("<s>", "<|end|>"));
    // chat_template.jinja wins over tokenizer_config's template.
    write(dir.path(), "chat_template.jinja", "from the jinja file");
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(tok.chat_template_source(), Some("from the jinja file"));
}
