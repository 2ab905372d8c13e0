//! RMS normalisation.

use lem_kernels::ops;

use crate::error::ModelError;
use crate::gguf::GgufFile;

/// RMSNorm with a learned scale.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Vec<f32>,
    eps: f32,
}

impl RmsNorm {
    /// Loads tensor `name` (`dim` floats).
    pub fn load(g: &mut GgufFile, name: &str, dim: usize, eps: f32) -> Result<RmsNorm, ModelError> {
        Ok(RmsNorm { weight: g.vector(name, dim)?, eps })
    }

    /// Loads `name` if the file has it.
    pub fn load_opt(g: &mut GgufFile, name: &str, dim: usize, eps: f32) -> Result<Option<RmsNorm>, ModelError> {
        if g.has_tensor(name) { RmsNorm::load(g, name, dim, eps).map(Some) } else { Ok(None) }
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
