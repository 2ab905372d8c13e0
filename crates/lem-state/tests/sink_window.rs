//! Sink + window bounds (`LoadOptions::kv_bound`, `--kv-sinks` / `--kv-window`) on tiny
//! models: a bounded layer gives bit-identical logits to full attention while the
//! sequence fits in sinks + window and different ones past it, whatever the batch shape;
//! its cache stops growing; speculative decoding (which rolls back rejected drafts) gives
//! the plain output on a wrapped bounded ring; snapshots of a bounded cache restore
//! exactly, and a snapshot made under another bound (or none) is refused as another
//! layout.
#![allow(missing_docs)]

mod common;

use std::collections::BTreeMap;

use std::ops::ControlFlow;

use common::{gen_ids, greedy, isolate_cache, tiny};
use lem_engine::{DraftConfig, Engine, EngineConfig, GenerateRequest, generate};
use lem_kv::{KvBound, LayerKind};
use lem_model::LoadOptions;
use lem_state::{StateError, load_snapshot, save_snapshot};

fn prompt(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32).map(|i| 3 + (i.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 7) % 61).collect()
}

fn engine(path: &std::path::Path, bound: Option<KvBound>) -> Engine {
    isolate_cache();
    let opts = LoadOptions { kv_bound: bound, ..LoadOptions::default() };
    Engine::load_with(path, EngineConfig { threads: 2, ctx_size: 2048 }, opts).unwrap()
}

/// Logits after each of `ids`, fed in chunks of `chunk`.
fn logits_each(e: &Engine, ids: &[u32], chunk: usize) -> Vec<Vec<f32>> {
    let mut seq = e.new_sequence();
    let mut out = Vec::new();
    for c in ids.chunks(chunk) {
        if c.len() == 1 {
            out.push(seq.feed(e, c).unwrap().to_vec());
        } else {
            // Only the last position's logits come back from a chunk.
            seq.feed(e, &c[..c.len() - 1]).unwrap();
            out.push(seq.feed(e, &c[c.len() - 1..]).unwrap().to_vec());
        }
    }
    out
}

#[test]
fn bounded_layers_equal_full_attention_until_the_bound() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny::write(&tiny::llama(3), d.path(), "l.gguf");
    let bound = KvBound::new(4, 16);
    let full = engine(&model, None);
    let bounded = engine(&model, Some(bound));
    assert!(
        bounded
            .model()
            .cache_layout()
            .layers
            .iter()
            .all(|l| l.kind == LayerKind::SinkWindow { sinks: 4, window: 16, positions: Default::default() })
    );
    let ids = prompt(40, 1);
    let want = logits_each(&full, &ids, 1);
    let got = logits_each(&bounded, &ids, 1);
    // Positions 0..20 see everything either way: the same bits.
    for p in 0..20 {
        assert_eq!(got[p], want[p], "position {p}");
    }
    // From position 20 on, position 4 has left the window: different logits.
    for p in 20..40 {
        assert_ne!(got[p], want[p], "position {p}");
    }
    // The batch shape does not matter: one prompt chunk of 20 (the bound) and of 40.
    let mut seq = bounded.new_sequence();
    assert_eq!(seq.feed(&bounded, &ids[..20]).unwrap(), &want[19][..]);
    let mut seq = bounded.new_sequence();
    assert_eq!(seq.feed(&bounded, &ids).unwrap(), &got[39][..]);
    for chunk in [3, 7] {
        let by = logits_each(&bounded, &ids, chunk);
        for (i, l) in by.iter().enumerate() {
            let p = ((i + 1) * chunk).min(ids.len()) - 1;
            assert_eq!(l, &got[p], "chunks of {chunk}, position {p}");
        }
    }
}

#[test]
fn bounded_caches_stop_growing_and_restore_exactly() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny::write(&tiny::llama(5), d.path(), "l.gguf");
    let bound = KvBound::new(2, 8);
    let e = engine(&model, Some(bound));
    let cap = e.model().new_cache().layer(0).ring_capacity().unwrap();
    assert_eq!(cap, 2 + 8 + e.model().max_batch());
    // Past the ring: it wrapped, the sinks are still there.
    let p = prompt(cap + 300, 2);
    let mut seq = e.new_sequence();
    seq.feed(&e, &p).unwrap();
    let held = seq.cache().layer(0).export().positions;
    assert_eq!(held.len(), cap);
    assert_eq!(&held[..3], &[0, 1, (p.len() - cap + 2) as u32]);
    let per_layer = seq.cache().layer(0).cell_bytes() * cap;
    assert_eq!(seq.cache().memory().resident_bytes, per_layer * seq.cache().n_layers());

    // Snapshot, restore, continue: the same cells and tokens.
    let snap = d.path().join("b.lemkv");
    save_snapshot(&snap, &e, &seq, BTreeMap::new()).unwrap();
    let mut restored = load_snapshot(&snap, &e).unwrap();
    assert_eq!(restored.cache().export_raw(), seq.cache().export_raw());
    let cont = prompt(6, 9);
    let mut fork = seq.fork();
    let want = gen_ids(&e, &mut seq, &cont, 8);
    assert_eq!(gen_ids(&e, &mut restored, &cont, 8), want, "restored");
    assert_eq!(gen_ids(&e, &mut fork, &cont, 8), want, "fork");

    // Another bound, or none, is another layout.
    for other in [None, Some(KvBound::new(2, 9)), Some(KvBound::new(0, 8))] {
        let err = load_snapshot(&snap, &engine(&model, other)).unwrap_err();
        match &err {
            StateError::LayoutMismatch { what, .. } => assert!(what.contains("sinks"), "{other:?}: {err}"),
            _ => panic!("{other:?}: {err}"),
        }
    }
}

#[test]
fn on_gemma3_the_bound_takes_the_global_layers_only() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny::write(&tiny::gemma3(7), d.path(), "g.gguf");
    let native = engine(&model, None);
    let bounded = engine(&model, Some(KvBound::new(4, 32)));
    let (a, b) = (native.model().cache_layout(), bounded.model().cache_layout());
    assert!(a.layers.iter().any(|l| l.kind == LayerKind::Full), "the tiny gemma3 has global layers");
    for (n, bl) in a.layers.iter().zip(&b.layers) {
        match n.kind {
            LayerKind::Full => {
                assert_eq!(bl.kind, LayerKind::SinkWindow { sinks: 4, window: 32, positions: Default::default() })
            }
            kind => assert_eq!(bl.kind, kind, "a native sliding layer changed"),
        }
    }
    // Short of the bound, generation is the same as the native model's.
    let p = prompt(30, 4);
    assert_eq!(
        gen_ids(&bounded, &mut bounded.new_sequence(), &p, 5),
        gen_ids(&native, &mut native.new_sequence(), &p, 5)
    );
}

#[test]
fn speculation_rolls_back_within_a_wrapped_bounded_ring() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny::write(&tiny::llama(9), d.path(), "l.gguf");
    let e = engine(&model, Some(KvBound::new(3, 16)));
    // A cycle of 20 tokens, repeated past the ring (3 + 16 + max_batch cells): prompt
    // lookup finds matches to draft from.
    let cycle = prompt(20, 3);
    let p: Vec<u32> = cycle.iter().copied().cycle().take(e.model().max_batch() + 200).collect();
    let plain = gen_ids(&e, &mut e.new_sequence(), &p, 24);
    let req = GenerateRequest { draft: Some(DraftConfig::ngram()), ..greedy(24) };
    let g = generate(&e, &mut e.new_sequence(), &p, &req, &mut |_| ControlFlow::Continue(())).unwrap();
    assert!(g.speculation.drafted > 0, "nothing was drafted");
    assert_eq!(g.ids, plain, "speculative output differs ({:?})", g.speculation);
}
