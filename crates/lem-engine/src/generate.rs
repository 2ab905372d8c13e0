//! Autoregressive generation: prefill, then sample token by token until EOS, a stop
//! string, the token budget or the context runs out.

use std::ops::ControlFlow;
use std::time::Instant;

use lem_model::Observer;
use lem_tokenizer::StreamDecoder;
use serde::Serialize;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::sampling::{Sampler, SamplingParams};
use crate::sequence::Sequence;
use crate::stop::StopMatcher;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GenerateRequest {
    /// Most new tokens to produce.
    pub max_tokens: usize,
    /// Sampling configuration (temperature 0 is greedy).
    pub sampling: SamplingParams,
    /// Generation ends when the text contains one of these (it is not emitted).
    pub stop: Vec<String>,
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
/// part of a stop string); returning `ControlFlow::Break` from it cancels.
pub fn generate(
    engine: &Engine,
    seq: &mut Sequence,
    prompt_ids: &[u32],
    req: &GenerateRequest,
    on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> Result<Generation, EngineError> {
    generate_with(engine, seq, prompt_ids, req, on_text, &mut NoHook)
}

/// [`generate`], with `hook` watching the forward passes and every step. The output is
/// the same as without the hook: observers only read.
pub fn generate_with(
    engine: &Engine,
    seq: &mut Sequence,
    prompt_ids: &[u32],
    req: &GenerateRequest,
    on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    hook: &mut dyn GenerateHook,
) -> Result<Generation, EngineError> {
    let start = Instant::now();
    let ctx = engine.ctx_size();
    if prompt_ids.is_empty() && seq.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    if seq.len() + prompt_ids.len() >= ctx {
        return Err(EngineError::PromptTooLong { tokens: seq.len() + prompt_ids.len(), ctx });
    }
    let mut sampler = Sampler::new(req.sampling)?;
    let tokenizer = engine.tokenizer();
    seq.reserve((seq.len() + prompt_ids.len() + req.max_tokens).min(ctx));

    let vocab = engine.model().vocab();
    let mut logits: Vec<f32> = if prompt_ids.is_empty() {
        // Continue from the last token's state: recompute its logits by rolling it back.
        let last = *seq.tokens().last().ok_or(EngineError::EmptyPrompt)?;
        seq.truncate(seq.len() - 1)?;
        seq.feed_observed(engine, &[last], hook.observer())?.to_vec()
    } else {
        seq.feed_observed(engine, prompt_ids, hook.observer())?.to_vec()
    };
    let prefill_s = start.elapsed().as_secs_f64();
    hook.on_prefill(seq, prompt_ids);

    let mut ids = Vec::with_capacity(req.max_tokens);
    let mut text = String::new();
    let mut stream = StreamDecoder::new(tokenizer.clone());
    let mut stops = StopMatcher::new(&req.stop);
    let mut ttft_ms = 0.0;
    let mut decode_start = Instant::now();
    let mut finish = FinishReason::Length;
    let mut emit = |s: &str, text: &mut String| -> ControlFlow<()> {
        if s.is_empty() {
            return ControlFlow::Continue(());
        }
        text.push_str(s);
        on_text(s)
    };
    while ids.len() < req.max_tokens {
        let id = sampler.sample(&logits[..vocab], seq.tokens());
        if ids.is_empty() {
            ttft_ms = start.elapsed().as_secs_f64() * 1e3;
            decode_start = Instant::now();
        }
        ids.push(id);
        let mut step = TokenStep {
            index: ids.len() - 1,
            id,
            piece: "",
            position: seq.len(),
            fed: false,
            kv_bytes: seq.kv_bytes(),
        };
        if tokenizer.is_eog(id) {
            hook.on_token(&step);
            finish = FinishReason::Stop;
            break;
        }
        let piece = stream.push(id)?;
        step.piece = &piece;
        let out = stops.push(&piece);
        let end = if emit(&out.emit, &mut text).is_break() {
            Some(FinishReason::Cancelled)
        } else if out.stopped.is_some() {
            Some(FinishReason::Stop)
        } else if ids.len() == req.max_tokens {
            Some(FinishReason::Length)
        } else if seq.len() + 1 >= ctx {
            Some(FinishReason::ContextFull)
        } else {
            None
        };
        if let Some(reason) = end {
            hook.on_token(&step);
            finish = reason;
            break;
        }
        logits.copy_from_slice(seq.feed_observed(engine, &[id], hook.observer())?);
        step.fed = true;
        step.kv_bytes = seq.kv_bytes();
        hook.on_token(&step);
    }
    if stops.stopped().is_none() && finish != FinishReason::Cancelled {
        let mut rest = stream.finish();
        let tail = stops.push(&rest);
        rest = tail.emit;
        if tail.stopped.is_some() {
            finish = FinishReason::Stop;
        } else {
            rest.push_str(&stops.finish());
        }
        let _ = emit(&rest, &mut text);
    }
    let decoded = ids.len().saturating_sub(1);
    let decode_s = decode_start.elapsed().as_secs_f64();
    let timings = Timings {
        prefill_tok_s: if prefill_s > 0.0 { prompt_ids.len() as f64 / prefill_s } else { 0.0 },
        decode_tok_s: if decoded > 0 && decode_s > 0.0 { decoded as f64 / decode_s } else { 0.0 },
        ttft_ms,
    };
    Ok(Generation { prompt_ids: prompt_ids.to_vec(), ids, text, finish_reason: finish, timings })
}
