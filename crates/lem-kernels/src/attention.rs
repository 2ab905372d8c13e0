//! Scaled dot-product attention over a cache of keys and values.
//!
//! The work is split into items of (a block of query tokens) x (a KV head) x (some or all
//! of the query heads sharing it, for grouped-query attention). Each item widens a cached
//! K or V row to f32 once and uses it for every query row of the item, so an f16 cache
//! costs one conversion per row per item instead of one per query; it visits only the
//! span of cells some query of the block can see (for a full-attention layer in a prompt,
//! the causal triangle); scores, softmax (vectorised `exp`) and the weighted sum of values
//! run on [`crate::simd`]'s runtime-dispatched primitives. Nothing is allocated in the
//! steady state: per-thread scratch buffers grow to the largest call and stay.
//!
//! Arithmetic follows GGML's non-flash path: with f16 storage, queries and attention
//! weights are rounded to f16 before their products with keys and values (accumulated in
//! f32).

use std::cell::RefCell;

use half::f16;

use crate::simd;
use crate::threads::{SharedMut, Threads};

mod side;
pub use side::KvRows;
use side::Side;

/// Element types a KV cache may store; attention reads them through this trait.
pub trait KvElem: simd::Element {
    /// Rounds a query element the way GGML rounds the right-hand side of a dot product
    /// with this type (f16 keys meet f16-rounded queries).
    fn round_query(x: f32) -> f32;
    /// Rounds an attention weight the same way, for the product with values.
    fn round_weight(p: f32) -> f32;
    /// [`KvElem::round_query`] / [`KvElem::round_weight`] over a slice.
    fn round_slice(x: &mut [f32]);
}

impl KvElem for f32 {
    #[inline]
    fn round_query(x: f32) -> f32 {
        x
    }
    #[inline]
    fn round_weight(p: f32) -> f32 {
        p
    }
    #[inline]
    fn round_slice(_x: &mut [f32]) {}
}

impl KvElem for f16 {
    #[inline]
    fn round_query(x: f32) -> f32 {
        f16::from_f32(x).to_f32()
    }
    #[inline]
    fn round_weight(p: f32) -> f32 {
        f16::from_f32(p).to_f32()
    }
    #[inline]
    fn round_slice(x: &mut [f32]) {
        simd::round_f16(x);
    }
}

/// Stored keys and values, in the cache's element type.
#[derive(Debug, Clone, Copy)]
pub enum KvData<'a> {
    /// f32 cells.
    F32 {
        /// Keys, cell-major: `[cells][n_kv][head_dim]`.
        k: &'a [f32],
        /// Values, same layout.
        v: &'a [f32],
    },
    /// f16 cells.
    F16 {
        /// Keys, cell-major: `[cells][n_kv][head_dim]`.
        k: &'a [f16],
        /// Values, same layout.
        v: &'a [f16],
    },
    /// Keys and values each in its own storage (either may be GGML blocks).
    Split {
        /// Keys.
        k: KvRows<'a>,
        /// Values.
        v: KvRows<'a>,
    },
}

/// The keys and values an attention call reads: `cells` cache cells, each holding
/// `n_kv * head_dim` elements of K (and of V), with the absolute position of each cell.
#[derive(Debug, Clone, Copy)]
pub struct KvView<'a> {
    /// The stored K and V.
    pub data: KvData<'a>,
    /// Absolute position of each cell.
    pub pos: &'a [u32],
}

/// Which cached positions a query may attend to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// Every position up to and including the query's own.
    Causal,
    /// Causal, and only the `window` most recent positions (`q - p < window`).
    SlidingWindow {
        /// Window length in positions.
        window: u32,
    },
    /// Causal, and only the first `sinks` positions (attention sinks) or the `window` most
    /// recent ones (`p < sinks || q - p < window`); `sinks: 0` is
    /// [`Mask::SlidingWindow`].
    SinkWindow {
        /// Leading positions every query sees.
        sinks: u32,
        /// Window length in positions.
        window: u32,
    },
}

impl Mask {
    /// Whether a query at `q` sees the key at `p`.
    #[inline]
    pub fn visible(self, q: u32, p: u32) -> bool {
        match self {
            Mask::Causal => p <= q,
            Mask::SlidingWindow { window } => Mask::SinkWindow { sinks: 0, window }.visible(q, p),
            Mask::SinkWindow { sinks, window } => p <= q && (p < sinks || q - p < window),
        }
    }
}

/// Head geometry and scaling of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention shares each among `n_head / n_kv`).
    pub n_kv: usize,
    /// Dimension of every head.
    pub head_dim: usize,
    /// Multiplier applied to `q . k`.
    pub scale: f32,
    /// Optional soft-cap on attention logits.
    pub softcap: Option<f32>,
    /// Visibility rule.
    pub mask: Mask,
}

/// Query tokens per work item when there are enough tokens to keep every thread busy.
const TOKEN_BLOCK: usize = 4;

/// Per-thread buffers of one work item.
#[derive(Default)]
struct Scratch {
    /// Rounded queries, `[rows][head_dim]`.
    q: Vec<f32>,
    /// Scores, then weights, `[rows][span]`.
    scores: Vec<f32>,
    /// Rounded sink queries, `[rows][head_dim]`, and their scores against one cell.
    sink_q: Vec<f32>,
    sink_scores: Vec<f32>,
    /// Outputs, `[rows][head_dim]`.
    out: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Scaled dot-product attention of `q` (`[n_tok][n_head][head_dim]`, query `t` at
/// absolute position `q_pos[t]`) over the cache cells in `kv`; writes `out` in the same
/// layout as `q`. When `probs` is given it receives the attention weights,
/// `[n_tok][n_head][cells]` in cell order (0 for masked cells).
pub fn attention(
    q: &[f32],
    q_pos: &[u32],
    kv: KvView<'_>,
    shape: &AttnShape,
    out: &mut [f32],
    probs: Option<&mut [f32]>,
    threads: &Threads,
) {
    attention_with_sinks(q, q_pos, kv, shape, AttnExtras::default(), out, probs, threads)
}

/// What an attention call may take beyond queries, keys and values.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttnExtras<'a> {
    /// Learned per-head sink logits (`sink_logits[h]`, gpt-oss): each row's softmax
    /// denominator also holds `exp(sink_logits[h])`, as if every query saw one more cell
    /// whose value is zero.
    pub sink_logits: Option<&'a [f32]>,
    /// Queries in `q`'s layout used, instead of `q`, for the scores against the attention
    /// sinks (cells at positions below [`Mask::SinkWindow`]'s `sinks`): the queries rotated
    /// at the rebased position of a StreamingLLM cache (`lem_kv::SinkPositions::Rebased`).
    pub sink_queries: Option<&'a [f32]>,
}

/// [`attention`] with [`AttnExtras`]; `AttnExtras::default()` is plain [`attention`].
#[allow(clippy::too_many_arguments)]
pub fn attention_with_sinks(
    q: &[f32],
    q_pos: &[u32],
    kv: KvView<'_>,
    shape: &AttnShape,
    extras: AttnExtras<'_>,
    out: &mut [f32],
    probs: Option<&mut [f32]>,
    threads: &Threads,
) {
    if let Some(s) = extras.sink_logits {
        assert_eq!(s.len(), shape.n_head, "one sink per query head");
    }
    if let Some(s) = extras.sink_queries {
        assert_eq!(s.len(), q.len(), "sink queries in the queries' layout");
    }
    attention_lse(q, q_pos, kv, shape, extras, out, probs, None, threads)
}

/// [`attention_with_sinks`] that also writes, when `lse` is given, each row's log-sum-exp
/// of scores (`lse[t * n_head + h]`, `-inf` for a row that sees no cell): what
/// [`merge_attention`] needs to combine attention over two sets of cells.
#[allow(clippy::too_many_arguments)]
pub fn attention_lse(
    q: &[f32],
    q_pos: &[u32],
    kv: KvView<'_>,
    shape: &AttnShape,
    extras: AttnExtras<'_>,
    out: &mut [f32],
    probs: Option<&mut [f32]>,
    lse: Option<&mut [f32]>,
    threads: &Threads,
) {
    if let Some(l) = &lse {
        assert_eq!(l.len(), q_pos.len() * shape.n_head, "one log-sum-exp per row");
    }
    let probs = (probs, extras, lse.map(|l| SharedMut(l.as_mut_ptr())));
    match kv.data {
        KvData::F32 { k, v } => attention_impl(q, q_pos, (k, v), kv.pos, shape, out, probs, threads),
        KvData::F16 { k, v } => attention_impl(q, q_pos, (k, v), kv.pos, shape, out, probs, threads),
        KvData::Split { k, v } => attention_impl(q, q_pos, (k, v), kv.pos, shape, out, probs, threads),
    }
}

/// One work item: query tokens `t0..t1`, query heads `h0..h1` (all sharing KV head `g`).
#[derive(Clone, Copy)]
struct Item {
    t0: usize,
    t1: usize,
    h0: usize,
    h1: usize,
    g: usize,
}

#[allow(clippy::too_many_arguments)]
fn attention_impl<K: Side, V: Side>(
    q: &[f32],
    q_pos: &[u32],
    (k, v): (K, V),
    pos: &[u32],
    shape: &AttnShape,
    out: &mut [f32],
    (probs, extras, lse): (Option<&mut [f32]>, AttnExtras<'_>, Option<SharedMut<f32>>),
    threads: &Threads,
) {
    let AttnShape { n_head, n_kv, head_dim: hd, .. } = *shape;
    let n_tok = q_pos.len();
    let cells = pos.len();
    assert!(n_kv > 0 && n_head.is_multiple_of(n_kv), "{n_head} query heads over {n_kv} KV heads");
    assert_eq!(q.len(), n_tok * n_head * hd);
    assert_eq!(out.len(), q.len());
    assert!(k.holds(cells, n_kv, hd) && v.holds(cells, n_kv, hd), "K/V storage does not hold {cells} cells");
    let group = n_head / n_kv;
    let n_threads = threads.count();
    // Few tokens (decode): one token per item, and heads on their own if that is what
    // it takes to give every thread work.
    let tb = if n_tok >= 8 * n_threads { TOKEN_BLOCK } else { 1 };
    let n_tb = n_tok.div_ceil(tb);
    let heads_per_item = if n_tb * n_kv >= 2 * n_threads { group } else { 1 };
    let n_hb = group / heads_per_item;
    let items = n_tb * n_kv * n_hb;
    let out_ptr = SharedMut(out.as_mut_ptr());
    let probs_ptr = probs.map(|p| {
        assert_eq!(p.len(), n_tok * n_head * cells);
        SharedMut(p.as_mut_ptr())
    });
    let ctx = Ctx { q, q_pos, k, v, pos, shape, out: out_ptr, probs: probs_ptr, extras, lse };
    threads.for_ranges(items, 1, |range| {
        SCRATCH.with(|s| {
            let sc = &mut *s.borrow_mut();
            for i in range {
                let (tbi, rest) = (i / (n_kv * n_hb), i % (n_kv * n_hb));
                let (g, hb) = (rest / n_hb, rest % n_hb);
                let t0 = tbi * tb;
                let h0 = g * group + hb * heads_per_item;
                ctx.run(Item { t0, t1: (t0 + tb).min(n_tok), h0, h1: h0 + heads_per_item, g }, sc);
            }
        });
    });
}

/// Everything a work item reads, and where it writes.
struct Ctx<'a, K, V> {
    q: &'a [f32],
    q_pos: &'a [u32],
    k: K,
    v: V,
    pos: &'a [u32],
    shape: &'a AttnShape,
    out: SharedMut<f32>,
    probs: Option<SharedMut<f32>>,
    /// Sink logits and sink queries.
    extras: AttnExtras<'a>,
    /// Per-row log-sum-exp, `[n_tok][n_head]`, when asked for.
    lse: Option<SharedMut<f32>>,
}

// SAFETY: the raw pointers are only written at the disjoint rows each item owns.
unsafe impl<K: Sync, V: Sync> Sync for Ctx<'_, K, V> {}

impl<K: Side, V: Side> Ctx<'_, K, V> {
    fn run(&self, it: Item, sc: &mut Scratch) {
        let AttnShape { n_head, n_kv, head_dim: hd, scale, softcap, mask } = *self.shape;
        let (nt, nh) = (it.t1 - it.t0, it.h1 - it.h0);
        let rows = nt * nh;
        let cells = self.pos.len();
        let qp = &self.q_pos[it.t0..it.t1];
        // The span of cells some query of the block sees.
        let visible = |c: usize| qp.iter().any(|&t| mask.visible(t, self.pos[c]));
        let Some(lo) = (0..cells).find(|&c| visible(c)) else {
            self.write_empty(it, sc);
            return;
        };
        let hi = (lo..cells).rev().find(|&c| visible(c)).map_or(lo, |c| c) + 1;
        // Score rows cover whole groups of 8 cells aligned on absolute cell indices, so
        // that the vectorised softmax sums every row in the same grouping however the
        // work was split into items (padding holds -inf, whose weight adds an exact 0):
        // results do not depend on batch shapes or thread counts.
        let lo = lo & !7;
        let ld = ((hi + 7) & !7) - lo;
        let span = hi - lo;

        let Scratch { q: qbuf, scores, sink_q, sink_scores, out } = sc;
        let gather = |dst: &mut Vec<f32>, src: &[f32]| {
            dst.resize(rows * hd, 0.0);
            for ti in 0..nt {
                let at = ((it.t0 + ti) * n_head + it.h0) * hd;
                dst[ti * nh * hd..(ti + 1) * nh * hd].copy_from_slice(&src[at..at + nh * hd]);
            }
            self.k.round_query(dst);
        };
        gather(qbuf, self.q);
        scores.clear();
        scores.resize(rows * ld, f32::NEG_INFINITY);
        self.k.qk(qbuf, n_kv, hd, it.g, lo..hi, scale, scores, ld);
        // Scores against the attention sinks from the sink queries (rebased positions),
        // one cell at a time, so each score is computed the same way however the work
        // was split.
        if let (Some(sq), Mask::SinkWindow { sinks, .. }) = (self.extras.sink_queries, mask) {
            gather(sink_q, sq);
            sink_scores.resize(rows, 0.0);
            for c in (lo..hi).filter(|&c| self.pos[c] < sinks) {
                self.k.qk(sink_q, n_kv, hd, it.g, c..c + 1, scale, sink_scores, 1);
                for (r, &s) in sink_scores.iter().enumerate() {
                    scores[r * ld + c - lo] = s;
                }
            }
        }
        // Mask and soft-cap.
        for (ti, &t) in qp.iter().enumerate() {
            let block = &mut scores[ti * nh * ld..(ti + 1) * nh * ld];
            for (c, &p) in self.pos[lo..hi].iter().enumerate() {
                if !mask.visible(t, p) {
                    for hi in 0..nh {
                        block[hi * ld + c] = f32::NEG_INFINITY;
                    }
                }
            }
            if let Some(cap) = softcap {
                for x in block.iter_mut().filter(|x| x.is_finite()) {
                    *x = cap * (*x / cap).tanh();
                }
            }
        }
        // Softmax per row; a sliding window may leave a row of the block with no cell.
        for (r, s) in scores.chunks_exact_mut(ld).enumerate() {
            let m = simd::max(s);
            let row_lse = if m == f32::NEG_INFINITY {
                s.fill(0.0);
                f32::NEG_INFINITY
            } else {
                let sink = self.extras.sink_logits.map(|k| k[it.h0 + r % nh]);
                let m = sink.map_or(m, |k| m.max(k));
                let sum = simd::exp_sub_sum(s, m) + sink.map_or(0.0, |k| (k - m).exp());
                simd::scale(s, 1.0 / sum);
                m + sum.ln()
            };
            if let Some(l) = self.lse {
                let (t, h) = (it.t0 + r / nh, it.h0 + r % nh);
                // SAFETY: row (t, h) belongs to this item alone.
                unsafe { *l.ptr().add(t * n_head + h) = row_lse };
            }
        }
        if let Some(pp) = self.probs {
            for r in 0..rows {
                let (t, h) = (it.t0 + r / nh, it.h0 + r % nh);
                // SAFETY: row (t, h) of `probs` belongs to this item alone.
                let dst = unsafe { std::slice::from_raw_parts_mut(pp.ptr().add((t * n_head + h) * cells), cells) };
                dst[..lo].fill(0.0);
                dst[lo..hi].copy_from_slice(&scores[r * ld..r * ld + span]);
                dst[hi..].fill(0.0);
            }
        }
        // Weighted sum of values.
        self.v.round_weight(scores);
        out.clear();
        out.resize(rows * hd, 0.0);
        self.v.pv(scores, ld, n_kv, hd, it.g, lo..hi, out);
        self.v.finish(out);
        for ti in 0..nt {
            let dst = ((it.t0 + ti) * n_head + it.h0) * hd;
            // SAFETY: rows (t, h0..h1) of `out` are contiguous and belong to this item alone.
            let o = unsafe { std::slice::from_raw_parts_mut(self.out.ptr().add(dst), nh * hd) };
            o.copy_from_slice(&out[ti * nh * hd..(ti + 1) * nh * hd]);
        }
    }

    /// Output row of token `it.t0 + ti`, head `it.h0 + hi`.
    #[allow(clippy::mut_from_ref)]
    fn out_row(&self, it: Item, ti: usize, hi: usize, hd: usize) -> &mut [f32] {
        let (t, h) = (it.t0 + ti, it.h0 + hi);
        // SAFETY: row (t, h) of `out` belongs to this item alone, and no other reference
        // to it is alive while the returned one is used.
        unsafe { std::slice::from_raw_parts_mut(self.out.ptr().add((t * self.shape.n_head + h) * hd), hd) }
    }

    /// No query of the item sees any cell: zero output and weights.
    fn write_empty(&self, it: Item, _sc: &mut Scratch) {
        let (n_head, hd, cells) = (self.shape.n_head, self.shape.head_dim, self.pos.len());
        for t in it.t0..it.t1 {
            for h in it.h0..it.h1 {
                self.out_row(it, t - it.t0, h - it.h0, hd).fill(0.0);
                if let Some(pp) = self.probs {
                    // SAFETY: as in `run`.
                    unsafe { std::slice::from_raw_parts_mut(pp.ptr().add((t * n_head + h) * cells), cells) }.fill(0.0);
                }
                if let Some(l) = self.lse {
                    // SAFETY: as in `run`.
                    unsafe { *l.ptr().add(t * n_head + h) = f32::NEG_INFINITY };
                }
            }
        }
    }
}

/// Combines attention over two disjoint sets of cells: `out` (rows of `head_dim`, one
/// per `lse` entry) and `lse` hold the first's normalised output and log-sum-exp, `other`
/// and `other_lse` the second's; `out` and `lse` become the attention over both, as one
/// softmax over the union would give (up to rounding).
pub fn merge_attention(out: &mut [f32], lse: &mut [f32], other: &[f32], other_lse: &[f32], head_dim: usize) {
    assert_eq!(out.len(), lse.len() * head_dim);
    assert_eq!(other.len(), out.len());
    assert_eq!(other_lse.len(), lse.len());
    for (r, (a, &b)) in lse.iter_mut().zip(other_lse).enumerate() {
        if b == f32::NEG_INFINITY {
            continue;
        }
        let row = &mut out[r * head_dim..(r + 1) * head_dim];
        let o = &other[r * head_dim..(r + 1) * head_dim];
        if *a == f32::NEG_INFINITY {
            row.copy_from_slice(o);
            *a = b;
            continue;
        }
        let m = a.max(b);
        let (wa, wb) = ((*a - m).exp(), (b - m).exp());
        let inv = 1.0 / (wa + wb);
        for (x, &y) in row.iter_mut().zip(o) {
            *x = (*x * wa + y * wb) * inv;
        }
        *a = m + (wa + wb).ln();
    }
}

#[cfg(test)]
mod tests;
