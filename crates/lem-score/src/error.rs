//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong building, saving or loading a [`KeySnapshot`].
///
/// Scoring itself cannot fail: [`score`] is total on every valid snapshot.
///
/// [`KeySnapshot`]: crate::KeySnapshot
/// [`score`]: crate::score
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScoreError {
    // ---- construction -------------------------------------------------------------------
    /// A present layer does not hold exactly `n_kv_heads` heads.
    #[error("layer {layer} has {found} heads, expected {expected} (n_kv_heads)")]
    HeadCount {
        /// The layer index.
        layer: usize,
        /// `n_kv_heads`.
        expected: usize,
        /// The number of heads the layer holds.
        found: usize,
    },
    /// A head's flat key vector is not `n_tokens * head_dim` long.
    #[error("layer {layer} head {head} has {found} values, expected {expected} (n_tokens * head_dim)")]
    HeadLength {
        /// The layer index.
        layer: usize,
        /// The head index.
        head: usize,
        /// `n_tokens * head_dim`.
        expected: usize,
        /// The vector's length.
        found: usize,
    },
    /// The number of token ids differs from `n_tokens`.
    #[error("{found} token ids for a snapshot of {expected} tokens")]
    TokenCount {
        /// `n_tokens`.
        expected: usize,
        /// The number of token ids given.
        found: usize,
    },
    /// A key value is NaN or infinite. Such keys mean the forward pass that produced them
    /// was broken; scores computed from them would be meaningless, so they are refused.
    #[error("layer {layer} head {head} value {index} is not finite ({value})")]
    NonFinite {
        /// The layer index.
        layer: usize,
        /// The head index.
        head: usize,
        /// The index into the head's flat `[T*D]` vector.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// The dimensions multiply past what this machine can address.
    #[error("snapshot dimensions overflow: {what}")]
    TooLarge {
        /// Which product overflowed.
        what: String,
    },

    // ---- files ---------------------------------------------------------------------------
    /// An operating-system error reading or writing `path`.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file (or its directory) involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `path` exists but is not a regular file (a directory, say), or names no file at all.
    #[error("{}: not a file", path.display())]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// The file is not a well-formed safetensors file (not safetensors at all, truncated,
    /// trailing bytes, corrupt header).
    #[error("{}: not a valid safetensors file: {source}", path.display())]
    NotSafetensors {
        /// The file.
        path: PathBuf,
        /// What the safetensors parser said.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// The file is safetensors but its `format` metadata is not `lem-keys`.
    #[error("{}: metadata format is {found:?}, expected \"lem-keys\"", path.display())]
    WrongFormat {
        /// The file.
        path: PathBuf,
        /// The `format` value found.
        found: String,
    },
    /// The file's `format_version` is not one this crate reads.
    #[error("{}: unsupported key-snapshot format_version {found:?} (this build reads \"1\")", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The `format_version` value found.
        found: String,
    },
    /// A required metadata key is absent.
    #[error("{}: metadata key {key:?} is missing", path.display())]
    MissingMetadata {
        /// The file.
        path: PathBuf,
        /// The missing key.
        key: &'static str,
    },
    /// A metadata value cannot be parsed or contradicts the rest of the file.
    #[error("{}: metadata {key:?} = {value:?} is invalid: {reason}", path.display())]
    InvalidMetadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// The value found (possibly shortened).
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// The file holds a tensor other than `keys.{l}` for `l < n_layers`.
    #[error("{}: unexpected tensor {name:?}", path.display())]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// A key tensor is not f32.
    #[error("{}: tensor {tensor:?} has dtype {found}, expected F32", path.display())]
    WrongDtype {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The dtype found.
        found: String,
    },
    /// A key tensor's shape is not `[n_kv_heads, n_tokens, head_dim]` from the metadata.
    #[error("{}: tensor {tensor:?} has shape {found:?}, metadata says {expected:?}", path.display())]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// `[H, T, D]` from the metadata.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// Building the safetensors header failed while saving (should not happen for a valid
    /// snapshot).
    #[error("{}: cannot encode snapshot: {source}", path.display())]
    Encode {
        /// The destination file.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: safetensors::SafeTensorError,
    },
}
