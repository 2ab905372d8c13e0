//! Durable KV state on the tiny random-weight qwen3 and gemma2 models
//! (`scripts/fixtures/tiny_models.py`), each from its F32 GGUF file and its Hugging Face
//! directory: snapshot restore, fork, the prefix cache and sessions continue greedy
//! generation exactly as the uninterrupted run does (gemma2's sliding-window ring has
//! wrapped before every operation), and state made under one architecture is refused by
//! the other. One check per feature, run over every case.
#![allow(missing_docs)]

#[path = "tiny_archs/mod.rs"]
mod tiny_archs;

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use lem_engine::Sequence;
use lem_kv::LayerKind;
use lem_state::{
    Identity, PrefixCache, PrefixCacheConfig, SessionStore, StateError, Transcript, TranscriptMessage, generate_cached,
    load_snapshot, save_snapshot,
};
use tiny_archs::{Case, cases, cat, gen_ids, greedy, long_ids, more, ring, wrapping_ids};

/// Greedy tokens to generate after each operation.
const N: usize = 12;

/// The continuation fed after the saved state.
const CONT: &str = " The keeper wrote in his log that night";

/// For gemma2, checks that the prompt made layer 0's ring wrap (so the state being saved
/// no longer holds the first positions) while layer 1 holds all of them; for qwen3, that
/// every layer is full attention. Guards against a test that passes vacuously.
fn check_layout(case: Case, seq: &Sequence) {
    let c = seq.cache();
    let n = seq.len() as u32;
    for l in 0..c.n_layers() {
        let layer = c.layer(l);
        let (oldest, newest) = (layer.oldest(), layer.newest());
        assert_eq!(newest, Some(n - 1), "{}: layer {l}", case.name());
        match layer.spec().kind {
            LayerKind::Full => assert_eq!(oldest, Some(0), "{}: layer {l}", case.name()),
            LayerKind::SlidingWindow { window } => {
                assert_eq!((case.arch, l, window), ("gemma2", 0, 32), "{}: layer {l}", case.name());
                assert!(oldest.unwrap() > 0, "{}: layer {l}'s ring did not wrap ({oldest:?})", case.name());
            }
            other => panic!("{}: layer {l} declares {other:?}", case.name()),
        }
    }
    let sliding = (0..c.n_layers()).filter(|&l| c.layer(l).spec().kind != LayerKind::Full).count();
    assert_eq!(sliding, usize::from(case.arch == "gemma2"), "{}", case.name());
}

/// Save -> load -> continue equals the uninterrupted run, and the restored cache is
/// byte-identical to the saved one (same cells, same ring layout).
#[test]
fn snapshot_restore_continues_like_the_uninterrupted_run() {
    for case in cases() {
        let e = case.engine();
        let name = case.name();
        let p = wrapping_ids(&e);
        let cont = more(&e, CONT);
        let want = gen_ids(&e, &mut e.new_sequence(), &cat(&p, &cont), N);
        assert!(!want.is_empty(), "{name}");

        let mut seq = e.new_sequence();
        seq.feed(&e, &p).unwrap();
        check_layout(case, &seq);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.lemkv");
        let info = save_snapshot(&file, &e, &seq, BTreeMap::new()).unwrap();
        assert_eq!(info.tokens, p.len(), "{name}");

        let mut back = load_snapshot(&file, &e).unwrap();
        assert_eq!(back.tokens(), p, "{name}");
        for l in 0..seq.cache().n_layers() {
            let (a, b) = (seq.cache().layer(l), back.cache().layer(l));
            assert!(a.export_raw() == b.export_raw(), "{name}: layer {l}: restored K/V differ");
            assert_eq!(a.view().pos, b.view().pos, "{name}: layer {l}: restored cell layout differs");
        }
        assert_eq!(gen_ids(&e, &mut back, &cont, N), want, "{name}: restored run differs");
        // The saved state itself, continued, agrees too.
        assert_eq!(gen_ids(&e, &mut seq, &cont, N), want, "{name}: uninterrupted prefix run differs");
    }
}

/// Two forks continue exactly as the original does, and feeding them leaves the
/// original's cells unchanged.
#[test]
fn forks_continue_like_the_original() {
    for case in cases() {
        let e = case.engine();
        let name = case.name();
        let p = wrapping_ids(&e);
        let cont = more(&e, CONT);
        let mut seq = e.new_sequence();
        seq.feed(&e, &p).unwrap();
        check_layout(case, &seq);
        let before = seq.cache().export_raw();
        let (mut a, mut b) = (seq.fork(), seq.fork());
        let got_a = gen_ids(&e, &mut a, &cont, N);
        let got_b = gen_ids(&e, &mut b, &cont, N);
        assert!(seq.cache().export_raw() == before, "{name}: feeding a fork changed its parent");
        assert_eq!(seq.tokens(), p, "{name}");
        let got = gen_ids(&e, &mut seq, &cont, N);
        assert!(!got.is_empty(), "{name}");
        assert_eq!(got_a, got, "{name}: fork a");
        assert_eq!(got_b, got, "{name}: fork b");
        // A fork whose continuation differs does not disturb its sibling.
        let mut c = b.fork();
        let mut d = b.fork();
        let other = more(&e, " and then");
        let got_c = gen_ids(&e, &mut c, &other, N);
        let got_d = gen_ids(&e, &mut d, &other, N);
        assert_eq!(got_c, got_d, "{name}: forks of a fork");
    }
}

/// A second generation sharing a long prefix reuses the cached blocks (memory, then disk
/// only) and produces the greedy tokens of a run without the cache. Prefixes of 200
/// tokens and, for gemma2, one longer than its ring.
#[test]
fn prefix_cache_reuses_a_shared_prefix() {
    for case in cases() {
        let e = case.engine();
        let name = case.name();
        let mut lens = vec![200];
        if let Some(r) = ring(&e) {
            lens.push(r + 100);
        }
        for len in lens {
            let prefix = long_ids(&e, len);
            let (p1, p2) = (cat(&prefix, &more(&e, " First question?")), cat(&prefix, &more(&e, " Another one!")));
            let dir = tempfile::tempdir().unwrap();
            let cfg = PrefixCacheConfig::with_disk(dir.path().join("pc"));
            let cache = PrefixCache::new(cfg.clone()).unwrap();
            let run = |cache: &PrefixCache, p: &[u32]| {
                let mut s = e.new_sequence();
                let (g, r) =
                    generate_cached(&e, &mut s, p, &greedy(N), Some(cache), &mut |_| ControlFlow::Continue(()))
                        .unwrap();
                (g.ids, r)
            };
            let want1 = gen_ids(&e, &mut e.new_sequence(), &p1, N);
            let want2 = gen_ids(&e, &mut e.new_sequence(), &p2, N);
            let (got1, r1) = run(&cache, &p1);
            assert_eq!(got1, want1, "{name} {len}: cold run");
            assert_eq!(r1.reused_tokens, 0, "{name} {len}");
            assert!(r1.stored_blocks >= len / 64, "{name} {len}: {r1:?}");

            let reusable = len / 64 * 64;
            assert!(reusable >= 128);
            let (got2, r2) = run(&cache, &p2);
            assert_eq!(r2.reused_tokens, reusable, "{name} {len}: {r2:?}");
            assert_eq!(r2.computed_tokens, p2.len() - reusable, "{name} {len}: {r2:?}");
            assert_eq!(got2, want2, "{name} {len}: warm run differs from the uncached one");
            let s = cache.stats();
            assert_eq!((s.hits, s.reused_tokens), (1, reusable as u64), "{name} {len}: {s:?}");
            assert_eq!(s.blocks_from_memory, (reusable / 64) as u64, "{name} {len}: {s:?}");

            // A fresh cache over the same directory: every block comes from disk.
            let fresh = PrefixCache::new(cfg).unwrap();
            let (got3, r3) = run(&fresh, &p2);
            assert_eq!(r3.reused_tokens, reusable, "{name} {len}: {r3:?}");
            assert_eq!(got3, want2, "{name} {len}: run from disk differs");
            assert_eq!(fresh.stats().blocks_from_disk, (reusable / 64) as u64, "{name} {len}");
        }
    }
}

/// A snapshot, a session and prefix blocks made with qwen3 are refused by gemma2 (and
/// the other way round), from either source: the model identity differs
/// (`ModelMismatch`), checked before anything else.
#[test]
fn state_of_one_architecture_is_refused_by_the_other() {
    for source in tiny_archs::SOURCES {
        let q = Case { arch: "qwen3", source }.engine();
        let g = Case { arch: "gemma2", source }.engine();
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(dir.path().join("sessions")).unwrap();
        for (from, to, made, other) in [("qwen3", "gemma2", &q, &g), ("gemma2", "qwen3", &g, &q)] {
            let what = format!("{from}/{source} -> {to}/{source}");
            let p = long_ids(made, 150);
            let mut seq = made.new_sequence();
            seq.feed(made, &p).unwrap();
            let file = dir.path().join(format!("{from}.lemkv"));
            save_snapshot(&file, made, &seq, BTreeMap::new()).unwrap();
            let err = load_snapshot(&file, other).unwrap_err();
            assert!(matches!(err, StateError::ModelMismatch { .. }), "{what}: {err}");
            assert!(err.to_string().contains("another model"), "{what}: {err}");
            let fp = other.model_fingerprint().unwrap().to_owned();
            assert!(err.to_string().contains(&fp[..16]), "{what}: the message names the engine's model: {err}");
            // The same file still restores under its own model.
            assert_eq!(load_snapshot(&file, made).unwrap().tokens(), p, "{what}");

            store.sleep(from, made, &seq, &Transcript::default()).unwrap();
            let err = store.wake(from, other).unwrap_err();
            assert!(matches!(err, StateError::ModelMismatch { .. }), "{what}: session: {err}");

            // Prefix blocks are keyed under the model: the other one finds none of them.
            let cache = PrefixCache::new(PrefixCacheConfig::default()).unwrap();
            assert!(cache.store(made, &seq).unwrap() >= 2, "{what}");
            assert!(!cache.lookup(&Identity::of(made).unwrap(), &p, p.len()).is_empty(), "{what}");
            assert!(cache.lookup(&Identity::of(other).unwrap(), &p, p.len()).is_empty(), "{what}");
            let mut s = other.new_sequence();
            assert_eq!(cache.restore(other, &mut s, &p).unwrap(), 0, "{what}");
            assert!(s.is_empty(), "{what}");
        }
    }
}

/// A session sleeps and wakes with its transcript, and the woken sequence continues like
/// the uninterrupted run; sleeping the continued sequence and waking it again still does.
#[test]
fn session_sleep_wake_round_trip() {
    for case in cases() {
        let e = case.engine();
        let name = case.name();
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(dir.path()).unwrap();
        let p = wrapping_ids(&e);
        let cont = more(&e, CONT);
        let full = cat(&p, &cont);
        let want = gen_ids(&e, &mut e.new_sequence(), &full, N);
        let mut seq = e.new_sequence();
        seq.feed(&e, &p).unwrap();
        check_layout(case, &seq);
        let transcript =
            Transcript { messages: vec![TranscriptMessage { role: "user".into(), content: "a long document".into() }] };
        let info = store.sleep("chat", &e, &seq, &transcript).unwrap();
        assert_eq!((info.tokens, info.messages), (p.len(), 1), "{name}");
        assert_eq!(info.model_fingerprint, e.model_fingerprint().unwrap(), "{name}");

        let (mut woken, t) = store.wake("chat", &e).unwrap().unwrap();
        assert_eq!(t, transcript, "{name}");
        assert_eq!(woken.tokens(), p, "{name}");
        assert!(woken.cache().export_raw() == seq.cache().export_raw(), "{name}: woken K/V differ");
        assert_eq!(gen_ids(&e, &mut woken, &cont, N), want, "{name}: woken run differs");

        // Second turn: sleep what the generation left, wake, continue; compare with one
        // run over the same tokens.
        store.sleep("chat", &e, &woken, &transcript).unwrap();
        let next = more(&e, " Later,");
        let want2 = gen_ids(&e, &mut e.new_sequence(), &cat(woken.tokens(), &next), N);
        let (mut again, _) = store.wake("chat", &e).unwrap().unwrap();
        assert_eq!(again.tokens(), woken.tokens(), "{name}");
        assert_eq!(gen_ids(&e, &mut again, &next, N), want2, "{name}: second wake differs");
    }
}
