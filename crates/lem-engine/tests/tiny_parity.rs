//! Every architecture, from both sources, against the references: tiny random-weight
//! models (`scripts/fixtures/tiny_models.py` writes them, seeded, into
//! `target/tiny-models`; `scripts/test.sh` runs it) compared with llama.cpp for the GGUF
//! files and with transformers (float32) for the Hugging Face directories. The
//! references are committed under `tests/fixtures/tiny/<arch>/` with the commands that
//! made them (`tests/fixtures/tiny/README.md`).
//!
//! One [`check`] per source kind runs over every architecture and reports every failure
//! at once.

mod common;

use std::ops::ControlFlow;
use std::path::PathBuf;

use common::{ids, load_json};
use lem_engine::sampling::SamplingParams;
use lem_engine::{Engine, EngineConfig, GenerateRequest, generate};
use lem_kv::KvDtype;
use lem_model::LoadOptions;
use lem_tokenizer::Bos;

/// Every architecture with a tiny model.
const ARCHS: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen2_yarn",
    "qwen3",
    "phi3",
    "gemma2",
    "smollm3",
    "qwen3moe",
    "mixtral",
    "qwen2moe",
    "gpt_oss",
];

/// Where the generator put the models.
fn models_dir() -> PathBuf {
    common::tiny_models_dir()
}

/// How closely a source must follow its reference.
#[derive(Debug, Clone, Copy)]
struct Tolerance {
    /// Largest per-position NLL difference (nats).
    nll: f64,
    /// Reference top-1/top-2 margin from which argmax must agree, and below which a
    /// greedy step counts as a near-tie.
    margin: f64,
}

/// F32 weights: engines differ only in summation order (and llama.cpp's f16 KV cache).
const EXACT: Tolerance = Tolerance { nll: 0.02, margin: 0.1 };
/// Quantized or BF16 weights, where engines round activations differently.
const ROUNDED: Tolerance = Tolerance { nll: 0.5, margin: 0.5 };

/// One model file or directory and the reference it answers to.
struct Case {
    arch: &'static str,
    /// File or directory under `<models>/<arch>/`.
    source: &'static str,
    /// Reference JSON under `tests/fixtures/tiny/<arch>/`.
    reference: &'static str,
    tol: Tolerance,
}

fn engine(path: &std::path::Path, kv_dtype: KvDtype) -> Engine {
    let opts = LoadOptions { kv_dtype, ..LoadOptions::default() };
    Engine::load_with(path, EngineConfig { threads: 2, ctx_size: 4096 }, opts)
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// Teacher-forced NLL/argmax and 16 greedy tokens against the reference; returns the
/// problems found (empty when the case passes) and prints what it measured.
fn check(case: &Case) -> Vec<String> {
    let path = models_dir().join(case.arch).join(case.source);
    let fx = load_json(&format!("tiny/{}/{}", case.arch, case.reference));
    let name = format!("{}/{}", case.arch, case.source);
    let mut problems = Vec::new();
    // A fixture that cannot tell a bug from noise is itself a failure.
    let stats = &fx["stats"];
    let (logit_std, nll_std) = (stats["logit_std"].as_f64().unwrap(), stats["nll_std"].as_f64().unwrap());
    if logit_std < 2.0 || nll_std < 1.0 {
        problems.push(format!("{name}: reference is too flat (logit std {logit_std:.2}, NLL std {nll_std:.2})"));
    }
    // Exact comparisons against transformers (f32 everywhere) use an f32 cache; against
    // llama.cpp, its default f16 cache.
    let kv = if case.source.starts_with("hf") { KvDtype::F32 } else { KvDtype::F16 };
    let e = engine(&path, kv);
    let text = std::fs::read_to_string(common::fixture("tiny/text.txt")).unwrap();
    let ours = e.tokenizer().encode(&text, Bos::ModelDefault).unwrap();
    let want_ids = ids(&fx["eval"]["ids"]);
    if ours != want_ids {
        problems.push(format!("{name}: token ids differ from the reference's"));
        return problems;
    }
    let r = lem_engine::eval(&e, &ours).unwrap();
    let nll: Vec<f64> = fx["eval"]["nll"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let margin: Vec<f64> = fx["eval"]["margin"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let argmax = ids(&fx["eval"]["argmax"]);
    let n = nll.len().min(r.nll.len());
    let (worst, at) =
        (0..n).map(|i| ((r.nll[i] - nll[i]).abs(), i)).fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a });
    if worst > case.tol.nll {
        problems.push(format!("{name}: NLL differs by {worst:.4} nats at position {at} (tolerance {})", case.tol.nll));
    }
    let clear: Vec<usize> = (0..n).filter(|&i| margin[i] >= case.tol.margin).collect();
    let wrong: Vec<usize> = clear.iter().copied().filter(|&i| r.argmax[i] != argmax[i]).collect();
    if !wrong.is_empty() {
        problems.push(format!("{name}: argmax differs at clear positions {wrong:?}"));
    }
    // Greedy: equal up to the reference's first near-tie.
    let g = &fx["greedy"];
    let (prompt, want) = (ids(&g["prompt_ids"]), ids(&g["ids"]));
    let margins: Vec<f64> = g["margins"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let mut seq = e.new_sequence();
    let req = GenerateRequest {
        max_tokens: want.len(),
        sampling: SamplingParams::greedy(),
        stop: vec![],
        ..Default::default()
    };
    let got = generate(&e, &mut seq, &prompt, &req, &mut |_| ControlFlow::Continue(())).unwrap().ids;
    let tie = margins.iter().position(|&m| m < case.tol.margin).unwrap_or(want.len());
    let upto = tie.min(want.len());
    if got.len() < upto || got[..upto] != want[..upto] {
        problems.push(format!(
            "{name}: greedy tokens differ before the first near-tie ({upto})\n ours {got:?}\n  ref {want:?}"
        ));
    }
    eprintln!(
        "{name}: max |dNLL| {worst:.5} (pos {at}), argmax {}/{} at margin >= {}, greedy {}/{} equal (near-tie at {tie})",
        clear.len() - wrong.len(),
        clear.len(),
        case.tol.margin,
        got.iter().zip(&want).take_while(|(a, b)| a == b).count(),
        want.len()
    );
    problems
}

fn run(cases: &[Case]) {
    let problems: Vec<String> = cases.iter().flat_map(check).collect();
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

fn every_arch(source: &'static str, reference: &'static str, tol: Tolerance) -> Vec<Case> {
    ARCHS.iter().map(|&arch| Case { arch, source, reference, tol }).collect()
}

#[test]
fn gguf_f32_matches_llama_cpp() {
    run(&every_arch("f32.gguf", "gguf-f32.json", EXACT));
}

#[test]
fn gguf_q8_0_matches_llama_cpp() {
    run(&every_arch("q8_0.gguf", "gguf-q8_0.json", ROUNDED));
}

#[test]
fn gguf_q4_k_matches_llama_cpp() {
    run(&every_arch("q4_k.gguf", "gguf-q4_k.json", ROUNDED));
}

/// gpt-oss as released: the experts' weights MXFP4 (the rest F32), against llama.cpp's
/// MXFP4 kernels.
#[test]
fn gguf_mxfp4_matches_llama_cpp() {
    run(&[Case { arch: "gpt_oss", source: "mxfp4.gguf", reference: "gguf-mxfp4.json", tol: ROUNDED }]);
}

#[test]
fn hf_f32_matches_transformers() {
    run(&every_arch("hf", "hf.json", EXACT));
}

#[test]
fn hf_bf16_and_sharded_match_transformers() {
    run(&[
        Case { arch: "qwen3", source: "hf-bf16", reference: "hf-bf16.json", tol: ROUNDED },
        Case { arch: "qwen3", source: "hf-sharded", reference: "hf.json", tol: EXACT },
    ]);
}

/// The same weights from GGUF and from safetensors give the same output.
#[test]
fn gguf_and_hf_of_the_same_weights_agree() {
    let text = std::fs::read_to_string(common::fixture("tiny/text.txt")).unwrap();
    let mut problems = Vec::new();
    for arch in ARCHS {
        let dir = models_dir().join(arch);
        let a = engine(&dir.join("f32.gguf"), KvDtype::F32);
        let b = engine(&dir.join("hf"), KvDtype::F32);
        let ids = a.tokenizer().encode(&text, Bos::ModelDefault).unwrap();
        assert_eq!(ids, b.tokenizer().encode(&text, Bos::ModelDefault).unwrap(), "{arch}: tokenizers differ");
        let (ra, rb) = (lem_engine::eval(&a, &ids).unwrap(), lem_engine::eval(&b, &ids).unwrap());
        let worst = ra.nll.iter().zip(&rb.nll).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        eprintln!("{arch}: GGUF vs HF max |dNLL| {worst:.2e}");
        if worst > 1e-4 {
            problems.push(format!("{arch}: GGUF and HF outputs differ by {worst:.2e} nats"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
