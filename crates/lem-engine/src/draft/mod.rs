//! Drafters for speculative decoding: guesses of the next few tokens that the target
//! model then verifies in one forward pass (see [`generate`](crate::generate) and the
//! [`Batcher`](crate::Batcher)).
//!
//! A [`Drafter`] sees the whole context (prompt and generated tokens, ending with the
//! token about to be fed) and proposes up to `max` tokens to follow it; after the
//! verification it is told how many the model agreed with. The verifier does not care
//! where a draft comes from:
//!
//! - [`NGramDrafter`]: prompt lookup, what followed the longest recent n-gram;
//! - early exit: the target's own first layers, final norm and output head, with a small
//!   cache of their own (no extra weights);
//! - a [`DraftModel`]: a smaller model with the same tokenizer, its own cache, run on the
//!   engine's one thread pool;
//! - later a learned head (an MTP assistant, EAGLE), which is one more `Drafter`.
//!
//! Every step of a speculating sequence goes through one [`Speculator`]: it keeps the
//! drafter's view of the context, asks for a draft of the length [`DraftLength`] allows,
//! and reports the outcome. `generate` and the batcher both drive it, so there is one
//! speculation path.
//!
//! How many tokens to ask for is the verifier's business ([`DraftLength`]): it grows
//! after a fully accepted draft and shrinks after a rejection, within bounds, and it
//! stops drafting while the measured acceptance says a draft costs more than it saves.

mod model;

pub use model::DraftModel;
use model::ModelDrafter;

use crate::engine::Engine;
use crate::error::EngineError;

/// Proposes continuations of a context.
pub trait Drafter: Send {
    /// Appends up to `max` tokens to `out` that may follow `context` (which ends with the
    /// token the verifier feeds next). Proposing nothing is always allowed: that step is
    /// then a plain decode step. `engine` is the target's (its thread pool, and for
    /// self-speculation its weights).
    ///
    /// # Errors
    /// A drafter that runs a model reports that model's failures.
    fn propose(&mut self, engine: &Engine, context: &[u32], max: usize, out: &mut Vec<u32>) -> Result<(), EngineError>;

    /// The verifier kept the first `accepted` of the `drafted` tokens last proposed.
    fn feedback(&mut self, _drafted: usize, _accepted: usize) {}

    /// What drafting one token costs, in decode steps of `engine`'s model (0, the
    /// default, for a drafter that runs no model). The draft length weighs it against
    /// the measured acceptance.
    fn cost(&self, _engine: &Engine) -> f64 {
        0.0
    }
}

impl<D: Drafter + ?Sized> Drafter for &mut D {
    fn propose(&mut self, engine: &Engine, context: &[u32], max: usize, out: &mut Vec<u32>) -> Result<(), EngineError> {
        (**self).propose(engine, context, max, out)
    }

    fn feedback(&mut self, drafted: usize, accepted: usize) {
        (**self).feedback(drafted, accepted);
    }

    fn cost(&self, engine: &Engine) -> f64 {
        (**self).cost(engine)
    }
}

/// Where drafts come from.
#[derive(Debug, Clone, PartialEq)]
pub enum DraftMethod {
    /// Prompt lookup ([`NGramDrafter`]): the longest recent n-gram of the context, `n`
    /// from `max_n` down to `min_n`, found earlier in the context, and what followed it.
    NGram {
        /// Shortest n-gram to look up (at least 1).
        min_n: usize,
        /// Longest n-gram to look up.
        max_n: usize,
    },
    /// Self-speculation: the target's first `layers` layers, then its final norm and
    /// output head, decoding greedily with a cache of those layers only.
    EarlyExit {
        /// Layers to run (at least 1, at most the model's).
        layers: usize,
    },
    /// A smaller model with the target's tokenizer, decoding greedily.
    Model(DraftModel),
}

/// Speculative decoding settings of a [`GenerateRequest`](crate::GenerateRequest).
#[derive(Debug, Clone, PartialEq)]
pub struct DraftConfig {
    /// The drafter.
    pub method: DraftMethod,
    /// Fewest tokens to ask the drafter for (at least 1).
    pub min_tokens: usize,
    /// Most tokens to ask the drafter for (capped by what one forward pass can hold and the
    /// KV cache can roll back: the model's batch size minus one).
    pub max_tokens: usize,
    /// Stop drafting while the measured acceptance says drafts cost more than they save
    /// (probing again now and then); `false` drafts at every step.
    pub adaptive: bool,
}

impl DraftConfig {
    /// Prompt lookup with n-grams of 4 down to 1 tokens and drafts of 1 to 8 tokens.
    pub fn ngram() -> DraftConfig {
        DraftConfig::with_method(DraftMethod::NGram { min_n: 1, max_n: 4 })
    }

    /// `method` with drafts of 1 to 8 tokens, adaptive.
    pub fn with_method(method: DraftMethod) -> DraftConfig {
        DraftConfig { method, min_tokens: 1, max_tokens: 8, adaptive: true }
    }

    /// The drafter these settings describe, for `engine`'s model.
    ///
    /// # Errors
    /// An early exit at no layer or past the model's last layer.
    pub fn drafter(&self, engine: &Engine) -> Result<Box<dyn Drafter>, EngineError> {
        Ok(match &self.method {
            DraftMethod::NGram { min_n, max_n } => Box::new(NGramDrafter::new(*min_n, *max_n)),
            DraftMethod::EarlyExit { layers } => Box::new(ModelDrafter::early_exit(engine, *layers)?),
            DraftMethod::Model(m) => Box::new(ModelDrafter::model(m.clone())),
        })
    }

    /// The adaptive draft length these settings start with.
    pub fn length(&self) -> DraftLength {
        let l = DraftLength::new(self.min_tokens, self.max_tokens);
        if self.adaptive { l } else { l.fixed() }
    }
}

/// Extra cost of verifying one more draft token, relative to a one-token decode step.
///
/// Measured on the packaged models, 2 threads (`lem bench --draft-cost`, docs/speculative.md):
/// a forward of `1 + k` tokens costs `1 + c k` decode steps with c between 0.13 and 0.45
/// for k up to 8 (Gemma 3 at the low end, SmolLM2, whose 49,152-row output head is a
/// third of its weights, at the high end). A middle value is used: drafting stops a
/// little early on Gemma 3 and a little late on SmolLM2.
pub const VERIFY_COST_PER_TOKEN: f64 = 0.3;

/// Adaptive draft length: starts in the middle of its bounds, grows by 2 after a draft
/// was accepted in full, shrinks by 1 after a rejection; and, when adaptive, pauses
/// drafting while the measured acceptance makes a one-token draft not worth its cost.
///
/// The acceptance estimate is a per-token survival rate `p` (accepted tokens over
/// accepted tokens plus rejections, decayed so recent steps count most). A draft of `k`
/// tokens then yields `1 + p + ... + p^k` tokens for the cost of `1 + c k` steps (c is
/// [`VERIFY_COST_PER_TOKEN`] plus what the drafter spends per token); while that is below 1 even for `k = 1` (`p < c`),
/// drafting pauses for a back-off that doubles after each unsuccessful probe (4 steps up
/// to 64), then one short probe draft measures again. Prompt lookup that finds no match
/// costs nothing and is never counted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DraftLength {
    min: usize,
    max: usize,
    cur: usize,
    adaptive: bool,
    /// What drafting one token costs, in decode steps (see [`Drafter::cost`]).
    draft_cost: f64,
    /// Decayed counts of accepted tokens and of rejections.
    hits: f64,
    misses: f64,
    /// Steps left without drafting, and the next back-off.
    paused: usize,
    backoff: usize,
}

/// Weight of history in the acceptance estimate, per verification.
const DECAY: f64 = 0.8;
const BACKOFF_MIN: usize = 4;
const BACKOFF_MAX: usize = 64;

impl DraftLength {
    /// Bounds `min..=max` (`min` at least 1, `max` at least `min`), adaptive.
    pub fn new(min: usize, max: usize) -> DraftLength {
        let min = min.max(1);
        let max = max.max(min);
        DraftLength {
            min,
            max,
            cur: (min + max) / 2,
            adaptive: true,
            draft_cost: 0.0,
            // A neutral prior: one accepted token and one rejection.
            hits: 1.0,
            misses: 1.0,
            paused: 0,
            backoff: BACKOFF_MIN,
        }
    }

    /// The same bounds, never pausing.
    pub fn fixed(self) -> DraftLength {
        DraftLength { adaptive: false, ..self }
    }

    /// The same, for a drafter whose every drafted token costs `cost` decode steps.
    pub fn with_draft_cost(self, cost: f64) -> DraftLength {
        DraftLength { draft_cost: cost.max(0.0), ..self }
    }

    /// How many tokens to ask for now (without counting a step).
    pub fn get(&self) -> usize {
        self.cur
    }

    /// The estimated chance that a drafted token is accepted, given the ones before it were.
    pub fn acceptance(&self) -> f64 {
        self.hits / (self.hits + self.misses)
    }

    /// Expected tokens per forward pass over plain decoding's one, for a draft of `k`.
    pub fn expected_gain(&self, k: usize) -> f64 {
        let p = self.acceptance();
        let tokens: f64 = (0..=k).map(|i| p.powi(i as i32)).sum();
        tokens / (1.0 + (VERIFY_COST_PER_TOKEN + self.draft_cost) * k as f64)
    }

    /// Counts one decode step and says how many tokens to draft in it: the current
    /// length, or 0 while drafting is paused.
    pub fn advance(&mut self) -> usize {
        if self.paused > 0 {
            self.paused -= 1;
            // The last paused step probes with the shortest draft.
            return if self.paused == 0 { self.min } else { 0 };
        }
        self.cur
    }

    /// Adapts to the outcome of one verification (nothing changes when nothing was
    /// drafted).
    pub fn update(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        let full = accepted >= drafted;
        self.cur = if full { (self.cur + 2).min(self.max) } else { self.cur.saturating_sub(1).max(self.min) };
        self.hits = self.hits * DECAY + accepted as f64;
        self.misses = self.misses * DECAY + if full { 0.0 } else { 1.0 };
        if !self.adaptive {
            return;
        }
        if self.expected_gain(1) < 1.0 {
            self.paused = self.backoff;
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        } else {
            self.backoff = BACKOFF_MIN;
        }
    }
}

/// One sequence's speculation: its drafter, the drafter's view of the context, and the
/// draft length. [`generate`](crate::generate) and the [`Batcher`](crate::Batcher) both
/// drive it: [`Speculator::draft`] before a forward, [`Speculator::settle`] after it.
pub struct Speculator<'a> {
    drafter: Box<dyn Drafter + 'a>,
    length: DraftLength,
    /// The sequence as the drafter last saw it, plus the token fed next.
    context: Vec<u32>,
}

impl std::fmt::Debug for Speculator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speculator").field("length", &self.length).finish_non_exhaustive()
    }
}

impl<'a> Speculator<'a> {
    /// Speculation for `engine` with `drafter` within `length`'s bounds.
    pub fn new(engine: &Engine, drafter: Box<dyn Drafter + 'a>, length: DraftLength) -> Speculator<'a> {
        let length = length.with_draft_cost(drafter.cost(engine));
        Speculator { drafter, length, context: Vec::new() }
    }

    /// The speculator `config` describes, for `engine`'s model.
    ///
    /// # Errors
    /// As [`DraftConfig::drafter`].
    pub fn from_config(engine: &Engine, config: &DraftConfig) -> Result<Speculator<'static>, EngineError> {
        Ok(Speculator::new(engine, config.drafter(engine)?, config.length()))
    }

    /// The draft length state.
    pub fn length(&self) -> &DraftLength {
        &self.length
    }

    /// Counts a decode step of a sequence holding `fed` and about to feed `input[0]`, and
    /// appends up to `cap` draft tokens to `input`; returns how many. `cap` is what the
    /// caller can verify this step (batch room, token budget, context).
    ///
    /// # Errors
    /// The drafter's.
    pub fn draft(
        &mut self,
        engine: &Engine,
        fed: &[u32],
        cap: usize,
        input: &mut Vec<u32>,
    ) -> Result<usize, EngineError> {
        debug_assert_eq!(input.len(), 1);
        let k = self.length.advance().min(cap);
        if k == 0 {
            return Ok(0);
        }
        // The drafter's view is the sequence plus the pending token; the previous view
        // shares a prefix with it (what was accepted), so only the tail is copied.
        let keep = self.context.iter().zip(fed).take_while(|(a, b)| a == b).count();
        self.context.truncate(keep);
        self.context.extend_from_slice(&fed[keep..]);
        self.context.push(input[0]);
        self.drafter.propose(engine, &self.context, k, input)?;
        input.truncate(k + 1);
        Ok(input.len() - 1)
    }

    /// Reports that `accepted` of the `drafted` tokens of the last draft were kept.
    pub fn settle(&mut self, drafted: usize, accepted: usize) {
        if drafted > 0 {
            self.drafter.feedback(drafted, accepted);
            self.length.update(drafted, accepted);
        }
    }
}

/// Prompt-lookup drafting: finds the most recent earlier occurrence of the context's
/// last `n` tokens (the longest `n` from `max_n` down to `min_n` that occurs) and
/// proposes the tokens that followed it. Costs nothing but a scan of the context, and
/// pays off where the output copies the input (quoting, editing, repeating lists, code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NGramDrafter {
    min_n: usize,
    max_n: usize,
}

impl NGramDrafter {
    /// Looks up n-grams of `max_n` down to `min_n` tokens (`min_n` at least 1).
    pub fn new(min_n: usize, max_n: usize) -> NGramDrafter {
        let min_n = min_n.max(1);
        NGramDrafter { min_n, max_n: max_n.max(min_n) }
    }

    /// What followed the most recent earlier occurrence of the longest matching suffix
    /// of `context`, at most `max` tokens.
    pub fn lookup(&self, context: &[u32], max: usize, out: &mut Vec<u32>) {
        let len = context.len();
        if max == 0 {
            return;
        }
        for n in (self.min_n..=self.max_n).rev() {
            if len < n + 1 {
                continue;
            }
            let suffix = &context[len - n..];
            // Most recent earlier occurrence: starts at j with j + n <= len - 1, so at
            // least one token follows it.
            if let Some(j) = (0..len - n).rev().find(|&j| &context[j..j + n] == suffix) {
                // A short match predicts less: a 1-gram proposes at most one token, each
                // longer match twice as many.
                let from = j + n;
                let to = (from + max.min(1 << (n - 1).min(16))).min(len);
                out.extend_from_slice(&context[from..to]);
                return;
            }
        }
    }
}

impl Drafter for NGramDrafter {
    fn propose(
        &mut self,
        _engine: &Engine,
        context: &[u32],
        max: usize,
        out: &mut Vec<u32>,
    ) -> Result<(), EngineError> {
        self.lookup(context, max, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn propose(d: &NGramDrafter, ctx: &[u32], max: usize) -> Vec<u32> {
        let mut out = Vec::new();
        d.lookup(ctx, max, &mut out);
        out
    }

    #[test]
    fn ngram_finds_longest_recent_match() {
        let d = NGramDrafter::new(1, 4);
        // "1 2 3 4 5 ... 1 2 3" -> what followed "1 2 3": 4 5 6.
        assert_eq!(propose(&d, &[1, 2, 3, 4, 5, 6, 9, 1, 2, 3], 3), vec![4, 5, 6]);
        // Capped by max, and by the end of the context.
        assert_eq!(propose(&d, &[1, 2, 3, 4, 5, 6, 9, 1, 2, 3], 2), vec![4, 5]);
        assert_eq!(propose(&d, &[7, 8, 9, 7, 8], 5), vec![9, 7]);
        // A 1-gram match proposes one token, a 2-gram two, a 3-gram four.
        assert_eq!(propose(&d, &[7, 8, 7], 5), vec![8]);
        assert_eq!(propose(&d, &[1, 2, 3, 4, 5, 6, 9, 2, 3], 5), vec![4, 5]);
        assert_eq!(propose(&d, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3], 8), vec![4, 5, 6, 7]);
        // The longer n-gram wins over a more recent shorter one.
        assert_eq!(propose(&d, &[5, 6, 1, 9, 6, 2, 5, 6], 1), vec![1]);
        assert_eq!(propose(&d, &[4, 5, 6, 1, 9, 6, 2, 4, 5, 6], 1), vec![1]);
        // Among equal lengths, the most recent.
        assert_eq!(propose(&d, &[3, 1, 3, 2, 3], 1), vec![2]);
        // No match, too short, or nothing asked.
        assert!(propose(&d, &[1, 2, 3], 4).is_empty());
        assert!(propose(&d, &[1], 4).is_empty());
        assert!(propose(&d, &[1, 1], 0).is_empty());
        // min_n bounds the lookup.
        let d2 = NGramDrafter::new(2, 4);
        assert!(propose(&d2, &[3, 1, 3, 2, 4, 3], 1).is_empty());
    }

    #[test]
    fn draft_length_adapts_within_bounds() {
        let mut l = DraftLength::new(1, 8).fixed();
        assert_eq!(l.get(), 4);
        l.update(4, 4);
        assert_eq!(l.get(), 6);
        l.update(6, 6);
        l.update(8, 8);
        assert_eq!(l.get(), 8);
        l.update(8, 3);
        assert_eq!(l.get(), 7);
        l.update(0, 0);
        assert_eq!(l.get(), 7);
        for _ in 0..20 {
            l.update(3, 0);
        }
        assert_eq!(l.get(), 1);
        // Fixed: never pauses, however bad the acceptance.
        assert_eq!(l.advance(), 1);
        assert_eq!(DraftLength::new(0, 0).get(), 1);
    }

    #[test]
    fn drafting_pauses_while_it_does_not_pay_and_probes_again() {
        let mut l = DraftLength::new(1, 8);
        assert!(l.expected_gain(1) > 1.0, "the prior drafts");
        assert_eq!(l.advance(), 4);
        // Rejections drive the acceptance below the cost of a draft token.
        let mut paused_after = None;
        for i in 0..10 {
            l.update(l.get(), 0);
            if l.advance() == 0 {
                paused_after = Some(i);
                break;
            }
        }
        let first = paused_after.expect("drafting pauses after repeated rejections");
        assert!(l.acceptance() < VERIFY_COST_PER_TOKEN);
        // The back-off: BACKOFF_MIN steps in all, the last of which probes.
        let mut steps = vec![0];
        for _ in 1..BACKOFF_MIN {
            steps.push(l.advance());
        }
        assert_eq!(steps, [0, 0, 0, 1], "paused after {first} rejections, then a probe of the shortest draft");
        // A failed probe doubles the back-off.
        l.update(1, 0);
        let skipped = (0..2 * BACKOFF_MIN).take_while(|_| l.advance() == 0).count();
        assert_eq!(skipped, 2 * BACKOFF_MIN - 1);
        // Accepted drafts bring the estimate back up and drafting resumes.
        for _ in 0..4 {
            l.update(l.get(), l.get());
        }
        assert!(l.expected_gain(1) > 1.0);
        assert!(l.advance() > 0);
    }
}
