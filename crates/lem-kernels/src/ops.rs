//! f32 operations between the matrix products: norms, rotary embedding, activations,
//! softmax, and (re-exported from `attention`) attention over a cache of keys and values.
//!
//! All of them work in place or into caller-owned buffers: nothing here allocates on the
//! decode path.

pub use crate::attention::{
    AttnExtras, AttnShape, KvData, KvElem, KvRows, KvView, Mask, attention, attention_with_sinks,
};

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

/// YaRN context extension (GGML's `rope_yarn`): angles of the dimensions between the two
/// correction dimensions blend interpolated and extrapolated frequencies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Yarn {
    /// Weight of the extrapolated angle (1 for YaRN, 0 turns the blend off).
    pub ext_factor: f32,
    /// Context length the model was trained at.
    pub orig_ctx: u32,
    /// Rotations at which the ramp starts (fast end; 32 by default).
    pub beta_fast: f32,
    /// Rotations at which the ramp ends (slow end; 1 by default).
    pub beta_slow: f32,
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
    /// Multiplier on every cos/sin (YaRN's and LongRoPE's attention factor; 1 for none).
    pub attn_factor: f32,
    /// YaRN blending, when the model declares it.
    pub yarn: Option<Yarn>,
}

impl Rope {
    /// Plain rotary embedding: no scaling, no YaRN.
    pub fn new(base: f32, n_rot: usize, style: RopeStyle) -> Rope {
        Rope { base, freq_scale: 1.0, n_rot, style, attn_factor: 1.0, yarn: None }
    }

    /// The ramp bounds `[low, high]` in pair indices (GGML's `ggml_rope_yarn_corr_dims`).
    fn corr_dims(&self, y: &Yarn) -> [f32; 2] {
        let n = self.n_rot as f32;
        let dim = |rot: f32| n * (y.orig_ctx as f32 / (rot * 2.0 * std::f32::consts::PI)).ln() / (2.0 * self.base.ln());
        [dim(y.beta_fast).floor().max(0.0), dim(y.beta_slow).ceil().min(n - 1.0)]
    }

    /// Fills `table` with `(cos, sin)` pairs, `n_rot / 2` per position, for `positions`.
    /// Angles follow GGML: `theta_i = p * freq_scale * base^(-2i/n_rot) / factor_i`, with the
    /// power computed by repeated multiplication in f32 as GGML does; `factors` are
    /// per-pair frequency divisors (Llama 3's `rope_freqs`, LongRoPE's factors), `n_rot / 2`
    /// of them. With YaRN the interpolated and extrapolated angles blend over a ramp and
    /// the magnitude grows by `1 + 0.1 ln(1 / freq_scale)`.
    pub fn fill_table(&self, positions: &[u32], factors: Option<&[f32]>, table: &mut Vec<f32>) {
        let half = self.n_rot / 2;
        table.clear();
        table.reserve(positions.len() * half * 2);
        let theta_scale = self.base.powf(-2.0 / self.n_rot as f32);
        let (corr, ext, mut mscale) = match &self.yarn {
            Some(y) if y.ext_factor != 0.0 => (self.corr_dims(y), y.ext_factor, self.attn_factor),
            _ => ([0.0, 0.0], 0.0, self.attn_factor),
        };
        if ext != 0.0 {
            mscale *= 1.0 + 0.1 * (1.0 / self.freq_scale).ln();
        }
        for &p in positions {
            let mut theta = p as f32;
            for i in 0..half {
                let extrap = factors.map_or(theta, |f| theta / f[i]);
                let interp = extrap * self.freq_scale;
                let t = if ext != 0.0 {
                    let y = (i as f32 - corr[0]) / (corr[1] - corr[0]).max(0.001);
                    let mix = (1.0 - y.clamp(0.0, 1.0)) * ext;
                    interp * (1.0 - mix) + extrap * mix
                } else {
                    interp
                };
                table.push(t.cos() * mscale);
                table.push(t.sin() * mscale);
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
    let max = crate::simd::max(x);
    if max == f32::NEG_INFINITY {
        x.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    let sum = crate::simd::exp_sub_sum(x, max);
    crate::simd::scale(x, 1.0 / sum);
}

/// Dot product of two equally long f32 slices (SIMD where the CPU has it).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    crate::simd::dot(a, b)
}
