//! The worked micro-examples of the spec (§7), one test each.

mod common;

use common::{Expect, check, head, snap};
use lem_score::{cos, entropy};

/// "Two identical non-zero heads in a layer: pair cosine 1 → locked."
#[test]
fn identical_heads_are_locked() {
    let a = vec![0.3f32, -1.25, 2.0, 0.5];
    assert_eq!(cos(&a, &a), 1.0);

    // Five heads (many-head regime), T = 1, D = 4: heads 0 and 1 identical, the rest
    // orthogonal to them and to each other. One of the ten pairs is locked.
    let h = vec![
        vec![1.0, 0.0, 0.0, 0.0],
        vec![1.0, 0.0, 0.0, 0.0],
        vec![0.0, 1.0, 0.0, 0.0],
        vec![0.0, 0.0, 1.0, 0.0],
        vec![0.0, 0.0, 0.0, 1.0],
    ];
    check(
        "identical heads",
        &snap(5, 1, 4, vec![h]),
        Expect {
            phase_lock: Some(0.1),
            mean_coherence: Some(0.1),
            layer_coherence: Some(vec![0.1]),
            few_heads: Some(false),
            ..Default::default()
        },
    );
}

/// "A single-layer snapshot: cross alignment 0, collapse 0, joint 1." In both regimes.
#[test]
fn single_layer_has_no_cross_alignment() {
    let want = Expect {
        mean_cross_alignment: Some(0.0),
        collapse_count: Some(0),
        joint: Some(1.0),
        layer_cross_alignment: Some(vec![]),
        ..Default::default()
    };
    let few = snap(2, 2, 2, vec![vec![vec![1.0, 0.0, 0.0, 1.0], vec![1.0, 1.0, 1.0, 1.0]]]);
    check("single layer, few-head", &few, Expect { few_heads: Some(true), ..want.clone() });
    let many = snap(5, 2, 2, vec![(0..5).map(|i| vec![1.0, i as f32, 0.5, -1.0]).collect()]);
    check("single layer, many-head", &many, Expect { few_heads: Some(false), ..want });
}

/// "`T = 4`, all position magnitudes equal: entropy exactly 1."
#[test]
fn equal_magnitudes_give_entropy_exactly_one() {
    let flat = head(&[&[3.0, 4.0], &[-5.0, 0.0], &[0.0, 5.0], &[4.0, -3.0]]);
    assert_eq!(entropy(&flat, 4, 2), 1.0);
    let s = check("uniform", &snap(1, 4, 2, vec![vec![flat]]), Expect::default());
    assert_eq!(s.mean_head_entropy, 1.0);
}

/// "One position holds all the magnitude: entropy exactly 0."
#[test]
fn one_position_with_all_magnitude_gives_entropy_exactly_zero() {
    let flat = head(&[&[0.0, 0.0], &[0.0, 0.0], &[2.5, -1.0], &[0.0, 0.0]]);
    let e = entropy(&flat, 4, 2);
    assert_eq!(e, 0.0);
    assert!(e.is_sign_positive(), "no negative zero");
    let s = check("concentrated", &snap(1, 4, 2, vec![vec![flat]]), Expect::default());
    assert_eq!(s.mean_head_entropy, 0.0);
}

/// "Few-head, 3 layers with `diff = 0.4, 0.4, 0.4`: smooth = 1, 1; spread 0;
/// scaled_diff = 0.5; composite = (0.45*0.5 + 0 + 0.15*entropy + 0.15) * 10000."
///
/// Each layer's head 0 has two positions at cosine 0.6 exactly ((5,0)·(3,4) = 15 = 0.6 ·
/// 5 · 5), so diff = 1 − 0.6 = 0.4 exactly.
#[test]
fn few_head_constant_diff_example() {
    let layer = |a: &[f32], b: &[f32]| vec![head(&[a, b])];
    // Equal magnitudes in every layer: entropy 1, composite (0.225 + 0.15 + 0.15) · 10⁴.
    let equal = snap(
        1,
        2,
        2,
        vec![layer(&[5.0, 0.0], &[3.0, 4.0]), layer(&[0.0, 5.0], &[4.0, 3.0]), layer(&[-3.0, 4.0], &[-5.0, 0.0])],
    );
    let s = check(
        "few-head diff 0.4, entropy 1",
        &equal,
        Expect {
            few_heads: Some(true),
            mean_coherence: Some(0.4),
            layer_coherence: Some(vec![0.4; 3]),
            layer_cross_alignment: Some(vec![1.0, 1.0]),
            mean_cross_alignment: Some(1.0),
            collapse_count: Some(0),
            mean_head_entropy: Some(1.0),
            composite: Some(5250),
            ..Default::default()
        },
    );
    assert_eq!(s.layer_cross_alignment, vec![1.0, 1.0], "smooth is exactly 1");

    // Unequal magnitudes in the middle layer ((5,0) and (6,8): cosine 0.6, magnitudes
    // 5 and 10): entropy (1 + H(1/3, 2/3) + 1) / 3, diff still 0.4 everywhere.
    let mixed = snap(
        1,
        2,
        2,
        vec![layer(&[5.0, 0.0], &[3.0, 4.0]), layer(&[5.0, 0.0], &[6.0, 8.0]), layer(&[0.0, 5.0], &[4.0, 3.0])],
    );
    let h13 = 3f64.log2() - 2.0 / 3.0;
    let entropy = (1.0 + h13 + 1.0) / 3.0;
    let want = (0.45 * 0.5 + 0.0 + 0.15 * entropy + 0.15) * 10000.0;
    let s = check(
        "few-head diff 0.4, mixed entropy",
        &mixed,
        Expect {
            mean_coherence: Some(0.4),
            layer_cross_alignment: Some(vec![1.0, 1.0]),
            mean_head_entropy: Some(entropy),
            composite: Some(want as u32),
            ..Default::default()
        },
    );
    assert_eq!(s.composite, 5209);
}
