//! What persisted state must match before it is restored: the model, the tokenizer and
//! the cache layout.

use std::path::Path;

use lem_engine::Engine;
use lem_kv::CacheLayout;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::StateError;

/// The identity of an engine's state: K/V made under one identity mean nothing under
/// another, so every file records it and every restore compares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// [`lem_model::fingerprint`] of the model file (hex SHA-256).
    pub model_fingerprint: String,
    /// The model's file name (informational: messages only).
    pub model_file: String,
    /// The tokenizer's fingerprint (token ids mean nothing under another vocabulary).
    pub tokenizer_fingerprint: String,
    /// The cache layout (K and V storage types, per-layer kind, window, heads).
    pub layout: CacheLayout,
}

impl Identity {
    /// The identity of `engine`'s state (computes the model fingerprint on first use).
    pub fn of(engine: &Engine) -> Result<Identity, StateError> {
        Ok(Identity {
            model_fingerprint: engine.model_fingerprint()?.to_owned(),
            model_file: engine.path().file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
            tokenizer_fingerprint: engine.tokenizer().fingerprint().to_owned(),
            layout: engine.model().cache_layout().clone(),
        })
    }

    /// Whether state recorded as `found` (in `path`) may be restored under `self`:
    /// model first, then tokenizer, then layout, each with its own error.
    pub fn check(&self, path: &Path, found: &Identity) -> Result<(), StateError> {
        if found.model_fingerprint != self.model_fingerprint {
            return Err(StateError::ModelMismatch {
                path: path.to_owned(),
                expected: short(&self.model_fingerprint),
                expected_file: self.model_file.clone(),
                found: short(&found.model_fingerprint),
                found_file: found.model_file.clone(),
            });
        }
        if found.tokenizer_fingerprint != self.tokenizer_fingerprint {
            return Err(StateError::TokenizerMismatch {
                path: path.to_owned(),
                expected: short(&self.tokenizer_fingerprint),
                found: short(&found.tokenizer_fingerprint),
            });
        }
        if let Some(what) = found.layout.difference(&self.layout) {
            return Err(StateError::LayoutMismatch { path: path.to_owned(), what });
        }
        Ok(())
    }

    /// A digest of what decides the bytes of K/V for given token ids: the model and the
    /// parts of the layout that change storage (the tokenizer does not: blocks are keyed
    /// by ids).
    pub fn kv_digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"lem kv identity v1\0");
        h.update(self.model_fingerprint.as_bytes());
        h.update(b"\0");
        // One type for both sides digests as it did before K and V had their own, so
        // prefix blocks stored then still match.
        let (k, v) = (self.layout.k_type, self.layout.v_type);
        let layout = if k == v {
            serde_json::json!({ "dtype": k, "layers": self.layout.layers })
        } else {
            serde_json::json!({ "k_type": k, "v_type": v, "layers": self.layout.layers })
        };
        h.update(layout.to_string().as_bytes());
        h.finalize().into()
    }
}

/// The first 16 hex digits of a fingerprint, enough to tell two apart in a message.
pub(crate) fn short(fp: &str) -> String {
    fp.chars().take(16).collect()
}
