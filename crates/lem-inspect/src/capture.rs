//! Capturing tensors during a forward pass: what to capture ([`CaptureSpec`]), the
//! observer that collects it ([`Recorder`]) and the result ([`Captures`]).
//!
//! The recorder is a [`lem_model::Observer`]: the model's forward asks it, per layer, what
//! it wants and hands it exactly those tensors, already rounded to the cache's storage
//! type. Nothing is computed or copied for a layer or kind nobody asked for. Rows are
//! placed by absolute position, so a prompt split into several forward calls (longer
//! than the model's batch limit) lands in one tensor.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lem_kernels::Threads;
use lem_kv::SeqCache;
use lem_model::{Capture, CaptureKind, Captured, LogitsRequest, Model, Observer, SeqInput, Workspace};
use lem_score::{KeySnapshot, SnapshotMeta};

use crate::InspectError;

/// One kind of tensor that can be captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Keys after rotary embedding (and any per-head key norm), exactly as written to the
    /// KV cache: `[n_kv, T, head_dim]`.
    Keys,
    /// Keys before rotary embedding (after any per-head key norm): `[n_kv, T, head_dim]`.
    KeysPreRope,
    /// Values as written to the KV cache: `[n_kv, T, head_dim]`.
    Values,
    /// Queries after rotary embedding (and any per-head query norm): `[n_head, T, head_dim]`.
    Queries,
    /// Attention weights after softmax: `[n_head, T, P]`, where column `p` is the key at
    /// absolute position `p` (`P` = first position + `T`); 0 where masked.
    Attention,
}

impl Kind {
    /// Every kind, in file order.
    pub const ALL: [Kind; 5] = [Kind::Keys, Kind::KeysPreRope, Kind::Values, Kind::Queries, Kind::Attention];

    /// The name used in `--capture` lists and as the tensor-name prefix in capture files.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Keys => "keys",
            Kind::KeysPreRope => "keys_pre_rope",
            Kind::Values => "values",
            Kind::Queries => "queries",
            Kind::Attention => "attn",
        }
    }

    /// Parses a name ([`Kind::name`]; `attention` is accepted for `attn`).
    pub fn parse(s: &str) -> Option<Kind> {
        match s.trim() {
            "attention" => Some(Kind::Attention),
            t => Kind::ALL.into_iter().find(|k| k.name() == t),
        }
    }

    /// The model-level capture flag.
    pub fn capture(self) -> Capture {
        match self {
            Kind::Keys => Capture::KEYS,
            Kind::KeysPreRope => Capture::KEYS_PRE_ROPE,
            Kind::Values => Capture::VALUES,
            Kind::Queries => Capture::QUERIES,
            Kind::Attention => Capture::ATTENTION,
        }
    }

    fn from_model(k: CaptureKind) -> Kind {
        match k {
            CaptureKind::Keys => Kind::Keys,
            CaptureKind::KeysPreRope => Kind::KeysPreRope,
            CaptureKind::Values => Kind::Values,
            CaptureKind::Queries => Kind::Queries,
            CaptureKind::Attention => Kind::Attention,
        }
    }
}

/// Parses a comma-separated list of kinds (`keys,values,queries,attn,keys_pre_rope`),
/// dropping duplicates; the result is in [`Kind::ALL`] order.
pub fn parse_kinds(list: &str) -> Result<Vec<Kind>, InspectError> {
    let mut kinds = Vec::new();
    for item in list.split(',') {
        let kind = Kind::parse(item).ok_or_else(|| InspectError::UnknownKind(item.trim().to_owned()))?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    kinds.sort();
    Ok(kinds)
}

/// Parses a comma-separated list of layer indices for a model of `n_layers` layers.
/// Negative indices count from the end (`-1` is the last layer). The result is sorted,
/// without duplicates.
pub fn parse_layers(list: &str, n_layers: usize) -> Result<Vec<usize>, InspectError> {
    let bad = |reason: String| InspectError::Layers { list: list.to_owned(), reason };
    let mut layers = Vec::new();
    for item in list.split(',') {
        let item = item.trim();
        let i: i64 = item.parse().map_err(|_| bad(format!("'{item}' is not an integer")))?;
        let n = n_layers as i64;
        let l = if i < 0 { n + i } else { i };
        if !(0..n).contains(&l) {
            return Err(bad(format!("layer {i} is outside the model's {n_layers} layers (0..{n} or -{n}..-1)")));
        }
        layers.push(l as usize);
    }
    layers.sort_unstable();
    layers.dedup();
    Ok(layers)
}

/// What to capture, layer by layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSpec {
    per_layer: Vec<Capture>,
}

impl CaptureSpec {
    /// `kinds` from each of `layers`, for a model of `n_layers` layers (indices at or
    /// beyond `n_layers` are ignored).
    pub fn new(n_layers: usize, kinds: &[Kind], layers: &[usize]) -> CaptureSpec {
        let set = kinds.iter().fold(Capture::NONE, |c, k| c | k.capture());
        let mut per_layer = vec![Capture::NONE; n_layers];
        for &l in layers.iter().filter(|&&l| l < n_layers) {
            per_layer[l] = set;
        }
        CaptureSpec { per_layer }
    }

    /// Post-rotary keys of every layer: the scorer's input.
    pub fn keys(n_layers: usize) -> CaptureSpec {
        CaptureSpec { per_layer: vec![Capture::KEYS; n_layers] }
    }

    /// What to capture from `layer`.
    pub fn wants(&self, layer: usize) -> Capture {
        self.per_layer.get(layer).copied().unwrap_or(Capture::NONE)
    }

    /// Number of layers the spec covers.
    pub fn n_layers(&self) -> usize {
        self.per_layer.len()
    }
}

/// One captured tensor, head-major: `heads` vectors of `rows * dim` values, row `r`
/// (position `first + r`) at `r * dim .. (r + 1) * dim`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Heads (KV heads for keys and values, query heads for queries and attention).
    pub heads: usize,
    /// Positions captured (`T`).
    pub rows: usize,
    /// Values per head and position: the head dimension, or the number of key positions
    /// for attention weights.
    pub dim: usize,
    /// `heads` vectors of `rows * dim`.
    pub data: Vec<Vec<f32>>,
}

impl Tensor {
    /// The `[heads, rows, dim]` shape.
    pub fn shape(&self) -> [usize; 3] {
        [self.heads, self.rows, self.dim]
    }

    /// Row `r` of head `h`.
    pub fn row(&self, h: usize, r: usize) -> &[f32] {
        &self.data[h][r * self.dim..(r + 1) * self.dim]
    }
}

/// A tensor being filled, and which rows have arrived.
#[derive(Debug)]
struct Slot {
    tensor: Tensor,
    filled: Vec<bool>,
}

/// The observer that collects captured tensors for `n_tokens` positions starting at
/// absolute position `first`. Rows for other positions are ignored.
#[derive(Debug)]
pub struct Recorder {
    spec: CaptureSpec,
    first: u32,
    n_tokens: usize,
    slots: BTreeMap<(usize, Kind), Slot>,
    busy: Duration,
}

impl Recorder {
    /// A recorder for positions `first .. first + n_tokens`.
    pub fn new(spec: CaptureSpec, first: u32, n_tokens: usize) -> Recorder {
        Recorder { spec, first, n_tokens, slots: BTreeMap::new(), busy: Duration::ZERO }
    }

    /// Time spent so far inside [`Observer::on_capture`]: what capturing added to the
    /// forward passes (the model does nothing else differently for an observer).
    pub fn busy(&self) -> Duration {
        self.busy
    }

    /// The collected tensors.
    ///
    /// # Errors
    /// [`InspectError::Incomplete`] when a requested layer and kind did not receive every
    /// position.
    pub fn finish(self) -> Result<Captures, InspectError> {
        for l in 0..self.spec.n_layers() {
            for kind in Kind::ALL.into_iter().filter(|k| self.spec.wants(l).contains(k.capture())) {
                let got = self.slots.get(&(l, kind)).map_or(0, |s| s.filled.iter().filter(|&&f| f).count());
                if got != self.n_tokens {
                    return Err(InspectError::Incomplete { layer: l, kind: kind.name(), got, expected: self.n_tokens });
                }
            }
        }
        let tensors = self.slots.into_iter().map(|(k, s)| (k, s.tensor)).collect();
        Ok(Captures { first: self.first, n_tokens: self.n_tokens, n_layers: self.spec.n_layers(), tensors })
    }
}

impl Observer for Recorder {
    fn wants(&self, layer: usize) -> Capture {
        self.spec.wants(layer)
    }

    fn on_capture(&mut self, c: Captured<'_>) {
        let start = Instant::now();
        self.record(c);
        self.busy += start.elapsed();
    }
}

impl Recorder {
    fn record(&mut self, c: Captured<'_>) {
        let kind = Kind::from_model(c.kind);
        let (first, n) = (self.first, self.n_tokens);
        // Attention columns are absolute key positions 0 .. first + T.
        let dim = if kind == Kind::Attention { first as usize + n } else { c.dim };
        let slot = self.slots.entry((c.layer, kind)).or_insert_with(|| Slot {
            tensor: Tensor { heads: c.heads, rows: n, dim, data: vec![vec![0.0; n * dim]; c.heads] },
            filled: vec![false; n],
        });
        if slot.tensor.heads != c.heads || (kind != Kind::Attention && slot.tensor.dim != c.dim) {
            return; // A different geometry for the same layer cannot happen in one model.
        }
        let row_len = c.heads * c.dim;
        for (i, &p) in c.positions.iter().enumerate() {
            let Some(r) = p.checked_sub(first).map(|r| r as usize).filter(|&r| r < n) else { continue };
            let src = &c.data[i * row_len..(i + 1) * row_len];
            for (h, head) in src.chunks_exact(c.dim).enumerate() {
                let dst = &mut slot.tensor.data[h][r * dim..(r + 1) * dim];
                if kind == Kind::Attention {
                    for (&kp, &w) in c.key_positions.iter().zip(head) {
                        if (kp as usize) < dim {
                            dst[kp as usize] = w;
                        }
                    }
                } else {
                    dst.copy_from_slice(head);
                }
            }
            slot.filled[r] = true;
        }
    }
}

/// Tensors captured from one prompt, by layer and kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Captures {
    first: u32,
    n_tokens: usize,
    n_layers: usize,
    tensors: BTreeMap<(usize, Kind), Tensor>,
}

impl Captures {
    /// Absolute position of the first captured row.
    pub fn first_position(&self) -> u32 {
        self.first
    }

    /// Number of positions (`T`).
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// Number of layers of the model.
    pub fn n_layers(&self) -> usize {
        self.n_layers
    }

    /// The tensor of `kind` from `layer`, if it was captured.
    pub fn get(&self, layer: usize, kind: Kind) -> Option<&Tensor> {
        self.tensors.get(&(layer, kind))
    }

    /// Every tensor, ordered by layer, then kind.
    pub fn iter(&self) -> impl Iterator<Item = (usize, Kind, &Tensor)> {
        self.tensors.iter().map(|(&(l, k), t)| (l, k, t))
    }

    /// The post-rotary keys as a key snapshot (spec §1); layers without captured keys
    /// are absent. `meta.post_rotary` is set to `true`.
    ///
    /// # Errors
    /// [`InspectError::Score`] when the snapshot is invalid (for instance a NaN key, or
    /// `meta.token_ids` not `T` long).
    pub fn into_key_snapshot(mut self, mut meta: SnapshotMeta) -> Result<KeySnapshot, InspectError> {
        meta.post_rotary = true;
        let (mut heads, mut dim) = (0, 0);
        let layers: Vec<_> = (0..self.n_layers)
            .map(|l| {
                self.tensors.remove(&(l, Kind::Keys)).map(|t| {
                    (heads, dim) = (t.heads, t.dim);
                    t.data
                })
            })
            .collect();
        Ok(KeySnapshot::new(meta, heads, self.n_tokens, dim, layers)?)
    }
}

/// Runs `ids` through `model`, appending to `cache` (after whatever it holds), in calls
/// of at most [`Model::max_batch`] tokens, with a [`Recorder`] for `spec`. No logits are
/// computed. The cache ends up exactly as a plain prefill leaves it.
pub fn capture_prefill(
    model: &Model,
    threads: &Threads,
    cache: &mut SeqCache,
    ws: &mut Workspace,
    ids: &[u32],
    spec: CaptureSpec,
) -> Result<Captures, InspectError> {
    let mut rec = Recorder::new(spec, cache.len(), ids.len());
    prefill(model, threads, cache, ws, ids, Some(&mut rec))?;
    rec.finish()
}

/// The same prefill as [`capture_prefill`], with or without an observer.
pub(crate) fn prefill(
    model: &Model,
    threads: &Threads,
    cache: &mut SeqCache,
    ws: &mut Workspace,
    ids: &[u32],
    mut observer: Option<&mut dyn Observer>,
) -> Result<(), InspectError> {
    if ids.is_empty() {
        return Err(InspectError::EmptyPrompt);
    }
    for chunk in ids.chunks(model.max_batch()) {
        let mut input = [SeqInput { tokens: chunk, cache: &mut *cache, logits: LogitsRequest::None }];
        let obs: Option<&mut dyn Observer> = match &mut observer {
            Some(o) => Some(&mut **o),
            None => None,
        };
        model.forward(&mut input, ws, threads, obs)?;
    }
    Ok(())
}
