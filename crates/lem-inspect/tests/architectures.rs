//! Scoring and capture on the tiny random-weight qwen3 and gemma2 models
//! (`scripts/fixtures/tiny_models.py`), each from its F32 GGUF file and its Hugging Face
//! directory: `lem score attention`'s library path, captured keys against the KV cache
//! (also after gemma2's sliding-window ring has wrapped), and attention weights masked
//! outside gemma2's 32-token window. One check per feature, run over every case.
#![allow(missing_docs)]

#[path = "../../lem-state/tests/tiny_archs/mod.rs"]
mod tiny_archs;

use lem_inspect::{CaptureSpec, Kind, ModelIdentity, Recorder, capture_prefill, score_prompt};
use lem_kv::LayerKind;
use lem_model::Workspace;
use lem_score::{KeySnapshot, score};
use tiny_archs::{Case, cases, long_ids, text_ids, wrapping_ids};

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// The geometry each architecture's fixture declares (tests/fixtures/tiny/README.md):
/// layers, query heads, KV heads, head_dim, layer kinds.
fn expected(arch: &str) -> (usize, usize, usize, usize, Vec<LayerKind>) {
    match arch {
        "qwen3" => (2, 4, 2, 32, vec![LayerKind::Full, LayerKind::Full]),
        "gemma2" => (2, 4, 2, 16, vec![LayerKind::SlidingWindow { window: 32 }, LayerKind::Full]),
        other => panic!("no geometry for {other}"),
    }
}

/// `score_prompt` (what `lem score attention` runs) on the fixture text: a key snapshot
/// of every layer with the model's identity and the token ids, whose keys are the
/// cache's keys of a plain prefill; scores in the few-head regime that survive a save
/// and load of the snapshot.
#[test]
fn score_attention_on_both_architectures() {
    for case in cases() {
        let e = case.engine();
        let name = case.name();
        let (n_layer, n_head, n_kv, head_dim, kinds) = expected(case.arch);
        let c = e.model().config();
        assert_eq!((c.n_layer, c.n_head, c.n_kv, c.head_dim), (n_layer, n_head, n_kv, head_dim), "{name}");
        assert_eq!(c.layer_kinds, kinds, "{name}");

        let ids = text_ids(&e);
        assert_eq!(ids.len(), 296, "{name}");
        let identity = ModelIdentity::of(&e).unwrap();
        assert_eq!(identity.architecture, case.arch, "{name}");
        assert_eq!(identity.fingerprint, e.model_fingerprint().unwrap(), "{name}");
        let r = score_prompt(&e, &ids, &identity).unwrap();
        let snap = &r.snapshot;
        assert_eq!(
            (snap.n_layers(), snap.n_kv_heads(), snap.n_tokens(), snap.head_dim()),
            (n_layer, n_kv, ids.len(), head_dim),
            "{name}"
        );
        let meta = snap.meta();
        assert!(meta.post_rotary, "{name}");
        assert_eq!(meta.token_ids, ids, "{name}");
        assert_eq!(meta.model_fingerprint, identity.fingerprint, "{name}");
        assert_eq!(meta.model_name, identity.file, "{name}");

        // The snapshot's keys are the K rows a plain prefill stores (296 tokens: gemma2's
        // ring of 32 + max_batch cells still holds every position).
        let mut seq = e.new_sequence();
        seq.feed(&e, &ids).unwrap();
        for l in 0..n_layer {
            let ex = seq.cache().layer(l).export();
            assert_eq!(ex.positions, (0..ids.len() as u32).collect::<Vec<_>>(), "{name}: layer {l}");
            let keys = snap.layer_keys(l).unwrap_or_else(|| panic!("{name}: layer {l} missing"));
            assert_eq!(bits(&keys.concat()), bits(&ex.k), "{name}: layer {l}: snapshot keys differ from the cache");
        }

        let s = &r.scores;
        assert!(s.few_heads, "{name}: 2 KV heads is the few-head regime");
        assert_eq!((s.layer_coherence.len(), s.layer_cross_alignment.len()), (n_layer, n_layer - 1), "{name}");
        assert!(s.composite <= 10_000, "{name}: {}", s.composite);
        assert!(s.features.iter().all(|f| f.is_finite()), "{name}: {:?}", s.features);
        assert!(
            [s.mean_coherence, s.mean_cross_alignment, s.mean_head_entropy, s.phase_lock].iter().all(|v| v.is_finite()),
            "{name}: {s:?}"
        );
        assert!(s.mean_head_entropy > 0.0, "{name}: random keys have entropy: {s:?}");
        assert_eq!(score(snap), *s, "{name}: scoring is deterministic");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.safetensors");
        snap.save(&file).unwrap();
        let back = KeySnapshot::load(&file).unwrap();
        assert!(back == *snap, "{name}: the saved snapshot differs");
        assert_eq!(score(&back), *s, "{name}");
    }
}

/// Post-rotary keys and values captured through the engine's own path
/// (`Sequence::feed_observed` with a `Recorder`) and through `capture_prefill` equal the
/// cache's rows bit for bit at every position the cache holds, with a prompt long enough
/// that gemma2's ring has wrapped (its sliding layer then holds only the last positions)
/// and that the prefill takes two forward calls. Queries have the query-head shape.
#[test]
fn captured_keys_equal_the_cache() {
    for case in cases() {
        let e = case.engine();
        let name = case.name();
        let ids = wrapping_ids(&e);
        let c = e.model().config();
        let (n, hd) = (c.n_layer, c.head_dim);
        let all: Vec<usize> = (0..n).collect();
        let kinds = [Kind::Keys, Kind::Values, Kind::Queries];

        let mut seq = e.new_sequence();
        let mut rec = Recorder::new(CaptureSpec::new(n, &kinds, &all), 0, ids.len());
        seq.feed_observed(&e, &ids, Some(&mut rec)).unwrap();
        let via_seq = rec.finish().unwrap();
        let mut cache = e.model().new_cache();
        let spec = CaptureSpec::new(n, &kinds, &all);
        let via_prefill =
            capture_prefill(e.model(), e.threads(), &mut cache, &mut Workspace::default(), &ids, spec).unwrap();
        assert!(ids.len() > e.model().max_batch() || case.arch == "qwen3", "{name}: one forward call only");

        for (how, caps, stored) in [("feed_observed", &via_seq, seq.cache()), ("capture_prefill", &via_prefill, &cache)]
        {
            assert_eq!(caps.first_position(), 0);
            for l in 0..n {
                let ex = stored.layer(l).export();
                let t = ex.positions.len();
                match c.layer_kinds[l] {
                    LayerKind::Full => assert_eq!(t, ids.len(), "{name}: layer {l}"),
                    LayerKind::SlidingWindow { .. } | LayerKind::SinkWindow { .. } => {
                        let ring = stored.layer(l).ring_capacity().unwrap();
                        assert_eq!(t, ring, "{name}: layer {l} holds a full ring");
                        assert!(t < ids.len(), "{name}: layer {l}'s ring did not wrap");
                    }
                }
                let (k, v) = (caps.get(l, Kind::Keys).unwrap(), caps.get(l, Kind::Values).unwrap());
                assert_eq!(k.shape(), [c.n_kv, ids.len(), hd], "{name} {how}: layer {l}");
                assert_eq!(v.shape(), [c.n_kv, ids.len(), hd], "{name} {how}: layer {l}");
                let q = caps.get(l, Kind::Queries).unwrap();
                assert_eq!(q.shape(), [c.n_head, ids.len(), hd], "{name} {how}: layer {l}");
                for h in 0..c.n_kv {
                    for (i, &p) in ex.positions.iter().enumerate() {
                        let at = (h * t + i) * hd;
                        let (ck, cv) = (&ex.k[at..at + hd], &ex.v[at..at + hd]);
                        let p = p as usize;
                        assert_eq!(bits(k.row(h, p)), bits(ck), "{name} {how}: layer {l} head {h} key at {p}");
                        assert_eq!(bits(v.row(h, p)), bits(cv), "{name} {how}: layer {l} head {h} value at {p}");
                    }
                }
            }
        }
        // Both paths leave the same cache and capture the same tensors.
        assert!(seq.cache().export() == cache.export(), "{name}: the two prefills' caches differ");
        assert!(via_seq == via_prefill, "{name}: the two paths captured different tensors");
    }
}

/// Attention rows (softmax output, column = absolute key position) sum to 1, are 0 for
/// future keys and, on gemma2's sliding layer, for keys 32 or more positions back; every
/// visible key has positive weight. Checked for a capture after a 40-token prefix
/// (columns cover the prefix too) and for one decode step after the ring has wrapped
/// (columns for evicted positions are 0).
#[test]
fn attention_is_zero_outside_the_window() {
    for case in cases() {
        let e = case.engine();
        let name = case.name();
        let c = e.model().config();
        let (_, _, _, _, kinds) = expected(case.arch);
        assert_eq!(c.layer_kinds, kinds, "{name}");
        let n = c.n_layer;
        let all: Vec<usize> = (0..n).collect();
        let check = |what: &str, caps: &lem_inspect::Captures| {
            let first = caps.first_position() as usize;
            let t = caps.n_tokens();
            for (l, kind) in kinds.iter().enumerate() {
                let a = caps.get(l, Kind::Attention).unwrap();
                assert_eq!(a.shape(), [c.n_head, t, first + t], "{name} {what}: layer {l}");
                let mut masked = 0usize;
                for h in 0..c.n_head {
                    for r in 0..t {
                        let q = first + r;
                        let row = a.row(h, r);
                        let sum: f64 = row.iter().map(|&w| f64::from(w)).sum();
                        assert!((sum - 1.0).abs() < 1e-4, "{name} {what}: layer {l} head {h} query {q} sums to {sum}");
                        for (p, &w) in row.iter().enumerate() {
                            let visible = match *kind {
                                LayerKind::Full => p <= q,
                                LayerKind::SlidingWindow { window } => p <= q && q - p < window as usize,
                                LayerKind::SinkWindow { sinks, window, .. } => {
                                    p <= q && (p < sinks as usize || q - p < window as usize)
                                }
                            };
                            if visible {
                                assert!(w > 0.0, "{name} {what}: layer {l} head {h}: query {q} ignores key {p}");
                            } else {
                                assert!(w == 0.0, "{name} {what}: layer {l} head {h}: query {q} sees key {p} ({w})");
                                masked += usize::from(p <= q);
                            }
                        }
                    }
                }
                // The window really cut something off (and full layers nothing).
                let sliding = matches!(kind, LayerKind::SlidingWindow { .. });
                assert_eq!(masked > 0, sliding, "{name} {what}: layer {l}: {masked} past keys masked");
            }
        };

        // 40 tokens, then 60 more captured: queries 40..100 over keys 0..100.
        let ids = long_ids(&e, 100);
        let mut seq = e.new_sequence();
        seq.feed(&e, &ids[..40]).unwrap();
        let mut rec = Recorder::new(CaptureSpec::new(n, &[Kind::Attention], &all), 40, 60);
        seq.feed_observed(&e, &ids[40..], Some(&mut rec)).unwrap();
        check("after a prefix", &rec.finish().unwrap());

        // One decode step after the ring wrapped.
        let ids = wrapping_ids(&e);
        let mut seq = e.new_sequence();
        seq.feed(&e, &ids[..ids.len() - 1]).unwrap();
        let last = ids.len() - 1;
        let mut rec = Recorder::new(CaptureSpec::new(n, &[Kind::Attention], &all), last as u32, 1);
        seq.feed_observed(&e, &ids[last..], Some(&mut rec)).unwrap();
        check("decode after the ring wrapped", &rec.finish().unwrap());
    }
}

/// The same weights from the GGUF file and the HF directory score alike: the scores of
/// the fixture text agree to within the f16 rounding of the cached keys.
#[test]
fn both_sources_score_alike() {
    for arch in tiny_archs::ARCHS {
        let [gguf, hf] = [Case { arch, source: "f32.gguf" }, Case { arch, source: "hf" }].map(|c| c.engine());
        let ids = text_ids(&gguf);
        assert_eq!(text_ids(&hf), ids, "{arch}: the two tokenizers differ");
        let s = |e: &lem_engine::Engine| score_prompt(e, &ids, &ModelIdentity::of(e).unwrap()).unwrap();
        let (a, b) = (s(&gguf), s(&hf));
        assert_ne!(a.snapshot.meta().model_fingerprint, "", "{arch}");
        let mut worst = 0f32;
        for l in 0..a.snapshot.n_layers() {
            let (ka, kb) = (a.snapshot.layer_keys(l).unwrap().concat(), b.snapshot.layer_keys(l).unwrap().concat());
            for (x, y) in ka.iter().zip(&kb) {
                worst = worst.max((x - y).abs() / x.abs().max(1.0));
            }
        }
        eprintln!(
            "{arch}: largest key difference GGUF vs HF {worst:e}; composite {} vs {}",
            a.scores.composite, b.scores.composite
        );
        assert!(worst < 1e-2, "{arch}: keys differ by {worst}");
        let (ca, cb) = (i64::from(a.scores.composite), i64::from(b.scores.composite));
        assert!((ca - cb).abs() <= 50, "{arch}: composite {ca} vs {cb}");
    }
}
