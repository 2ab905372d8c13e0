//! One layer's cells.

use lem_kernels::ops::KvView;

use crate::{LayerKind, LayerSpec};

/// One layer's keys and values, cell-major (`[cell][n_kv][head_dim]`), with the absolute
/// position of each cell.
///
/// Full-attention layers keep cells in position order. Sliding-window layers are a ring
/// of `window + max_batch` cells: once full, a new cell overwrites the oldest, which no
/// query of the current or any later batch can see.
#[derive(Debug, Clone)]
pub struct LayerCache {
    spec: LayerSpec,
    k: Vec<f32>,
    v: Vec<f32>,
    pos: Vec<u32>,
    /// Ring capacity in cells (sliding window only).
    ring: Option<usize>,
    /// Next cell to overwrite once the ring is full.
    head: usize,
}

/// A layer's live K/V in position order, head-major: `k` and `v` are
/// `[n_kv][positions.len()][head_dim]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerExport {
    /// Keys, `[n_kv][tokens][head_dim]`.
    pub k: Vec<f32>,
    /// Values, same layout.
    pub v: Vec<f32>,
    /// Absolute positions, ascending.
    pub positions: Vec<u32>,
}

impl LayerCache {
    pub(crate) fn new(spec: LayerSpec, max_batch: usize) -> LayerCache {
        let ring = match spec.kind {
            LayerKind::Full => None,
            LayerKind::SlidingWindow { window } => Some(window as usize + max_batch.max(1)),
        };
        LayerCache { spec, k: Vec::new(), v: Vec::new(), pos: Vec::new(), ring, head: 0 }
    }

    /// This layer's spec.
    pub fn spec(&self) -> LayerSpec {
        self.spec
    }

    fn row(&self) -> usize {
        self.spec.n_kv * self.spec.head_dim
    }

    /// Number of live cells.
    pub fn cells(&self) -> usize {
        self.pos.len()
    }

    /// Bytes of K/V in live cells.
    pub fn bytes_used(&self) -> usize {
        self.cells() * self.row() * 2 * std::mem::size_of::<f32>()
    }

    pub(crate) fn reserve(&mut self, total: usize) {
        let cells = self.ring.map_or(total, |r| r.min(total));
        let more = cells.saturating_sub(self.pos.len());
        self.k.reserve(more * self.row());
        self.v.reserve(more * self.row());
        self.pos.reserve(more);
    }

    /// Highest position held.
    pub fn newest(&self) -> Option<u32> {
        self.pos.iter().copied().max()
    }

    /// Lowest position held.
    pub fn oldest(&self) -> Option<u32> {
        self.pos.iter().copied().min()
    }

    /// Appends cells: `k` and `v` hold `positions.len()` rows of `n_kv * head_dim`.
    pub fn append(&mut self, positions: &[u32], k: &[f32], v: &[f32]) {
        let row = self.row();
        assert_eq!(k.len(), positions.len() * row);
        assert_eq!(v.len(), k.len());
        for (i, &p) in positions.iter().enumerate() {
            let (kr, vr) = (&k[i * row..(i + 1) * row], &v[i * row..(i + 1) * row]);
            match self.ring {
                Some(cap) if self.pos.len() == cap => {
                    let c = self.head;
                    self.k[c * row..(c + 1) * row].copy_from_slice(kr);
                    self.v[c * row..(c + 1) * row].copy_from_slice(vr);
                    self.pos[c] = p;
                    self.head = (self.head + 1) % cap;
                }
                _ => {
                    self.k.extend_from_slice(kr);
                    self.v.extend_from_slice(vr);
                    self.pos.push(p);
                }
            }
        }
    }

    /// The live cells, for attention (cells in storage order, not necessarily by position).
    pub fn view(&self) -> KvView<'_> {
        KvView { k: &self.k, v: &self.v, pos: &self.pos }
    }

    /// Cell indices in position order.
    fn ordered(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.pos.len();
        let start = if self.ring.is_some_and(|cap| n == cap) { self.head } else { 0 };
        (0..n).map(move |i| (start + i) % n)
    }

    /// `Err(oldest)` if truncating to `len` would need evicted positions.
    pub(crate) fn check_truncate(&self, len: u32) -> Result<(), u32> {
        if let LayerKind::SlidingWindow { window } = self.spec.kind {
            let Some(oldest) = self.oldest() else { return Ok(()) };
            // The next query (at `len`) needs positions len - window + 1 ..= len - 1.
            let need_from = (len + 1).saturating_sub(window);
            if len > 0 && oldest > need_from {
                return Err(oldest);
            }
        }
        Ok(())
    }

    pub(crate) fn truncate(&mut self, len: u32) {
        let row = self.row();
        let order: Vec<usize> = self.ordered().filter(|&c| self.pos[c] < len).collect();
        let mut k = Vec::with_capacity(self.k.capacity());
        let mut v = Vec::with_capacity(self.v.capacity());
        let mut pos = Vec::with_capacity(self.pos.capacity());
        for c in order {
            k.extend_from_slice(&self.k[c * row..(c + 1) * row]);
            v.extend_from_slice(&self.v[c * row..(c + 1) * row]);
            pos.push(self.pos[c]);
        }
        self.head = 0; // cells are now in position order from index 0
        (self.k, self.v, self.pos) = (k, v, pos);
    }

    /// The live K/V in position order as `[n_kv][tokens][head_dim]`.
    pub fn export(&self) -> LayerExport {
        let (n_kv, hd) = (self.spec.n_kv, self.spec.head_dim);
        let order: Vec<usize> = self.ordered().collect();
        let t = order.len();
        let mut k = vec![0f32; n_kv * t * hd];
        let mut v = vec![0f32; n_kv * t * hd];
        for (i, &c) in order.iter().enumerate() {
            for h in 0..n_kv {
                let src = c * n_kv * hd + h * hd;
                let dst = (h * t + i) * hd;
                k[dst..dst + hd].copy_from_slice(&self.k[src..src + hd]);
                v[dst..dst + hd].copy_from_slice(&self.v[src..src + hd]);
            }
        }
        let positions = order.iter().map(|&c| self.pos[c]).collect();
        LayerExport { k, v, positions }
    }

    pub(crate) fn import(&mut self, e: &LayerExport) -> Result<(), String> {
        let (n_kv, hd) = (self.spec.n_kv, self.spec.head_dim);
        let t = e.positions.len();
        if e.k.len() != n_kv * t * hd || e.v.len() != e.k.len() {
            return Err(format!(
                "expected {n_kv} heads x {t} positions x {hd} dims of K and V, got {} and {} values",
                e.k.len(),
                e.v.len()
            ));
        }
        if e.positions.windows(2).any(|w| w[0] >= w[1]) {
            return Err("positions are not strictly ascending".into());
        }
        if let Some(cap) = self.ring
            && t > cap
        {
            return Err(format!("{t} cells exceed the sliding-window ring of {cap}"));
        }
        let row = n_kv * hd;
        let mut cell = vec![0f32; row];
        for i in 0..t {
            for h in 0..n_kv {
                cell[h * hd..(h + 1) * hd].copy_from_slice(&e.k[(h * t + i) * hd..(h * t + i + 1) * hd]);
            }
            self.k.extend_from_slice(&cell);
            for h in 0..n_kv {
                cell[h * hd..(h + 1) * hd].copy_from_slice(&e.v[(h * t + i) * hd..(h * t + i + 1) * hd]);
            }
            self.v.extend_from_slice(&cell);
            self.pos.push(e.positions[i]);
        }
        self.head = 0;
        Ok(())
    }
}
