//! The key snapshot (§1): keys of every layer and KV head for one prompt, plus the
//! metadata that identifies where they came from.

use crate::ScoreError;

/// One layer's keys: `[H][T*D]`, position-major within each head.
pub type LayerKeys = Vec<Vec<f32>>;

/// Where a snapshot came from: model identity, prompt and key convention.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// A stable fingerprint of the model's weights (for instance a content hash); free
    /// form, may be empty. Scores are only comparable between snapshots of one model.
    pub model_fingerprint: String,
    /// A human-readable model name; free form, may be empty.
    pub model_name: String,
    /// The prompt's token ids, one per position: `token_ids.len()` must equal `n_tokens`.
    pub token_ids: Vec<u32>,
    /// Whether the keys were captured after rotary position embedding (and any per-head
    /// key normalisation), exactly as written into the KV cache. The scoring contract is
    /// defined on post-rotary keys; [`score`](crate::score) computes regardless, and
    /// callers should refuse or flag a snapshot whose `post_rotary` is `false`.
    pub post_rotary: bool,
}

/// Keys of `L` layers x `H` KV heads x `T` positions x `D` head dimensions, from one
/// forward pass, with their [`SnapshotMeta`].
///
/// Invariants, checked by [`KeySnapshot::new`] (and therefore by
/// [`KeySnapshot::load`]):
/// - every present layer holds exactly `H` heads, each of length `T * D`;
/// - a layer may be absent (`None`): a layer that writes no keys (no KV cache of its
///   own). `L` still counts it; see the crate docs for how absent layers score;
/// - `token_ids.len() == T`;
/// - every key is finite;
/// - `H * T * D * 4` (bytes of one layer) does not overflow `usize`.
#[derive(Clone, PartialEq)]
pub struct KeySnapshot {
    meta: SnapshotMeta,
    n_kv_heads: usize,
    n_tokens: usize,
    head_dim: usize,
    layers: Vec<Option<LayerKeys>>,
}

impl std::fmt::Debug for KeySnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys themselves can be hundreds of megabytes: show the shape only.
        let present: Vec<usize> = (0..self.layers.len()).filter(|&l| self.layers[l].is_some()).collect();
        f.debug_struct("KeySnapshot")
            .field("meta", &self.meta)
            .field("n_layers", &self.layers.len())
            .field("n_kv_heads", &self.n_kv_heads)
            .field("n_tokens", &self.n_tokens)
            .field("head_dim", &self.head_dim)
            .field("present_layers", &present)
            .finish()
    }
}

impl KeySnapshot {
    /// Builds a snapshot of `layers.len()` layers, validating every shape.
    ///
    /// `layers[l]` is `None` for a layer without keys, otherwise `H` heads, each a flat
    /// position-major vector of `n_tokens * head_dim` values (position `p` occupies
    /// `p*D .. (p+1)*D`).
    ///
    /// # Errors
    /// [`ScoreError::HeadCount`], [`ScoreError::HeadLength`], [`ScoreError::TokenCount`],
    /// [`ScoreError::NonFinite`] or [`ScoreError::TooLarge`] when an invariant (see
    /// [`KeySnapshot`]) does not hold.
    pub fn new(
        meta: SnapshotMeta,
        n_kv_heads: usize,
        n_tokens: usize,
        head_dim: usize,
        layers: Vec<Option<LayerKeys>>,
    ) -> Result<Self, ScoreError> {
        let head_len = n_tokens
            .checked_mul(head_dim)
            .ok_or_else(|| ScoreError::TooLarge { what: format!("n_tokens ({n_tokens}) * head_dim ({head_dim})") })?;
        head_len.checked_mul(n_kv_heads).and_then(|n| n.checked_mul(4)).ok_or_else(|| ScoreError::TooLarge {
            what: format!("n_kv_heads ({n_kv_heads}) * n_tokens ({n_tokens}) * head_dim ({head_dim}) * 4 bytes"),
        })?;
        if meta.token_ids.len() != n_tokens {
            return Err(ScoreError::TokenCount { expected: n_tokens, found: meta.token_ids.len() });
        }
        for (layer, heads) in layers.iter().enumerate() {
            let Some(heads) = heads else { continue };
            if heads.len() != n_kv_heads {
                return Err(ScoreError::HeadCount { layer, expected: n_kv_heads, found: heads.len() });
            }
            for (head, v) in heads.iter().enumerate() {
                if v.len() != head_len {
                    return Err(ScoreError::HeadLength { layer, head, expected: head_len, found: v.len() });
                }
                if let Some(index) = v.iter().position(|x| !x.is_finite()) {
                    return Err(ScoreError::NonFinite { layer, head, index, value: v[index] });
                }
            }
        }
        Ok(Self { meta, n_kv_heads, n_tokens, head_dim, layers })
    }

    /// `L`: the number of layers, absent ones included.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// `H`: the number of KV heads (after grouped-query sharing, not query heads).
    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads
    }

    /// `T`: the number of prompt positions.
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// `D`: the head dimension.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The keys of layer `l` as `H` flat `[T*D]` vectors, or `None` when the layer is
    /// absent or `l >= n_layers()`.
    pub fn layer_keys(&self, l: usize) -> Option<&[Vec<f32>]> {
        self.layers.get(l)?.as_deref()
    }

    /// Whether layer `l` has keys.
    pub fn has_layer(&self, l: usize) -> bool {
        self.layer_keys(l).is_some()
    }

    /// The snapshot's metadata.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Takes the snapshot apart: metadata and per-layer keys.
    pub fn into_parts(self) -> (SnapshotMeta, Vec<Option<LayerKeys>>) {
        (self.meta, self.layers)
    }
}
