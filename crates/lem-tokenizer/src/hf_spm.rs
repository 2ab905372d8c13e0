//! SentencePiece-style tokenizer.json (Gemma, Llama 2, Mistral v0.1, Phi-3): the
//! `tokenizers` library's BPE model on characters (no byte-level map) with merges by rank,
//! `byte_fallback` to `<0xNN>` tokens, the unknown token, an optional `Metaspace`
//! pre-tokenizer, and the decoders these files use (`Replace`, `ByteFallback`, `Fuse`,
//! `Strip`, `Metaspace`).
//!
//! This is not llama.cpp's SentencePiece merge by score (`spm.rs`): a tokenizer.json
//! carries merges, and `tokenizers` applies them by rank, lowest first, leftmost among
//! equals (`Word::merge_all`), which is what is ported here.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use crate::error::TokenizerError;
use crate::hf_json::{Obj, unsupported};

/// `Metaspace`'s `prepend_scheme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PrependScheme {
    /// Put the replacement in front of every piece that does not start with one.
    Always,
    /// Only in front of the piece at the start of the input.
    First,
    Never,
}

/// The `Metaspace` pre-tokenizer: spaces become `replacement`, which is prepended per
/// `prepend`; with `split`, every replacement starts a new word.
#[derive(Debug, Clone)]
pub(crate) struct Metaspace {
    replacement: char,
    prepend: PrependScheme,
    split: bool,
}

fn replacement(o: &Obj<'_>) -> Result<char, TokenizerError> {
    let s = o.str("replacement")?.unwrap_or("\u{2581}");
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Ok(c),
        _ => Err(o.err("replacement", "expected one character")),
    }
}

/// `prepend_scheme` (or the older `add_prefix_space`).
fn prepend_scheme(o: &Obj<'_>) -> Result<PrependScheme, TokenizerError> {
    match o.str("prepend_scheme")? {
        Some("always") => Ok(PrependScheme::Always),
        Some("first") => Ok(PrependScheme::First),
        Some("never") => Ok(PrependScheme::Never),
        Some(other) => Err(o.err("prepend_scheme", &format!("unknown scheme '{other}'"))),
        None => {
            Ok(if o.bool("add_prefix_space")?.unwrap_or(true) { PrependScheme::Always } else { PrependScheme::Never })
        }
    }
}

impl Metaspace {
    /// Parses a `Metaspace` pre-tokenizer object.
    pub(crate) fn parse(o: &Obj<'_>) -> Result<Metaspace, TokenizerError> {
        Ok(Metaspace {
            replacement: replacement(o)?,
            prepend: prepend_scheme(o)?,
            split: o.bool("split")?.unwrap_or(true),
        })
    }

    /// The words of one piece of normalized text; `at_start` when it begins the input.
    fn words(&self, text: &str, at_start: bool) -> Vec<String> {
        let mut s: String = text.chars().map(|c| if c == ' ' { self.replacement } else { c }).collect();
        let prepend = match self.prepend {
            PrependScheme::Always => true,
            PrependScheme::First => at_start,
            PrependScheme::Never => false,
        };
        if prepend && !s.starts_with(self.replacement) {
            s.insert(0, self.replacement);
        }
        if !self.split {
            return vec![s];
        }
        // SplitDelimiterBehavior::MergedWithNext: every replacement begins a word.
        let mut words = Vec::new();
        let mut start = 0;
        for (i, c) in s.char_indices() {
            if c == self.replacement && i > start {
                words.push(s[start..i].to_string());
                start = i;
            }
        }
        if start < s.len() {
            words.push(s[start..].to_string());
        }
        words
    }
}

/// The BPE model of a SentencePiece-style tokenizer.json.
pub(crate) struct HfBpe {
    /// The model's vocabulary (not the added tokens).
    vocab: HashMap<Box<str>, u32>,
    /// (left id, right id) -> (rank, merged id); a pair listed twice keeps the last.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// `<0xNN>` token per byte, when `byte_fallback` is on.
    byte_ids: Option<Vec<Option<u32>>>,
    unk: Option<u32>,
    fuse_unk: bool,
    ignore_merges: bool,
    metaspace: Option<Metaspace>,
}

/// The settings of [`HfBpe`] besides vocabulary and merges.
pub(crate) struct HfBpeOptions {
    pub(crate) byte_fallback: bool,
    pub(crate) unk: Option<u32>,
    pub(crate) fuse_unk: bool,
    pub(crate) ignore_merges: bool,
    pub(crate) metaspace: Option<Metaspace>,
}

impl HfBpe {
    /// The model for `vocab` (text, id) and `merges` (left, right, merged id) in rank order.
    pub(crate) fn new<'a>(
        vocab: impl Iterator<Item = (&'a str, u32)>,
        merges: impl Iterator<Item = (u32, u32, u32)>,
        opts: HfBpeOptions,
    ) -> HfBpe {
        let vocab: HashMap<Box<str>, u32> = vocab.map(|(t, id)| (Box::from(t), id)).collect();
        let merges = merges.enumerate().map(|(rank, (l, r, m))| ((l, r), (rank as u32, m))).collect();
        let byte_ids = opts
            .byte_fallback
            .then(|| (0..=255u8).map(|b| vocab.get(format!("<0x{b:02X}>").as_str()).copied()).collect());
        HfBpe {
            vocab,
            merges,
            byte_ids,
            unk: opts.unk,
            fuse_unk: opts.fuse_unk,
            ignore_merges: opts.ignore_merges,
            metaspace: opts.metaspace,
        }
    }

    /// A description of the settings, for the fingerprint.
    pub(crate) fn describe(&self) -> String {
        format!(
            "byte_fallback={} unk={:?} fuse_unk={} ignore_merges={} metaspace={:?}",
            self.byte_ids.is_some(),
            self.unk,
            self.fuse_unk,
            self.ignore_merges,
            self.metaspace
        )
    }

    /// Exact look-up in the model's vocabulary.
    pub(crate) fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.get(text).copied()
    }

    /// Tokenizes one piece of normalized text free of added tokens; `at_start` when it
    /// begins the input (Metaspace `prepend_scheme: first`).
    pub(crate) fn encode(&self, text: &str, at_start: bool, out: &mut Vec<u32>) {
        match &self.metaspace {
            None => self.encode_word(text, out),
            Some(m) => {
                for w in m.words(text, at_start) {
                    self.encode_word(&w, out);
                }
            }
        }
    }

    /// `BPE::tokenize` of one word: `ignore_merges`, then `merge_word`.
    fn encode_word(&self, word: &str, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if self.ignore_merges
            && let Some(&id) = self.vocab.get(word)
        {
            out.push(id);
            return;
        }
        // `merge_word`: one symbol per character, byte tokens for characters outside the
        // vocabulary, else the unknown token (runs fused with `fuse_unk`).
        let mut ids: Vec<u32> = Vec::with_capacity(word.len());
        let mut unk: Option<u32> = None;
        let mut buf = [0u8; 4];
        for c in word.chars() {
            let s = c.encode_utf8(&mut buf);
            if let Some(&id) = self.vocab.get(&*s) {
                if let Some(u) = unk.take() {
                    ids.push(u);
                }
                ids.push(id);
                continue;
            }
            if let Some(bytes) = &self.byte_ids
                && let Some(tokens) = s.bytes().map(|b| bytes[b as usize]).collect::<Option<Vec<u32>>>()
            {
                // As in `tokenizers`, a pending unknown token is not flushed first.
                ids.extend(tokens);
                continue;
            }
            if let Some(u) = self.unk {
                match unk {
                    Some(_) if self.fuse_unk => {}
                    Some(prev) => {
                        ids.push(prev);
                        unk = Some(u);
                    }
                    None => unk = Some(u),
                }
            }
        }
        if let Some(u) = unk {
            ids.push(u);
        }
        self.merge_all(&mut ids);
        out.extend_from_slice(&ids);
    }

    /// `Word::merge_all`: the lowest-ranked adjacent pair first, leftmost among equals.
    fn merge_all(&self, ids: &mut Vec<u32>) {
        let n = ids.len();
        if n < 2 {
            return;
        }
        let mut alive = vec![true; n];
        let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
        let mut next: Vec<Option<usize>> = (0..n).map(|i| (i + 1 < n).then_some(i + 1)).collect();
        let mut queue = BinaryHeap::with_capacity(n);
        for i in 0..n - 1 {
            if let Some(&(rank, new_id)) = self.merges.get(&(ids[i], ids[i + 1])) {
                queue.push(Merge { pos: i, rank, new_id });
            }
        }
        while let Some(top) = queue.pop() {
            if !alive[top.pos] {
                continue;
            }
            let Some(right) = next[top.pos] else { continue };
            // An outdated entry: the pair there now merges into something else, or not at all.
            if self.merges.get(&(ids[top.pos], ids[right])).is_none_or(|&(_, m)| m != top.new_id) {
                continue;
            }
            ids[top.pos] = top.new_id;
            alive[right] = false;
            next[top.pos] = next[right];
            if let Some(nn) = next[right] {
                prev[nn] = Some(top.pos);
            }
            if let Some(p) = prev[top.pos]
                && let Some(&(rank, new_id)) = self.merges.get(&(ids[p], ids[top.pos]))
            {
                queue.push(Merge { pos: p, rank, new_id });
            }
            if let Some(nx) = next[top.pos]
                && let Some(&(rank, new_id)) = self.merges.get(&(ids[top.pos], ids[nx]))
            {
                queue.push(Merge { pos: top.pos, rank, new_id });
            }
        }
        let mut k = 0;
        for i in 0..n {
            if alive[i] {
                ids[k] = ids[i];
                k += 1;
            }
        }
        ids.truncate(k);
    }
}

struct Merge {
    pos: usize,
    rank: u32,
    new_id: u32,
}

impl PartialEq for Merge {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Merge {}

impl PartialOrd for Merge {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Merge {
    /// Max-heap order: lowest rank first, then the leftmost position.
    fn cmp(&self, other: &Self) -> Ordering {
        other.rank.cmp(&self.rank).then_with(|| other.pos.cmp(&self.pos))
    }
}

/// One step of a tokenizer.json `decoder` (a `Sequence` is a list of them).
#[derive(Debug, Clone)]
enum Step {
    /// Replace a literal string in every token.
    Replace(String, String),
    /// Runs of `<0xNN>` tokens become their bytes as UTF-8, or one U+FFFD per byte.
    ByteFallback,
    /// All tokens become one.
    Fuse,
    /// Up to `start` / `stop` copies of the character removed from each token's ends.
    Strip(char, usize, usize),
    /// The replacement becomes a space, and disappears from the first token (unless the
    /// prepend scheme is `never`).
    Metaspace(char, bool),
}

/// The decoder of a SentencePiece-style tokenizer.json: token texts -> text, as
/// `tokenizers`' `decode` runs it.
#[derive(Debug, Clone)]
pub(crate) struct Decoder(Vec<Step>);

impl Decoder {
    /// Parses the `decoder` object (`Sequence` of `Replace` with a `String` pattern,
    /// `ByteFallback`, `Fuse`, `Strip`, `Metaspace`).
    pub(crate) fn parse(o: &Obj<'_>) -> Result<Decoder, TokenizerError> {
        let mut steps = Vec::new();
        parse_step(o, &mut steps)?;
        Ok(Decoder(steps))
    }

    /// The text of these tokens.
    pub(crate) fn decode(&self, mut tokens: Vec<String>) -> String {
        for step in &self.0 {
            tokens = step.apply(tokens);
        }
        tokens.concat()
    }
}

fn parse_step(o: &Obj<'_>, steps: &mut Vec<Step>) -> Result<(), TokenizerError> {
    let step = match o.kind()? {
        "Sequence" => {
            for (i, v) in o.array("decoders")?.iter().enumerate() {
                parse_step(&Obj::new(o.path, &format!("{}.decoders[{i}]", o.at), v)?, steps)?;
            }
            return Ok(());
        }
        "Replace" => {
            let pattern = o.obj("pattern")?;
            let Some(from) = pattern.str("String")? else {
                return Err(unsupported(o.path, "Replace decoder with a Regex pattern"));
            };
            let to = o.str("content")?.ok_or_else(|| o.err("content", "missing"))?;
            Step::Replace(from.to_string(), to.to_string())
        }
        "ByteFallback" => Step::ByteFallback,
        "Fuse" => Step::Fuse,
        "Strip" => {
            let content = o.str("content")?.unwrap_or(" ");
            let mut chars = content.chars();
            let (Some(c), None) = (chars.next(), chars.next()) else {
                return Err(o.err("content", "expected one character"));
            };
            let count = |key: &str| -> Result<usize, TokenizerError> {
                match o.get(key) {
                    None => Ok(0),
                    Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| o.err(key, "expected a count")),
                }
            };
            Step::Strip(c, count("start")?, count("stop")?)
        }
        "Metaspace" => Step::Metaspace(replacement(o)?, prepend_scheme(o)? != PrependScheme::Never),
        other => return Err(unsupported(o.path, format!("decoder '{other}' with a SentencePiece-style model"))),
    };
    steps.push(step);
    Ok(())
}

impl Step {
    fn apply(&self, tokens: Vec<String>) -> Vec<String> {
        match self {
            Step::Replace(from, to) => tokens.into_iter().map(|t| t.replace(from.as_str(), to)).collect(),
            Step::Fuse => vec![tokens.concat()],
            Step::Strip(c, start, stop) => tokens.into_iter().map(|t| strip(&t, *c, *start, *stop)).collect(),
            Step::Metaspace(r, strip_first) => tokens
                .into_iter()
                .enumerate()
                .map(|(i, t)| {
                    t.chars()
                        .filter_map(|c| match c {
                            c if c != *r => Some(c),
                            _ if i == 0 && *strip_first => None,
                            _ => Some(' '),
                        })
                        .collect()
                })
                .collect(),
            Step::ByteFallback => {
                let mut out = Vec::with_capacity(tokens.len());
                let mut bytes = Vec::new();
                let flush = |bytes: &mut Vec<u8>, out: &mut Vec<String>| {
                    if bytes.is_empty() {
                        return;
                    }
                    match String::from_utf8(std::mem::take(bytes)) {
                        Ok(s) => out.push(s),
                        Err(e) => out.extend(std::iter::repeat_n("\u{fffd}".to_string(), e.as_bytes().len())),
                    }
                };
                for t in tokens {
                    match byte_token(&t) {
                        Some(b) => bytes.push(b),
                        None => {
                            flush(&mut bytes, &mut out);
                            out.push(t);
                        }
                    }
                }
                flush(&mut bytes, &mut out);
                out
            }
        }
    }
}

/// The byte of a `<0xNN>` token (`tokenizers`' test: six bytes, `<0x`, `>`, hex).
fn byte_token(t: &str) -> Option<u8> {
    if t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') {
        t.get(3..5).and_then(|h| u8::from_str_radix(h, 16).ok())
    } else {
        None
    }
}

fn strip(t: &str, c: char, start: usize, stop: usize) -> String {
    let chars: Vec<char> = t.chars().collect();
    let begin = chars.iter().take(start).take_while(|&&x| x == c).count();
    let end = chars.len() - chars[begin..].iter().rev().take(stop).take_while(|&&x| x == c).count();
    chars[begin..end].iter().collect()
}
