//! Autoregressive generation: prefill, then sample token by token until EOS, a stop
//! string, the token budget or the context runs out.
//!
//! With a drafter ([`GenerateRequest::draft`], [`generate_with_drafter`]) generation is
//! speculative: each step feeds the pending token and up to k draft tokens in one forward
//! pass with logits for every position, samples position by position while the sampled
//! token equals the draft ([`Decoder::step`](crate::Decoder::step)), and truncates the
//! sequence to what was accepted. Logits do not depend on how many rows a forward
//! computes (ARCHITECTURE.md), and every position is sampled from the same logits with
//! the same history and the same random draws as plain decoding, so the output is exactly
//! plain decoding's: token for token for greedy decoding, and for seeded sampling
//! (penalties included) too. Only the number of forward passes changes.

use std::ops::ControlFlow;

use lem_model::{LogitsRequest, Observer};
use serde::Serialize;

use crate::constraint::Grammar;
use crate::decode::{DecodeEvent, Decoder, SpeculationStats};
use crate::draft::{DraftConfig, Drafter, Speculator};
use crate::engine::Engine;
use crate::error::EngineError;
use crate::sampling::SamplingParams;
use crate::sequence::Sequence;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GenerateRequest {
    /// Most new tokens to produce.
    pub max_tokens: usize,
    /// Sampling configuration (temperature 0 is greedy).
    pub sampling: SamplingParams,
    /// Generation ends when the text contains one of these (it is not emitted).
    pub stop: Vec<String>,
    /// Speculative decoding in [`generate`] (`None`, the default: one token per forward).
    /// The output is the same either way; the batcher and [`generate_with`] ignore it.
    pub draft: Option<DraftConfig>,
    /// Constrained decoding: every generated token is allowed by this grammar, and
    /// generation stops when the grammar is complete (`None`, the default: unconstrained).
    pub grammar: Option<Grammar>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The context is full.
    ContextFull,
    /// The caller asked to stop (e.g. a client went away).
    Cancelled,
}

/// Speed of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Timings {
    /// Prompt tokens per second of prefill.
    pub prefill_tok_s: f64,
    /// Generated tokens per second after the first.
    pub decode_tok_s: f64,
    /// Milliseconds from the start of the call to the first sampled token.
    pub ttft_ms: f64,
}

/// The result of [`generate`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generation {
    /// Prompt token ids fed in this call.
    pub prompt_ids: Vec<u32>,
    /// Generated token ids (including a final end-of-generation token, if one was sampled).
    pub ids: Vec<u32>,
    /// Generated text (without end-of-generation tokens and stop strings).
    pub text: String,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Speed.
    pub timings: Timings,
    /// Draft tokens proposed and accepted (all zero without speculation).
    pub speculation: SpeculationStats,
}

/// One generated token, as [`GenerateHook::on_token`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct TokenStep<'a> {
    /// Index among the generated tokens (0 for the first).
    pub index: usize,
    /// The sampled token id.
    pub id: u32,
    /// The text the stream decoder produced for it (empty for an end-of-generation token
    /// or while a UTF-8 character is incomplete; stop strings are not removed).
    pub piece: &'a str,
    /// The token's position in the sequence.
    pub position: usize,
    /// Whether the token went through the model (its K/V are in the cache, and the
    /// hook's observer saw that forward pass). The last token of a generation is not fed.
    pub fed: bool,
    /// Bytes of KV state the sequence holds after this step.
    pub kv_bytes: usize,
}

/// Watches a generation from inside (see [`generate_with`]); every method has a no-op
/// default, and [`generate`] is `generate_with` with a hook that does nothing.
pub trait GenerateHook {
    /// The observer for the model's forward passes (the prefill, then one pass per fed
    /// token); `None` (the default) captures nothing.
    fn observer(&mut self) -> Option<&mut dyn Observer> {
        None
    }
    /// Called once the prompt has been fed (`prompt_ids` are the tokens of this call).
    fn on_prefill(&mut self, _seq: &Sequence, _prompt_ids: &[u32]) {}
    /// Called once per generated token, after the forward pass that fed it (if any).
    fn on_token(&mut self, _step: &TokenStep<'_>) {}
}

/// The hook of [`generate`]: watches nothing.
struct NoHook;

impl GenerateHook for NoHook {}

/// Feeds `prompt_ids` to `seq` (after whatever it already holds) and generates. Text is
/// streamed through `on_text` as it becomes final (never half a UTF-8 character, never
/// part of a stop string); returning `ControlFlow::Break` from it cancels. With
/// `req.draft` set, decoding is speculative (same output, fewer forward passes when
/// drafts are accepted).
pub fn generate(
    engine: &Engine,
    seq: &mut Sequence,
    prompt_ids: &[u32],
    req: &GenerateRequest,
    on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> Result<Generation, EngineError> {
    match &req.draft {
        Some(cfg) => {
            let mut spec = Speculator::from_config(engine, cfg)?;
            run(engine, seq, prompt_ids, req, on_text, &mut NoHook, Some(&mut spec))
        }
        None => run(engine, seq, prompt_ids, req, on_text, &mut NoHook, None),
    }
}

/// [`generate`], with `hook` watching the forward passes and every step. The output is
/// the same as without the hook: observers only read. Speculation is off here (the
/// observer would see draft tokens that are rolled back): one token per forward.
pub fn generate_with(
    engine: &Engine,
    seq: &mut Sequence,
    prompt_ids: &[u32],
    req: &GenerateRequest,
    on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    hook: &mut dyn GenerateHook,
) -> Result<Generation, EngineError> {
    run(engine, seq, prompt_ids, req, on_text, hook, None)
}

/// [`generate`], speculating with `drafter` (whatever `req.draft` says; its length
/// bounds and adaptivity are used when set, [`DraftConfig::ngram`]'s otherwise).
pub fn generate_with_drafter(
    engine: &Engine,
    seq: &mut Sequence,
    prompt_ids: &[u32],
    req: &GenerateRequest,
    drafter: &mut dyn Drafter,
    on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> Result<Generation, EngineError> {
    let length = req.draft.as_ref().map_or_else(|| DraftConfig::ngram().length(), DraftConfig::length);
    let mut spec = Speculator::new(engine, Box::new(drafter), length);
    run(engine, seq, prompt_ids, req, on_text, &mut NoHook, Some(&mut spec))
}

/// A token reported by the decoder, waiting for its forward pass before the hook sees it;
/// its piece is `pieces[piece]` in the step's shared buffer (no allocation per token).
struct Pending {
    index: usize,
    id: u32,
    piece: std::ops::Range<usize>,
    position: usize,
}

/// Shows the hook this step's tokens; the first `fed` of them are in the cache.
fn report(hook: &mut dyn GenerateHook, pending: &[Pending], pieces: &str, fed: usize, kv_bytes: usize) {
    for (j, p) in pending.iter().enumerate() {
        hook.on_token(&TokenStep {
            index: p.index,
            id: p.id,
            piece: &pieces[p.piece.clone()],
            position: p.position,
            fed: j < fed,
            kv_bytes,
        });
    }
}

/// The generation loop: the decoder samples, this drives the forwards (and, with a
/// drafter, drafts, verifies and rolls back).
fn run(
    engine: &Engine,
    seq: &mut Sequence,
    prompt_ids: &[u32],
    req: &GenerateRequest,
    on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    hook: &mut dyn GenerateHook,
    mut spec: Option<&mut Speculator<'_>>,
) -> Result<Generation, EngineError> {
    let ctx = engine.ctx_size();
    if prompt_ids.is_empty() && seq.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    if seq.len() + prompt_ids.len() >= ctx {
        return Err(EngineError::PromptTooLong { tokens: seq.len() + prompt_ids.len(), ctx });
    }
    let mut dec = Decoder::new(engine, req, ctx, None)?;
    seq.reserve((seq.len() + prompt_ids.len() + req.max_tokens).min(ctx));

    let vocab = engine.model().vocab();
    // Most draft tokens one verification may carry: one forward holds `max_batch` tokens,
    // and the sliding-window ring (window + max_batch cells) can roll back that many.
    let max_draft = engine.model().max_batch().saturating_sub(1);
    let mut rows: Vec<f32> = if prompt_ids.is_empty() {
        // Continue from the last token's state: recompute its logits by rolling it back.
        let last = *seq.tokens().last().ok_or(EngineError::EmptyPrompt)?;
        seq.truncate(seq.len() - 1)?;
        seq.feed_observed(engine, &[last], hook.observer())?[..vocab].to_vec()
    } else {
        seq.feed_observed(engine, prompt_ids, hook.observer())?[..vocab].to_vec()
    };
    dec.prefilled();
    hook.on_prefill(seq, prompt_ids);

    let mut pending: Vec<Pending> = Vec::new();
    let mut pieces = String::new();
    let mut input: Vec<u32> = Vec::new();
    let mut drafted = 0;
    loop {
        pending.clear();
        pieces.clear();
        let accepted_before = dec.stats().accepted;
        let out = {
            let mut on_event = |ev: DecodeEvent<'_>| match ev {
                DecodeEvent::Token { index, id, piece, text, position, .. } => {
                    let start = pieces.len();
                    pieces.push_str(piece);
                    pending.push(Pending { index, id, piece: start..pieces.len(), position });
                    if text.is_empty() { ControlFlow::Continue(()) } else { on_text(text) }
                }
                DecodeEvent::Tail { text } => on_text(text),
            };
            dec.step(&rows, vocab, seq.tokens(), drafted, &mut on_event)?
        };
        if drafted > 0 {
            seq.truncate(seq.len() - drafted + out.keep)?;
            if let Some(spec) = spec.as_mut() {
                spec.settle(drafted, dec.stats().accepted - accepted_before);
            }
        }
        let Some(next) = out.next else {
            // Every reported token but the last is in the cache; the last was never fed.
            report(hook, &pending, &pieces, pending.len().saturating_sub(1), seq.kv_bytes());
            break;
        };

        input.clear();
        input.push(next);
        drafted = match spec.as_mut() {
            Some(spec) => spec.draft(engine, seq.tokens(), dec.draft_room(seq.len(), max_draft), &mut input)?,
            None => 0,
        };
        if drafted == 0 {
            let logits = seq.feed_observed(engine, &input, hook.observer())?;
            rows[..vocab].copy_from_slice(&logits[..vocab]);
        } else {
            rows.clear();
            seq.feed_each(engine, &input, LogitsRequest::All, &mut |_, row| rows.extend_from_slice(&row[..vocab]))?;
        }
        report(hook, &pending, &pieces, pending.len(), seq.kv_bytes());
    }
    let d = dec.finish(prompt_ids.len(), &mut |ev| match ev {
        DecodeEvent::Tail { text } => on_text(text),
        DecodeEvent::Token { .. } => ControlFlow::Continue(()),
    });
    Ok(Generation {
        prompt_ids: prompt_ids.to_vec(),
        ids: d.ids,
        text: d.text,
        finish_reason: d.finish_reason,
        timings: d.timings,
        speculation: d.speculation,
    })
}
