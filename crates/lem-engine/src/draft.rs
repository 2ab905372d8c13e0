//! Drafters for speculative decoding: guesses of the next few tokens that the target
//! model then verifies in one forward pass (see [`generate`](crate::generate)).
//!
//! A [`Drafter`] sees the whole context (prompt and generated tokens, ending with the
//! token about to be fed) and proposes up to `max` tokens to follow it; after the
//! verification it is told how many the model agreed with. The verifier does not care
//! where a draft comes from: the prompt-lookup [`NGramDrafter`] here, and later a small
//! draft model or a learned head (which would keep its own sequence and roll it back to
//! the accepted length in [`Drafter::feedback`]).
//!
//! How many tokens to ask for is the verifier's business ([`DraftLength`]): it grows
//! after a fully accepted draft and shrinks after a rejection, within bounds.

/// Proposes continuations of a context.
pub trait Drafter {
    /// Appends up to `max` tokens to `out` that may follow `context` (which ends with the
    /// token the verifier feeds next). Proposing nothing is always allowed: that step is
    /// then a plain decode step.
    fn propose(&mut self, context: &[u32], max: usize, out: &mut Vec<u32>);

    /// The verifier kept the first `accepted` of the `drafted` tokens last proposed.
    fn feedback(&mut self, _drafted: usize, _accepted: usize) {}
}

/// Where drafts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DraftMethod {
    /// Prompt lookup ([`NGramDrafter`]): the longest recent n-gram of the context, `n`
    /// from `max_n` down to `min_n`, found earlier in the context, and what followed it.
    NGram {
        /// Shortest n-gram to look up (at least 1).
        min_n: usize,
        /// Longest n-gram to look up.
        max_n: usize,
    },
}

/// Speculative decoding settings of a [`GenerateRequest`](crate::GenerateRequest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DraftConfig {
    /// The drafter.
    pub method: DraftMethod,
    /// Fewest tokens to ask the drafter for (at least 1).
    pub min_tokens: usize,
    /// Most tokens to ask the drafter for (capped by what one forward pass can hold and the
    /// KV cache can roll back: the model's batch size minus one).
    pub max_tokens: usize,
}

impl DraftConfig {
    /// Prompt lookup with n-grams of 4 down to 1 tokens and drafts of 1 to 8 tokens.
    pub fn ngram() -> DraftConfig {
        DraftConfig { method: DraftMethod::NGram { min_n: 1, max_n: 4 }, min_tokens: 1, max_tokens: 8 }
    }

    /// The drafter these settings describe.
    pub fn drafter(&self) -> Box<dyn Drafter> {
        match self.method {
            DraftMethod::NGram { min_n, max_n } => Box::new(NGramDrafter::new(min_n, max_n)),
        }
    }
}

/// Adaptive draft length: starts in the middle of its bounds, grows by 2 after a draft
/// was accepted in full, shrinks by 1 after a rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DraftLength {
    min: usize,
    max: usize,
    cur: usize,
}

impl DraftLength {
    /// Bounds `min..=max` (`min` at least 1, `max` at least `min`).
    pub fn new(min: usize, max: usize) -> DraftLength {
        let min = min.max(1);
        let max = max.max(min);
        DraftLength { min, max, cur: (min + max) / 2 }
    }

    /// How many tokens to ask for now.
    pub fn get(&self) -> usize {
        self.cur
    }

    /// Adapts to the outcome of one verification (nothing changes when nothing was
    /// drafted).
    pub fn update(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        self.cur =
            if accepted >= drafted { (self.cur + 2).min(self.max) } else { self.cur.saturating_sub(1).max(self.min) };
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
}

impl Drafter for NGramDrafter {
    fn propose(&mut self, context: &[u32], max: usize, out: &mut Vec<u32>) {
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
                let from = j + n;
                let to = (from + max).min(len);
                out.extend_from_slice(&context[from..to]);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn propose(d: &mut NGramDrafter, ctx: &[u32], max: usize) -> Vec<u32> {
        let mut out = Vec::new();
        d.propose(ctx, max, &mut out);
        out
    }

    #[test]
    fn ngram_finds_longest_recent_match() {
        let mut d = NGramDrafter::new(1, 4);
        // "1 2 3 4 5 ... 1 2 3" -> what followed "1 2 3": 4 5 6.
        assert_eq!(propose(&mut d, &[1, 2, 3, 4, 5, 6, 9, 1, 2, 3], 3), vec![4, 5, 6]);
        // Capped by max, and by the end of the context.
        assert_eq!(propose(&mut d, &[1, 2, 3, 4, 5, 6, 9, 1, 2, 3], 2), vec![4, 5]);
        assert_eq!(propose(&mut d, &[7, 8, 7], 5), vec![8, 7]);
        // The longer n-gram wins over a more recent shorter one.
        assert_eq!(propose(&mut d, &[5, 6, 1, 9, 6, 2, 5, 6], 1), vec![1]);
        assert_eq!(propose(&mut d, &[4, 5, 6, 1, 9, 6, 2, 4, 5, 6], 1), vec![1]);
        // Among equal lengths, the most recent.
        assert_eq!(propose(&mut d, &[3, 1, 3, 2, 3], 1), vec![2]);
        // No match, too short, or nothing asked.
        assert!(propose(&mut d, &[1, 2, 3], 4).is_empty());
        assert!(propose(&mut d, &[1], 4).is_empty());
        assert!(propose(&mut d, &[1, 1], 0).is_empty());
        // min_n bounds the lookup.
        let mut d2 = NGramDrafter::new(2, 4);
        assert!(propose(&mut d2, &[3, 1, 3, 2, 4, 3], 1).is_empty());
    }

    #[test]
    fn draft_length_adapts_within_bounds() {
        let mut l = DraftLength::new(1, 8);
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
        assert_eq!(DraftLength::new(0, 0).get(), 1);
    }
}
