//! Hugging Face behaviours the real vocabularies do not exercise, against the `tokenizers`
//! library's answers (tests/fixtures/tokenizer/hf-synthetic/, made by
//! `scripts/fixtures/tokenizer_vocabs.py --reference`): two small byte-level BPE
//! tokenizer.json files with NFKC, added tokens with `lstrip` / `rstrip` / `single_word`
//! / `normalized`, overlapping added tokens, a `ByteLevel`-only pre-tokenizer with
//! `add_prefix_space`, literal and regex `Split`s, merges as lists, and a
//! `TemplateProcessing` post-processor that adds BOS.

mod common;

use lem_tokenizer::{Bos, Tokenizer};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    with_bos: Vec<u32>,
    decode: String,
}

#[derive(Debug, Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

fn check(name: &str) {
    let dir = common::fixtures_dir().join("tokenizer/hf-synthetic");
    let tok = Tokenizer::from_tokenizer_json(&dir.join(name).join("tokenizer.json"), None)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
    let fx: Fixture = serde_json::from_str(&text).unwrap();
    assert!(fx.cases.len() >= 400);
    assert!(tok.add_bos_default(), "{name}: the post-processor adds <s>");
    assert_eq!(tok.bos_id(), tok.token_id("<s>"), "the post-processor's first token is BOS");
    let mut bad = Vec::new();
    for (i, case) in fx.cases.iter().enumerate() {
        let ours = tok.encode(&case.text, Bos::Omit).unwrap();
        if ours != case.ids {
            bad.push(format!("  #{i} {:?}\n    tokenizers {:?}\n    lem        {ours:?}", case.text, case.ids));
            continue;
        }
        let decoded = tok.decode(&case.ids).unwrap();
        if decoded != case.decode {
            bad.push(format!("  #{i} decode: tokenizers {:?}, lem {decoded:?}", case.decode));
        }
        assert_eq!(tok.encode(&case.text, Bos::ModelDefault).unwrap(), case.with_bos, "{:?}", case.text);
    }
    assert!(bad.is_empty(), "{name}: {} of {} differ:\n{}", bad.len(), fx.cases.len(), bad.join("\n"));
}

#[test]
fn byte_level_only_with_prefix_space() {
    check("bytelevel");
}

#[test]
fn literal_and_regex_splits() {
    check("split");
}
