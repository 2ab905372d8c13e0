//! BPE pre-tokenization: llama.cpp's `unicode_regex_split`.
//!
//! llama.cpp does not run the GPT-2 and LLaMA-3 regexes through a regex engine: it has
//! hand-written matchers for them (`unicode_regex_split_custom_gpt2` / `_llama3`). They
//! are ported here, because a backtracking engine is needed for the `\s+(?!\S)`
//! look-ahead and fancy-regex gives up on runs of about a million characters ("Max stack
//! size exceeded"), which the hand-written matchers handle in linear time. Every other
//! pattern goes through fancy-regex, as llama.cpp sends them through `std::regex`.
//!
//! Character classes (`\p{L}`, `\p{N}`, `\s`) come from regex-syntax's Unicode tables,
//! the same ones the regex engines use.

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

/// llama.cpp's GPT-2 pattern, matched by [`split_gpt2`].
pub(crate) const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// llama.cpp's LLaMA-3 pattern, matched by [`split_llama3`].
pub(crate) const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regex of Hugging Face's `ByteLevel` pre-tokenizer with `use_regex`: [`GPT2`] with a
/// final `\s+`, which [`split_custom`] matches as well.
pub(crate) const GPT2_HF: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// How Hugging Face tokenizer.json files (Llama 3, Qwen) spell the contractions, and how
/// llama.cpp spells them. The `tokenizers` library (Oniguruma) does not fold `ſ` to `s`
/// there, the Rust regex crates would: the fixtures' `'ſt` tells.
const CONTRACTIONS_HF: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)";
const CONTRACTIONS: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";

/// A pre-tokenizer regex in llama.cpp's spelling, so that equal patterns are recognised
/// (and run by the hand-written matchers): Hugging Face's ByteLevel regex becomes
/// [`GPT2`], its `(?i:...)` contractions the explicit ASCII classes.
pub(crate) fn canonical(pattern: &str) -> std::borrow::Cow<'_, str> {
    if pattern == GPT2_HF {
        return GPT2.into();
    }
    match pattern.strip_prefix(CONTRACTIONS_HF) {
        Some(rest) => format!("{CONTRACTIONS}{rest}").into(),
        None => pattern.into(),
    }
}

/// One pre-tokenization pass.
pub(crate) enum Pass {
    Gpt2,
    Llama3,
    Regex(Box<fancy_regex::Regex>),
}

impl Pass {
    pub(crate) fn new(pattern: &str) -> Result<Pass, String> {
        Ok(match canonical(pattern).as_ref() {
            GPT2 => Pass::Gpt2,
            LLAMA3 => Pass::Llama3,
            p => Pass::Regex(Box::new(fancy_regex::Regex::new(p).map_err(|e| format!("{p}: {e}"))?)),
        })
    }
}

/// Splits `text` into words (byte ranges) by applying each pass to the pieces of the
/// previous one; text between matches stays a word of its own.
pub(crate) fn split(text: &str, passes: &[Pass]) -> Result<Vec<(usize, usize)>, String> {
    let mut offsets = vec![(0, text.len())];
    for pass in passes {
        let mut next = Vec::with_capacity(offsets.len() * 2);
        for (start, end) in offsets {
            let piece = &text[start..end];
            match pass {
                Pass::Gpt2 => split_custom(piece, start, false, &mut next),
                Pass::Llama3 => split_custom(piece, start, true, &mut next),
                Pass::Regex(re) => {
                    let mut last = 0;
                    for m in re.find_iter(piece) {
                        let m = m.map_err(|e| format!("pre-tokenizer regex failed: {e}"))?;
                        if m.start() > last {
                            next.push((start + last, start + m.start()));
                        }
                        if m.end() > m.start() {
                            next.push((start + m.start(), start + m.end()));
                        }
                        last = m.end();
                    }
                    if last < piece.len() {
                        next.push((start + last, end));
                    }
                }
            }
        }
        offsets = next;
    }
    Ok(offsets)
}

/// Sorted, non-overlapping inclusive code point ranges of a regex class.
struct Ranges(Vec<(u32, u32)>);

impl Ranges {
    fn of(class: &str) -> Ranges {
        let hir = regex_syntax::Parser::new().parse(class).expect("built-in character class parses");
        let HirKind::Class(Class::Unicode(cls)) = hir.kind() else { unreachable!("{class} is a Unicode class") };
        Ranges(cls.ranges().iter().map(|r| (u32::from(r.start()), u32::from(r.end()))).collect())
    }

    fn contains(&self, c: u32) -> bool {
        self.0
            .binary_search_by(|&(lo, hi)| {
                if hi < c {
                    std::cmp::Ordering::Less
                } else if lo > c {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
    }
}

/// Character category bits.
const L: u8 = 1;
const N: u8 = 2;
const WS: u8 = 4;

struct Classes {
    letter: Ranges,
    number: Ranges,
    space: Ranges,
    ascii: [u8; 128],
}

fn classes() -> &'static Classes {
    static CLASSES: OnceLock<Classes> = OnceLock::new();
    CLASSES.get_or_init(|| {
        let letter = Ranges::of(r"\p{L}");
        let number = Ranges::of(r"\p{N}");
        let space = Ranges::of(r"\s");
        let mut ascii = [0u8; 128];
        for (c, slot) in ascii.iter_mut().enumerate() {
            *slot = classify_slow(&letter, &number, &space, c as u32);
        }
        Classes { letter, number, space, ascii }
    })
}

fn classify_slow(letter: &Ranges, number: &Ranges, space: &Ranges, c: u32) -> u8 {
    let mut f = 0;
    if letter.contains(c) {
        f |= L;
    }
    if number.contains(c) {
        f |= N;
    }
    if space.contains(c) {
        f |= WS;
    }
    f
}

fn classify(c: char) -> u8 {
    let cls = classes();
    let c = c as u32;
    if c < 128 { cls.ascii[c as usize] } else { classify_slow(&cls.letter, &cls.number, &cls.space, c) }
}

/// llama.cpp's `unicode_regex_split_custom_gpt2` (`llama3 == false`) and
/// `unicode_regex_split_custom_llama3` (`llama3 == true`) on one piece, pushing the word
/// ranges (offset by `base`) to `out`.
fn split_custom(piece: &str, base: usize, llama3: bool, out: &mut Vec<(usize, usize)>) {
    let chars: Vec<(usize, char)> = piece.char_indices().collect();
    let flags: Vec<u8> = chars.iter().map(|&(_, c)| classify(c)).collect();
    let n = chars.len();
    // Out-of-range positions: no character, no flags (llama.cpp's OUT_OF_RANGE/SENTINEL).
    let cpt = |i: usize| chars.get(i).map(|&(_, c)| c);
    let fl = |i: usize| flags.get(i).copied();
    let byte = |i: usize| base + chars.get(i).map_or(piece.len(), |&(b, _)| b);
    let is = |i: usize, bit: u8| fl(i).is_some_and(|f| f & bit != 0);
    // [^\s\p{L}\p{N}] within range.
    let other = |i: usize| fl(i).is_some_and(|f| f & (L | N | WS) == 0);

    let mut prev_end = 0;
    let mut add = |end: usize, out: &mut Vec<(usize, usize)>| {
        if end > prev_end {
            out.push((byte(prev_end), byte(end)));
        }
        prev_end = end;
    };
    let lower = |c: Option<char>| c.map(|c| if llama3 { c.to_ascii_lowercase() } else { c });

    let mut pos = 0;
    while pos < n {
        let c = chars[pos].1;
        // 's|'t|'re|'ve|'m|'ll|'d (case-insensitive for LLaMA-3)
        if c == '\'' && pos + 1 < n {
            let c1 = lower(cpt(pos + 1));
            if matches!(c1, Some('s' | 't' | 'm' | 'd')) {
                pos += 2;
                add(pos, out);
                continue;
            }
            if pos + 2 < n {
                let c2 = lower(cpt(pos + 2));
                if matches!((c1, c2), (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))) {
                    pos += 3;
                    add(pos, out);
                    continue;
                }
            }
        }

        if llama3 {
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(c == '\r' || c == '\n' || is(pos, N)) && (is(pos, L) || is(pos + 1, L)) {
                pos += 1;
                while is(pos, L) {
                    pos += 1;
                }
                add(pos, out);
                continue;
            }
            // \p{N}{1,3}
            if is(pos, N) {
                let mut ini = pos;
                while is(pos, N) {
                    pos += 1;
                    if pos - ini >= 3 {
                        add(pos, out);
                        ini = pos;
                    }
                }
                add(pos, out);
                continue;
            }
        } else {
            let p2 = if c == ' ' { pos + 1 } else { pos };
            // <space>?\p{L}+
            if is(p2, L) {
                pos = p2;
                while is(pos, L) {
                    pos += 1;
                }
                add(pos, out);
                continue;
            }
            // <space>?\p{N}+
            if is(p2, N) {
                pos = p2;
                while is(pos, N) {
                    pos += 1;
                }
                add(pos, out);
                continue;
            }
        }

        // <space>?[^\s\p{L}\p{N}]+ (LLaMA-3: followed by [\r\n]*)
        let p2 = if c == ' ' { pos + 1 } else { pos };
        if other(p2) {
            pos = p2;
            while other(pos) {
                pos += 1;
            }
            if llama3 {
                while matches!(cpt(pos), Some('\r' | '\n')) {
                    pos += 1;
                }
            }
            add(pos, out);
            continue;
        }

        let mut num_ws = 0;
        let mut last_end_r_or_n = None;
        while is(pos + num_ws, WS) {
            if llama3 && matches!(cpt(pos + num_ws), Some('\r' | '\n')) {
                last_end_r_or_n = Some(pos + num_ws + 1);
            }
            num_ws += 1;
        }
        // \s*[\r\n]+ (LLaMA-3)
        if let Some(end) = last_end_r_or_n {
            pos = end;
            add(pos, out);
            continue;
        }
        // \s+(?!\S)
        if num_ws > 1 && pos + num_ws < n {
            pos += num_ws - 1;
            add(pos, out);
            continue;
        }
        // \s+
        if num_ws > 0 {
            pos += num_ws;
            add(pos, out);
            continue;
        }
        // no match: one character
        pos += 1;
        add(pos, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written matchers agree with the regexes they replace.
    #[test]
    fn custom_splitters_match_their_regexes() {
        let samples = [
            "Hello world, it's 2024!  Don't   stop\t\tnow.\n\n  \r\n x",
            "I'M HERE 'S 'll 'LL 'Re 12345678 1,000.5 ½² ٣٤٥ a1b2",
            "  leading and trailing  ",
            " \u{a0}\u{3000}x \u{2028}\n",
            "émigré naïve 中文字 👍🏽 ☺ $%^ ...!?",
            "\t\ttabs then words",
            "a\tb",
            "'",
            "x '",
            "''s",
            "",
            " ",
            "   ",
            "\n",
            "foo\n\n\nbar\r\n\r\nbaz  \n  qux",
        ];
        for (pattern, pass) in [(GPT2, Pass::Gpt2), (GPT2_HF, Pass::Gpt2), (LLAMA3, Pass::Llama3)] {
            let regex = [Pass::Regex(Box::new(fancy_regex::Regex::new(pattern).unwrap()))];
            for s in samples {
                let custom = split(s, std::slice::from_ref(&pass)).unwrap();
                let reference = split(s, &regex).unwrap();
                assert_eq!(custom, reference, "{pattern}\n{s:?}");
            }
        }
    }

    #[test]
    fn hugging_face_spellings_are_recognised() {
        let llama3_hf = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        assert!(matches!(Pass::new(llama3_hf), Ok(Pass::Llama3)));
        assert!(matches!(Pass::new(GPT2_HF), Ok(Pass::Gpt2)));
        assert!(matches!(Pass::new(r"\p{N}"), Ok(Pass::Regex(_))));
    }

    #[test]
    fn long_runs_do_not_overflow() {
        let text = " ".repeat(2_000_000) + &"a".repeat(2_000_000) + "\n";
        let words = split(&text, &[Pass::Gpt2]).unwrap();
        assert_eq!(words.len(), 3);
        let words = split(&text, &[Pass::Llama3]).unwrap();
        assert_eq!(words.len(), 3);
    }
}
