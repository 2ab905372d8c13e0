//! The batcher's prefill and the prefix cache on a sliding-window model (tiny gemma3:
//! window 4, ring 4 + 512): a prompt much longer than the ring is stored block by block
//! through `TokenSink::prefilled` (as `lem serve` does), so the whole prompt is reusable
//! and the reused run generates what the uninterrupted one did. Storing only when the job
//! ends (the old server behaviour) keeps nothing of it, because the window has dropped the
//! early positions by then.

mod common;

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use common::{greedy, load, long_text, tiny, tokens};
use lem_engine::{BatchConfig, BatchEvent, Batcher, Engine, Job, Sequence, TokenSink};
use lem_state::{PrefixCache, PrefixCacheConfig};

/// Collects ids; stores prompt blocks as the prefill passes them when `store` is set.
struct Sink {
    cache: Arc<PrefixCache>,
    store: bool,
    ids: Arc<Mutex<Vec<u32>>>,
    calls: Arc<Mutex<usize>>,
}

impl TokenSink for Sink {
    fn event(&mut self, event: BatchEvent<'_>) -> ControlFlow<()> {
        if let BatchEvent::Token { id, .. } = event {
            self.ids.lock().unwrap().push(id);
        }
        ControlFlow::Continue(())
    }

    fn prefilled(&mut self, engine: &Engine, seq: &Sequence) {
        *self.calls.lock().unwrap() += 1;
        if self.store {
            self.cache.store(engine, seq).unwrap();
        }
    }
}

/// Runs one greedy job of `n` tokens through a batcher (prefill chunk 100, so chunks do
/// not end on block boundaries), storing its blocks at the end too, as the server does.
/// Returns the generated ids and the number of prefill calls.
fn run(e: &Engine, cache: &Arc<PrefixCache>, seq: Sequence, prompt: &[u32], store: bool) -> (Vec<u32>, usize) {
    let ids = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(Mutex::new(0));
    let mut b = Batcher::new(BatchConfig { max_active: 2, prefill_chunk: 100 });
    let sink = Sink { cache: cache.clone(), store, ids: ids.clone(), calls: calls.clone() };
    let job = Job { seq, prompt_ids: prompt.to_vec(), request: greedy(8), top_logprobs: None, sink: Box::new(sink) };
    b.admit(e, job).unwrap();
    while !b.is_idle() {
        for f in b.step(e) {
            f.result.unwrap();
            cache.store(e, &f.seq).unwrap();
        }
    }
    let ids = ids.lock().unwrap().clone();
    let calls = *calls.lock().unwrap();
    (ids, calls)
}

#[test]
fn prefill_stores_blocks_past_a_sliding_window() {
    let d = tempfile::tempdir().unwrap();
    let e = load(&tiny::write(&tiny::gemma3(11), d.path(), "g.gguf"));
    let prompt = tokens(&e, &long_text(160));
    let ring = 4 + e.model().max_batch();
    assert!(prompt.len() > ring + 128 && prompt.len() < e.ctx_size() - 16, "{} tokens", prompt.len());
    let blocks = (prompt.len() - 1) / 64 * 64;

    // The old way: blocks stored only at the end are gone from the window's ring.
    let late = Arc::new(PrefixCache::new(PrefixCacheConfig::default()).unwrap());
    let (want, calls) = run(&e, &late, e.new_sequence(), &prompt, false);
    assert_eq!(calls, prompt.len().div_ceil(100), "one prefill call per chunk");
    assert_eq!(late.restore(&e, &mut e.new_sequence(), &prompt).unwrap(), 0);

    // Stored as the prefill passes them: every whole block of the prompt is reusable.
    let cache = Arc::new(PrefixCache::new(PrefixCacheConfig::default()).unwrap());
    let (ids, _) = run(&e, &cache, e.new_sequence(), &prompt, true);
    assert_eq!(ids, want, "storing does not change the generation");
    let mut seq = e.new_sequence();
    assert_eq!(cache.restore(&e, &mut seq, &prompt).unwrap(), blocks);
    assert_eq!(seq.len(), blocks);

    // A job continuing from the restored blocks generates what the uninterrupted run did.
    let rest = prompt[blocks..].to_vec();
    let (reused, calls) = run(&e, &cache, seq, &rest, true);
    assert_eq!(reused, want);
    assert_eq!(calls, 1, "only the tail is prefilled");
}
