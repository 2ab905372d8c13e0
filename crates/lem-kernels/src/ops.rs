//! f32 operations between the matrix products: norms, rotary embedding, activations,
//! softmax, and (re-exported from `attention`) attention over a cache of keys and values.
//!
//! All of them work in place or into caller-owned buffers: nothing here allocates on the
//! decode path.

pub use crate::attention::{AttnShape, KvData, KvElem, KvView, Mask, attention};

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
