//! Speculative decoding on the real models: with any drafter, the output (tokens, text,
//! finish reason, the sequence left behind) is exactly plain decoding's.

mod common;

use std::ops::ControlFlow;

use common::{MODELS, engine, model_path};
use lem_engine::sampling::SamplingParams;
use lem_engine::{
    DraftConfig, DraftMethod, DraftModel, Drafter, Engine, EngineConfig, EngineError, FinishReason, GenerateRequest,
    Generation, Sequence, generate, generate_with_drafter,
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

/// Long enough on SmolLM2 to hit every limit.
const CODE: &str =
    "Write a Python function that adds two numbers, then write the same function again with a docstring.";

/// One prompt of tests/fixtures/speculative/prompts.json.
#[derive(serde::Deserialize)]
struct Prompt {
    name: String,
    kind: String,
    form: String,
    text: String,
}

fn prompts() -> Vec<Prompt> {
    #[derive(serde::Deserialize)]
    struct File {
        prompts: Vec<Prompt>,
    }
    let path = common::fixture("speculative/prompts.json");
    let f: File = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f.prompts
}

fn prompt_ids(e: &Engine, p: &Prompt) -> Vec<u32> {
    match p.form.as_str() {
        "chat" => chat(e, &p.text),
        "raw" => e.tokenizer().encode(&p.text, Bos::ModelDefault).unwrap(),
        other => panic!("{}: unknown form {other}", p.name),
    }
}

/// Every drafter lem has, for `alias`: prompt lookup, early exit at a quarter of the
/// layers, and the model itself as its own draft model (whose greedy drafts the target
/// must accept in full: logits do not depend on how many rows a forward computes).
fn drafters(e: &Engine, alias: &str) -> Vec<(&'static str, DraftConfig)> {
    let layers = (e.model().n_layers() / 4).max(1);
    let model = DraftModel::load(&model_path(alias), e).unwrap();
    vec![
        ("ngram", DraftConfig::ngram()),
        ("early-exit", DraftConfig::with_method(DraftMethod::EarlyExit { layers })),
        ("self-model", DraftConfig::with_method(DraftMethod::Model(model))),
    ]
}

/// Greedy output with every drafter equals plain greedy output on 20 prompts per model
/// (chat and raw, input-grounded and open-ended).
#[test]
fn every_drafter_equals_plain_greedy_on_every_prompt() {
    let prompts = prompts();
    assert!(prompts.len() >= 20);
    for alias in MODELS {
        let e = engine(alias);
        let drafters = drafters(&e, alias);
        let mut grounded_ngram = lem_engine::SpeculationStats::default();
        for p in &prompts {
            let ids = prompt_ids(&e, p);
            let req = greedy(32);
            let plain = run(&e, &ids, &req);
            assert_eq!(plain.0.speculation.drafted, 0);
            for (name, draft) in &drafters {
                let spec = run(&e, &ids, &GenerateRequest { draft: Some(draft.clone()), ..req.clone() });
                let what = format!("{alias}/{}/{name}", p.name);
                assert_same(&what, &plain, &spec);
                let s = spec.0.speculation;
                eprintln!("{what}: {} tokens, {s:?}", spec.0.ids.len());
                assert!(s.accepted <= s.drafted, "{what}: {s:?}");
                if *name == "self-model" {
                    assert_eq!(s.accepted, s.drafted, "{what}: the model rejected its own greedy drafts: {s:?}");
                    assert!(spec.0.ids.len() < 4 || s.drafted > 0, "{what}: nothing drafted: {s:?}");
                }
                if *name == "ngram" && p.kind == "grounded" {
                    grounded_ngram.add(&s);
                }
            }
        }
        eprintln!("{alias}: prompt lookup on the grounded prompts: {grounded_ngram:?}");
        assert!(grounded_ngram.accepted > 0, "{alias}: prompt lookup never accepted on grounded prompts");
    }
}

/// Seeded sampling: the speculative run with every drafter reproduces plain sampling
/// with the same seed (penalties and filters included).
#[test]
fn seeded_sampling_with_every_drafter_equals_plain() {
    let e = engine("smollm2-135m");
    let ids = chat(&e, LIST);
    for (name, draft) in drafters(&e, "smollm2-135m") {
        for seed in [1, 2] {
            let req = GenerateRequest {
                max_tokens: 40,
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
            let spec = run(&e, &ids, &GenerateRequest { draft: Some(draft.clone()), ..req.clone() });
            assert_same(&format!("{name}, seed {seed}"), &plain, &spec);
        }
    }
}

/// The distribution of sampled text is plain sampling's: over many seeds, the first
/// tokens' frequencies under speculation and under plain sampling pass a chi-square
/// test of homogeneity (they are in fact equal seed by seed).
#[test]
fn speculative_sampling_leaves_the_distribution_unchanged() {
    let e = engine("smollm2-135m");
    let ids = chat(&e, "Say one word.");
    let mut base = e.new_sequence();
    base.feed(&e, &ids).unwrap();
    let tokens = 3;
    let mut counts: std::collections::HashMap<Vec<u32>, [u32; 2]> = std::collections::HashMap::new();
    let seeds = 120;
    let mut drafted = 0;
    for seed in 0..seeds {
        let req = GenerateRequest {
            max_tokens: tokens,
            sampling: SamplingParams { temperature: 1.0, seed, ..SamplingParams::default() },
            ..Default::default()
        };
        for (i, draft) in [None, Some(DraftConfig { adaptive: false, ..DraftConfig::ngram() })].into_iter().enumerate()
        {
            let mut seq = base.fork();
            let g = generate(&e, &mut seq, &[], &GenerateRequest { draft, ..req.clone() }, &mut |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
            drafted += g.speculation.drafted;
            // The first token's frequency (the rest make the categories too sparse).
            counts.entry(g.ids[..1].to_vec()).or_default()[i] += 1;
        }
    }
    assert!(drafted > 0, "nothing was drafted: the test would not exercise speculation");
    // Chi-square homogeneity over categories with enough mass; the rest pooled.
    let (mut cats, mut rest) = (Vec::new(), [0u32; 2]);
    for c in counts.values() {
        if c[0] + c[1] >= 10 {
            cats.push(*c);
        } else {
            rest[0] += c[0];
            rest[1] += c[1];
        }
    }
    cats.push(rest);
    let n = [seeds as f64; 2];
    let mut chi2 = 0.0;
    for c in &cats {
        let total = f64::from(c[0] + c[1]);
        for j in 0..2 {
            let expected = total * n[j] / (n[0] + n[1]);
            if expected > 0.0 {
                chi2 += (f64::from(c[j]) - expected).powi(2) / expected;
            }
        }
    }
    let df = cats.len().saturating_sub(1).max(1) as f64;
    // 99.9th percentile of chi-square, Wilson-Hilferty approximation.
    let z = 3.09;
    let critical = df * (1.0 - 2.0 / (9.0 * df) + z * (2.0 / (9.0 * df)).sqrt()).powi(3);
    eprintln!("{} categories, chi2 {chi2:.2}, critical {critical:.2}", cats.len());
    assert!(chi2 < critical, "chi2 {chi2} >= {critical}: {cats:?}");
}

/// A draft model must speak the target's tokens: another tokenizer is refused, and so is
/// an early exit outside the model.
#[test]
fn draft_models_with_another_tokenizer_are_refused() {
    let smol = engine("smollm2-135m");
    let err = DraftModel::load(&model_path("gemma3-270m"), &smol).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, EngineError::Draft { .. }), "{msg}");
    assert!(msg.contains("tokenizer differs"), "{msg}");
    for layers in [0, smol.model().n_layers()] {
        let cfg = DraftConfig::with_method(DraftMethod::EarlyExit { layers });
        let err = generate(
            &smol,
            &mut smol.new_sequence(),
            &[1, 2, 3],
            &GenerateRequest { draft: Some(cfg), ..greedy(4) },
            &mut |_| ControlFlow::Continue(()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("early exit"), "{err}");
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

/// Proposes the tokens a plain run produced (after `prompt_len` context tokens): every
/// draft is accepted in full, so steps accept many tokens at once and cross every limit.
struct Oracle {
    prompt_len: usize,
    ids: Vec<u32>,
    feedback: Vec<(usize, usize)>,
}

impl Drafter for Oracle {
    fn propose(&mut self, _: &Engine, context: &[u32], max: usize, out: &mut Vec<u32>) -> Result<(), EngineError> {
        let at = context.len() - self.prompt_len;
        if at <= self.ids.len() && context[self.prompt_len..] == self.ids[..at] {
            out.extend(self.ids[at..].iter().take(max));
        }
        Ok(())
    }

    fn feedback(&mut self, drafted: usize, accepted: usize) {
        self.feedback.push((drafted, accepted));
    }
}

/// Proposes a token that is never right.
struct Wrong;

impl Drafter for Wrong {
    fn propose(&mut self, _: &Engine, context: &[u32], max: usize, out: &mut Vec<u32>) -> Result<(), EngineError> {
        out.extend(std::iter::repeat_n(context[context.len() - 1] ^ 1, max));
        Ok(())
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
    let bounds = DraftConfig { max_tokens: 16, adaptive: false, ..DraftConfig::ngram() };

    // max_tokens at every offset inside a multi-token accept.
    for n in [0, 1, 2, 3, 5, 8, 13, 17, 31, 50] {
        let req = GenerateRequest { draft: Some(bounds.clone()), ..greedy(n) };
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
        let spec = run_with(&e, &ids, &GenerateRequest { draft: Some(bounds.clone()), ..req.clone() }, &mut o);
        assert_same(&format!("stop {stop:?}"), &plain, &spec);
        let ngram = run(&e, &ids, &with_ngram(&req));
        assert_same(&format!("stop {stop:?}, n-gram"), &plain, &ngram);
    }

    // The sequence left behind continues exactly as the plain one does.
    let req = GenerateRequest { draft: Some(bounds.clone()), ..greedy(20) };
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
/// --ignored --nocapture` prints plain against speculative decode throughput with every
/// drafter (bench/speculative.py is the benchmark proper).
#[test]
#[ignore]
fn draft_bench() {
    for alias in MODELS {
        let e = engine(alias);
        for p in prompts() {
            let ids = prompt_ids(&e, &p);
            for (name, draft) in drafters(&e, alias) {
                let r = lem_engine::bench_draft(&e, &ids, 96, draft).unwrap();
                eprintln!(
                    "{alias}/{}/{name}: plain {:.1} tok/s, draft {:.1} tok/s ({:.2}x), {} tokens, {:?}",
                    p.name,
                    r.plain_tok_s,
                    r.draft_tok_s,
                    r.draft_tok_s / r.plain_tok_s,
                    r.gen_tokens,
                    r.speculation
                );
                assert!(r.identical);
            }
        }
    }
}
