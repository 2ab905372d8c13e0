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
//! Storage types are a property of the cache, one for the keys and one for the values
//! ([`KvDtype`]: f16 by default, f32, or one of GGML's 32-value block formats q8_0, q4_0,
//! q4_1, q5_0, q5_1, quantised per head as each cell is appended); the one place that
//! converts is [`KvDtype::round_in_place`] / [`LayerCache::append`].

mod held;
mod layer;
mod raw;
pub mod recall;
mod store;

pub use layer::{EMPTY_POS, LayerCache, LayerExport};
pub use raw::RawLayer;

use lem_kernels::kvq::KvQuant;
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
    /// Attends to the first `sinks` positions (attention sinks, kept forever) and the
    /// `window` most recent ones: the cache keeps the sinks plus a ring of the window and
    /// room for one batch (`--kv-sinks` / `--kv-window`, which bound a model's
    /// full-attention layers).
    SinkWindow {
        /// Leading positions kept forever.
        sinks: u32,
        /// Window length in positions.
        window: u32,
        /// Where the sinks sit for rotary purposes ([`SinkPositions`]).
        #[serde(default, skip_serializing_if = "SinkPositions::is_original")]
        positions: SinkPositions,
    },
}

/// The rotary positions a sink window attends at.
///
/// The window's keys always sit at their original positions. With `Original`, so do the
/// sinks: a query at position `q` sees sink `j` at distance `q - j`, which grows without
/// bound (past the trained context once `q` does). With `Rebased` (StreamingLLM), the
/// positions are those within the cache: sinks at `0..sinks`, the window right after them,
/// so the distance to sink `j` is at most `sinks + window - 1 - j` and a stream may run
/// past the model's context. Rotary attention depends only on the distance between query
/// and key, so rebasing needs no re-rotation of stored keys: the query is rotated a second
/// time, at `min(q, sinks + window - 1)`, for its scores against the sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SinkPositions {
    /// Every key at the position it was appended at.
    #[default]
    Original,
    /// Sinks just before the window (StreamingLLM's positions within the cache).
    Rebased,
}

impl SinkPositions {
    /// Whether these are the original positions (the serialised default).
    pub fn is_original(&self) -> bool {
        *self == SinkPositions::Original
    }

    /// The position a query at `q` is rotated at for its scores against the sinks of a
    /// layer of `sinks` sinks and a `window`-position window.
    pub fn sink_query_position(self, q: u32, sinks: u32, window: u32) -> u32 {
        match self {
            SinkPositions::Original => q,
            SinkPositions::Rebased => q.min((sinks + window).saturating_sub(1)),
        }
    }
}

impl std::str::FromStr for SinkPositions {
    type Err = String;

    fn from_str(s: &str) -> Result<SinkPositions, String> {
        match s {
            "original" => Ok(SinkPositions::Original),
            "rebased" => Ok(SinkPositions::Rebased),
            other => Err(format!("unknown position policy {other:?} (original, rebased)")),
        }
    }
}

impl LayerKind {
    /// The window length of a bounded layer (sliding or sink window).
    pub fn window(self) -> Option<u32> {
        match self {
            LayerKind::Full => None,
            LayerKind::SlidingWindow { window } | LayerKind::SinkWindow { window, .. } => Some(window),
        }
    }

    /// Leading positions a bounded layer keeps forever (0 unless a sink window).
    pub fn sinks(self) -> u32 {
        match self {
            LayerKind::SinkWindow { sinks, .. } => sinks,
            _ => 0,
        }
    }

    /// The attention mask this kind implies (the one definition of what a query sees;
    /// [`LayerKind::needed`] follows from it).
    pub fn mask(self) -> lem_kernels::ops::Mask {
        match self {
            LayerKind::Full => lem_kernels::ops::Mask::Causal,
            LayerKind::SlidingWindow { window } => lem_kernels::ops::Mask::SlidingWindow { window },
            LayerKind::SinkWindow { sinks, window, .. } => lem_kernels::ops::Mask::SinkWindow { sinks, window },
        }
    }

    /// The positions below `len` that a query at position `len` sees under
    /// [`LayerKind::mask`], as two ascending ranges (the sinks, then the window; either may
    /// be empty): what a layer must still hold for a sequence of `len` tokens to go on.
    pub fn needed(self, len: u32) -> [std::ops::Range<u32>; 2] {
        match self.window() {
            None => [0..len, len..len],
            Some(window) => {
                let sinks = self.sinks().min(len);
                [0..sinks, (len + 1).saturating_sub(window).max(sinks)..len]
            }
        }
    }

    /// In words, for messages.
    fn describe(self) -> String {
        match self {
            LayerKind::Full => "full attention".to_owned(),
            LayerKind::SlidingWindow { window } => format!("sliding window {window}"),
            LayerKind::SinkWindow { sinks, window, positions: SinkPositions::Original } => {
                format!("{sinks} sinks + window {window}")
            }
            LayerKind::SinkWindow { sinks, window, positions: SinkPositions::Rebased } => {
                format!("{sinks} sinks + window {window}, rebased positions")
            }
        }
    }

    /// Whether a query at `q` is rotated at another position for its scores against the
    /// sinks (a rebased sink window once the window has moved past them).
    pub fn rebases(self, q: u32) -> bool {
        match self {
            LayerKind::SinkWindow { sinks, window, positions } => {
                sinks > 0 && positions.sink_query_position(q, sinks, window) != q
            }
            _ => false,
        }
    }

    /// Whether the distance between a query and any key it sees is bounded whatever the
    /// query's position (a sliding window, or a sink window with rebased sinks), so a
    /// sequence may run past the model's trained context.
    pub fn bounded_distance(self) -> bool {
        match self {
            LayerKind::Full => false,
            LayerKind::SlidingWindow { .. } => true,
            LayerKind::SinkWindow { sinks, positions, .. } => sinks == 0 || positions == SinkPositions::Rebased,
        }
    }
}

/// A bound on the full-attention layers' caches: keep the first `sinks` positions and the
/// most recent `window` (`--kv-sinks` / `--kv-window`; see [`CacheLayout::with_bound`]),
/// except in the layers of `keep_full` (`--kv-full-layers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvBound {
    /// Leading positions kept forever (0: a plain window).
    pub sinks: u32,
    /// Most recent positions kept (at least 1).
    pub window: u32,
    /// Where the sinks sit for rotary purposes.
    pub positions: SinkPositions,
    /// Full-attention layers left unbounded.
    pub keep_full: LayerSet,
    /// Evicted blocks each query of a bounded layer recalls (`--kv-recall-blocks`; 0:
    /// none, and nothing is kept past the window; see [`recall`]).
    pub recall_blocks: u32,
    /// How the recalled blocks are chosen (`--kv-recall-select`).
    pub recall_select: recall::RecallSelect,
}

impl KvBound {
    /// Sinks and a window at original positions, on every full-attention layer.
    pub fn new(sinks: u32, window: u32) -> KvBound {
        KvBound {
            sinks,
            window,
            positions: SinkPositions::Original,
            keep_full: LayerSet::EMPTY,
            recall_blocks: 0,
            recall_select: recall::RecallSelect::Bound,
        }
    }
}

/// A set of layer indices below [`LayerSet::CAPACITY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LayerSet([u64; 4]);

impl LayerSet {
    /// Layers a set can name.
    pub const CAPACITY: usize = 256;
    /// No layer.
    pub const EMPTY: LayerSet = LayerSet([0; 4]);

    /// The set of `layers`; `None` when one is at or past [`LayerSet::CAPACITY`].
    pub fn of(layers: impl IntoIterator<Item = usize>) -> Option<LayerSet> {
        let mut s = LayerSet::EMPTY;
        for l in layers {
            if l >= Self::CAPACITY {
                return None;
            }
            s.0[l / 64] |= 1 << (l % 64);
        }
        Some(s)
    }

    /// Whether `layer` is in the set.
    pub fn contains(&self, layer: usize) -> bool {
        layer < Self::CAPACITY && self.0[layer / 64] & (1 << (layer % 64)) != 0
    }

    /// The members, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..Self::CAPACITY).filter(|&l| self.contains(l))
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        *self == LayerSet::EMPTY
    }
}

/// Storage type of stored keys or values (llama.cpp's `--cache-type-k/-v` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum KvDtype {
    /// IEEE half precision: half the memory of f32; llama.cpp's default, so outputs
    /// match it closely.
    #[default]
    #[serde(rename = "f16")]
    F16,
    /// 32-bit floats: exact.
    #[serde(rename = "f32")]
    F32,
    /// GGML `q8_0`: blocks of 32 8-bit values with an f16 scale (8.5 bits per value).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// GGML `q4_0`: blocks of 32 4-bit values with an f16 scale (4.5 bits per value).
    #[serde(rename = "q4_0")]
    Q4_0,
    /// GGML `q4_1`: 4-bit values with an f16 scale and minimum (5 bits per value).
    #[serde(rename = "q4_1")]
    Q4_1,
    /// GGML `q5_0`: 5-bit values with an f16 scale (5.5 bits per value).
    #[serde(rename = "q5_0")]
    Q5_0,
    /// GGML `q5_1`: 5-bit values with an f16 scale and minimum (6 bits per value).
    #[serde(rename = "q5_1")]
    Q5_1,
}

impl KvDtype {
    /// Every type, in llama.cpp's order.
    pub const ALL: [KvDtype; 7] =
        [KvDtype::F32, KvDtype::F16, KvDtype::Q8_0, KvDtype::Q4_0, KvDtype::Q4_1, KvDtype::Q5_0, KvDtype::Q5_1];

    /// llama.cpp's name (`f16`, `q8_0`, ...).
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F16 => "f16",
            KvDtype::F32 => "f32",
            KvDtype::Q8_0 => "q8_0",
            KvDtype::Q4_0 => "q4_0",
            KvDtype::Q4_1 => "q4_1",
            KvDtype::Q5_0 => "q5_0",
            KvDtype::Q5_1 => "q5_1",
        }
    }

    /// The GGML block format of a block type (`None` for f16 and f32).
    pub fn quant(self) -> Option<KvQuant> {
        match self {
            KvDtype::F16 | KvDtype::F32 => None,
            KvDtype::Q8_0 => Some(KvQuant::Q8_0),
            KvDtype::Q4_0 => Some(KvQuant::Q4_0),
            KvDtype::Q4_1 => Some(KvQuant::Q4_1),
            KvDtype::Q5_0 => Some(KvQuant::Q5_0),
            KvDtype::Q5_1 => Some(KvQuant::Q5_1),
        }
    }

    /// Values per storage unit: 1 for f16/f32, 32 for the block types (a head's
    /// `head_dim` must be a multiple of it).
    pub fn block_len(self) -> usize {
        if self.quant().is_some() { lem_kernels::kvq::BLOCK } else { 1 }
    }

    /// Bytes of `n` values (`n` a multiple of [`KvDtype::block_len`]).
    pub fn row_bytes(self, n: usize) -> usize {
        match self {
            KvDtype::F16 => n * 2,
            KvDtype::F32 => n * 4,
            q => q.quant().map_or(0, |q| q.row_bytes(n)),
        }
    }

    /// Rounds values in place to what this type stores, without the rotation of
    /// [`KvDtype::rotation`]: f16 rounding, or each whole block of 32 quantised and
    /// dequantised (a trailing partial block is left as it is). What a cache holds is
    /// what [`KvDtype::round_keys`] / [`KvDtype::round_values`] give.
    pub fn round_in_place(self, x: &mut [f32]) {
        match self {
            KvDtype::F32 => {}
            KvDtype::F16 => x.iter_mut().for_each(|v| *v = half::f16::from_f32(*v).to_f32()),
            q => {
                let q = q.quant().expect("block type");
                let mut b = vec![0u8; q.block_bytes()];
                for block in x.chunks_exact_mut(lem_kernels::kvq::BLOCK) {
                    q.quantize(block, &mut b);
                    q.dequantize(&b, block);
                }
            }
        }
    }

    /// Rounds key rows (heads of `head_dim` values) in place to exactly what a cache of
    /// this type holds for them (rotation and quantisation included), so that what an
    /// observer sees is bit for bit what the cache will hold. The one place K precision
    /// changes. `x` must be whole heads.
    pub fn round_keys(self, x: &mut [f32], head_dim: usize) {
        self.round_heads(x, true, head_dim);
    }

    /// [`KvDtype::round_keys`] for value rows.
    pub fn round_values(self, x: &mut [f32], head_dim: usize) {
        self.round_heads(x, false, head_dim);
    }

    fn round_heads(self, x: &mut [f32], keys: bool, head_dim: usize) {
        let Some(q) = self.quant() else { return self.round_in_place(x) };
        if head_dim == 0 || !head_dim.is_multiple_of(lem_kernels::kvq::BLOCK) {
            return self.round_in_place(x);
        }
        let rot = self.rotation(keys, head_dim);
        let mut b = vec![0u8; q.row_bytes(head_dim)];
        for head in x.chunks_exact_mut(head_dim) {
            store::encode(q, rot, head, &mut b);
            store::decode(q, rot, &b, head);
        }
    }

    /// The rotation a cache applies to heads of `head_dim` keys (`keys`) or values before
    /// quantising them into this type: the orthonormal Walsh-Hadamard transform in chunks
    /// of the returned size (queries meet keys rotated alike and attention rotates its
    /// output back, so the result is the same up to rounding while quantisation loses
    /// much less: an outlier channel is spread over the chunk). As llama.cpp does
    /// (`attn_rot_k` / `attn_rot_v`): only for block types and heads that are a multiple of
    /// 64; keys in the largest power-of-two chunk dividing the head, values in 64.
    pub fn rotation(self, keys: bool, head_dim: usize) -> Option<usize> {
        self.quant()?;
        if keys { lem_kernels::kvq::key_rotation(head_dim) } else { lem_kernels::kvq::value_rotation(head_dim) }
    }
}

impl std::fmt::Display for KvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvDtype {
    type Err = KvError;

    fn from_str(s: &str) -> Result<KvDtype, KvError> {
        KvDtype::ALL
            .into_iter()
            .find(|t| t.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| KvError::UnknownType(s.to_owned(), KvDtype::ALL.map(KvDtype::name).join(", ")))
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
    /// The earlier layer whose K/V this layer attends to (Gemma 4's shared-KV layers),
    /// when it has none of its own: such a layer stores nothing. Serialised only when
    /// set, so layouts without sharing stay byte-identical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<usize>,
}

impl LayerSpec {
    /// A layer with its own K/V.
    pub fn new(kind: LayerKind, n_kv: usize, head_dim: usize) -> LayerSpec {
        LayerSpec { kind, n_kv, head_dim, shares: None }
    }
}

/// The cache layout a model declares: one spec per layer, plus the storage types.
///
/// Serialised with `k_type` and `v_type`; files written before the two were separate
/// record one `dtype` for both, which still reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "LayoutRepr")]
pub struct CacheLayout {
    /// Per-layer specs, in layer order.
    pub layers: Vec<LayerSpec>,
    /// Storage type of every layer's keys.
    pub k_type: KvDtype,
    /// Storage type of every layer's values.
    pub v_type: KvDtype,
    /// Most tokens one forward call appends (sizes sliding-window rings).
    pub max_batch: usize,
    /// Evicted blocks of [`recall::BLOCK`] positions each query of a sink-window layer
    /// recalls from the layer's second tier ([`recall`]); 0: no tier.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub recall_blocks: u32,
    /// How those blocks are chosen.
    #[serde(default, skip_serializing_if = "recall::RecallSelect::is_bound")]
    pub recall_select: recall::RecallSelect,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What a serialised layout may hold (today's fields, or the earlier single `dtype`).
#[derive(Deserialize)]
struct LayoutRepr {
    layers: Vec<LayerSpec>,
    #[serde(default)]
    dtype: Option<KvDtype>,
    #[serde(default)]
    k_type: Option<KvDtype>,
    #[serde(default)]
    v_type: Option<KvDtype>,
    max_batch: usize,
    #[serde(default)]
    recall_blocks: u32,
    #[serde(default)]
    recall_select: recall::RecallSelect,
}

impl From<LayoutRepr> for CacheLayout {
    fn from(r: LayoutRepr) -> CacheLayout {
        let both = r.dtype.unwrap_or_default();
        CacheLayout {
            layers: r.layers,
            k_type: r.k_type.unwrap_or(both),
            v_type: r.v_type.unwrap_or(both),
            max_batch: r.max_batch,
            recall_blocks: r.recall_blocks,
            recall_select: r.recall_select,
        }
    }
}

impl CacheLayout {
    /// What differs between `self` (expected) and `other`, in words; `None` when the two
    /// caches are interchangeable (same storage type and per-layer specs; `max_batch`
    /// only sizes rings and is not compared).
    pub fn difference(&self, other: &CacheLayout) -> Option<String> {
        if self.k_type != other.k_type {
            return Some(format!("K cache type {} vs {}", self.k_type, other.k_type));
        }
        if self.v_type != other.v_type {
            return Some(format!("V cache type {} vs {}", self.v_type, other.v_type));
        }
        if self.layers.len() != other.layers.len() {
            return Some(format!("{} layers vs {}", self.layers.len(), other.layers.len()));
        }
        if self.recall_blocks != other.recall_blocks {
            return Some(format!("{} recalled blocks vs {}", self.recall_blocks, other.recall_blocks));
        }
        if self.recall_blocks > 0 && self.recall_select != other.recall_select {
            return Some(format!("recall selection {} vs {}", self.recall_select.name(), other.recall_select.name()));
        }
        let describe = |s: &LayerSpec| {
            let shares = s.shares.map_or(String::new(), |j| format!(", sharing layer {j}'s K/V"));
            format!("{}, {} KV heads x {}{shares}", s.kind.describe(), s.n_kv, s.head_dim)
        };
        self.layers
            .iter()
            .zip(&other.layers)
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("layer {i}: {} vs {}", describe(a), describe(b)))
    }

    /// Whether every layer can store its keys and values in the layout's types: the block
    /// types quantise each head in whole blocks of 32, so `head_dim` must be a multiple
    /// of 32.
    pub fn check(&self) -> Result<(), KvError> {
        for (side, dtype) in [("K", self.k_type), ("V", self.v_type)] {
            let block = dtype.block_len();
            if let Some((layer, spec)) = self.layers.iter().enumerate().find(|(_, s)| !s.head_dim.is_multiple_of(block))
            {
                return Err(KvError::BlockMisfit { side, dtype, layer, head_dim: spec.head_dim });
            }
        }
        Ok(())
    }

    /// This layout with keys stored as `k_type` and values as `v_type`, checked
    /// ([`CacheLayout::check`]).
    pub fn with_types(&self, k_type: KvDtype, v_type: KvDtype) -> Result<CacheLayout, KvError> {
        let l = CacheLayout { k_type, v_type, ..self.clone() };
        l.check()?;
        Ok(l)
    }

    /// This layout with every full-attention layer not in `bound.keep_full` bounded to
    /// `bound`'s sinks and window ([`LayerKind::SinkWindow`]); layers that are already
    /// sliding windows stay as they are. Fails on a window of 0, or when `keep_full` names a
    /// layer the model does not have or one that is not full attention.
    pub fn with_bound(&self, bound: KvBound) -> Result<CacheLayout, KvError> {
        if bound.window == 0 {
            return Err(KvError::EmptyWindow);
        }
        if let Some(layer) =
            bound.keep_full.iter().find(|&i| self.layers.get(i).is_none_or(|s| s.kind != LayerKind::Full))
        {
            return Err(KvError::NotFullLayer { layer, layers: self.layers.len() });
        }
        if bound.recall_blocks > 0 && bound.positions == SinkPositions::Rebased {
            return Err(KvError::RecallRebased);
        }
        let recall_select = if bound.recall_blocks > 0 { bound.recall_select } else { recall::RecallSelect::Bound };
        let mut l = CacheLayout { recall_blocks: bound.recall_blocks, recall_select, ..self.clone() };
        for (i, s) in l.layers.iter_mut().enumerate() {
            if s.kind == LayerKind::Full && !bound.keep_full.contains(i) {
                s.kind = LayerKind::SinkWindow { sinks: bound.sinks, window: bound.window, positions: bound.positions };
            }
        }
        // A layer sharing K/V attends as its source does.
        for i in 0..l.layers.len() {
            if let Some(j) = l.layers[i].shares {
                l.layers[i].kind = l.layers[j].kind;
            }
        }
        Ok(l)
    }

    /// Whether every layer bounds the distance from a query to what it sees
    /// ([`LayerKind::bounded_distance`]): then positions may run past the trained context.
    pub fn bounded_distance(&self) -> bool {
        self.layers.iter().all(|s| s.kind.bounded_distance())
    }

    /// Bytes of K and V one position occupies in every layer that holds it (a layer
    /// sharing another's K/V holds none).
    pub fn bytes_per_token(&self) -> usize {
        self.layers
            .iter()
            .filter(|s| s.shares.is_none())
            .map(|s| s.n_kv * (self.k_type.row_bytes(s.head_dim) + self.v_type.row_bytes(s.head_dim)))
            .sum()
    }
}

/// Errors of sequence operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// A sliding-window (or sink-window) layer no longer holds positions that the
    /// truncated sequence would need.
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
    /// A block storage type for a layer whose head size is not a whole number of blocks.
    #[error(
        "{side} cache type {dtype} stores each head in blocks of 32 values, but layer {layer} has head_dim \
         {head_dim} (not a multiple of 32); use f16 or f32 for this model"
    )]
    BlockMisfit {
        /// "K" or "V".
        side: &'static str,
        /// The requested type.
        dtype: KvDtype,
        /// First layer that does not fit.
        layer: usize,
        /// Its head size.
        head_dim: usize,
    },
    /// A sink window (or sliding window) of no positions.
    #[error("a KV window must hold at least 1 position")]
    EmptyWindow,
    /// `--kv-full-layers` names a layer that does not exist or is not full attention.
    #[error("layer {layer} cannot be kept full: the model has {layers} layers, and only full-attention ones can be")]
    NotFullLayer {
        /// The layer named.
        layer: usize,
        /// Layers in the model.
        layers: usize,
    },
    /// Evicted-block recall was asked for with rebased positions (recalled keys sit at
    /// their original positions, which a rebased layer no longer uses).
    #[error("--kv-recall-blocks needs original positions (--kv-positions original)")]
    RecallRebased,
    /// The recall tier's file could not be written or read.
    #[error("KV recall tier: {0}")]
    Tier(String),
    /// A cache type name that is not one of llama.cpp's.
    #[error("unknown KV cache type '{0}' (expected one of: {1})")]
    UnknownType(String, String),
}

/// One sequence's KV state: a cache per layer and the number of positions filled.
#[derive(Debug, Clone)]
pub struct SeqCache {
    layout: CacheLayout,
    layers: Vec<LayerCache>,
    len: u32,
    /// Most bytes of K/V held at once (see [`SeqCache::peak_bytes_used`]).
    peak: usize,
}

/// What a sequence's K/V costs in memory, as `lem generate --json` and `lem bench --json`
/// report it (`kv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KvMemory {
    /// Bytes of K/V held in memory: the peak over the sequence's life.
    pub resident_bytes: usize,
    /// Bytes of K/V held elsewhere: the recall tiers' files ([`recall`]), at the end of
    /// the run (0 without `--kv-recall-blocks`).
    pub offloaded_bytes: usize,
    /// Storage type of the keys.
    pub cache_type_k: KvDtype,
    /// Storage type of the values.
    pub cache_type_v: KvDtype,
}

impl SeqCache {
    /// An empty cache for `layout` (which must pass [`CacheLayout::check`], as every
    /// model's declared layout does; appending to a layer whose head size does not fit its
    /// block type panics).
    pub fn new(layout: &CacheLayout) -> SeqCache {
        let layers = layout.layers.iter().map(|spec| LayerCache::new(*spec, layout, layout.max_batch)).collect();
        SeqCache { layout: layout.clone(), layers, len: 0, peak: 0 }
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

    /// The cache layer `i` attends to: its own, or for a layer sharing K/V
    /// ([`LayerSpec::shares`]) the source layer's.
    pub fn kv_layer(&self, i: usize) -> &LayerCache {
        &self.layers[self.layout.layers[i].shares.unwrap_or(i)]
    }

    /// [`SeqCache::kv_layer`], mutably (a sharing layer's recall reads back through its
    /// source's tier).
    pub fn kv_layer_mut(&mut self, i: usize) -> &mut LayerCache {
        let j = self.layout.layers[i].shares.unwrap_or(i);
        &mut self.layers[j]
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
        self.peak = self.peak.max(self.bytes_used());
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

    /// An independent copy; later appends to either side do not affect the other (a
    /// recall tier is copied to a file of its own).
    pub fn fork(&self) -> SeqCache {
        self.clone()
    }

    /// The first I/O error a layer's recall tier met since the last call (the forward pass
    /// reports it: a tier that could not be written would recall garbage).
    pub fn take_error(&mut self) -> Result<(), KvError> {
        for l in &mut self.layers {
            if let Some(e) = l.take_error() {
                return Err(KvError::Tier(e.to_string()));
            }
        }
        Ok(())
    }

    /// The most bytes of K/V in live cells this cache has held at once (after any
    /// forward; truncation does not lower it; an import starts it afresh; a fork inherits
    /// it).
    pub fn peak_bytes_used(&self) -> usize {
        self.peak.max(self.bytes_used())
    }

    /// The memory report of this cache (peak resident bytes and storage types).
    pub fn memory(&self) -> KvMemory {
        KvMemory {
            resident_bytes: self.peak_bytes_used(),
            offloaded_bytes: self.layers.iter().map(LayerCache::offloaded_bytes).sum(),
            cache_type_k: self.layout.k_type,
            cache_type_v: self.layout.v_type,
        }
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
            held::check_held(&self.layout.layers[i], positions(e), len)
                .map_err(|what| KvError::Shape { layer: i, what })?;
        }
        let mut fresh = SeqCache::new(&self.layout);
        for (i, (l, e)) in fresh.layers.iter_mut().zip(layers).enumerate() {
            import(l, e).map_err(|what| KvError::Shape { layer: i, what })?;
        }
        fresh.len = len;
        fresh.peak = fresh.bytes_used();
        *self = fresh;
        Ok(())
    }
}
