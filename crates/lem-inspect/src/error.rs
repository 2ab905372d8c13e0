//! Errors of the inspection layer.

use std::path::PathBuf;

/// Everything that can go wrong while capturing, writing or plotting.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Running the model failed.
    #[error(transparent)]
    Model(#[from] lem_model::ModelError),
    /// Running the engine failed.
    #[error(transparent)]
    Engine(#[from] lem_engine::EngineError),
    /// Building or scoring a key snapshot failed.
    #[error(transparent)]
    Score(#[from] lem_score::ScoreError),
    /// A `--capture` list names something that cannot be captured.
    #[error("unknown capture kind '{0}' (expected keys, keys_pre_rope, values, queries or attn)")]
    UnknownKind(String),
    /// A `--layers` list is malformed or out of range.
    #[error("bad layer list '{list}': {reason}")]
    Layers {
        /// The list as given.
        list: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing to capture or score.
    #[error("empty prompt: give at least one token")]
    EmptyPrompt,
    /// A forward pass did not deliver every row that was asked for (a bug in the model's
    /// observer path, or a layer that writes no keys).
    #[error("capture incomplete: layer {layer} {kind} has {got} of {expected} positions")]
    Incomplete {
        /// Layer index.
        layer: usize,
        /// What was captured.
        kind: &'static str,
        /// Positions received.
        got: usize,
        /// Positions expected.
        expected: usize,
    },
    /// Encoding a capture file failed.
    #[error("{}: cannot encode safetensors: {reason}", path.display())]
    Encode {
        /// The file.
        path: PathBuf,
        /// What the encoder said.
        reason: String,
    },
    /// Drawing a plot failed.
    #[error("{}: cannot draw the plot: {reason}", path.display())]
    Plot {
        /// The PNG file.
        path: PathBuf,
        /// What the drawing backend said.
        reason: String,
    },
}
