//! One layer's cells.

use lem_kernels::ops::{KvData, KvRows, KvView};

use crate::raw::RawLayer;
use crate::recall::{BLOCK, Recalled, Tier};
use crate::store::Store;
use crate::{CacheLayout, KvDtype, LayerSpec};

/// Position recorded for a cell that holds nothing: a hole that truncation or an import
/// left in a sliding-window ring. No query ever sees it (every mask needs `p <= q`).
pub const EMPTY_POS: u32 = u32::MAX;

/// One layer's keys and values, cell-major (`[cell][n_kv][head_dim]`), with the absolute
/// position of each cell.
///
/// Full-attention layers keep cells in position order. Sliding-window layers are a ring
/// of `window + max_batch` cells in which position `p` always lives in cell
/// `p % capacity`: a new cell overwrites the one `capacity` positions older, which no
/// query of the current or any later batch can see. Sink-window layers keep position
/// `p < sinks` in cell `p` forever, followed by such a ring: position `p >= sinks` lives
/// in cell `sinks + (p - sinks) % (window + max_batch)` ([`Ring`]). Because placement depends only on
/// the position, two caches holding the same positions lay them out identically whatever
/// their history (appends, truncations, a restore), so attention sums cells in the same
/// order and gives bit-identical results. Truncation and imports may leave holes in the
/// ring: cells whose position is [`EMPTY_POS`].
#[derive(Debug, Clone)]
pub struct LayerCache {
    spec: LayerSpec,
    k_type: KvDtype,
    v_type: KvDtype,
    k: Store,
    v: Store,
    pos: Vec<u32>,
    /// Ring geometry (bounded layers only).
    ring: Option<Ring>,
    /// Cells that hold a position (not holes).
    live: usize,
    /// Evicted-block recall (sink-window layers of a layout with `recall_blocks > 0`): the
    /// second tier, the blocks read back, and how many a query recalls.
    recall: Option<(Tier, Vec<Recalled>, usize)>,
}

/// Where a bounded layer keeps each position: the first `sinks` positions in their own
/// cells, the rest in a ring of `cap` cells after them.
#[derive(Debug, Clone, Copy)]
struct Ring {
    sinks: usize,
    cap: usize,
}

impl Ring {
    /// The cell of position `p` (a function of the position alone).
    fn cell(self, p: u32) -> usize {
        let p = p as usize;
        if p < self.sinks { p } else { self.sinks + (p - self.sinks) % self.cap }
    }
}

/// A layer's live K/V in position order, head-major: `k` and `v` are
/// `[n_kv][positions.len()][head_dim]`, widened to f32 (exact for f16 storage; the
/// dequantised values for block storage).
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
    /// An empty layer. Block types need `head_dim` to be a multiple of 32, which
    /// [`crate::CacheLayout::check`] ensures for layouts a model declares.
    pub(crate) fn new(spec: LayerSpec, layout: &CacheLayout, max_batch: usize) -> LayerCache {
        let (k_type, v_type) = (layout.k_type, layout.v_type);
        let ring = spec
            .kind
            .window()
            .map(|window| Ring { sinks: spec.kind.sinks() as usize, cap: window as usize + max_batch.max(1) });
        let mut l = LayerCache {
            spec,
            k_type,
            v_type,
            k: Store::new(k_type, true, spec.head_dim),
            v: Store::new(v_type, false, spec.head_dim),
            pos: Vec::new(),
            ring,
            live: 0,
            recall: None,
        };
        // A layer that shares another's K/V stores nothing, and recalls through its source.
        if layout.recall_blocks > 0 && spec.shares.is_none() && matches!(spec.kind, crate::LayerKind::SinkWindow { .. })
        {
            let row = l.row();
            let (kb, vb) = (l.k.bytes_of(row), l.v.bytes_of(row));
            let tier = Tier::new(spec, spec.kind.sinks(), kb, vb, layout.recall_select);
            let heads = (0..spec.n_kv).map(|_| Recalled::new(k_type, v_type, spec.head_dim)).collect();
            l.recall = Some((tier, heads, layout.recall_blocks as usize));
        }
        l
    }

    /// This layer's spec.
    pub fn spec(&self) -> LayerSpec {
        self.spec
    }

    /// Storage type of the keys.
    pub fn k_type(&self) -> KvDtype {
        self.k_type
    }

    /// Storage type of the values.
    pub fn v_type(&self) -> KvDtype {
        self.v_type
    }

    /// Cells of a bounded layer, sinks and ring together (`None` for full-attention
    /// layers, which grow).
    pub fn ring_capacity(&self) -> Option<usize> {
        self.ring.map(|r| r.sinks + r.cap)
    }

    fn row(&self) -> usize {
        self.spec.n_kv * self.spec.head_dim
    }

    /// Number of live cells (holes not counted).
    pub fn cells(&self) -> usize {
        self.live
    }

    /// Bytes of K/V in memory: live cells, and the blocks a recall tier read back (and
    /// the keys it holds for exact selection).
    pub fn bytes_used(&self) -> usize {
        let hd = self.spec.head_dim;
        self.live * self.cell_bytes()
            + self
                .recall
                .as_ref()
                .map_or(0, |(t, r, _)| t.select_bytes() + r.iter().map(|r| r.bytes(hd)).sum::<usize>())
    }

    /// Bytes of K/V in the recall tier's file (0 without one).
    pub fn offloaded_bytes(&self) -> usize {
        self.recall.as_ref().map_or(0, |(t, _, _)| t.bytes())
    }

    /// Blocks each query recalls from the second tier (0: no tier).
    pub fn recall_blocks(&self) -> usize {
        self.recall.as_ref().map_or(0, |r| r.2)
    }

    /// The first I/O error of the recall tier since the last call.
    pub(crate) fn take_error(&mut self) -> Option<std::io::Error> {
        self.recall.as_mut().and_then(|(t, _, _)| t.take_error())
    }

    /// Into `out`, ascending: the recall blocks the heads of a query at `q` that share
    /// KV head `g` (`query`: those heads, `[group][head_dim]`, rotated as the keys are)
    /// attend to beside the window ([`crate::recall`]); empty without a tier or before any
    /// block left the window.
    pub fn select_recall(&self, query: &[f32], g: usize, q: u32, out: &mut crate::recall::Picked) {
        out.clear();
        if let (Some((tier, _, take)), Some(window)) = (&self.recall, self.spec.kind.window()) {
            tier.select(query, g, q, window, *take, out);
        }
    }

    /// KV head `g`'s cells of recall `blocks` (as [`LayerCache::select_recall`] gives
    /// them), read back from the tier unless they are the ones read last, for attention: a
    /// view of one KV head.
    pub fn recalled(&mut self, g: usize, blocks: &[u32]) -> KvView<'_> {
        let hd = self.spec.head_dim;
        let Some((tier, heads, _)) = &mut self.recall else {
            return KvView { data: KvData::F32 { k: &[], v: &[] }, pos: &[] };
        };
        let rec = &mut heads[g];
        if rec.blocks != blocks {
            rec.clear();
            let cells = blocks.len() * BLOCK as usize;
            rec.k.resize(cells, hd);
            rec.v.resize(cells, hd);
            let (kb, vb) = (tier.k_bytes(), tier.v_bytes());
            let (kh, vh) = (rec.k.bytes_of(hd), rec.v.bytes_of(hd));
            let mut buf = Vec::new();
            let mut failed = None;
            for &b in blocks {
                if let Err(e) = tier.read_block(b, &mut buf) {
                    failed = Some(e);
                    break;
                }
                for (j, r) in buf.chunks_exact(kb + vb).enumerate() {
                    let c = rec.pos.len();
                    rec.k.write_head_raw(c, 0, hd, hd, &r[g * kh..(g + 1) * kh]);
                    rec.v.write_head_raw(c, 0, hd, hd, &r[kb + g * vh..kb + (g + 1) * vh]);
                    rec.pos.push(tier.sinks() + b * BLOCK + j as u32);
                }
            }
            if let Some(e) = failed {
                tier.fail(e);
                rec.clear();
            } else {
                rec.blocks.extend_from_slice(blocks);
            }
            rec.k.resize(rec.pos.len(), hd);
            rec.v.resize(rec.pos.len(), hd);
        }
        let data = match (rec.k.rows(), rec.v.rows()) {
            (KvRows::F32(k), KvRows::F32(v)) => KvData::F32 { k, v },
            (KvRows::F16(k), KvRows::F16(v)) => KvData::F16 { k, v },
            (k, v) => KvData::Split { k, v },
        };
        KvView { data, pos: &rec.pos }
    }

    /// Writes cell `c` (position `p`, just stored) through to the recall tier.
    fn write_through(&mut self, c: usize, p: u32) {
        let row = self.row();
        let (n_kv, hd) = (self.spec.n_kv, self.spec.head_dim);
        let Some((tier, _, _)) = &mut self.recall else { return };
        // The tier's scratch rows, reused from one append to the next.
        let (mut kb, mut vb, mut keys) = tier.take_scratch();
        kb.clear();
        vb.clear();
        keys.resize(n_kv * hd, 0.0);
        for h in 0..n_kv {
            self.k.read_head_raw(c, h, row, hd, &mut kb);
            self.v.read_head_raw(c, h, row, hd, &mut vb);
            self.k.read_head(c, h, row, &mut keys[h * hd..(h + 1) * hd]);
        }
        tier.push(p, &kb, &vb, &keys);
        tier.put_scratch((kb, vb, keys));
    }

    /// Bytes the layer has allocated for K/V and positions (at least [`bytes_used`]).
    ///
    /// [`bytes_used`]: LayerCache::bytes_used
    pub fn bytes_allocated(&self) -> usize {
        self.k.capacity_bytes() + self.v.capacity_bytes() + self.pos.capacity() * 4
    }

    /// Returns memory reserved beyond the cells held (a sequence kept for later reuse
    /// should cost what it holds).
    /// Bytes of K and V of one cell.
    pub fn cell_bytes(&self) -> usize {
        self.k.bytes_of(self.row()) + self.v.bytes_of(self.row())
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        self.k.shrink_to_fit();
        self.v.shrink_to_fit();
        self.pos.shrink_to_fit();
    }

    pub(crate) fn reserve(&mut self, total: usize) {
        if self.spec.shares.is_some() {
            return;
        }
        let cells = self.ring.map_or(total, |r| (r.sinks + r.cap).min(total));
        let more = cells.saturating_sub(self.pos.len());
        let row = self.row();
        self.k.reserve(more * row);
        self.v.reserve(more * row);
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
            Some(r) => r.cell(p),
            None => p.checked_sub(*self.pos.first()?)? as usize,
        };
        (self.pos.get(c) == Some(&p)).then_some(c)
    }

    /// Makes sure cell `c` exists (new cells are holes).
    fn grow_to(&mut self, c: usize) {
        if c >= self.pos.len() {
            let row = self.row();
            self.pos.resize(c + 1, EMPTY_POS);
            self.k.resize(c + 1, row);
            self.v.resize(c + 1, row);
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
                Some(r) => {
                    let c = r.cell(p);
                    if c == self.pos.len() {
                        self.k.push(kr);
                        self.v.push(vr);
                        self.pos.push(p);
                        self.live += 1;
                    } else {
                        self.grow_to(c);
                        self.k.set(c, kr);
                        self.v.set(c, vr);
                        if self.pos[c] == EMPTY_POS {
                            self.live += 1;
                        }
                        self.pos[c] = p;
                    }
                    if self.recall.is_some() && p >= r.sinks as u32 {
                        self.write_through(c, p);
                    }
                }
                None => {
                    self.k.push(kr);
                    self.v.push(vr);
                    self.pos.push(p);
                    self.live += 1;
                }
            }
        }
    }

    /// The cells, for attention: in storage order (not necessarily by position), holes
    /// included with position [`EMPTY_POS`] (never visible).
    pub fn view(&self) -> KvView<'_> {
        let data = match (self.k.rows(), self.v.rows()) {
            (KvRows::F32(k), KvRows::F32(v)) => KvData::F32 { k, v },
            (KvRows::F16(k), KvRows::F16(v)) => KvData::F16 { k, v },
            (k, v) => KvData::Split { k, v },
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
        if self.ring.is_some() && len > 0 {
            // The next query (at `len`) needs what the mask shows it: the sinks and
            // the window's positions below `len`.
            let [sinks, recent] = self.spec.kind.needed(len);
            if let Some(p) = sinks.chain(recent).find(|&p| self.cell_of(p).is_none()) {
                return Err(self.live_positions().filter(|&q| q >= p).min().unwrap_or(p));
            }
        }
        Ok(())
    }

    pub(crate) fn truncate(&mut self, len: u32) {
        let row = self.row();
        let (k_type, n_kv, hd) = (self.k_type, self.spec.n_kv, self.spec.head_dim);
        if let Some((tier, rec, _)) = &mut self.recall {
            // The keys of one tier position, widened through a one-cell store.
            let decode = |raw: &[u8], keys: &mut [f32]| {
                let mut one = Store::new(k_type, true, hd);
                one.resize(1, row);
                let kh = raw.len() / n_kv;
                for h in 0..n_kv {
                    one.write_head_raw(0, h, row, hd, &raw[h * kh..(h + 1) * kh]);
                    one.read_head(0, h, row, &mut keys[h * hd..(h + 1) * hd]);
                }
            };
            tier.truncate(len, decode);
            rec.iter_mut().for_each(Recalled::clear);
        }
        match self.ring {
            None => {
                let keep = self.pos.partition_point(|&p| p < len);
                self.pos.truncate(keep);
                self.k.resize(keep, row);
                self.v.resize(keep, row);
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
                self.k.resize(keep, row);
                self.v.resize(keep, row);
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
                self.k.read_head(c, h, row, &mut k[dst..dst + hd]);
                self.v.read_head(c, h, row, &mut v[dst..dst + hd]);
            }
        }
        let positions = order.iter().map(|&c| self.pos[c]).collect();
        LayerExport { k, v, positions }
    }

    /// The K/V of `cells` (in that order) in the storage type, head-major.
    fn export_cells(&self, cells: &[usize]) -> RawLayer {
        let (n_kv, hd, row) = (self.spec.n_kv, self.spec.head_dim, self.row());
        let mut k = Vec::with_capacity(cells.len() * self.k.bytes_of(row));
        let mut v = Vec::with_capacity(cells.len() * self.v.bytes_of(row));
        for h in 0..n_kv {
            for &c in cells {
                self.k.read_head_raw(c, h, row, hd, &mut k);
                self.v.read_head_raw(c, h, row, hd, &mut v);
            }
        }
        let positions = cells.iter().map(|&c| self.pos[c]).collect();
        RawLayer { k_type: self.k_type, v_type: self.v_type, positions, k, v }
    }

    /// The live K/V in position order, exactly as stored (see [`RawLayer`]); with a
    /// recall tier, every position the layer can still attend to or recall (the sinks and
    /// everything after them), so that a restore recalls what the original would.
    pub fn export_raw(&self) -> RawLayer {
        self.export_tier().unwrap_or_else(|| self.export_cells(&self.ordered()))
    }

    /// [`LayerCache::export_raw`] through the recall tier, when it holds every position
    /// past the sinks and can be read.
    fn export_tier(&self) -> Option<RawLayer> {
        let (tier, _, _) = self.recall.as_ref()?;
        let (n_kv, hd, row) = (self.spec.n_kv, self.spec.head_dim, self.row());
        let len = tier.len();
        if len == 0 || self.newest() != Some(tier.sinks() + len - 1) {
            return None;
        }
        let sink_cells: Vec<usize> = self.ordered().into_iter().filter(|&c| self.pos[c] < tier.sinks()).collect();
        let (kh, vh) = (self.k.bytes_of(hd), self.v.bytes_of(hd));
        let (mut rows_k, mut rows_v) = (vec![0u8; len as usize * kh * n_kv], vec![0u8; len as usize * vh * n_kv]);
        for i in 0..len as usize {
            let (kr, vr) =
                (&mut rows_k[i * kh * n_kv..(i + 1) * kh * n_kv], &mut rows_v[i * vh * n_kv..(i + 1) * vh * n_kv]);
            tier.read(i as u32, kr, vr).ok()?;
        }
        let t = sink_cells.len() + len as usize;
        let (mut k, mut v) = (Vec::with_capacity(t * kh * n_kv), Vec::with_capacity(t * vh * n_kv));
        for h in 0..n_kv {
            for &c in &sink_cells {
                self.k.read_head_raw(c, h, row, hd, &mut k);
                self.v.read_head_raw(c, h, row, hd, &mut v);
            }
            for i in 0..len as usize {
                k.extend_from_slice(&rows_k[(i * n_kv + h) * kh..(i * n_kv + h + 1) * kh]);
                v.extend_from_slice(&rows_v[(i * n_kv + h) * vh..(i * n_kv + h + 1) * vh]);
            }
        }
        let mut positions: Vec<u32> = sink_cells.iter().map(|&c| self.pos[c]).collect();
        positions.extend(tier.sinks()..tier.sinks() + len);
        Some(RawLayer { k_type: self.k_type, v_type: self.v_type, positions, k, v })
    }

    /// The K/V of positions `from..to`, exactly as stored, or `None` if the layer does not
    /// hold all of them (a sliding window evicted some, or they were never appended).
    /// A layer that shares another's K/V ([`LayerSpec::shares`]) holds nothing, so every
    /// range of it is empty.
    pub fn export_raw_range(&self, from: u32, to: u32) -> Option<RawLayer> {
        if self.spec.shares.is_some() {
            return Some(self.export_cells(&[]));
        }
        let cells: Option<Vec<usize>> = (from..to).map(|p| self.cell_of(p)).collect();
        Some(self.export_cells(&cells?))
    }

    /// Checks imported positions: strictly ascending, below the reserved marker.
    fn check_positions(&self, positions: &[u32]) -> Result<(), String> {
        if positions.windows(2).any(|w| w[0] >= w[1]) {
            return Err("positions are not strictly ascending".into());
        }
        if positions.last() == Some(&EMPTY_POS) {
            return Err(format!("position {EMPTY_POS} is reserved"));
        }
        Ok(())
    }

    /// Places `positions` (already checked): full layers in order, rings by position.
    /// Returns `(index in positions, cell)` of each one kept: a ring keeps its sinks and
    /// the newest positions it has cells for, as appending them one by one would (a
    /// snapshot of a wider ring, made with a larger batch size, holds a few more than the
    /// window, which no later query sees).
    fn place(&mut self, positions: &[u32]) -> Vec<(usize, usize)> {
        let row = self.row();
        match self.ring {
            None => {
                self.pos = positions.to_vec();
                self.k.resize(positions.len(), row);
                self.v.resize(positions.len(), row);
                (0..positions.len()).map(|i| (i, i)).collect()
            }
            Some(r) => {
                let tail = positions.partition_point(|&p| (p as usize) < r.sinks);
                let from = positions.len().saturating_sub(r.cap).max(tail);
                let kept: Vec<(usize, usize)> =
                    (0..tail).chain(from..positions.len()).map(|i| (i, r.cell(positions[i]))).collect();
                let n = kept.iter().map(|&(_, c)| c + 1).max().unwrap_or(0);
                self.pos = vec![EMPTY_POS; n];
                self.k.resize(n, row);
                self.v.resize(n, row);
                for &(i, c) in &kept {
                    self.pos[c] = positions[i];
                }
                kept
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
        // f32 exports hold the ring only: a recall tier starts afresh from here.
        if let Some((tier, rec, _)) = &mut self.recall {
            let (kb, vb) = (self.k.bytes_of(n_kv * hd), self.v.bytes_of(n_kv * hd));
            *tier = Tier::new(self.spec, self.spec.kind.sinks(), kb, vb, tier.select_mode());
            rec.iter_mut().for_each(Recalled::clear);
        }
        let cells = self.place(&e.positions);
        let row = n_kv * hd;
        let (mut kc, mut vc) = (vec![0f32; row], vec![0f32; row]);
        for &(i, c) in &cells {
            for h in 0..n_kv {
                let src = (h * t + i) * hd;
                kc[h * hd..(h + 1) * hd].copy_from_slice(&e.k[src..src + hd]);
                vc[h * hd..(h + 1) * hd].copy_from_slice(&e.v[src..src + hd]);
            }
            self.k.set(c, &kc);
            self.v.set(c, &vc);
        }
        self.live = cells.len();
        Ok(())
    }

    /// [`LayerCache::import_raw`] of a layer with a recall tier (checked): every position
    /// is appended again, in order, so the ring keeps the newest and the tier all.
    fn import_tier(&mut self, e: &RawLayer) {
        let (n_kv, hd, row) = (self.spec.n_kv, self.spec.head_dim, self.row());
        let (Some(r), Some((tier, rec, _))) = (self.ring, &mut self.recall) else { return };
        let (kb, vb) = (self.k.bytes_of(row), self.v.bytes_of(row));
        *tier = Tier::new(self.spec, r.sinks as u32, kb, vb, tier.select_mode());
        rec.iter_mut().for_each(Recalled::clear);
        self.pos.clear();
        self.k.resize(0, row);
        self.v.resize(0, row);
        self.live = 0;
        let t = e.positions.len();
        let (kh, vh) = (self.k.bytes_of(hd), self.v.bytes_of(hd));
        for (i, &p) in e.positions.iter().enumerate() {
            let c = r.cell(p);
            self.grow_to(c);
            for h in 0..n_kv {
                let (ks, vs) = ((h * t + i) * kh, (h * t + i) * vh);
                self.k.write_head_raw(c, h, row, hd, &e.k[ks..ks + kh]);
                self.v.write_head_raw(c, h, row, hd, &e.v[vs..vs + vh]);
            }
            if self.pos[c] == EMPTY_POS {
                self.live += 1;
            }
            self.pos[c] = p;
            if p as usize >= r.sinks {
                self.write_through(c, p);
            }
        }
    }

    pub(crate) fn import_raw(&mut self, e: &RawLayer) -> Result<(), String> {
        let (n_kv, hd) = (self.spec.n_kv, self.spec.head_dim);
        if (e.k_type, e.v_type) != (self.k_type, self.v_type) {
            return Err(format!(
                "K/V stored as {}/{}, this cache stores {}/{}",
                e.k_type, e.v_type, self.k_type, self.v_type
            ));
        }
        let t = e.positions.len();
        let (kh, vh) = (self.k.bytes_of(hd), self.v.bytes_of(hd));
        if e.k.len() != n_kv * t * kh || e.v.len() != n_kv * t * vh {
            return Err(format!(
                "expected {n_kv} heads x {t} positions x {hd} dims ({} and {} bytes) of K and V, got {} and {} bytes",
                n_kv * t * kh,
                n_kv * t * vh,
                e.k.len(),
                e.v.len()
            ));
        }
        self.check_positions(&e.positions)?;
        if self.recall.is_some() {
            self.import_tier(e);
            return Ok(());
        }
        let cells = self.place(&e.positions);
        let row = n_kv * hd;
        for &(i, c) in &cells {
            for h in 0..n_kv {
                let (ks, vs) = ((h * t + i) * kh, (h * t + i) * vh);
                self.k.write_head_raw(c, h, row, hd, &e.k[ks..ks + kh]);
                self.v.write_head_raw(c, h, row, hd, &e.v[vs..vs + vh]);
            }
        }
        self.live = cells.len();
        Ok(())
    }
}
