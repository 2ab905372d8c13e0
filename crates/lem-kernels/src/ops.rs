//! f32 operations between the matrix products: norms, rotary embedding, activations,
//! softmax and attention over a cache of keys and values.
//!
//! All of them work in place or into caller-owned buffers: nothing here allocates on the
//! decode path.

use std::cell::RefCell;

use crate::threads::{SharedMut, Threads};

/// RMS normalisation of each `w.len()`-long row of `x`, in place, scaled by `w`.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    for row in x.chunks_exact_mut(d) {
        let ss: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let scale = (1.0 / (ss / d as f64 + f64::from(eps)).sqrt()) as f32;
        for (v, &g) in row.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    }
}

/// `out = rms_norm(x) * w` row by row, leaving `x` untouched.
pub fn rms_norm_into(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    out.copy_from_slice(x);
    rms_norm(out, w, eps);
}

/// Which pairs of a head's dimensions rotate together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(x[2i], x[2i+1])` (GGML "normal", used by llama GGUFs whose Q/K
    /// weights the converter permuted).
    Interleaved,
    /// Pairs split across halves `(x[i], x[i + n/2])` (GPT-NeoX style; Gemma, Qwen).
    Neox,
}

/// Rotary embedding parameters of one layer kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    /// Base frequency (theta).
    pub base: f32,
    /// Linear position scaling (1 / scaling factor; 1.0 for none).
    pub freq_scale: f32,
    /// Number of leading dimensions of each head that rotate (even, <= head_dim).
    pub n_rot: usize,
    /// Pairing of dimensions.
    pub style: RopeStyle,
}

impl Rope {
    /// Fills `table` with `(cos, sin)` pairs, `n_rot / 2` per position, for `positions`.
    /// Angles follow GGML: `theta_i = p * freq_scale * base^(-2i/n_rot)`, with the power
    /// computed by repeated multiplication in f32 as GGML does.
    pub fn fill_table(&self, positions: &[u32], table: &mut Vec<f32>) {
        let half = self.n_rot / 2;
        table.clear();
        table.reserve(positions.len() * half * 2);
        let theta_scale = self.base.powf(-2.0 / self.n_rot as f32);
        for &p in positions {
            let mut theta = p as f32;
            for _ in 0..half {
                let t = theta * self.freq_scale;
                table.push(t.cos());
                table.push(t.sin());
                theta *= theta_scale;
            }
        }
    }

    /// Rotates `x` (`n_tok` rows of `n_heads * head_dim`) in place with the table made by
    /// [`Rope::fill_table`] for the same positions.
    pub fn apply(&self, x: &mut [f32], n_heads: usize, head_dim: usize, table: &[f32]) {
        let half = self.n_rot / 2;
        let row_len = n_heads * head_dim;
        for (t, row) in x.chunks_exact_mut(row_len).enumerate() {
            let cs = &table[t * half * 2..(t + 1) * half * 2];
            for head in row.chunks_exact_mut(head_dim) {
                match self.style {
                    RopeStyle::Interleaved => {
                        for i in 0..half {
                            let (c, s) = (cs[2 * i], cs[2 * i + 1]);
                            let (a, b) = (head[2 * i], head[2 * i + 1]);
                            head[2 * i] = a * c - b * s;
                            head[2 * i + 1] = a * s + b * c;
                        }
                    }
                    RopeStyle::Neox => {
                        for i in 0..half {
                            let (c, s) = (cs[2 * i], cs[2 * i + 1]);
                            let (a, b) = (head[i], head[i + half]);
                            head[i] = a * c - b * s;
                            head[i + half] = a * s + b * c;
                        }
                    }
                }
            }
        }
    }
}

/// SiLU-gated product, in place: `gate = silu(gate) * up`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// GELU, tanh approximation, in f32.
#[inline]
pub fn gelu(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh())
}

/// GELU of every f16 value, rounded to f16 (GGML's 128 KiB lookup table).
fn gelu_table() -> &'static [half::f16] {
    static TABLE: std::sync::OnceLock<Vec<half::f16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX).map(|bits| half::f16::from_f32(gelu(half::f16::from_bits(bits).to_f32()))).collect()
    })
}

/// GELU-gated product, in place: `gate = gelu(gate) * up`, with GGML's arithmetic (the
/// reference implementation lem is checked against): inputs within (-10, 10) are rounded
/// to f16 and looked up in an f16 table; below -10 the result is 0, above 10 it is `x`.
pub fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    let table = gelu_table();
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        let y = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x
        } else {
            table[half::f16::from_f32(x).to_bits() as usize].to_f32()
        };
        *g = y * u;
    }
}

/// `x += y` element-wise.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Soft-caps values in place: `x = cap * tanh(x / cap)`.
pub fn softcap(x: &mut [f32], cap: f32) {
    for v in x {
        *v = cap * (*v / cap).tanh();
    }
}

/// Numerically stable softmax in place. Entries equal to `-inf` get probability 0.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        x.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// Dot product of two equally long f32 slices.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise without fast-math.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Element types a KV cache may store; attention reads them through this trait.
pub trait KvElem: Copy + Send + Sync + 'static {
    /// Widens to f32 (exact for both supported types).
    fn to_f32(self) -> f32;
    /// Rounds a query element the way GGML rounds the right-hand side of a dot product
    /// with this type (f16 keys meet f16-rounded queries).
    fn round_query(x: f32) -> f32;
    /// Rounds an attention weight the same way, for the product with values.
    fn round_weight(p: f32) -> f32;
}

impl KvElem for f32 {
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline]
    fn round_query(x: f32) -> f32 {
        x
    }
    #[inline]
    fn round_weight(p: f32) -> f32 {
        p
    }
}

impl KvElem for half::f16 {
    #[inline]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    #[inline]
    fn round_query(x: f32) -> f32 {
        half::f16::from_f32(x).to_f32()
    }
    #[inline]
    fn round_weight(p: f32) -> f32 {
        half::f16::from_f32(p).to_f32()
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
        k: &'a [half::f16],
        /// Values, same layout.
        v: &'a [half::f16],
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
}

impl Mask {
    /// Whether a query at `q` sees the key at `p`.
    #[inline]
    pub fn visible(self, q: u32, p: u32) -> bool {
        match self {
            Mask::Causal => p <= q,
            Mask::SlidingWindow { window } => p <= q && q - p < window,
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

thread_local! {
    static SCORES: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

#[inline]
fn dot_kv<E: KvElem>(q: &[f32], k: &[E]) -> f32 {
    let mut acc = [0f32; 8];
    let (cq, ck) = (q.chunks_exact(8), k.chunks_exact(8));
    let (rq, rk) = (cq.remainder(), ck.remainder());
    for (x, y) in cq.zip(ck) {
        for i in 0..8 {
            acc[i] += x[i] * y[i].to_f32();
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in rq.iter().zip(rk) {
        s += x * y.to_f32();
    }
    s
}

/// Scaled dot-product attention of `q` (`[n_tok][n_head][head_dim]`, query `t` at
/// absolute position `q_pos[t]`) over the cache cells in `kv`; writes `out` in the same
/// layout as `q`. When `probs` is given it receives the attention weights,
/// `[n_tok][n_head][cells]` in cell order (0 for masked cells).
///
/// Arithmetic follows GGML's non-flash path: with f16 storage, queries and attention
/// weights are rounded to f16 before their dot products (accumulated in f32).
pub fn attention(
    q: &[f32],
    q_pos: &[u32],
    kv: KvView<'_>,
    shape: &AttnShape,
    out: &mut [f32],
    probs: Option<&mut [f32]>,
    threads: &Threads,
) {
    match kv.data {
        KvData::F32 { k, v } => attention_impl(q, q_pos, k, v, kv.pos, shape, out, probs, threads),
        KvData::F16 { k, v } => attention_impl(q, q_pos, k, v, kv.pos, shape, out, probs, threads),
    }
}

#[allow(clippy::too_many_arguments)]
fn attention_impl<E: KvElem>(
    q: &[f32],
    q_pos: &[u32],
    k: &[E],
    v: &[E],
    pos: &[u32],
    shape: &AttnShape,
    out: &mut [f32],
    probs: Option<&mut [f32]>,
    threads: &Threads,
) {
    let AttnShape { n_head, n_kv, head_dim: hd, .. } = *shape;
    let n_tok = q_pos.len();
    let cells = pos.len();
    let stride = n_kv * hd;
    let group = n_head / n_kv;
    assert_eq!(q.len(), n_tok * n_head * hd);
    assert_eq!(out.len(), q.len());
    assert_eq!(k.len(), cells * stride);
    assert_eq!(v.len(), k.len());
    let out_ptr = SharedMut(out.as_mut_ptr());
    let probs_ptr = probs.map(|p| {
        assert_eq!(p.len(), n_tok * n_head * cells);
        SharedMut(p.as_mut_ptr())
    });
    let work = |item: usize, scores: &mut Vec<f32>, qr: &mut Vec<f32>| {
        let (t, h) = (item / n_head, item % n_head);
        let g = h / group;
        qr.clear();
        qr.extend(q[(t * n_head + h) * hd..(t * n_head + h + 1) * hd].iter().map(|&x| E::round_query(x)));
        let qp = q_pos[t];
        scores.clear();
        for c in 0..cells {
            if shape.mask.visible(qp, pos[c]) {
                let mut s = dot_kv(qr, &k[c * stride + g * hd..c * stride + (g + 1) * hd]) * shape.scale;
                if let Some(cap) = shape.softcap {
                    s = cap * (s / cap).tanh();
                }
                scores.push(s);
            } else {
                scores.push(f32::NEG_INFINITY);
            }
        }
        softmax(scores);
        // SAFETY: every (t, h) item owns its own disjoint head_dim slice of `out`.
        let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.ptr().add((t * n_head + h) * hd), hd) };
        o.iter_mut().for_each(|x| *x = 0.0);
        for (c, &p) in scores.iter().enumerate() {
            if p == 0.0 {
                continue;
            }
            let p = E::round_weight(p);
            let vr = &v[c * stride + g * hd..c * stride + (g + 1) * hd];
            for (ov, &vv) in o.iter_mut().zip(vr) {
                *ov += p * vv.to_f32();
            }
        }
        if let Some(pp) = probs_ptr {
            // SAFETY: disjoint `cells`-long slice per (t, h).
            let dst = unsafe { std::slice::from_raw_parts_mut(pp.ptr().add((t * n_head + h) * cells), cells) };
            dst.copy_from_slice(scores);
        }
    };
    threads.for_ranges(n_tok * n_head, 1, |items| {
        SCORES.with(|s| {
            let (scores, qr) = &mut *s.borrow_mut();
            for item in items {
                work(item, scores, qr);
            }
        });
    });
}
