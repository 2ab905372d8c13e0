//! Helpers of the bounded-cache tests (`sink_window.rs`, `recall.rs`): deterministic
//! prompts over the tiny vocabulary, engines under a bound, and logits fed in chunks.

use lem_engine::{Engine, EngineConfig};
use lem_kv::KvBound;
use lem_model::LoadOptions;

use super::isolate_cache;

/// `n` deterministic ids of the tiny vocabulary (`seed` picks them).
pub fn prompt(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32).map(|i| 3 + (i.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 7) % 61).collect()
}

/// The model at `path` with its cache bounded by `bound` (2 threads, context 2048).
pub fn engine(path: &std::path::Path, bound: Option<KvBound>) -> Engine {
    isolate_cache();
    let opts = LoadOptions { kv_bound: bound, ..LoadOptions::default() };
    Engine::load_with(path, EngineConfig { threads: 2, ctx_size: 2048 }, opts).unwrap()
}

/// Logits after the last id of each chunk of `chunk` ids, fed chunk by chunk (only the
/// last position's logits come back from a forward, so a chunk's last id goes alone).
pub fn logits_each(e: &Engine, ids: &[u32], chunk: usize) -> Vec<Vec<f32>> {
    let mut seq = e.new_sequence();
    let mut out = Vec::new();
    for c in ids.chunks(chunk) {
        if c.len() > 1 {
            seq.feed(e, &c[..c.len() - 1]).unwrap();
        }
        out.push(seq.feed(e, &c[c.len() - 1..]).unwrap().to_vec());
    }
    out
}

/// Asserts that feeding `ids` in chunks of each of `chunks` gives the logits of `each`
/// (the logits after every position, fed one by one): results do not depend on batch
/// shape.
pub fn assert_chunking_invariant(e: &Engine, ids: &[u32], each: &[Vec<f32>], chunks: &[usize]) {
    for &chunk in chunks {
        for (i, l) in logits_each(e, ids, chunk).iter().enumerate() {
            let p = ((i + 1) * chunk).min(ids.len()) - 1;
            assert_eq!(l, &each[p], "chunks of {chunk}, position {p}");
        }
    }
}
