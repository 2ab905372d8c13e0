//! RMS normalisation.

use lem_kernels::ops;

use super::Loader;
use crate::error::ModelError;
use crate::names::TensorId;

/// RMSNorm with a learned scale.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Vec<f32>,
    eps: f32,
}

impl RmsNorm {
    /// Loads norm `id` (`dim` floats).
    pub fn load(l: &mut Loader<'_>, id: TensorId, dim: usize, eps: f32) -> Result<RmsNorm, ModelError> {
        Ok(RmsNorm { weight: l.vector(id, dim)?, eps })
    }

    /// A norm of the given weights.
    pub fn new(weight: Vec<f32>, eps: f32) -> RmsNorm {
        RmsNorm { weight, eps }
    }

    /// A norm without a learned scale (every weight 1, which multiplies exactly).
    pub fn unit(dim: usize, eps: f32) -> RmsNorm {
        RmsNorm { weight: vec![1.0; dim], eps }
    }

    /// Loads norm `id` if the source has it.
    pub fn load_opt(l: &mut Loader<'_>, id: TensorId, dim: usize, eps: f32) -> Result<Option<RmsNorm>, ModelError> {
        if l.has(id) { RmsNorm::load(l, id, dim, eps).map(Some) } else { Ok(None) }
    }

    /// Weight elements.
    pub fn param_count(&self) -> u64 {
        self.weight.len() as u64
    }

    /// Normalises each `dim`-long row of `x` in place.
    pub fn forward(&self, x: &mut [f32]) {
        ops::rms_norm(x, &self.weight, self.eps);
    }

    /// `out = norm(x)`, row by row.
    pub fn forward_into(&self, x: &[f32], out: &mut [f32]) {
        ops::rms_norm_into(x, &self.weight, self.eps, out);
    }
}
