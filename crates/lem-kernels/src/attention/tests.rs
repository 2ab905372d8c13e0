//! The attention kernel against a straightforward f64 reference, over shapes, masks,
//! cache layouts (rings with holes), soft-capping, storage types and thread counts.

use half::f16;

use super::*;

/// Deterministic values in [-2, 2).
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// One case: geometry, positions of the cached cells and of the queries.
struct Case {
    n_head: usize,
    n_kv: usize,
    hd: usize,
    mask: Mask,
    softcap: Option<f32>,
    cell_pos: Vec<u32>,
    q_pos: Vec<u32>,
}

/// The reference: per query row, visible cells only, f64 softmax.
fn reference<E: KvElem>(c: &Case, q: &[f32], k: &[E], v: &[E]) -> (Vec<f32>, Vec<f32>) {
    let (cells, stride, group) = (c.cell_pos.len(), c.n_kv * c.hd, c.n_head / c.n_kv);
    let scale = 1.0 / (c.hd as f32).sqrt();
    let mut out = vec![0f32; q.len()];
    let mut probs = vec![0f32; c.q_pos.len() * c.n_head * cells];
    for (t, &qp) in c.q_pos.iter().enumerate() {
        for h in 0..c.n_head {
            let g = h / group;
            let qr: Vec<f32> = q[(t * c.n_head + h) * c.hd..][..c.hd].iter().map(|&x| E::round_query(x)).collect();
            let mut s = vec![f64::NEG_INFINITY; cells];
            for (cell, &p) in c.cell_pos.iter().enumerate() {
                if c.mask.visible(qp, p) {
                    let kr = &k[cell * stride + g * c.hd..][..c.hd];
                    let d: f64 = qr.iter().zip(kr).map(|(a, b)| *a as f64 * b.to_f32() as f64).sum();
                    let mut x = d * scale as f64;
                    if let Some(cap) = c.softcap {
                        x = cap as f64 * (x / cap as f64).tanh();
                    }
                    s[cell] = x;
                }
            }
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                continue;
            }
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            for cell in 0..cells {
                let p = (e[cell] / sum) as f32;
                probs[(t * c.n_head + h) * cells + cell] = p;
                let vr = &v[cell * stride + g * c.hd..][..c.hd];
                for d in 0..c.hd {
                    out[(t * c.n_head + h) * c.hd + d] += E::round_weight(p) * vr[d].to_f32();
                }
            }
        }
    }
    (out, probs)
}

fn run(c: &Case, q: &[f32], view: KvView<'_>, threads: &Threads) -> (Vec<f32>, Vec<f32>) {
    let shape = AttnShape {
        n_head: c.n_head,
        n_kv: c.n_kv,
        head_dim: c.hd,
        scale: 1.0 / (c.hd as f32).sqrt(),
        softcap: c.softcap,
        mask: c.mask,
    };
    let mut out = vec![f32::NAN; q.len()];
    let mut probs = vec![f32::NAN; c.q_pos.len() * c.n_head * c.cell_pos.len()];
    attention(q, &c.q_pos, view, &shape, &mut out, Some(&mut probs), threads);
    // Without `probs` the output is the same.
    let mut out2 = vec![f32::NAN; q.len()];
    attention(q, &c.q_pos, view, &shape, &mut out2, None, threads);
    assert_eq!(bits(&out), bits(&out2), "output depends on whether weights are captured");
    (out, probs)
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: got {g}, want {w}");
    }
}

fn check(c: Case, seed: u64) {
    let cells = c.cell_pos.len();
    let q = data(c.q_pos.len() * c.n_head * c.hd, seed);
    let kf = data(cells * c.n_kv * c.hd, seed + 1);
    let vf = data(cells * c.n_kv * c.hd, seed + 2);
    let (k16, v16): (Vec<f16>, Vec<f16>) =
        (kf.iter().map(|&x| f16::from_f32(x)).collect(), vf.iter().map(|&x| f16::from_f32(x)).collect());
    let pools = [Threads::new(1), Threads::new(2), Threads::new(3)];

    let (want, want_p) = reference(&c, &q, &kf, &vf);
    let mut first: Option<Vec<u32>> = None;
    for th in &pools {
        let view = KvView { data: KvData::F32 { k: &kf, v: &vf }, pos: &c.cell_pos };
        let (out, probs) = run(&c, &q, view, th);
        close(&out, &want, 2e-5, "f32 out");
        close(&probs, &want_p, 2e-5, "f32 probs");
        // The split into work items never changes a result bit.
        let b = bits(&out);
        assert_eq!(first.get_or_insert_with(|| b.clone()), &b, "f32: {} threads differ", th.count());
    }
    let (want, want_p) = reference(&c, &q, &k16, &v16);
    let mut first: Option<Vec<u32>> = None;
    for th in &pools {
        let view = KvView { data: KvData::F16 { k: &k16, v: &v16 }, pos: &c.cell_pos };
        let (out, probs) = run(&c, &q, view, th);
        // Weights are rounded to f16 before the values: a few f16 ulp per term.
        close(&out, &want, 2e-3, "f16 out");
        close(&probs, &want_p, 2e-5, "f16 probs");
        let b = bits(&out);
        assert_eq!(first.get_or_insert_with(|| b.clone()), &b, "f16: {} threads differ", th.count());
    }
}

fn in_order(n: u32) -> Vec<u32> {
    (0..n).collect()
}

#[test]
fn prompt_decode_and_gqa_shapes() {
    // (n_head, n_kv, head_dim, cached cells, query tokens at the end)
    let shapes = [(1, 1, 8, 1, 1), (9, 3, 64, 40, 40), (9, 3, 64, 41, 1), (4, 1, 256, 70, 33), (4, 1, 256, 70, 1)];
    for (i, &(n_head, n_kv, hd, cells, n_q)) in shapes.iter().enumerate() {
        let case = Case {
            n_head,
            n_kv,
            hd,
            mask: Mask::Causal,
            softcap: None,
            cell_pos: in_order(cells),
            q_pos: (cells - n_q..cells).collect(),
        };
        check(case, i as u64 * 10);
    }
}

#[test]
fn odd_head_sizes_and_softcap() {
    for (i, hd) in [1usize, 7, 9, 17, 100].into_iter().enumerate() {
        let case = Case {
            n_head: 6,
            n_kv: 2,
            hd,
            mask: Mask::Causal,
            softcap: Some(1.5),
            cell_pos: in_order(23),
            q_pos: (3..23).collect(),
        };
        check(case, 100 + i as u64);
    }
}

#[test]
fn sliding_window_ring_with_holes() {
    // A ring of 12 cells: position p in cell p % 12, positions 30..=40 present, one hole.
    let mut cell_pos = vec![u32::MAX; 12];
    for p in 30..=40u32 {
        cell_pos[p as usize % 12] = p;
    }
    cell_pos[35 % 12] = u32::MAX;
    let case = Case {
        n_head: 4,
        n_kv: 2,
        hd: 16,
        mask: Mask::SlidingWindow { window: 5 },
        softcap: None,
        cell_pos,
        q_pos: (36..=40).collect(),
    };
    check(case, 200);
}

#[test]
fn sink_window_mask_keeps_the_first_positions_and_the_window() {
    let m = Mask::SinkWindow { sinks: 2, window: 3 };
    let seen: Vec<u32> = (0..12).filter(|&p| m.visible(10, p)).collect();
    assert_eq!(seen, vec![0, 1, 8, 9, 10]);
    // Never the future; sinks 0 is the plain sliding window.
    assert!(!m.visible(1, 2));
    for q in 0..20 {
        for p in 0..20 {
            let plain = Mask::SlidingWindow { window: 4 }.visible(q, p);
            assert_eq!(Mask::SinkWindow { sinks: 0, window: 4 }.visible(q, p), plain, "q {q} p {p}");
        }
    }
}

#[test]
fn sink_window_ring_with_holes() {
    // Sinks 0..3 in cells 0..3, then a ring of 9 cells: position p >= 3 in cell
    // 3 + (p - 3) % 9; positions 0..3 and 30..=38 present, one hole.
    let mut cell_pos = vec![u32::MAX; 12];
    for p in (0..3u32).chain(30..=38) {
        let c = if p < 3 { p as usize } else { 3 + (p as usize - 3) % 9 };
        cell_pos[c] = p;
    }
    cell_pos[3 + (33 - 3) % 9] = u32::MAX;
    let case = Case {
        n_head: 4,
        n_kv: 2,
        hd: 16,
        mask: Mask::SinkWindow { sinks: 3, window: 5 },
        softcap: None,
        cell_pos,
        q_pos: (35..=38).collect(),
    };
    check(case, 250);
}

#[test]
fn queries_that_see_nothing_give_zeros() {
    // Every cached position is in the future of the queries.
    let case = Case {
        n_head: 2,
        n_kv: 1,
        hd: 8,
        mask: Mask::Causal,
        softcap: None,
        cell_pos: (10..20).collect(),
        q_pos: vec![3, 4],
    };
    check(case, 300);
    // A window that has moved past every cell for the last query only.
    let case = Case {
        n_head: 2,
        n_kv: 2,
        hd: 8,
        mask: Mask::SlidingWindow { window: 2 },
        softcap: None,
        cell_pos: vec![0, 1, 2],
        q_pos: vec![2, 3, 9],
    };
    check(case, 301);
}

/// A prompt's queries all at once, in chunks, or one by one give the same bits: batch
/// shapes never change results (the server's batches rely on it).
#[test]
fn results_do_not_depend_on_how_queries_are_grouped() {
    let (n_head, n_kv, hd, cells) = (9, 3, 64, 70usize);
    let q = data(cells * n_head * hd, 400);
    let k: Vec<f16> = data(cells * n_kv * hd, 401).into_iter().map(f16::from_f32).collect();
    let v: Vec<f16> = data(cells * n_kv * hd, 402).into_iter().map(f16::from_f32).collect();
    let pos = in_order(cells as u32);
    let shape = AttnShape { n_head, n_kv, head_dim: hd, scale: 0.125, softcap: None, mask: Mask::Causal };
    let view = KvView { data: KvData::F16 { k: &k, v: &v }, pos: &pos };
    let threads = Threads::new(2);
    let mut whole = vec![0f32; q.len()];
    attention(&q, &pos, view, &shape, &mut whole, None, &threads);
    let row = n_head * hd;
    for chunk in [1usize, 5, 13, 33] {
        let mut parts = vec![0f32; q.len()];
        for t0 in (0..cells).step_by(chunk) {
            let t1 = (t0 + chunk).min(cells);
            attention(
                &q[t0 * row..t1 * row],
                &pos[t0..t1],
                view,
                &shape,
                &mut parts[t0 * row..t1 * row],
                None,
                &threads,
            );
        }
        assert_eq!(bits(&parts), bits(&whole), "chunks of {chunk}");
    }
}

/// StreamingLLM's rebased positions by sink queries: rotating each query a second time at
/// `min(q, sinks + window - 1)` for its scores against the sinks gives the attention of a
/// cache whose keys sit at their positions within the cache (sinks at `0..sinks`, the
/// window right after), which is what rotating the stored keys would give. The result does
/// not depend on thread count or on how queries are grouped.
#[test]
fn sink_queries_give_the_rebased_cache_positions() {
    use crate::ops::{Rope, RopeStyle};
    let (n_head, n_kv, hd, sinks, window) = (4usize, 2usize, 16usize, 3u32, 5u32);
    let rope = Rope::new(10_000.0, hd, RopeStyle::Neox);
    let rotate = |x: &mut [f32], heads: usize, pos: &[u32]| {
        let mut table = Vec::new();
        rope.fill_table(pos, None, &mut table);
        rope.apply(x, heads, hd, &table);
    };
    // Sinks 0..3 in cells 0..3, a ring of window + 4 cells holding 30..=38, one hole.
    let ring = window as usize + 4;
    let mut cell_pos = vec![u32::MAX; sinks as usize + ring];
    for p in (0..sinks).chain(30..=38) {
        let c = if p < sinks { p as usize } else { sinks as usize + (p - sinks) as usize % ring };
        cell_pos[c] = p;
    }
    cell_pos[sinks as usize + (33 - sinks) as usize % ring] = u32::MAX;
    let q_pos: Vec<u32> = vec![6, 7, 35, 36, 37, 38];
    let cells = cell_pos.len();
    let q_raw = data(q_pos.len() * n_head * hd, 900);
    let k_raw = data(cells * n_kv * hd, 901);
    let v = data(cells * n_kv * hd, 902);
    let mask = Mask::SinkWindow { sinks, window };
    let shape = AttnShape { n_head, n_kv, head_dim: hd, scale: 0.25, softcap: None, mask };

    // What lem runs: keys at their original positions, queries at theirs, sink queries
    // at the rebased one.
    let mut k = k_raw.clone();
    for (c, &p) in cell_pos.iter().enumerate() {
        let p = if p == u32::MAX { 0 } else { p };
        rotate(&mut k[c * n_kv * hd..(c + 1) * n_kv * hd], n_kv, &[p]);
    }
    let mut q = q_raw.clone();
    rotate(&mut q, n_head, &q_pos);
    let clamped: Vec<u32> = q_pos.iter().map(|&p| p.min(sinks + window - 1)).collect();
    let mut sq = q_raw.clone();
    rotate(&mut sq, n_head, &clamped);
    let view = KvView { data: KvData::F32 { k: &k, v: &v }, pos: &cell_pos };
    let extras = AttnExtras { sink_logits: None, sink_queries: Some(&sq) };
    let row = n_head * hd;
    let mut got = vec![0f32; q.len()];
    attention_with_sinks(&q, &q_pos, view, &shape, extras, &mut got, None, &Threads::new(1));
    for th in [Threads::new(2), Threads::new(3)] {
        let mut again = vec![0f32; q.len()];
        attention_with_sinks(&q, &q_pos, view, &shape, extras, &mut again, None, &th);
        assert_eq!(bits(&again), bits(&got), "{} threads", th.count());
    }
    for (t, &p) in q_pos.iter().enumerate() {
        let one = AttnExtras { sink_logits: None, sink_queries: Some(&sq[t * row..(t + 1) * row]) };
        let mut alone = vec![0f32; row];
        attention_with_sinks(&q[t * row..(t + 1) * row], &[p], view, &shape, one, &mut alone, None, &Threads::new(2));
        assert_eq!(bits(&alone), bits(&got[t * row..(t + 1) * row]), "query {p} alone");
    }

    // The reference: per query, the visible cells with keys rotated at their positions
    // within the cache and the query at its own, under a plain causal mask.
    for (t, &p) in q_pos.iter().enumerate() {
        let first_window = (p + 1).saturating_sub(window).max(sinks);
        let rebased = |kp: u32| if kp < sinks { kp } else { sinks + (kp - first_window) };
        let seen: Vec<usize> =
            (0..cells).filter(|&c| cell_pos[c] != u32::MAX && mask.visible(p, cell_pos[c])).collect();
        let mut kr = Vec::new();
        let mut vr = Vec::new();
        let mut rp = Vec::new();
        for &c in &seen {
            let mut key = k_raw[c * n_kv * hd..(c + 1) * n_kv * hd].to_vec();
            rotate(&mut key, n_kv, &[rebased(cell_pos[c])]);
            kr.extend(key);
            vr.extend_from_slice(&v[c * n_kv * hd..(c + 1) * n_kv * hd]);
            rp.push(rebased(cell_pos[c]));
        }
        let qp = rebased(p);
        let mut qr = q_raw[t * row..(t + 1) * row].to_vec();
        rotate(&mut qr, n_head, &[qp]);
        let causal = AttnShape { mask: Mask::Causal, ..shape };
        let mut want = vec![0f32; row];
        let view = KvView { data: KvData::F32 { k: &kr, v: &vr }, pos: &rp };
        attention(&qr, &[qp], view, &causal, &mut want, None, &Threads::new(1));
        close(&got[t * row..(t + 1) * row], &want, 1e-4, &format!("query {p}"));
    }
    // Without the sink queries the sinks are seen from afar: a different result.
    let mut original = vec![0f32; q.len()];
    attention(&q, &q_pos, view, &shape, &mut original, None, &Threads::new(1));
    assert_ne!(bits(&original[2 * row..]), bits(&got[2 * row..]));
    assert_eq!(bits(&original[..2 * row]), bits(&got[..2 * row]), "before the window moves, nothing changes");
}
