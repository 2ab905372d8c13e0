//! Hugging Face directories through the real `lem` binary: `lem models inspect` on tiny
//! GGUF files and directories (and the packaged SmolLM2 when cached), `--model DIR` for
//! generate and tokenize giving the same ids as the GGUF of the same weights, `--dtype`,
//! and one-line errors for directories that are not models.
//!
//! The tiny models come from `python3 scripts/fixtures/tiny_models.py` (run by
//! scripts/test.sh); the tests panic with that instruction when they are missing.
#![allow(missing_docs)]

mod common;
#[path = "../../lem-model/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use common::{fails_with_one_line, packaged, s, succeeds};
use serde_json::Value;
use support::Spec;

/// Where the generator put the tiny models.
fn tiny_dir() -> PathBuf {
    let dir = std::env::var_os("LEM_TINY_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tiny-models"));
    assert!(
        dir.join("qwen3/hf/config.json").is_file(),
        "tiny models are missing from {}: run `python3 scripts/fixtures/tiny_models.py` (scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// `target/tiny-models/<arch>/<what>` (`hf`, `f32.gguf`, ...).
fn tiny(arch: &str, what: &str) -> PathBuf {
    let p = tiny_dir().join(arch).join(what);
    assert!(p.exists(), "{} is missing: run `python3 scripts/fixtures/tiny_models.py`", p.display());
    p
}

/// `lem models inspect PATH --json [extra]`, parsed.
fn inspect(path: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["models", "inspect", s(path), "--json"];
    args.extend(extra);
    let (stdout, _) = succeeds(&args);
    assert_eq!(stdout.lines().count(), 1, "one JSON object on one line: {stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The layers' `rope` flags.
fn ropes(v: &Value) -> Vec<bool> {
    v["layers"].as_array().unwrap().iter().map(|l| l["rope"].as_bool().unwrap()).collect()
}

/// The layers' windows (`None`: full attention).
fn windows(v: &Value) -> Vec<Option<u64>> {
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let w = l["window"].as_u64();
            assert_eq!(l["attention"], if w.is_some() { "sliding_window" } else { "full" }, "{l}");
            w
        })
        .collect()
}

#[test]
fn inspect_qwen3_gguf_and_hf_agree() {
    let gguf = inspect(&tiny("qwen3", "f32.gguf"), &[]);
    let hf = inspect(&tiny("qwen3", "hf"), &[]);
    assert_eq!(gguf["format"], "gguf");
    assert_eq!(hf["format"], "hf");
    assert_eq!(hf["hf_model_type"], "qwen3");
    assert_eq!(gguf["name"], "lem-tiny-qwen3");
    for v in [&gguf, &hf] {
        assert_eq!(v["architecture"], "qwen3", "{v}");
        assert_eq!(v["n_layer"], 2);
        assert_eq!(v["head_dim"], 32);
        assert_eq!(v["n_head"], 4);
        assert_eq!(v["n_kv_head"], 2);
        assert_eq!(v["n_embd"], 64);
        assert_eq!(v["n_ff"], 256);
        assert_eq!(v["vocab_size"], 3005);
        assert_eq!(v["context_length"], 4096);
        assert_eq!(v["rope"]["base"], 10000.0);
        assert_eq!(v["rope"]["dims"], 32);
        assert_eq!(windows(v), [None, None]);
        assert_eq!(ropes(v), [true, true]);
        assert_eq!(v["tensor_types"], serde_json::json!({"F32": 24}));
        assert_eq!(v["tokenizer"]["type"], "BPE");
        assert_eq!(v["tokenizer"]["pre"], "llama-bpe");
        assert_eq!(v["tokenizer"]["vocab_size"], 3005);
        assert_eq!(v["chat_template"], true);
        assert!(v["dtype"].is_null());
    }
    // Same weights, same count (tied: no output matrix in either).
    assert_eq!(gguf["parameters"], hf["parameters"]);
    assert_eq!(gguf["parameters"], 340_224);
    assert_eq!(gguf["tokenizer"]["source"], "gguf");
    assert_eq!(hf["tokenizer"]["source"], "tokenizer.json");
}

#[test]
fn inspect_reports_stored_types_of_quantized_files() {
    let v = inspect(&tiny("qwen3", "q4_k.gguf"), &[]);
    let types = v["tensor_types"].as_object().unwrap();
    assert!(types.contains_key("Q4_K") && types.contains_key("Q8_0") && types.contains_key("F32"), "{types:?}");
    assert_eq!(types.values().map(|n| n.as_u64().unwrap()).sum::<u64>(), v["tensor_count"].as_u64().unwrap());
    let bf16 = inspect(&tiny("qwen3", "hf-bf16"), &[]);
    let types = bf16["tensor_types"].as_object().unwrap();
    assert!(types.contains_key("BF16"), "{types:?}");
    let sharded = inspect(&tiny("qwen3", "hf-sharded"), &[]);
    assert_eq!(sharded["parameters"], 340_224);
    assert_eq!(sharded["tensor_count"], 24);
    // --dtype is reported as the loaded type; the stored table is unchanged.
    let q8 = inspect(&tiny("qwen3", "hf"), &["--dtype", "q8_0"]);
    assert_eq!(q8["dtype"], "Q8_0");
    assert_eq!(q8["tensor_types"], serde_json::json!({"F32": 24}));
}

#[test]
fn inspect_gemma2_alternates_sliding_and_full() {
    for what in ["f32.gguf", "hf"] {
        let v = inspect(&tiny("gemma2", what), &[]);
        assert_eq!(v["architecture"], "gemma2", "{what}");
        assert_eq!(windows(&v), [Some(32), None], "{what}");
        assert_eq!(v["sliding_window"], 32, "{what}");
        assert_eq!(v["attn_logit_softcap"], 10.0, "{what}");
        assert_eq!(v["final_logit_softcap"], 15.0, "{what}");
        assert_eq!(ropes(&v), [true, true], "{what}");
    }
}

#[test]
fn inspect_smollm3_has_no_rope_on_layer_3() {
    for what in ["f32.gguf", "hf"] {
        let v = inspect(&tiny("smollm3", what), &[]);
        assert_eq!(v["architecture"], "smollm3", "{what}");
        assert_eq!(v["n_layer"], 4, "{what}");
        assert_eq!(ropes(&v), [true, true, true, false], "{what}");
        assert_eq!(windows(&v), [None, None, None, None], "{what}");
    }
}

/// Whether a line of `text` reads `row` with its columns' padding collapsed to one space.
fn has_row(text: &str, row: &str) -> bool {
    text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") == row)
}

#[test]
fn inspect_human_table() {
    let (stdout, _) = succeeds(&["models", "inspect", s(&tiny("smollm3", "hf"))]);
    for want in ["architecture smollm3", "format Hugging Face directory", "chat template yes"] {
        assert!(has_row(&stdout, want), "missing {want:?}:\n{stdout}");
    }
    // Layer rows: runs of identical layers are one row.
    assert!(stdout.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["0-2", "full", "yes"]), "{stdout}");
    assert!(stdout.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["3", "full", "no"]), "{stdout}");
}

#[test]
fn inspect_packaged_smollm2() {
    let Some(model) = packaged("smollm2-135m") else { return };
    let v = inspect(&model, &[]);
    assert_eq!(v["format"], "gguf");
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["n_layer"], 30);
    assert_eq!(v["n_head"], 9);
    assert_eq!(v["n_kv_head"], 3);
    assert_eq!(v["head_dim"], 64);
    assert_eq!(v["n_embd"], 576);
    assert_eq!(v["vocab_size"], 49152);
    assert_eq!(v["context_length"], 8192);
    assert_eq!(v["parameters"], 134_515_008);
    assert_eq!(v["tensor_count"], 272);
    assert_eq!(v["tensor_types"]["Q4_1"], 210);
    assert_eq!(v["tokenizer"]["type"], "BPE");
    assert_eq!(v["tokenizer"]["pre"], "smollm");
    assert_eq!(v["chat_template"], true);
    assert!(ropes(&v).iter().all(|&r| r));
    assert!(windows(&v).iter().all(Option::is_none));
}

#[test]
fn inspect_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = s(dir.path());
    let line = fails_with_one_line(&["models", "inspect", d]);
    assert!(line.contains(d) && line.contains("config.json"), "{line}");
    // The same resolver serves --model.
    let line = fails_with_one_line(&["generate", "-m", d, "-p", "hi"]);
    assert!(line.contains("config.json"), "{line}");
    let line = fails_with_one_line(&["tokenize", "-m", d, "--text", "hi"]);
    assert!(line.contains("config.json"), "{line}");

    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "mamba9", "architectures": ["Mamba9"]}"#).unwrap();
    let line = fails_with_one_line(&["models", "inspect", d]);
    assert!(line.contains("mamba9"), "{line}");

    std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
    fails_with_one_line(&["models", "inspect", d]);

    let gguf = dir.path().join("mamba.gguf");
    let spec = Spec { arch_name: "mamba9".into(), ..Spec::llama(GgmlDType::F32) };
    std::fs::write(&gguf, spec.build().bytes()).unwrap();
    let line = fails_with_one_line(&["models", "inspect", s(&gguf)]);
    assert!(line.contains("unknown architecture 'mamba9'"), "{line}");

    let line = fails_with_one_line(&["models", "inspect", "/nonexistent/model.gguf"]);
    assert!(line.contains("/nonexistent/model.gguf"), "{line}");
}

/// `lem generate --json` greedy, parsed.
fn generate(model: &Path, extra: &[&str]) -> Value {
    let mut args =
        vec!["generate", "-m", s(model), "-t", "2", "--prompt", "The lighthouse keeper", "--temperature", "0"];
    args.extend(["-n", "8", "--json"]);
    args.extend(extra);
    let (stdout, _) = succeeds(&args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn generate_from_hf_dir_equals_gguf() {
    let hf = generate(&tiny("qwen3", "hf"), &[]);
    let gguf = generate(&tiny("qwen3", "f32.gguf"), &[]);
    assert!(!hf["prompt_ids"].as_array().unwrap().is_empty());
    assert_eq!(hf["prompt_ids"], gguf["prompt_ids"]);
    assert_eq!(hf["ids"], gguf["ids"]);
    assert_eq!(hf["text"], gguf["text"]);
}

#[test]
fn dtype_converts_an_hf_dir_at_load() {
    let v = generate(&tiny("qwen3", "hf"), &["--dtype", "q8_0"]);
    let ids = v["ids"].as_array().unwrap();
    assert!(!ids.is_empty(), "{v}");
    assert!(ids.len() <= 8, "{v}");
    // f32 -> f32 is the stored type: the same output as no --dtype.
    assert_eq!(generate(&tiny("qwen3", "hf"), &["--dtype", "f32"])["ids"], generate(&tiny("qwen3", "hf"), &[])["ids"]);
    // k-quants on a GGUF file too (Q4_K needs rows of 256: ffn_down's 256 columns fit,
    // other matrices of 64 columns are refused with one line).
    let line = fails_with_one_line(&[
        "generate",
        "-m",
        s(&tiny("qwen3", "f32.gguf")),
        "--dtype",
        "q4_k",
        "-p",
        "hi",
        "-n",
        "1",
    ]);
    assert!(line.starts_with("lem: error: loading"), "{line}");
    // An unknown type is a usage error listing the choices.
    let (out, _, stderr) = common::run(&["generate", "-m", "x.gguf", "--dtype", "q3_x", "-p", "hi"]);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("q8_0") && stderr.contains("q4_k"), "{stderr}");
}

#[test]
fn tokenize_an_hf_dir() {
    let text = "hello world<|eot_id|>";
    let (hf, _) = succeeds(&["tokenize", "-m", s(&tiny("qwen3", "hf")), "--text", text, "--json"]);
    let (gguf, _) = succeeds(&["tokenize", "-m", s(&tiny("qwen3", "f32.gguf")), "--text", text, "--json"]);
    assert_eq!(hf, gguf);
    let ids: Vec<u32> = serde_json::from_str(&hf).unwrap();
    assert_eq!(ids.last(), Some(&3002), "special token parsed: {ids:?}");
}

#[test]
fn every_model_command_takes_dtype() {
    let commands: &[&[&str]] = &[
        &["generate"],
        &["chat"],
        &["tokenize"],
        &["eval"],
        &["bench"],
        &["kv", "save"],
        &["kv", "load"],
        &["score", "attention"],
        &["inspect"],
        &["serve"],
        &["models", "inspect"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let (stdout, _) = succeeds(&args);
        assert!(stdout.contains("--dtype"), "{cmd:?} --help lacks --dtype:\n{stdout}");
        if cmd[0] != "models" {
            assert!(stdout.contains("Hugging Face model directory"), "{cmd:?} --help:\n{stdout}");
        }
    }
}

/// `lem models inspect` flags a chat template that cannot serve a conversation: one that
/// loops past the render budget, one that recurses without end, one that raises.
#[test]
fn inspect_flags_hostile_chat_templates() {
    let good = inspect(&tiny("qwen3", "hf"), &[]);
    assert_eq!(good["chat_template"], true);
    assert!(good["chat_template_error"].is_null(), "{}", good["chat_template_error"]);
    let hostile = [
        ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", "fuel"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion"),
        ("{{ raise_exception('no system messages') }}", "no system messages"),
    ];
    for (template, want) in hostile {
        let dir = tempfile::tempdir().unwrap();
        let src = tiny("qwen3", "hf");
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
        }
        let config_path = dir.path().join("tokenizer_config.json");
        let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
        config["chat_template"] = Value::from(template);
        std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
        let v = inspect(dir.path(), &[]);
        let err = v["chat_template_error"].as_str().unwrap_or_else(|| panic!("{template}: not flagged: {v}"));
        assert!(err.contains(want), "{template}: {err}");
        let (text, _) = succeeds(&["models", "inspect", s(dir.path())]);
        assert!(
            text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>().starts_with(&["chat", "template", "FAILS:"])),
            "{text}"
        );
    }
}
