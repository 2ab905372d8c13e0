//! Attention scoring: key-geometry metrics computed from a saved key snapshot.
//!
//! This crate implements the contract in `specs/attention-scoring.md` (the spec): given the
//! post-rotary keys of one forward pass ([`KeySnapshot`]), [`score`] computes coherence,
//! cross-layer alignment, head entropy, phase lock, collapse count, an integer composite
//! in `0..=10000` and a five-number feature vector ([`Scores`]). It depends on no model
//! crate: a snapshot file ([`KeySnapshot::save`] / [`KeySnapshot::load`]) is all it needs.
//! `docs/attention.md` explains the metrics in plain words.
//!
//! ```
//! use lem_score::{KeySnapshot, SnapshotMeta, score};
//!
//! // 1 layer, 1 KV head (few-head regime), T = 2 positions, D = 2.
//! let meta = SnapshotMeta { token_ids: vec![1, 2], post_rotary: true, ..Default::default() };
//! let keys = vec![vec![5.0, 0.0, 3.0, 4.0]]; // positions (5, 0) and (3, 4): cosine 0.6
//! let snap = KeySnapshot::new(meta, 1, 2, 2, vec![Some(keys)]).unwrap();
//! let s = score(&snap);
//! assert!(s.few_heads);
//! assert_eq!(s.mean_coherence, 0.4); // diff = 1 - 0.6
//! assert_eq!(s.mean_head_entropy, 1.0); // equal magnitudes
//! ```
//!
//! # Snapshot file
//!
//! A safetensors file. Each layer `l` that has keys is one f32 tensor `keys.{l}` of shape
//! `[H, T, D]`, little-endian, C order (so head `h` is the flat position-major `[T*D]`
//! vector of the spec), written in layer order. A layer without keys has no tensor. The
//! string metadata holds:
//!
//! | key | value |
//! |---|---|
//! | `format` | `lem-keys` |
//! | `format_version` | `1` |
//! | `model_fingerprint`, `model_name` | free-form strings (may be empty) |
//! | `token_ids` | JSON array of u32, length `n_tokens` |
//! | `n_layers`, `n_kv_heads`, `n_tokens`, `head_dim` | decimal integers `L`, `H`, `T`, `D` |
//! | `post_rotary` | `true` or `false` |
//!
//! All keys are required; unknown keys are ignored. [`KeySnapshot::save`] is atomic
//! (temporary file in the same directory, fsync, rename, fsync of the directory).
//! [`KeySnapshot::load`] validates everything and reports a typed [`ScoreError`]; it
//! never panics. It refuses `n_layers` or `n_kv_heads` above 65 536 ([`MAX_LAYERS`],
//! [`MAX_KV_HEADS`]), since zero-size tensors would otherwise let a tiny corrupt file
//! request a huge allocation.
//!
//! # Scoring decisions
//!
//! Where the spec is silent, these choices are made (and mirrored in `docs/attention.md`):
//!
//! 1. **Arithmetic.** Keys are f32; every operation is f64. Sums run sequentially in
//!    index order starting from `+0.0` (pairs in `i < j` order, `i` outer), and
//!    `cos = dot / sqrt(|a|² · |b|²)`: the same as `dot / (|a| |b|)` up to the last bit,
//!    but exactly 1 for a vector with itself (because `sqrt(x²) == x` in binary floating
//!    point). With f32 inputs nothing can overflow or underflow in f64, so with finite
//!    keys every output is finite.
//! 2. **Non-finite keys are refused.** NaN or ±inf in a key means the forward pass was
//!    broken; [`KeySnapshot::new`] (and so [`KeySnapshot::load`]) returns
//!    [`ScoreError::NonFinite`]. The building blocks [`cos`], [`mean_vec`], [`entropy`]
//!    do not check; on non-finite input their result is unspecified.
//! 3. **Rounding clamps.** [`cos`] is clamped to `[-1, 1]` and [`entropy`] to `[0, 1]`;
//!    this only removes last-bit excursions such as `1.0000000000000002`.
//! 4. **Degenerate building-block input gives 0**, extending the spec's rule for `cos`:
//!    [`mean_vec`] of no vectors or of vectors of unequal length is empty (so its cosine
//!    with anything is 0); [`entropy`] is 0 when `D == 0` or `flat.len() != T*D`.
//! 5. **Absent layers** (a layer with no keys, e.g. a layer of a hybrid model with no KV
//!    cache of its own) still count in `L`, as the spec's denominators say. An absent
//!    layer contributes 0 to `layer_coherence` and to the entropy sum; an adjacent pair
//!    involving it is not evaluated: its `layer_cross_alignment` slot is 0 and it can
//!    never count as a collapse. So `layer_coherence` always has `L` entries and
//!    `layer_cross_alignment` `L − 1`, and `mean_coherence` / `mean_cross_alignment` are
//!    exactly the means of those lists (denominators `L` and `L − 1` in both regimes; with
//!    every layer present the few-head "mean of `smooth_l`" is the same thing). The
//!    few-head `spread` is the population standard deviation of the `L`-entry
//!    `layer_coherence` list around `mean_coherence`. `phase_lock` is locked pairs over
//!    pairs actually evaluated (pairs within present layers).
//! 6. **Missing results.** The spec's "every metric 0, composite 0" applies whenever there
//!    is no key data to score: no layers, no present layer, `H == 0`, `T == 0` or
//!    `D == 0`, and in the few-head regime `T < 2`. Then `composite` is 0 and `features`
//!    are five zeros (joint included: a missing result is five zeros), and the per-layer
//!    lists are zeros of lengths `L` and `L − 1`. `few_heads` is `H <= 4`, except for a
//!    snapshot with no layers, where no regime runs and it is `false`. (Taken literally,
//!    `D == 0` in the many-head regime would score every adjacent pair as a collapse;
//!    that is an artefact of empty vectors, not a measurement.) Many heads with `T == 1`
//!    is scored normally: the heads' `D`-vectors are compared and entropy is 0.
//! 7. **Thresholds** are the literals of the spec: many-head locked `cos >= 0.7`;
//!    few-head locked `cos < 0.3` (the literal `0.3`, not `1.0 - 0.7`, which is
//!    `0.30000000000000004` in f64); collapse `cross_l < 0.5` / `smooth_l < 0.5`. So at
//!    exactly the threshold: 0.7 is locked, 0.3 is not, 0.5 is not a collapse.
//! 8. **Composite.** `s` is evaluated left to right exactly as written in the spec, then
//!    `trunc(s · 10000)` clamped to `[0, 10000]`; `s` can be negative in the many-head
//!    regime (negative cosines), which gives 0. No tolerance is added before truncating.
//!    When the exact `s · 10000` is an integer (tidy inputs do this, e.g. `s = 0.695`),
//!    another valid order of operations can land an ulp below and truncate to one less:
//!    two implementations may then differ by 1 in `composite` while every float agrees
//!    far better than 1e-9.
//! 9. **`post_rotary`** is metadata only: [`score`] computes regardless; callers (the CLI)
//!    should refuse or flag snapshots with `post_rotary == false`.
//! 10. **Scale invariance.** Multiplying every key by a power of two changes no output bit
//!     (it is exact in f32 and f64). Any other positive factor is exact in real arithmetic
//!     but rounds the stored f32 keys (relative 6e-8), so the floats move by ~1e-7 and a
//!     threshold count or the truncated composite can flip for values at a boundary.
//! 11. **Cost.** Many-head is `O(L·H²·T·D)`; few-head is `O(L·T²·D)` (all position pairs,
//!     as the spec requires), single-threaded; pair cosines are computed eight at a time
//!     with interleaved dot products, each still summed in index order (bit-identical).
//!     [`KeySnapshot::load`] reads the whole file into memory; [`KeySnapshot::save`]
//!     streams layer by layer.

mod error;
mod file;
mod math;
mod score;
mod snapshot;

pub use error::ScoreError;
pub use file::{FORMAT_TAG, FORMAT_VERSION, MAX_KV_HEADS, MAX_LAYERS};
pub use math::{cos, entropy, mean_vec};
pub use score::{FEATURE_LABELS, MANY_HEAD_MIN_HEADS, Scores, score};
pub use snapshot::{KeySnapshot, LayerKeys, SnapshotMeta};
