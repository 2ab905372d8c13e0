//! Properties over random snapshots: ranges, head-permutation invariance (many-head),
//! scale invariance, file round trips.

mod common;

use common::{check_invariants, close, meta};
use lem_score::{KeySnapshot, LayerKeys, Scores, score};
use proptest::prelude::*;

/// A key value: mostly continuous in (-4, 4), sometimes exactly 0 (zero vectors and
/// zero positions are the interesting corner cases).
fn elem() -> impl Strategy<Value = f32> {
    prop_oneof![1 => Just(0.0f32), 8 => -4.0f32..4.0]
}

/// Random snapshots: `L` in 0..=4, `H` in `heads`, `T` in 0..=5, `D` in 0..=4, each layer
/// absent with probability 0.15.
fn arb_snapshot(heads: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = KeySnapshot> {
    (0usize..=4, heads, 0usize..=5, 0usize..=4).prop_flat_map(|(l, h, t, d)| {
        let layer =
            proptest::option::weighted(0.85, proptest::collection::vec(proptest::collection::vec(elem(), t * d), h));
        proptest::collection::vec(layer, l).prop_map(move |layers| KeySnapshot::new(meta(t), h, t, d, layers).unwrap())
    })
}

fn map_keys(s: &KeySnapshot, f: impl Fn(f32) -> f32) -> KeySnapshot {
    let layers: Vec<Option<LayerKeys>> = (0..s.n_layers())
        .map(|l| s.layer_keys(l).map(|heads| heads.iter().map(|h| h.iter().map(|&x| f(x)).collect()).collect()))
        .collect();
    KeySnapshot::new(s.meta().clone(), s.n_kv_heads(), s.n_tokens(), s.head_dim(), layers).unwrap()
}

/// The continuous outputs agree to `tol`.
fn assert_continuous_close(a: &Scores, b: &Scores, tol: f64) {
    let pairs = [
        ("mean_coherence", a.mean_coherence, b.mean_coherence),
        ("mean_cross_alignment", a.mean_cross_alignment, b.mean_cross_alignment),
        ("mean_head_entropy", a.mean_head_entropy, b.mean_head_entropy),
    ];
    for (name, x, y) in pairs {
        assert!(close(x, y, tol), "{name}: {x} vs {y}");
    }
    assert_eq!(a.layer_coherence.len(), b.layer_coherence.len());
    for (x, y) in a.layer_coherence.iter().zip(&b.layer_coherence) {
        assert!(close(*x, *y, tol), "layer_coherence: {x} vs {y}");
    }
    assert_eq!(a.layer_cross_alignment.len(), b.layer_cross_alignment.len());
    for (x, y) in a.layer_cross_alignment.iter().zip(&b.layer_cross_alignment) {
        assert!(close(*x, *y, tol), "layer_cross_alignment: {x} vs {y}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Every output is finite and in range, whatever the input (see `check_invariants`).
    #[test]
    fn scores_are_in_range(s in arb_snapshot(0..=8)) {
        let sc = score(&s);
        check_invariants("random", &s, &sc);
        let json = serde_json::to_string(&sc).unwrap();
        let back: Scores = serde_json::from_str(&json).unwrap();
        assert_eq!(back.composite, sc.composite);
        assert_continuous_close(&back, &sc, 1e-15);
    }

    /// Many-head results do not depend on the order of the heads (each layer permuted
    /// independently). Each head pair's cosine is bit-identical either way, so
    /// `phase_lock` is exact; the sums in other orders agree to rounding.
    #[test]
    fn permuting_heads_changes_nothing(
        (s, perms) in arb_snapshot(5..=7).prop_flat_map(|s| {
            let h = s.n_kv_heads();
            let perms = proptest::collection::vec(Just((0..h).collect::<Vec<_>>()).prop_shuffle(), s.n_layers());
            (Just(s), perms)
        })
    ) {
        let layers: Vec<Option<LayerKeys>> = (0..s.n_layers())
            .map(|l| s.layer_keys(l).map(|heads| perms[l].iter().map(|&i| heads[i].clone()).collect()))
            .collect();
        let p = KeySnapshot::new(s.meta().clone(), s.n_kv_heads(), s.n_tokens(), s.head_dim(), layers).unwrap();
        let (a, b) = (score(&s), score(&p));
        assert_continuous_close(&a, &b, 1e-9);
        prop_assert_eq!(a.phase_lock, b.phase_lock);
        prop_assert_eq!(a.collapse_count, b.collapse_count);
        prop_assert_eq!(a.few_heads, b.few_heads);
        // The composite truncates a sum that may move by an ulp: at most 1 apart.
        prop_assert!(a.composite.abs_diff(b.composite) <= 1, "{} vs {}", a.composite, b.composite);
    }

    /// Scaling every key by a power of two is exact in f32 and f64, so every output is
    /// bit-identical, composite included.
    #[test]
    fn power_of_two_scaling_changes_nothing(s in arb_snapshot(0..=8), k in -12i32..=12) {
        let c = 2f32.powi(k);
        let scaled = map_keys(&s, |x| x * c);
        prop_assert_eq!(score(&scaled), score(&s));
    }

    /// Any other positive factor rounds the stored f32 keys (relative error up to 6e-8),
    /// so the continuous outputs move by about 1e-7; the threshold counts and the
    /// truncated composite can flip at a boundary and are not compared.
    #[test]
    fn positive_scaling_keeps_continuous_scores(s in arb_snapshot(0..=8), c in 0.01f32..100.0) {
        let scaled = map_keys(&s, |x| x * c);
        assert_continuous_close(&score(&scaled), &score(&s), 1e-5);
    }

    /// Saving and loading returns the same snapshot.
    #[test]
    fn file_round_trip(s in arb_snapshot(0..=6)) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.safetensors");
        s.save(&p).unwrap();
        prop_assert_eq!(KeySnapshot::load(&p).unwrap(), s);
    }
}
