//! A naive reference forward pass in plain f64 loops, written from the architecture
//! definitions (llama.cpp's `llm_build_llama` / `llm_build_gemma3_iswa`), not from lem's
//! code. It recomputes the whole sequence from scratch for every call: no cache, no
//! batching, no ring buffer, no threads.
//!
//! - llama: `x = E[tok]`; per block `x += Wo attn(rope_norm(Wq h), rope_norm(Wk h), Wv h)`
//!   with `h = rmsnorm(x) * attn_norm`, then `x += Wdown(silu(Wgate h) * Wup h)` with
//!   `h = rmsnorm(x) * ffn_norm`; logits `= W_out (rmsnorm(x) * output_norm)`.
//!   Rotary: GGML "normal" mode, adjacent pairs `(2i, 2i+1)`, angle `p * base^(-2i/n_rot)`.
//! - gemma3: `x = E[tok] * sqrt(d)`; q and k get a per-head RMSNorm (`attn_q_norm`,
//!   `attn_k_norm`) before a NEOX rotary (pairs `(i, i + n/2)`) whose base is 10,000 on
//!   local layers and the file's `rope.freq_base` on global ones (layer `i` is global
//!   when `i % 6 == 5`); local layers see only keys with `q - p < window`; attention
//!   output and FFN output each pass a post-norm before the residual add; the FFN
//!   activation is GELU with the tanh approximation. Attention scale is
//!   `1 / sqrt(key_length)`.

use half::f16;

use super::{Arch, TinyModel};

/// Where the reference rounds to f16, as llama.cpp's CPU backend does.
#[derive(Debug, Clone, Copy, Default)]
pub struct Precision {
    /// f16 KV cache (llama.cpp's default): K and V are stored as f16; GGML's f16 dot
    /// products also round the query and the attention weights to f16.
    pub kv_f16: bool,
    /// GELU through GGML's f16 lookup table (input and output rounded to f16; 0 below
    /// -10, identity above 10).
    pub gelu_f16: bool,
}

impl Precision {
    /// Plain f64 arithmetic everywhere.
    pub const EXACT: Precision = Precision { kv_f16: false, gelu_f16: false };
    /// llama.cpp's CPU arithmetic for the steps above.
    pub const GGML: Precision = Precision { kv_f16: true, gelu_f16: true };
}

fn round16(x: f64) -> f64 {
    f64::from(f16::from_f64(x).to_f32())
}

struct Layer {
    attn_norm: Vec<f64>,
    wq: Vec<f64>,
    wk: Vec<f64>,
    wv: Vec<f64>,
    wo: Vec<f64>,
    q_norm: Option<Vec<f64>>,
    k_norm: Option<Vec<f64>>,
    post_attn_norm: Option<Vec<f64>>,
    ffn_norm: Vec<f64>,
    gate: Vec<f64>,
    up: Vec<f64>,
    down: Vec<f64>,
    post_ffw_norm: Option<Vec<f64>>,
    /// Sliding window, for local layers.
    window: Option<usize>,
    rope_base: f64,
}

/// The reference model.
pub struct RefModel {
    arch: Arch,
    d: usize,
    n_head: usize,
    n_kv: usize,
    hd: usize,
    vocab: usize,
    eps: f64,
    embd: Vec<f64>,
    out: Vec<f64>,
    out_norm: Vec<f64>,
    layers: Vec<Layer>,
}

fn f64s(v: Vec<f32>) -> Vec<f64> {
    v.into_iter().map(f64::from).collect()
}

/// `y = W x` for `W` of `[rows, x.len()]`.
fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
    let cols = x.len();
    assert_eq!(w.len() % cols, 0);
    w.chunks_exact(cols).map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    assert_eq!(x.len(), w.len());
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * r * g).collect()
}

/// Rotates one head in place at position `pos`.
fn rope(head: &mut [f64], pos: usize, base: f64, neox: bool) {
    let n = head.len();
    for i in 0..n / 2 {
        let theta = pos as f64 * base.powf(-2.0 * i as f64 / n as f64);
        let (c, s) = (theta.cos(), theta.sin());
        let (ia, ib) = if neox { (i, i + n / 2) } else { (2 * i, 2 * i + 1) };
        let (a, b) = (head[ia], head[ib]);
        head[ia] = a * c - b * s;
        head[ib] = a * s + b * c;
    }
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn gelu_tanh(x: f64) -> f64 {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
}

impl RefModel {
    /// Reads every weight of `m`, dequantized.
    pub fn new(m: &TinyModel) -> RefModel {
        let s = &m.spec;
        let w = |n: &str| f64s(m.f32(n));
        let opt = |n: &str| m.tensors.iter().any(|(t, _)| t == n).then(|| w(n));
        let layers = (0..s.n_layer)
            .map(|i| {
                let p = |n: &str| format!("blk.{i}.{n}.weight");
                let gemma = s.arch == Arch::Gemma3;
                let global = i % 6 == 5;
                Layer {
                    attn_norm: w(&p("attn_norm")),
                    wq: w(&p("attn_q")),
                    wk: w(&p("attn_k")),
                    wv: w(&p("attn_v")),
                    wo: w(&p("attn_output")),
                    q_norm: opt(&p("attn_q_norm")),
                    k_norm: opt(&p("attn_k_norm")),
                    post_attn_norm: opt(&p("post_attention_norm")),
                    ffn_norm: w(&p("ffn_norm")),
                    gate: w(&p("ffn_gate")),
                    up: w(&p("ffn_up")),
                    down: w(&p("ffn_down")),
                    post_ffw_norm: opt(&p("post_ffw_norm")),
                    window: (gemma && !global).then_some(s.window as usize),
                    rope_base: if gemma && !global { 10_000.0 } else { f64::from(s.rope_base) },
                }
            })
            .collect();
        let embd = w("token_embd.weight");
        RefModel {
            arch: s.arch,
            d: s.d,
            n_head: s.n_head,
            n_kv: s.n_kv,
            hd: s.head_dim,
            vocab: s.vocab,
            eps: f64::from(s.eps),
            out: opt("output.weight").unwrap_or_else(|| embd.clone()),
            embd,
            out_norm: w("output_norm.weight"),
            layers,
        }
    }

    /// Logits of every position of `tokens` (one row of `vocab` per token), in f64.
    pub fn logits(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
        self.logits_with(tokens, Precision::EXACT)
    }

    /// Logits with f16 rounding at the steps `prec` names.
    pub fn logits_with(&self, tokens: &[u32], prec: Precision) -> Vec<Vec<f32>> {
        let r16 = |x: f64, on: bool| if on { round16(x) } else { x };
        let (d, hd, nh, nkv) = (self.d, self.hd, self.n_head, self.n_kv);
        let gemma = self.arch == Arch::Gemma3;
        let t_len = tokens.len();
        let mut xs: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| {
                let row = &self.embd[t as usize * d..(t as usize + 1) * d];
                // llama.cpp scales by sqrtf(n_embd), an f32.
                let scale = if gemma { f64::from((d as f32).sqrt()) } else { 1.0 };
                row.iter().map(|v| v * scale).collect()
            })
            .collect();
        for l in &self.layers {
            // Projections, norms, rotary.
            let mut qs = Vec::with_capacity(t_len);
            let mut ks = Vec::with_capacity(t_len);
            let mut vs = Vec::with_capacity(t_len);
            for (pos, x) in xs.iter().enumerate() {
                let h = rms_norm(x, &l.attn_norm, self.eps);
                let mut q = matvec(&l.wq, &h);
                let mut k = matvec(&l.wk, &h);
                let v = matvec(&l.wv, &h);
                for (heads, norm) in [(&mut q, &l.q_norm), (&mut k, &l.k_norm)] {
                    if let Some(w) = norm {
                        for head in heads.chunks_exact_mut(hd) {
                            let n = rms_norm(head, w, self.eps);
                            head.copy_from_slice(&n);
                        }
                    }
                }
                for head in q.chunks_exact_mut(hd).chain(k.chunks_exact_mut(hd)) {
                    rope(head, pos, l.rope_base, gemma);
                }
                let q = q.into_iter().map(|x| r16(x, prec.kv_f16)).collect::<Vec<_>>();
                let k = k.into_iter().map(|x| r16(x, prec.kv_f16)).collect::<Vec<_>>();
                let v = v.into_iter().map(|x| r16(x, prec.kv_f16)).collect::<Vec<_>>();
                qs.push(q);
                ks.push(k);
                vs.push(v);
            }
            // Attention, residual, FFN, residual.
            let scale = 1.0 / (hd as f64).sqrt();
            for (t, x) in xs.iter_mut().enumerate() {
                let mut attn = vec![0f64; nh * hd];
                for h in 0..nh {
                    let g = h / (nh / nkv);
                    let q = &qs[t][h * hd..(h + 1) * hd];
                    let visible: Vec<usize> = (0..=t).filter(|&s| l.window.is_none_or(|w| t - s < w)).collect();
                    let scores: Vec<f64> = visible
                        .iter()
                        .map(|&s| q.iter().zip(&ks[s][g * hd..(g + 1) * hd]).map(|(a, b)| a * b).sum::<f64>() * scale)
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for (&s, p) in visible.iter().zip(&e) {
                        let p = r16(p / z, prec.kv_f16);
                        for j in 0..hd {
                            attn[h * hd + j] += p * vs[s][g * hd + j];
                        }
                    }
                }
                let mut y = matvec(&l.wo, &attn);
                if let Some(w) = &l.post_attn_norm {
                    y = rms_norm(&y, w, self.eps);
                }
                x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
                let h = rms_norm(x, &l.ffn_norm, self.eps);
                let gate = matvec(&l.gate, &h);
                let up = matvec(&l.up, &h);
                let act: Vec<f64> = gate
                    .iter()
                    .zip(&up)
                    .map(|(&g, &u)| {
                        if !gemma {
                            silu(g) * u
                        } else if !prec.gelu_f16 {
                            gelu_tanh(g) * u
                        } else if g <= -10.0 {
                            0.0
                        } else if g >= 10.0 {
                            g * u
                        } else {
                            round16(gelu_tanh(round16(g))) * u
                        }
                    })
                    .collect();
                let mut y = matvec(&l.down, &act);
                if let Some(w) = &l.post_ffw_norm {
                    y = rms_norm(&y, w, self.eps);
                }
                x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
            }
        }
        xs.iter()
            .map(|x| {
                let h = rms_norm(x, &self.out_norm, self.eps);
                let l = matvec(&self.out, &h);
                assert_eq!(l.len(), self.vocab);
                l.into_iter().map(|v| v as f32).collect()
            })
            .collect()
    }
}
