//! Prefix-cache blocks: a fixed run of token ids and every layer's K/V for their
//! positions, content-addressed by a hash chain.

use std::collections::BTreeMap;
use std::path::Path;

use lem_kv::{CacheLayout, RawLayer};
use safetensors::tensor::Dtype;
use sha2::{Digest, Sha256};

use crate::container::{self, Out};
use crate::error::StateError;
use crate::kvtensor;

/// A block's address: SHA-256 chained over the parent's key and the block's token ids,
/// rooted in the model identity (see [`root_key`]).
pub type BlockKey = [u8; 32];

/// Format tag of block files.
pub const BLOCK_FORMAT: &str = "lem-prefix-block";
/// Block format version.
pub const BLOCK_VERSION: u32 = 1;

/// The key every chain starts from: the model's K/V identity digest
/// ([`crate::Identity::kv_digest`]) and the block length.
pub fn root_key(kv_digest: &[u8; 32], block_tokens: usize) -> BlockKey {
    let mut h = Sha256::new();
    h.update(b"lem-prefix root v1\0");
    h.update(kv_digest);
    h.update((block_tokens as u64).to_le_bytes());
    h.finalize().into()
}

/// The key of the block holding `tokens` after the block keyed `parent`.
pub fn child_key(parent: &BlockKey, tokens: &[u32]) -> BlockKey {
    let mut h = Sha256::new();
    h.update(b"lem-prefix block v1\0");
    h.update(parent);
    h.update((tokens.len() as u64).to_le_bytes());
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    h.finalize().into()
}

/// One block: the token ids of positions `start..start + tokens.len()` and, for every
/// layer, the K/V of exactly those positions (so a restore can assemble any layer's
/// window from consecutive blocks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// This block's key.
    pub key: BlockKey,
    /// The previous block's key (the root key for the first block).
    pub parent: BlockKey,
    /// Position of the first token.
    pub start: u32,
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Per layer, the K/V of the block's positions, as stored.
    pub layers: Vec<RawLayer>,
}

impl Block {
    /// Bytes the block occupies in memory (K/V plus token ids).
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(RawLayer::bytes).sum::<usize>() + self.tokens.len() * 4
    }

    /// The block file's bytes; `kv_digest` ties it to a model identity.
    pub(crate) fn encode(&self, kv_digest: &[u8; 32], layout: &CacheLayout) -> Result<Vec<u8>, String> {
        let mut meta = BTreeMap::new();
        meta.insert("key".to_owned(), hex::encode(self.key));
        meta.insert("parent".to_owned(), hex::encode(self.parent));
        meta.insert("start".to_owned(), self.start.to_string());
        meta.insert("kv_identity".to_owned(), hex::encode(kv_digest));
        let tokens = container::u32_bytes(&self.tokens);
        let mut tensors =
            vec![Out { name: "tokens".into(), dtype: Dtype::U32, shape: vec![self.tokens.len()], data: &tokens }];
        for (i, (l, spec)) in self.layers.iter().zip(&layout.layers).enumerate() {
            let (kt, kshape) = kvtensor::form(layout.k_type, spec.n_kv, l.tokens(), spec.head_dim);
            let (vt, vshape) = kvtensor::form(layout.v_type, spec.n_kv, l.tokens(), spec.head_dim);
            tensors.push(Out { name: format!("layer.{i}.k"), dtype: kt, shape: kshape, data: &l.k });
            tensors.push(Out { name: format!("layer.{i}.v"), dtype: vt, shape: vshape, data: &l.v });
        }
        container::encode(BLOCK_FORMAT, BLOCK_VERSION, meta, &tensors)
    }

    /// Parses and verifies a block file: format, checksum, identity, key, and that the
    /// key really is the hash of the parent and the token ids stored.
    pub(crate) fn decode(
        path: &Path,
        bytes: &[u8],
        key: &BlockKey,
        kv_digest: &[u8; 32],
        layout: &CacheLayout,
    ) -> Result<Block, StateError> {
        let p = container::parse(path, bytes, BLOCK_FORMAT, BLOCK_VERSION)?;
        let bad = |r: String| StateError::malformed(path, r);
        if p.meta(path, "kv_identity")? != hex::encode(kv_digest) {
            return Err(bad("block was made under another model identity".into()));
        }
        let hex_key = |k: &str| -> Result<BlockKey, StateError> {
            let v = hex::decode(p.meta(path, k)?).map_err(|e| bad(format!("{k}: {e}")))?;
            v.try_into().map_err(|_| bad(format!("{k}: not 32 bytes")))
        };
        let (stored_key, parent) = (hex_key("key")?, hex_key("parent")?);
        let start: u32 = p.meta(path, "start")?.parse().map_err(|e| bad(format!("start: {e}")))?;
        let (shape, data) = p.tensor(path, "tokens", Dtype::U32)?;
        let tokens = container::u32s(data);
        if stored_key != *key || child_key(&parent, &tokens) != *key || shape.len() != 1 {
            return Err(bad("key does not match the parent and token ids".into()));
        }
        let positions: Vec<u32> = (start..start + tokens.len() as u32).collect();
        let mut layers = Vec::with_capacity(layout.layers.len());
        for (i, spec) in layout.layers.iter().enumerate() {
            // A layer sharing another's K/V stores nothing.
            let held = if spec.shares.is_some() { 0 } else { tokens.len() };
            let (kt, kwant) = kvtensor::form(layout.k_type, spec.n_kv, held, spec.head_dim);
            let (vt, vwant) = kvtensor::form(layout.v_type, spec.n_kv, held, spec.head_dim);
            let (ks, k) = p.tensor(path, &format!("layer.{i}.k"), kt)?;
            let (vs, v) = p.tensor(path, &format!("layer.{i}.v"), vt)?;
            if ks != kwant || vs != vwant {
                return Err(bad(format!("layer {i}: K {ks:?} / V {vs:?}, expected {kwant:?} / {vwant:?}")));
            }
            let (k_type, v_type) = (layout.k_type, layout.v_type);
            let positions = if spec.shares.is_some() { Vec::new() } else { positions.clone() };
            layers.push(RawLayer { k_type, v_type, positions, k: k.to_vec(), v: v.to_vec() });
        }
        if p.tensors.len() != 1 + 2 * layout.layers.len() {
            return Err(bad(format!("{} tensors for {} layers", p.tensors.len(), layout.layers.len())));
        }
        Ok(Block { key: *key, parent, start, tokens, layers })
    }
}
