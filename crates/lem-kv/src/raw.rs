//! K/V exactly as a cache stores it: the unit of snapshots and prefix-cache blocks.

use std::ops::Range;

use crate::KvDtype;

/// One layer's K/V for some positions in the cache's own storage type, so that an export
/// followed by an import restores the cache bit for bit.
///
/// `k` and `v` are head-major, `[n_kv][positions.len()][head bytes]`: each head of each
/// position is `head_dim` little-endian elements of its type (f16 as its IEEE bits), or
/// for a block type `head_dim / 32` GGML blocks as they are
/// ([`KvDtype::row_bytes`]`(head_dim)` bytes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawLayer {
    /// Storage type of the keys.
    pub k_type: KvDtype,
    /// Storage type of the values.
    pub v_type: KvDtype,
    /// Absolute positions, ascending.
    pub positions: Vec<u32>,
    /// Keys, `[n_kv][tokens][head bytes]` in `k_type`.
    pub k: Vec<u8>,
    /// Values, `[n_kv][tokens][head bytes]` in `v_type`.
    pub v: Vec<u8>,
}

impl RawLayer {
    /// Number of positions.
    pub fn tokens(&self) -> usize {
        self.positions.len()
    }

    /// Bytes of K and V together.
    pub fn bytes(&self) -> usize {
        self.k.len() + self.v.len()
    }

    /// Bytes of one head of one cell in `side` (the keys or the values).
    fn head_bytes(&self, side: &[u8], n_kv: usize) -> usize {
        if n_kv == 0 || self.positions.is_empty() { 0 } else { side.len() / n_kv / self.positions.len() }
    }

    /// Joins slices of several layers' exports (each `(layer, index range)`, indices into
    /// its `positions`) into one, in the order given. All parts must have the same
    /// `n_kv`, head size and storage types (checked by the import that follows, not here).
    pub fn concat(parts: &[(&RawLayer, Range<usize>)], n_kv: usize) -> RawLayer {
        let (k_type, v_type) = parts.first().map_or(Default::default(), |(p, _)| (p.k_type, p.v_type));
        let total = |side: fn(&RawLayer) -> &[u8]| -> usize {
            parts.iter().map(|(p, r)| p.head_bytes(side(p), n_kv) * r.len() * n_kv).sum()
        };
        let mut out = RawLayer {
            k_type,
            v_type,
            positions: parts.iter().flat_map(|(p, r)| p.positions[r.clone()].iter().copied()).collect(),
            k: Vec::with_capacity(total(|p| &p.k)),
            v: Vec::with_capacity(total(|p| &p.v)),
        };
        for h in 0..n_kv {
            for (p, r) in parts {
                let t = p.positions.len();
                let (kc, vc) = (p.head_bytes(&p.k, n_kv), p.head_bytes(&p.v, n_kv));
                out.k.extend_from_slice(&p.k[(h * t + r.start) * kc..(h * t + r.end) * kc]);
                out.v.extend_from_slice(&p.v[(h * t + r.start) * vc..(h * t + r.end) * vc]);
            }
        }
        out
    }
}
