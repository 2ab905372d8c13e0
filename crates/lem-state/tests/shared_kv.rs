//! Durable state of a model whose last layers share earlier layers' K/V (the tiny Gemma 4
//! fixture, `scripts/fixtures/tiny_gemma4.py`: layers 4 and 5 attend to layers 2's and
//! 3's caches). A snapshot, a fork and the prefix cache store each shared layer once
//! (the sharing layers hold nothing) and continue with logits bit for bit equal to the
//! uninterrupted run's.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;

use lem_engine::sampling::SamplingParams;
use lem_engine::{Engine, EngineConfig, GenerateRequest};
use lem_state::{PrefixCache, PrefixCacheConfig, generate_cached, load_snapshot, save_snapshot};

fn engine() -> Engine {
    let d = tempfile::tempdir().unwrap();
    // SAFETY: set before any engine is loaded, in the one test of this binary that loads.
    unsafe { std::env::set_var("LEM_CACHE_DIR", d.path()) };
    let dir = std::env::var_os("LEM_TINY_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tiny-models"));
    let path = dir.join("gemma4/f32.gguf");
    assert!(path.exists(), "{} is missing: run python3 scripts/fixtures/tiny_models.py", path.display());
    let e = Engine::load(&path, EngineConfig { threads: 2, ctx_size: 4096 }).unwrap();
    std::mem::forget(d);
    e
}

/// Deterministic ids below the fixture's 3000 ordinary tokens.
fn ids(seed: u32, n: usize) -> Vec<u32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(7);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s % 3000
        })
        .collect()
}

/// Logits after feeding each of `toks` one at a time.
fn logits_after(e: &Engine, seq: &mut lem_engine::Sequence, toks: &[u32]) -> Vec<Vec<f32>> {
    toks.iter().map(|&t| seq.feed(e, &[t]).unwrap().to_vec()).collect()
}

#[test]
fn snapshot_fork_and_prefix_cache_store_shared_layers_once() {
    let e = engine();
    let layout = e.model().cache_layout().clone();
    let sharing: Vec<usize> = (0..layout.layers.len()).filter(|&l| layout.layers[l].shares.is_some()).collect();
    assert_eq!(sharing, [4, 5], "the fixture's last two layers share K/V");
    // Longer than the 32-token window plus a batch, so sliding rings have wrapped.
    let prompt = ids(1, 150);
    let cont = ids(2, 6);
    let mut whole = e.new_sequence();
    whole.feed(&e, &prompt).unwrap();
    let want = logits_after(&e, &mut whole.fork(), &cont);

    let mut seq = e.new_sequence();
    seq.feed(&e, &prompt).unwrap();
    for &l in &sharing {
        assert_eq!(seq.cache().layer(l).cells(), 0, "layer {l} shares K/V and stores nothing");
        assert_eq!(seq.cache().export_raw()[l].tokens(), 0, "layer {l} exports nothing");
    }
    let shared_bytes: usize = seq.cache().export_raw().iter().map(|r| r.bytes()).sum();
    let own_bytes: usize = (0..4).map(|l| seq.cache().layer(l).bytes_used()).sum();
    assert_eq!(shared_bytes, own_bytes, "K/V of layers 2 and 3 is stored once");

    // Snapshot: the restored cache equals the saved one and continues bit for bit.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.lemkv");
    save_snapshot(&file, &e, &seq, BTreeMap::new()).unwrap();
    let mut back = load_snapshot(&file, &e).unwrap();
    assert!(back.cache().export_raw() == seq.cache().export_raw(), "restored K/V differ");
    assert!(logits_after(&e, &mut back, &cont) == want, "restored logits differ");

    // Fork: the fork and its parent both continue as the uninterrupted run does.
    let mut fork = seq.fork();
    assert!(logits_after(&e, &mut fork, &cont) == want, "fork logits differ");
    assert!(logits_after(&e, &mut seq, &cont) == want, "parent logits differ after the fork ran");

    // Prefix cache: the second request reuses the stored blocks and generates what an
    // uncached run generates.
    let cache = PrefixCache::new(PrefixCacheConfig::default()).unwrap();
    let req = GenerateRequest { max_tokens: 8, sampling: SamplingParams::greedy(), stop: vec![], ..Default::default() };
    let run = |p: &[u32]| {
        let mut s = e.new_sequence();
        generate_cached(&e, &mut s, p, &req, Some(&cache), &mut |_| ControlFlow::Continue(())).unwrap()
    };
    let mut q = prompt.clone();
    q.extend(ids(3, 5));
    let uncached =
        lem_engine::generate(&e, &mut e.new_sequence(), &q, &req, &mut |_| ControlFlow::Continue(())).unwrap().ids;
    let mut first = prompt.clone();
    first.extend(ids(4, 5));
    let (_, cold) = run(&first);
    assert_eq!(cold.reused_tokens, 0);
    let (warm, r) = run(&q);
    assert_eq!(r.reused_tokens, 128, "{r:?}");
    assert_eq!(warm.ids, uncached, "prefix-cached run differs from the uncached one");
}
