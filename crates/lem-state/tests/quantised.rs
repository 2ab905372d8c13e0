//! Quantised KV caches in durable state, on the tiny Gemma 3 (head_dim 32, a wrapping
//! sliding window): snapshots, forks and prefix blocks store the blocks as they are and
//! restore them bit for bit; a snapshot made under other cache types is refused as
//! another layout; prefix blocks of another cache type are never reused.
#![allow(missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use common::{gen_ids, greedy, isolate_cache, tiny};
use lem_engine::{Engine, EngineConfig};
use lem_kv::KvDtype;
use lem_model::LoadOptions;
use lem_state::{
    Identity, PrefixCache, PrefixCacheConfig, StateError, generate_cached, inspect_snapshot, load_snapshot,
    save_snapshot,
};

fn prompt(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32).map(|i| 3 + (i.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 7) % 61).collect()
}

fn engine(path: &std::path::Path, k: KvDtype, v: KvDtype) -> Engine {
    isolate_cache();
    let opts = LoadOptions { kv_dtype: k, kv_dtype_v: Some(v), ..LoadOptions::default() };
    Engine::load_with(path, EngineConfig { threads: 2, ctx_size: 1024 }, opts).unwrap()
}

#[test]
fn snapshots_of_quantised_caches_restore_exactly_and_other_types_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny::write(&tiny::gemma3(11), d.path(), "g.gguf");
    let f16 = engine(&model, KvDtype::F16, KvDtype::F16);
    for (k, v) in [(KvDtype::Q8_0, KvDtype::Q8_0), (KvDtype::Q4_0, KvDtype::Q5_1), (KvDtype::F16, KvDtype::Q4_1)] {
        let e = engine(&model, k, v);
        let layout = e.model().cache_layout();
        assert_eq!((layout.k_type, layout.v_type), (k, v));
        // 600 tokens: the window layers' rings have wrapped.
        let p = prompt(600, 1);
        let mut seq = e.new_sequence();
        seq.feed(&e, &p).unwrap();
        let snap = d.path().join(format!("{k}-{v}.lemkv"));
        let info = save_snapshot(&snap, &e, &seq, BTreeMap::new()).unwrap();
        // The file holds the blocks: bytes as the cache counts them.
        assert_eq!(info.kv_bytes, seq.cache().export_raw().iter().map(|l| l.bytes()).sum::<usize>());
        let read = inspect_snapshot(&snap).unwrap();
        assert_eq!((read.identity.layout.k_type, read.identity.layout.v_type), (k, v));
        // Restored: the same cells, bit for bit, and the same continuation.
        let mut restored = load_snapshot(&snap, &e).unwrap();
        assert_eq!(restored.cache().export_raw(), seq.cache().export_raw(), "{k}/{v}");
        let cont = prompt(5, 9);
        let mut fork = seq.fork();
        let want = gen_ids(&e, &mut seq, &cont, 8);
        assert_eq!(gen_ids(&e, &mut restored, &cont, 8), want, "{k}/{v} restored");
        assert_eq!(gen_ids(&e, &mut fork, &cont, 8), want, "{k}/{v} fork");
        // Another cache type is another layout.
        let err = load_snapshot(&snap, &f16).unwrap_err();
        assert!(matches!(err, StateError::LayoutMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&format!("cache type {}", if k != KvDtype::F16 { k } else { v })), "{err}");
        // And the state identity (what prefix blocks are keyed by) differs.
        assert_ne!(Identity::of(&e).unwrap().kv_digest(), Identity::of(&f16).unwrap().kv_digest());
    }
}

#[test]
fn prefix_blocks_of_a_quantised_cache_are_reused_exactly_and_only_by_the_same_types() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny::write(&tiny::gemma3(11), d.path(), "g.gguf");
    let q8 = engine(&model, KvDtype::Q8_0, KvDtype::Q8_0);
    let q4 = engine(&model, KvDtype::Q4_0, KvDtype::Q4_0);
    let p = prompt(300, 2);
    let cfg = PrefixCacheConfig::with_disk(d.path().join("pc"));
    let run = |e: &Engine, cache: &PrefixCache| {
        let mut s = e.new_sequence();
        let (g, r) =
            generate_cached(e, &mut s, &p, &greedy(6), Some(cache), &mut |_| ControlFlow::Continue(())).unwrap();
        (g.ids, r.reused_tokens, s.cache().export_raw())
    };
    let want = gen_ids(&q8, &mut q8.new_sequence(), &p, 6);
    let cache = PrefixCache::new(cfg.clone()).unwrap();
    let (cold, reused, cold_kv) = run(&q8, &cache);
    assert_eq!((cold, reused), (want.clone(), 0));
    let (warm, reused, warm_kv) = run(&q8, &cache);
    assert_eq!((warm, reused), (want.clone(), 256));
    // The reused blocks restore the cells bit for bit (results do not depend on how the
    // prompt was split into forwards).
    assert_eq!(warm_kv, cold_kv);
    // From disk, under the same types: reused; under other types: a cold start.
    let (disk, reused, _) = run(&q8, &PrefixCache::new(cfg.clone()).unwrap());
    assert_eq!((disk, reused), (want, 256));
    let (_, reused, _) = run(&q4, &PrefixCache::new(cfg).unwrap());
    assert_eq!(reused, 0, "q4_0 reused q8_0 blocks");
}

#[test]
fn smollm2_rotated_q4_0_state_is_exact() {
    // head_dim 64: keys and values are rotated before quantising (see KvDtype::rotation).
    let e = engine(&common::model_path("smollm2-135m"), KvDtype::Q4_0, KvDtype::Q8_0);
    assert_eq!(KvDtype::Q4_0.rotation(true, 64), Some(64));
    let p = common::tokens(&e, "The quick brown fox jumps over the lazy dog because it wants to see");
    let mut seq = e.new_sequence();
    seq.feed(&e, &p).unwrap();
    let d = tempfile::tempdir().unwrap();
    let snap = d.path().join("s.lemkv");
    save_snapshot(&snap, &e, &seq, BTreeMap::new()).unwrap();
    let mut restored = load_snapshot(&snap, &e).unwrap();
    assert_eq!(restored.cache().export_raw(), seq.cache().export_raw());
    let cont = common::tokens(&e, " what");
    let want = gen_ids(&e, &mut seq, &cont, 6);
    assert_eq!(gen_ids(&e, &mut restored, &cont, 6), want);
}
