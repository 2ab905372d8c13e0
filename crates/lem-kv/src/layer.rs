//! One layer's cells.

use half::f16;
use lem_kernels::ops::{KvData, KvView};

use crate::{KvDtype, LayerKind, LayerSpec};

/// An element type cells can be stored in.
trait Elem: Copy + Default {
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl Elem for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Elem for f16 {
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// K and V of every cell, `[cell][n_kv * head_dim]`.
#[derive(Debug, Clone, Default)]
struct Cells<E> {
    k: Vec<E>,
    v: Vec<E>,
}

impl<E: Elem> Cells<E> {
    fn reserve(&mut self, elems: usize) {
        self.k.reserve(elems);
        self.v.reserve(elems);
    }

    fn push(&mut self, k: &[f32], v: &[f32]) {
        self.k.extend(k.iter().map(|&x| E::from_f32(x)));
        self.v.extend(v.iter().map(|&x| E::from_f32(x)));
    }

    fn set(&mut self, cell: usize, row: usize, k: &[f32], v: &[f32]) {
        for (d, &s) in self.k[cell * row..(cell + 1) * row].iter_mut().zip(k) {
            *d = E::from_f32(s);
        }
        for (d, &s) in self.v[cell * row..(cell + 1) * row].iter_mut().zip(v) {
            *d = E::from_f32(s);
        }
    }

    /// Keeps only `cells` (in that order).
    fn reorder(&mut self, cells: &[usize], row: usize) {
        let mut k = Vec::with_capacity(self.k.capacity());
        let mut v = Vec::with_capacity(self.v.capacity());
        for &c in cells {
            k.extend_from_slice(&self.k[c * row..(c + 1) * row]);
            v.extend_from_slice(&self.v[c * row..(c + 1) * row]);
        }
        (self.k, self.v) = (k, v);
    }

    /// Writes cell `c`, head `h` of K and V as f32 into `k` / `v`.
    fn read_head(&self, c: usize, h: usize, row: usize, hd: usize, k: &mut [f32], v: &mut [f32]) {
        let src = c * row + h * hd;
        for (d, s) in k.iter_mut().zip(&self.k[src..src + hd]) {
            *d = s.to_f32();
        }
        for (d, s) in v.iter_mut().zip(&self.v[src..src + hd]) {
            *d = s.to_f32();
        }
    }
}

/// Cells in the cache's storage type.
#[derive(Debug, Clone)]
enum Store {
    F32(Cells<f32>),
    F16(Cells<f16>),
}

/// Runs `$body` with `$c` bound to the typed cells.
macro_rules! with_cells {
    ($store:expr, $c:ident => $body:expr) => {
        match $store {
            Store::F32($c) => $body,
            Store::F16($c) => $body,
        }
    };
}

/// One layer's keys and values, cell-major (`[cell][n_kv][head_dim]`), with the absolute
/// position of each cell.
///
/// Full-attention layers keep cells in position order. Sliding-window layers are a ring
/// of `window + max_batch` cells: once full, a new cell overwrites the oldest, which no
/// query of the current or any later batch can see.
#[derive(Debug, Clone)]
pub struct LayerCache {
    spec: LayerSpec,
    dtype: KvDtype,
    store: Store,
    pos: Vec<u32>,
    /// Ring capacity in cells (sliding window only).
    ring: Option<usize>,
    /// Next cell to overwrite once the ring is full.
    head: usize,
}

/// A layer's live K/V in position order, head-major: `k` and `v` are
/// `[n_kv][positions.len()][head_dim]`, widened to f32 (exact for f16 storage).
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
    pub(crate) fn new(spec: LayerSpec, dtype: KvDtype, max_batch: usize) -> LayerCache {
        let ring = match spec.kind {
            LayerKind::Full => None,
            LayerKind::SlidingWindow { window } => Some(window as usize + max_batch.max(1)),
        };
        let store = match dtype {
            KvDtype::F32 => Store::F32(Cells::default()),
            KvDtype::F16 => Store::F16(Cells::default()),
        };
        LayerCache { spec, dtype, store, pos: Vec::new(), ring, head: 0 }
    }

    /// This layer's spec.
    pub fn spec(&self) -> LayerSpec {
        self.spec
    }

    /// Storage type of the cells.
    pub fn dtype(&self) -> KvDtype {
        self.dtype
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
        self.cells() * self.row() * 2 * self.dtype.size()
    }

    pub(crate) fn reserve(&mut self, total: usize) {
        let cells = self.ring.map_or(total, |r| r.min(total));
        let more = cells.saturating_sub(self.pos.len());
        let row = self.row();
        with_cells!(&mut self.store, c => c.reserve(more * row));
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

    /// Appends cells: `k` and `v` hold `positions.len()` rows of `n_kv * head_dim`,
    /// converted to the storage type here.
    pub fn append(&mut self, positions: &[u32], k: &[f32], v: &[f32]) {
        let row = self.row();
        assert_eq!(k.len(), positions.len() * row);
        assert_eq!(v.len(), k.len());
        for (i, &p) in positions.iter().enumerate() {
            let (kr, vr) = (&k[i * row..(i + 1) * row], &v[i * row..(i + 1) * row]);
            match self.ring {
                Some(cap) if self.pos.len() == cap => {
                    let c = self.head;
                    with_cells!(&mut self.store, s => s.set(c, row, kr, vr));
                    self.pos[c] = p;
                    self.head = (self.head + 1) % cap;
                }
                _ => {
                    with_cells!(&mut self.store, s => s.push(kr, vr));
                    self.pos.push(p);
                }
            }
        }
    }

    /// The live cells, for attention (cells in storage order, not necessarily by position).
    pub fn view(&self) -> KvView<'_> {
        let data = match &self.store {
            Store::F32(c) => KvData::F32 { k: &c.k, v: &c.v },
            Store::F16(c) => KvData::F16 { k: &c.k, v: &c.v },
        };
        KvView { data, pos: &self.pos }
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
        let keep: Vec<usize> = self.ordered().filter(|&c| self.pos[c] < len).collect();
        with_cells!(&mut self.store, s => s.reorder(&keep, row));
        self.pos = keep.iter().map(|&c| self.pos[c]).collect();
        self.head = 0; // cells are now in position order from index 0
    }

    /// The live K/V in position order as `[n_kv][tokens][head_dim]` f32.
    pub fn export(&self) -> LayerExport {
        let (n_kv, hd, row) = (self.spec.n_kv, self.spec.head_dim, self.row());
        let order: Vec<usize> = self.ordered().collect();
        let t = order.len();
        let mut k = vec![0f32; n_kv * t * hd];
        let mut v = vec![0f32; n_kv * t * hd];
        for (i, &c) in order.iter().enumerate() {
            for h in 0..n_kv {
                let dst = (h * t + i) * hd;
                let (kd, vd) = (&mut k[dst..dst + hd], &mut v[dst..dst + hd]);
                with_cells!(&self.store, s => s.read_head(c, h, row, hd, kd, vd));
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
        let (mut kc, mut vc) = (vec![0f32; row], vec![0f32; row]);
        for i in 0..t {
            for h in 0..n_kv {
                let src = (h * t + i) * hd;
                kc[h * hd..(h + 1) * hd].copy_from_slice(&e.k[src..src + hd]);
                vc[h * hd..(h + 1) * hd].copy_from_slice(&e.v[src..src + hd]);
            }
            with_cells!(&mut self.store, s => s.push(&kc, &vc));
            self.pos.push(e.positions[i]);
        }
        self.head = 0;
        Ok(())
    }
}
