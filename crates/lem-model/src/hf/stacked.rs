//! gpt-oss checkpoints store each layer's experts stacked and transposed:
//! `gate_up_proj` is `[n_expert, n_embd, 2 n_ff]` with gate and up columns interleaved
//! (gate at even columns), `down_proj` is `[n_expert, n_ff, n_embd]`, and their biases are
//! `[n_expert, 2 n_ff]` (interleaved the same way) and `[n_expert, n_embd]`. llama.cpp's
//! converter transposes them and splits gate from up; this reads one expert the same way.

use lem_kernels::QMatrix;

use super::HfDir;
use crate::error::ModelError;
use crate::names::{HfNaming, Role, TensorId};
use crate::weights::check_shape;

/// Which columns of a stacked tensor an expert role takes: every `step`-th from `offset`.
fn columns(role: Role) -> Option<(usize, usize)> {
    match role {
        Role::FfnGateExps => Some((2, 0)),
        Role::FfnUpExps => Some((2, 1)),
        Role::FfnDownExps => Some((1, 0)),
        _ => None,
    }
}

impl HfDir {
    /// Whether the role's experts are stacked (gpt-oss), with the columns it takes.
    pub(super) fn stacked(&self, id: TensorId) -> Option<(usize, usize)> {
        (self.conventions.naming == HfNaming::GptOss).then(|| columns(id.role)).flatten()
    }

    /// Expert `e`'s `[rows, cols]` matrix, transposed out of its stacked tensor (which
    /// is `[n_expert, cols, rows * step]`), in the stored type.
    pub(super) fn stacked_matrix(
        &self,
        id: TensorId,
        e: usize,
        n_expert: usize,
        rows: usize,
        cols: usize,
        (step, offset): (usize, usize),
    ) -> Result<QMatrix, ModelError> {
        let (name, entry, ty) = self.entry(id)?;
        let width = rows * step;
        check_shape(&name, Some(entry.shape.clone()), &[n_expert, cols, width])?;
        let per = cols * width * ty.type_size();
        let bytes = &self.tensors.bytes(entry)[e * per..(e + 1) * per];
        let quant = |source| ModelError::Quant { tensor: name.clone(), source };
        let src = QMatrix::from_bytes(ty, cols, width, bytes).map_err(quant)?.to_f32();
        let mut out = vec![0f32; rows * cols];
        for (r, row) in out.chunks_exact_mut(cols).enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = src[c * width + r * step + offset];
            }
        }
        // Back to the stored type (exact: the values came from it).
        QMatrix::quantize(ty, rows, cols, &out).map_err(quant)
    }

    /// Expert `e`'s `len` bias elements out of its stacked `[n_expert, len * step]` bias.
    pub(super) fn stacked_vector(
        &self,
        id: TensorId,
        e: usize,
        n_expert: usize,
        len: usize,
        (step, offset): (usize, usize),
    ) -> Result<Vec<f32>, ModelError> {
        let (name, entry, ty) = self.entry(id)?;
        let width = len * step;
        check_shape(&name, Some(entry.shape.clone()), &[n_expert, width])?;
        let per = width * ty.type_size();
        let bytes = &self.tensors.bytes(entry)[e * per..(e + 1) * per];
        let src = QMatrix::from_bytes(ty, 1, width, bytes)
            .map_err(|source| ModelError::Quant { tensor: name.clone(), source })?
            .to_f32();
        Ok((0..len).map(|r| src[r * step + offset]).collect())
    }
}
