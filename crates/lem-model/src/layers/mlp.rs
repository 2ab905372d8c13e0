//! Gated feed-forward block.

use lem_kernels::ops;

use super::{Kernels, Linear, fit};
use crate::error::ModelError;
use crate::gguf::GgufFile;

/// Activation of the gate branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (SwiGLU): Llama, Qwen, Mistral.
    Silu,
    /// GELU, tanh approximation (GeGLU): Gemma.
    GeluTanh,
}

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
    /// Loads `blk.{i}.ffn_{gate,up,down}`.
    pub fn load(
        g: &mut GgufFile,
        i: usize,
        n_embd: usize,
        n_ff: usize,
        act: Activation,
    ) -> Result<GatedMlp, ModelError> {
        Ok(GatedMlp {
            gate: Linear::load(g, &format!("blk.{i}.ffn_gate"), n_embd, n_ff)?,
            up: Linear::load(g, &format!("blk.{i}.ffn_up"), n_embd, n_ff)?,
            down: Linear::load(g, &format!("blk.{i}.ffn_down"), n_ff, n_embd)?,
            act,
        })
    }

    /// Applies the block to `n` rows of `x`, writing `out`.
    pub fn forward(&self, x: &[f32], n: usize, out: &mut [f32], buf: &mut MlpBuffers, k: &mut Kernels<'_>) {
        let ff = self.gate.out_dim();
        let gate = fit(&mut buf.gate, n * ff);
        let up = fit(&mut buf.up, n * ff);
        Linear::forward_many([(&self.gate, &mut *gate), (&self.up, &mut *up)], x, n, k);
        match self.act {
            Activation::Silu => ops::silu_mul(gate, up),
            Activation::GeluTanh => ops::gelu_mul(gate, up),
        }
        self.down.forward(gate, n, out, k);
    }
}
