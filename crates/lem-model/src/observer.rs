//! Observers see what the forward pass computes, layer by layer.
//!
//! The forward asks [`Observer::wants`] once per layer; what is not asked for is neither
//! computed nor copied. With no observer at all, the forward does no extra work.

/// A set of things to capture from one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capture(u8);

impl Capture {
    /// Nothing.
    pub const NONE: Capture = Capture(0);
    /// Keys after rotary embedding (and any key norm), exactly as written to the cache.
    pub const KEYS: Capture = Capture(1);
    /// Keys before rotary embedding (after the key norm, if any).
    pub const KEYS_PRE_ROPE: Capture = Capture(1 << 1);
    /// Queries after rotary embedding.
    pub const QUERIES: Capture = Capture(1 << 2);
    /// Values, as written to the cache.
    pub const VALUES: Capture = Capture(1 << 3);
    /// Attention weights (after softmax).
    pub const ATTENTION: Capture = Capture(1 << 4);

    /// Whether every item of `other` is in `self`.
    pub fn contains(self, other: Capture) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// Whether nothing is asked for.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Capture {
    type Output = Capture;
    fn bitor(self, rhs: Capture) -> Capture {
        Capture(self.0 | rhs.0)
    }
}

/// Which tensor a [`Captured`] event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureKind {
    /// Post-rotary keys, `[tokens][n_kv][head_dim]`.
    Keys,
    /// Pre-rotary keys, `[tokens][n_kv][head_dim]`.
    KeysPreRope,
    /// Post-rotary queries, `[tokens][n_head][head_dim]`.
    Queries,
    /// Values, `[tokens][n_kv][head_dim]`.
    Values,
    /// Attention weights, `[tokens][n_head][cells]`; `key_positions` gives each cell's
    /// position.
    Attention,
}

/// One captured tensor.
#[derive(Debug, Clone, Copy)]
pub struct Captured<'a> {
    /// Index of the sequence in the batch.
    pub seq: usize,
    /// Layer index.
    pub layer: usize,
    /// What `data` is.
    pub kind: CaptureKind,
    /// Absolute positions of the tokens (rows of `data`).
    pub positions: &'a [u32],
    /// For attention weights: the position of each key cell (last axis of `data`).
    pub key_positions: &'a [u32],
    /// Heads per row.
    pub heads: usize,
    /// Elements per head (head_dim, or number of cells for attention weights).
    pub dim: usize,
    /// The values, row-major `[positions.len()][heads][dim]`.
    pub data: &'a [f32],
}

/// Receives captured tensors during a forward pass.
pub trait Observer {
    /// What to capture from `layer` (called once per layer per forward).
    fn wants(&self, layer: usize) -> Capture;
    /// Called with each captured tensor; the data is only valid during the call.
    fn on_capture(&mut self, captured: Captured<'_>);
}

/// Reborrows an optional observer for a shorter call (shortening the trait object's
/// lifetime too, which `Option::as_deref_mut` cannot do).
pub(crate) fn reborrow<'s>(o: &'s mut Option<&mut dyn Observer>) -> Option<&'s mut dyn Observer> {
    match o {
        Some(o) => Some(&mut **o),
        None => None,
    }
}
