//! The weights seam: one typed interface through which an architecture reads its
//! hyper-parameters and tensors, implemented by a GGUF file ([`crate::GgufFile`]) and a
//! Hugging Face model directory ([`crate::HfDir`]).

use std::ops::Range;
use std::path::Path;

use candle_core::quantized::GgmlDType;
use lem_kernels::QMatrix;
use lem_kv::{KvBound, KvDtype};

use crate::arch::Arch;
use crate::config::{Key, RopeScaling};
use crate::error::ModelError;
use crate::names::TensorId;

/// How to load a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Store every weight matrix in this type (converting or quantizing at load); `None`
    /// keeps each tensor's stored type (a Hugging Face F32/F16/BF16 matrix stays that type).
    pub dtype: Option<GgmlDType>,
    /// The context the model will run at, when known: LongRoPE models pick their long
    /// factors only when it exceeds the original training context, as llama.cpp does.
    pub context: Option<usize>,
    /// Storage type of the keys in the KV cache sequences of this model use (f16 by
    /// default, as llama.cpp; f32 for exact comparisons; a GGML block type such as q8_0
    /// for a smaller cache), and of the values unless `kv_dtype_v` is set.
    pub kv_dtype: KvDtype,
    /// Storage type of the values when it differs from the keys' (`None`: `kv_dtype`).
    pub kv_dtype_v: Option<KvDtype>,
    /// Bound every full-attention layer's cache to its first `sinks` positions and the
    /// most recent `window` (`--kv-sinks` / `--kv-window`); native sliding layers stay as
    /// they are. `None`: full layers keep every position.
    pub kv_bound: Option<KvBound>,
    /// Most tokens one forward processes (llama.cpp's `--ubatch-size`; `None`:
    /// [`crate::DEFAULT_MAX_BATCH`]): prompts are fed in chunks of it, and sliding-window
    /// rings hold their window plus this many cells, so a smaller one bounds them tighter.
    pub max_batch: Option<usize>,
}

/// A source of hyper-parameters and tensors.
pub trait WeightSource {
    /// The file or directory.
    fn path(&self) -> &Path;

    /// The architecture the source declares (already checked against the registry).
    fn arch(&self) -> Arch;

    /// The model's name, when the source records one.
    fn model_name(&self) -> Option<String>;

    /// A non-negative integer hyper-parameter; `None` when absent.
    fn uint(&self, key: Key) -> Result<Option<u64>, ModelError>;

    /// A float hyper-parameter; `None` when absent.
    fn float(&self, key: Key) -> Result<Option<f32>, ModelError>;

    /// A boolean hyper-parameter; `None` when absent.
    fn flag(&self, key: Key) -> Result<Option<bool>, ModelError>;

    /// A hyper-parameter stored as one non-negative integer (or flag, as 0/1) per layer;
    /// `None` when absent or stored as a scalar (Hugging Face sources have none).
    fn per_layer(&self, key: Key) -> Result<Option<Vec<u64>>, ModelError> {
        let _ = key;
        Ok(None)
    }

    /// The error for a bad value of `key`, naming the key as the source spells it.
    fn key_error(&self, key: Key, reason: String) -> ModelError;

    /// Rotary scaling, for `n_rot` rotating dimensions and the training context.
    fn rope_scaling(&self, n_rot: usize, context_length: usize) -> Result<RopeScaling, ModelError>;

    /// The tensor's name in this source (for messages).
    fn tensor_name(&self, id: TensorId) -> String;

    /// Whether the source stores the tensor.
    fn has(&self, id: TensorId) -> bool;

    /// The tensor's shape in row-major order (`[.., rows, cols]`), when stored.
    fn shape(&self, id: TensorId) -> Option<Vec<usize>>;

    /// Rows `rows` of the tensor, which must have shape `[total_rows, cols]`, as a matrix.
    fn matrix_rows(
        &mut self,
        id: TensorId,
        total_rows: usize,
        cols: usize,
        rows: Range<usize>,
    ) -> Result<QMatrix, ModelError>;

    /// Expert `id.expert` of an expert role as a `[rows, cols]` matrix, the role holding
    /// `n_expert` experts (GGUF: rows `e * rows..(e + 1) * rows` of the 3-D
    /// `[n_expert, rows, cols]` tensor; Hugging Face: the expert's own 2-D tensor).
    fn expert_matrix(&mut self, id: TensorId, n_expert: usize, rows: usize, cols: usize)
    -> Result<QMatrix, ModelError>;

    /// Expert `id.expert`'s `len` elements of a per-expert vector role (an expert's
    /// bias: GGUF row `e` of the 2-D `[n_expert, len]` tensor; Hugging Face the
    /// expert's own tensor or its row of a stacked one), as f32.
    fn expert_vector(&mut self, id: TensorId, n_expert: usize, len: usize) -> Result<Vec<f32>, ModelError>;

    /// A 1-D tensor of `len` elements as f32.
    fn vector(&mut self, id: TensorId, len: usize) -> Result<Vec<f32>, ModelError>;

    /// The whole `[rows, cols]` matrix.
    fn matrix(&mut self, id: TensorId, rows: usize, cols: usize) -> Result<QMatrix, ModelError> {
        self.matrix_rows(id, rows, cols, 0..rows)
    }
}

/// Checks a stored shape against the expected `[rows, cols]`.
pub(crate) fn check_shape(name: &str, got: Option<Vec<usize>>, expected: &[usize]) -> Result<(), ModelError> {
    match got {
        None => Err(ModelError::MissingTensor(name.to_owned())),
        Some(dims) if dims != expected => {
            Err(ModelError::TensorShape { tensor: name.to_owned(), got: dims, expected: expected.to_vec() })
        }
        Some(_) => Ok(()),
    }
}

/// Converts a loaded matrix to `dtype` when asked (a no-op when it already has it).
pub(crate) fn convert(m: QMatrix, dtype: Option<GgmlDType>, name: &str) -> Result<QMatrix, ModelError> {
    match dtype {
        Some(t) if t != m.dtype() => {
            let (rows, cols) = (m.rows(), m.cols());
            QMatrix::quantize(t, rows, cols, &m.to_f32())
                .map_err(|source| ModelError::Quant { tensor: name.to_owned(), source })
        }
        _ => Ok(m),
    }
}
