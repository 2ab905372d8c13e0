//! Errors of model loading and the forward pass.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a GGUF file (wrong magic bytes).
    #[error("{path} is not a GGUF file (magic bytes {magic:02x?})")]
    NotGguf {
        /// The file.
        path: PathBuf,
        /// The first four bytes.
        magic: Vec<u8>,
    },
    /// The GGUF header or metadata could not be parsed.
    #[error("{path}: malformed GGUF: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
    /// The file is shorter than its own tensor table says.
    #[error("{path} is truncated: tensor '{tensor}' needs bytes up to offset {needed}, file has {size}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// First tensor that does not fit.
        tensor: String,
        /// End offset it needs.
        needed: u64,
        /// File size.
        size: u64,
    },
    /// A tensor uses a GGML type lem cannot compute with.
    #[error("tensor '{tensor}' has type {type_name}, which lem does not support")]
    UnsupportedTensorType {
        /// Tensor name (or "?" when the parser could not say).
        tensor: String,
        /// Type name (or numeric id).
        type_name: String,
    },
    /// `general.architecture` names an architecture lem does not implement.
    #[error("unknown architecture '{0}' (lem supports: {supported})", supported = crate::arch::SUPPORTED.join(", "))]
    UnknownArchitecture(String),
    /// A Hugging Face `config.json` names a `model_type` lem does not implement.
    #[error("unknown model_type '{0}' in config.json (lem supports: {supported})", supported = crate::arch::SUPPORTED_HF.join(", "))]
    UnknownModelType(String),
    /// A Hugging Face model directory is incomplete or inconsistent.
    #[error("{path}: {reason}")]
    HfDir {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A required metadata key is missing or has the wrong type.
    #[error("metadata key '{key}': {reason}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A required tensor is missing.
    #[error("tensor '{0}' is missing from the model's weights")]
    MissingTensor(String),
    /// A tensor has an unexpected shape.
    #[error("tensor '{tensor}' has shape {got:?}, expected {expected:?}")]
    TensorShape {
        /// Tensor name.
        tensor: String,
        /// Shape found.
        got: Vec<usize>,
        /// Shape expected.
        expected: Vec<usize>,
    },
    /// The model uses a feature lem does not implement yet.
    #[error("unsupported model feature: {0}")]
    Unsupported(String),
    /// A quantized matrix could not be built.
    #[error("tensor '{tensor}': {source}")]
    Quant {
        /// Tensor name.
        tensor: String,
        /// The cause.
        source: lem_kernels::QuantError,
    },
    /// A forward call asked for something impossible.
    #[error("invalid forward input: {0}")]
    Input(String),
    /// A sequence's KV cache failed (its recall tier could not be written or read).
    #[error("KV cache: {0}")]
    Kv(#[from] lem_kv::KvError),
}
