//! The raw capture file of `lem inspect`: every captured tensor in one safetensors file.
//!
//! Tensors are named `{kind}.{layer}` (`keys.0`, `attn.29`, ...; kinds as in
//! [`Kind::name`]), f32 little-endian, C order, shape `[heads, T, dim]`:
//!
//! | name | shape | what |
//! |---|---|---|
//! | `keys.{l}` | `[n_kv_heads, T, head_dim]` | keys after rotary embedding (and key norm), as cached |
//! | `keys_pre_rope.{l}` | `[n_kv_heads, T, head_dim]` | keys before rotary embedding |
//! | `values.{l}` | `[n_kv_heads, T, head_dim]` | values, as cached |
//! | `queries.{l}` | `[n_head, T, head_dim]` | queries after rotary embedding (and query norm) |
//! | `attn.{l}` | `[n_head, T, P]` | attention weights; column `p` = key position `p`, 0 where masked |
//!
//! String metadata ([`FORMAT_TAG`] `lem-capture`, version [`FORMAT_VERSION`]): the model
//! identity, the prompt and its token ids, the first position, the geometry, the
//! captured layers and kinds, and the KV storage type (keys and values are rounded to it,
//! exactly as the cache holds them).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use lem_kv::KvDtype;
use safetensors::{Dtype, View};

use crate::{Captures, InspectError, Kind, ModelIdentity, Tensor};

/// The value of the `format` metadata key of a capture file.
pub const FORMAT_TAG: &str = "lem-capture";
/// The `format_version` this crate writes.
pub const FORMAT_VERSION: &str = "1";

/// What a capture file records besides the tensors.
#[derive(Debug, Clone, Copy)]
pub struct CaptureFileMeta<'a> {
    /// The model.
    pub identity: &'a ModelIdentity,
    /// The prompt text (as rendered, e.g. after a chat template).
    pub prompt: &'a str,
    /// The prompt's token ids, one per captured position.
    pub token_ids: &'a [u32],
    /// Storage type of the KV cache the keys and values were rounded to.
    pub kv_dtype: KvDtype,
}

struct F32View<'a> {
    tensor: &'a Tensor,
    shape: [usize; 3],
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let mut bytes = Vec::with_capacity(self.data_len());
        for head in &self.tensor.data {
            for x in head {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
        }
        Cow::Owned(bytes)
    }

    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 4
    }
}

/// Writes `captures` to `path` (through a temporary file in the same directory, renamed
/// into place). Returns each tensor's name and shape, in layer then kind order.
///
/// # Errors
/// [`InspectError::Encode`] when the file cannot be written.
pub fn write_capture_file(
    path: &Path,
    captures: &Captures,
    meta: &CaptureFileMeta<'_>,
) -> Result<Vec<(String, [usize; 3])>, InspectError> {
    let encode = |reason: String| InspectError::Encode { path: path.to_owned(), reason };
    let json = |v: serde_json::Result<String>| v.map_err(|e| encode(e.to_string()));
    let mut listing = Vec::new();
    let mut views = Vec::new();
    let mut layers: Vec<usize> = Vec::new();
    let mut kinds: Vec<Kind> = Vec::new();
    for (l, kind, t) in captures.iter() {
        let name = format!("{}.{l}", kind.name());
        listing.push((name.clone(), t.shape()));
        views.push((name, F32View { tensor: t, shape: t.shape() }));
        if !layers.contains(&l) {
            layers.push(l);
        }
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    kinds.sort();
    let id = meta.identity;
    let kind_names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    let map: HashMap<String, String> = [
        ("format", FORMAT_TAG.to_owned()),
        ("format_version", FORMAT_VERSION.to_owned()),
        ("model_file", id.file.clone()),
        ("model_name", id.name.clone().unwrap_or_default()),
        ("model_architecture", id.architecture.clone()),
        ("model_fingerprint", id.fingerprint.clone()),
        ("prompt", meta.prompt.to_owned()),
        ("token_ids", json(serde_json::to_string(meta.token_ids))?),
        ("n_tokens", captures.n_tokens().to_string()),
        ("first_position", captures.first_position().to_string()),
        ("n_layers", id.n_layers.to_string()),
        ("n_head", id.n_head.to_string()),
        ("n_kv_heads", id.n_kv_heads.to_string()),
        ("head_dim", id.head_dim.to_string()),
        ("layers", json(serde_json::to_string(&layers))?),
        ("captured", json(serde_json::to_string(&kind_names))?),
        ("kv_dtype", meta.kv_dtype.name().to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    safetensors::serialize_to_file(views, Some(map), path).map_err(|e| encode(e.to_string()))?;
    Ok(listing)
}
