//! Which model a capture came from: file name, fingerprint and geometry.

use std::path::Path;

use lem_engine::Engine;
use lem_model::Model;
use serde::Serialize;

use crate::InspectError;

/// The identity of a model, written into every snapshot, capture file and JSON result:
/// scores are only comparable between runs of the same model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelIdentity {
    /// The GGUF file name (without directories).
    pub file: String,
    /// `general.name` from the file, when present.
    pub name: Option<String>,
    /// `general.architecture`.
    pub architecture: String,
    /// The model fingerprint (`lem_model::fingerprint`: SHA-256 over the hyper-parameters
    /// and every tensor, 64 hex digits; the same identity lem's saved KV state carries).
    pub fingerprint: String,
    /// Number of layers (`L`).
    pub n_layers: usize,
    /// Query heads.
    pub n_head: usize,
    /// KV heads (`H`).
    pub n_kv_heads: usize,
    /// Head dimension (`D`).
    pub head_dim: usize,
}

impl ModelIdentity {
    /// The identity of the engine's model (the fingerprint is computed on first use, and
    /// remembered in the lem cache directory).
    ///
    /// # Errors
    /// [`InspectError::Engine`] when the model file cannot be read for its fingerprint.
    pub fn of(engine: &Engine) -> Result<ModelIdentity, InspectError> {
        let fingerprint = engine.model_fingerprint()?.to_owned();
        Ok(ModelIdentity::new(engine.path(), engine.model(), fingerprint))
    }

    /// The identity of `model`, loaded from `path`, with a fingerprint computed elsewhere.
    pub fn new(path: &Path, model: &Model, fingerprint: String) -> ModelIdentity {
        let c = model.config();
        ModelIdentity {
            file: path.file_name().map_or_else(|| path.display().to_string(), |f| f.to_string_lossy().into_owned()),
            name: c.name.clone(),
            architecture: c.architecture.clone(),
            fingerprint,
            n_layers: c.n_layer,
            n_head: c.n_head,
            n_kv_heads: c.n_kv,
            head_dim: c.head_dim,
        }
    }
}
