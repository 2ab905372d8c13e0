//! Prefill and decode throughput on synthetic tokens (the same prompt `ref.py bench`
//! uses, so numbers compare one to one with llama.cpp).

use std::time::Instant;

use serde::Serialize;

use crate::decode::SpeculationStats;
use crate::draft::DraftConfig;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::generate::{GenerateRequest, generate};

/// Throughput of one benchmark run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BenchReport {
    /// Prompt tokens per second.
    pub prefill_tok_s: f64,
    /// Generated tokens per second (greedy, one token per forward).
    pub decode_tok_s: f64,
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub gen_tokens: usize,
    /// Worker threads.
    pub threads: usize,
    /// Peak resident memory of the process so far, in bytes.
    pub peak_rss_bytes: u64,
    /// The sequence's K/V memory (peak resident bytes, cache types).
    pub kv: lem_kv::KvMemory,
}

/// Prefills `prompt_tokens` synthetic tokens, then decodes `gen_tokens` greedily.
pub fn bench(engine: &Engine, prompt_tokens: usize, gen_tokens: usize) -> Result<BenchReport, EngineError> {
    let prompt: Vec<u32> = (0..prompt_tokens).map(|i| 100 + ((i * 37) % 5000) as u32).collect();
    if prompt.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    if prompt_tokens + gen_tokens > engine.ctx_size() {
        return Err(EngineError::PromptTooLong { tokens: prompt_tokens + gen_tokens, ctx: engine.ctx_size() });
    }
    let mut seq = engine.new_sequence();
    seq.reserve(prompt_tokens + gen_tokens);
    let t = Instant::now();
    let mut next = crate::sampling::argmax(seq.feed(engine, &prompt)?);
    let prefill = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..gen_tokens {
        next = crate::sampling::argmax(seq.feed(engine, &[next])?);
    }
    let decode = t.elapsed().as_secs_f64();
    Ok(BenchReport {
        prefill_tok_s: prompt_tokens as f64 / prefill,
        decode_tok_s: if gen_tokens > 0 { gen_tokens as f64 / decode } else { 0.0 },
        prompt_tokens,
        gen_tokens,
        threads: engine.threads().count(),
        peak_rss_bytes: peak_rss_bytes(),
        kv: seq.cache().memory(),
    })
}

/// Plain against speculative greedy decoding of one prompt (see [`bench_draft`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DraftBenchReport {
    /// Generated tokens per second after the first, one token per forward.
    pub plain_tok_s: f64,
    /// The same with speculation.
    pub draft_tok_s: f64,
    /// Tokens generated (by each run).
    pub gen_tokens: usize,
    /// Whether both runs produced the same tokens (they always should).
    pub identical: bool,
    /// Drafted and accepted tokens of the speculative run.
    pub speculation: SpeculationStats,
    /// Worker threads.
    pub threads: usize,
}

/// Generates up to `gen_tokens` greedily after `prompt` twice, without and with
/// speculation by `draft`, and reports both speeds.
pub fn bench_draft(
    engine: &Engine,
    prompt: &[u32],
    gen_tokens: usize,
    draft: DraftConfig,
) -> Result<DraftBenchReport, EngineError> {
    let mut req = GenerateRequest { max_tokens: gen_tokens, ..Default::default() };
    let plain =
        generate(engine, &mut engine.new_sequence(), prompt, &req, &mut |_| std::ops::ControlFlow::Continue(()))?;
    req.draft = Some(draft);
    let spec =
        generate(engine, &mut engine.new_sequence(), prompt, &req, &mut |_| std::ops::ControlFlow::Continue(()))?;
    Ok(DraftBenchReport {
        plain_tok_s: plain.timings.decode_tok_s,
        draft_tok_s: spec.timings.decode_tok_s,
        gen_tokens: spec.ids.len(),
        identical: plain.ids == spec.ids,
        speculation: spec.speculation,
        threads: engine.threads().count(),
    })
}

/// Peak resident set size of this process (`VmHWM`), or 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Cost of verifying drafts: milliseconds of one forward of `1 + k` tokens after a
/// context of `context_tokens`, for `k = 0..=max_k` (median of `reps` runs each). The
/// ratio to `k = 0` is what a draft of `k` tokens costs in decode steps (see
/// [`VERIFY_COST_PER_TOKEN`](crate::draft::VERIFY_COST_PER_TOKEN)).
pub fn verify_cost(
    engine: &Engine,
    context_tokens: usize,
    max_k: usize,
    reps: usize,
) -> Result<Vec<(usize, f64)>, EngineError> {
    let prompt: Vec<u32> = (0..context_tokens.max(1)).map(|i| 100 + ((i * 37) % 5000) as u32).collect();
    let max_k = max_k.min(engine.model().max_batch().saturating_sub(1));
    if prompt.len() + max_k + 1 > engine.ctx_size() {
        return Err(EngineError::PromptTooLong { tokens: prompt.len() + max_k + 1, ctx: engine.ctx_size() });
    }
    let mut seq = engine.new_sequence();
    seq.feed(engine, &prompt)?;
    let mut out = Vec::new();
    for k in 0..=max_k {
        let input: Vec<u32> = (0..=k as u32).map(|i| 200 + i).collect();
        let mut times = Vec::new();
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            seq.feed_each(engine, &input, lem_model::LogitsRequest::All, &mut |_, _| {})?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            seq.truncate(prompt.len())?;
        }
        times.sort_by(f64::total_cmp);
        out.push((k, times[times.len() / 2]));
    }
    Ok(out)
}

/// Batched decode throughput (see [`bench_parallel`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ParallelReport {
    /// Sequences decoding together.
    pub sequences: usize,
    /// Generated tokens per second over all sequences.
    pub aggregate_tok_s: f64,
    /// The same with one sequence alone.
    pub single_tok_s: f64,
    /// `aggregate_tok_s / single_tok_s`.
    pub scaling: f64,
    /// Tokens generated per sequence.
    pub gen_tokens: usize,
    /// Worker threads.
    pub threads: usize,
}

/// Decodes `gen_tokens` greedily in each of `sequences` sequences at once through the
/// [`Batcher`](crate::Batcher) (one forward per step for all of them), after prefilling
/// each with its own synthetic `prompt_tokens`-token prompt (not timed), and the same
/// with one sequence; reports both aggregate speeds.
pub fn bench_parallel(
    engine: &Engine,
    sequences: usize,
    prompt_tokens: usize,
    gen_tokens: usize,
) -> Result<ParallelReport, EngineError> {
    let sequences = sequences.max(1);
    if prompt_tokens + gen_tokens + 1 > engine.ctx_size() {
        return Err(EngineError::PromptTooLong { tokens: prompt_tokens + gen_tokens + 1, ctx: engine.ctx_size() });
    }
    let run = |n: usize| -> Result<f64, EngineError> {
        let mut batcher = crate::Batcher::new(crate::BatchConfig { max_active: n, prefill_chunk: 512 });
        for s in 0..n {
            let prompt: Vec<u32> =
                (0..prompt_tokens.max(1)).map(|i| 100 + ((i * 37 + s * 101) % 5000) as u32).collect();
            let mut seq = engine.new_sequence();
            seq.feed(engine, &prompt)?;
            let request = GenerateRequest { max_tokens: gen_tokens, ..Default::default() };
            // No prompt: the job continues from the sequence's last token.
            let job = crate::Job { seq, prompt_ids: Vec::new(), request, top_logprobs: None, sink: Box::new(Discard) };
            batcher.admit(engine, job).map_err(|_| EngineError::StateMismatch("batch full".into()))?;
        }
        let t = Instant::now();
        let mut generated = 0;
        while !batcher.is_idle() {
            for f in batcher.step(engine) {
                generated += f.result?.ids.len();
            }
        }
        Ok(generated as f64 / t.elapsed().as_secs_f64())
    };
    let single = run(1)?;
    let aggregate = if sequences == 1 { single } else { run(sequences)? };
    Ok(ParallelReport {
        sequences,
        aggregate_tok_s: aggregate,
        single_tok_s: single,
        scaling: aggregate / single,
        gen_tokens,
        threads: engine.threads().count(),
    })
}

/// A sink that keeps nothing.
struct Discard;

impl crate::TokenSink for Discard {
    fn event(&mut self, _: crate::BatchEvent<'_>) -> std::ops::ControlFlow<()> {
        std::ops::ControlFlow::Continue(())
    }
}
