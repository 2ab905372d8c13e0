//! On the packaged models: greedy output after a snapshot restore, a session wake and a
//! prefix-cache hit is token-identical to the uninterrupted run; truncate-then-regenerate
//! equals generating from the shorter prompt; a fork diverges without touching its
//! parent. Gemma 3's prompt is longer than its 512-token sliding window, so its window
//! layers have wrapped before every save, fork, truncation and block store.
#![allow(missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use common::{engine, gen_ids, greedy, long_text, more, tokens};
use lem_state::{
    PrefixCache, PrefixCacheConfig, SessionStore, Transcript, generate_cached, load_snapshot, save_snapshot,
};

const N: usize = 10;

fn check_model(alias: &str, words: usize) {
    let e = engine(alias);
    let dir = tempfile::tempdir().unwrap();
    let p = tokens(&e, &long_text(words));
    let q = more(&e, " Then the clerk wrote");
    let q2 = more(&e, " Nobody remembers why");
    let window = e.model().cache_layout().layers.iter().filter_map(|l| l.kind.window()).max();
    if let Some(w) = window {
        assert!(p.len() > w as usize, "{alias}: prompt of {} tokens does not pass the window {w}", p.len());
    }
    let full: Vec<u32> = p.iter().chain(&q).copied().collect();
    let want = gen_ids(&e, &mut e.new_sequence(), &full, N);

    // Snapshot: save after the prompt, restore, continue.
    let mut seq = e.new_sequence();
    seq.feed(&e, &p).unwrap();
    let snap = dir.path().join("p.lemkv");
    let labels = BTreeMap::from([("case".to_owned(), "real".to_owned())]);
    let info = save_snapshot(&snap, &e, &seq, labels).unwrap();
    assert_eq!(info.tokens, p.len());
    let mut restored = load_snapshot(&snap, &e).unwrap();
    assert_eq!(restored.tokens(), seq.tokens());
    assert_eq!(restored.cache().export_raw(), seq.cache().export_raw(), "{alias}: restored K/V differ");
    assert_eq!(gen_ids(&e, &mut restored, &q, N), want, "{alias}: after snapshot restore");

    // Session: sleep, wake, continue.
    let store = SessionStore::open(dir.path().join("sessions")).unwrap();
    let transcript = Transcript::default();
    store.sleep("s", &e, &seq, &transcript).unwrap();
    let (mut woken, t) = store.wake("s", &e).unwrap().expect("session exists");
    assert_eq!(t, transcript);
    assert_eq!(gen_ids(&e, &mut woken, &q, N), want, "{alias}: after session wake");

    // Fork: the child continues differently; the parent is untouched and still continues
    // like the uninterrupted run.
    let before = seq.cache().export_raw();
    let mut child = seq.fork();
    let child_ids = gen_ids(&e, &mut child, &q2, N);
    assert_ne!(child.tokens(), seq.tokens());
    assert_eq!(seq.cache().export_raw(), before, "{alias}: feeding the fork changed the parent");
    assert_eq!(seq.len(), p.len());
    assert_eq!(gen_ids(&e, &mut seq, &q, N), want, "{alias}: parent after fork");

    // Truncate (rollback past the continuation) and regenerate.
    seq.truncate(p.len()).unwrap();
    assert_eq!(seq.cache().export_raw(), before, "{alias}: truncation did not restore the cells");
    assert_eq!(gen_ids(&e, &mut seq, &q, N), want, "{alias}: after truncate");

    // Prefix cache: a cold run stores blocks and is itself identical; warm runs (memory,
    // then disk only) reuse them.
    let cfg = PrefixCacheConfig::with_disk(dir.path().join("prefix"));
    let cache = PrefixCache::new(cfg.clone()).unwrap();
    let run = |cache: &PrefixCache, prompt: &[u32]| {
        let mut s = e.new_sequence();
        let (g, r) =
            generate_cached(&e, &mut s, prompt, &greedy(N), Some(cache), &mut |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(g.prompt_ids, prompt);
        (g.ids, r)
    };
    let (cold, r) = run(&cache, &full);
    assert_eq!(cold, want, "{alias}: cold prefix-cache run");
    assert_eq!(r.reused_tokens, 0);
    assert!(r.stored_blocks >= full.len() / 64, "{alias}: {r:?}");
    let (warm, r) = run(&cache, &full);
    assert_eq!(warm, want, "{alias}: prefix-cache hit (memory)");
    assert_eq!(r.reused_tokens, (full.len() - 1) / 64 * 64, "{alias}: {r:?}");
    // A different continuation of the same prefix: what the fork produced.
    let branch: Vec<u32> = p.iter().chain(&q2).copied().collect();
    let (warm2, r) = run(&cache, &branch);
    assert_eq!(warm2, child_ids, "{alias}: prefix-cache hit with another continuation");
    assert!(r.reused_tokens >= p.len() / 64 * 64 - 64, "{alias}: {r:?}");
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (2, 1), "{alias}: {stats:?}");
    // A new process's cache: only the disk tier has the blocks.
    let disk_only = PrefixCache::new(cfg).unwrap();
    let (from_disk, r) = run(&disk_only, &full);
    assert_eq!(from_disk, want, "{alias}: prefix-cache hit (disk)");
    assert!(r.reused_tokens > 0);
    assert!(disk_only.stats().blocks_from_disk > 0);
}

#[test]
fn smollm2_state_is_exact() {
    check_model("smollm2-135m", 110);
}

#[test]
fn gemma3_state_is_exact_past_the_window() {
    check_model("gemma3-270m", 440);
}

/// A snapshot of one model is refused by the other, naming the model.
#[test]
fn other_real_model_is_refused() {
    let (a, b) = (engine("smollm2-135m"), engine("gemma3-270m"));
    let dir = tempfile::tempdir().unwrap();
    let mut seq = a.new_sequence();
    seq.feed(&a, &tokens(&a, "Hello there")).unwrap();
    let path = dir.path().join("a.lemkv");
    save_snapshot(&path, &a, &seq, BTreeMap::new()).unwrap();
    let err = load_snapshot(&path, &b).unwrap_err();
    assert!(matches!(err, lem_state::StateError::ModelMismatch { .. }), "{err}");
    assert!(err.to_string().contains("SmolLM2") && err.to_string().contains("gemma"), "{err}");
}
