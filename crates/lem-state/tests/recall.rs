//! Evicted-block recall (`KvBound::recall_blocks`, `--kv-recall-blocks`) on tiny models: a
//! bounded layer with a recall tier gives the plain bound's bits until a whole block has
//! left the window, then attends to recalled blocks too; recalling every block comes
//! closer to full attention than the plain bound; results do not depend on batch shape;
//! fork, rollback (speculative decoding) and snapshots keep the tier, and a snapshot of
//! another recall setting is another layout.
#![allow(missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use common::bounded::{assert_chunking_invariant, engine, logits_each, prompt};
use common::{gen_ids, greedy, isolate_cache, tiny};
use lem_engine::{DraftConfig, Engine, EngineConfig, GenerateRequest, generate};
use lem_kv::recall::{BLOCK, RecallSelect};
use lem_kv::{KvBound, SinkPositions};
use lem_model::LoadOptions;
use lem_state::{StateError, load_snapshot, save_snapshot};

const SINKS: u32 = 4;
const WINDOW: u32 = 16;

fn recall(blocks: u32) -> KvBound {
    KvBound { recall_blocks: blocks, ..KvBound::new(SINKS, WINDOW) }
}

fn distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn recall_starts_when_a_block_leaves_the_window_and_brings_attention_closer_to_full() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny::write(&tiny::llama(21), d.path(), "l.gguf");
    let full = engine(&model, None);
    let plain = engine(&model, Some(KvBound::new(SINKS, WINDOW)));
    let two = engine(&model, Some(recall(2)));
    let all = engine(&model, Some(recall(64)));
    let ids = prompt(200, 3);
    let (want, bounded) = (logits_each(&full, &ids, 1), logits_each(&plain, &ids, 1));
    let got = logits_each(&two, &ids, 1);
    // The first query with a block wholly outside its window sits at sinks + window +
    // BLOCK - 1: until then, the plain bound's bits.
    let first = (SINKS + WINDOW + BLOCK - 1) as usize;
    for p in 0..first {
        assert_eq!(got[p], bounded[p], "position {p}");
    }
    for p in first..ids.len() {
        assert_ne!(got[p], bounded[p], "position {p}");
    }
    // Recalling every block leaves out only the part of a block the window cuts: closer
    // to full attention than the plain bound at every later position.
    let everything = logits_each(&all, &ids, 1);
    for p in first + BLOCK as usize..ids.len() {
        let (near, far) = (distance(&everything[p], &want[p]), distance(&bounded[p], &want[p]));
        assert!(near < far, "position {p}: recall-all is {near} from full, the plain bound {far}");
    }
    // Batch shape does not matter.
    assert_chunking_invariant(&two, &ids, &got, &[7, 200]);

    // Exact selection: recalling every block is the same attention whatever the ranking;
    // two blocks by exact scores pick other blocks than the bound somewhere, and batch
    // shape does not matter either.
    // The same holds for the one-bit key sketch.
    for select in [RecallSelect::Exact, RecallSelect::Sketch] {
        let by = |blocks| engine(&model, Some(KvBound { recall_select: select, ..recall(blocks) }));
        assert_eq!(logits_each(&by(64), &ids, 1), everything, "{select:?}");
        let two_by = logits_each(&by(2), &ids, 1);
        assert!((first..ids.len()).any(|p| two_by[p] != got[p]), "{select:?} and bound chose alike everywhere");
        assert_chunking_invariant(&by(2), &ids, &two_by, &[7, 200]);
    }
}

#[test]
fn the_tier_survives_fork_rollback_and_snapshots_and_resident_bytes_stay_bounded() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny::write(&tiny::llama(23), d.path(), "l.gguf");
    let e = engine(&model, Some(recall(2)));
    let p = prompt(e.model().max_batch() + 300, 4);
    let mut seq = e.new_sequence();
    seq.feed(&e, &p).unwrap();
    let mem = seq.cache().memory();
    assert!(mem.offloaded_bytes > 0, "{mem:?}");
    let layer = seq.cache().layer(0);
    let held = layer.ring_capacity().unwrap() + 2 * BLOCK as usize;
    assert!(layer.bytes_used() <= held * layer.cell_bytes(), "{} bytes over {held} positions", layer.bytes_used());
    // A longer prompt: more offloaded, the same bound on what is resident.
    let mut longer = e.new_sequence();
    longer.feed(&e, &prompt(p.len() + 150, 4)).unwrap();
    assert!(longer.cache().memory().offloaded_bytes > mem.offloaded_bytes);
    assert!(longer.cache().layer(0).bytes_used() <= held * layer.cell_bytes());

    let cont = prompt(6, 9);
    let snap = d.path().join("r.lemkv");
    save_snapshot(&snap, &e, &seq, BTreeMap::new()).unwrap();
    let mut restored = load_snapshot(&snap, &e).unwrap();
    let mut fork = seq.fork();
    let want = gen_ids(&e, &mut seq, &cont, 8);
    assert_eq!(gen_ids(&e, &mut restored, &cont, 8), want, "restored");
    assert_eq!(gen_ids(&e, &mut fork, &cont, 8), want, "fork");

    // Another recall setting, or none, is another layout.
    let exact = KvBound { recall_select: RecallSelect::Exact, ..recall(2) };
    let sketch = KvBound { recall_select: RecallSelect::Sketch, ..recall(2) };
    for other in [Some(KvBound::new(SINKS, WINDOW)), Some(recall(3)), Some(exact), Some(sketch)] {
        match load_snapshot(&snap, &engine(&model, other)) {
            Err(StateError::LayoutMismatch { .. }) => {}
            r => panic!("{other:?}: {:?}", r.map(|_| ())),
        }
    }

    // Speculative decoding rolls back rejected drafts through the tier.
    let cycle = prompt(20, 3);
    let p: Vec<u32> = cycle.iter().copied().cycle().take(300).collect();
    let plain = gen_ids(&e, &mut e.new_sequence(), &p, 24);
    let req = GenerateRequest { draft: Some(DraftConfig::ngram()), ..greedy(24) };
    let g = generate(&e, &mut e.new_sequence(), &p, &req, &mut |_| ControlFlow::Continue(())).unwrap();
    assert!(g.speculation.drafted > 0, "nothing was drafted");
    assert_eq!(g.ids, plain, "speculative output differs ({:?})", g.speculation);
}

#[test]
fn recall_needs_original_positions() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny::write(&tiny::llama(25), d.path(), "l.gguf");
    isolate_cache();
    let bound = KvBound { positions: SinkPositions::Rebased, ..recall(2) };
    let opts = LoadOptions { kv_bound: Some(bound), ..LoadOptions::default() };
    let Err(err) = Engine::load_with(&model, EngineConfig { threads: 2, ctx_size: 512 }, opts) else {
        panic!("recall with rebased positions was accepted")
    };
    assert!(err.to_string().contains("original positions"), "{err}");
}
