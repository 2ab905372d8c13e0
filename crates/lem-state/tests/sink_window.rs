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

use common::bounded::{assert_chunking_invariant, engine, logits_each, prompt};
use common::{gen_ids, greedy, isolate_cache, tiny};
use lem_engine::{DraftConfig, Engine, EngineConfig, GenerateRequest, generate};
use lem_kv::{KvBound, LayerKind, SinkPositions};
use lem_model::LoadOptions;
use lem_state::{StateError, load_snapshot, save_snapshot};

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
    assert_chunking_invariant(&bounded, &ids, &got, &[3, 7]);
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

fn rebased(sinks: u32, window: u32) -> KvBound {
    KvBound { positions: SinkPositions::Rebased, ..KvBound::new(sinks, window) }
}

#[test]
fn rebased_positions_change_only_the_sinks_and_only_once_the_window_moves() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny::write(&tiny::llama(11), d.path(), "l.gguf");
    let original = engine(&model, Some(KvBound::new(4, 16)));
    let rebased_e = engine(&model, Some(rebased(4, 16)));
    let no_sinks = engine(&model, Some(KvBound::new(0, 16)));
    let no_sinks_rebased = engine(&model, Some(rebased(0, 16)));
    let ids = prompt(48, 5);
    let want = logits_each(&original, &ids, 1);
    let got = logits_each(&rebased_e, &ids, 1);
    // While the query is within sinks + window, a sink sits where it was: the same bits.
    for p in 0..20 {
        assert_eq!(got[p], want[p], "position {p}");
    }
    // Past it the sinks are seen as if just before the window: other logits.
    for p in 20..48 {
        assert_ne!(got[p], want[p], "position {p}");
    }
    // Without sinks there is nothing to re-base: a plain window either way.
    assert_eq!(logits_each(&no_sinks_rebased, &ids, 1), logits_each(&no_sinks, &ids, 1));
    // Batch shape does not matter under rebased positions either.
    assert_chunking_invariant(&rebased_e, &ids, &got, &[5, 48]);
    // A snapshot under original positions is another layout for a rebased engine.
    let mut seq = original.new_sequence();
    seq.feed(&original, &ids).unwrap();
    let snap = d.path().join("o.lemkv");
    save_snapshot(&snap, &original, &seq, BTreeMap::new()).unwrap();
    match load_snapshot(&snap, &rebased_e) {
        Err(StateError::LayoutMismatch { what, .. }) => assert!(what.contains("rebased"), "{what}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn a_rebased_stream_runs_past_the_trained_context() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny::write(&tiny::llama(13), d.path(), "l.gguf");
    isolate_cache();
    let trained = engine(&model, None).model().config().context_length;
    let ask = trained + 300;
    let load = |bound: Option<KvBound>| {
        let opts = LoadOptions { kv_bound: bound, ..LoadOptions::default() };
        Engine::load_with(&model, EngineConfig { threads: 2, ctx_size: ask }, opts).unwrap()
    };
    // Full attention, and original-position sinks (whose distance grows without bound),
    // stay within the trained context; a plain window or rebased sinks may run past it.
    assert_eq!(load(None).ctx_size(), trained);
    assert_eq!(load(Some(KvBound::new(4, 16))).ctx_size(), trained);
    assert_eq!(load(Some(KvBound::new(0, 16))).ctx_size(), ask);
    let e = load(Some(rebased(4, 16)));
    assert_eq!(e.ctx_size(), ask);
    let p = prompt(trained + 100, 6);
    let mut seq = e.new_sequence();
    let logits = seq.feed(&e, &p).unwrap().to_vec();
    assert!(logits.iter().all(|x| x.is_finite()));
    assert_eq!(seq.len(), p.len());
    let fed = gen_ids(&e, &mut seq, &prompt(4, 7), 6);
    assert!(!fed.is_empty());
    assert!(seq.len() >= p.len() + 4, "the continuation was fed past the trained context");
}

#[test]
fn auto_full_layers_are_measured_and_kept_full() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny::write(&tiny::llama(17), d.path(), "l.gguf");
    let n = engine(&model, None).model().cache_layout().layers.len();
    let bound = KvBound::new(4, 32);
    let choose = || {
        let mut e = engine(&model, None);
        let choice = lem_engine::kv_policy::bound_auto(&mut e, bound, 1).unwrap();
        (e, choice)
    };
    let (e, choice) = choose();
    assert_eq!(choice.reach.len(), n, "every full-attention layer is measured");
    assert!(choice.calibration_tokens > 4 * 32, "{}", choice.calibration_tokens);
    assert!(choice.reach.iter().any(|r| r.needle > 0.0), "no layer looked at the needle: {:?}", choice.reach);
    assert_eq!(choice.full_layers.len(), 1);
    let kept = choice.full_layers[0];
    let most = choice.reach.iter().map(|r| r.needle).fold(0.0, f64::max);
    assert_eq!(choice.reach[kept].needle, most, "{:?}", choice.reach);
    for (l, spec) in e.model().cache_layout().layers.iter().enumerate() {
        let want = if l == kept {
            LayerKind::Full
        } else {
            LayerKind::SinkWindow { sinks: 4, window: 32, positions: Default::default() }
        };
        assert_eq!(spec.kind, want, "layer {l}");
    }
    // The measurement is deterministic; a bounded engine cannot be measured again.
    assert_eq!(choose().1.full_layers, choice.full_layers);
    let mut bounded = engine(&model, Some(bound));
    assert!(lem_engine::kv_policy::bound_auto(&mut bounded, bound, 1).is_err());
}

#[test]
fn a_smaller_batch_size_shrinks_the_rings_and_changes_no_result() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny::write(&tiny::llama(11), d.path(), "l.gguf");
    let bound = KvBound::new(2, 12);
    let wide = engine(&model, Some(bound));
    isolate_cache();
    let opts = LoadOptions { kv_bound: Some(bound), max_batch: Some(5), ..LoadOptions::default() };
    let narrow = Engine::load_with(&model, EngineConfig { threads: 2, ctx_size: 2048 }, opts).unwrap();
    assert_eq!(narrow.model().max_batch(), 5);
    assert_eq!(narrow.model().new_cache().layer(0).ring_capacity(), Some(2 + 12 + 5));
    // The same logits at every position, one token at a time and as a prompt (fed in
    // chunks of at most 5 on the narrow engine).
    let ids = prompt(90, 6);
    let each = logits_each(&wide, &ids, 1);
    assert_eq!(logits_each(&narrow, &ids, 1), each);
    assert_chunking_invariant(&narrow, &ids, &each, &[5, 90]);
    // Its ring holds fewer cells, so fewer bytes.
    let (mut a, mut b) = (wide.new_sequence(), narrow.new_sequence());
    a.feed(&wide, &ids).unwrap();
    b.feed(&narrow, &ids).unwrap();
    assert!(b.cache().memory().resident_bytes < a.cache().memory().resident_bytes);
    // A snapshot moves between the two (the batch size is not part of the layout) and
    // continues as it would have.
    let cont = prompt(7, 8);
    let want = gen_ids(&wide, &mut a.fork(), &cont, 10);
    for (from, seq, to) in [(&wide, &a, &narrow), (&narrow, &b, &wide)] {
        let snap = d.path().join("s.lemkv");
        save_snapshot(&snap, from, seq, BTreeMap::new()).unwrap();
        let mut restored = load_snapshot(&snap, to).unwrap();
        assert_eq!(gen_ids(to, &mut restored, &cont, 10), want);
    }
    isolate_cache();
    let zero = LoadOptions { max_batch: Some(0), ..LoadOptions::default() };
    let err = Engine::load_with(&model, EngineConfig { threads: 2, ctx_size: 2048 }, zero).err().unwrap();
    assert!(err.to_string().contains("at least 1"), "{err}");
}
