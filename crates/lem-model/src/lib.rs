//! Model architectures for lem, loaded from GGUF.
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
mod layers;
mod model;
mod observer;

pub use arch::SUPPORTED as SUPPORTED_ARCHITECTURES;
pub use config::ModelConfig;
pub use error::ModelError;
pub use gguf::GgufFile;
pub use layers::{Activation, Attention, AttentionConfig, DecoderBlock, GatedMlp, Kernels, Linear, RmsNorm};
pub use model::{DEFAULT_MAX_BATCH, Embedding, LogitsRequest, Model, SeqInput, Workspace};
pub use observer::{Capture, CaptureKind, Captured, Observer};
