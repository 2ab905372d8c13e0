//! Token sampling for the generation loop.
//!
//! [`Sampler`] turns one step's logits into the next token id. It follows
//! llama.cpp's default sampler chain:
//!
//! 1. penalties (repeat, presence, frequency) over the last
//!    [`SamplingParams::penalty_last_n`] tokens of the history,
//! 2. top-k,
//! 3. top-p (nucleus),
//! 4. min-p,
//! 5. temperature,
//! 6. a draw from the softmax of what is left.
//!
//! With `temperature == 0` the sampler is greedy: after the penalties it takes
//! the [`argmax`] and never touches its random number generator, so the result
//! does not depend on the seed.
//!
//! Non-finite logits are tolerated: NaN is treated as `-inf` (never chosen
//! while any other token is possible), `+inf` tokens take all of the
//! probability mass (shared equally), and when every logit is `-inf` the
//! distribution is uniform over the tokens left after filtering.
//!
//! The random number generator is ChaCha8 ([`rand_chacha::ChaCha8Rng`]) seeded
//! from [`SamplingParams::seed`]; each non-greedy sample consumes exactly one
//! `u64` from it, so a seed reproduces the same tokens across versions of the
//! `rand` crates.

use std::cmp::Ordering;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

/// Typed sampling configuration.
///
/// The [`Default`] is plain greedy decoding: `temperature = 0`, every filter
/// and penalty disabled, `penalty_last_n = 64` (only used once a penalty is
/// enabled) and `seed = 0`. When deserialising, missing fields take their
/// default values, so `{"temperature": 0.7}` is a valid configuration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature; `0` means greedy decoding (argmax, ties go to the
    /// lowest token id). Must be finite and `>= 0`.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` disables the filter.
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose
    /// probability adds up to at least `top_p`. Must be in `(0, 1]`; `1`
    /// disables the filter.
    pub top_p: f32,
    /// Keep only the tokens whose probability is at least `min_p` times the
    /// probability of the most likely token. Must be in `[0, 1]`; `0`
    /// disables the filter.
    pub min_p: f32,
    /// llama.cpp repeat penalty: each distinct token of the penalty window
    /// has its logit divided by `repeat_penalty` when positive and multiplied
    /// by it otherwise. Must be finite and `> 0`; `1` disables it.
    pub repeat_penalty: f32,
    /// OpenAI presence penalty: subtracted once from the logit of every token
    /// that occurs in the penalty window. Must be finite; `0` disables it.
    pub presence_penalty: f32,
    /// OpenAI frequency penalty: `frequency_penalty * count` is subtracted
    /// from the logit of every token occurring `count` times in the penalty
    /// window. Must be finite; `0` disables it.
    pub frequency_penalty: f32,
    /// How many of the most recent history tokens the penalties look at;
    /// `0` disables all penalties.
    pub penalty_last_n: usize,
    /// Seed of the sampler's random number generator.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding with no penalties (the same as [`Default`]).
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Whether these parameters decode greedily (`temperature == 0`).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Check every field against its documented range.
    pub fn validate(&self) -> Result<(), SamplingError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(SamplingError::InvalidTemperature(self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SamplingError::InvalidTopP(self.top_p));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return Err(SamplingError::InvalidMinP(self.min_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(SamplingError::InvalidRepeatPenalty(self.repeat_penalty));
        }
        if !self.presence_penalty.is_finite() {
            return Err(SamplingError::InvalidPresencePenalty(self.presence_penalty));
        }
        if !self.frequency_penalty.is_finite() {
            return Err(SamplingError::InvalidFrequencyPenalty(self.frequency_penalty));
        }
        Ok(())
    }

    fn has_penalties(&self) -> bool {
        self.penalty_last_n > 0
            && (self.repeat_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0)
    }
}

/// An invalid [`SamplingParams`] field; each variant carries the rejected value.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum SamplingError {
    /// `temperature` was negative, NaN or infinite.
    #[error("temperature must be finite and >= 0, got {0}")]
    InvalidTemperature(f32),
    /// `top_p` was outside `(0, 1]`.
    #[error("top_p must be in (0, 1], got {0}")]
    InvalidTopP(f32),
    /// `min_p` was outside `[0, 1]`.
    #[error("min_p must be in [0, 1], got {0}")]
    InvalidMinP(f32),
    /// `repeat_penalty` was not a finite number `> 0`.
    #[error("repeat_penalty must be finite and > 0, got {0}")]
    InvalidRepeatPenalty(f32),
    /// `presence_penalty` was NaN or infinite.
    #[error("presence_penalty must be finite, got {0}")]
    InvalidPresencePenalty(f32),
    /// `frequency_penalty` was NaN or infinite.
    #[error("frequency_penalty must be finite, got {0}")]
    InvalidFrequencyPenalty(f32),
}

/// Log-probabilities reported for one sampled token, as in OpenAI's
/// `logprobs` output.
///
/// They come from the full softmax over the vocabulary of the penalised but
/// untempered and unfiltered logits, so they do not depend on `temperature`,
/// `top_k`, `top_p` or `min_p`. Natural logarithms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobs {
    /// The sampled token.
    pub token: u32,
    /// Log-probability of the sampled token.
    pub logprob: f32,
    /// The most likely tokens with their log-probabilities, most likely
    /// first (ties: lowest token id first).
    pub top: Vec<(u32, f32)>,
}

/// Index of the largest logit; NaN counts as `-inf`, ties go to the lowest
/// index, and an empty slice gives `0`.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_value = match logits.first() {
        Some(v) if !v.is_nan() => *v,
        _ => f32::NEG_INFINITY,
    };
    for (i, &v) in logits.iter().enumerate().skip(1) {
        // NaN compares false and so never wins.
        if v > best_value {
            best = i;
            best_value = v;
        }
    }
    best as u32
}

/// Candidate order: larger logit first, then lower token id. Candidates never
/// hold NaN, so this is a total order.
fn by_logit_desc(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.partial_cmp(&a.1).unwrap_or(Ordering::Equal).then(a.0.cmp(&b.0))
}

/// The largest of a set of (NaN-free) logits, which fixes how the softmax is
/// normalised.
#[derive(Debug, Clone, Copy)]
enum Peak {
    /// The largest logit is finite.
    Finite(f32),
    /// Some logit is `+inf`: those tokens share all of the mass.
    PosInf,
    /// Every logit is `-inf`: the distribution is uniform.
    AllNegInf,
}

impl Peak {
    fn of(values: impl Iterator<Item = f32>) -> Peak {
        let max = values.fold(f32::NEG_INFINITY, f32::max);
        if max == f32::INFINITY {
            Peak::PosInf
        } else if max == f32::NEG_INFINITY {
            Peak::AllNegInf
        } else {
            Peak::Finite(max)
        }
    }

    /// Natural log of the unnormalised weight of `logit` (0 for the peak).
    fn ln_weight(self, logit: f32) -> f32 {
        match self {
            Peak::Finite(max) => logit - max,
            Peak::PosInf if logit == f32::INFINITY => 0.0,
            Peak::PosInf => f32::NEG_INFINITY,
            Peak::AllNegInf => 0.0,
        }
    }

    /// Unnormalised weight of `logit` at `temperature > 0`; the peak weighs 1.
    fn weight(self, logit: f32, temperature: f32) -> f64 {
        f64::from(self.ln_weight(logit) / temperature).exp()
    }
}

/// Samples next tokens for one sequence.
///
/// Owns a ChaCha8 random number generator seeded from
/// [`SamplingParams::seed`] and scratch buffers that are reused between calls,
/// so sampling does not allocate once the buffers have grown to the
/// vocabulary size.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Penalised logits of the current step, NaN replaced by `-inf`.
    logits: Vec<f32>,
    /// Remaining candidates `(token, logit)` of the current step.
    cands: Vec<(u32, f32)>,
    /// `cands[..sorted]` holds the largest candidates in [`by_logit_desc`] order.
    sorted: usize,
    /// Sorted copy of the penalty window.
    window: Vec<u32>,
}

impl Sampler {
    /// Validate `params` and build a sampler seeded with `params.seed`.
    pub fn new(params: SamplingParams) -> Result<Sampler, SamplingError> {
        params.validate()?;
        Ok(Sampler {
            params,
            rng: ChaCha8Rng::seed_from_u64(params.seed),
            logits: Vec::new(),
            cands: Vec::new(),
            sorted: 0,
            window: Vec::new(),
        })
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Pick the next token from one step's `logits` (one per vocabulary
    /// entry).
    ///
    /// `history` holds every token of the sequence so far (prompt and
    /// generated); only its last [`SamplingParams::penalty_last_n`] tokens
    /// are used, by the penalties. History tokens outside the vocabulary are
    /// ignored.
    ///
    /// # Panics
    ///
    /// If `logits` is empty.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        self.prepare(logits, history);
        self.pick()
    }

    /// Like [`Sampler::sample`], and also report the log-probability of the
    /// chosen token and of the `n` most likely tokens (fewer when the
    /// vocabulary is smaller), computed as [`TokenLogprobs`] describes.
    ///
    /// The chosen token, and the state of the random number generator
    /// afterwards, are the same as [`Sampler::sample`] would give.
    ///
    /// # Panics
    ///
    /// If `logits` is empty.
    pub fn sample_with_logprobs(&mut self, logits: &[f32], history: &[u32], n: usize) -> (u32, TokenLogprobs) {
        self.prepare(logits, history);
        let peak = Peak::of(self.logits.iter().copied());
        let log_z = self.logits.iter().map(|&l| peak.weight(l, 1.0)).sum::<f64>().ln();
        let logprob = |l: f32| (f64::from(peak.ln_weight(l)) - log_z) as f32;

        let n = n.min(self.logits.len());
        self.fill_candidates();
        self.ensure_sorted(n);
        let top = self.cands[..n].iter().map(|&(id, l)| (id, logprob(l))).collect();

        let token = self.pick();
        let chosen = logprob(self.logits[token as usize]);
        (token, TokenLogprobs { token, logprob: chosen, top })
    }

    /// Copy `logits` into the scratch buffer (NaN -> `-inf`) and apply the
    /// penalties.
    fn prepare(&mut self, logits: &[f32], history: &[u32]) {
        assert!(!logits.is_empty(), "cannot sample from an empty vocabulary");
        debug_assert!(u32::try_from(logits.len()).is_ok());
        self.logits.clear();
        self.logits.extend(logits.iter().map(|&l| if l.is_nan() { f32::NEG_INFINITY } else { l }));
        self.penalize(history);
    }

    fn penalize(&mut self, history: &[u32]) {
        let p = self.params;
        if !p.has_penalties() {
            return;
        }
        let start = history.len().saturating_sub(p.penalty_last_n);
        self.window.clear();
        self.window.extend_from_slice(&history[start..]);
        self.window.sort_unstable();
        for run in self.window.chunk_by(|a, b| a == b) {
            let Some(logit) = self.logits.get_mut(run[0] as usize) else {
                continue;
            };
            let count = run.len() as f32;
            let mut l = *logit;
            if p.repeat_penalty != 1.0 {
                l = if l > 0.0 { l / p.repeat_penalty } else { l * p.repeat_penalty };
            }
            l -= count * p.frequency_penalty + p.presence_penalty;
            // `inf - inf` can only come from overflowing penalties.
            *logit = if l.is_nan() { f32::NEG_INFINITY } else { l };
        }
    }

    /// Run the filter chain on the prepared logits and draw a token.
    fn pick(&mut self) -> u32 {
        if self.params.is_greedy() {
            return argmax(&self.logits);
        }
        self.fill_candidates();
        self.apply_top_k();
        self.apply_top_p();
        self.apply_min_p();
        self.draw()
    }

    fn fill_candidates(&mut self) {
        self.cands.clear();
        self.cands.extend(self.logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        self.sorted = 0;
    }

    /// Make `cands[..k]` the `k` largest candidates, in order.
    fn ensure_sorted(&mut self, k: usize) {
        let k = k.min(self.cands.len());
        if k <= self.sorted {
            return;
        }
        // Everything after the sorted prefix is no larger than it.
        let rest = &mut self.cands[self.sorted..];
        let nth = k - self.sorted - 1;
        if nth + 1 < rest.len() {
            rest.select_nth_unstable_by(nth, by_logit_desc);
        }
        rest[..=nth].sort_unstable_by(by_logit_desc);
        self.sorted = k;
    }

    fn apply_top_k(&mut self) {
        let k = self.params.top_k;
        if k == 0 || k >= self.cands.len() {
            return;
        }
        self.ensure_sorted(k);
        self.cands.truncate(k);
    }

    /// Keep the shortest prefix of the sorted candidates whose probability
    /// reaches `top_p` (at least one token), sorting only as far as needed.
    fn apply_top_p(&mut self) {
        let p = self.params.top_p;
        let len = self.cands.len();
        if p >= 1.0 || len <= 1 {
            return;
        }
        let peak = Peak::of(self.cands.iter().map(|c| c.1));
        let total: f64 = self.cands.iter().map(|c| peak.weight(c.1, 1.0)).sum();
        let target = f64::from(p) * total;
        let mut cumulative = 0.0;
        let mut i = 0;
        let mut chunk = 64;
        loop {
            self.ensure_sorted(chunk);
            while i < self.sorted {
                cumulative += peak.weight(self.cands[i].1, 1.0);
                i += 1;
                if cumulative >= target {
                    self.cands.truncate(i);
                    self.sorted = i;
                    return;
                }
            }
            if self.sorted == len {
                // Only rounding can get here: keep everything.
                return;
            }
            chunk *= 4;
        }
    }

    fn apply_min_p(&mut self) {
        let p = self.params.min_p;
        if p <= 0.0 || self.cands.len() <= 1 {
            return;
        }
        let max = self.cands.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        // p_i >= min_p * p_max  <=>  logit_i >= max + ln(min_p).
        let threshold = max + p.ln();
        self.cands.retain(|c| c.1 >= threshold);
        // What was removed is the tail of the order, so the prefix stays sorted.
        self.sorted = self.sorted.min(self.cands.len());
    }

    /// Draw from the softmax of the remaining candidates at the temperature.
    fn draw(&mut self) -> u32 {
        let t = self.params.temperature;
        let peak = Peak::of(self.cands.iter().map(|c| c.1));
        let total: f64 = self.cands.iter().map(|c| peak.weight(c.1, t)).sum();
        // Uniform in [0, 1) from the top 53 bits: one u64 per sample.
        let unit = (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let target = unit * total;
        let mut cumulative = 0.0;
        let mut last = self.cands[0].0;
        for &(id, l) in &self.cands {
            let w = peak.weight(l, t);
            if w > 0.0 {
                last = id;
                cumulative += w;
                if target < cumulative {
                    return id;
                }
            }
        }
        // Rounding: the last token with any weight.
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    /// Uniform in [-scale, scale).
    fn random_logits(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let unit = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
                (unit * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams::default();
        f(&mut p);
        p
    }

    fn sampler(p: SamplingParams) -> Sampler {
        Sampler::new(p).unwrap()
    }

    /// Naive penalties: a reference independent of the sampler's.
    fn ref_penalise(p: &SamplingParams, logits: &[f32], history: &[u32]) -> Vec<f32> {
        let mut out: Vec<f32> = logits.iter().map(|&l| if l.is_nan() { f32::NEG_INFINITY } else { l }).collect();
        if p.penalty_last_n == 0 {
            return out;
        }
        let window = &history[history.len().saturating_sub(p.penalty_last_n)..];
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for &t in window {
            *counts.entry(t).or_default() += 1;
        }
        for (t, c) in counts {
            if let Some(l) = out.get_mut(t as usize) {
                if *l > 0.0 {
                    *l /= p.repeat_penalty;
                } else {
                    *l *= p.repeat_penalty;
                }
                *l -= c as f32 * p.frequency_penalty + p.presence_penalty;
            }
        }
        out
    }

    /// Reference distribution after the filter chain (finite logits only):
    /// sorts the whole vocabulary and applies each filter literally.
    fn ref_distribution(p: &SamplingParams, logits: &[f32]) -> Vec<f64> {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap().then(a.cmp(&b)));
        if p.top_k > 0 {
            order.truncate(p.top_k);
        }
        let softmax = |ids: &[usize], t: f64| -> Vec<f64> {
            let max = ids.iter().map(|&i| f64::from(logits[i])).fold(f64::MIN, f64::max);
            let w: Vec<f64> = ids.iter().map(|&i| ((f64::from(logits[i]) - max) / t).exp()).collect();
            let s: f64 = w.iter().sum();
            w.iter().map(|x| x / s).collect()
        };
        let probs = softmax(&order, 1.0);
        let mut cum = 0.0;
        let mut keep = order.len();
        for (i, q) in probs.iter().enumerate() {
            cum += q;
            if cum >= f64::from(p.top_p) {
                keep = i + 1;
                break;
            }
        }
        order.truncate(keep);
        let probs = softmax(&order, 1.0);
        let pmax = probs[0];
        let kept: Vec<usize> =
            order.iter().zip(&probs).filter(|&(_, &q)| q >= f64::from(p.min_p) * pmax).map(|(&i, _)| i).collect();
        let mut out = vec![0.0; logits.len()];
        for (&i, q) in kept.iter().zip(softmax(&kept, f64::from(p.temperature))) {
            out[i] = q;
        }
        out
    }

    #[test]
    fn argmax_cases() {
        #[track_caller]
        fn check(logits: &[f32], want: u32) {
            assert_eq!(argmax(logits), want, "argmax({logits:?})");
        }
        let nan = f32::NAN;
        let inf = f32::INFINITY;
        check(&[], 0);
        check(&[0.5], 0);
        check(&[1.0, 3.0, 3.0, 2.0], 1);
        check(&[-1.0, -3.0], 0);
        check(&[nan, 1.0], 1);
        check(&[nan, nan], 0);
        check(&[nan, -inf, -inf], 0);
        check(&[-inf, -inf], 0);
        check(&[nan, -inf, 2.0, inf, inf], 3);
        check(&[-0.0, 0.0], 0);
        check(&[f32::MAX, inf], 1);
    }

    #[test]
    fn greedy_is_argmax_for_any_seed() {
        let mut r = rng(1);
        for seed in 0..20 {
            let mut s = sampler(params(|p| {
                p.seed = seed;
                p.top_k = 5;
                p.top_p = 0.5;
                p.min_p = 0.1;
            }));
            for _ in 0..20 {
                let logits = random_logits(&mut r, 100, 4.0);
                assert_eq!(s.sample(&logits, &[]), argmax(&logits));
            }
            // The random number generator was never touched.
            assert_eq!(s.rng, ChaCha8Rng::seed_from_u64(seed));
        }
    }

    #[test]
    fn narrowing_filters_equal_argmax() {
        // Each of these leaves only the top token, whatever the temperature.
        let cases = [
            params(|p| p.top_k = 1),
            params(|p| p.top_p = 1e-6),
            params(|p| p.min_p = 1.0),
            params(|p| {
                p.top_k = 1;
                p.repeat_penalty = 1.3;
                p.presence_penalty = 0.4;
                p.frequency_penalty = 0.2;
            }),
        ];
        let mut r = rng(2);
        for (case, base) in cases.iter().enumerate() {
            for seed in 0..10 {
                let p = SamplingParams { temperature: 1.5, seed, ..*base };
                let mut s = sampler(p);
                for _ in 0..50 {
                    let logits = random_logits(&mut r, 64, 3.0);
                    let history: Vec<u32> = (0..10).map(|_| r.next_u32() % 64).collect();
                    let want = argmax(&ref_penalise(&p, &logits, &history));
                    assert_eq!(s.sample(&logits, &history), want, "case {case} seed {seed}");
                }
            }
        }
    }

    #[test]
    fn same_seed_same_sequence() {
        let p = params(|p| {
            p.temperature = 1.0;
            p.top_k = 40;
            p.top_p = 0.95;
            p.min_p = 0.02;
            p.repeat_penalty = 1.1;
            p.seed = 42;
        });
        let run = |p: SamplingParams| {
            let mut r = rng(3);
            let mut s = sampler(p);
            let mut history = Vec::new();
            for _ in 0..500 {
                let logits = random_logits(&mut r, 256, 3.0);
                let t = s.sample(&logits, &history);
                history.push(t);
            }
            history
        };
        let a = run(p);
        assert_eq!(a, run(p));
        // With logprobs the choices and RNG stream are the same.
        let mut r = rng(3);
        let mut s = sampler(p);
        let mut b = Vec::new();
        for _ in 0..500 {
            let logits = random_logits(&mut r, 256, 3.0);
            b.push(s.sample_with_logprobs(&logits, &b, 3).0);
        }
        assert_eq!(a, b);
        // Not degenerate: many distinct tokens were drawn.
        let mut distinct = a.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 100, "{}", distinct.len());
    }

    #[test]
    fn different_seeds_differ() {
        // 32 equally likely tokens: two independent streams agree ~1/32 of the time.
        let logits = vec![0.0f32; 32];
        let draws = |seed| {
            let mut s = sampler(params(|p| {
                p.temperature = 1.0;
                p.seed = seed;
            }));
            (0..2000).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        for (a, b) in [(0, 1), (1, 2), (7, 1234567)] {
            let (x, y) = (draws(a), draws(b));
            let same = x.iter().zip(&y).filter(|(p, q)| p == q).count();
            assert!(same < 2000 / 16, "seeds {a} and {b} agree on {same} of 2000");
        }
    }

    #[test]
    fn penalties_hand_computed() {
        #[track_caller]
        fn check(p: SamplingParams, logits: &[f32], history: &[u32], want: &[f32], token: u32) {
            let mut s = sampler(p);
            s.prepare(logits, history);
            assert_eq!(s.logits, want, "penalised logits");
            assert_eq!(s.sample(logits, history), token, "greedy token");
            assert_eq!(ref_penalise(&p, logits, history), want, "reference");
        }
        // Repeat penalty divides positive logits, multiplies the others,
        // once per distinct token.
        check(params(|p| p.repeat_penalty = 2.0), &[2.0, 0.0, 1.5, -1.0], &[0, 0, 0, 3], &[1.0, 0.0, 1.5, -2.0], 2);
        check(params(|p| p.repeat_penalty = 2.0), &[-1.0, -1.5], &[0], &[-2.0, -1.5], 1);
        // Presence: once per token that appears, whatever the count.
        check(params(|p| p.presence_penalty = 1.0), &[3.0, 2.5, 0.0], &[0, 0, 0, 2], &[2.0, 2.5, -1.0], 1);
        // Frequency: proportional to the count.
        check(params(|p| p.frequency_penalty = 0.25), &[3.0, 2.5], &[0, 0, 0], &[2.25, 2.5], 1);
        check(params(|p| p.frequency_penalty = 0.125), &[3.0, 2.5], &[0, 0, 0], &[2.625, 2.5], 0);
        // Combined: repeat first, then frequency and presence.
        check(
            params(|p| {
                p.repeat_penalty = 2.0;
                p.frequency_penalty = 0.5;
                p.presence_penalty = 0.25;
            }),
            &[4.0, -1.0, 1.0],
            &[1, 0, 1],
            &[1.25, -3.25, 1.0],
            0,
        );
        // Only the last `penalty_last_n` tokens count.
        check(
            params(|p| {
                p.presence_penalty = 1.0;
                p.penalty_last_n = 2;
            }),
            &[3.0, 2.5, 2.0],
            &[0, 0, 0, 1, 2],
            &[3.0, 1.5, 1.0],
            0,
        );
        // penalty_last_n = 0 disables penalties.
        check(
            params(|p| {
                p.presence_penalty = 1.0;
                p.penalty_last_n = 0;
            }),
            &[3.0, 2.5],
            &[0],
            &[3.0, 2.5],
            0,
        );
        // History tokens outside the vocabulary are ignored; NaN becomes -inf.
        check(params(|p| p.presence_penalty = 1.0), &[f32::NAN, 0.5], &[1, 99], &[f32::NEG_INFINITY, -0.5], 1);
    }

    #[test]
    fn distribution_matches_softmax() {
        #[track_caller]
        fn check(p: SamplingParams, logits: &[f32]) {
            const DRAWS: usize = 20_000;
            let want = ref_distribution(&p, logits);
            let mut s = sampler(p);
            let mut counts = vec![0usize; logits.len()];
            for _ in 0..DRAWS {
                counts[s.sample(logits, &[]) as usize] += 1;
            }
            let mut chi2 = 0.0;
            for (i, (&c, &q)) in counts.iter().zip(&want).enumerate() {
                if q == 0.0 {
                    assert_eq!(c, 0, "token {i} is filtered out: {counts:?}");
                } else {
                    let e = q * DRAWS as f64;
                    chi2 += (c as f64 - e).powi(2) / e;
                }
            }
            // At most 3 degrees of freedom: P(chi2 > 20) < 2e-4.
            assert!(chi2 < 20.0, "chi2 {chi2}: counts {counts:?}, want {want:?}");
        }
        let logits = [1.0f32, 0.5, 0.0, -1.0];
        let with = |f: fn(&mut SamplingParams)| {
            params(|p| {
                p.temperature = 1.0;
                p.seed = 7;
                f(p);
            })
        };
        check(with(|_| {}), &logits);
        check(with(|p| p.temperature = 0.5), &logits);
        check(with(|p| p.temperature = 3.0), &logits);
        check(with(|p| p.top_k = 2), &logits);
        check(with(|p| p.top_p = 0.6), &logits);
        check(with(|p| p.min_p = 0.3), &logits);
        check(with(|p| p.seed = 8), &[0.0, 0.0, 0.0, 0.0]);
        // The reference itself must describe the filters as intended.
        let r = ref_distribution(&with(|p| p.top_k = 2), &logits);
        assert!(r[0] > 0.0 && r[1] > 0.0 && r[2] == 0.0 && r[3] == 0.0, "{r:?}");
    }

    #[test]
    fn logprobs_are_a_distribution() {
        #[track_caller]
        fn check(p: SamplingParams, logits: &[f32], history: &[u32], n: usize) {
            let v = logits.len();
            let mut s = sampler(p);
            let (token, lp) = s.sample_with_logprobs(logits, history, n);
            assert_eq!(lp.token, token);
            assert_eq!(lp.top.len(), n.min(v));
            // Reference: log-softmax of the penalised, untempered logits.
            let pen = ref_penalise(&p, logits, history);
            let max = pen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let log_z = pen.iter().map(|&l| f64::from(l - max).exp()).sum::<f64>().ln();
            let want = |t: u32| f64::from(pen[t as usize] - max) - log_z;
            assert!((f64::from(lp.logprob) - want(token)).abs() < 1e-5);
            for w in lp.top.windows(2) {
                assert!(w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0), "order {:?}", lp.top);
            }
            for &(t, l) in &lp.top {
                assert!((f64::from(l) - want(t)).abs() < 1e-5, "token {t}");
            }
            if n >= v {
                let sum: f64 = lp.top.iter().map(|&(_, l)| f64::from(l).exp()).sum();
                assert!((sum - 1.0).abs() < 1e-4, "sum {sum}");
                let mut ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
                ids.sort_unstable();
                assert_eq!(ids, (0..v as u32).collect::<Vec<_>>());
            }
        }
        let mut r = rng(5);
        let hot = params(|p| {
            p.temperature = 0.5;
            p.top_k = 3;
        });
        let penalised = params(|p| {
            p.temperature = 1.0;
            p.repeat_penalty = 1.5;
            p.frequency_penalty = 0.3;
        });
        for _ in 0..20 {
            let logits = random_logits(&mut r, 50, 6.0);
            check(SamplingParams::default(), &logits, &[], 50);
            check(hot, &logits, &[], 60);
            check(penalised, &logits, &[1, 2, 2, 3, 49], 50);
            check(hot, &logits, &[], 5);
            check(hot, &logits, &[], 0);
        }
        // Ties are ordered by token id.
        let mut s = sampler(SamplingParams::default());
        let (_, lp) = s.sample_with_logprobs(&[1.0, 2.0, 2.0, 1.0], &[], 4);
        let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 2, 0, 3]);
        assert!((lp.logprob - lp.top[0].1).abs() < 1e-7);
    }

    #[test]
    fn non_finite_logits() {
        let nan = f32::NAN;
        let (ninf, inf) = (f32::NEG_INFINITY, f32::INFINITY);
        #[track_caller]
        fn check(logits: &[f32], allowed: &[u32]) {
            for p in [
                params(|p| p.temperature = 1.0),
                params(|p| {
                    p.temperature = 0.7;
                    p.top_k = 3;
                    p.top_p = 0.9;
                    p.min_p = 0.05;
                    p.repeat_penalty = 1.2;
                }),
            ] {
                let mut s = sampler(p);
                let mut seen = vec![false; logits.len()];
                for _ in 0..400 {
                    let (t, lp) = s.sample_with_logprobs(logits, &[0], 2);
                    assert!(allowed.contains(&t), "{t} from {logits:?}");
                    assert!(!lp.logprob.is_nan());
                    seen[t as usize] = true;
                }
                for &a in allowed {
                    assert!(seen[a as usize], "{a} never drawn from {logits:?}");
                }
            }
        }
        check(&[nan, 1.0, ninf, 1.0, nan], &[1, 3]);
        check(&[0.0, inf, 5.0, inf], &[1, 3]);
        check(&[nan, ninf, ninf], &[0, 1, 2]);
        // The chosen +inf token is certain among two: log(1/2).
        let mut s = sampler(SamplingParams::default());
        let (t, lp) = s.sample_with_logprobs(&[0.0, inf, inf], &[], 3);
        assert_eq!(t, 1);
        assert!((lp.logprob - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(lp.top[2], (0, ninf));
    }

    #[test]
    fn no_reallocation_in_steady_state() {
        let mut s = sampler(params(|p| {
            p.temperature = 0.8;
            p.top_p = 0.9;
            p.repeat_penalty = 1.1;
        }));
        let mut r = rng(6);
        let history: Vec<u32> = (0..200).map(|i| i % 37).collect();
        let caps = |s: &Sampler| (s.logits.capacity(), s.cands.capacity(), s.window.capacity());
        s.sample(&random_logits(&mut r, 1000, 5.0), &history);
        let before = caps(&s);
        for _ in 0..50 {
            s.sample(&random_logits(&mut r, 1000, 5.0), &history);
        }
        assert_eq!(caps(&s), before);
    }

    #[test]
    fn invalid_params_are_rejected() {
        #[track_caller]
        fn check(p: SamplingParams, want: Result<(), SamplingError>) {
            assert_eq!(Sampler::new(p).map(|_| ()), want);
        }
        use SamplingError::*;
        check(SamplingParams::default(), Ok(()));
        check(params(|p| p.temperature = -0.1), Err(InvalidTemperature(-0.1)));
        check(params(|p| p.temperature = f32::INFINITY), Err(InvalidTemperature(f32::INFINITY)));
        check(params(|p| p.top_p = 0.0), Err(InvalidTopP(0.0)));
        check(params(|p| p.top_p = 1.5), Err(InvalidTopP(1.5)));
        check(params(|p| p.min_p = -0.5), Err(InvalidMinP(-0.5)));
        check(params(|p| p.min_p = 1.01), Err(InvalidMinP(1.01)));
        check(params(|p| p.repeat_penalty = 0.0), Err(InvalidRepeatPenalty(0.0)));
        check(params(|p| p.presence_penalty = f32::NEG_INFINITY), Err(InvalidPresencePenalty(f32::NEG_INFINITY)));
        check(params(|p| p.frequency_penalty = f32::INFINITY), Err(InvalidFrequencyPenalty(f32::INFINITY)));
        check(
            params(|p| {
                p.temperature = 2.0;
                p.top_p = 1.0;
                p.min_p = 1.0;
                p.repeat_penalty = 0.5;
                p.presence_penalty = -2.0;
                p.frequency_penalty = 2.0;
            }),
            Ok(()),
        );
        // NaN fails every range check (compared through the message: NaN != NaN).
        for p in [
            params(|p| p.temperature = f32::NAN),
            params(|p| p.top_p = f32::NAN),
            params(|p| p.min_p = f32::NAN),
            params(|p| p.repeat_penalty = f32::NAN),
            params(|p| p.presence_penalty = f32::NAN),
            params(|p| p.frequency_penalty = f32::NAN),
        ] {
            let e = Sampler::new(p).unwrap_err();
            assert!(e.to_string().ends_with("got NaN"), "{e}");
        }
        assert_eq!(InvalidTopP(0.0).to_string(), "top_p must be in (0, 1], got 0");
    }

    #[test]
    fn params_serde_defaults() {
        let p: SamplingParams = serde_json::from_str("{}").unwrap();
        assert_eq!(p, SamplingParams::default());
        assert!(p.is_greedy());
        let p: SamplingParams = serde_json::from_str(r#"{"temperature":0.7,"top_k":40}"#).unwrap();
        assert_eq!(
            p,
            params(|p| {
                p.temperature = 0.7;
                p.top_k = 40;
            })
        );
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<SamplingParams>(&json).unwrap(), p);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every sampled token has non-zero probability under the reference
        /// filter chain, and top_k = 1 always gives the penalised argmax.
        #[test]
        fn sampled_tokens_respect_filters(
            logits in prop::collection::vec(-8.0f32..8.0, 1..40),
            history in prop::collection::vec(0u32..48, 0..20),
            temperature in 0.05f32..3.0,
            top_k in 0usize..6,
            top_p in 0.01f32..=1.0,
            min_p in 0.0f32..0.9,
            repeat_penalty in 0.5f32..2.0,
            presence_penalty in -1.0f32..1.0,
            frequency_penalty in -1.0f32..1.0,
            penalty_last_n in 0usize..8,
            seed in any::<u64>(),
        ) {
            let p = SamplingParams {
                temperature, top_k, top_p, min_p, repeat_penalty,
                presence_penalty, frequency_penalty, penalty_last_n, seed,
            };
            let pen = ref_penalise(&p, &logits, &history);
            let allowed = ref_distribution(&p, &pen);
            let mut s = sampler(p);
            for _ in 0..20 {
                let t = s.sample(&logits, &history) as usize;
                prop_assert!(t < logits.len());
                // 1e-12 leaves room for the reference's own rounding at the cut.
                prop_assert!(allowed[t] > 1e-12, "token {} has p {} in {:?}", t, allowed[t], allowed);
            }
            let mut greedy = sampler(SamplingParams { top_k: 1, ..p });
            prop_assert_eq!(greedy.sample(&logits, &history), argmax(&pen));
        }
    }
}
