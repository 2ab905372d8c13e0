//! Embeddings (`Engine::embed`, `Engine::hidden_states`) on the packaged SmolLM2 and
//! Gemma 3 models and the tiny llama model (GGUF and Hugging Face): pooling against a
//! reference computed from the hidden states, determinism, normalisation, batch equal to
//! one by one, and clear errors for bad input.

mod common;

use std::sync::Arc;

use lem_engine::{Engine, EngineConfig, EngineError, Pooling};
use lem_tokenizer::Bos;

/// The engines under test: (name, engine).
fn engines() -> Vec<(String, Arc<Engine>)> {
    let mut out: Vec<(String, Arc<Engine>)> =
        common::MODELS.iter().map(|m| (m.to_string(), common::engine(m))).collect();
    let tiny = common::tiny_models_dir().join("llama");
    for source in ["f32.gguf", "hf"] {
        let e = Engine::load(&tiny.join(source), EngineConfig { threads: 2, ctx_size: 1024 }).unwrap();
        out.push((format!("tiny llama {source}"), Arc::new(e)));
    }
    out
}

fn encode(engine: &Engine, text: &str) -> Vec<u32> {
    engine.tokenizer().encode(text, Bos::ModelDefault).unwrap()
}

/// The pooled, normalised reference from rows of hidden states, in f64.
fn reference(hidden: &[f32], d: usize, pooling: Pooling) -> Vec<f64> {
    let rows: Vec<&[f32]> = hidden.chunks_exact(d).collect();
    let v: Vec<f64> = match pooling {
        Pooling::Mean => {
            (0..d).map(|j| rows.iter().map(|r| f64::from(r[j])).sum::<f64>() / rows.len() as f64).collect()
        }
        Pooling::Last => rows[rows.len() - 1].iter().map(|&x| f64::from(x)).collect(),
        Pooling::First => rows[0].iter().map(|&x| f64::from(x)).collect(),
    };
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn pooling_matches_a_reference_from_the_hidden_states() {
    for (name, e) in engines() {
        let d = e.model().config().n_embd;
        let tokens = encode(&e, "The quick brown fox jumps over the lazy dog.");
        let hidden = e.hidden_states(&tokens).unwrap();
        assert_eq!(hidden.len(), tokens.len() * d, "{name}");
        assert!(hidden.iter().all(|x| x.is_finite()), "{name}");
        for pooling in [Pooling::Mean, Pooling::Last, Pooling::First] {
            let got = e.embed(std::slice::from_ref(&tokens), pooling).unwrap().remove(0);
            let want = reference(&hidden, d, pooling);
            assert_eq!(got.len(), d, "{name}");
            let err = got.iter().zip(&want).map(|(g, w)| (f64::from(*g) - w).abs()).fold(0.0, f64::max);
            assert!(err < 1e-6, "{name} {pooling:?}: largest difference {err}");
            let norm = got.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{name} {pooling:?}: norm {norm}");
        }
        // Mean, last and first differ on a text of several tokens.
        let mean = e.embed(std::slice::from_ref(&tokens), Pooling::Mean).unwrap().remove(0);
        let last = e.embed(std::slice::from_ref(&tokens), Pooling::Last).unwrap().remove(0);
        assert!(cosine(&mean, &last) < 0.9999, "{name}: mean and last pooling agree");
    }
}

#[test]
fn hidden_states_are_causal_and_do_not_depend_on_chunking() {
    // A prefix's states are the first rows of the longer input's (a causal model), and an
    // input longer than one forward call (split into several) gives the same rows.
    for (name, e) in engines() {
        let d = e.model().config().n_embd;
        let long: Vec<u32> = encode(&e, &"A long input that needs more than one forward call. ".repeat(60));
        assert!(long.len() > e.model().max_batch(), "{name}: {} tokens", long.len());
        let all = e.hidden_states(&long).unwrap();
        let cut = 37;
        let head = e.hidden_states(&long[..cut]).unwrap();
        assert_eq!(head, all[..cut * d], "{name}");
        let tail_start = e.model().max_batch() + 5;
        let part = e.hidden_states(&long[..tail_start]).unwrap();
        assert_eq!(part, all[..tail_start * d], "{name}");
    }
}

#[test]
fn same_input_same_vector_and_texts_differ() {
    for (name, e) in engines() {
        let a = encode(&e, "Paris is the capital of France.");
        let b = encode(&e, "Bananas are rich in potassium.");
        let first = e.embed(&[a.clone(), b.clone()], Pooling::Mean).unwrap();
        let again = e.embed(&[a.clone(), b.clone()], Pooling::Mean).unwrap();
        assert_eq!(first, again, "{name}");
        let c = cosine(&first[0], &first[1]);
        assert!(c < 0.9999, "{name}: different texts have cosine {c}");
        assert!((cosine(&first[0], &first[0]) - 1.0).abs() < 1e-6, "{name}");
    }
}

#[test]
fn batch_equals_one_by_one_bit_for_bit() {
    for (name, e) in engines() {
        let max_batch = e.model().max_batch();
        let mut inputs: Vec<Vec<u32>> = [
            "Hello.",
            "A somewhat longer sentence about embeddings and batches.",
            "x",
            "The batch packs inputs into forward calls of at most one batch of tokens each.",
        ]
        .iter()
        .map(|t| encode(&e, t))
        .collect();
        // One input longer than a forward call, so packing splits it across calls.
        let long = encode(&e, &"Split me across calls, please. ".repeat(90));
        assert!(long.len() > max_batch, "{name}");
        inputs.insert(2, long);
        for pooling in [Pooling::Mean, Pooling::Last] {
            let batch = e.embed(&inputs, pooling).unwrap();
            assert_eq!(batch.len(), inputs.len());
            for (i, input) in inputs.iter().enumerate() {
                let alone = e.embed(std::slice::from_ref(input), pooling).unwrap().remove(0);
                assert_eq!(batch[i], alone, "{name} {pooling:?}: input {i} differs in a batch");
            }
        }
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let e = common::engine("smollm2-135m");
    let ok = encode(&e, "fine");
    let over: Vec<u32> = vec![ok[0]; e.ctx_size() + 1];
    match e.embed(&[ok.clone(), over], Pooling::Mean) {
        Err(EngineError::PromptTooLong { tokens, ctx }) => {
            assert_eq!((tokens, ctx), (e.ctx_size() + 1, e.ctx_size()));
        }
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
    assert!(matches!(e.embed(&[vec![], ok.clone()], Pooling::Mean), Err(EngineError::EmptyPrompt)));
    let vocab = e.model().config().vocab as u32;
    let err = e.embed(&[ok.clone(), vec![1, vocab + 7]], Pooling::Last).unwrap_err().to_string();
    assert!(err.contains("input 1") && err.contains(&(vocab + 7).to_string()), "{err}");
    assert!(matches!(e.hidden_states(&[]), Err(EngineError::EmptyPrompt)));
    assert!(e.embed(&[], Pooling::Mean).unwrap().is_empty());
}

/// Embedding throughput on SmolLM2, batched and one by one (prints numbers; asserts
/// nothing about speed): `cargo test --release -p lem-engine --test embed embed_bench --
/// --ignored --nocapture`.
#[test]
#[ignore]
fn embed_bench() {
    let e = common::engine("smollm2-135m");
    let inputs: Vec<Vec<u32>> =
        (0..64).map(|i| encode(&e, &format!("Sentence number {i} about a topic that is fairly ordinary."))).collect();
    let tokens: usize = inputs.iter().map(Vec::len).sum();
    e.embed(&inputs[..2], Pooling::Mean).unwrap();
    let t = std::time::Instant::now();
    let batch = e.embed(&inputs, Pooling::Mean).unwrap();
    let batched = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let alone: Vec<Vec<f32>> =
        inputs.iter().map(|i| e.embed(std::slice::from_ref(i), Pooling::Mean).unwrap().remove(0)).collect();
    let single = t.elapsed().as_secs_f64();
    assert_eq!(batch, alone);
    let long = encode(&e, &"word ".repeat(2000));
    let t = std::time::Instant::now();
    e.embed(std::slice::from_ref(&long), Pooling::Mean).unwrap();
    let one_long = t.elapsed().as_secs_f64();
    println!(
        "embed_bench smollm2-135m, {} threads: 64 inputs / {tokens} tokens batched {:.0} tok/s, one by one {:.0} tok/s; \
         one input of {} tokens {:.0} tok/s",
        e.threads().count(),
        tokens as f64 / batched,
        tokens as f64 / single,
        long.len(),
        long.len() as f64 / one_long
    );
}
