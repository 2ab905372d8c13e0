//! Bad inputs give typed errors, never panics: files that are missing, not GGUF,
//! truncated, or carry an unsupported tokenizer; ids outside the vocabulary.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{GEMMA3, SMOLLM2};
use lem_tokenizer::{Bos, StreamDecoder, Tokenizer, TokenizerError};

/// Loading `bytes` as a GGUF file fails with an error `matches` accepts.
fn check_load(what: &str, bytes: &[u8], matches: fn(&TokenizerError) -> bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    match Tokenizer::from_gguf(&path) {
        Ok(_) => panic!("{what}: loaded without error"),
        Err(e) => {
            assert!(matches(&e), "{what}: unexpected error {e:?}");
            assert!(e.to_string().contains("model.gguf"), "{what}: error names no file: {e}");
        }
    }
}

/// A minimal GGUF v3 file with the given string / string-array metadata.
fn gguf(kv: &[(&str, Value)]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes()); // tensors
    out.extend((kv.len() as u64).to_le_bytes());
    let put_str = |out: &mut Vec<u8>, s: &str| {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    };
    for (k, v) in kv {
        put_str(&mut out, k);
        match v {
            Value::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_str(&mut out, s);
            }
            Value::Strs(a) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((a.len() as u64).to_le_bytes());
                for s in *a {
                    put_str(&mut out, s);
                }
            }
        }
    }
    out
}

enum Value {
    Str(&'static str),
    Strs(&'static [&'static str]),
}

#[test]
fn missing_file() {
    let err = Tokenizer::from_gguf(Path::new("/nonexistent/dir/model.gguf")).unwrap_err();
    assert!(matches!(err, TokenizerError::Io { .. }), "{err:?}");
}

#[test]
fn not_gguf() {
    check_load("empty file", b"", |e| matches!(e, TokenizerError::NotGguf { .. }));
    check_load("three bytes", b"GGU", |e| matches!(e, TokenizerError::NotGguf { .. }));
    check_load("text file", b"hello, I am not a model\n", |e| matches!(e, TokenizerError::NotGguf { .. }));
    let mut safetensors = 8u64.to_le_bytes().to_vec();
    safetensors.extend(b"{}      ");
    check_load("safetensors", &safetensors, |e| matches!(e, TokenizerError::NotGguf { .. }));
}

#[test]
fn truncated_gguf() {
    let full = std::fs::read(common::model_path(SMOLLM2)).unwrap();
    for cut in [4, 6, 12, 24, 25, 200, 10_000, 300_000, 600_000] {
        check_load(&format!("first {cut} bytes"), &full[..cut], |e| matches!(e, TokenizerError::InvalidGguf { .. }));
    }
}

#[test]
fn malformed_metadata() {
    let mut bad_version = gguf(&[]);
    bad_version[4] = 99;
    check_load("version 99", &bad_version, |e| matches!(e, TokenizerError::InvalidGguf { .. }));
    check_load("no vocabulary", &gguf(&[("general.architecture", Value::Str("llama"))]), |e| {
        matches!(e, TokenizerError::InvalidGguf { .. })
    });
    let mut huge_string = gguf(&[]);
    huge_string[16] = 1; // one key...
    huge_string.extend(u64::MAX.to_le_bytes()); // ...whose name claims 2^64 - 1 bytes
    check_load("huge key length", &huge_string, |e| matches!(e, TokenizerError::InvalidGguf { .. }));
}

#[test]
fn unsupported_tokenizers() {
    const TOKENS: &[&str] = &["<unk>", "<s>", "</s>", "a", "b"];
    check_load(
        "bert vocabulary",
        &gguf(&[("tokenizer.ggml.model", Value::Str("bert")), ("tokenizer.ggml.tokens", Value::Strs(TOKENS))]),
        |e| matches!(e, TokenizerError::UnsupportedModel { model, .. } if model.contains("bert")),
    );
    check_load(
        "unknown BPE pre-tokenizer",
        &gguf(&[
            ("tokenizer.ggml.model", Value::Str("gpt2")),
            ("tokenizer.ggml.pre", Value::Str("no-such-pre")),
            ("tokenizer.ggml.tokens", Value::Strs(TOKENS)),
            ("tokenizer.ggml.merges", Value::Strs(&["a b"])),
        ]),
        |e| matches!(e, TokenizerError::UnsupportedModel { model, .. } if model.contains("no-such-pre")),
    );
}

#[test]
fn tiny_synthetic_vocabulary_works() {
    // Sanity check of the GGUF writer above, and of a vocabulary without scores or types.
    const TOKENS: &[&str] = &["<unk>", "<s>", "</s>", "\u{2581}", "a", "b", "\u{2581}a", "ab"];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(
        &path,
        gguf(&[("tokenizer.ggml.model", Value::Str("llama")), ("tokenizer.ggml.tokens", Value::Strs(TOKENS))]),
    )
    .unwrap();
    let tok = Tokenizer::from_gguf(&path).unwrap();
    assert_eq!(tok.vocab_size(), 8);
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.add_bos_default()), (Some(1), Some(2), true));
    let ids = tok.encode("a ab", Bos::ModelDefault).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(tok.decode(&ids[1..]).unwrap(), " a ab");
    // "c" has neither a token nor a byte token: llama.cpp would abort; lem uses <unk>.
    assert_eq!(tok.encode("c", Bos::Omit).unwrap(), vec![3, 0]);
}

/// An id outside the vocabulary is an error wherever ids go in.
fn check_unknown_id(model: common::Model) {
    let tok = common::tokenizer(model);
    let n = tok.vocab_size() as u32;
    for id in [n, n + 1, u32::MAX] {
        let want = |e: &TokenizerError| matches!(e, TokenizerError::UnknownId { id: i, .. } if *i == id);
        assert!(want(&tok.decode(&[0, id]).unwrap_err()));
        assert!(want(&tok.decode_bytes(&[id]).unwrap_err()));
        assert!(want(&tok.token_piece_bytes(id).unwrap_err()));
        let mut stream = StreamDecoder::new(Arc::clone(&tok));
        assert!(want(&stream.push(id).unwrap_err()));
        assert!(!tok.is_eog(id) && !tok.is_control(id) && tok.token_text(id).is_none());
    }
    assert!(tok.decode(&[]).unwrap().is_empty());
    assert!(tok.encode("", Bos::Omit).unwrap().is_empty());
}

#[test]
fn unknown_ids_are_errors() {
    check_unknown_id(SMOLLM2);
    check_unknown_id(GEMMA3);
}
