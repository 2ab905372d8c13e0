//! Generation behaviour on the real default model: seeds, top-k, stop strings, limits.

mod common;

use std::ops::ControlFlow;

use common::engine;
use lem_engine::sampling::SamplingParams;
use lem_engine::{EngineError, FinishReason, GenerateRequest, Generation, generate};
use lem_tokenizer::Bos;

const MODEL: &str = "smollm2-135m";

fn run(prompt: &str, req: &GenerateRequest) -> Result<Generation, EngineError> {
    let e = engine(MODEL);
    let ids = e.tokenizer().encode(prompt, Bos::ModelDefault)?;
    let mut seq = e.new_sequence();
    let mut streamed = String::new();
    let g = generate(&e, &mut seq, &ids, req, &mut |s| {
        streamed.push_str(s);
        ControlFlow::Continue(())
    })?;
    assert_eq!(streamed, g.text, "streamed text equals the final text");
    Ok(g)
}

fn sampled(seed: u64, top_k: usize) -> GenerateRequest {
    GenerateRequest {
        max_tokens: 24,
        sampling: SamplingParams { temperature: 1.2, top_k, top_p: 0.98, seed, ..SamplingParams::default() },
        stop: vec![],
        ..Default::default()
    }
}

const PROMPT: &str = "<|im_start|>user\nTell me a story about a dragon.<|im_end|>\n<|im_start|>assistant\n";

#[test]
fn same_seed_same_output_and_seeds_matter() {
    let a = run(PROMPT, &sampled(7, 0)).unwrap();
    let b = run(PROMPT, &sampled(7, 0)).unwrap();
    assert_eq!(a.ids, b.ids, "a fixed seed reproduces");
    let others: Vec<Vec<u32>> = (100..103).map(|s| run(PROMPT, &sampled(s, 0)).unwrap().ids).collect();
    assert!(others.iter().any(|o| *o != a.ids), "different seeds never changed the output at temperature 1.2");
}

#[test]
fn top_k_one_equals_greedy() {
    let greedy = run(PROMPT, &GenerateRequest { max_tokens: 24, ..Default::default() }).unwrap();
    for seed in [1, 2] {
        let k1 = run(PROMPT, &sampled(seed, 1)).unwrap();
        assert_eq!(k1.ids, greedy.ids, "top-k 1 (seed {seed}) equals greedy");
    }
}

#[test]
fn stop_string_stops_and_is_not_emitted() {
    let full = run("The capital of France is", &GenerateRequest { max_tokens: 32, ..Default::default() }).unwrap();
    // Stop at the second word of the greedy continuation.
    let word = full.text.split_whitespace().nth(1).expect("two words").to_owned();
    let cut = full.text.find(&word).unwrap();
    let req = GenerateRequest { max_tokens: 32, stop: vec![word.clone()], ..Default::default() };
    let g = run("The capital of France is", &req).unwrap();
    assert_eq!(g.finish_reason, FinishReason::Stop);
    assert_eq!(g.text, full.text[..cut], "text ends right before the stop string {word:?}");
    assert!(g.ids.len() < full.ids.len());
}

#[test]
fn max_tokens_and_eos_finish_reasons() {
    let g = run(PROMPT, &GenerateRequest { max_tokens: 5, ..Default::default() }).unwrap();
    assert_eq!((g.ids.len(), g.finish_reason), (5, FinishReason::Length));
    // The fixture prompt where llama.cpp's greedy output ends with EOS after 8 tokens.
    let q = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of Australia?<|im_end|>\n<|im_start|>assistant\n";
    let g = run(q, &GenerateRequest { max_tokens: 64, ..Default::default() }).unwrap();
    assert_eq!(g.finish_reason, FinishReason::Stop);
    assert!(engine(MODEL).tokenizer().is_eog(*g.ids.last().unwrap()));
    assert!(!g.text.contains("<|im_end|>"), "end-of-turn token is not part of the text");
}

#[test]
fn prompt_longer_than_context_is_an_error() {
    let long = "word ".repeat(5000);
    let err = run(&long, &GenerateRequest { max_tokens: 4, ..Default::default() }).unwrap_err();
    assert!(matches!(err, EngineError::PromptTooLong { ctx: 4096, .. }), "{err}");
}

#[test]
fn invalid_sampling_is_an_error() {
    let req = GenerateRequest {
        max_tokens: 4,
        sampling: SamplingParams { temperature: -1.0, ..SamplingParams::default() },
        stop: vec![],
        ..Default::default()
    };
    assert!(matches!(run("hi", &req), Err(EngineError::Sampling(_))));
}

#[test]
fn cancel_from_the_stream_callback() {
    let e = engine(MODEL);
    let ids = e.tokenizer().encode(PROMPT, Bos::ModelDefault).unwrap();
    let mut seq = e.new_sequence();
    let req = GenerateRequest { max_tokens: 50, ..Default::default() };
    let mut calls = 0;
    let g = generate(&e, &mut seq, &ids, &req, &mut |_| {
        calls += 1;
        if calls == 3 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    })
    .unwrap();
    assert_eq!(g.finish_reason, FinishReason::Cancelled);
    assert!(g.ids.len() < 50);
}
