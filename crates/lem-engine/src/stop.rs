//! Stop strings over streamed text.
//!
//! [`StopMatcher`] sits between the detokenizer and the client: text is fed in
//! as it is decoded and comes out as soon as it can no longer be the start of
//! a stop string. A stop string is therefore never emitted, not even in part,
//! even when it is split across many tokens.
//!
//! Generation stops at the first stop string to be *completed* in the text:
//! for stops `"abcd"` and `"bc"`, the text `"abcd"` stops after `"a"`, because
//! `"bc"` is complete before `"abcd"` is. When several stop strings complete at
//! the same point, the one that starts earliest (the longest) wins, then the
//! lowest index. This rule depends only on the text, never on how it was split
//! into pushes.

/// What [`StopMatcher::push`] lets out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopOutput {
    /// Text that is safe to show now.
    pub emit: String,
    /// Index (into the list given to [`StopMatcher::new`]) of the stop string
    /// that ended generation; the stop string and all text after it are
    /// discarded.
    pub stopped: Option<usize>,
}

/// Incremental stop-string matcher over streamed text.
///
/// Holds back the shortest tail of the text that could still grow into a stop
/// string, so that a stop string is never emitted, even partially, even when
/// it is split across tokens. Works on UTF-8 text and never splits a
/// character.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    /// The non-empty stop strings with their indices in the caller's list.
    stops: Vec<(usize, String)>,
    /// Text received but not yet emitted: a possible start of a stop string.
    held: String,
    /// The stop string hit, once one was.
    stopped: Option<usize>,
}

impl StopMatcher {
    /// A matcher for `stops`; empty strings are ignored (but keep their
    /// place in the indices reported by [`StopOutput::stopped`]).
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().enumerate().filter(|(_, s)| !s.is_empty()).map(|(i, s)| (i, s.clone())).collect(),
            held: String::new(),
            stopped: None,
        }
    }

    /// Feed newly decoded text; returns what is safe to emit now and whether
    /// a stop string was hit (text after the stop is discarded).
    ///
    /// Once a stop string has been hit, further pushes emit nothing and keep
    /// reporting the same stop.
    pub fn push(&mut self, text: &str) -> StopOutput {
        if self.stopped.is_some() {
            return StopOutput { emit: String::new(), stopped: self.stopped };
        }
        self.held.push_str(text);

        // The held text before this push contained no complete stop string,
        // so any match here ends inside the new text; take the one that
        // completes first, then the one that starts first, then the lowest
        // index.
        let hit =
            self.stops.iter().filter_map(|(i, s)| self.held.find(s.as_str()).map(|at| (at + s.len(), at, *i))).min();
        if let Some((_, at, index)) = hit {
            self.held.truncate(at);
            self.stopped = Some(index);
            return StopOutput { emit: std::mem::take(&mut self.held), stopped: self.stopped };
        }

        // Hold back the longest tail that is a proper prefix of a stop string.
        // Stop strings are valid UTF-8 and so start on a character boundary,
        // so the cut is a character boundary too.
        let bytes = self.held.as_bytes();
        let keep = self
            .stops
            .iter()
            .filter_map(|(_, s)| {
                let s = s.as_bytes();
                (1..s.len().min(bytes.len() + 1)).rev().find(|&k| bytes.ends_with(&s[..k]))
            })
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let emit = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopOutput { emit, stopped: None }
    }

    /// End of generation: release any held-back text (nothing once a stop
    /// string was hit).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// The index of the stop string that was hit, if any.
    pub fn stopped(&self) -> Option<usize> {
        self.stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn strings(stops: &[&str]) -> Vec<String> {
        stops.iter().map(|s| s.to_string()).collect()
    }

    /// Reference: scan the whole text for the first point where some stop
    /// string completes; among those, the longest, then the lowest index.
    fn reference(text: &str, stops: &[String]) -> (String, Option<usize>) {
        let bytes = text.as_bytes();
        for end in 1..=bytes.len() {
            let mut best: Option<(usize, usize)> = None; // (len, index)
            for (i, s) in stops.iter().enumerate() {
                if !s.is_empty() && bytes[..end].ends_with(s.as_bytes()) && best.is_none_or(|(len, _)| s.len() > len) {
                    best = Some((s.len(), i));
                }
            }
            if let Some((len, i)) = best {
                return (text[..end - len].to_string(), Some(i));
            }
        }
        (text.to_string(), None)
    }

    /// Push `pushes` one by one, checking the emit of each push against
    /// `emits`, then the stop index and what `finish` releases.
    #[track_caller]
    fn check(stops: &[&str], pushes: &[&str], emits: &[&str], stopped: Option<usize>, rest: &str) {
        let stops = strings(stops);
        let mut m = StopMatcher::new(&stops);
        let mut got = Vec::new();
        let mut got_stop = None;
        for p in pushes {
            let out = m.push(p);
            got.push(out.emit);
            if let Some(s) = out.stopped {
                assert!(got_stop.is_none_or(|g| g == s), "stop changed");
                got_stop = Some(s);
            }
        }
        assert_eq!(got, emits, "emits for {pushes:?}");
        assert_eq!(got_stop, stopped, "stop for {pushes:?}");
        assert_eq!(m.stopped(), stopped);
        assert_eq!(m.finish(), rest, "finish for {pushes:?}");
        // The reference agrees on the whole output.
        let text: String = pushes.concat();
        let (want, want_stop) = reference(&text, &stops);
        assert_eq!(format!("{}{rest}", got.concat()), want);
        assert_eq!(want_stop, stopped);
    }

    #[test]
    fn stop_cases() {
        // No stop strings: everything passes straight through.
        check(&[], &["Hello", " world"], &["Hello", " world"], None, "");
        check(&[""], &["ab"], &["ab"], None, "");
        // A stop inside one push; the text after it is dropped.
        check(&["END"], &["abENDcd"], &["ab"], Some(0), "");
        // Split over several pushes, with partial prefixes held back.
        check(&["</s>"], &["Hi <", "/s", "> more"], &["Hi ", "", ""], Some(0), "");
        check(&["stop"], &["s", "t", "o", "p", "x"], &["", "", "", "", ""], Some(0), "");
        // A held prefix that turns out not to be a stop is released.
        check(&["abc"], &["xab", "d"], &["x", "abd"], None, "");
        check(&["abc"], &["xab"], &["x"], None, "ab");
        check(&["abc"], &["aab", "c"], &["a", ""], Some(0), "");
        // Overlapping stops completing together: the earlier start wins.
        check(&["ab", "b"], &["xab"], &["x"], Some(0), "");
        check(&["b", "ab"], &["xa", "b"], &["x", ""], Some(1), "");
        check(&["ab", "b"], &["xcb"], &["xc"], Some(1), "");
        // A stop contained in a longer one: the first to complete wins.
        check(&["abcd", "bc"], &["abcd"], &["a"], Some(1), "");
        check(&["abcd", "bc"], &["ab", "cd"], &["", "a"], Some(1), "");
        // Duplicates: the lowest index.
        check(&["x", "x"], &["ax"], &["a"], Some(0), "");
        // Empty strings keep their index.
        check(&["", "z"], &["az"], &["a"], Some(1), "");
        // Pushes after a stop emit nothing and report the same stop.
        check(&["!"], &["a!", "b", "!"], &["a", "", ""], Some(0), "");
        // Multi-byte characters are never split, in the text or in the stop.
        check(&["日本"], &["a日", "本b"], &["a", ""], Some(0), "");
        check(&["日本"], &["a日", "x"], &["a", "日x"], None, "");
        check(&["é!"], &["caf", "é", "?"], &["caf", "", "é?"], None, "");
        check(&["éa"], &["ée"], &["ée"], None, "");
        // A long stop spanning many pushes that fails at the last char.
        check(
            &["<|im_end|>"],
            &["ok<", "|", "im", "_", "end", "|", "x"],
            &["ok", "", "", "", "", "", "<|im_end|x"],
            None,
            "",
        );
        // The earliest completion wins over a later one in the same push.
        check(&["zz", "y"], &["ayzz"], &["a"], Some(1), "");
    }

    /// A text and stop strings over a tiny alphabet (so stops do occur),
    /// with multi-byte characters.
    fn text_and_stops() -> impl Strategy<Value = (String, Vec<String>, Vec<usize>)> {
        (
            "[ab日é]{0,24}",
            prop::collection::vec("[ab日é]{0,4}", 0..4),
            prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        )
            .prop_map(|(text, stops, cuts)| {
                let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
                let mut cuts: Vec<usize> = cuts.iter().map(|c| *c.get(&boundaries)).collect();
                cuts.sort_unstable();
                (text, stops, cuts)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn matches_reference_for_any_split((text, stops, cuts) in text_and_stops()) {
            let mut m = StopMatcher::new(&stops);
            let mut emitted = String::new();
            let mut stopped = None;
            let mut start = 0;
            for end in cuts.iter().copied().chain([text.len()]) {
                let out = m.push(&text[start..end]);
                start = end;
                emitted.push_str(&out.emit);
                for s in stops.iter().filter(|s| !s.is_empty()) {
                    prop_assert!(!emitted.contains(s.as_str()), "emitted {:?} contains {:?}", emitted, s);
                }
                if out.stopped.is_some() {
                    prop_assert!(stopped.is_none() || stopped == out.stopped);
                    stopped = out.stopped;
                }
            }
            let rest = m.finish();
            prop_assert!(stopped.is_none() || rest.is_empty());
            emitted.push_str(&rest);
            let (want, want_stop) = reference(&text, &stops);
            prop_assert_eq!(emitted, want);
            prop_assert_eq!(stopped, want_stop);
        }
    }
}
