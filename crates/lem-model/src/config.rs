//! Typed hyper-parameters read from GGUF metadata.

use lem_kv::LayerKind;

use crate::error::ModelError;
use crate::gguf::GgufFile;

/// A model's shape and constants, as the forward pass needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `general.architecture`.
    pub architecture: String,
    /// `general.name`, when present.
    pub name: Option<String>,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Feed-forward inner size.
    pub n_ff: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_kv: usize,
    /// Dimension of each head.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab: usize,
    /// Training context length.
    pub context_length: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Attention kind of each layer.
    pub layer_kinds: Vec<LayerKind>,
    /// Soft-cap applied to final logits, when the model uses one.
    pub final_logit_softcap: Option<f32>,
    /// Soft-cap applied to attention logits, when the model uses one.
    pub attn_logit_softcap: Option<f32>,
}

/// Upper bound accepted for any dimension read from a file (guards absurd metadata).
const MAX_DIM: u64 = 1 << 24;

impl ModelConfig {
    /// Reads the common `{arch}.*` keys; architecture files adjust the rest.
    pub fn read_common(g: &GgufFile, arch: &str) -> Result<ModelConfig, ModelError> {
        let k = |s: &str| format!("{arch}.{s}");
        let n_layer = g.uint(&k("block_count"), 4096)?;
        let n_embd = g.uint(&k("embedding_length"), MAX_DIM)?;
        let n_ff = g.uint(&k("feed_forward_length"), MAX_DIM)?;
        let n_head = g.uint(&k("attention.head_count"), 4096)?;
        let n_kv = match g.opt_uint(&k("attention.head_count_kv"))? {
            Some(n) => g.uint(&k("attention.head_count_kv"), 4096).map(|_| n as usize)?,
            None => n_head,
        };
        if !n_head.is_multiple_of(n_kv) {
            return Err(ModelError::Metadata {
                key: k("attention.head_count_kv"),
                reason: format!("{n_head} query heads are not a multiple of {n_kv} KV heads"),
            });
        }
        let head_dim = match g.opt_uint(&k("attention.key_length"))? {
            Some(_) => g.uint(&k("attention.key_length"), MAX_DIM)?,
            None => n_embd / n_head,
        };
        let vocab = g
            .tensor_shape("token_embd.weight")
            .and_then(|s| s.first().copied())
            .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
        let context_length = g.uint(&k("context_length"), 1 << 26)?;
        let rms_eps = g.opt_f32(&k("attention.layer_norm_rms_epsilon"))?.ok_or_else(|| ModelError::Metadata {
            key: k("attention.layer_norm_rms_epsilon"),
            reason: "missing".into(),
        })?;
        Ok(ModelConfig {
            architecture: arch.to_owned(),
            name: g.str("general.name").ok().map(str::to_owned),
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_kv,
            head_dim,
            vocab,
            context_length,
            rms_eps,
            layer_kinds: vec![LayerKind::Full; n_layer],
            final_logit_softcap: g.opt_f32(&k("final_logit_softcapping"))?.filter(|c| *c > 0.0),
            attn_logit_softcap: g.opt_f32(&k("attn_logit_softcapping"))?.filter(|c| *c > 0.0),
        })
    }
}
