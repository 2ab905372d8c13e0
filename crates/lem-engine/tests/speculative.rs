//! Speculative decoding on the real models: with any drafter, the output (tokens, text,
//! finish reason, the sequence left behind) is exactly plain decoding's.

mod common;

use std::ops::ControlFlow;

use common::{MODELS, engine, model_path};
use lem_engine::sampling::SamplingParams;
use lem_engine::{
    DraftConfig, Drafter, Engine, EngineConfig, FinishReason, GenerateRequest, Generation, Sequence, generate,
    generate_with_drafter,
};
use lem_tokenizer::{Bos, ChatMessage};

fn chat(e: &Engine, user: &str) -> Vec<u32> {
    let text = e.render_chat(&[ChatMessage::user(user)]).unwrap();
    e.tokenizer().encode(&text, Bos::ModelDefault).unwrap()
}

fn greedy(max_tokens: usize) -> GenerateRequest {
    GenerateRequest { max_tokens, ..Default::default() }
}

fn with_ngram(req: &GenerateRequest) -> GenerateRequest {
    GenerateRequest { draft: Some(DraftConfig::ngram()), ..req.clone() }
}

/// Generates on a fresh sequence; checks that the streamed text is the final text.
fn run(e: &Engine, prompt: &[u32], req: &GenerateRequest) -> (Generation, Sequence) {
    let mut seq = e.new_sequence();
    let mut streamed = String::new();
    let g = generate(e, &mut seq, prompt, req, &mut |s| {
        streamed.push_str(s);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(streamed, g.text, "streamed text equals the final text");
    (g, seq)
}

#[track_caller]
fn assert_same(what: &str, plain: &(Generation, Sequence), spec: &(Generation, Sequence)) {
    assert_eq!(plain.0.ids, spec.0.ids, "{what}: tokens differ");
    assert_eq!(plain.0.text, spec.0.text, "{what}: text differs");
    assert_eq!(plain.0.finish_reason, spec.0.finish_reason, "{what}: finish reason differs");
    assert_eq!(plain.1.tokens(), spec.1.tokens(), "{what}: the sequences left behind differ");
    assert_eq!(plain.1.cache().len(), spec.1.cache().len(), "{what}: cache lengths differ");
}

const LIST: &str =
    "Repeat this list:\n1. apples\n2. bread\n3. milk\n4. carrots\n5. rice\n6. lemons\n7. coffee\n8. eggs";

const COPY: &str = "Copy the following text word for word:\nThe quick brown fox jumps over the lazy dog. \
    The early bird catches the worm. A stitch in time saves nine.";

const TYPO: &str = "Fix the typo in this sentence and write the corrected sentence: The cat sat on teh mat \
    and looked out of the window at the birds in the garden.";

/// Long enough on SmolLM2 to hit every limit.
const CODE: &str =
    "Write a Python function that adds two numbers, then write the same function again with a docstring.";

const FREE: &str = "Tell me a short story about a lighthouse keeper.";

#[test]
fn greedy_ngram_speculation_equals_plain_greedy() {
    for alias in MODELS {
        let e = engine(alias);
        for (name, prompt) in [("list", LIST), ("copy", COPY), ("typo", TYPO), ("code", CODE), ("free", FREE)] {
            let ids = chat(&e, prompt);
            let req = greedy(96);
            let plain = run(&e, &ids, &req);
            let spec = run(&e, &ids, &with_ngram(&req));
            assert_same(&format!("{alias}/{name}"), &plain, &spec);
            let s = spec.0.speculation;
            eprintln!("{alias}/{name}: {} tokens, {s:?}", spec.0.ids.len());
            eprintln!("{alias}/{name}: {:?}", spec.0.text);
            assert_eq!(plain.0.speculation.drafted, 0);
            assert!(s.accepted <= s.drafted);
            if ["list", "copy", "typo"].contains(&name) {
                assert!(s.accepted > 0, "{alias}/{name}: no draft accepted on an input-grounded prompt: {s:?}");
                assert!(s.decode_steps < spec.0.ids.len() - 1, "{alias}/{name}: no forward saved: {s:?}");
            }
        }
    }
}

/// A Gemma 3 prompt longer than its 512-token sliding window: the ring has wrapped
/// before decoding starts, and rolls back after every rejected draft.
#[test]
fn gemma3_past_the_window() {
    let e = engine("gemma3-270m");
    let mut text = String::from("Repeat this list:\n");
    for i in 0..150 {
        text.push_str(&format!("{}. box {} on shelf {}\n", i + 1, (i * 7) % 23, (i * 3) % 11));
    }
    let ids = chat(&e, &text);
    assert!(ids.len() > 700, "prompt of {} tokens does not wrap the window", ids.len());
    let req = greedy(120);
    let plain = run(&e, &ids, &req);
    let spec = run(&e, &ids, &with_ngram(&req));
    assert_same("gemma3/long", &plain, &spec);
    eprintln!("gemma3/long ({} prompt tokens): {:?}", ids.len(), spec.0.speculation);
    assert!(spec.0.speculation.accepted > 0);
}

/// Seeded sampling with penalties: every position is sampled from the same logits with
/// the same history and the same random draws, so it reproduces too.
#[test]
fn seeded_sampling_with_penalties_equals_plain() {
    let e = engine("smollm2-135m");
    let ids = chat(&e, LIST);
    for seed in [1, 2] {
        let req = GenerateRequest {
            max_tokens: 64,
            sampling: SamplingParams {
                temperature: 0.7,
                top_k: 40,
                top_p: 0.95,
                repeat_penalty: 1.05,
                frequency_penalty: 0.1,
                seed,
                ..SamplingParams::default()
            },
            ..Default::default()
        };
        let plain = run(&e, &ids, &req);
        let spec = run(&e, &ids, &with_ngram(&req));
        assert_same(&format!("seed {seed}"), &plain, &spec);
    }
}

/// Proposes the tokens a plain run produced (after `prompt_len` context tokens): every
/// draft is accepted in full, so steps accept many tokens at once and cross every limit.
struct Oracle {
    prompt_len: usize,
    ids: Vec<u32>,
    feedback: Vec<(usize, usize)>,
}

impl Drafter for Oracle {
    fn propose(&mut self, context: &[u32], max: usize, out: &mut Vec<u32>) {
        let at = context.len() - self.prompt_len;
        if at <= self.ids.len() && context[self.prompt_len..] == self.ids[..at] {
            out.extend(self.ids[at..].iter().take(max));
        }
    }

    fn feedback(&mut self, drafted: usize, accepted: usize) {
        self.feedback.push((drafted, accepted));
    }
}

/// Proposes a token that is never right.
struct Wrong;

impl Drafter for Wrong {
    fn propose(&mut self, context: &[u32], max: usize, out: &mut Vec<u32>) {
        out.extend(std::iter::repeat_n(context[context.len() - 1] ^ 1, max));
    }
}

fn run_with(e: &Engine, prompt: &[u32], req: &GenerateRequest, d: &mut dyn Drafter) -> (Generation, Sequence) {
    let mut seq = e.new_sequence();
    let mut streamed = String::new();
    let g = generate_with_drafter(e, &mut seq, prompt, req, d, &mut |s| {
        streamed.push_str(s);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(streamed, g.text);
    (g, seq)
}

#[test]
fn limits_and_stop_strings_hold_when_many_tokens_are_accepted_at_once() {
    let e = engine("smollm2-135m");
    let ids = chat(&e, CODE);
    let long = run(&e, &ids, &greedy(80)).0;
    assert_eq!(long.finish_reason, FinishReason::Length);
    let oracle = |ids: &[u32]| Oracle { prompt_len: ids.len(), ids: long.ids.clone(), feedback: Vec::new() };
    let bounds = DraftConfig { max_tokens: 16, ..DraftConfig::ngram() };

    // max_tokens at every offset inside a multi-token accept.
    for n in [0, 1, 2, 3, 5, 8, 13, 17, 31, 50] {
        let req = GenerateRequest { draft: Some(bounds), ..greedy(n) };
        let plain = run(&e, &ids, &greedy(n));
        let mut o = oracle(&ids);
        let spec = run_with(&e, &ids, &req, &mut o);
        assert_same(&format!("max_tokens {n}"), &plain, &spec);
        assert_eq!(spec.0.ids.len(), n);
        assert!(o.feedback.iter().all(|&(d, a)| d == a), "the oracle is always right: {:?}", o.feedback);
        if n >= 13 {
            assert!(o.feedback.iter().any(|&(d, _)| d > 4), "drafts grew: {:?}", o.feedback);
            assert!(spec.0.speculation.decode_steps < n / 2, "{:?}", spec.0.speculation);
        }
        let mut w = Wrong;
        let wrong = run_with(&e, &ids, &req, &mut w);
        assert_same(&format!("max_tokens {n}, wrong drafts"), &plain, &wrong);
        assert_eq!(wrong.0.speculation.accepted, 0);
    }

    // Stop strings completed at different places, some inside one token, some across.
    let text = &long.text;
    let mut stops: Vec<String> = Vec::new();
    for at in [3, 11, 20, 33, 47, 60] {
        let Some((start, _)) = text.char_indices().nth(at) else { continue };
        let s: String = text[start..].chars().take(4).collect();
        if s.chars().count() == 4 {
            stops.push(s);
        }
    }
    stops.push("\n".into());
    stops.push("never in the output".into());
    assert!(stops.len() >= 4, "{text:?}");
    for stop in &stops {
        let req = GenerateRequest { stop: vec!["never either".into(), stop.clone()], ..greedy(80) };
        let plain = run(&e, &ids, &req);
        let mut o = oracle(&ids);
        let spec = run_with(&e, &ids, &GenerateRequest { draft: Some(bounds), ..req.clone() }, &mut o);
        assert_same(&format!("stop {stop:?}"), &plain, &spec);
        let ngram = run(&e, &ids, &with_ngram(&req));
        assert_same(&format!("stop {stop:?}, n-gram"), &plain, &ngram);
    }

    // The sequence left behind continues exactly as the plain one does.
    let req = GenerateRequest { draft: Some(bounds), ..greedy(20) };
    let (_, mut a) = run(&e, &ids, &greedy(20));
    let (_, mut b) = run_with(&e, &ids, &req, &mut oracle(&ids));
    let ga = generate(&e, &mut a, &[], &greedy(24), &mut |_| ControlFlow::Continue(())).unwrap();
    let gb = generate(&e, &mut b, &[], &with_ngram(&greedy(24)), &mut |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(ga.ids, gb.ids, "continuing from the speculative sequence");
    assert_eq!(a.tokens(), b.tokens());
}

#[test]
fn context_full_is_honoured() {
    let ctx = 100;
    let e = Engine::load(&model_path("smollm2-135m"), EngineConfig { threads: 2, ctx_size: ctx }).unwrap();
    let ids = chat(&e, CODE);
    assert!(ids.len() + 30 < ctx, "{} prompt tokens", ids.len());
    let plain = run(&e, &ids, &greedy(400));
    assert_eq!(plain.0.finish_reason, FinishReason::ContextFull);
    let spec = run(&e, &ids, &with_ngram(&greedy(400)));
    assert_same("context full", &plain, &spec);
    let long = plain.0.ids.clone();
    let mut o = Oracle { prompt_len: ids.len(), ids: long, feedback: Vec::new() };
    let req = GenerateRequest { draft: Some(DraftConfig { max_tokens: 32, ..DraftConfig::ngram() }), ..greedy(400) };
    let oracle = run_with(&e, &ids, &req, &mut o);
    assert_same("context full, oracle", &plain, &oracle);
}

/// Speed, not correctness: `cargo test --release -p lem-engine --test speculative --
/// --ignored --nocapture` prints plain against n-gram speculative decode throughput.
#[test]
#[ignore]
fn draft_bench() {
    for alias in MODELS {
        let e = engine(alias);
        for (name, prompt) in [("list", LIST), ("copy", COPY), ("typo", TYPO), ("code", CODE), ("free", FREE)] {
            let ids = chat(&e, prompt);
            let r = lem_engine::bench_draft(&e, &ids, 128, DraftConfig::ngram()).unwrap();
            eprintln!(
                "{alias}/{name}: plain {:.1} tok/s, ngram {:.1} tok/s ({:.2}x), {} tokens, identical {}, {:?}",
                r.plain_tok_s,
                r.draft_tok_s,
                r.draft_tok_s / r.plain_tok_s,
                r.gen_tokens,
                r.identical,
                r.speculation
            );
            assert!(r.identical);
        }
    }
}
