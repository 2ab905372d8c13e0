//! The decode state machine: one generation's sampler, stream decoder, stop strings,
//! token budget, context limit, timings and finish reason.
//!
//! [`generate`](crate::generate) and the [`Batcher`](crate::Batcher) both drive a
//! [`Decoder`]: they run the forward passes and own the [`Sequence`](crate::Sequence);
//! the decoder turns rows of logits into tokens and text. One [`Decoder::step`] takes the
//! logits of the pending token and, when speculating, of the draft tokens fed after it
//! (one row each), samples position by position, and stops at the first position where
//! the sampled token differs from the draft (the row after a disagreement was computed
//! for the wrong token and is never looked at). Every sampled token goes through the
//! same per-token rules whatever the number of rows, so speculation changes how many
//! forwards a generation takes, never what it produces.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use lem_tokenizer::{StreamDecoder, Tokenizer};
use serde::Serialize;

use crate::constraint::Constraint;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::generate::{FinishReason, GenerateRequest, Timings};
use crate::sampling::{Sampler, TokenLogprobs};
use crate::stop::StopMatcher;

/// What a [`Decoder`] reports while it runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DecodeEvent<'a> {
    /// A token was sampled.
    Token {
        /// Index among the generated tokens (0 for the first).
        index: usize,
        /// The token id.
        id: u32,
        /// Whether it is an end-of-generation token (it has no text; generation ends).
        eog: bool,
        /// The text the stream decoder produced for it (stop strings not removed).
        piece: &'a str,
        /// Text that became final with it: possibly empty (half a UTF-8 character, or the
        /// possible start of a stop string is held back).
        text: &'a str,
        /// The token's position in the sequence.
        position: usize,
        /// Log-probabilities, when the decoder was asked for them.
        logprobs: Option<&'a TokenLogprobs>,
    },
    /// Held-back text released when generation ends without a stop string.
    Tail {
        /// The text.
        text: &'a str,
    },
}

/// Counts of a speculative generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct SpeculationStats {
    /// Draft tokens fed to the model for verification.
    pub drafted: usize,
    /// Draft tokens the model agreed with.
    pub accepted: usize,
    /// Forward passes that verified a non-empty draft.
    pub verify_steps: usize,
    /// Forward passes over the generated tokens, drafting or not (the plain decode of
    /// the same output takes one per generated token after the first).
    pub decode_steps: usize,
}

impl SpeculationStats {
    /// Accepted over drafted tokens (0 when nothing was drafted).
    pub fn acceptance_rate(&self) -> f64 {
        if self.drafted == 0 { 0.0 } else { self.accepted as f64 / self.drafted as f64 }
    }

    /// Accepted tokens per verification step (0 when nothing was verified).
    pub fn mean_accepted_per_step(&self) -> f64 {
        if self.verify_steps == 0 { 0.0 } else { self.accepted as f64 / self.verify_steps as f64 }
    }

    /// Adds another generation's counts.
    pub fn add(&mut self, other: &SpeculationStats) {
        self.drafted += other.drafted;
        self.accepted += other.accepted;
        self.verify_steps += other.verify_steps;
        self.decode_steps += other.decode_steps;
    }
}

/// What one [`Decoder::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepOutcome {
    /// How many of the draft tokens stay in the sequence: the ones the model agreed with,
    /// except the token that ended the generation (the last sampled token is never fed).
    /// The driver truncates the sequence to `len - drafted + keep`.
    pub keep: usize,
    /// The token to feed next, unless generation ended.
    pub next: Option<u32>,
}

/// The result of a decode.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Generated token ids (including a final end-of-generation token, if one was sampled).
    pub ids: Vec<u32>,
    /// Generated text (without end-of-generation tokens and stop strings).
    pub text: String,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Index (into the request's `stop`) of the stop string that ended generation.
    pub stopped_by: Option<usize>,
    /// Speed.
    pub timings: Timings,
    /// Speculation counts (all zero without speculation).
    pub speculation: SpeculationStats,
}

/// One generation's decoding state (see the module documentation).
#[derive(Debug)]
pub struct Decoder {
    tokenizer: Arc<Tokenizer>,
    sampler: Sampler,
    /// The grammar, when decoding is constrained.
    constraint: Option<Constraint>,
    stream: Option<StreamDecoder>,
    stops: StopMatcher,
    max_tokens: usize,
    ctx: usize,
    top_logprobs: Option<usize>,
    ids: Vec<u32>,
    text: String,
    start: Instant,
    prefill_s: f64,
    ttft_ms: f64,
    decode_start: Instant,
    finish: Option<FinishReason>,
    stats: SpeculationStats,
}

impl Decoder {
    /// A decoder for `request` on `engine` in a context of `ctx` tokens, reporting the
    /// log-probabilities of each sampled token and of `top_logprobs` alternatives when
    /// asked; `request.grammar` is compiled here. The clock of the timings starts now.
    ///
    /// # Errors
    /// Invalid sampling parameters, or [`EngineError::Grammar`] for a grammar that does
    /// not compile.
    pub fn new(
        engine: &Engine,
        request: &GenerateRequest,
        ctx: usize,
        top_logprobs: Option<usize>,
    ) -> Result<Decoder, EngineError> {
        let sampler = Sampler::new(request.sampling)?;
        let constraint = match &request.grammar {
            Some(g) => Some(engine.constraint_factory()?.compile(g)?),
            None => None,
        };
        let tokenizer: Arc<Tokenizer> = engine.tokenizer().clone();
        let now = Instant::now();
        Ok(Decoder {
            constraint,
            stream: Some(StreamDecoder::new(tokenizer.clone())),
            tokenizer,
            sampler,
            stops: StopMatcher::new(&request.stop),
            max_tokens: request.max_tokens,
            ctx,
            top_logprobs,
            ids: Vec::with_capacity(request.max_tokens.min(4096)),
            text: String::new(),
            start: now,
            prefill_s: 0.0,
            ttft_ms: 0.0,
            decode_start: now,
            finish: None,
            stats: SpeculationStats::default(),
        })
    }

    /// Marks the end of the prefill (for the timings).
    pub fn prefilled(&mut self) {
        self.prefill_s = self.start.elapsed().as_secs_f64();
    }

    /// Generated tokens so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Tokens the budget still allows.
    pub fn remaining(&self) -> usize {
        self.max_tokens.saturating_sub(self.ids.len())
    }

    /// Most draft tokens a sequence of `len` tokens may verify in its next step, with
    /// room for `max_draft` in one forward: the step samples at most `k + 1` tokens, so
    /// `k` stays below the token budget, and the sequence never grows past `ctx - 1`
    /// (where plain decoding stops feeding).
    pub fn draft_room(&self, len: usize, max_draft: usize) -> usize {
        max_draft.min(self.remaining().saturating_sub(1)).min(self.ctx.saturating_sub(len + 2))
    }

    /// Whether generation has ended.
    pub fn is_done(&self) -> bool {
        self.finish.is_some()
    }

    /// Ends the generation as cancelled (unless it already ended).
    pub fn cancel(&mut self) {
        self.finish.get_or_insert(FinishReason::Cancelled);
    }

    /// The speculation counts so far.
    pub fn stats(&self) -> SpeculationStats {
        self.stats
    }

    /// Samples from `rows` (`drafted + 1` rows of `vocab` logits): row 0 holds the logits
    /// after the pending token, row `i` those after the `i`-th draft token. `tokens` is
    /// the sequence as fed, ending with the `drafted` draft tokens; row `i` is sampled
    /// with the history `tokens[..len - drafted + i]`. Sampling goes on while the
    /// sampled token equals the draft token at its position and generation has not
    /// ended; every sampled token is reported to `on_event` (a
    /// [`ControlFlow::Break`] from a token event cancels).
    pub fn step(
        &mut self,
        rows: &[f32],
        vocab: usize,
        tokens: &[u32],
        drafted: usize,
        on_event: &mut dyn FnMut(DecodeEvent<'_>) -> ControlFlow<()>,
    ) -> Result<StepOutcome, EngineError> {
        debug_assert!(rows.len() >= (drafted + 1) * vocab && drafted <= tokens.len());
        let base = tokens.len() - drafted;
        let draft = &tokens[base..];
        if !self.ids.is_empty() {
            self.stats.decode_steps += 1;
        }
        if drafted > 0 {
            self.stats.verify_steps += 1;
            self.stats.drafted += drafted;
        }
        if self.finish.is_none() && self.ids.len() >= self.max_tokens {
            self.finish = Some(FinishReason::Length);
        }
        if self.finish.is_some() {
            return Ok(StepOutcome { keep: 0, next: None });
        }
        let mut i = 0;
        loop {
            let id = self.sample_one(&rows[i * vocab..(i + 1) * vocab], &tokens[..base + i], base + i, on_event)?;
            let matched = i < drafted && id == draft[i];
            if matched {
                self.stats.accepted += 1;
            }
            if self.finish.is_some() {
                // The final token is never fed, whether or not it matched its draft.
                return Ok(StepOutcome { keep: i, next: None });
            }
            if !matched {
                return Ok(StepOutcome { keep: i, next: Some(id) });
            }
            i += 1;
        }
    }

    /// The per-token rules: sample, end-of-generation, stream decode, stop strings, the
    /// token budget and the context. `position` is the sequence length before the token
    /// would be fed.
    fn sample_one(
        &mut self,
        logits: &[f32],
        history: &[u32],
        position: usize,
        on_event: &mut dyn FnMut(DecodeEvent<'_>) -> ControlFlow<()>,
    ) -> Result<u32, EngineError> {
        let logits = match self.constraint.as_mut() {
            Some(c) => c.mask(logits).inspect_err(|_| self.finish = Some(FinishReason::Cancelled))?,
            None => logits,
        };
        let (id, lp) = match self.top_logprobs {
            Some(n) => {
                let (id, lp) = self.sampler.sample_with_logprobs(logits, history, n);
                (id, Some(lp))
            }
            None => (self.sampler.sample(logits, history), None),
        };
        if self.ids.is_empty() {
            self.ttft_ms = self.start.elapsed().as_secs_f64() * 1e3;
            self.decode_start = Instant::now();
        }
        let index = self.ids.len();
        self.ids.push(id);
        let eog = self.tokenizer.is_eog(id);
        if let Some(c) = self.constraint.as_mut() {
            c.commit(id, eog).inspect_err(|_| self.finish = Some(FinishReason::Cancelled))?;
        }
        if eog {
            let _ = on_event(DecodeEvent::Token {
                index,
                id,
                eog: true,
                piece: "",
                text: "",
                position,
                logprobs: lp.as_ref(),
            });
            self.finish = Some(FinishReason::Stop);
            return Ok(id);
        }
        let stream = self.stream.as_mut().expect("stream decoder lives until finish");
        let piece = match stream.push(id) {
            Ok(p) => p,
            Err(e) => {
                self.finish = Some(FinishReason::Cancelled);
                return Err(e.into());
            }
        };
        let out = self.stops.push(&piece);
        self.text.push_str(&out.emit);
        let event = DecodeEvent::Token {
            index,
            id,
            eog: false,
            piece: &piece,
            text: &out.emit,
            position,
            logprobs: lp.as_ref(),
        };
        self.finish = if on_event(event).is_break() {
            Some(FinishReason::Cancelled)
        } else if out.stopped.is_some() || self.constraint.as_ref().is_some_and(Constraint::is_complete) {
            Some(FinishReason::Stop)
        } else if self.ids.len() == self.max_tokens {
            Some(FinishReason::Length)
        } else if position + 1 >= self.ctx {
            Some(FinishReason::ContextFull)
        } else {
            None
        };
        Ok(id)
    }

    /// Ends the generation: flushes held-back text (through `on_event`, as a
    /// [`DecodeEvent::Tail`]) unless a stop string was hit or it was cancelled, and
    /// returns the result. `prompt_tokens` is the prefill length for the timings. A
    /// decoder that has not ended counts as cancelled.
    pub fn finish(
        mut self,
        prompt_tokens: usize,
        on_event: &mut dyn FnMut(DecodeEvent<'_>) -> ControlFlow<()>,
    ) -> Decoded {
        let mut finish = self.finish.unwrap_or(FinishReason::Cancelled);
        if self.stops.stopped().is_none() && finish != FinishReason::Cancelled {
            let rest = self.stream.take().map(StreamDecoder::finish).unwrap_or_default();
            let tail = self.stops.push(&rest);
            let mut rest = tail.emit;
            if tail.stopped.is_some() {
                finish = FinishReason::Stop;
            } else {
                rest.push_str(&self.stops.finish());
            }
            if !rest.is_empty() {
                self.text.push_str(&rest);
                let _ = on_event(DecodeEvent::Tail { text: &rest });
            }
        }
        let decoded = self.ids.len().saturating_sub(1);
        let decode_s = self.decode_start.elapsed().as_secs_f64();
        let timings = Timings {
            prefill_tok_s: if self.prefill_s > 0.0 { prompt_tokens as f64 / self.prefill_s } else { 0.0 },
            decode_tok_s: if decoded > 0 && decode_s > 0.0 { decoded as f64 / decode_s } else { 0.0 },
            ttft_ms: self.ttft_ms,
        };
        Decoded {
            ids: self.ids,
            text: self.text,
            finish_reason: finish,
            stopped_by: self.stops.stopped(),
            timings,
            speculation: self.stats,
        }
    }
}
