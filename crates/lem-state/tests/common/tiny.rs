//! Tiny random-weight GGUF models with a small SentencePiece vocabulary, so that an
//! `Engine` (model + tokenizer + template) loads in milliseconds. Built on the model
//! crate's test builder; also used by `crates/lem-cli/tests` through `#[path]`.
#![allow(dead_code, missing_docs)]

use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Value;

use super::support::Spec;

/// The 64-token vocabulary: specials, a word-start marker, letters with and without it,
/// punctuation and a newline byte.
pub fn vocab() -> Vec<(String, i32)> {
    let mut v: Vec<(String, i32)> =
        vec![("<unk>".into(), 2), ("<s>".into(), 3), ("</s>".into(), 3), ("\u{2581}".into(), 1)];
    for c in 'a'..='z' {
        v.push((c.to_string(), 1));
    }
    for c in 'a'..='z' {
        v.push((format!("\u{2581}{c}"), 1));
    }
    for p in [".", ",", "!", "?"] {
        v.push((p.into(), 1));
    }
    v.push(("<0x0A>".into(), 6));
    for w in ["\u{2581}the", "the", "\u{2581}is"] {
        v.push((w.into(), 1));
    }
    assert_eq!(v.len(), 64);
    v
}

/// `spec` with tokenizer metadata (vocabulary `vocab()`, optionally with `rename` applied
/// to one token so that the tokenizer fingerprint differs).
pub fn with_tokenizer(spec: Spec, rename: Option<(usize, &str)>) -> Spec {
    let mut toks = vocab();
    if let Some((i, s)) = rename {
        toks[i].0 = s.to_owned();
    }
    let n = toks.len();
    spec.with_meta("tokenizer.ggml.model", Value::String("llama".into()))
        .with_meta("tokenizer.ggml.tokens", Value::Array(toks.iter().map(|t| Value::String(t.0.clone())).collect()))
        .with_meta("tokenizer.ggml.scores", Value::Array((0..n).map(|i| Value::F32(-(i as f32))).collect()))
        .with_meta("tokenizer.ggml.token_type", Value::Array(toks.iter().map(|t| Value::I32(t.1)).collect()))
        .with_meta("tokenizer.ggml.bos_token_id", Value::U32(1))
        .with_meta("tokenizer.ggml.eos_token_id", Value::U32(2))
}

/// A tiny llama (`seed` picks the weights) with a tokenizer.
pub fn llama(seed: u64) -> Spec {
    with_tokenizer(Spec { seed, ..Spec::llama(GgmlDType::Q8_0) }, None)
}

/// A tiny gemma3 (sliding window 4 on most layers, ring 4 + 512) with a tokenizer.
pub fn gemma3(seed: u64) -> Spec {
    with_tokenizer(Spec { seed, ..Spec::gemma3(GgmlDType::Q8_0) }, None)
}

/// Writes `spec` as `dir/name`.
pub fn write(spec: &Spec, dir: &Path, name: &str) -> PathBuf {
    spec.build().write(dir, name)
}
