//! The shared layer library. Architecture files only choose and wire these.

mod attention;
mod block;
mod dense_routed;
mod linear;
mod mlp;
mod moe;
mod norm;
mod per_layer;

pub use attention::{Attention, AttentionConfig};
pub(crate) use block::BlockBuffers;
pub use block::{DecoderBlock, Ffn};
pub use dense_routed::DenseAndRouted;
pub use linear::Linear;
pub use mlp::{Activation, GatedMlp};
pub use moe::{Gating, RoutedMlp, Routing};
pub use norm::RmsNorm;
pub(crate) use per_layer::PerLayerBuffers;
pub use per_layer::PerLayerEmbedding;

use candle_core::quantized::GgmlDType;
use lem_kernels::{Scratch, Threads};

use crate::error::ModelError;
use crate::names::TensorId;
use crate::weights::{WeightSource, convert};

/// Reads layers' tensors from a weights source, converting matrices to the requested
/// type.
pub struct Loader<'a> {
    /// The source.
    pub src: &'a mut dyn WeightSource,
    /// Type every matrix is converted to (`None`: as stored).
    pub dtype: Option<GgmlDType>,
}

impl Loader<'_> {
    /// Whether the source has the tensor.
    pub fn has(&self, id: TensorId) -> bool {
        self.src.has(id)
    }

    /// Rows `rows` of a `[total, cols]` matrix, converted to the requested type.
    pub fn matrix_rows(
        &mut self,
        id: TensorId,
        total: usize,
        cols: usize,
        rows: std::ops::Range<usize>,
    ) -> Result<lem_kernels::QMatrix, ModelError> {
        let m = self.src.matrix_rows(id, total, cols, rows)?;
        convert(m, self.dtype, &self.src.tensor_name(id))
    }

    /// One expert's `[rows, cols]` matrix of an expert role, converted to the requested
    /// type ([`WeightSource::expert_matrix`]).
    pub fn expert_matrix(
        &mut self,
        id: TensorId,
        n_expert: usize,
        rows: usize,
        cols: usize,
    ) -> Result<lem_kernels::QMatrix, ModelError> {
        let m = self.src.expert_matrix(id, n_expert, rows, cols)?;
        convert(m, self.dtype, &self.src.tensor_name(id))
    }

    /// Expert `id.expert`'s `len` elements of a per-expert vector role (a bias)
    /// ([`WeightSource::expert_vector`]).
    pub fn expert_vector(&mut self, id: TensorId, n_expert: usize, len: usize) -> Result<Vec<f32>, ModelError> {
        self.src.expert_vector(id, n_expert, len)
    }

    /// A 1-D tensor.
    pub fn vector(&mut self, id: TensorId, len: usize) -> Result<Vec<f32>, ModelError> {
        self.src.vector(id, len)
    }
}

/// Kernel context shared by every layer during one forward call.
pub struct Kernels<'a> {
    /// Worker pool.
    pub threads: &'a Threads,
    /// Activation quantization buffer.
    pub scratch: &'a mut Scratch,
}

/// Makes `buf` exactly `len` long, reusing its capacity (no allocation once warm).
pub(crate) fn fit(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() != len {
        buf.resize(len, 0.0);
    }
    &mut buf[..]
}
