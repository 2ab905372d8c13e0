//! Scoring beyond the spec's examples: both regimes computed by hand, the regime
//! boundary, degenerate snapshots, absent layers, the JSON shape, constructor errors.

mod common;

use common::{Expect, check, head, meta, snap, snap_opt};
use lem_score::{KeySnapshot, ScoreError, Scores, score};

/// Five identical heads `v` per layer (T = 2, D = 2).
fn same_heads(v: [f32; 4]) -> Vec<Vec<f32>> {
    vec![v.to_vec(); 5]
}

#[test]
fn many_head_by_hand() {
    // Layer 0: five copies of (1,0 | 0,1); layer 1: five copies of (0,1 | 1,0).
    // coh = 1 in both layers, every pair locked, entropy 1 for every head, the two layer
    // means are orthogonal: cross 0, one collapse, joint 0.8.
    // s = 0.30 + 0 + 0.20 + 0.15 + 0.08 = 0.73.
    let s = snap(5, 2, 2, vec![same_heads([1.0, 0.0, 0.0, 1.0]), same_heads([0.0, 1.0, 1.0, 0.0])]);
    check(
        "many-head by hand",
        &s,
        Expect {
            few_heads: Some(false),
            mean_coherence: Some(1.0),
            layer_coherence: Some(vec![1.0, 1.0]),
            mean_cross_alignment: Some(0.0),
            layer_cross_alignment: Some(vec![0.0]),
            mean_head_entropy: Some(1.0),
            phase_lock: Some(1.0),
            collapse_count: Some(1),
            joint: Some(0.8),
            composite: Some(7300),
        },
    );
}

#[test]
fn many_head_negative_composite_clamps_to_zero() {
    // Heads v, -v, v, -v, v: 4 pairs at +1 (locked), 6 at -1 → coh = -0.2. The next layer
    // negates every head: its mean is the negation, cross = -1, one collapse. T = 1, so
    // entropy 0. s = 0.3·(-0.2) + 0.25·(-1) + 0.2·0.4 + 0 + 0.1·0.8 = -0.15.
    let v = [1.0f32, 2.0, -0.5];
    let n = v.map(|x| -x);
    let l0: Vec<Vec<f32>> = [v, n, v, n, v].iter().map(|x| x.to_vec()).collect();
    let l1: Vec<Vec<f32>> = [n, v, n, v, n].iter().map(|x| x.to_vec()).collect();
    check(
        "negative",
        &snap(5, 1, 3, vec![l0, l1]),
        Expect {
            mean_coherence: Some(-0.2),
            mean_cross_alignment: Some(-1.0),
            phase_lock: Some(0.4),
            mean_head_entropy: Some(0.0),
            collapse_count: Some(1),
            composite: Some(0),
            ..Default::default()
        },
    );
}

#[test]
fn thresholds_are_the_spec_literals() {
    // Exact cosines from integer vectors of norm 10: (10,0,0,0)·(7,7,1,1) = 70 → 0.7,
    // (10,0,0,0)·(3,9,3,1) = 30 → 0.3 (both correctly rounded, equal to the literals).
    let a = [10.0f32, 0.0, 0.0, 0.0];
    let b7 = [7.0f32, 7.0, 1.0, 1.0];
    let b3 = [3.0f32, 9.0, 3.0, 1.0];
    assert_eq!(lem_score::cos(&a, &b7), 0.7);
    assert_eq!(lem_score::cos(&a, &b3), 0.3);

    // Many-head: cos == 0.7 is locked (>=). Heads a, b7 and three zero heads: one of ten
    // pairs locked.
    let z = [0.0f32; 4];
    let layer: Vec<Vec<f32>> = [a, b7, z, z, z].iter().map(|v| v.to_vec()).collect();
    check("lock at 0.7", &snap(5, 1, 4, vec![layer]), Expect { phase_lock: Some(0.1), ..Default::default() });

    // Few-head: cos == 0.3 is not locked (<, with the literal 0.3, not 1.0 - 0.7).
    let few = snap(1, 2, 4, vec![vec![head(&[&a, &b3])]]);
    check("few lock at 0.3", &few, Expect { phase_lock: Some(0.0), ..Default::default() });

    // Many-head: cross == 0.5 is not a collapse. Means (1,0,0,0) and (1,1,1,1).
    let l0 = vec![vec![1.0f32, 0.0, 0.0, 0.0]; 5];
    let l1 = vec![vec![1.0f32, 1.0, 1.0, 1.0]; 5];
    check(
        "cross at 0.5",
        &snap(5, 1, 4, vec![l0, l1]),
        Expect { layer_cross_alignment: Some(vec![0.5]), collapse_count: Some(0), ..Default::default() },
    );

    // Few-head: smooth == 0.5 is not a collapse. diff 0 (parallel positions), then diff 0.5
    // (positions at cosine 0.5: (1,0,0,0), (1,1,1,1)).
    let p0 = vec![head(&[&[1.0, 0.0, 0.0, 0.0], &[2.0, 0.0, 0.0, 0.0]])];
    let p1 = vec![head(&[&[1.0, 0.0, 0.0, 0.0], &[1.0, 1.0, 1.0, 1.0]])];
    check(
        "smooth at 0.5",
        &snap(1, 2, 4, vec![p0, p1]),
        Expect { layer_cross_alignment: Some(vec![0.5]), collapse_count: Some(0), ..Default::default() },
    );
}

#[test]
fn few_head_by_hand() {
    // H = 2 (few-head): only head 0 is used; head 1 is arbitrary.
    // Layer 0: positions (1,0), (0,1), (1,0): cosines 0, 1, 0 → mean 1/3, diff 2/3;
    //          pairs (0,1) and (1,2) are locked (cos 0 < 0.3).
    // Layer 1: three copies of (1,1): cosines 1 → diff 0; no locked pairs.
    // smooth = 1 − 2/3 = 1/3 < 0.5 → one collapse, joint 0.8.
    let junk = vec![9.0; 6];
    let l0 = vec![head(&[&[1.0, 0.0], &[0.0, 1.0], &[1.0, 0.0]]), junk.clone()];
    let l1 = vec![head(&[&[1.0, 1.0], &[1.0, 1.0], &[1.0, 1.0]]), junk];
    // mean_coherence 1/3, spread 1/3 (scaled 1), scaled_diff (1/3 − 0.1)/0.6 = 7/18:
    // s = 0.45·7/18 + 0.25 + 0.15 + 0.12 = 0.695 exactly in real arithmetic. (Computing
    // it here as (2/3 + 0)/2 … lands on 6949.999…: the truncation boundary the crate docs
    // warn about. The scorer's own order of operations gives 6950.)
    let mc = 1.0 / 3.0;
    check(
        "few-head by hand",
        &snap(2, 3, 2, vec![l0, l1]),
        Expect {
            few_heads: Some(true),
            layer_coherence: Some(vec![2.0 / 3.0, 0.0]),
            mean_coherence: Some(mc),
            layer_cross_alignment: Some(vec![1.0 / 3.0]),
            mean_cross_alignment: Some(1.0 / 3.0),
            mean_head_entropy: Some(1.0),
            phase_lock: Some(2.0 / 6.0),
            collapse_count: Some(1),
            joint: Some(0.8),
            composite: Some(6950),
        },
    );
}

#[test]
fn regime_boundary_is_five_heads() {
    for h in 1..=8usize {
        let layer: Vec<Vec<f32>> = (0..h).map(|i| vec![1.0, i as f32, 2.0, -1.0]).collect();
        let s = check(&format!("H={h}"), &snap(h, 2, 2, vec![layer]), Expect::default());
        assert_eq!(s.few_heads, h <= 4, "H={h}");
    }
}

#[test]
fn few_head_ignores_heads_other_than_zero() {
    let base = vec![head(&[&[1.0, 0.5], &[0.2, 1.0], &[-1.0, 0.3]])];
    let mut a = base.clone();
    a.push(vec![1.0; 6]);
    let mut b = base;
    b.push(vec![-7.0, 0.0, 3.0, 3.0, 0.0, 1.0]);
    let sa = score(&snap(2, 3, 2, vec![a]));
    let sb = score(&snap(2, 3, 2, vec![b]));
    assert_eq!(sa, sb);
}

#[test]
fn empty_snapshot_is_all_zero() {
    for h in [0, 2, 8] {
        let s = check(
            "empty",
            &snap(h, 3, 4, vec![]),
            Expect {
                composite: Some(0),
                few_heads: Some(false),
                layer_coherence: Some(vec![]),
                layer_cross_alignment: Some(vec![]),
                ..Default::default()
            },
        );
        assert_eq!(s, Scores::missing(false, 0));
        assert_eq!(s.features, [0.0; 5]);
    }
}

#[test]
fn degenerate_few_head_is_zero_with_flag_set() {
    // (name, H, T, D)
    let cases = [("T = 1", 2, 1, 3), ("T = 0", 3, 0, 3), ("D = 0", 1, 4, 0), ("H = 0", 0, 4, 2)];
    for (name, h, t, d) in cases {
        let layers = vec![vec![vec![1.0f32; t * d]; h]; 3];
        let s = check(
            name,
            &snap(h, t, d, layers),
            Expect {
                few_heads: Some(true),
                composite: Some(0),
                layer_coherence: Some(vec![0.0; 3]),
                layer_cross_alignment: Some(vec![0.0; 2]),
                ..Default::default()
            },
        );
        assert_eq!(s, Scores::missing(true, 3), "{name}");
    }
}

#[test]
fn degenerate_many_head_without_key_data_is_zero() {
    for (name, t, d) in [("T = 0", 0, 4), ("D = 0", 3, 0)] {
        let s = score(&snap(6, t, d, vec![vec![vec![0.0; t * d]; 6]; 2]));
        assert_eq!(s, Scores::missing(false, 2), "{name}");
    }
}

#[test]
fn many_head_single_position_is_scored() {
    // T = 1 is meaningful for many heads (D-dim vectors compared); entropy is 0.
    let layer: Vec<Vec<f32>> = (0..5).map(|_| vec![1.0, 1.0]).collect();
    check(
        "T = 1 many-head",
        &snap(5, 1, 2, vec![layer]),
        Expect {
            mean_coherence: Some(1.0),
            phase_lock: Some(1.0),
            mean_head_entropy: Some(0.0),
            // 0.3 + 0 + 0.2 + 0 + 0.1 = 0.6
            composite: Some(6000),
            ..Default::default()
        },
    );
}

#[test]
fn all_zero_keys_score_zero_similarity() {
    // Zero vectors: every cosine is 0 (spec), entropy 0.
    let s = check(
        "zeros many",
        &snap(5, 2, 2, vec![vec![vec![0.0; 4]; 5]; 2]),
        Expect {
            mean_coherence: Some(0.0),
            mean_cross_alignment: Some(0.0),
            mean_head_entropy: Some(0.0),
            phase_lock: Some(0.0),
            collapse_count: Some(1),
            ..Default::default()
        },
    );
    assert_eq!(s.composite, 800); // 0.1 · joint 0.8
}

#[test]
fn collapses_accumulate_and_joint_floors_at_zero() {
    // Seven layers alternating between orthogonal mean directions: six collapses.
    let a = same_heads([1.0, 0.0, 1.0, 0.0]);
    let b = same_heads([0.0, 1.0, 0.0, 1.0]);
    let layers = vec![a.clone(), b.clone(), a.clone(), b.clone(), a.clone(), b, a];
    check(
        "six collapses",
        &snap(5, 2, 2, layers),
        Expect { collapse_count: Some(6), joint: Some(0.0), ..Default::default() },
    );
}

#[test]
fn absent_layers_count_in_l_but_are_never_paired() {
    // Many-head, L = 3, middle layer absent.
    let v = same_heads([1.0, 0.0, 0.0, 1.0]);
    let s = snap_opt(5, 2, 2, vec![Some(v.clone()), None, Some(v.clone())]);
    check(
        "many-head absent middle",
        &s,
        Expect {
            layer_coherence: Some(vec![1.0, 0.0, 1.0]),
            mean_coherence: Some(2.0 / 3.0),
            layer_cross_alignment: Some(vec![0.0, 0.0]),
            mean_cross_alignment: Some(0.0),
            collapse_count: Some(0),
            mean_head_entropy: Some(10.0 / 15.0),
            phase_lock: Some(1.0),
            ..Default::default()
        },
    );

    // Few-head, L = 4, layer 2 absent.
    let l = |a: &[f32], b: &[f32]| Some(vec![head(&[a, b])]);
    let s = snap_opt(
        1,
        2,
        2,
        vec![l(&[5.0, 0.0], &[3.0, 4.0]), l(&[1.0, 0.0], &[0.0, 1.0]), None, l(&[1.0, 1.0], &[2.0, 2.0])],
    );
    // diffs 0.4, 1, (absent), 0; smooth only for (0,1): 1 − 0.6 = 0.4 → a collapse.
    check(
        "few-head absent layer",
        &s,
        Expect {
            layer_coherence: Some(vec![0.4, 1.0, 0.0, 0.0]),
            mean_coherence: Some(1.4 / 4.0),
            layer_cross_alignment: Some(vec![0.4, 0.0, 0.0]),
            mean_cross_alignment: Some(0.4 / 3.0),
            collapse_count: Some(1),
            // entropies: 1, 1, (absent), H(1/3, 2/3) for magnitudes √2 and 2√2.
            mean_head_entropy: Some((2.0 + 3f64.log2() - 2.0 / 3.0) / 4.0),
            ..Default::default()
        },
    );
}

#[test]
fn all_layers_absent_is_missing() {
    for h in [2, 6] {
        let s = score(&snap_opt(h, 2, 2, vec![None, None]));
        assert_eq!(s, Scores::missing(h <= 4, 2));
    }
}

#[test]
fn json_uses_the_spec_names() {
    let s = score(&snap(5, 2, 2, vec![same_heads([1.0, 0.0, 0.0, 1.0]); 2]));
    let v = serde_json::to_value(&s).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = vec![
        "mean_coherence",
        "mean_cross_alignment",
        "mean_head_entropy",
        "phase_lock",
        "collapse_count",
        "layer_coherence",
        "layer_cross_alignment",
        "few_heads",
        "composite",
        "features",
        "feature_labels",
    ];
    want.sort_unstable();
    assert_eq!(keys, want);
    assert!(v["composite"].is_u64());
    assert!(v["few_heads"].is_boolean());
    assert_eq!(v["features"].as_array().unwrap().len(), 5);
    assert_eq!(
        v["feature_labels"],
        serde_json::json!(["mean_coherence", "cross_alignment", "head_entropy", "phase_lock", "joint_stability"])
    );
    let back: Scores = serde_json::from_value(v).unwrap();
    assert_eq!(back, s);
}

#[test]
fn constructor_rejects_bad_shapes() {
    type Case = (&'static str, Result<KeySnapshot, ScoreError>, fn(&ScoreError) -> bool);
    let nan_layer = vec![vec![0.0, 1.0, f32::NAN, 0.0]];
    let cases: Vec<Case> = vec![
        ("head count", KeySnapshot::new(meta(2), 2, 2, 2, vec![Some(vec![vec![0.0; 4]])]), |e| {
            matches!(e, ScoreError::HeadCount { layer: 0, expected: 2, found: 1 })
        }),
        ("head length", KeySnapshot::new(meta(2), 1, 2, 2, vec![None, Some(vec![vec![0.0; 3]])]), |e| {
            matches!(e, ScoreError::HeadLength { layer: 1, head: 0, expected: 4, found: 3 })
        }),
        ("token count", KeySnapshot::new(meta(3), 1, 2, 2, vec![Some(vec![vec![0.0; 4]])]), |e| {
            matches!(e, ScoreError::TokenCount { expected: 2, found: 3 })
        }),
        ("NaN", KeySnapshot::new(meta(2), 1, 2, 2, vec![Some(nan_layer)]), |e| {
            matches!(e, ScoreError::NonFinite { layer: 0, head: 0, index: 2, .. })
        }),
        ("infinity", KeySnapshot::new(meta(1), 1, 1, 2, vec![Some(vec![vec![f32::NEG_INFINITY, 0.0]])]), |e| {
            matches!(e, ScoreError::NonFinite { index: 0, .. })
        }),
        ("T*D overflows", KeySnapshot::new(meta(2), 1, 2, usize::MAX / 2 + 1, vec![None]), |e| {
            matches!(e, ScoreError::TooLarge { .. })
        }),
        ("H*T*D*4 overflows", KeySnapshot::new(meta(2), usize::MAX / 8, 2, 2, vec![None]), |e| {
            matches!(e, ScoreError::TooLarge { .. })
        }),
    ];
    for (name, got, want) in cases {
        match got {
            Ok(s) => panic!("{name}: accepted {s:?}"),
            Err(e) => {
                assert!(want(&e), "{name}: wrong error {e:?}");
                assert!(!e.to_string().is_empty());
            }
        }
    }
}

#[test]
fn zero_size_dimensions_are_valid() {
    // H huge but T = 0: no key data, nothing overflows; the snapshot is valid and empty.
    let s = KeySnapshot::new(meta(0), 1 << 40, 0, 1 << 40, vec![None, None]).unwrap();
    assert_eq!(score(&s), Scores::missing(false, 2));
}

#[test]
fn accessors_report_the_shape() {
    let s = snap_opt(2, 3, 4, vec![None, Some(vec![vec![1.0; 12], vec![2.0; 12]])]);
    assert_eq!((s.n_layers(), s.n_kv_heads(), s.n_tokens(), s.head_dim()), (2, 2, 3, 4));
    assert!(s.layer_keys(0).is_none());
    assert_eq!(s.layer_keys(1).unwrap()[1], vec![2.0; 12]);
    assert!(s.layer_keys(2).is_none());
    assert_eq!(s.meta().token_ids, vec![0, 1, 2]);
    assert!(format!("{s:?}").contains("present_layers: [1]"));
}
