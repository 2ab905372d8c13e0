//! Gemma 4 against llama.cpp on the tiny random-weight fixtures
//! (`scripts/fixtures/tiny_gemma4.py`, written by `scripts/fixtures/tiny_models.py` into
//! `target/tiny-models`): `gemma4` (sliding and global layers of different head sizes,
//! shared-KV layers, V from K, per-layer token embeddings) and `gemma4_moe` (a dense MLP
//! beside 8 routed experts, top-2), each in F32, Q8_0 and Q4_K. The references
//! (`tests/fixtures/tiny/gemma4*/gguf-*.json`) are `ref.py eval` of `text.txt` and `ref.py
//! greedy` of the lighthouse prompt, with their token ids, so no tokenizer is needed here.
//! Tolerances are those of every other tiny model (`lem-engine/tests/tiny_parity.rs`).
#![allow(missing_docs)]

use std::path::PathBuf;

use lem_kernels::Threads;
use lem_kv::KvDtype;
use lem_model::{LoadOptions, LogitsRequest, Model, SeqInput, Workspace};

/// How closely a file must follow its reference: the largest per-position NLL
/// difference (nats), and the reference margin from which argmax must agree (below it, a
/// greedy step is a near-tie).
#[derive(Debug, Clone, Copy)]
struct Tolerance {
    nll: f64,
    margin: f64,
}

const EXACT: Tolerance = Tolerance { nll: 0.02, margin: 0.1 };
const ROUNDED: Tolerance = Tolerance { nll: 0.5, margin: 0.5 };

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model(rel: &str) -> Model {
    let dir =
        std::env::var_os("LEM_TINY_MODELS").map(PathBuf::from).unwrap_or_else(|| repo().join("target/tiny-models"));
    let path = dir.join(rel);
    assert!(
        path.exists(),
        "{} is missing: run `python3 scripts/fixtures/tiny_models.py` (scripts/test.sh does)",
        path.display()
    );
    // llama.cpp's default f16 KV cache, as ref.py runs it.
    let opts = LoadOptions { kv_dtype: KvDtype::F16, ..LoadOptions::default() };
    Model::load_with(&path, &opts).unwrap_or_else(|e| panic!("loading {rel}: {e}"))
}

/// Every element of a GGUF file's tensors (from its tensor table).
fn stored_elements(rel: &str) -> u64 {
    let dir =
        std::env::var_os("LEM_TINY_MODELS").map(PathBuf::from).unwrap_or_else(|| repo().join("target/tiny-models"));
    let mut f = std::io::BufReader::new(std::fs::File::open(dir.join(rel)).unwrap());
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    content.tensor_infos.values().map(|i| i.shape.dims().iter().product::<usize>() as u64).sum()
}

fn reference(arch: &str, ft: &str) -> serde_json::Value {
    let p = repo().join(format!("tests/fixtures/tiny/{arch}/gguf-{ft}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn argmax(row: &[f32]) -> u32 {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as u32
}

/// Logits of every position of `toks`, fed in chunks of at most the batch limit.
fn all_logits(m: &Model, toks: &[u32], th: &Threads) -> Vec<Vec<f32>> {
    let (mut cache, mut ws, mut out) = (m.new_cache(), Workspace::default(), Vec::new());
    for part in toks.chunks(m.max_batch()) {
        let mut batch = [SeqInput { tokens: part, cache: &mut cache, logits: LogitsRequest::All }];
        m.forward(&mut batch, &mut ws, th, None).unwrap();
        out.extend(ws.logits(0, m.vocab()).chunks_exact(m.vocab()).map(<[f32]>::to_vec));
    }
    out
}

/// Greedy continuation of `prompt` for `n` tokens.
fn greedy(m: &Model, prompt: &[u32], n: usize, th: &Threads) -> Vec<u32> {
    let (mut cache, mut ws, mut out) = (m.new_cache(), Workspace::default(), Vec::new());
    let mut next: Vec<u32> = prompt.to_vec();
    for _ in 0..n {
        let mut batch = [SeqInput { tokens: &next, cache: &mut cache, logits: LogitsRequest::Last }];
        m.forward(&mut batch, &mut ws, th, None).unwrap();
        let t = argmax(ws.logits(0, m.vocab()));
        out.push(t);
        next = vec![t];
    }
    out
}

/// Checks one file against its reference; returns the problems and prints the numbers.
fn check(arch: &str, ft: &str, tol: Tolerance, th: &Threads) -> Vec<String> {
    let fx = reference(arch, ft);
    let name = format!("{arch}/{ft}.gguf");
    let mut problems = Vec::new();
    let (logit_std, nll_std) = (fx["stats"]["logit_std"].as_f64().unwrap(), fx["stats"]["nll_std"].as_f64().unwrap());
    if logit_std < 2.0 || nll_std < 1.0 {
        problems.push(format!("{name}: reference is too flat (logit std {logit_std:.2}, NLL std {nll_std:.2})"));
    }
    let m = model(&name);
    let toks = ids(&fx["eval"]["ids"]);
    let (want_nll, margin, want_arg) =
        (floats(&fx["eval"]["nll"]), floats(&fx["eval"]["margin"]), ids(&fx["eval"]["argmax"]));
    let logits = all_logits(&m, &toks, th);
    let n = want_nll.len().min(toks.len() - 1);
    let (mut worst, mut at, mut clear, mut wrong, mut big) = (0.0f64, 0, 0, Vec::new(), Vec::new());
    for i in 0..n {
        let row = &logits[i];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        let d = (lse - row[toks[i + 1] as usize] as f64 - want_nll[i]).abs();
        if d > worst {
            (worst, at) = (d, i);
        }
        if d > tol.nll / 2.0 {
            big.push(i);
        }
        if margin[i] >= tol.margin {
            clear += 1;
            if argmax(row) != want_arg[i] {
                wrong.push(i);
            }
        }
    }
    if worst > tol.nll {
        problems.push(format!("{name}: NLL differs by {worst:.4} nats at position {at} (tolerance {})", tol.nll));
    }
    if !wrong.is_empty() {
        problems.push(format!("{name}: argmax differs at clear positions {wrong:?}"));
    }
    let g = &fx["greedy"];
    let (prompt, want) = (ids(&g["prompt_ids"]), ids(&g["ids"]));
    let tie = floats(&g["margins"]).iter().position(|&m| m < tol.margin).unwrap_or(want.len());
    let got = greedy(&m, &prompt, want.len(), th);
    if got[..tie] != want[..tie] {
        problems
            .push(format!("{name}: greedy differs before the first near-tie ({tie})\n ours {got:?}\n  ref {want:?}"));
    }
    eprintln!(
        "{name}: max |dNLL| {worst:.4} (pos {at}; over {} at {big:?}), argmax {}/{clear} at margin >= {}, greedy {}/{} equal (near-tie at {tie})",
        tol.nll / 2.0,
        clear - wrong.len(),
        tol.margin,
        got.iter().zip(&want).take_while(|(a, b)| a == b).count(),
        want.len()
    );
    problems
}

fn run(ft: &str, tol: Tolerance) {
    let th = Threads::new(2);
    let problems: Vec<String> = ["gemma4", "gemma4_moe"].iter().flat_map(|a| check(a, ft, tol, &th)).collect();
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn f32_matches_llama_cpp() {
    run("f32", EXACT);
}

#[test]
fn q8_0_matches_llama_cpp() {
    run("q8_0", ROUNDED);
}

#[test]
fn q4_k_matches_llama_cpp() {
    run("q4_k", ROUNDED);
}

#[test]
fn layout_shares_kv_and_params_count_experts() {
    let m = model("gemma4/f32.gguf");
    let layout = m.cache_layout();
    let shares: Vec<Option<usize>> = layout.layers.iter().map(|s| s.shares).collect();
    assert_eq!(shares, [None, None, None, None, Some(2), Some(3)]);
    let dims: Vec<(usize, usize)> = layout.layers.iter().map(|s| (s.n_kv, s.head_dim)).collect();
    assert_eq!(dims, [(2, 16), (2, 16), (2, 16), (1, 32), (2, 16), (1, 32)]);
    assert!(m.per_layer().is_some());
    let dense = m.param_counts();
    assert_eq!(dense.total, dense.active);
    // Every stored element but the 16 rotary factors (`rope_freqs`), which lem counts as
    // configuration, not parameters.
    assert_eq!(dense.total, stored_elements("gemma4/f32.gguf") - 16);
    let moe = model("gemma4_moe/f32.gguf").param_counts();
    assert_eq!(moe.total, stored_elements("gemma4_moe/f32.gguf") - 16);
    // 4 layers of 8 experts (gate, up, down of 256 x 64) of which each token runs 2.
    assert_eq!(moe.total - moe.active, 4 * 6 * 3 * 256 * 64);
}
