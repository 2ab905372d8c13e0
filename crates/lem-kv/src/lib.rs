//! The KV cache, owned by the sequence, never by the model.
//!
//! A [`SeqCache`] is one sequence's attention state: one [`LayerCache`] per layer, each of
//! the [`LayerKind`] the model declares. Every cell records the absolute position of the
//! token it holds, so masks and rotary positions stay right after a sliding window wraps,
//! after truncation and after a restore. The model's forward pass appends to it and reads
//! it through [`lem_kernels::ops::KvView`]; everything else (truncate, fork, export,
//! import) is a sequence operation here. [`SeqCache::export_raw`] /
//! [`SeqCache::import_raw`] move K/V in the storage type itself ([`RawLayer`]), so a
//! snapshot or a prefix-cache block restores a cache bit for bit.
//!
//! Storage type is a property of the cache ([`KvDtype`]: f16 by default, or f32); the
//! one place that converts is [`KvDtype::round_in_place`] / [`LayerCache::append`].

mod layer;
mod raw;

pub use layer::{EMPTY_POS, LayerCache, LayerExport};
pub use raw::RawLayer;

use serde::{Deserialize, Serialize};

/// How one layer attends, and so how its cache keeps cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LayerKind {
    /// Attends to every earlier position: the cache keeps every cell.
    Full,
    /// Attends to the `window` most recent positions: the cache is a ring that keeps the
    /// window plus room for one batch of new tokens.
    SlidingWindow {
        /// Window length in positions.
        window: u32,
    },
}

impl LayerKind {
    /// The window length of a sliding-window layer.
    pub fn window(self) -> Option<u32> {
        match self {
            LayerKind::Full => None,
            LayerKind::SlidingWindow { window } => Some(window),
        }
    }

    /// The attention mask this kind implies.
    pub fn mask(self) -> lem_kernels::ops::Mask {
        match self {
            LayerKind::Full => lem_kernels::ops::Mask::Causal,
            LayerKind::SlidingWindow { window } => lem_kernels::ops::Mask::SlidingWindow { window },
        }
    }
}

/// Element type of stored keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KvDtype {
    /// IEEE half precision: half the memory of f32; llama.cpp's default, so outputs
    /// match it closely.
    #[default]
    F16,
    /// 32-bit floats: exact.
    F32,
}

impl KvDtype {
    /// Rounds values in place to what this type stores, so that what an observer sees
    /// is bit for bit what the cache will hold. The one place K/V precision changes.
    pub fn round_in_place(self, x: &mut [f32]) {
        match self {
            KvDtype::F32 => {}
            KvDtype::F16 => x.iter_mut().for_each(|v| *v = half::f16::from_f32(*v).to_f32()),
        }
    }

    /// Bytes per stored element.
    pub fn size(self) -> usize {
        match self {
            KvDtype::F16 => 2,
            KvDtype::F32 => 4,
        }
    }
}

/// What a layer's cache holds per cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LayerSpec {
    /// Attention kind.
    pub kind: LayerKind,
    /// Key/value heads.
    pub n_kv: usize,
    /// Dimension of each head.
    pub head_dim: usize,
}

/// The cache layout a model declares: one spec per layer, plus the storage type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CacheLayout {
    /// Per-layer specs, in layer order.
    pub layers: Vec<LayerSpec>,
    /// Storage type of every layer.
    pub dtype: KvDtype,
    /// Most tokens one forward call appends (sizes sliding-window rings).
    pub max_batch: usize,
}

impl CacheLayout {
    /// What differs between `self` (expected) and `other`, in words; `None` when the two
    /// caches are interchangeable (same storage type and per-layer specs; `max_batch`
    /// only sizes rings and is not compared).
    pub fn difference(&self, other: &CacheLayout) -> Option<String> {
        if self.dtype != other.dtype {
            return Some(format!("K/V storage type {:?} vs {:?}", self.dtype, other.dtype));
        }
        if self.layers.len() != other.layers.len() {
            return Some(format!("{} layers vs {}", self.layers.len(), other.layers.len()));
        }
        let describe = |s: &LayerSpec| match s.kind {
            LayerKind::Full => format!("full attention, {} KV heads x {}", s.n_kv, s.head_dim),
            LayerKind::SlidingWindow { window } => {
                format!("sliding window {window}, {} KV heads x {}", s.n_kv, s.head_dim)
            }
        };
        self.layers
            .iter()
            .zip(&other.layers)
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("layer {i}: {} vs {}", describe(a), describe(b)))
    }
}

/// Errors of sequence operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// A sliding-window layer no longer holds positions that the truncated sequence
    /// would need.
    #[error("cannot truncate to {len} tokens: layer {layer} (sliding window) already evicted positions below {oldest}")]
    EvictedByWindow {
        /// Layer index.
        layer: usize,
        /// Requested length.
        len: u32,
        /// Oldest position still held.
        oldest: u32,
    },
    /// Imported data does not match the layer's shape.
    #[error("layer {layer}: {what}")]
    Shape {
        /// Layer index.
        layer: usize,
        /// What differs.
        what: String,
    },
}

/// One sequence's KV state: a cache per layer and the number of positions filled.
#[derive(Debug, Clone)]
pub struct SeqCache {
    layout: CacheLayout,
    layers: Vec<LayerCache>,
    len: u32,
}

impl SeqCache {
    /// An empty cache for `layout`.
    pub fn new(layout: &CacheLayout) -> SeqCache {
        let layers = layout.layers.iter().map(|spec| LayerCache::new(*spec, layout.dtype, layout.max_batch)).collect();
        SeqCache { layout: layout.clone(), layers, len: 0 }
    }

    /// The layout this cache was made for.
    pub fn layout(&self) -> &CacheLayout {
        &self.layout
    }

    /// Number of positions the sequence has (the next token goes at this position).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether no token has been appended yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes room for `total` positions so that appending up to there does not allocate.
    pub fn reserve(&mut self, total: usize) {
        for l in &mut self.layers {
            l.reserve(total);
        }
    }

    /// Frees what [`SeqCache::reserve`] and growth set aside beyond the cells held.
    pub fn shrink_to_fit(&mut self) {
        for l in &mut self.layers {
            l.shrink_to_fit();
        }
    }

    /// Bytes allocated by every layer (at least [`SeqCache::bytes_used`]).
    pub fn bytes_allocated(&self) -> usize {
        self.layers.iter().map(LayerCache::bytes_allocated).sum()
    }

    /// Layer `i`'s cache.
    pub fn layer(&self, i: usize) -> &LayerCache {
        &self.layers[i]
    }

    /// Layer `i`'s cache, mutably (the forward pass appends through this).
    pub fn layer_mut(&mut self, i: usize) -> &mut LayerCache {
        &mut self.layers[i]
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Records that `n` more positions were appended to every layer.
    pub fn advance(&mut self, n: u32) {
        self.len += n;
        debug_assert!(self.layers.iter().all(|l| l.newest().is_none_or(|p| p < self.len)));
    }

    /// Drops every position `>= len` (rollback). Fails, changing nothing, if a sliding
    /// window layer already evicted positions the shorter sequence would still attend to.
    pub fn truncate(&mut self, len: u32) -> Result<(), KvError> {
        if len >= self.len {
            return Ok(());
        }
        for (i, l) in self.layers.iter().enumerate() {
            l.check_truncate(len).map_err(|oldest| KvError::EvictedByWindow { layer: i, len, oldest })?;
        }
        for l in &mut self.layers {
            l.truncate(len);
        }
        self.len = len;
        Ok(())
    }

    /// An independent copy; later appends to either side do not affect the other.
    pub fn fork(&self) -> SeqCache {
        self.clone()
    }

    /// Bytes of K/V data held in live cells.
    pub fn bytes_used(&self) -> usize {
        self.layers.iter().map(LayerCache::bytes_used).sum()
    }

    /// Exports every layer's live K/V exactly as stored (see [`RawLayer`]).
    pub fn export_raw(&self) -> Vec<RawLayer> {
        self.layers.iter().map(LayerCache::export_raw).collect()
    }

    /// Every layer's K/V of positions `from..to`, exactly as stored, or `None` when some
    /// layer no longer holds all of them.
    pub fn export_raw_range(&self, from: u32, to: u32) -> Option<Vec<RawLayer>> {
        self.layers.iter().map(|l| l.export_raw_range(from, to)).collect()
    }

    /// Replaces the state with raw layers (as [`SeqCache::export_raw`] gives them) for a
    /// sequence of `len` positions. Checks everything a later forward relies on: layer
    /// count, storage type, shapes, that full-attention layers hold exactly positions
    /// `0..len` and that sliding-window layers hold a contiguous run ending at `len - 1`
    /// that covers the window the next query sees. On error the cache is unchanged.
    pub fn import_raw(&mut self, layers: &[RawLayer], len: u32) -> Result<(), KvError> {
        self.replace_with(layers, len, |e| &e.positions, LayerCache::import_raw)
    }

    /// Exports every layer's live K/V (see [`LayerCache::export`]).
    pub fn export(&self) -> Vec<LayerExport> {
        self.layers.iter().map(LayerCache::export).collect()
    }

    /// Replaces the state with exported layers, for a sequence of `len` positions.
    pub fn import(&mut self, layers: &[LayerExport], len: u32) -> Result<(), KvError> {
        self.replace_with(layers, len, |e| &e.positions, LayerCache::import)
    }

    /// The shared body of the imports: checks the layer count and every layer's held
    /// positions, fills a fresh cache with `import`, and swaps it in only if all succeed.
    fn replace_with<T>(
        &mut self,
        layers: &[T],
        len: u32,
        positions: impl Fn(&T) -> &[u32],
        import: impl Fn(&mut LayerCache, &T) -> Result<(), String>,
    ) -> Result<(), KvError> {
        if layers.len() != self.layers.len() {
            return Err(KvError::Shape {
                layer: layers.len().min(self.layers.len()),
                what: format!("expected {} layers, got {}", self.layers.len(), layers.len()),
            });
        }
        for (i, e) in layers.iter().enumerate() {
            check_held(self.layout.layers[i].kind, positions(e), len)
                .map_err(|what| KvError::Shape { layer: i, what })?;
        }
        let mut fresh = SeqCache::new(&self.layout);
        for (i, (l, e)) in fresh.layers.iter_mut().zip(layers).enumerate() {
            import(l, e).map_err(|what| KvError::Shape { layer: i, what })?;
        }
        fresh.len = len;
        *self = fresh;
        Ok(())
    }
}

/// Whether `positions` (ascending) is what a layer of `kind` must hold for a sequence of
/// `len` tokens to continue correctly.
fn check_held(kind: LayerKind, positions: &[u32], len: u32) -> Result<(), String> {
    let contiguous_to_end = positions.last().is_none_or(|&last| last + 1 == len)
        && positions.windows(2).all(|w| w[0].checked_add(1) == Some(w[1]));
    match kind {
        LayerKind::Full => {
            if positions.len() != len as usize || !contiguous_to_end || positions.first().is_some_and(|&p| p != 0) {
                let span = match (positions.first(), positions.last()) {
                    (Some(a), Some(b)) => format!("{} positions {a}..={b}", positions.len()),
                    _ => "no positions".to_owned(),
                };
                return Err(format!("full-attention layer must hold positions 0..{len}, got {span}"));
            }
        }
        LayerKind::SlidingWindow { window } => {
            let need_from = (len + 1).saturating_sub(window);
            let first = positions.first().copied().unwrap_or(len);
            if !contiguous_to_end || first > need_from || (len > 0 && positions.is_empty()) {
                return Err(format!(
                    "sliding-window layer (window {window}) must hold a contiguous run of positions from at most \
                     {need_from} up to {}, got {} positions starting at {first}",
                    len.saturating_sub(1),
                    positions.len()
                ));
            }
        }
    }
    Ok(())
}
