//! The scorer (§3 – §6): two regimes, the composite, the feature vector.

use serde::{Deserialize, Serialize};

use crate::KeySnapshot;
use crate::math::{cos, entropy, mean_vec, pair_cosines, sq_norm};

/// Labels of [`Scores::features`], in order.
pub const FEATURE_LABELS: [&str; 5] =
    ["mean_coherence", "cross_alignment", "head_entropy", "phase_lock", "joint_stability"];

/// Snapshots with at least this many KV heads are scored in the many-head regime; fewer
/// heads select the few-head regime.
pub const MANY_HEAD_MIN_HEADS: usize = 5;

/// Many-head: a head pair with cosine `>=` this is locked.
const MANY_LOCK_COS: f64 = 0.7;
/// Few-head: a position pair with cosine `<` this is locked (well separated). The spec
/// writes it as `1 − 0.7`; the literal `0.3` is used, since in f64 `1.0 - 0.7` is
/// `0.30000000000000004`.
const FEW_LOCK_COS: f64 = 0.3;
/// A cross-layer alignment (many-head) or smoothness (few-head) `<` this is a collapse.
const COLLAPSE_BELOW: f64 = 0.5;

/// The result of [`score`]. Field names are the JSON names of the spec (§6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Many-head: mean head-pair cosine per layer, averaged over layers. Few-head: mean
    /// position-pair dissimilarity `diff_l`, averaged over layers.
    pub mean_coherence: f64,
    /// Many-head: mean cosine between adjacent layers' mean heads. Few-head: mean
    /// smoothness `1 − |diff_{l+1} − diff_l|` of adjacent layers.
    pub mean_cross_alignment: f64,
    /// Mean normalised entropy of the per-position key magnitudes (in `[0, 1]`).
    pub mean_head_entropy: f64,
    /// Fraction of evaluated pairs that are locked (in `[0, 1]`).
    pub phase_lock: f64,
    /// Number of adjacent-layer pairs below the collapse threshold.
    pub collapse_count: usize,
    /// Per layer (length `L`): `coh_l` (many-head) or `diff_l` (few-head); 0 for an
    /// absent layer.
    pub layer_coherence: Vec<f64>,
    /// Per adjacent pair `(l, l+1)` (length `L − 1`): `cross_l` (many-head) or `smooth_l`
    /// (few-head); 0 where either layer is absent.
    pub layer_cross_alignment: Vec<f64>,
    /// Whether the few-head regime (`H <= 4`) was used.
    pub few_heads: bool,
    /// The composite score, an integer in `0..=10000`.
    pub composite: u32,
    /// `[mean_coherence, mean_cross_alignment, mean_head_entropy, phase_lock, joint]`;
    /// five zeros for a missing result.
    pub features: [f64; 5],
    /// [`FEATURE_LABELS`], carried so that the JSON is self-describing.
    pub feature_labels: [String; 5],
}

impl Scores {
    /// The missing result: every metric 0, composite 0, features five zeros, per-layer
    /// lists of zeros of lengths `n_layers` and `n_layers − 1`.
    pub fn missing(few_heads: bool, n_layers: usize) -> Self {
        Self {
            mean_coherence: 0.0,
            mean_cross_alignment: 0.0,
            mean_head_entropy: 0.0,
            phase_lock: 0.0,
            collapse_count: 0,
            layer_coherence: vec![0.0; n_layers],
            layer_cross_alignment: vec![0.0; n_layers.saturating_sub(1)],
            few_heads,
            composite: 0,
            features: [0.0; 5],
            feature_labels: FEATURE_LABELS.map(String::from),
        }
    }

    /// `joint = max(0, 1 − 0.2 * collapse_count)` (the fifth feature).
    pub fn joint(&self) -> f64 {
        self.features[4]
    }
}

/// `max(0, 1 − 0.2 * collapses)`.
fn joint(collapses: usize) -> f64 {
    (1.0 - 0.2 * collapses as f64).max(0.0)
}

/// `s * 10000` truncated toward zero, then clamped to `[0, 10000]` (NaN, impossible for a
/// valid snapshot, gives 0).
fn composite(s: f64) -> u32 {
    let x = (s * 10000.0).trunc();
    if x.is_nan() { 0 } else { x.clamp(0.0, 10000.0) as u32 }
}

/// Accumulated per-regime results, turned into [`Scores`] by [`Acc::finish`].
struct Acc {
    layer_coherence: Vec<f64>,
    layer_cross: Vec<f64>,
    ent: f64,
    locked: usize,
    pairs: usize,
    collapses: usize,
}

impl Acc {
    fn new(n_layers: usize) -> Self {
        Self {
            layer_coherence: vec![0.0; n_layers],
            layer_cross: vec![0.0; n_layers.saturating_sub(1)],
            ent: 0.0,
            locked: 0,
            pairs: 0,
            collapses: 0,
        }
    }
}

/// Sum in index order from `+0.0`.
fn sum(xs: &[f64]) -> f64 {
    let mut s = 0.0;
    for &x in xs {
        s += x;
    }
    s
}

/// Scores a key snapshot (spec §3 – §5). Total: never fails, never panics, and every
/// output is finite.
///
/// The regime is chosen by `H`: many-head for `H >= 5`, few-head for `H <= 4`. A snapshot
/// with no layers, no present layer, `H == 0`, `T == 0` or `D == 0` (and, in the few-head
/// regime, `T < 2`) yields [`Scores::missing`]. See the crate docs for every decision
/// beyond the spec.
pub fn score(snap: &KeySnapshot) -> Scores {
    let l = snap.n_layers();
    if l == 0 {
        return Scores::missing(false, 0);
    }
    let (h, t, d) = (snap.n_kv_heads(), snap.n_tokens(), snap.head_dim());
    let few = h < MANY_HEAD_MIN_HEADS;
    let any_present = (0..l).any(|i| snap.has_layer(i));
    if !any_present || h == 0 || t == 0 || d == 0 || (few && t < 2) {
        return Scores::missing(few, l);
    }
    if few { few_head(snap) } else { many_head(snap) }
}

fn many_head(snap: &KeySnapshot) -> Scores {
    let (l, h, t, d) = (snap.n_layers(), snap.n_kv_heads(), snap.n_tokens(), snap.head_dim());
    let mut acc = Acc::new(l);
    let mut prev_mean: Option<Vec<f64>> = None;
    for li in 0..l {
        let Some(heads) = snap.layer_keys(li) else {
            prev_mean = None;
            continue;
        };
        let norms: Vec<f64> = heads.iter().map(|k| sq_norm(k)).collect();
        let mut coh = 0.0;
        let mut n_pairs = 0usize;
        pair_cosines(heads, &norms, |_, _, c| {
            coh += c;
            n_pairs += 1;
            if c >= MANY_LOCK_COS {
                acc.locked += 1;
            }
        });
        acc.layer_coherence[li] = if n_pairs > 0 { coh / n_pairs as f64 } else { 0.0 };
        acc.pairs += n_pairs;
        for k in heads {
            acc.ent += entropy(k, t, d);
        }
        let mean = mean_vec(heads);
        if let Some(prev) = &prev_mean {
            let c = cos(prev, &mean);
            acc.layer_cross[li - 1] = c;
            if c < COLLAPSE_BELOW {
                acc.collapses += 1;
            }
        }
        prev_mean = Some(mean);
    }

    let mean_coherence = sum(&acc.layer_coherence) / l as f64;
    let mean_cross_alignment = if l > 1 { sum(&acc.layer_cross) / (l - 1) as f64 } else { 0.0 };
    let mean_head_entropy = acc.ent / (l * h) as f64;
    let phase_lock = ratio(acc.locked, acc.pairs);
    let joint = joint(acc.collapses);
    let s = 0.30 * mean_coherence
        + 0.25 * mean_cross_alignment
        + 0.20 * phase_lock
        + 0.15 * mean_head_entropy
        + 0.10 * joint;
    finish(acc, false, [mean_coherence, mean_cross_alignment, mean_head_entropy, phase_lock, joint], s)
}

fn few_head(snap: &KeySnapshot) -> Scores {
    let (l, t, d) = (snap.n_layers(), snap.n_tokens(), snap.head_dim());
    let mut acc = Acc::new(l);
    let mut prev_diff: Option<f64> = None;
    for li in 0..l {
        let Some(heads) = snap.layer_keys(li) else {
            prev_diff = None;
            continue;
        };
        let k = &heads[0];
        // Widened once (exactly) rather than once per pair.
        let wide: Vec<f64> = k.iter().map(|&x| f64::from(x)).collect();
        let pos: Vec<&[f64]> = wide.chunks_exact(d).collect();
        let norms: Vec<f64> = pos.iter().map(|v| sq_norm(v)).collect();
        let mut sim = 0.0;
        let mut n_pairs = 0usize;
        pair_cosines(&pos, &norms, |_, _, c| {
            sim += c;
            n_pairs += 1;
            if c < FEW_LOCK_COS {
                acc.locked += 1;
            }
        });
        // t >= 2 here, so n_pairs >= 1.
        let diff = 1.0 - sim / n_pairs as f64;
        acc.layer_coherence[li] = diff;
        acc.pairs += n_pairs;
        acc.ent += entropy(k, t, d);
        if let Some(prev) = prev_diff {
            let smooth = 1.0 - (diff - prev).abs();
            acc.layer_cross[li - 1] = smooth;
            if smooth < COLLAPSE_BELOW {
                acc.collapses += 1;
            }
        }
        prev_diff = Some(diff);
    }

    let lf = l as f64;
    let mean_coherence = sum(&acc.layer_coherence) / lf;
    let mean_cross_alignment = if l > 1 { sum(&acc.layer_cross) / (l - 1) as f64 } else { 0.0 };
    let mean_head_entropy = acc.ent / lf;
    let phase_lock = ratio(acc.locked, acc.pairs);
    let joint = joint(acc.collapses);
    let spread = if l > 1 {
        let mut ss = 0.0;
        for &x in &acc.layer_coherence {
            ss += (x - mean_coherence) * (x - mean_coherence);
        }
        (ss / lf).sqrt()
    } else {
        0.0
    };
    let scaled_diff = ((mean_coherence - 0.1) / 0.6).clamp(0.0, 1.0);
    let scaled_spread = (spread / 0.2).min(1.0);
    let s = 0.45 * scaled_diff + 0.25 * scaled_spread + 0.15 * mean_head_entropy + 0.15 * joint;
    finish(acc, true, [mean_coherence, mean_cross_alignment, mean_head_entropy, phase_lock, joint], s)
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 { 0.0 } else { num as f64 / den as f64 }
}

fn finish(acc: Acc, few_heads: bool, features: [f64; 5], s: f64) -> Scores {
    Scores {
        mean_coherence: features[0],
        mean_cross_alignment: features[1],
        mean_head_entropy: features[2],
        phase_lock: features[3],
        collapse_count: acc.collapses,
        layer_coherence: acc.layer_coherence,
        layer_cross_alignment: acc.layer_cross,
        few_heads,
        composite: composite(s),
        features,
        feature_labels: FEATURE_LABELS.map(String::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_truncates_then_clamps() {
        assert_eq!(composite(0.52509), 5250);
        assert_eq!(composite(0.99999999), 9999);
        assert_eq!(composite(1.5), 10000);
        assert_eq!(composite(-0.3), 0);
        assert_eq!(composite(-0.00001), 0);
        assert_eq!(composite(f64::NAN), 0);
    }

    #[test]
    fn joint_floors_at_zero() {
        assert_eq!(joint(0), 1.0);
        assert!((joint(2) - 0.6).abs() < 1e-15);
        assert_eq!(joint(5), 0.0);
        assert_eq!(joint(9), 0.0);
    }
}
