//! SentencePiece-style tokenizer.json (Gemma, Llama 2, Mistral v0.1, Phi-3 style: BPE with
//! merges and `byte_fallback`, `▁` normalizers or a `Metaspace` pre-tokenizer,
//! Replace/ByteFallback/Fuse/Strip or Metaspace decoders) against the `tokenizers`
//! library's answers (tests/fixtures/tokenizer/hf-spm/, made by
//! `scripts/fixtures/tokenizer_spm_json.py`).

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
    vocab_size: usize,
    cases: Vec<Case>,
}

/// What each fixture's special tokens are.
struct Expect {
    name: &'static str,
    bos: (&'static str, u32),
    eos: Option<(&'static str, u32)>,
    /// Texts that must be control tokens.
    control: &'static [&'static str],
}

fn check(e: &Expect) {
    let dir = common::fixtures_dir().join("tokenizer/hf-spm");
    let path = dir.join(e.name);
    // Gemma is loaded as a directory (with its tokenizer_config.json), the others as files.
    let tok = if path.join("tokenizer_config.json").is_file() {
        Tokenizer::from_hf_dir(&path)
    } else {
        Tokenizer::from_tokenizer_json(&path.join("tokenizer.json"), None)
    }
    .unwrap_or_else(|err| panic!("{}: {err}", e.name));
    let text = std::fs::read_to_string(dir.join(format!("{}.json", e.name))).unwrap();
    let fx: Fixture = serde_json::from_str(&text).unwrap();
    assert!(fx.cases.len() >= 400, "{}: {} cases", e.name, fx.cases.len());
    assert_eq!(tok.vocab_size(), fx.vocab_size, "{}", e.name);
    assert!(tok.is_hf());
    assert_eq!(tok.tokenizer_model(), "llama");
    assert_eq!(tok.pre_tokenizer(), None);
    assert!(tok.add_bos_default(), "{}: BOS is added", e.name);
    assert_eq!(tok.bos_id(), Some(e.bos.1), "{}", e.name);
    assert_eq!(tok.token_id(e.bos.0), Some(e.bos.1), "{}", e.name);
    assert_eq!(tok.eos_id(), e.eos.map(|(_, id)| id), "{}", e.name);
    if let Some((text, id)) = e.eos {
        assert_eq!(tok.token_id(text), Some(id));
        assert!(tok.is_eog(id), "{}: {text} ends generation", e.name);
    }
    for t in e.control {
        let id = tok.token_id(t).unwrap_or_else(|| panic!("{}: no {t}", e.name));
        assert!(tok.is_control(id), "{}: {t} is a control token", e.name);
    }
    assert_eq!(tok.token_id("<0x0A>").and_then(|id| tok.token_piece_bytes(id).ok()), Some(&b"\n"[..]));

    let mut bad = Vec::new();
    for (i, case) in fx.cases.iter().enumerate() {
        let ours = tok.encode(&case.text, Bos::Omit).unwrap();
        if ours != case.ids {
            bad.push(format!("  #{i} {:?}\n    tokenizers {:?}\n    lem        {ours:?}", case.text, case.ids));
            continue;
        }
        let decoded = tok.decode(&case.ids).unwrap();
        if decoded != case.decode {
            bad.push(format!("  #{i} {:?} decode: tokenizers {:?}, lem {decoded:?}", case.text, case.decode));
        }
        let with_bos = tok.encode(&case.text, Bos::ModelDefault).unwrap();
        if with_bos != case.with_bos {
            bad.push(format!("  #{i} {:?} with BOS: tokenizers {:?}, lem {with_bos:?}", case.text, case.with_bos));
        }
    }
    assert!(bad.is_empty(), "{}: {} of {} differ:\n{}", e.name, bad.len(), fx.cases.len(), bad.join("\n"));
}

const LLAMA_CONTROL: &[&str] = &["<unk>", "<s>", "</s>"];

#[test]
fn gemma_replace_normalizer_no_pre_tokenizer() {
    check(&Expect {
        name: "gemma",
        bos: ("<bos>", 2),
        eos: Some(("<eos>", 1)),
        control: &["<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"],
    });
}

#[test]
fn llama2_prepend_replace_normalizer_strip_decoder() {
    check(&Expect { name: "llama2", bos: ("<s>", 1), eos: None, control: LLAMA_CONTROL });
}

#[test]
fn metaspace_prepend_first_no_split() {
    check(&Expect { name: "metaspace", bos: ("<s>", 1), eos: None, control: LLAMA_CONTROL });
}

#[test]
fn metaspace_always_split_unknown_without_byte_fallback() {
    check(&Expect { name: "metaspace-split", bos: ("<s>", 1), eos: None, control: LLAMA_CONTROL });
}

/// A minimal SentencePiece-style tokenizer.json: "▁", "a", "▁a", `<0x0A>`, `<unk>`.
fn minimal() -> serde_json::Value {
    serde_json::json!({
        "added_tokens": [{"id": 0, "content": "<unk>", "special": true, "normalized": false}],
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
        "pre_tokenizer": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>",
                  "vocab": {"<unk>": 0, "<0x0A>": 1, "\u{2581}": 2, "a": 3, "\u{2581}a": 4},
                  "merges": [["\u{2581}", "a"]]}
    })
}

#[test]
fn minimal_file_and_typed_errors() {
    use lem_tokenizer::TokenizerError;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, minimal().to_string()).unwrap();
    let tok = Tokenizer::from_tokenizer_json(&path, None).unwrap();
    // "é" has neither a token nor byte tokens for its bytes: the unknown token.
    assert_eq!(tok.encode(" a\naé", Bos::Omit).unwrap(), vec![4, 1, 3, 0]);
    assert_eq!(tok.decode(&[4, 1, 3]).unwrap(), " a\na");

    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit, bool); 5] = [
        ("unk_token outside the vocabulary", |v| v["model"]["unk_token"] = "<nope>".into(), false),
        ("Replace normalizer with a Regex", |v| v["normalizer"]["pattern"] = serde_json::json!({"Regex": " +"}), true),
        (
            "Metaspace prepend_scheme",
            |v| {
                v["pre_tokenizer"] = serde_json::json!({"type": "Metaspace", "prepend_scheme": "sometimes"});
            },
            false,
        ),
        ("decoder", |v| v["decoder"] = serde_json::json!({"type": "ByteLevel"}), true),
        ("Strip content", |v| v["decoder"] = serde_json::json!({"type": "Strip", "content": "ab"}), false),
    ];
    for (what, edit, unsupported) in cases {
        let mut v = minimal();
        edit(&mut v);
        std::fs::write(&path, v.to_string()).unwrap();
        let err = Tokenizer::from_tokenizer_json(&path, None).map(|_| ()).unwrap_err();
        let msg = err.to_string();
        let kind_ok = if unsupported {
            matches!(err, TokenizerError::UnsupportedHf { .. })
        } else {
            matches!(err, TokenizerError::InvalidHf { .. })
        };
        assert!(kind_ok, "{what}: {err:?}");
        assert!(msg.contains("tokenizer.json") && !msg.contains('\n'), "{what}: {msg}");
    }
}

/// The packaged Gemma 3 GGUF's vocabulary converted to tokenizer.json the way transformers'
/// GemmaConverter converts the SentencePiece model (`scripts/fixtures/tokenizer_spm_json.py
/// --gemma3 GGUF target/tokenizer-vocabs/gemma3-hf`, 16 MB, not committed): lem on the
/// tokenizer.json must equal `tokenizers`; lem on the GGUF (llama.cpp's rules) is compared
/// and the differences counted. Run with `--ignored` after generating the files.
#[test]
#[ignore = "needs target/tokenizer-vocabs/gemma3-hf (scripts/fixtures/tokenizer_spm_json.py --gemma3)"]
fn gemma3_gguf_vs_tokenizer_json() {
    #[derive(Deserialize)]
    struct Answer {
        text: String,
        ids: Vec<u32>,
        decode: String,
    }
    #[derive(Deserialize)]
    struct Answers {
        cases: Vec<Answer>,
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tokenizer-vocabs/gemma3-hf");
    let hf = Tokenizer::from_tokenizer_json(&dir.join("tokenizer.json"), None).unwrap();
    let gguf = common::tokenizer(common::GEMMA3);
    let answers: Answers = serde_json::from_str(&std::fs::read_to_string(dir.join("answers.json")).unwrap()).unwrap();
    let (mut bad, mut gguf_differs) = (Vec::new(), Vec::new());
    for a in &answers.cases {
        let ours = hf.encode(&a.text, Bos::Omit).unwrap();
        if ours != a.ids {
            bad.push(format!("  {:?}\n    tokenizers {:?}\n    lem        {ours:?}", a.text, a.ids));
        } else if hf.decode(&ours).unwrap() != a.decode {
            bad.push(format!("  {:?} decode: tokenizers {:?}, lem {:?}", a.text, a.decode, hf.decode(&ours).unwrap()));
        }
        let g = gguf.encode(&a.text, Bos::Omit).unwrap();
        if g != a.ids {
            gguf_differs.push(format!("  {:?}\n    tokenizers {:?}\n    lem(GGUF)  {g:?}", a.text, a.ids));
        }
    }
    eprintln!(
        "gemma3: {} strings; lem(tokenizer.json) != tokenizers: {}; lem(GGUF) != tokenizers: {}\n{}",
        answers.cases.len(),
        bad.len(),
        gguf_differs.len(),
        gguf_differs.join("\n")
    );
    assert!(bad.is_empty(), "{} differ:\n{}", bad.len(), bad.join("\n"));
}
