//! A (quantized) linear projection.

use std::sync::Arc;

use lem_kernels::QMatrix;

use super::{Kernels, Loader};
use crate::error::ModelError;
use crate::names::TensorId;

/// `y = x W^T (+ b)`, weights in any supported GGML type.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Arc<QMatrix>,
    bias: Option<Vec<f32>>,
}

impl Linear {
    /// Loads the `[out_dim, in_dim]` weight `id` and its bias when the source has one.
    pub fn load(l: &mut Loader<'_>, id: TensorId, in_dim: usize, out_dim: usize) -> Result<Linear, ModelError> {
        let mut parts = Linear::load_split(l, id, in_dim, &[out_dim])?;
        Ok(parts.remove(0))
    }

    /// Loads a fused weight `id` of `sum(parts)` rows (Phi-3's QKV, gate/up) as one
    /// projection per part, splitting its bias the same way.
    pub fn load_split(
        l: &mut Loader<'_>,
        id: TensorId,
        in_dim: usize,
        parts: &[usize],
    ) -> Result<Vec<Linear>, ModelError> {
        let total: usize = parts.iter().sum();
        let bias = if l.has(id.bias()) { Some(l.vector(id.bias(), total)?) } else { None };
        let mut start = 0;
        let mut out = Vec::with_capacity(parts.len());
        for &n in parts {
            let weight = Arc::new(l.matrix_rows(id, total, in_dim, start..start + n)?);
            out.push(Linear { weight, bias: bias.as_ref().map(|b| b[start..start + n].to_vec()) });
            start += n;
        }
        Ok(out)
    }

    /// A projection of a loaded matrix, without bias (one expert of a 3-D tensor).
    pub fn owned(weight: QMatrix) -> Linear {
        Linear { weight: Arc::new(weight), bias: None }
    }

    /// A projection of a loaded matrix and an optional bias (one expert of a 3-D tensor
    /// with its row of a 2-D bias).
    pub fn with_bias(weight: QMatrix, bias: Option<Vec<f32>>) -> Linear {
        Linear { weight: Arc::new(weight), bias }
    }

    /// Weights and bias elements.
    pub fn param_count(&self) -> u64 {
        (self.weight.rows() * self.weight.cols() + self.bias.as_ref().map_or(0, Vec::len)) as u64
    }

    /// A projection sharing an existing matrix (tied embeddings).
    pub fn shared(weight: Arc<QMatrix>) -> Linear {
        Linear { weight, bias: None }
    }

    /// The weight matrix.
    pub fn weight(&self) -> &QMatrix {
        &self.weight
    }

    /// The shared weight matrix (to tell a tied projection from its own).
    pub fn weight_arc(&self) -> &Arc<QMatrix> {
        &self.weight
    }

    /// Output features.
    pub fn out_dim(&self) -> usize {
        self.weight.rows()
    }

    /// Projects `n` rows of `x` into `out` (`n * out_dim`).
    pub fn forward(&self, x: &[f32], n: usize, out: &mut [f32], k: &mut Kernels<'_>) {
        self.weight.matmul(x, n, out, k.scratch, k.threads);
        self.add_bias(out);
    }

    /// Several projections of the same `n` rows of `x` (Q, K, V; gate and up) in one
    /// pass of the kernels ([`QMatrix::matmul_many`]); results equal [`Linear::forward`]'s.
    pub fn forward_many<const N: usize>(parts: [(&Linear, &mut [f32]); N], x: &[f32], n: usize, k: &mut Kernels<'_>) {
        let layers: [&Linear; N] = std::array::from_fn(|i| parts[i].0);
        let mut mats = parts.map(|(l, out)| (&*l.weight, out));
        QMatrix::matmul_many(&mut mats, x, n, k.scratch, k.threads);
        for (l, (_, out)) in layers.iter().zip(mats.iter_mut()) {
            l.add_bias(out);
        }
    }

    fn add_bias(&self, out: &mut [f32]) {
        if let Some(b) = &self.bias {
            for row in out.chunks_exact_mut(b.len()) {
                lem_kernels::ops::add_assign(row, b);
            }
        }
    }
}
