//! Routed feed-forward blocks do not depend on batch shape: on the tiny MoE models
//! (`scripts/fixtures/tiny_models.py` writes them into `target/tiny-models`;
//! `scripts/test.sh` runs it), a prefill of N tokens gives, bit for bit, the logits of N
//! one-token decode steps and of any chunking, and sequences batched together give the
//! logits and caches each gets alone, whatever the thread count. Experts run once per
//! chunk over the tokens routed to them, so these checks fail if grouping changed any
//! token's arithmetic.
#![allow(missing_docs)]

use std::path::PathBuf;

use lem_kernels::Threads;
use lem_kv::SeqCache;
use lem_model::{LogitsRequest, Model, SeqInput, Workspace};

/// Every MoE model, each source kind, and the dense Gemma 4.
const MODELS: &[&str] = &[
    "qwen3moe/f32.gguf",
    "qwen3moe/q8_0.gguf",
    "qwen3moe/q4_k.gguf",
    "qwen3moe/hf",
    "mixtral/f32.gguf",
    "mixtral/q8_0.gguf",
    "mixtral/q4_k.gguf",
    "mixtral/hf",
    "qwen2moe/f32.gguf",
    "qwen2moe/q8_0.gguf",
    "qwen2moe/q4_k.gguf",
    "qwen2moe/hf",
    "gpt_oss/f32.gguf",
    "gpt_oss/q8_0.gguf",
    "gpt_oss/q4_k.gguf",
    "gpt_oss/hf",
    // Gemma 4: a dense MLP beside the experts (and, dense, shared-KV layers and
    // per-layer token embeddings, whose rows must not depend on the batch either).
    "gemma4_moe/f32.gguf",
    "gemma4_moe/q8_0.gguf",
    "gemma4_moe/q4_k.gguf",
    "gemma4/f32.gguf",
];

fn model(rel: &str) -> Model {
    let dir = std::env::var_os("LEM_TINY_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tiny-models"));
    let path = dir.join(rel);
    assert!(
        path.exists(),
        "{} is missing: run `python3 scripts/fixtures/tiny_models.py` (scripts/test.sh does)",
        path.display()
    );
    Model::load(&path).unwrap_or_else(|e| panic!("loading {rel}: {e}"))
}

/// Deterministic token ids spread over the vocabulary.
fn tokens(seed: u32, n: usize, vocab: usize) -> Vec<u32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12_345);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s % vocab as u32
        })
        .collect()
}

/// One forward over several sequences; each one's logits.
fn forward(
    m: &Model,
    caches: &mut [SeqCache],
    toks: &[&[u32]],
    req: LogitsRequest,
    ws: &mut Workspace,
    th: &Threads,
) -> Vec<Vec<f32>> {
    let mut batch: Vec<SeqInput<'_>> =
        caches.iter_mut().zip(toks).map(|(cache, t)| SeqInput { tokens: t, cache, logits: req }).collect();
    m.forward(&mut batch, ws, th, None).unwrap();
    (0..toks.len()).map(|i| ws.logits(i, m.vocab()).to_vec()).collect()
}

/// Logits of every position of `toks` fed `chunk` tokens per call.
fn chunked(m: &Model, toks: &[u32], chunk: usize, th: &Threads) -> (Vec<f32>, SeqCache) {
    let (mut cache, mut ws, mut out) = (m.new_cache(), Workspace::default(), Vec::new());
    for part in toks.chunks(chunk) {
        out.extend(forward(m, std::slice::from_mut(&mut cache), &[part], LogitsRequest::All, &mut ws, th).remove(0));
    }
    (out, cache)
}

#[test]
fn prefill_equals_decode_steps_bit_for_bit() {
    let (one, three) = (Threads::new(1), Threads::new(3));
    for rel in MODELS {
        let m = model(rel);
        let toks = tokens(7, 40, m.vocab());
        let (whole, cache) = chunked(&m, &toks, toks.len(), &one);
        for (chunk, th) in [(1, &one), (1, &three), (7, &three), (16, &one)] {
            let (got, c) = chunked(&m, &toks, chunk, th);
            assert!(got == whole, "{rel}: chunks of {chunk} on {} threads differ from one prefill", th.count());
            assert!(c.export() == cache.export(), "{rel}: chunks of {chunk}: caches differ");
        }
    }
}

#[test]
fn batched_sequences_equal_each_alone_bit_for_bit() {
    let three = Threads::new(3);
    for rel in MODELS {
        let m = model(rel);
        let v = m.vocab();
        // A prefill next to a decode, then two decodes, then two prefills.
        let rounds = [
            [tokens(1, 12, v), tokens(2, 1, v)],
            [tokens(3, 1, v), tokens(4, 1, v)],
            [tokens(5, 5, v), tokens(6, 9, v)],
        ];
        let mut batched: Vec<SeqCache> = (0..2).map(|_| m.new_cache()).collect();
        let mut alone: Vec<SeqCache> = (0..2).map(|_| m.new_cache()).collect();
        let mut ws = Workspace::default();
        for (r, round) in rounds.iter().enumerate() {
            let refs: Vec<&[u32]> = round.iter().map(Vec::as_slice).collect();
            let got = forward(&m, &mut batched, &refs, LogitsRequest::All, &mut ws, &three);
            for (i, t) in round.iter().enumerate() {
                let want = forward(
                    &m,
                    std::slice::from_mut(&mut alone[i]),
                    &[t],
                    LogitsRequest::All,
                    &mut Workspace::default(),
                    &three,
                )
                .remove(0);
                assert!(got[i] == want, "{rel}: round {r} sequence {i}: batched logits differ from alone");
                assert!(batched[i].export() == alone[i].export(), "{rel}: round {r} sequence {i}: caches differ");
            }
        }
    }
}

/// Every element of a GGUF file's tensors (from its tensor table).
fn stored_elements(rel: &str) -> u64 {
    let dir = std::env::var_os("LEM_TINY_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tiny-models"));
    let mut f = std::io::BufReader::new(std::fs::File::open(dir.join(rel)).unwrap());
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    content.tensor_infos.values().map(|i| i.shape.dims().iter().product::<usize>() as u64).sum()
}

#[test]
fn parameter_counts_leave_out_the_unrouted_experts() {
    // Gemma 4 has no Hugging Face directory; tests/gemma4.rs counts its parameters.
    for rel in MODELS.iter().filter(|r| r.ends_with("f32.gguf") && !r.starts_with("gemma4")) {
        let m = model(rel);
        let c = m.param_counts();
        assert_eq!(c.total, stored_elements(rel), "{rel}: total parameters differ from the stored tensors");
        // An expert: gate, up and down, plus gpt-oss's biases.
        let cfg = m.config();
        let moe = cfg.moe.expect("a routed model");
        let biases = if cfg.arch == lem_model::Arch::GptOss { 2 * moe.n_ff_exp + cfg.n_embd } else { 0 };
        let per_expert = (3 * cfg.n_embd * moe.n_ff_exp + biases) as u64;
        let unused = (cfg.n_layer * (moe.n_expert - moe.n_expert_used)) as u64 * per_expert;
        assert_eq!(c.total - c.active, unused, "{rel}: active parameters");
        let hf = model(&rel.replace("f32.gguf", "hf"));
        assert_eq!(hf.param_counts(), c, "{rel}: the HF directory counts differently");
    }
    // A dense model uses every parameter.
    let dense = model("qwen3/f32.gguf").param_counts();
    assert_eq!((dense.active, dense.total), (dense.total, stored_elements("qwen3/f32.gguf")));
}
