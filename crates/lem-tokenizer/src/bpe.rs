//! Byte-level BPE: a port of llama.cpp's `llm_tokenizer_bpe_session` with its regex
//! pre-tokenizers (`llm_tokenizer_bpe`'s `regex_exprs`, applied the way
//! `unicode_regex_split` applies them).
//!
//! shimmytok's BPE agrees with llama.cpp on the merges, but differs in two places the
//! fixtures exposed or that follow from its code:
//! * a symbol that is not in the vocabulary (SmolLM2 has no token for the bytes 0x04, 0x06,
//!   0x13, 0x14, 0x16, 0x1D, 0xF1, 0xF2, ...) becomes the unknown token there, which for
//!   SmolLM2 is `<|endoftext|>`; llama.cpp drops those bytes;
//! * for single-regex pre-tokenizers shimmytok drops the text between regex matches
//!   (e.g. a tab before a letter with the GPT-2 regex); llama.cpp keeps it as a word.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use crate::bytes::gpt2_byte_to_char;
use crate::split::{self, GPT2, LLAMA3, Pass};

/// llama.cpp's pre-tokenizer regexes for a `tokenizer.ggml.pre` name, and whether the
/// pre-tokenizer uses `ignore_merges`. `None` for names llama.cpp does not know either.
fn pre_tokenizer(pre: &str) -> Option<(&'static [&'static str], bool)> {
    const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const BLOOM: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => (&[LLAMA3], true),
        "dbrx" | "smaug-bpe" | "chatglm-bpe" => (&[LLAMA3], false),
        "deepseek-coder" => (&[r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"], false),
        "deepseek-v3" => (
            &[
                r"\p{N}{1,3}",
                r"[一-龥぀-ゟ゠-ヿ]+",
                r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
            ],
            false,
        ),
        "falcon" => (&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"], false),
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => {
            (&[r"\p{N}", GPT2], false)
        }
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v1-en" | "jina-v2-es" | "jina-v2-de"
        | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo" | "jais" => (&[GPT2], false),
        "qwen2" | "stablelm2" | "megrez" => (&[QWEN2], false),
        "qwen35" => (&[QWEN35], false),
        "poro-chat" | "bloom" | "gpt3-finnish" => (&[BLOOM], false),
        "viking" => (&[BLOOM, r"\p{N}"], false),
        "default" => (&[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"], false),
        _ => return None,
    })
}

/// The llama.cpp pre-tokenizer names tried by [`pre_name_for`], most common first.
const KNOWN_PRE: &[&str] =
    &["llama-bpe", "qwen2", "qwen35", "smollm", "gpt-2", "dbrx", "deepseek-v3", "deepseek-coder"];

/// The llama.cpp pre-tokenizer name whose regexes and `ignore_merges` equal these (in
/// [`split::canonical`] spelling), if any: what a GGUF conversion would call it.
pub(crate) fn pre_name_for(patterns: &[String], ignore_merges: bool) -> Option<&'static str> {
    KNOWN_PRE.iter().copied().find(|name| {
        pre_tokenizer(name).is_some_and(|(ps, im)| {
            im == ignore_merges
                && ps.len() == patterns.len()
                && ps.iter().zip(patterns).all(|(a, b)| split::canonical(a) == split::canonical(b))
        })
    })
}

/// The byte-level BPE tokenizer of one vocabulary.
pub(crate) struct Bpe {
    passes: Vec<Pass>,
    ignore_merges: bool,
    /// Hugging Face ByteLevel `add_prefix_space`: a space in front of every text fragment
    /// that does not start with one.
    prefix_space: bool,
    /// Exact text -> id (later duplicates win, like llama.cpp's `token_to_id`).
    text_to_id: HashMap<Box<str>, u32>,
    /// Merge rank by (left id, right id); the first occurrence of a pair wins.
    ranks: HashMap<(u32, u32), u32>,
}

/// Why a BPE vocabulary cannot be used.
pub(crate) enum BpeError {
    UnknownPre(String),
    Regex(String),
}

impl Bpe {
    /// The tokenizer for a GGUF vocabulary: llama.cpp's pre-tokenizer `pre`, merges as
    /// `"left right"` strings split the way llama.cpp splits them.
    pub(crate) fn from_pre_name(pre: &str, texts: &[String], merges: &[&str]) -> Result<Bpe, BpeError> {
        let (patterns, ignore_merges) = pre_tokenizer(pre).ok_or_else(|| BpeError::UnknownPre(pre.to_string()))?;
        // llama.cpp splits at the first space after the first byte.
        let pairs = merges.iter().filter_map(|m| {
            let sp = m.bytes().skip(1).position(|b| b == b' ')? + 1;
            Some((&m[..sp], &m[sp + 1..]))
        });
        let vocab = texts.iter().enumerate().map(|(id, t)| (t.as_str(), id as u32));
        Bpe::new(patterns, ignore_merges, false, vocab, pairs).map_err(BpeError::Regex)
    }

    /// The tokenizer for pre-tokenizer regexes `patterns` (applied one after the other,
    /// each to the pieces of the previous), the vocabulary the merges work on (text, id;
    /// a later duplicate text wins) and merges in rank order.
    pub(crate) fn new<'a>(
        patterns: &[&str],
        ignore_merges: bool,
        prefix_space: bool,
        vocab: impl Iterator<Item = (&'a str, u32)>,
        merges: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Result<Bpe, String> {
        let passes = patterns.iter().map(|p| Pass::new(p)).collect::<Result<Vec<_>, _>>()?;
        let mut text_to_id = HashMap::with_capacity(vocab.size_hint().0);
        for (t, id) in vocab {
            text_to_id.insert(Box::from(t), id);
        }
        let mut ranks = HashMap::with_capacity(text_to_id.len() * 2);
        for (rank, (l, r)) in merges.enumerate() {
            // A merge whose halves are not tokens can never apply: symbols are always
            // single characters or earlier merge results, which are tokens.
            if let (Some(&l), Some(&r)) = (text_to_id.get(l), text_to_id.get(r)) {
                ranks.entry((l, r)).or_insert(rank as u32);
            }
        }
        Ok(Bpe { passes, ignore_merges, prefix_space, text_to_id, ranks })
    }

    /// Exact vocabulary look-up.
    pub(crate) fn token_id(&self, text: &str) -> Option<u32> {
        self.text_to_id.get(text).copied()
    }

    /// Tokenizes `text` (free of special tokens), appending to `out`.
    pub(crate) fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<(), String> {
        if self.prefix_space && !text.is_empty() && !text.starts_with(' ') {
            return self.encode(&format!(" {text}"), out);
        }
        for (start, end) in self.split(text)? {
            let word: String = text[start..end].bytes().map(gpt2_byte_to_char).collect();
            self.encode_word(&word, out);
        }
        Ok(())
    }

    fn split(&self, text: &str) -> Result<Vec<(usize, usize)>, String> {
        split::split(text, &self.passes)
    }

    fn encode_word(&self, word: &str, out: &mut Vec<u32>) {
        if self.ignore_merges
            && let Some(&id) = self.text_to_id.get(word)
        {
            out.push(id);
            return;
        }
        // Symbols: one per character of the byte-encoded word.
        let mut pos: Vec<usize> = word.char_indices().map(|(i, _)| i).collect();
        let count = pos.len();
        pos.push(word.len());
        let mut len: Vec<usize> = pos.windows(2).map(|w| w[1] - w[0]).collect();
        let mut prev: Vec<Option<usize>> = (0..count).map(|i| i.checked_sub(1)).collect();
        let mut next: Vec<Option<usize>> = (0..count).map(|i| (i + 1 < count).then_some(i + 1)).collect();

        let rank = |l: usize, ln: usize, r: usize, rn: usize| -> Option<u32> {
            let lid = self.text_to_id.get(&word[pos[l]..pos[l] + ln])?;
            let rid = self.text_to_id.get(&word[pos[r]..pos[r] + rn])?;
            self.ranks.get(&(*lid, *rid)).copied()
        };
        let mut queue = BinaryHeap::new();
        let add = |queue: &mut BinaryHeap<Bigram>, l: usize, r: usize, len: &[usize]| {
            if let Some(rank) = rank(l, len[l], r, len[r]) {
                queue.push(Bigram { rank, left: l, right: r, left_len: len[l], right_len: len[r] });
            }
        };
        for i in 1..count {
            add(&mut queue, i - 1, i, &len);
        }
        while let Some(b) = queue.pop() {
            // Outdated if either side changed since the bigram was queued (llama.cpp
            // compares the texts; positions are fixed, so lengths suffice).
            if len[b.left] == 0 || len[b.right] == 0 {
                continue;
            }
            if len[b.left] != b.left_len || len[b.right] != b.right_len {
                continue;
            }
            len[b.left] += len[b.right];
            len[b.right] = 0;
            next[b.left] = next[b.right];
            if let Some(n) = next[b.right] {
                prev[n] = Some(b.left);
            }
            if let Some(p) = prev[b.left] {
                add(&mut queue, p, b.left, &len);
            }
            if let Some(n) = next[b.left] {
                add(&mut queue, b.left, n, &len);
            }
        }
        let mut i = (count > 0).then_some(0);
        while let Some(idx) = i {
            let piece = &word[pos[idx]..pos[idx] + len[idx]];
            match self.text_to_id.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    // llama.cpp looks each byte up as a one-byte string and drops the
                    // ones that are not tokens.
                    for b in piece.bytes().filter(u8::is_ascii) {
                        let s = [b];
                        let s = std::str::from_utf8(&s).unwrap_or_default();
                        if let Some(&id) = self.text_to_id.get(s) {
                            out.push(id);
                        }
                    }
                }
            }
            i = next[idx];
        }
    }
}

struct Bigram {
    rank: u32,
    left: usize,
    right: usize,
    left_len: usize,
    right_len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bigram {
    /// Max-heap order: lowest rank first, then the leftmost pair (llama.cpp's comparator).
    fn cmp(&self, other: &Self) -> Ordering {
        other.rank.cmp(&self.rank).then_with(|| other.left.cmp(&self.left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pre_tokenizer_regex_compiles() {
        for pre in [
            "llama3",
            "dbrx",
            "deepseek-coder",
            "deepseek-v3",
            "falcon",
            "smollm",
            "gpt-2",
            "qwen2",
            "qwen35",
            "bloom",
            "viking",
            "default",
        ] {
            let (patterns, _) = pre_tokenizer(pre).unwrap();
            for p in patterns {
                assert!(Pass::new(p).is_ok(), "{pre}: {p}");
            }
        }
        assert!(pre_tokenizer("no-such-pre").is_none());
    }

    #[test]
    fn split_keeps_text_between_matches() {
        let texts: Vec<String> = ["a", "b", "\u{109}"].iter().map(|s| s.to_string()).collect();
        let bpe = Bpe::from_pre_name("gpt-2", &texts, &[]).ok().unwrap();
        // The GPT-2 regex does not match a lone tab before a letter; the tab stays a word.
        let words = bpe.split("a\tb").unwrap();
        assert_eq!(words, vec![(0, 1), (1, 2), (2, 3)]);
    }
}
