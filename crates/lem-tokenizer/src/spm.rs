//! SentencePiece-style BPE with byte fallback: a port of llama.cpp's
//! `llm_tokenizer_spm_session`.
//!
//! shimmytok has the same algorithm, but it looks pieces up "with either space form"
//! (`▁` and `Ġ` swapped when the exact text is missing). Gemma 3 has both `Ġ` and `▁`
//! tokens, so for input containing `Ġ` that substitution picks different tokens than
//! llama.cpp (fixture string `"ĠĠhello"`). Here every look-up is exact, as in llama.cpp.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// A candidate merge of two adjacent symbols.
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
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
    /// Max-heap order: higher score first, then the leftmost pair (llama.cpp's comparator).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.partial_cmp(&other.score).unwrap_or(Ordering::Equal).then_with(|| other.left.cmp(&self.left))
    }
}

/// A run of the input: byte offset, byte length (0 once merged away), neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    pos: usize,
    n: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// The SentencePiece tokenizer of one vocabulary.
pub(crate) struct Spm {
    /// Exact text -> id (later duplicates win, like llama.cpp's `token_to_id`).
    text_to_id: HashMap<Box<str>, u32>,
    scores: Vec<f32>,
    /// `<0xNN>` byte tokens (or the single-byte token as a fallback), per byte.
    byte_ids: Vec<Option<u32>>,
    unk: Option<u32>,
}

impl Spm {
    pub(crate) fn new(texts: &[String], scores: &[f32], unk: Option<u32>) -> Spm {
        let mut text_to_id = HashMap::with_capacity(texts.len());
        for (id, t) in texts.iter().enumerate() {
            text_to_id.insert(Box::from(t.as_str()), id as u32);
        }
        let mut byte_ids = vec![None; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            let hex = format!("<0x{b:02X}>");
            *slot = text_to_id.get(hex.as_str()).copied().or_else(|| {
                // llama.cpp falls back to the byte as a one-character string.
                (b < 0x80).then(|| text_to_id.get(&*(b as u8 as char).to_string()).copied()).flatten()
            });
        }
        Spm { text_to_id, scores: scores.to_vec(), byte_ids, unk }
    }

    /// Exact vocabulary look-up.
    pub(crate) fn token_id(&self, text: &str) -> Option<u32> {
        self.text_to_id.get(text).copied()
    }

    /// Tokenizes `text` (free of special tokens), appending to `out`. Spaces become `▁`;
    /// with `add_space_prefix` a `▁` is put in front first.
    pub(crate) fn encode(&self, text: &str, add_space_prefix: bool, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut s = String::with_capacity(text.len() + 8);
        if add_space_prefix {
            s.push('\u{2581}');
        }
        for c in text.chars() {
            s.push(if c == ' ' { '\u{2581}' } else { c });
        }
        Session::new(self, &s).run(out);
    }
}

struct Session<'a> {
    spm: &'a Spm,
    text: &'a str,
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Bigram>,
    rev_merge: HashMap<&'a str, (usize, usize)>,
}

impl<'a> Session<'a> {
    fn new(spm: &'a Spm, text: &'a str) -> Session<'a> {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        let count = text.chars().count();
        for (i, (pos, c)) in text.char_indices().enumerate() {
            symbols.push(Symbol {
                pos,
                n: c.len_utf8(),
                prev: i.checked_sub(1),
                next: (i + 1 < count).then_some(i + 1),
            });
        }
        Session { spm, text, symbols, queue: BinaryHeap::new(), rev_merge: HashMap::new() }
    }

    fn run(mut self, out: &mut Vec<u32>) {
        for i in 1..self.symbols.len() {
            self.try_add_bigram(Some(i - 1), Some(i));
        }
        while let Some(bigram) = self.queue.pop() {
            let (l, r) = (self.symbols[bigram.left], self.symbols[bigram.right]);
            if l.n == 0 || r.n == 0 || l.n + r.n != bigram.size {
                continue;
            }
            // Merge the right symbol into the left one.
            self.symbols[bigram.left].n += r.n;
            self.symbols[bigram.right].n = 0;
            self.symbols[bigram.left].next = r.next;
            if let Some(next) = r.next {
                self.symbols[next].prev = Some(bigram.left);
            }
            let left = &self.symbols[bigram.left];
            let (prev, next) = (left.prev, left.next);
            self.try_add_bigram(prev, Some(bigram.left));
            self.try_add_bigram(Some(bigram.left), next);
        }
        let mut i = (!self.symbols.is_empty()).then_some(0);
        while let Some(idx) = i {
            let sym = self.symbols[idx];
            self.resegment(sym, out, 0);
            i = sym.next;
        }
    }

    fn sym_text(&self, sym: Symbol) -> &'a str {
        &self.text[sym.pos..sym.pos + sym.n]
    }

    fn resegment(&self, sym: Symbol, out: &mut Vec<u32>, depth: usize) {
        let text = self.sym_text(sym);
        if let Some(&id) = self.spm.text_to_id.get(text) {
            out.push(id);
            return;
        }
        match self.rev_merge.get(text) {
            Some(&(l, r)) if depth < 64 => {
                self.resegment(self.symbols[l], out, depth + 1);
                self.resegment(self.symbols[r], out, depth + 1);
            }
            _ => {
                // Byte fallback. llama.cpp aborts when a byte has no token at all; we emit
                // the unknown token instead (or nothing, if there is none).
                for b in text.bytes() {
                    if let Some(id) = self.spm.byte_ids[b as usize].or(self.spm.unk) {
                        out.push(id);
                    }
                }
            }
        }
    }

    fn try_add_bigram(&mut self, left: Option<usize>, right: Option<usize>) {
        let (Some(left), Some(right)) = (left, right) else {
            return;
        };
        let (l, r) = (self.symbols[left], self.symbols[right]);
        let text = &self.text[l.pos..l.pos + l.n + r.n];
        let Some(&id) = self.spm.text_to_id.get(text) else {
            return;
        };
        self.queue.push(Bigram { left, right, score: self.spm.scores[id as usize], size: text.len() });
        self.rev_merge.insert(text, (left, right));
    }
}
