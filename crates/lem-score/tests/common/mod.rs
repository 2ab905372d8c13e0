//! Shared helpers: snapshot builders and a data-driven `check` of [`Scores`].
#![allow(dead_code)]

use lem_score::{KeySnapshot, LayerKeys, Scores, SnapshotMeta};

/// Metadata for a prompt of `t` tokens.
pub fn meta(t: usize) -> SnapshotMeta {
    SnapshotMeta {
        model_fingerprint: "sha256:test".into(),
        model_name: "test-model".into(),
        token_ids: (0..t as u32).collect(),
        post_rotary: true,
    }
}

/// A snapshot with every layer present.
pub fn snap(h: usize, t: usize, d: usize, layers: Vec<LayerKeys>) -> KeySnapshot {
    KeySnapshot::new(meta(t), h, t, d, layers.into_iter().map(Some).collect()).unwrap()
}

/// A snapshot where `None` marks an absent layer.
pub fn snap_opt(h: usize, t: usize, d: usize, layers: Vec<Option<LayerKeys>>) -> KeySnapshot {
    KeySnapshot::new(meta(t), h, t, d, layers).unwrap()
}

/// Concatenates position vectors into one flat position-major head.
pub fn head(positions: &[&[f32]]) -> Vec<f32> {
    positions.concat()
}

/// What a test expects of a [`Scores`]; `None` fields are not checked. Floats are
/// compared to 1e-12 absolute.
#[derive(Default, Debug, Clone)]
pub struct Expect {
    pub mean_coherence: Option<f64>,
    pub mean_cross_alignment: Option<f64>,
    pub mean_head_entropy: Option<f64>,
    pub phase_lock: Option<f64>,
    pub collapse_count: Option<usize>,
    pub layer_coherence: Option<Vec<f64>>,
    pub layer_cross_alignment: Option<Vec<f64>>,
    pub few_heads: Option<bool>,
    pub composite: Option<u32>,
    pub joint: Option<f64>,
}

pub const TOL: f64 = 1e-12;

pub fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

fn check_f(name: &str, field: &str, got: f64, want: Option<f64>) {
    if let Some(w) = want {
        assert!(close(got, w, TOL), "{name}: {field} = {got:?}, want {w:?}");
    }
}

fn check_list(name: &str, field: &str, got: &[f64], want: &Option<Vec<f64>>) {
    if let Some(w) = want {
        assert_eq!(got.len(), w.len(), "{name}: {field} length: {got:?} vs {w:?}");
        for (i, (&g, &w)) in got.iter().zip(w).enumerate() {
            assert!(close(g, w, TOL), "{name}: {field}[{i}] = {g:?}, want {w:?}");
        }
    }
}

/// Scores `snap` and checks it against `want`, plus the invariants every result has.
pub fn check(name: &str, snap: &KeySnapshot, want: Expect) -> Scores {
    let s = lem_score::score(snap);
    check_invariants(name, snap, &s);
    check_f(name, "mean_coherence", s.mean_coherence, want.mean_coherence);
    check_f(name, "mean_cross_alignment", s.mean_cross_alignment, want.mean_cross_alignment);
    check_f(name, "mean_head_entropy", s.mean_head_entropy, want.mean_head_entropy);
    check_f(name, "phase_lock", s.phase_lock, want.phase_lock);
    check_f(name, "joint", s.joint(), want.joint);
    check_list(name, "layer_coherence", &s.layer_coherence, &want.layer_coherence);
    check_list(name, "layer_cross_alignment", &s.layer_cross_alignment, &want.layer_cross_alignment);
    if let Some(c) = want.collapse_count {
        assert_eq!(s.collapse_count, c, "{name}: collapse_count");
    }
    if let Some(f) = want.few_heads {
        assert_eq!(s.few_heads, f, "{name}: few_heads");
    }
    if let Some(c) = want.composite {
        assert_eq!(s.composite, c, "{name}: composite");
    }
    s
}

/// Properties of every result, whatever the input.
pub fn check_invariants(name: &str, snap: &KeySnapshot, s: &Scores) {
    let l = snap.n_layers();
    assert!(s.composite <= 10_000, "{name}: composite {}", s.composite);
    for (i, f) in s.features.iter().enumerate() {
        assert!(f.is_finite(), "{name}: feature {i} = {f}");
    }
    assert_eq!(
        s.features,
        [s.mean_coherence, s.mean_cross_alignment, s.mean_head_entropy, s.phase_lock, s.joint()],
        "{name}: features"
    );
    assert_eq!(s.feature_labels, lem_score::FEATURE_LABELS.map(String::from), "{name}");
    assert!((0.0..=1.0).contains(&s.mean_head_entropy), "{name}: entropy {}", s.mean_head_entropy);
    assert!((0.0..=1.0).contains(&s.phase_lock), "{name}: phase_lock {}", s.phase_lock);
    assert!((0.0..=1.0).contains(&s.joint()), "{name}: joint {}", s.joint());
    assert!((-1.0..=1.0).contains(&s.mean_cross_alignment), "{name}: cross {}", s.mean_cross_alignment);
    let coh_range = if s.few_heads { 0.0..=2.0 } else { -1.0..=1.0 };
    assert!(coh_range.contains(&s.mean_coherence), "{name}: coherence {}", s.mean_coherence);
    assert_eq!(s.layer_coherence.len(), l, "{name}: layer_coherence length");
    assert_eq!(s.layer_cross_alignment.len(), l.saturating_sub(1), "{name}: cross length");
    for &x in &s.layer_coherence {
        assert!(coh_range.contains(&x), "{name}: layer coherence {x}");
    }
    for &x in &s.layer_cross_alignment {
        assert!((-1.0..=1.0).contains(&x), "{name}: layer cross {x}");
    }
    assert!(s.collapse_count <= l.saturating_sub(1), "{name}: collapses {}", s.collapse_count);
    if l > 0 {
        assert_eq!(s.few_heads, snap.n_kv_heads() <= 4, "{name}: regime");
    }
    // A missing result is five zeros; otherwise joint follows the collapse count.
    if s.features != [0.0; 5] {
        let joint = (1.0 - 0.2 * s.collapse_count as f64).max(0.0);
        assert_eq!(s.joint(), joint, "{name}: joint");
    }
}
