//! One layer's cells.

use half::f16;
use lem_kernels::ops::{KvData, KvView};

use crate::raw::RawLayer;
use crate::{KvDtype, LayerKind, LayerSpec};

/// Position recorded for a cell that holds nothing: a hole that truncation or an import
/// left in a sliding-window ring. No query ever sees it (every mask needs `p <= q`).
pub const EMPTY_POS: u32 = u32::MAX;

/// An element type cells can be stored in: only `f32` and `f16`, plain data without
/// padding for which every bit pattern is a valid value (the byte views below rely on it).
pub(crate) trait Elem: Copy + Default {
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    /// Appends the little-endian bytes (big-endian targets; little-endian ones copy views).
    #[cfg_attr(target_endian = "little", allow(dead_code))]
    fn put_le(self, out: &mut Vec<u8>);
    /// Reads one element from little-endian bytes.
    #[cfg_attr(target_endian = "little", allow(dead_code))]
    fn get_le(b: &[u8]) -> Self;
}

impl Elem for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn put_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get_le(b: &[u8]) -> Self {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl Elem for f16 {
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn put_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bits().to_le_bytes());
    }
    fn get_le(b: &[u8]) -> Self {
        f16::from_bits(u16::from_le_bytes([b[0], b[1]]))
    }
}

/// `s` as its little-endian bytes, without copying.
#[cfg(target_endian = "little")]
fn le_bytes<E: Elem>(s: &[E]) -> &[u8] {
    // SAFETY: `E` is f32 or f16 (see `Elem`): no padding, so every byte is initialized;
    // u8 has alignment 1; the length covers exactly the slice's memory.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

/// `s` as its little-endian bytes, writable, without copying.
#[cfg(target_endian = "little")]
fn le_bytes_mut<E: Elem>(s: &mut [E]) -> &mut [u8] {
    // SAFETY: as `le_bytes`, and every bit pattern is a valid f32 or f16, so any bytes
    // written leave valid values.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
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

    fn shrink_to_fit(&mut self) {
        self.k.shrink_to_fit();
        self.v.shrink_to_fit();
    }

    fn capacity(&self) -> usize {
        self.k.capacity() + self.v.capacity()
    }

    fn push(&mut self, k: &[f32], v: &[f32]) {
        self.k.extend(k.iter().map(|&x| E::from_f32(x)));
        self.v.extend(v.iter().map(|&x| E::from_f32(x)));
    }

    /// Grows or shrinks to `cells` cells (new cells are zero).
    fn resize(&mut self, cells: usize, row: usize) {
        self.k.resize(cells * row, E::default());
        self.v.resize(cells * row, E::default());
    }

    fn set(&mut self, cell: usize, row: usize, k: &[f32], v: &[f32]) {
        for (d, &s) in self.k[cell * row..(cell + 1) * row].iter_mut().zip(k) {
            *d = E::from_f32(s);
        }
        for (d, &s) in self.v[cell * row..(cell + 1) * row].iter_mut().zip(v) {
            *d = E::from_f32(s);
        }
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

    /// Appends cell `c`, head `h` of K and V as little-endian bytes.
    fn read_head_raw(&self, c: usize, h: usize, row: usize, hd: usize, k: &mut Vec<u8>, v: &mut Vec<u8>) {
        let src = c * row + h * hd;
        #[cfg(target_endian = "little")]
        {
            k.extend_from_slice(le_bytes(&self.k[src..src + hd]));
            v.extend_from_slice(le_bytes(&self.v[src..src + hd]));
        }
        #[cfg(not(target_endian = "little"))]
        {
            self.k[src..src + hd].iter().for_each(|x| x.put_le(k));
            self.v[src..src + hd].iter().for_each(|x| x.put_le(v));
        }
    }

    /// Overwrites cell `c`, head `h` of K and V from little-endian bytes.
    fn write_head_raw(&mut self, c: usize, h: usize, row: usize, hd: usize, k: &[u8], v: &[u8]) {
        let dst = c * row + h * hd;
        #[cfg(target_endian = "little")]
        {
            le_bytes_mut(&mut self.k[dst..dst + hd]).copy_from_slice(k);
            le_bytes_mut(&mut self.v[dst..dst + hd]).copy_from_slice(v);
        }
        #[cfg(not(target_endian = "little"))]
        {
            let size = std::mem::size_of::<E>();
            for (d, b) in self.k[dst..dst + hd].iter_mut().zip(k.chunks_exact(size)) {
                *d = E::get_le(b);
            }
            for (d, b) in self.v[dst..dst + hd].iter_mut().zip(v.chunks_exact(size)) {
                *d = E::get_le(b);
            }
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
/// of `window + max_batch` cells in which position `p` always lives in cell
/// `p % capacity`: a new cell overwrites the one `capacity` positions older, which no
/// query of the current or any later batch can see. Because placement depends only on
/// the position, two caches holding the same positions lay them out identically whatever
/// their history (appends, truncations, a restore), so attention sums cells in the same
/// order and gives bit-identical results. Truncation and imports may leave holes in the
/// ring: cells whose position is [`EMPTY_POS`].
#[derive(Debug, Clone)]
pub struct LayerCache {
    spec: LayerSpec,
    dtype: KvDtype,
    store: Store,
    pos: Vec<u32>,
    /// Ring capacity in cells (sliding window only).
    ring: Option<usize>,
    /// Cells that hold a position (not holes).
    live: usize,
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
        LayerCache { spec, dtype, store, pos: Vec::new(), ring, live: 0 }
    }

    /// This layer's spec.
    pub fn spec(&self) -> LayerSpec {
        self.spec
    }

    /// Storage type of the cells.
    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    /// Cells of the sliding-window ring (`None` for full-attention layers, which grow).
    pub fn ring_capacity(&self) -> Option<usize> {
        self.ring
    }

    fn row(&self) -> usize {
        self.spec.n_kv * self.spec.head_dim
    }

    /// Number of live cells (holes not counted).
    pub fn cells(&self) -> usize {
        self.live
    }

    /// Bytes of K/V in live cells.
    pub fn bytes_used(&self) -> usize {
        self.live * self.row() * 2 * self.dtype.size()
    }

    /// Bytes the layer has allocated for K/V and positions (at least [`bytes_used`]).
    ///
    /// [`bytes_used`]: LayerCache::bytes_used
    pub fn bytes_allocated(&self) -> usize {
        with_cells!(&self.store, c => c.capacity()) * self.dtype.size() + self.pos.capacity() * 4
    }

    /// Returns memory reserved beyond the cells held (a sequence kept for later reuse
    /// should cost what it holds).
    pub(crate) fn shrink_to_fit(&mut self) {
        with_cells!(&mut self.store, c => c.shrink_to_fit());
        self.pos.shrink_to_fit();
    }

    pub(crate) fn reserve(&mut self, total: usize) {
        let cells = self.ring.map_or(total, |r| r.min(total));
        let more = cells.saturating_sub(self.pos.len());
        let row = self.row();
        with_cells!(&mut self.store, c => c.reserve(more * row));
        self.pos.reserve(more);
    }

    fn live_positions(&self) -> impl Iterator<Item = u32> + '_ {
        self.pos.iter().copied().filter(|&p| p != EMPTY_POS)
    }

    /// Highest position held.
    pub fn newest(&self) -> Option<u32> {
        self.live_positions().max()
    }

    /// Lowest position held.
    pub fn oldest(&self) -> Option<u32> {
        self.live_positions().min()
    }

    /// The cell that holds position `p`, if any.
    fn cell_of(&self, p: u32) -> Option<usize> {
        let c = match self.ring {
            Some(cap) => p as usize % cap,
            None => p.checked_sub(*self.pos.first()?)? as usize,
        };
        (self.pos.get(c) == Some(&p)).then_some(c)
    }

    /// Makes sure cell `c` exists (new cells are holes).
    fn grow_to(&mut self, c: usize) {
        if c >= self.pos.len() {
            let row = self.row();
            self.pos.resize(c + 1, EMPTY_POS);
            with_cells!(&mut self.store, s => s.resize(c + 1, row));
        }
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
                Some(cap) => {
                    let c = p as usize % cap;
                    if c == self.pos.len() {
                        with_cells!(&mut self.store, s => s.push(kr, vr));
                        self.pos.push(p);
                        self.live += 1;
                    } else {
                        self.grow_to(c);
                        with_cells!(&mut self.store, s => s.set(c, row, kr, vr));
                        if self.pos[c] == EMPTY_POS {
                            self.live += 1;
                        }
                        self.pos[c] = p;
                    }
                }
                None => {
                    with_cells!(&mut self.store, s => s.push(kr, vr));
                    self.pos.push(p);
                    self.live += 1;
                }
            }
        }
    }

    /// The cells, for attention: in storage order (not necessarily by position), holes
    /// included with position [`EMPTY_POS`] (never visible).
    pub fn view(&self) -> KvView<'_> {
        let data = match &self.store {
            Store::F32(c) => KvData::F32 { k: &c.k, v: &c.v },
            Store::F16(c) => KvData::F16 { k: &c.k, v: &c.v },
        };
        KvView { data, pos: &self.pos }
    }

    /// Live cell indices in position order.
    fn ordered(&self) -> Vec<usize> {
        match self.ring {
            None => (0..self.pos.len()).collect(),
            Some(_) => {
                let mut cells: Vec<usize> = (0..self.pos.len()).filter(|&c| self.pos[c] != EMPTY_POS).collect();
                cells.sort_unstable_by_key(|&c| self.pos[c]);
                cells
            }
        }
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
        match self.ring {
            None => {
                let keep = self.pos.partition_point(|&p| p < len);
                self.pos.truncate(keep);
                with_cells!(&mut self.store, s => s.resize(keep, row));
                self.live = keep;
            }
            Some(_) => {
                for p in &mut self.pos {
                    if *p != EMPTY_POS && *p >= len {
                        *p = EMPTY_POS;
                        self.live -= 1;
                    }
                }
                let keep = self.pos.iter().rposition(|&p| p != EMPTY_POS).map_or(0, |c| c + 1);
                self.pos.truncate(keep);
                with_cells!(&mut self.store, s => s.resize(keep, row));
            }
        }
    }

    /// The live K/V in position order as `[n_kv][tokens][head_dim]` f32.
    pub fn export(&self) -> LayerExport {
        let (n_kv, hd, row) = (self.spec.n_kv, self.spec.head_dim, self.row());
        let order = self.ordered();
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

    /// The K/V of `cells` (in that order) in the storage type, head-major.
    fn export_cells(&self, cells: &[usize]) -> RawLayer {
        let (n_kv, hd, row) = (self.spec.n_kv, self.spec.head_dim, self.row());
        let bytes = cells.len() * row * self.dtype.size();
        let (mut k, mut v) = (Vec::with_capacity(bytes), Vec::with_capacity(bytes));
        for h in 0..n_kv {
            for &c in cells {
                with_cells!(&self.store, s => s.read_head_raw(c, h, row, hd, &mut k, &mut v));
            }
        }
        let positions = cells.iter().map(|&c| self.pos[c]).collect();
        RawLayer { dtype: self.dtype, positions, k, v }
    }

    /// The live K/V in position order, exactly as stored (see [`RawLayer`]).
    pub fn export_raw(&self) -> RawLayer {
        self.export_cells(&self.ordered())
    }

    /// The K/V of positions `from..to`, exactly as stored, or `None` if the layer does not
    /// hold all of them (a sliding window evicted some, or they were never appended).
    pub fn export_raw_range(&self, from: u32, to: u32) -> Option<RawLayer> {
        let cells: Option<Vec<usize>> = (from..to).map(|p| self.cell_of(p)).collect();
        Some(self.export_cells(&cells?))
    }

    /// Checks imported positions: strictly ascending, and for a ring, no two in one cell.
    fn check_positions(&self, positions: &[u32]) -> Result<(), String> {
        if positions.windows(2).any(|w| w[0] >= w[1]) {
            return Err("positions are not strictly ascending".into());
        }
        if positions.last() == Some(&EMPTY_POS) {
            return Err(format!("position {EMPTY_POS} is reserved"));
        }
        if let (Some(cap), Some(&first), Some(&last)) = (self.ring, positions.first(), positions.last())
            && (last - first) as usize >= cap
        {
            return Err(format!("positions {first}..={last} do not fit the sliding-window ring of {cap} cells"));
        }
        Ok(())
    }

    /// Places `positions` (already checked): full layers in order, rings by position.
    fn place(&mut self, positions: &[u32]) -> Vec<usize> {
        let row = self.row();
        match self.ring {
            None => {
                self.pos = positions.to_vec();
                with_cells!(&mut self.store, s => s.resize(positions.len(), row));
                (0..positions.len()).collect()
            }
            Some(cap) => {
                let cells: Vec<usize> = positions.iter().map(|&p| p as usize % cap).collect();
                let n = cells.iter().max().map_or(0, |&c| c + 1);
                self.pos = vec![EMPTY_POS; n];
                with_cells!(&mut self.store, s => s.resize(n, row));
                for (&c, &p) in cells.iter().zip(positions) {
                    self.pos[c] = p;
                }
                cells
            }
        }
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
        self.check_positions(&e.positions)?;
        let cells = self.place(&e.positions);
        let row = n_kv * hd;
        let (mut kc, mut vc) = (vec![0f32; row], vec![0f32; row]);
        for (i, &c) in cells.iter().enumerate() {
            for h in 0..n_kv {
                let src = (h * t + i) * hd;
                kc[h * hd..(h + 1) * hd].copy_from_slice(&e.k[src..src + hd]);
                vc[h * hd..(h + 1) * hd].copy_from_slice(&e.v[src..src + hd]);
            }
            with_cells!(&mut self.store, s => s.set(c, row, &kc, &vc));
        }
        self.live = t;
        Ok(())
    }

    pub(crate) fn import_raw(&mut self, e: &RawLayer) -> Result<(), String> {
        let (n_kv, hd) = (self.spec.n_kv, self.spec.head_dim);
        if e.dtype != self.dtype {
            return Err(format!("K/V stored as {:?}, this cache stores {:?}", e.dtype, self.dtype));
        }
        let t = e.positions.len();
        let bytes = n_kv * t * hd * self.dtype.size();
        if e.k.len() != bytes || e.v.len() != bytes {
            return Err(format!(
                "expected {n_kv} heads x {t} positions x {hd} dims ({bytes} bytes) of K and V, got {} and {} bytes",
                e.k.len(),
                e.v.len()
            ));
        }
        self.check_positions(&e.positions)?;
        let cells = self.place(&e.positions);
        let (row, head) = (n_kv * hd, hd * self.dtype.size());
        for (i, &c) in cells.iter().enumerate() {
            for h in 0..n_kv {
                let src = (h * t + i) * head;
                let (kb, vb) = (&e.k[src..src + head], &e.v[src..src + head]);
                with_cells!(&mut self.store, s => s.write_head_raw(c, h, row, hd, kb, vb));
            }
        }
        self.live = t;
        Ok(())
    }
}
