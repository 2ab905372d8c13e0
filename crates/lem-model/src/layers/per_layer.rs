//! Per-layer token embeddings (Gemma 4's E2B/E4B): besides the usual embedding, every
//! token has a small embedding of `dim` values for each layer, from its own table
//! (`per_layer_token_embd`, scaled by `sqrt(dim)`). Each layer's input is that row plus a
//! projection of the scaled token embedding (`per_layer_model_proj`, scaled by
//! `1/sqrt(n_embd)`, then RMS-normalised with `per_layer_proj_norm`), times `1/sqrt(2)`.
//! After a layer's attention and feed-forward residuals, the layer gates its input with
//! the residual stream (`gelu(inp_gate x) * input`), projects it back to `n_embd`
//! (`proj`), normalises it (`post_norm`) and adds it to the stream, as llama.cpp's
//! `gemma4` graph does.

use lem_kernels::{QMatrix, ops};

use super::{Kernels, Linear, Loader, RmsNorm, fit};
use crate::error::ModelError;
use crate::names::{Role, TensorId};

/// One layer's gate, projection and norm of its per-layer input.
#[derive(Debug, Clone)]
struct LayerPart {
    gate: Linear,
    proj: Linear,
    post_norm: RmsNorm,
}

/// The per-layer embedding table, the model projection and every layer's part.
#[derive(Debug, Clone)]
pub struct PerLayerEmbedding {
    table: QMatrix,
    model_proj: Linear,
    proj_norm: RmsNorm,
    layers: Vec<LayerPart>,
    dim: usize,
}

/// Buffers the per-layer inputs reuse across calls.
#[derive(Debug, Default)]
pub struct PerLayerBuffers {
    /// Every row's inputs, `[n][n_layer][dim]`.
    inputs: Vec<f32>,
    /// One table row.
    row: Vec<f32>,
    /// One layer's gate, `[n][dim]`.
    gate: Vec<f32>,
    /// One layer's inputs, `[n][dim]`.
    input: Vec<f32>,
    /// One layer's projection back, `[n][n_embd]`.
    out: Vec<f32>,
}

impl PerLayerEmbedding {
    /// Loads the table (`[vocab, n_layer * dim]`), the model projection and norm, and
    /// each of `n_layer` layers' gate, projection and post-norm.
    pub fn load(
        l: &mut Loader<'_>,
        vocab: usize,
        n_embd: usize,
        n_layer: usize,
        dim: usize,
        eps: f32,
    ) -> Result<PerLayerEmbedding, ModelError> {
        let all = n_layer * dim;
        let table = l.matrix_rows(TensorId::global(Role::PerLayerTokenEmbd), vocab, all, 0..vocab)?;
        let model_proj = Linear::load(l, TensorId::global(Role::PerLayerModelProj), n_embd, all)?;
        let proj_norm = RmsNorm::load(l, TensorId::global(Role::PerLayerProjNorm), dim, eps)?;
        let layers = (0..n_layer)
            .map(|i| {
                Ok(LayerPart {
                    gate: Linear::load(l, TensorId::layer(Role::PerLayerInpGate, i), n_embd, dim)?,
                    proj: Linear::load(l, TensorId::layer(Role::PerLayerProj, i), dim, n_embd)?,
                    post_norm: RmsNorm::load(l, TensorId::layer(Role::PerLayerPostNorm, i), n_embd, eps)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(PerLayerEmbedding { table, model_proj, proj_norm, layers, dim })
    }

    /// Weight and norm elements.
    pub fn param_count(&self) -> u64 {
        let parts: u64 =
            self.layers.iter().map(|p| p.gate.param_count() + p.proj.param_count() + p.post_norm.param_count()).sum();
        (self.table.rows() * self.table.cols()) as u64
            + self.model_proj.param_count()
            + self.proj_norm.param_count()
            + parts
    }

    /// Computes every layer's input for the `n` rows of `x` (the scaled token
    /// embeddings) of tokens `tokens`, kept in `buf` for [`PerLayerEmbedding::apply`].
    pub(crate) fn inputs(&self, tokens: &[u32], x: &[f32], buf: &mut PerLayerBuffers, k: &mut Kernels<'_>) {
        let n = tokens.len();
        let d = x.len() / n.max(1);
        let all = self.layers.len() * self.dim;
        let inputs = fit(&mut buf.inputs, n * all);
        self.model_proj.forward(x, n, inputs, k);
        let proj_scale = 1.0 / (d as f32).sqrt();
        inputs.iter_mut().for_each(|v| *v *= proj_scale);
        self.proj_norm.forward(inputs);
        let (tok_scale, input_scale) = ((self.dim as f32).sqrt(), std::f32::consts::FRAC_1_SQRT_2);
        let row = fit(&mut buf.row, all);
        for (&t, out) in tokens.iter().zip(inputs.chunks_exact_mut(all)) {
            self.table.dequantize_row(t as usize, row);
            for (o, &r) in out.iter_mut().zip(row.iter()) {
                *o = (*o + r * tok_scale) * input_scale;
            }
        }
    }

    /// Adds layer `layer`'s gated, projected and normalised input to the `n` rows of the
    /// residual stream `x`.
    pub(crate) fn apply(&self, layer: usize, x: &mut [f32], n: usize, buf: &mut PerLayerBuffers, k: &mut Kernels<'_>) {
        let Some(part) = self.layers.get(layer) else { return };
        let (dim, all) = (self.dim, self.layers.len() * self.dim);
        let gate = fit(&mut buf.gate, n * dim);
        part.gate.forward(x, n, gate, k);
        let input = fit(&mut buf.input, n * dim);
        for (dst, src) in input.chunks_exact_mut(dim).zip(buf.inputs.chunks_exact(all)) {
            dst.copy_from_slice(&src[layer * dim..(layer + 1) * dim]);
        }
        ops::gelu_mul(gate, input);
        let out = fit(&mut buf.out, x.len());
        part.proj.forward(gate, n, out, k);
        part.post_norm.forward(out);
        ops::add_assign(x, out);
    }
}
