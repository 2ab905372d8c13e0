//! K/V exactly as a cache stores it: the unit of snapshots and prefix-cache blocks.

use std::ops::Range;

use crate::KvDtype;

/// One layer's K/V for some positions in the cache's own storage type, so that an export
/// followed by an import restores the cache bit for bit.
///
/// `k` and `v` are head-major, `[n_kv][positions.len()][head_dim]` elements of `dtype`,
/// each little-endian (f16 as its IEEE bits).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawLayer {
    /// Storage type of the elements.
    pub dtype: KvDtype,
    /// Absolute positions, ascending.
    pub positions: Vec<u32>,
    /// Keys, `[n_kv][tokens][head_dim]` little-endian elements of `dtype`.
    pub k: Vec<u8>,
    /// Values, same layout.
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

    /// Bytes of one head's run of `tokens` cells (of K, or of V).
    fn head_bytes(&self, n_kv: usize) -> usize {
        if n_kv == 0 || self.positions.is_empty() { 0 } else { self.k.len() / n_kv / self.positions.len() }
    }

    /// Joins slices of several layers' exports (each `(layer, index range)`, indices into
    /// its `positions`) into one, in the order given. All parts must have the same
    /// `n_kv`, head size and dtype (checked by the import that follows, not here).
    pub fn concat(parts: &[(&RawLayer, Range<usize>)], n_kv: usize) -> RawLayer {
        let dtype = parts.first().map_or(KvDtype::default(), |(p, _)| p.dtype);
        let total: usize = parts.iter().map(|(p, r)| p.head_bytes(n_kv) * r.len() * n_kv).sum();
        let mut out = RawLayer {
            dtype,
            positions: parts.iter().flat_map(|(p, r)| p.positions[r.clone()].iter().copied()).collect(),
            k: Vec::with_capacity(total),
            v: Vec::with_capacity(total),
        };
        for h in 0..n_kv {
            for (p, r) in parts {
                let (cell, t) = (p.head_bytes(n_kv), p.positions.len());
                let span = (h * t + r.start) * cell..(h * t + r.end) * cell;
                out.k.extend_from_slice(&p.k[span.clone()]);
                out.v.extend_from_slice(&p.v[span]);
            }
        }
        out
    }
}
