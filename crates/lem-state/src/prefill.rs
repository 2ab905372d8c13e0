//! Generation through the prefix cache: restore the longest cached prefix, prefill the
//! rest in block-aligned chunks storing every new block, then generate as usual.

use std::ops::ControlFlow;
use std::time::Instant;

use lem_engine::{Engine, GenerateRequest, Generation, Sequence, generate};
use lem_model::LogitsRequest;
use serde::Serialize;

use crate::error::StateError;
use crate::prefix::PrefixCache;

/// What the prefix cache did for one prefill.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct PrefillReport {
    /// Tokens restored from the cache.
    pub reused_tokens: usize,
    /// Tokens computed by the model (the last prompt token included).
    pub computed_tokens: usize,
    /// Blocks stored in the cache.
    pub stored_blocks: usize,
}

/// Makes `seq` hold its tokens plus all of `prompt` but the last token: restores the
/// longest cached prefix, then feeds the rest in chunks that end on block boundaries
/// (at most one batch each), storing each chunk's new complete blocks while every layer
/// still holds their positions (a sliding window forgets them later). Returns the report
/// and the last prompt token, which the caller feeds to get the logits to sample from.
///
/// Requires a non-empty `prompt`. Each block's K/V are exactly what an uninterrupted
/// prefill computes, because the model treats every row of a batch on its own.
pub fn prefill_cached(
    engine: &Engine,
    seq: &mut Sequence,
    prompt: &[u32],
    cache: &PrefixCache,
) -> Result<(PrefillReport, u32), StateError> {
    let Some((&last, _)) = prompt.split_last() else { return Err(lem_engine::EngineError::EmptyPrompt.into()) };
    let target: Vec<u32> = seq.tokens().iter().chain(prompt).copied().collect();
    if target.len() >= engine.ctx_size() {
        return Err(lem_engine::EngineError::PromptTooLong { tokens: target.len(), ctx: engine.ctx_size() }.into());
    }
    let reused = cache.restore(engine, seq, &target)?;
    let bt = cache.config().block_tokens;
    let max_batch = engine.model().max_batch().max(1);
    let chunk = if max_batch >= bt { max_batch / bt * bt } else { max_batch };
    let end = target.len() - 1;
    let mut stored = 0;
    let mut computed = 0;
    while seq.len() < end {
        let at = seq.len();
        let aligned = (at + chunk) / bt * bt;
        let stop = if aligned > at { aligned.min(end) } else { (at + chunk).min(end) };
        seq.feed_each(engine, &target[at..stop], LogitsRequest::None, &mut |_, _| {})?;
        computed += stop - at;
        stored += cache.store(engine, seq)?;
    }
    let report = PrefillReport { reused_tokens: reused, computed_tokens: computed + 1, stored_blocks: stored };
    Ok((report, last))
}

/// [`lem_engine::generate`] through `cache` (or without one when `None`): the result is
/// token for token what `generate` gives, with `prompt_ids` and the timings covering the
/// whole call (`ttft_ms` from its start, `prefill_tok_s` over the computed tokens). After
/// the generation, complete blocks that now include generated tokens are stored too.
pub fn generate_cached(
    engine: &Engine,
    seq: &mut Sequence,
    prompt: &[u32],
    req: &GenerateRequest,
    cache: Option<&PrefixCache>,
    on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> Result<(Generation, PrefillReport), StateError> {
    let Some(cache) = cache.filter(|_| !prompt.is_empty()) else {
        let g = generate(engine, seq, prompt, req, on_text)?;
        let report = PrefillReport { computed_tokens: prompt.len(), ..PrefillReport::default() };
        return Ok((g, report));
    };
    let start = Instant::now();
    let (report, last) = prefill_cached(engine, seq, prompt, cache)?;
    let ours = start.elapsed().as_secs_f64();
    let mut g = generate(engine, seq, &[last], req, on_text)?;
    let theirs = if g.timings.prefill_tok_s > 0.0 { 1.0 / g.timings.prefill_tok_s } else { 0.0 };
    let prefill_s = ours + theirs;
    g.prompt_ids = prompt.to_vec();
    g.timings.prefill_tok_s = if prefill_s > 0.0 { report.computed_tokens as f64 / prefill_s } else { 0.0 };
    if !g.ids.is_empty() {
        g.timings.ttft_ms += ours * 1e3;
    }
    let stored = cache.store(engine, seq)?;
    Ok((g, PrefillReport { stored_blocks: report.stored_blocks + stored, ..report }))
}
