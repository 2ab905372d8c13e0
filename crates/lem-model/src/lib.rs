//! Model architectures for lem, loaded from GGUF files and Hugging Face directories.
//!
//! A [`Model`] is weights plus a forward function. It never owns KV state: every call
//! takes a batch of [`SeqInput`]s, each with its own [`lem_kv::SeqCache`], and returns
//! logits for the positions each asked for. Architectures (`arch/`) only read their
//! constants and wire layers from the shared library (`layers/`); adding a Llama-like
//! architecture is one small file.

mod arch;
mod config;
mod error;
pub mod fingerprint;
mod gguf;
mod hf;
mod layers;
mod model;
pub mod names;
mod observer;
mod weights;

pub use arch::{Arch, HfConventions, SUPPORTED as SUPPORTED_ARCHITECTURES, SUPPORTED_HF as SUPPORTED_HF_MODEL_TYPES};
/// GGML tensor types (the type of [`LoadOptions::dtype`]).
pub use candle_core::quantized::GgmlDType;
pub use config::{Factors, Key, ModelConfig, MoeConfig, PerLayerDims, RopeConfig, RopeScaling, YarnConfig};
pub use error::ModelError;
pub use gguf::{GgufFile, GgufWeights, TensorType};
pub use hf::HfDir;
pub use layers::{
    Activation, Attention, AttentionConfig, DecoderBlock, DenseAndRouted, Ffn, GatedMlp, Gating, Kernels, Linear,
    Loader, PerLayerEmbedding, RmsNorm, RoutedMlp, Routing,
};
pub use model::{DEFAULT_MAX_BATCH, Embedding, LogitsRequest, Model, ParamCounts, SeqInput, Workspace, open_weights};
pub use observer::{Capture, CaptureKind, Captured, Observer};
pub use weights::{LoadOptions, WeightSource};
