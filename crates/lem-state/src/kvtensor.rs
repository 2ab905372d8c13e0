//! How one side (keys or values) of a layer's raw K/V is stored as a tensor in lem's
//! state files: f16 and f32 as themselves (`[n_kv][tokens][head_dim]`), GGML block types
//! as their bytes (`U8`, `[n_kv][tokens][head bytes]`), exactly as the cache holds them.

use lem_kv::KvDtype;
use safetensors::tensor::Dtype;

/// The tensor type and shape of `tokens` cells of `n_kv` heads of `head_dim` values in `t`.
pub(crate) fn form(t: KvDtype, n_kv: usize, tokens: usize, head_dim: usize) -> (Dtype, Vec<usize>) {
    match t {
        KvDtype::F16 => (Dtype::F16, vec![n_kv, tokens, head_dim]),
        KvDtype::F32 => (Dtype::F32, vec![n_kv, tokens, head_dim]),
        q => (Dtype::U8, vec![n_kv, tokens, q.row_bytes(head_dim)]),
    }
}
