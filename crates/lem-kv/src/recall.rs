//! Evicted-block recall: a second tier for a bounded layer.
//!
//! A sink-window layer with recall ([`crate::CacheLayout::recall_blocks`] `> 0`) writes
//! every position past its sinks, as stored, to a file (the tier: an anonymous temporary
//! file in `TMPDIR`, so the operating system, not lem's heap, decides what of it stays in
//! memory), and keeps a summary of each complete block of [`BLOCK`] positions: per KV head
//! and dimension, the least and greatest key. A query at `q` then also attends to the
//! top-`b` blocks that lie wholly outside its window, ranked by an upper bound of the
//! query's score against the block (`sum_d max(q_d min_d, q_d max_d)`, the bound Quest
//! uses), taken at the query head that bounds highest (one retrieval head is enough to
//! want a block). Those blocks are read back into a buffer of `b * BLOCK` cells: resident
//! K/V stays `sinks + window + max_batch + b * BLOCK` positions per layer.
//!
//! Every position is written through when it is appended, not when the ring overwrites
//! it, so what a query can recall depends only on its position and the cache's contents,
//! never on how the tokens were batched: results stay independent of batch shape.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::store::Store;
use crate::{KvDtype, LayerSpec};

/// Positions per recall block.
pub const BLOCK: u32 = 32;

/// How a query ranks the evicted blocks it may recall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecallSelect {
    /// Quest's upper bound of the score against each block's least and greatest keys:
    /// the summary is two keys per block, so resident memory stays bounded.
    #[default]
    Bound,
    /// The exact best score of any key in the block (every evicted key is kept in memory
    /// as f32 to score it): the ceiling of any block summary, a measurement, not a memory
    /// bound. Its keys count as resident bytes.
    Exact,
    /// The best score of any key in the block against a one-bit sketch of each key: its
    /// signs, scaled per dimension by the block's mean magnitude (`q . k` is estimated as
    /// `sum_d q_d s_d sign(k_d)`). Every evicted key costs `head_dim / 8` bytes plus the
    /// block's scales (16 bytes per position and KV head at head size 64, a sixteenth of
    /// its f16 K/V), counted as resident bytes.
    Sketch,
}

impl RecallSelect {
    /// Whether this is the bound (the serialised default).
    pub fn is_bound(&self) -> bool {
        *self == RecallSelect::Bound
    }

    /// The name `FromStr` reads.
    pub fn name(self) -> &'static str {
        match self {
            RecallSelect::Bound => "bound",
            RecallSelect::Exact => "exact",
            RecallSelect::Sketch => "sketch",
        }
    }
}

impl std::str::FromStr for RecallSelect {
    type Err = String;

    fn from_str(s: &str) -> Result<RecallSelect, String> {
        match s {
            "bound" => Ok(RecallSelect::Bound),
            "exact" => Ok(RecallSelect::Exact),
            "sketch" => Ok(RecallSelect::Sketch),
            other => Err(format!("recall selection '{other}' is not bound, exact or sketch")),
        }
    }
}

/// The blocks one query recalls ([`crate::LayerCache::select_recall`]), ascending, with
/// the buffer their ranking reuses, so that selecting allocates nothing once warm.
#[derive(Debug, Clone, Default)]
pub struct Picked {
    blocks: Vec<u32>,
    scores: Vec<(f32, u32)>,
    /// [`RecallSelect::Sketch`]'s table: for each 4 dimensions, the sum of the weights of
    /// every subset of them.
    lut: Vec<[f32; 16]>,
}

impl Picked {
    /// The blocks, ascending.
    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }

    /// Whether no block is recalled.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Forgets the blocks.
    pub fn clear(&mut self) {
        self.blocks.clear();
    }
}

/// Two selections are equal when they pick the same blocks.
impl PartialEq for Picked {
    fn eq(&self, other: &Picked) -> bool {
        self.blocks == other.blocks
    }
}

/// The second tier of one bounded layer: every position from `sinks` on, as stored, and
/// the key summaries of its complete blocks.
#[derive(Debug)]
pub(crate) struct Tier {
    /// `None` when no file could be made (the error waits in `error`).
    file: Option<File>,
    /// First position the tier holds (the layer's sinks stay in the ring's cells).
    sinks: u32,
    /// Positions `sinks..sinks + len` are written.
    len: u32,
    /// Bytes of one position's keys and of its values (every head).
    k_bytes: usize,
    v_bytes: usize,
    n_kv: usize,
    head_dim: usize,
    /// `[block][n_kv][2][head_dim]`: least and greatest key of each complete block.
    summaries: Vec<f32>,
    /// The same for the block being filled (meaningful for its first `len % BLOCK`
    /// positions).
    partial: Vec<f32>,
    /// The first I/O error, kept until [`Tier::take_error`] reports it.
    error: Option<io::Error>,
    /// Raw K, raw V and f32 keys of the position being written (reused buffers).
    scratch: (Vec<u8>, Vec<u8>, Vec<f32>),
    /// What ranks the blocks beyond the summaries.
    selector: Selector,
}

/// What a tier keeps per evicted key to rank blocks, by [`RecallSelect`].
#[derive(Debug, Clone)]
enum Selector {
    /// Nothing: the summaries' bound.
    Bound,
    /// Every position's keys as f32, `[position][n_kv][head_dim]`.
    Exact(Vec<f32>),
    /// Every position's key signs and each block's scales.
    Sketch(Sketch),
}

/// One-bit key sketches ([`RecallSelect::Sketch`]).
#[derive(Debug, Clone)]
struct Sketch {
    /// Bytes of one head's signs.
    nb: usize,
    /// `[position][n_kv][nb]`: bit `d % 8` of byte `d / 8` set when `k_d < 0`.
    signs: Vec<u8>,
    /// `[block][n_kv][head_dim]`: mean `|k_d|` over each complete block.
    scales: Vec<f32>,
    /// The running sum of `|k_d|` of the block being filled, `[n_kv][head_dim]`.
    partial: Vec<f32>,
}

impl Sketch {
    fn new(n_kv: usize, head_dim: usize) -> Sketch {
        Sketch { nb: head_dim.div_ceil(8), signs: Vec::new(), scales: Vec::new(), partial: vec![0.0; n_kv * head_dim] }
    }

    /// Adds tier position `i` (`keys`: `[n_kv][head_dim]`).
    fn push(&mut self, i: u32, keys: &[f32], n_kv: usize) {
        let first = i.is_multiple_of(BLOCK);
        self.signs.truncate(i as usize * n_kv * self.nb);
        let hd = keys.len() / n_kv;
        for key in keys.chunks_exact(hd) {
            let at = self.signs.len();
            self.signs.resize(at + self.nb, 0);
            for (d, &x) in key.iter().enumerate() {
                if x < 0.0 {
                    self.signs[at + d / 8] |= 1 << (d % 8);
                }
            }
        }
        for (acc, &x) in self.partial.iter_mut().zip(keys) {
            *acc = if first { x.abs() } else { *acc + x.abs() };
        }
        if (i + 1).is_multiple_of(BLOCK) {
            self.scales.extend(self.partial.iter().map(|&a| a / BLOCK as f32));
        }
    }

    /// Bytes held.
    fn bytes(&self) -> usize {
        self.signs.len() + 4 * (self.scales.len() + self.partial.len())
    }

    /// The best estimated score in block `b` of KV head `g` against any of `query`'s
    /// heads (`[group][head_dim]`).
    fn best(&self, query: &[f32], b: usize, g: usize, n_kv: usize, lut: &mut Vec<[f32; 16]>) -> f32 {
        let hd = self.partial.len() / n_kv;
        let scale = &self.scales[(b * n_kv + g) * hd..(b * n_kv + g + 1) * hd];
        let mut best = f32::NEG_INFINITY;
        for qh in query.chunks_exact(hd) {
            // w_d = q_d s_d; the score of a key is sum(w) - 2 * (the sum of w over its
            // negative dimensions), read four dimensions at a time from a table.
            lut.clear();
            lut.resize(2 * self.nb, [0.0; 16]);
            let mut total = 0.0;
            for (d, (&q, &sc)) in qh.iter().zip(scale).enumerate() {
                let w = q * sc;
                total += w;
                let (t, bit) = (&mut lut[d / 4], 1 << (d % 4));
                for (m, sum) in t.iter_mut().enumerate() {
                    if m & bit != 0 {
                        *sum += w;
                    }
                }
            }
            for t in 0..BLOCK as usize {
                let at = ((b * BLOCK as usize + t) * n_kv + g) * self.nb;
                let neg: f32 = self.signs[at..at + self.nb]
                    .iter()
                    .enumerate()
                    .map(|(i, &byte)| lut[2 * i][(byte & 15) as usize] + lut[2 * i + 1][(byte >> 4) as usize])
                    .sum();
                best = best.max(total - 2.0 * neg);
            }
        }
        best
    }
}

impl Tier {
    pub(crate) fn new(spec: LayerSpec, sinks: u32, k_bytes: usize, v_bytes: usize, select: RecallSelect) -> Tier {
        let (file, error) = match tempfile::tempfile() {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(e)),
        };
        Tier {
            file,
            sinks,
            len: 0,
            k_bytes,
            v_bytes,
            n_kv: spec.n_kv,
            head_dim: spec.head_dim,
            summaries: Vec::new(),
            partial: vec![0.0; spec.n_kv * 2 * spec.head_dim],
            error,
            scratch: Default::default(),
            selector: match select {
                RecallSelect::Bound => Selector::Bound,
                RecallSelect::Exact => Selector::Exact(Vec::new()),
                RecallSelect::Sketch => Selector::Sketch(Sketch::new(spec.n_kv, spec.head_dim)),
            },
        }
    }

    /// How this tier ranks blocks.
    pub(crate) fn select_mode(&self) -> RecallSelect {
        match self.selector {
            Selector::Bound => RecallSelect::Bound,
            Selector::Exact(_) => RecallSelect::Exact,
            Selector::Sketch(_) => RecallSelect::Sketch,
        }
    }

    /// The write buffers, to fill while the tier is not borrowed ([`Tier::put_scratch`]
    /// gives them back).
    pub(crate) fn take_scratch(&mut self) -> (Vec<u8>, Vec<u8>, Vec<f32>) {
        std::mem::take(&mut self.scratch)
    }

    /// Returns the buffers of [`Tier::take_scratch`].
    pub(crate) fn put_scratch(&mut self, scratch: (Vec<u8>, Vec<u8>, Vec<f32>)) {
        self.scratch = scratch;
    }

    fn file(&self) -> io::Result<&File> {
        self.file.as_ref().ok_or_else(|| io::Error::other("the recall tier has no file"))
    }

    /// Bytes of one position's keys (every head).
    pub(crate) fn k_bytes(&self) -> usize {
        self.k_bytes
    }

    /// Bytes of one position's values (every head).
    pub(crate) fn v_bytes(&self) -> usize {
        self.v_bytes
    }

    fn row_bytes(&self) -> usize {
        self.k_bytes + self.v_bytes
    }

    fn summary_len(&self) -> usize {
        self.n_kv * 2 * self.head_dim
    }

    /// Positions held past the sinks.
    pub(crate) fn len(&self) -> u32 {
        self.len
    }

    /// Bytes written to the tier's file.
    pub(crate) fn bytes(&self) -> usize {
        self.len as usize * self.row_bytes()
    }

    /// Bytes the tier holds in memory per evicted key to select blocks: the f32 keys of
    /// [`RecallSelect::Exact`] or the sketches of [`RecallSelect::Sketch`] (0 for the
    /// bound, whose block summaries, a sixteenth of an f16 position's K/V, are metadata).
    pub(crate) fn select_bytes(&self) -> usize {
        match &self.selector {
            Selector::Bound => 0,
            Selector::Exact(keys) => keys.len() * 4,
            Selector::Sketch(sk) => sk.bytes(),
        }
    }

    /// Complete blocks.
    pub(crate) fn blocks(&self) -> u32 {
        self.len / BLOCK
    }

    /// The first I/O error since the last call, if any.
    pub(crate) fn take_error(&mut self) -> Option<io::Error> {
        self.error.take()
    }

    /// The first position the tier holds.
    pub(crate) fn sinks(&self) -> u32 {
        self.sinks
    }

    /// Records an I/O error for [`Tier::take_error`] (the first one wins).
    pub(crate) fn fail(&mut self, e: io::Error) {
        self.error.get_or_insert(e);
    }

    /// Writes position `p` (the next one the tier expects; earlier or later ones are
    /// ignored) from its raw K and V rows; `keys` is its keys as f32, `[n_kv][head_dim]`,
    /// for the summary.
    pub(crate) fn push(&mut self, p: u32, k: &[u8], v: &[u8], keys: &[f32]) {
        if p < self.sinks || p != self.sinks + self.len {
            return;
        }
        let at = (self.len as usize * self.row_bytes()) as u64;
        let written =
            self.file().and_then(|f| f.write_all_at(k, at).and_then(|()| f.write_all_at(v, at + self.k_bytes as u64)));
        if let Err(e) = written {
            self.fail(e);
        }
        let first = self.len.is_multiple_of(BLOCK);
        let hd = self.head_dim;
        match &mut self.selector {
            Selector::Bound => {}
            Selector::Exact(e) => {
                e.truncate(self.len as usize * self.n_kv * hd);
                e.extend_from_slice(keys);
            }
            Selector::Sketch(sk) => sk.push(self.len, keys, self.n_kv),
        }
        for h in 0..self.n_kv {
            let s = &mut self.partial[h * 2 * hd..(h + 1) * 2 * hd];
            let key = &keys[h * hd..(h + 1) * hd];
            let (lo, hi) = s.split_at_mut(hd);
            for d in 0..hd {
                if first {
                    (lo[d], hi[d]) = (key[d], key[d]);
                } else {
                    lo[d] = lo[d].min(key[d]);
                    hi[d] = hi[d].max(key[d]);
                }
            }
        }
        self.len += 1;
        if self.len.is_multiple_of(BLOCK) {
            self.summaries.extend_from_slice(&self.partial);
        }
    }

    /// Forgets positions `>= len`; the summary of a block left partial is rebuilt from
    /// the file (`decode` widens one position's raw keys to f32).
    pub(crate) fn truncate(&mut self, len: u32, decode: impl Fn(&[u8], &mut [f32])) {
        let keep = len.saturating_sub(self.sinks);
        if keep >= self.len {
            return;
        }
        let start = keep - keep % BLOCK;
        self.summaries.truncate((keep / BLOCK) as usize * self.summary_len());
        if let Selector::Sketch(sk) = &mut self.selector {
            sk.scales.truncate((keep / BLOCK) as usize * self.n_kv * self.head_dim);
        }
        self.len = start;
        let (mut k, mut v) = (vec![0u8; self.k_bytes], vec![0u8; self.v_bytes]);
        let mut keys = vec![0f32; self.summary_len() / 2];
        for i in start..keep {
            if let Err(e) = self.read(i, &mut k, &mut v) {
                self.fail(e);
                return;
            }
            decode(&k, &mut keys);
            self.push(self.sinks + i, &k, &v, &keys);
        }
    }

    /// Reads the raw K and V rows of tier position `i` (position `sinks + i`).
    pub(crate) fn read(&self, i: u32, k: &mut [u8], v: &mut [u8]) -> io::Result<()> {
        let at = (i as usize * self.row_bytes()) as u64;
        let f = self.file()?;
        f.read_exact_at(k, at)?;
        f.read_exact_at(v, at + self.k_bytes as u64)
    }

    /// Reads block `b` whole (its positions' K then V rows, one after another) into `buf`.
    pub(crate) fn read_block(&self, b: u32, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.resize(BLOCK as usize * self.row_bytes(), 0);
        self.file()?.read_exact_at(buf, (b as usize * BLOCK as usize * self.row_bytes()) as u64)
    }

    /// Into `out`, ascending: the (at most) `take` blocks wholly outside the window of a
    /// query at `q` (`window` positions) whose KV head `g` bounds the score of one of
    /// `query`'s heads highest. `query` is that token's heads of the group sharing KV
    /// head `g`, `[group][head_dim]`.
    pub(crate) fn select(&self, query: &[f32], g: usize, q: u32, window: u32, take: usize, out: &mut Picked) {
        out.clear();
        let hd = self.head_dim;
        let n_head = query.len() / hd;
        // Block `i` covers `sinks + BLOCK i ..= sinks + BLOCK i + BLOCK - 1`; it is out of the window when
        // its last position is at least `window` before `q`.
        let Some(reach) = q.checked_sub(window + self.sinks + BLOCK - 1) else { return };
        let n = (reach / BLOCK + 1).min(self.blocks()) as usize;
        if n == 0 || take == 0 {
            return;
        }
        let stride = self.n_kv * hd;
        let Picked { blocks, scores, lut } = out;
        scores.clear();
        scores.extend((0..n).map(|b| {
            let best = match &self.selector {
                Selector::Sketch(sk) => sk.best(query, b, g, self.n_kv, lut),
                Selector::Exact(e) => {
                    let keys = &e[b * BLOCK as usize * stride..(b + 1) * BLOCK as usize * stride];
                    keys.chunks_exact(stride)
                        .flat_map(|k| query.chunks_exact(hd).map(move |qh| dot(qh, &k[g * hd..(g + 1) * hd])))
                        .fold(f32::NEG_INFINITY, f32::max)
                }
                Selector::Bound => {
                    let s = &self.summaries[b * self.summary_len()..(b + 1) * self.summary_len()];
                    let (lo, hi) = s[g * 2 * hd..(g + 1) * 2 * hd].split_at(hd);
                    (0..n_head)
                        .map(|h| {
                            let qh = &query[h * hd..(h + 1) * hd];
                            (0..hd).map(|d| (qh[d] * lo[d]).max(qh[d] * hi[d])).sum::<f32>()
                        })
                        .fold(f32::NEG_INFINITY, f32::max)
                }
            };
            (best, b as u32)
        }));
        let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if take < scores.len() {
            scores.select_nth_unstable_by(take - 1, order);
        }
        blocks.extend(scores.iter().take(take).map(|&(_, b)| b));
        blocks.sort_unstable();
    }

    /// A copy of the file's first `bytes` bytes in a file of its own.
    fn copy_file(&self) -> io::Result<File> {
        let (from, to) = (self.file()?, tempfile::tempfile()?);
        let mut buf = vec![0u8; (1 << 20).min(self.bytes().max(1))];
        let mut at = 0usize;
        while at < self.bytes() {
            let n = buf.len().min(self.bytes() - at);
            from.read_exact_at(&mut buf[..n], at as u64)?;
            to.write_all_at(&buf[..n], at as u64)?;
            at += n;
        }
        Ok(to)
    }
}

impl Clone for Tier {
    /// A copy with a file of its own (a fork's appends must not reach the original's); if
    /// the copy fails, the clone carries the error to its next forward pass.
    fn clone(&self) -> Tier {
        let (file, error) = match self.copy_file() {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(e)),
        };
        Tier {
            file,
            sinks: self.sinks,
            len: self.len,
            k_bytes: self.k_bytes,
            v_bytes: self.v_bytes,
            n_kv: self.n_kv,
            head_dim: self.head_dim,
            summaries: self.summaries.clone(),
            partial: self.partial.clone(),
            error,
            scratch: Default::default(),
            selector: self.selector.clone(),
        }
    }
}

/// `a . b` in eight lanes (so the compiler vectorises it).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The blocks one KV head of a layer read back last, as attention reads them (cells of
/// that head alone).
#[derive(Debug, Clone)]
pub(crate) struct Recalled {
    /// Tier block indices held, ascending.
    pub(crate) blocks: Vec<u32>,
    pub(crate) k: Store,
    pub(crate) v: Store,
    pub(crate) pos: Vec<u32>,
}

impl Recalled {
    pub(crate) fn new(k_type: KvDtype, v_type: KvDtype, head_dim: usize) -> Recalled {
        Recalled {
            blocks: Vec::new(),
            k: Store::new(k_type, true, head_dim),
            v: Store::new(v_type, false, head_dim),
            pos: Vec::new(),
        }
    }

    /// Bytes of K/V held (heads of `head_dim`).
    pub(crate) fn bytes(&self, head_dim: usize) -> usize {
        self.pos.len() * (self.k.bytes_of(head_dim) + self.v.bytes_of(head_dim))
    }

    /// Forgets what was read.
    pub(crate) fn clear(&mut self) {
        self.blocks.clear();
        self.pos.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LayerKind;

    /// Three blocks of 2-d keys: block 0 holds one key along the query (exact score 6,
    /// bound 6), block 1 two keys along the axes (exact 4, but its bound is 8), block 2
    /// small keys.
    fn tier(select: RecallSelect) -> Tier {
        let spec = LayerSpec::new(LayerKind::Full, 1, 2);
        let mut t = Tier::new(spec, 0, 0, 0, select);
        for p in 0..3 * BLOCK {
            let key = match (p / BLOCK, p % BLOCK) {
                (0, 5) => [3.0, 3.0],
                (1, 0) => [4.0, 0.0],
                (1, 1) => [0.0, 4.0],
                _ => [0.1, 0.1],
            };
            t.push(p, &[], &[], &key);
        }
        t
    }

    #[test]
    fn exact_selection_ranks_by_the_best_key_and_the_bound_by_the_extremes() {
        let (q, mut out) = ([1.0f32, 1.0], Picked::default());
        tier(RecallSelect::Bound).select(&q, 0, 200, 8, 1, &mut out);
        assert_eq!(out.blocks(), [1]);
        tier(RecallSelect::Exact).select(&q, 0, 200, 8, 1, &mut out);
        assert_eq!(out.blocks(), [0]);
        tier(RecallSelect::Exact).select(&q, 0, 200, 8, 2, &mut out);
        assert_eq!(out.blocks(), [0, 1]);
    }

    #[test]
    fn exact_keys_count_and_follow_truncation() {
        let mut t = tier(RecallSelect::Exact);
        assert_eq!(tier(RecallSelect::Bound).select_bytes(), 0);
        assert_eq!(t.select_bytes(), 3 * BLOCK as usize * 2 * 4);
        t.truncate(40, |_, k| k.fill(0.1));
        assert_eq!(t.blocks(), 1);
        assert!(matches!(&t.selector, Selector::Exact(e) if e.len() == 40 * 2));
        assert_eq!("exact".parse::<RecallSelect>(), Ok(RecallSelect::Exact));
        assert!("best".parse::<RecallSelect>().is_err());
    }

    /// Deterministic keys in `[-1, 1)`.
    fn noise(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)) >> 8) as f32 / 8388608.0 - 1.0)
            .collect()
    }

    #[test]
    fn sketch_scores_match_a_scalar_reference_and_find_an_aligned_key() {
        let (n_kv, hd) = (2, 20);
        let spec = LayerSpec::new(LayerKind::Full, n_kv, hd);
        let mut t = Tier::new(spec, 0, 0, 0, RecallSelect::Sketch);
        let mut keys = noise(4 * BLOCK as usize * n_kv * hd, 1);
        let query = noise(3 * hd, 2);
        // Block 2 of KV head 1 holds one key along the second query head.
        let at = ((2 * BLOCK as usize + 7) * n_kv + 1) * hd;
        keys[at..at + hd].copy_from_slice(&query[hd..2 * hd].iter().map(|q| 3.0 * q).collect::<Vec<_>>());
        for p in 0..4 * BLOCK {
            let i = p as usize * n_kv * hd;
            t.push(p, &[], &[], &keys[i..i + n_kv * hd]);
        }
        let Selector::Sketch(sk) = &t.selector else { panic!("not a sketch") };
        assert_eq!(t.select_bytes(), 4 * BLOCK as usize * n_kv * 3 + 4 * (4 * n_kv * hd + n_kv * hd));
        let mut lut = Vec::new();
        for b in 0..4 {
            for g in 0..n_kv {
                let scale: Vec<f64> = (0..hd)
                    .map(|d| {
                        let col =
                            (0..BLOCK as usize).map(|j| keys[((b * BLOCK as usize + j) * n_kv + g) * hd + d].abs());
                        col.map(f64::from).sum::<f64>() / f64::from(BLOCK)
                    })
                    .collect();
                let want = (0..BLOCK as usize)
                    .flat_map(|j| query.chunks(hd).map(move |q| (j, q)))
                    .map(|(j, q)| {
                        let k = &keys[((b * BLOCK as usize + j) * n_kv + g) * hd..][..hd];
                        (0..hd).map(|d| f64::from(q[d]) * scale[d] * if k[d] < 0.0 { -1.0 } else { 1.0 }).sum::<f64>()
                    })
                    .fold(f64::NEG_INFINITY, f64::max);
                let got = f64::from(sk.best(&query, b, g, n_kv, &mut lut));
                assert!((got - want).abs() < 1e-4, "block {b} head {g}: {got} vs {want}");
            }
        }
        let mut out = Picked::default();
        t.select(&query, 1, 4 * BLOCK + 100, 8, 1, &mut out);
        assert_eq!(out.blocks(), [2]);
        // Truncating into a block (its keys replayed from the file) and appending the same
        // keys again gives the same sketch.
        let before = (sk.signs.clone(), sk.scales.clone());
        let row = n_kv * hd;
        let next = std::cell::Cell::new(2 * BLOCK as usize);
        t.truncate(2 * BLOCK + 5, |_, k| {
            k.copy_from_slice(&keys[next.get() * row..(next.get() + 1) * row]);
            next.set(next.get() + 1);
        });
        assert_eq!((t.len(), next.get()), (2 * BLOCK + 5, 2 * BLOCK as usize + 5));
        assert!(matches!(&t.selector, Selector::Sketch(sk) if sk.scales.len() == 2 * row));
        for p in 2 * BLOCK + 5..4 * BLOCK {
            t.push(p, &[], &[], &keys[p as usize * row..(p as usize + 1) * row]);
        }
        let Selector::Sketch(sk) = &t.selector else { panic!("not a sketch") };
        assert_eq!((&sk.signs, &sk.scales), (&before.0, &before.1));
        assert_eq!("sketch".parse::<RecallSelect>(), Ok(RecallSelect::Sketch));
    }
}
