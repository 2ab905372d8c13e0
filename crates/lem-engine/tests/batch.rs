//! The continuous-batching scheduler on the real default model: every sequence in a
//! batch gets exactly what `generate` gives it alone, whatever joins or leaves.

mod common;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::engine;
use lem_engine::sampling::SamplingParams;
use lem_engine::{
    BatchConfig, BatchEvent, Batcher, DraftConfig, DraftMethod, DraftModel, Engine, EngineError, FinishReason,
    Finished, GenerateRequest, Generation, Job, TokenSink, generate,
};
use lem_tokenizer::Bos;

const MODEL: &str = "smollm2-135m";

/// Collects streamed text; cancels after `cancel_after` tokens or when `gone` is set.
struct Collect {
    text: Arc<Mutex<String>>,
    tokens: usize,
    cancel_after: Option<usize>,
    gone: Arc<AtomicBool>,
}

impl TokenSink for Collect {
    fn event(&mut self, event: BatchEvent<'_>) -> ControlFlow<()> {
        let text = match event {
            BatchEvent::Token { text, .. } => {
                self.tokens += 1;
                text
            }
            BatchEvent::Tail { text } => text,
        };
        self.text.lock().unwrap().push_str(text);
        match self.cancel_after {
            Some(n) if self.tokens >= n => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    }

    fn is_cancelled(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }
}

fn chat(e: &Engine, user: &str) -> Vec<u32> {
    let text = format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n");
    e.tokenizer().encode(&text, Bos::ModelDefault).unwrap()
}

fn greedy(max_tokens: usize) -> GenerateRequest {
    GenerateRequest { max_tokens, ..Default::default() }
}

fn sampled(max_tokens: usize, seed: u64) -> GenerateRequest {
    GenerateRequest {
        max_tokens,
        sampling: SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.95, seed, ..SamplingParams::default() },
        stop: vec![],
        ..Default::default()
    }
}

fn alone(e: &Engine, prompt: &[u32], req: &GenerateRequest) -> Generation {
    let mut seq = e.new_sequence();
    generate(e, &mut seq, prompt, req, &mut |_| ControlFlow::Continue(())).unwrap()
}

fn job(e: &Engine, prompt: &[u32], req: &GenerateRequest) -> (Job, Arc<Mutex<String>>, Arc<AtomicBool>) {
    let text = Arc::new(Mutex::new(String::new()));
    let gone = Arc::new(AtomicBool::new(false));
    let sink = Collect { text: text.clone(), tokens: 0, cancel_after: None, gone: gone.clone() };
    let job = Job {
        seq: e.new_sequence(),
        prompt_ids: prompt.to_vec(),
        request: req.clone(),
        top_logprobs: None,
        sink: Box::new(sink),
    };
    (job, text, gone)
}

/// Steps until idle, admitting each job before the step numbered with it; returns the
/// finished jobs in the order given.
fn run_all(e: &Engine, b: &mut Batcher, jobs: Vec<(usize, Job)>) -> Vec<Finished> {
    let n = jobs.len();
    let mut later: Vec<(usize, usize, Job)> = jobs.into_iter().enumerate().map(|(i, (at, j))| (i, at, j)).collect();
    let mut ids = HashMap::new();
    let mut out = HashMap::new();
    let mut step = 0;
    loop {
        while let Some(pos) = later.iter().position(|(_, at, _)| *at <= step) {
            let (i, _, j) = later.remove(pos);
            ids.insert(b.admit(e, j).expect("capacity"), i);
        }
        if b.is_idle() && later.is_empty() {
            break;
        }
        for f in b.step(e) {
            out.insert(ids[&f.id], f);
        }
        step += 1;
        assert!(step < 10_000, "runaway");
    }
    (0..n).map(|i| out.remove(&i).expect("every job finished")).collect()
}

/// Runs `(prompt, request, admitted before step)` cases through one batcher; returns the
/// finished jobs and their streamed texts, in case order.
fn run_cases(
    e: &Engine,
    config: BatchConfig,
    cases: &[(Vec<u32>, GenerateRequest, usize)],
) -> (Vec<Finished>, Vec<Arc<Mutex<String>>>) {
    let mut b = Batcher::new(config);
    let mut texts = Vec::new();
    let mut later = Vec::new();
    for (prompt, req, at) in cases {
        let (j, text, _) = job(e, prompt, req);
        texts.push(text);
        later.push((*at, j));
    }
    (run_all(e, &mut b, later), texts)
}

#[test]
fn batched_sequences_match_generate_alone() {
    let e = engine(MODEL);
    let mut stop_req = greedy(40);
    // A stop string taken from the greedy output, so that it does trigger.
    let stop_prompt = chat(&e, "Name three colours.");
    let full = alone(&e, &stop_prompt, &greedy(40));
    let word = full.text.split_whitespace().nth(2).expect("three words").to_owned();
    stop_req.stop = vec![word];
    let cases: Vec<(Vec<u32>, GenerateRequest, usize)> = vec![
        (chat(&e, "What is the capital of France?"), greedy(24), 0),
        (chat(&e, "Write a haiku about the sea, please, with some detail on waves and wind."), greedy(30), 0),
        (chat(&e, "Tell me a story about a dragon."), sampled(20, 7), 3),
        (e.tokenizer().encode("The quick brown fox", Bos::ModelDefault).unwrap(), sampled(16, 42), 5),
        (stop_prompt, stop_req, 9),
        (chat(&e, "Count to five."), greedy(1), 2),
    ];
    // Small chunks: prompts are prefilled over several steps, beside decoding sequences.
    let (out, texts) = run_cases(&e, BatchConfig { max_active: 8, prefill_chunk: 13 }, &cases);
    for (i, (prompt, req, _)) in cases.iter().enumerate() {
        let want = alone(&e, prompt, req);
        let got = out[i].result.as_ref().unwrap();
        assert_eq!(got.ids, want.ids, "case {i}: ids");
        assert_eq!(got.text, want.text, "case {i}: text");
        assert_eq!(got.finish_reason, want.finish_reason, "case {i}: finish");
        assert_eq!(*texts[i].lock().unwrap(), want.text, "case {i}: streamed text");
        // The sequence holds the prompt and every generated token but the last.
        let seq = &out[i].seq;
        assert_eq!(seq.len(), prompt.len() + want.ids.len() - 1, "case {i}: sequence length");
    }
    assert_eq!(out[4].result.as_ref().unwrap().finish_reason, FinishReason::Stop);
}

#[test]
fn reused_prefix_continues_like_a_fresh_sequence() {
    let e = engine(MODEL);
    let first = chat(&e, "Describe a cat in one sentence.");
    let second = chat(&e, "Describe a dog in one sentence.");
    let mut b = Batcher::new(BatchConfig::default());
    let (j, _, _) = job(&e, &first, &greedy(8));
    let out = run_all(&e, &mut b, vec![(0, j)]);
    let mut seq = out.into_iter().next().unwrap().seq;
    let common = seq.common_prefix(&second);
    assert!(common >= 5, "chat prompts share the template's opening");
    seq.truncate(common).unwrap();
    let (mut j, _, _) = job(&e, &second[common..], &greedy(12));
    j.seq = seq;
    let got = run_all(&e, &mut b, vec![(0, j)]).into_iter().next().unwrap();
    assert_eq!(got.result.unwrap().ids, alone(&e, &second, &greedy(12)).ids);
}

#[test]
fn cancellation_capacity_and_errors() {
    let e = engine(MODEL);
    let prompt = chat(&e, "Tell me about the moon.");
    let mut b = Batcher::new(BatchConfig { max_active: 3, prefill_chunk: 64 });

    // A sink that breaks after 3 tokens; one whose receiver goes away during prefill.
    let text = Arc::new(Mutex::new(String::new()));
    let gone = Arc::new(AtomicBool::new(false));
    let breaker = Job {
        seq: e.new_sequence(),
        prompt_ids: prompt.clone(),
        request: greedy(50),
        top_logprobs: Some(2),
        sink: Box::new(Collect { text: text.clone(), tokens: 0, cancel_after: Some(3), gone: gone.clone() }),
    };
    let a = b.admit(&e, breaker).unwrap();
    let (j, _, gone_b) = job(&e, &prompt, &greedy(50));
    let bid = b.admit(&e, j).unwrap();
    let (j, _, _) = job(&e, &prompt, &greedy(6));
    let c = b.admit(&e, j).unwrap();
    // Full: the fourth job comes back.
    let (j, _, _) = job(&e, &prompt, &greedy(6));
    assert!(b.admit(&e, j).is_err());
    gone_b.store(true, Ordering::Relaxed);

    let mut out = HashMap::new();
    while !b.is_idle() {
        for f in b.step(&e) {
            out.insert(f.id, f);
        }
    }
    let ga = out[&a].result.as_ref().unwrap();
    assert_eq!(ga.finish_reason, FinishReason::Cancelled);
    assert_eq!(ga.ids.len(), 3);
    let gb = out[&bid].result.as_ref().unwrap();
    assert_eq!(gb.finish_reason, FinishReason::Cancelled);
    assert!(gb.ids.is_empty(), "cancelled before its first token");
    let gc = out[&c].result.as_ref().unwrap();
    assert_eq!(gc.ids, alone(&e, &prompt, &greedy(6)).ids, "others are unaffected");

    // Admission errors come back from the next step.
    let (j, _, _) = job(&e, &[], &greedy(4));
    let empty = b.admit(&e, j).unwrap();
    let long = vec![1u32; e.ctx_size()];
    let (j, _, _) = job(&e, &long, &greedy(4));
    let too_long = b.admit(&e, j).unwrap();
    let mut bad = greedy(4);
    bad.sampling.top_p = 0.0;
    let (j, _, _) = job(&e, &prompt, &bad);
    let bad_params = b.admit(&e, j).unwrap();
    let out: HashMap<u64, Finished> = b.step(&e).into_iter().map(|f| (f.id, f)).collect();
    assert!(matches!(out[&empty].result, Err(EngineError::EmptyPrompt)));
    assert!(matches!(out[&too_long].result, Err(EngineError::PromptTooLong { .. })));
    assert!(matches!(out[&bad_params].result, Err(EngineError::Sampling(_))));
    assert!(b.is_idle());
}

/// Sequences that speculate (prompt lookup, early exit, a draft model) and sequences that
/// do not share each forward: every one gets exactly what plain `generate` gives it
/// alone, greedy and seeded, on both packaged models (Gemma 3 past its sliding window).
#[test]
fn speculating_and_plain_sequences_share_a_batch() {
    for alias in common::MODELS {
        let e = engine(alias);
        let chat_ids = |user: &str| {
            let text = e.render_chat(&[lem_tokenizer::ChatMessage::user(user)]).unwrap();
            e.tokenizer().encode(&text, Bos::ModelDefault).unwrap()
        };
        let model = DraftModel::load(&common::model_path(alias), &e).unwrap();
        let ngram = Some(DraftConfig::ngram());
        let exit = Some(DraftConfig::with_method(DraftMethod::EarlyExit { layers: (e.model().n_layers() / 4).max(1) }));
        let own = Some(DraftConfig::with_method(DraftMethod::Model(model)));
        let mut long = String::from("Repeat this list:\n");
        for i in 0..140 {
            long.push_str(&format!("{}. box {} on shelf {}\n", i + 1, (i * 7) % 23, (i * 3) % 11));
        }
        let with = |req: GenerateRequest, draft: &Option<DraftConfig>| GenerateRequest { draft: draft.clone(), ..req };
        let cases: Vec<(Vec<u32>, GenerateRequest, usize)> = vec![
            (
                chat_ids("Repeat exactly: one two three four five six seven eight nine ten."),
                with(greedy(30), &ngram),
                0,
            ),
            (chat_ids("What is the capital of France?"), greedy(24), 0),
            (chat_ids("Copy this: the red fox jumps over the lazy brown dog."), with(greedy(28), &own), 1),
            (chat_ids("Tell me a story about a dragon."), with(sampled(20, 7), &ngram), 2),
            (chat_ids("Name the planets of the solar system."), with(greedy(24), &exit), 3),
            (chat_ids("List five fruits."), with(sampled(24, 3), &own), 4),
            (chat_ids(&long), with(greedy(40), &ngram), 5),
        ];
        let (out, texts) = run_cases(&e, BatchConfig { max_active: 8, prefill_chunk: 48 }, &cases);
        let mut drafted = 0;
        for (i, (prompt, req, _)) in cases.iter().enumerate() {
            let want = alone(&e, prompt, &GenerateRequest { draft: None, ..req.clone() });
            let got = out[i].result.as_ref().unwrap();
            assert_eq!(got.ids, want.ids, "{alias} case {i}: ids");
            assert_eq!(got.text, want.text, "{alias} case {i}: text");
            assert_eq!(got.finish_reason, want.finish_reason, "{alias} case {i}: finish");
            assert_eq!(*texts[i].lock().unwrap(), want.text, "{alias} case {i}: streamed text");
            assert_eq!(out[i].seq.len(), prompt.len() + want.ids.len() - 1, "{alias} case {i}: sequence length");
            if req.draft.is_none() {
                assert_eq!(got.speculation.drafted, 0, "{alias} case {i}: drafted without a drafter");
            }
            drafted += got.speculation.drafted;
            eprintln!("{alias} case {i}: {} tokens, {:?}", got.ids.len(), got.speculation);
        }
        assert!(drafted > 0, "{alias}: nothing was drafted");
        // The draft model is the target: every draft it proposed was accepted.
        let own = out[2].result.as_ref().unwrap().speculation;
        assert_eq!(own.accepted, own.drafted, "{alias}: {own:?}");
    }
}
