//! Gated feed-forward block.

use lem_kernels::ops;

use super::{Kernels, Linear, Loader, fit};
use crate::error::ModelError;
use crate::names::{Role, TensorId};

/// Activation of the gate branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (SwiGLU): Llama, Qwen, Mistral.
    Silu,
    /// GELU, tanh approximation (GeGLU): Gemma.
    GeluTanh,
    /// gpt-oss's clamped SwiGLU: `g = min(gate, 7)`, `u = clamp(up, -7, 7)`,
    /// `g * sigmoid(1.702 g) * (u + 1)`.
    SwigluOai,
}

/// gpt-oss's SwiGLU constants.
const OAI_ALPHA: f32 = 1.702;
const OAI_LIMIT: f32 = 7.0;

/// `g = g' * sigmoid(alpha g') * (clamp(u) + 1)` with `g' = min(g, limit)`, element-wise.
fn swiglu_oai(g: &mut [f32], u: &[f32]) {
    for (a, &b) in g.iter_mut().zip(u) {
        let x = a.min(OAI_LIMIT);
        let y = b.clamp(-OAI_LIMIT, OAI_LIMIT);
        *a = x / (1.0 + (-OAI_ALPHA * x).exp()) * (y + 1.0);
    }
}

/// Elements of the gated activation per parallel chunk.
const ACT_CHUNK: usize = 16 * 1024;

/// `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct GatedMlp {
    gate: Linear,
    up: Linear,
    down: Linear,
    act: Activation,
}

/// Buffers the MLP reuses across calls.
#[derive(Debug, Default)]
pub struct MlpBuffers {
    gate: Vec<f32>,
    up: Vec<f32>,
}

impl GatedMlp {
    /// Loads layer `i`'s gate, up and down projections; `fused` reads gate and up from
    /// one `[2 * n_ff, n_embd]` tensor (gate rows first).
    pub fn load(
        l: &mut Loader<'_>,
        i: usize,
        n_embd: usize,
        n_ff: usize,
        act: Activation,
        fused: bool,
    ) -> Result<GatedMlp, ModelError> {
        let (gate, up) = if fused {
            let mut p = Linear::load_split(l, TensorId::layer(Role::FfnGateUp, i), n_embd, &[n_ff, n_ff])?;
            let up = p.pop().expect("two parts");
            (p.pop().expect("two parts"), up)
        } else {
            (
                Linear::load(l, TensorId::layer(Role::FfnGate, i), n_embd, n_ff)?,
                Linear::load(l, TensorId::layer(Role::FfnUp, i), n_embd, n_ff)?,
            )
        };
        let down = Linear::load(l, TensorId::layer(Role::FfnDown, i), n_ff, n_embd)?;
        Ok(GatedMlp { gate, up, down, act })
    }

    /// An MLP of given projections (one expert of a routed block).
    pub fn from_parts(gate: Linear, up: Linear, down: Linear, act: Activation) -> GatedMlp {
        GatedMlp { gate, up, down, act }
    }

    /// Weights and bias elements of the three projections.
    pub fn param_count(&self) -> u64 {
        self.gate.param_count() + self.up.param_count() + self.down.param_count()
    }

    /// Applies the block to `n` rows of `x`, writing `out`.
    pub fn forward(&self, x: &[f32], n: usize, out: &mut [f32], buf: &mut MlpBuffers, k: &mut Kernels<'_>) {
        let ff = self.gate.out_dim();
        let gate = fit(&mut buf.gate, n * ff);
        let up = fit(&mut buf.up, n * ff);
        Linear::forward_many([(&self.gate, &mut *gate), (&self.up, &mut *up)], x, n, k);
        // Element-wise, so split over the threads for prompts (a decode step's one row
        // stays on the caller: below the minimum chunk).
        let up: &[f32] = up;
        let act = self.act;
        k.threads.for_chunks_mut(gate, ACT_CHUNK, |start, g| {
            let u = &up[start..start + g.len()];
            match act {
                Activation::Silu => ops::silu_mul(g, u),
                Activation::GeluTanh => ops::gelu_mul(g, u),
                Activation::SwigluOai => swiglu_oai(g, u),
            }
        });
        self.down.forward(gate, n, out, k);
    }
}
