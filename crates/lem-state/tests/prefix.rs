//! The prefix cache on tiny models: exact reuse (also past a wrapped window), token-id
//! verification that never trusts a hash alone, LRU budgets on both tiers, corrupt disk
//! blocks, and concurrent readers and writers sharing one cache and one directory.
#![allow(missing_docs)]

mod common;

use std::ops::ControlFlow;
use std::sync::Arc;

use common::{gen_ids, greedy, load, tiny};
use lem_engine::Engine;
use lem_state::prefix::{Block, child_key, root_key};
use lem_state::{Identity, PrefixCache, PrefixCacheConfig, generate_cached};

fn prompt(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32).map(|i| 3 + (i.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 7) % 61).collect()
}

fn cached(e: &Engine, cache: &PrefixCache, p: &[u32], n: usize) -> (Vec<u32>, lem_state::PrefillReport) {
    let mut s = e.new_sequence();
    let (g, r) = generate_cached(e, &mut s, p, &greedy(n), Some(cache), &mut |_| ControlFlow::Continue(())).unwrap();
    (g.ids, r)
}

#[test]
fn reuse_is_exact_past_a_wrapped_window() {
    let d = tempfile::tempdir().unwrap();
    let e = load(&tiny::write(&tiny::gemma3(11), d.path(), "g.gguf"));
    let p = prompt(700, 1);
    let want = gen_ids(&e, &mut e.new_sequence(), &p, 6);
    let cfg = PrefixCacheConfig::with_disk(d.path().join("pc"));
    let cache = PrefixCache::new(cfg.clone()).unwrap();
    let (cold, r) = cached(&e, &cache, &p, 6);
    assert_eq!(cold, want);
    assert_eq!(r.reused_tokens, 0);
    assert_eq!(r.stored_blocks, 700 / 64 + usize::from((700 + 5) / 64 > 700 / 64));
    let (warm, r) = cached(&e, &cache, &p, 6);
    assert_eq!(warm, want);
    assert_eq!(r.reused_tokens, 640);
    assert_eq!(r.computed_tokens, 60);
    // Every shorter prompt sharing a prefix reuses whole blocks and stays exact.
    for len in [65, 128, 129, 517, 600] {
        let q: Vec<u32> = p[..len].iter().copied().chain(prompt(3, len as u32)).collect();
        let want = gen_ids(&e, &mut e.new_sequence(), &q, 4);
        let (got, r) = cached(&e, &cache, &q, 4);
        assert_eq!(got, want, "prefix {len}");
        assert_eq!(r.reused_tokens, len.min(q.len() - 1) / 64 * 64, "prefix {len}");
    }
    // From disk only.
    let fresh = PrefixCache::new(cfg).unwrap();
    let (disk, r) = cached(&e, &fresh, &p, 6);
    assert_eq!(disk, want);
    assert_eq!(r.reused_tokens, 640);
    assert_eq!(fresh.stats().blocks_from_disk, 10);
}

#[test]
fn a_hash_is_never_trusted_alone() {
    let d = tempfile::tempdir().unwrap();
    let e = load(&tiny::write(&tiny::llama(7), d.path(), "m.gguf"));
    let id = Identity::of(&e).unwrap();
    let cache = PrefixCache::new(PrefixCacheConfig::default()).unwrap();
    let (a, b) = (prompt(64, 1), prompt(64, 2));
    // A block stored under the key of `a` that holds `b`'s ids (as a hash collision would).
    let mut seq = e.new_sequence();
    seq.feed(&e, &b).unwrap();
    let root = root_key(&id.kv_digest(), 64);
    let forged = Block {
        key: child_key(&root, &a),
        parent: root,
        start: 0,
        tokens: b.clone(),
        layers: seq.cache().export_raw_range(0, 64).unwrap(),
    };
    cache.insert(&id, forged);
    let mut with_a: Vec<u32> = a.clone();
    with_a.push(5);
    assert!(cache.lookup(&id, &with_a, 64).is_empty(), "a block whose ids differ was reused");
    // Under another model identity nothing matches either.
    let mut other = id.clone();
    other.model_fingerprint = "0".repeat(64);
    let mut with_b = b.clone();
    with_b.push(5);
    assert!(cache.lookup(&other, &with_b, 64).is_empty());
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (0, 2));
}

#[test]
fn budgets_evict_least_recently_used() {
    let d = tempfile::tempdir().unwrap();
    let e = load(&tiny::write(&tiny::llama(7), d.path(), "m.gguf"));
    let id = Identity::of(&e).unwrap();
    let block_bytes = {
        let mut s = e.new_sequence();
        s.feed(&e, &prompt(64, 0)).unwrap();
        s.cache().export_raw_range(0, 64).unwrap().iter().map(|l| l.bytes()).sum::<usize>() + 64 * 4
    };
    let cfg = PrefixCacheConfig {
        memory_budget: 3 * block_bytes,
        disk_dir: Some(d.path().join("pc")),
        disk_budget: 4 * block_bytes as u64 + 4096,
        ..PrefixCacheConfig::default()
    };
    let cache = PrefixCache::new(cfg).unwrap();
    for i in 0..8 {
        let p = prompt(65, 100 + i);
        cached(&e, &cache, &p, 1);
        // The first prompt stays hot in memory.
        let hot = prompt(65, 100);
        assert_eq!(cache.lookup(&id, &hot, 64).len(), 1, "round {i}: the hot block was evicted");
    }
    let s = cache.stats();
    assert!(s.memory_bytes <= 3 * block_bytes as u64, "{s:?}");
    assert_eq!(s.memory_blocks, 3, "{s:?}");
    assert!(s.evicted_memory >= 5, "{s:?}");
    assert!(s.evicted_disk >= 3, "{s:?}");
    assert!(s.disk_bytes <= 4 * block_bytes as u64 + 4096, "{s:?}");
}

#[test]
fn corrupt_disk_blocks_are_misses() {
    let d = tempfile::tempdir().unwrap();
    let e = load(&tiny::write(&tiny::llama(7), d.path(), "m.gguf"));
    let dir = d.path().join("pc");
    let p = prompt(130, 4);
    let want = gen_ids(&e, &mut e.new_sequence(), &p, 4);
    cached(&e, &PrefixCache::new(PrefixCacheConfig::with_disk(&dir)).unwrap(), &p, 4);
    // Corrupt every block file (flip a byte near the end: tensor data).
    let mut files = Vec::new();
    for sub in std::fs::read_dir(dir.join("blocks")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    assert_eq!(files.len(), 2);
    for f in &files {
        let mut b = std::fs::read(f).unwrap();
        let at = b.len() - 3;
        b[at] ^= 1;
        std::fs::write(f, b).unwrap();
    }
    let cache = PrefixCache::new(PrefixCacheConfig::with_disk(&dir)).unwrap();
    let (got, r) = cached(&e, &cache, &p, 4);
    assert_eq!(got, want);
    assert_eq!(r.reused_tokens, 0, "a corrupt block was reused");
    assert_eq!(cache.stats().disk_errors, 1, "the first bad block ends the lookup");
    // The corrupt first block was deleted and then stored again, intact.
    let again = PrefixCache::new(PrefixCacheConfig::with_disk(&dir)).unwrap();
    assert!(!again.lookup(&Identity::of(&e).unwrap(), &p, 129).is_empty());
}

#[test]
fn concurrent_readers_and_writers() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny::write(&tiny::gemma3(11), d.path(), "g.gguf");
    let dir = d.path().join("pc");
    // Two caches on one directory stand for two processes; threads share each cache.
    let caches = [
        Arc::new(PrefixCache::new(PrefixCacheConfig::with_disk(&dir)).unwrap()),
        Arc::new(PrefixCache::new(PrefixCacheConfig::with_disk(&dir)).unwrap()),
    ];
    let shared = prompt(200, 7);
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let cache = caches[t % 2].clone();
            let (model, shared) = (model.clone(), shared.clone());
            std::thread::spawn(move || {
                let e = common::load(&model);
                for round in 0..3u32 {
                    let p: Vec<u32> = shared[..64 + 40 * round as usize]
                        .iter()
                        .copied()
                        .chain(prompt(20, t as u32 * 10 + round))
                        .collect();
                    let want = gen_ids(&e, &mut e.new_sequence(), &p, 3);
                    let (got, _) = cached(&e, &cache, &p, 3);
                    assert_eq!(got, want, "thread {t} round {round}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let hits: u64 = caches.iter().map(|c| c.stats().hits).sum();
    assert!(hits >= 6, "hits {hits}");
    assert!(caches.iter().all(|c| c.stats().disk_errors == 0));
}
