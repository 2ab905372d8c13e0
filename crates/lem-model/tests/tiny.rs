//! Fast, hermetic tests of the model layer on tiny random-weight GGUF files built in the
//! test (see `support/`): no downloads, no fixtures, milliseconds per model.
//!
//! Each property has one `check_*` helper; the `#[test]`s run it over both architectures
//! and several weight types. The most important one, [`check_reference`], compares lem's
//! forward with an independent naive f64 implementation written from the architecture
//! definitions (`support/reference.rs`).
//!
//! `TINY_DEBUG=1` prints the reference errors instead of asserting them;
//! `TINY_FUZZ_CASES=N` runs the loader fuzz test for N cases (default 200).
#![allow(missing_docs)]

mod support;

use std::path::Path;
use std::sync::OnceLock;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Value;
use lem_kernels::Threads;
use lem_kv::{KvDtype, KvError, LayerExport, SeqCache};
use lem_model::{Capture, CaptureKind, Captured, LogitsRequest, Model, ModelError, Observer, SeqInput, Workspace};
use rand::{Rng, SeedableRng};
use support::reference::Precision;
use support::{Arch, Spec, TinyModel};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A tiny model written to a temporary directory and loaded.
struct Loaded {
    _dir: tempfile::TempDir,
    model: Model,
    tiny: TinyModel,
}

fn load(spec: &Spec) -> Loaded {
    let tiny = spec.build();
    let dir = tempfile::tempdir().unwrap();
    let path = tiny.write(dir.path(), "tiny.gguf");
    let model = Model::load(&path).unwrap_or_else(|e| panic!("{spec:?}: load failed: {e}"));
    Loaded { _dir: dir, model, tiny }
}

/// One inline worker: the test binary runs tests in parallel already.
fn threads() -> &'static Threads {
    static T: OnceLock<Threads> = OnceLock::new();
    T.get_or_init(|| Threads::new(1))
}

/// Runs one sequence's `tokens` through the model and returns the requested logits.
fn step(model: &Model, cache: &mut SeqCache, tokens: &[u32], req: LogitsRequest, ws: &mut Workspace) -> Vec<f32> {
    let mut b = [SeqInput { tokens, cache, logits: req }];
    model.forward(&mut b, ws, threads(), None).unwrap();
    ws.logits(0, model.vocab()).to_vec()
}

/// Logits of every position for `tokens` fed in one call on a fresh default cache.
fn prefill_all(model: &Model, tokens: &[u32]) -> Vec<f32> {
    step(model, &mut model.new_cache(), tokens, LogitsRequest::All, &mut Workspace::default())
}

/// Deterministic pseudo-random token ids.
fn tokens(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

/// `max |a - b| / max |b|`.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    if a.iter().chain(b).any(|v| !v.is_finite()) {
        return f32::INFINITY;
    }
    diff / scale
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let e = rel_err(got, want);
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

/// Feeds `toks` in calls of `chunk` tokens (at most the model's batch limit), returning
/// the logits of every position.
fn feed(model: &Model, cache: &mut SeqCache, toks: &[u32], chunk: usize, ws: &mut Workspace) -> Vec<f32> {
    let mut out = Vec::with_capacity(toks.len() * model.vocab());
    for c in toks.chunks(chunk.min(model.max_batch())) {
        out.extend(step(model, cache, c, LogitsRequest::All, ws));
    }
    out
}

/// Cells a sliding-window layer keeps: the window plus one batch of new tokens.
fn ring_cells(model: &Model, spec: &Spec) -> usize {
    spec.window as usize + model.max_batch()
}

fn name(spec: &Spec) -> String {
    format!("{}/{:?}", spec.arch.name(), spec.dtype)
}

/// Weight types every property runs over (block-size compatible dims are chosen by the spec).
const DTYPES: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::Q8_0,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q4K,
];

fn all_specs() -> Vec<Spec> {
    DTYPES.iter().flat_map(|&t| [Spec::llama(t), Spec::gemma3(t)]).collect()
}

// ---------------------------------------------------------------------------------------
// Prefill == decode
// ---------------------------------------------------------------------------------------

/// Feeding `n` tokens in one call gives the same per-position logits (`All`) and the same
/// last-position logits (`Last`) as feeding them one at a time.
fn check_prefill_matches_decode(spec: &Spec, n: usize) {
    let l = load(spec);
    let (m, v) = (&l.model, l.model.vocab());
    let toks = tokens(1, n, v);
    let all = prefill_all(m, &toks);
    assert_eq!(all.len(), n * v);
    let last = step(m, &mut m.new_cache(), &toks, LogitsRequest::Last, &mut Workspace::default());
    assert_close(&format!("{}: Last vs All", name(spec)), &last, &all[(n - 1) * v..], 1e-4);
    let mut cache = m.new_cache();
    let mut ws = Workspace::default();
    for (i, t) in toks.iter().enumerate() {
        let row = step(m, &mut cache, std::slice::from_ref(t), LogitsRequest::Last, &mut ws);
        assert_close(&format!("{}: decode pos {i}", name(spec)), &row, &all[i * v..(i + 1) * v], 1e-4);
    }
    assert_eq!(cache.len(), n as u32);
}

/// A sequence longer than the sliding-window ring (window + max_batch cells), fed in
/// calls of `chunk` tokens, gets the same logits at every position as when fed in calls of
/// 256; the local layers' rings wrapped and hold exactly their capacity.
fn check_ring_wrap(spec: &Spec, n: usize, chunk: usize) {
    let l = load(spec);
    let (m, v) = (&l.model, l.model.vocab());
    let toks = tokens(3, n, v);
    let mut ws = Workspace::default();
    let want = feed(m, &mut m.new_cache(), &toks, 256, &mut ws);
    let mut cache = m.new_cache();
    let got = feed(m, &mut cache, &toks, chunk, &mut ws);
    for i in 0..n {
        assert_close(
            &format!("{}: chunks of {chunk}, position {i}", name(spec)),
            &got[i * v..(i + 1) * v],
            &want[i * v..(i + 1) * v],
            1e-4,
        );
    }
    let ring = ring_cells(m, spec);
    for i in 0..m.config().n_layer {
        let layer = cache.layer(i);
        if spec.is_local(i) {
            assert_eq!(layer.cells(), ring.min(n), "layer {i} ring cells");
            assert_eq!(layer.oldest(), Some(n.saturating_sub(ring) as u32), "layer {i} oldest");
            assert_eq!(layer.newest(), Some(n as u32 - 1), "layer {i} newest");
        } else {
            assert_eq!(layer.cells(), n, "full layer {i} keeps every cell");
        }
    }
}

#[test]
fn prefill_matches_decode() {
    for spec in all_specs() {
        check_prefill_matches_decode(&spec, 9);
    }
    // Well past the sliding window (4).
    check_prefill_matches_decode(&Spec::gemma3(GgmlDType::F32), 20);
    check_prefill_matches_decode(&Spec::gemma3(GgmlDType::Q8_0), 20);
}

#[test]
fn ring_wrap_matches_prefill() {
    // 600 > window 4 + max_batch 512: the rings wrap. Decode token by token, and in
    // uneven chunks that straddle the wrap point.
    let gemma = Spec::gemma3(GgmlDType::Q8_0).layers(6);
    for chunk in [1, 7, 200] {
        check_ring_wrap(&gemma, 600, chunk);
    }
    check_ring_wrap(&Spec::llama(GgmlDType::Q4_0).layers(2), 530, 1);
}

// ---------------------------------------------------------------------------------------
// Batching
// ---------------------------------------------------------------------------------------

/// Runs several sequences in one forward call and returns each one's logits.
fn batch_step(
    model: &Model,
    caches: &mut [SeqCache],
    toks: &[&[u32]],
    req: LogitsRequest,
    ws: &mut Workspace,
    th: &Threads,
) -> Vec<Vec<f32>> {
    let mut batch: Vec<SeqInput<'_>> =
        caches.iter_mut().zip(toks).map(|(cache, t)| SeqInput { tokens: t, cache, logits: req }).collect();
    model.forward(&mut batch, ws, th, None).unwrap();
    (0..toks.len()).map(|i| ws.logits(i, model.vocab()).to_vec()).collect()
}

/// Sequences of different lengths and histories in one call (prefills next to decodes,
/// an empty segment, a fresh sequence joining) get the same logits and caches as each
/// run alone.
fn check_batch_matches_alone(spec: &Spec, th: &Threads) {
    let l = load(spec);
    let (m, v) = (&l.model, l.model.vocab());
    let rounds: Vec<Vec<Vec<u32>>> = vec![
        vec![tokens(10, 5, v), tokens(11, 1, v), tokens(12, 9, v), vec![]],
        vec![tokens(13, 1, v), tokens(14, 7, v), vec![], tokens(15, 4, v)],
        vec![tokens(16, 1, v), tokens(17, 1, v), tokens(18, 3, v), tokens(19, 1, v)],
    ];
    let mut batched: Vec<SeqCache> = (0..4).map(|_| m.new_cache()).collect();
    let mut alone: Vec<SeqCache> = (0..4).map(|_| m.new_cache()).collect();
    let mut ws = Workspace::default();
    for (r, round) in rounds.iter().enumerate() {
        for req in [LogitsRequest::All, LogitsRequest::Last] {
            // Run each request kind on copies, then keep the All run's caches.
            let mut b = batched.clone();
            let refs: Vec<&[u32]> = round.iter().map(Vec::as_slice).collect();
            let got = batch_step(m, &mut b, &refs, req, &mut ws, th);
            for (i, t) in round.iter().enumerate() {
                let mut a = alone[i].clone();
                let want = step(m, &mut a, t, req, &mut Workspace::default());
                assert_eq!(got[i].len(), want.len(), "round {r} seq {i} {req:?}: logit rows");
                assert_close(&format!("{}: round {r} seq {i} {req:?}", name(spec)), &got[i], &want, 1e-4);
                if req == LogitsRequest::All {
                    alone[i] = a;
                    assert_eq!(b[i].len(), alone[i].len());
                    assert!(b[i].export() == alone[i].export(), "round {r} seq {i}: caches differ");
                }
            }
            if req == LogitsRequest::All {
                batched = b;
            }
        }
    }
}

#[test]
fn batch_matches_alone() {
    let two = Threads::new(2);
    for spec in [Spec::llama(GgmlDType::Q8_0), Spec::gemma3(GgmlDType::F32), Spec::gemma3(GgmlDType::Q4K)] {
        check_batch_matches_alone(&spec, threads());
        check_batch_matches_alone(&spec, &two);
    }
}

// ---------------------------------------------------------------------------------------
// Independent reference
// ---------------------------------------------------------------------------------------

/// lem's per-position logits equal the naive reference's, relative to the logit scale:
/// within `exact_tol` of the plain f64 reference, and within `ggml_tol` of the reference
/// that rounds to f16 where llama.cpp's CPU backend does (f16 KV cache, GELU table).
fn check_reference(spec: &Spec, n: usize, exact_tol: f32, ggml_tol: f32) {
    let l = load(spec);
    let (m, v) = (&l.model, l.model.vocab());
    let toks = tokens(4, n, v);
    let got = prefill_all(m, &toks);
    let reference = l.tiny.reference();
    // Mirror the storage type the model's cache declares.
    let ggml = Precision { kv_f16: m.cache_layout().k_type == KvDtype::F16, ..Precision::GGML };
    for (prec, tol) in [(Precision::EXACT, exact_tol), (ggml, ggml_tol)] {
        let want = reference.logits_with(&toks, prec);
        let mut worst = 0f32;
        for (i, w) in want.iter().enumerate() {
            let e = rel_err(&got[i * v..(i + 1) * v], w);
            if std::env::var_os("TINY_DEBUG").is_none() {
                assert!(
                    e <= tol,
                    "{}: position {i}: relative error {e:e} > {tol:e} against the {prec:?} reference",
                    name(spec)
                );
            }
            worst = worst.max(e);
        }
        if std::env::var_os("TINY_DEBUG").is_some() {
            eprintln!("{} n={n} {prec:?}: worst {worst:e}", name(spec));
        }
    }
}

#[test]
fn matches_naive_reference_f32() {
    // F32 weights: lem's matmuls keep activations in f32, so the only rounding is lem's
    // f16 KV cache / GELU table, which the GGML-precision reference mirrors.
    // The GGML-precision bound is the noise of f16 rounding boundaries (a value that f32
    // and f64 round to neighbouring halves), larger through Gemma's GELU table.
    let (exact, ggml) = (2e-3, 3e-4);
    let llama_ggml = 1e-4;
    check_reference(&Spec::llama(GgmlDType::F32), 12, exact, llama_ggml);
    check_reference(&Spec { rope_base: 10.0, ..Spec::llama(GgmlDType::F32) }, 12, exact, llama_ggml);
    check_reference(&Spec { tied: true, n_kv: 4, ..Spec::llama(GgmlDType::F32) }, 6, exact, llama_ggml);
    // Gemma: past the window (4) so local layers mask, 7 layers so layer 5 is global.
    check_reference(&Spec::gemma3(GgmlDType::F32), 20, exact, ggml);
    check_reference(&Spec { window: 7, rope_base: 1e6, n_kv: 1, ..Spec::gemma3(GgmlDType::F32) }, 16, exact, ggml);
    // d 256 / key_length 128 (the K-quant geometry) with F32 weights.
    check_reference(&Spec { dtype: GgmlDType::F32, ..Spec::gemma3(GgmlDType::Q4K) }, 10, exact, ggml);
    // Twelve layers: two global layers (5 and 11).
    check_reference(&Spec::gemma3(GgmlDType::F32).layers(12), 10, exact, ggml);
}

#[test]
fn matches_naive_reference_quantized() {
    // Quantized weights: lem quantizes activations to the type's dot-product partner
    // (Q8_0 / Q8_1 / Q8_K, F16 for F16), as llama.cpp does; the reference keeps them
    // exact, so the bound is loose, but a wrong block layout or scale is off by ~100%.
    for (dtype, tol) in [
        (GgmlDType::F16, 5e-3),
        (GgmlDType::Q8_0, 5e-2),
        (GgmlDType::Q4_0, 5e-2),
        (GgmlDType::Q4_1, 5e-2),
        (GgmlDType::Q5_0, 5e-2),
        (GgmlDType::Q4K, 5e-2),
    ] {
        check_reference(&Spec::llama(dtype), 8, tol, tol);
        check_reference(&Spec::gemma3(dtype), 8, tol, tol);
    }
}

// ---------------------------------------------------------------------------------------
// Observers
// ---------------------------------------------------------------------------------------

/// One captured tensor: (layer, kind, positions, key positions, heads, dim, data).
type Event = (usize, CaptureKind, Vec<u32>, Vec<u32>, usize, usize, Vec<f32>);

/// Records captured tensors of the layers it is asked for.
#[derive(Default)]
struct Recorder {
    layers: Vec<usize>,
    what: Capture,
    events: Vec<Event>,
}

impl Observer for Recorder {
    fn wants(&self, layer: usize) -> Capture {
        if self.layers.contains(&layer) { self.what } else { Capture::NONE }
    }
    fn on_capture(&mut self, c: Captured<'_>) {
        assert_eq!(c.data.len(), c.positions.len() * c.heads * c.dim, "captured data length");
        self.events.push((
            c.layer,
            c.kind,
            c.positions.to_vec(),
            c.key_positions.to_vec(),
            c.heads,
            c.dim,
            c.data.to_vec(),
        ));
    }
}

/// Captured post-rotary keys are bit-for-bit the cache's K rows; other captures are
/// well-formed (attention rows sum to 1, masked cells get 0); logits are identical with
/// and without an observer.
fn check_observer(spec: &Spec) {
    let l = load(spec);
    let (m, v) = (&l.model, l.model.vocab());
    let layers: Vec<usize> = if spec.arch == Arch::Gemma3 { vec![0, 5] } else { vec![0, 2] };
    let chunks: Vec<Vec<u32>> = vec![tokens(20, 6, v), tokens(21, 1, v), tokens(22, 3, v), tokens(23, 1, v)];
    let all = Capture::KEYS | Capture::KEYS_PRE_ROPE | Capture::QUERIES | Capture::VALUES | Capture::ATTENTION;
    for what in [Capture::KEYS, all] {
        let mut obs = Recorder { layers: layers.clone(), what, events: Vec::new() };
        let (mut with, mut without) = (m.new_cache(), m.new_cache());
        let (mut ws1, mut ws2) = (Workspace::default(), Workspace::default());
        for c in &chunks {
            let mut b = [SeqInput { tokens: c, cache: &mut with, logits: LogitsRequest::All }];
            m.forward(&mut b, &mut ws1, threads(), Some(&mut obs)).unwrap();
            let a = ws1.logits(0, v).to_vec();
            let b = step(m, &mut without, c, LogitsRequest::All, &mut ws2);
            assert!(a == b, "{}: logits differ with an observer ({what:?})", name(spec));
        }
        assert!(with.export() == without.export(), "{}: caches differ with an observer", name(spec));
        // No layer other than the asked-for ones reports anything.
        assert!(obs.events.iter().all(|e| layers.contains(&e.0)));
        for &layer in &layers {
            let ex = with.layer(layer).export();
            let t = ex.positions.len();
            let (n_kv, hd) = (spec.n_kv, spec.head_dim);
            let keys: Vec<_> = obs.events.iter().filter(|e| e.0 == layer && e.1 == CaptureKind::Keys).collect();
            assert_eq!(keys.len(), chunks.len(), "one KEYS event per forward");
            let mut seen = 0;
            for (_, _, pos, _, heads, dim, data) in keys {
                assert_eq!((*heads, *dim), (n_kv, hd));
                for (r, &p) in pos.iter().enumerate() {
                    let i = ex.positions.iter().position(|&q| q == p).expect("captured position is in the cache");
                    for h in 0..n_kv {
                        let cap = &data[(r * n_kv + h) * hd..(r * n_kv + h + 1) * hd];
                        let cached = &ex.k[(h * t + i) * hd..(h * t + i + 1) * hd];
                        let bits = |s: &[f32]| s.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(cap), bits(cached), "{}: layer {layer} pos {p} head {h}", name(spec));
                    }
                    seen += 1;
                }
            }
            assert_eq!(seen, t, "every cached position was captured once");
            if what == all {
                let window = if spec.is_local(layer) { Some(spec.window) } else { None };
                for (_, kind, pos, kpos, heads, dim, data) in obs.events.iter().filter(|e| e.0 == layer) {
                    match kind {
                        CaptureKind::Queries => assert_eq!((*heads, *dim), (spec.n_head, hd)),
                        CaptureKind::Values | CaptureKind::KeysPreRope | CaptureKind::Keys => {
                            assert_eq!((*heads, *dim), (n_kv, hd))
                        }
                        CaptureKind::Attention => {
                            assert_eq!((*heads, *dim), (spec.n_head, kpos.len()));
                            for (r, &q) in pos.iter().enumerate() {
                                for h in 0..*heads {
                                    let row = &data[(r * heads + h) * dim..(r * heads + h + 1) * dim];
                                    let sum: f32 = row.iter().sum();
                                    assert!((sum - 1.0).abs() < 1e-5, "attention row sums to {sum}");
                                    for (&p, &w) in kpos.iter().zip(row) {
                                        let visible = p <= q && window.is_none_or(|w| q - p < w);
                                        if !visible {
                                            assert_eq!(w, 0.0, "layer {layer}: query {q} sees masked key {p}");
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                // Pre-rope keys differ from post-rope keys except at position 0.
                let pre = obs.events.iter().find(|e| e.0 == layer && e.1 == CaptureKind::KeysPreRope).unwrap();
                let post = obs.events.iter().find(|e| e.0 == layer && e.1 == CaptureKind::Keys).unwrap();
                assert_eq!(pre.2, post.2);
                let row = n_kv * hd;
                // Keys are stored in the cache's type; position 0 is not rotated.
                let mut pre0 = pre.6[..row].to_vec();
                m.cache_layout().k_type.round_in_place(&mut pre0);
                assert_eq!(pre0, post.6[..row], "position 0 is not rotated");
                assert_ne!(pre.6[row..], post.6[row..], "later positions are rotated");
            }
        }
    }
}

#[test]
fn observer_keys_equal_cache() {
    for spec in [Spec::llama(GgmlDType::F32), Spec::gemma3(GgmlDType::Q8_0), Spec::llama(GgmlDType::Q4_1)] {
        check_observer(&spec);
    }
}

// ---------------------------------------------------------------------------------------
// Sequence operations
// ---------------------------------------------------------------------------------------

/// Truncating and re-feeding (the same or different tokens) gives a fresh run's logits.
fn check_truncate_refeed(spec: &Spec) {
    let l = load(spec);
    let (m, v) = (&l.model, l.model.vocab());
    let a = tokens(30, 10, v);
    let b = tokens(31, 5, v);
    let mut cache = m.new_cache();
    let mut ws = Workspace::default();
    step(m, &mut cache, &a, LogitsRequest::None, &mut ws);
    let before = cache.export();
    cache.truncate(6).unwrap();
    assert_eq!(cache.len(), 6);
    let got = step(m, &mut cache, &a[6..], LogitsRequest::All, &mut ws);
    assert_close(&format!("{}: truncate + same tokens", name(spec)), &got, &prefill_all(m, &a)[6 * v..], 1e-4);
    assert!(cache.export() == before, "re-fed cache equals the original");
    // Different continuation after a truncation.
    cache.truncate(4).unwrap();
    let got = step(m, &mut cache, &b, LogitsRequest::All, &mut ws);
    let fresh: Vec<u32> = a[..4].iter().chain(&b).copied().collect();
    assert_close(&format!("{}: truncate + new tokens", name(spec)), &got, &prefill_all(m, &fresh)[4 * v..], 1e-4);
    // Truncating to the current length or beyond is a no-op; to 0 empties the cache.
    let len = cache.len();
    cache.truncate(len + 5).unwrap();
    assert_eq!(cache.len(), len);
    cache.truncate(0).unwrap();
    assert!(cache.is_empty());
    assert_eq!(cache.bytes_used(), 0);
    let got = step(m, &mut cache, &a, LogitsRequest::All, &mut ws);
    assert_close(&format!("{}: truncate to 0", name(spec)), &got, &prefill_all(m, &a), 1e-4);
}

/// Feeding a fork leaves the parent untouched, and both continue like fresh runs.
fn check_fork(spec: &Spec) {
    let l = load(spec);
    let (m, v) = (&l.model, l.model.vocab());
    let a = tokens(40, 8, v);
    let (b, c) = (tokens(41, 4, v), tokens(42, 3, v));
    let mut parent = m.new_cache();
    let mut ws = Workspace::default();
    step(m, &mut parent, &a, LogitsRequest::None, &mut ws);
    let snapshot = parent.export();
    let mut child = parent.fork();
    let got_child = step(m, &mut child, &b, LogitsRequest::All, &mut ws);
    assert!(parent.export() == snapshot, "feeding the fork changed the parent");
    assert_eq!(parent.len(), 8);
    let got_parent = step(m, &mut parent, &c, LogitsRequest::All, &mut ws);
    let fresh = |tail: &[u32]| prefill_all(m, &a.iter().chain(tail).copied().collect::<Vec<_>>())[8 * v..].to_vec();
    assert_close(&format!("{}: parent after fork", name(spec)), &got_parent, &fresh(&c), 1e-4);
    assert_close(&format!("{}: fork", name(spec)), &got_child, &fresh(&b), 1e-4);
    assert_eq!(child.len(), 12);
}

/// On a wrapped sliding-window ring, truncating to a length whose next query would need
/// evicted positions fails with `EvictedByWindow` and changes nothing; the boundary
/// length that is still servable succeeds and continues like the uninterrupted run.
fn check_truncate_evicted(spec: &Spec) {
    assert_eq!(spec.arch, Arch::Gemma3);
    let l = load(spec);
    let (m, v) = (&l.model, l.model.vocab());
    let w = spec.window;
    let ring = ring_cells(m, spec) as u32;
    let n = ring + 14;
    let toks = tokens(50, n as usize, v);
    let mut ws = Workspace::default();
    let want = feed(m, &mut m.new_cache(), &toks, 256, &mut ws);
    let mut cache = m.new_cache();
    feed(m, &mut cache, &toks, 300, &mut ws);
    let oldest = n - ring;
    assert_eq!(cache.layer(0).oldest(), Some(oldest));
    let snapshot = cache.export();
    // The query at `len` needs positions len - w + 1 ..= len - 1.
    let first_bad = oldest + w - 2;
    let mut c = cache.clone();
    c.truncate(0).unwrap(); // needs nothing: always possible
    assert!(c.is_empty() && c.bytes_used() == 0);
    for len in [1, first_bad / 2, first_bad] {
        let err = cache.truncate(len).unwrap_err();
        assert_eq!(err, KvError::EvictedByWindow { layer: 0, len, oldest }, "truncate({len})");
        assert!(err.to_string().contains("sliding window"), "{err}");
        assert_eq!(cache.len(), n, "a failed truncate changed the length");
        assert!(cache.export() == snapshot, "a failed truncate changed the cells");
    }
    let ok = first_bad + 1;
    cache.truncate(ok).unwrap();
    assert_eq!(cache.len(), ok);
    let got = feed(m, &mut cache, &toks[ok as usize..], 100, &mut ws);
    assert_close(
        &format!("{}: after truncate({ok}) on a wrapped ring", name(spec)),
        &got,
        &want[ok as usize * v..],
        1e-4,
    );
    assert_exports_close("re-fed cache after truncate on a wrapped ring", &cache.export(), &snapshot);
}

/// Same positions, and K/V equal up to rounding (attention sums cells in storage order,
/// which differs after a truncation rebuilt a wrapped ring).
#[track_caller]
fn assert_exports_close(what: &str, got: &[LayerExport], want: &[LayerExport]) {
    assert_eq!(got.len(), want.len(), "{what}: layer count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.positions == w.positions, "{what}: layer {i} positions differ");
        assert_close(&format!("{what}: layer {i} K"), &g.k, &w.k, 1e-2);
        assert_close(&format!("{what}: layer {i} V"), &g.v, &w.v, 1e-2);
    }
}

#[test]
fn seq_cache_operations() {
    for spec in [Spec::llama(GgmlDType::F32), Spec::gemma3(GgmlDType::F32), Spec::gemma3(GgmlDType::Q4_0)] {
        check_truncate_refeed(&spec);
        check_fork(&spec);
    }
    check_truncate_evicted(&Spec::gemma3(GgmlDType::F32));
    check_truncate_evicted(&Spec::gemma3(GgmlDType::Q8_0).layers(3));
}

// ---------------------------------------------------------------------------------------
// Forward input errors
// ---------------------------------------------------------------------------------------

#[test]
fn forward_rejects_bad_input() {
    let l = load(&Spec::llama(GgmlDType::F32).with_meta("llama.context_length", Value::U32(16)));
    let m = &l.model;
    let mut ws = Workspace::default();
    let mut cache = m.new_cache();
    let mut b = [SeqInput { tokens: &[1, 64], cache: &mut cache, logits: LogitsRequest::Last }];
    let e = m.forward(&mut b, &mut ws, threads(), None).unwrap_err();
    assert!(matches!(e, ModelError::Input(_)) && e.to_string().contains("64"), "{e}");
    assert!(cache.is_empty(), "a rejected call appended to the cache");
    let long = tokens(60, 17, 64);
    let mut b = [SeqInput { tokens: &long, cache: &mut cache, logits: LogitsRequest::Last }];
    let e = m.forward(&mut b, &mut ws, threads(), None).unwrap_err();
    assert!(matches!(e, ModelError::Input(_)) && e.to_string().contains("context length"), "{e}");
    let big = vec![0u32; m.max_batch() + 1];
    let mut b = [SeqInput { tokens: &big, cache: &mut cache, logits: LogitsRequest::Last }];
    assert!(matches!(m.forward(&mut b, &mut ws, threads(), None), Err(ModelError::Input(_))));
    assert!(cache.is_empty());
}

// ---------------------------------------------------------------------------------------
// Load errors
// ---------------------------------------------------------------------------------------

fn load_bytes(bytes: &[u8]) -> Result<Model, ModelError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, bytes).unwrap();
    Model::load(&path)
}

#[track_caller]
fn expect_err(what: &str, r: Result<Model, ModelError>) -> ModelError {
    match r {
        Ok(_) => panic!("{what}: loaded without error"),
        Err(e) => e,
    }
}

#[test]
fn missing_file_is_io_error() {
    let e = expect_err("missing", Model::load(Path::new("/nonexistent/dir/x.gguf")));
    assert!(matches!(e, ModelError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/dir/x.gguf"), "{e}");
}

#[test]
fn non_gguf_and_empty_files() {
    let e = expect_err("text", load_bytes(b"hello, this is a text file\n"));
    assert!(matches!(&e, ModelError::NotGguf { magic, .. } if magic == b"hell"), "{e:?}");
    assert!(e.to_string().contains("not a GGUF file"), "{e}");
    let e = expect_err("empty", load_bytes(b""));
    assert!(matches!(&e, ModelError::NotGguf { magic, .. } if magic.is_empty()), "{e:?}");
    let e = expect_err("3 bytes", load_bytes(b"GGU"));
    assert!(matches!(e, ModelError::NotGguf { .. }), "{e:?}");
    // Right magic, unsupported version.
    let mut bytes = Spec::llama(GgmlDType::F32).layers(1).build().bytes();
    bytes[4..8].copy_from_slice(&99u32.to_le_bytes());
    let e = expect_err("version 99", load_bytes(&bytes));
    assert!(matches!(e, ModelError::Malformed { .. }), "{e:?}");
}

#[test]
fn truncated_files() {
    let tiny = Spec::llama(GgmlDType::Q8_0).layers(2).build();
    let bytes = tiny.bytes();
    let lay = support::layout(&bytes, "token_embd.weight");
    assert!(lay.header_end < lay.meta_end && lay.meta_end < lay.data_start && lay.data_start < lay.len);
    let cuts = [
        ("inside the version", 6),
        ("inside the counts", 17),
        ("end of the fixed header", lay.header_end),
        ("inside the first key", lay.header_end + 5),
        ("inside the metadata", (lay.header_end + lay.meta_end) / 2),
        ("inside the tensor infos", lay.meta_end + 11),
        ("end of the tensor infos", (lay.data_start - 1) & !31),
        ("start of the tensor data", lay.data_start),
        ("inside the tensor data", (lay.data_start + lay.len) / 2),
        ("last byte missing", lay.len - 1),
    ];
    for (what, at) in cuts {
        let e = expect_err(what, load_bytes(&bytes[..at]));
        match &e {
            ModelError::Malformed { .. } => assert!(at < lay.data_start, "{what}: {e}"),
            ModelError::Truncated { size, needed, .. } => {
                assert_eq!(*size, at as u64, "{what}");
                assert!(*needed > *size, "{what}: {e}");
            }
            other => panic!("{what} (cut at {at}): unexpected error {other:?}"),
        }
    }
    // Every cut inside the tensor data names a tensor.
    let e = expect_err("data", load_bytes(&bytes[..lay.len - 1]));
    assert!(e.to_string().contains("is truncated") && e.to_string().contains("tensor '"), "{e}");
}

#[test]
fn every_truncation_is_an_error() {
    // Exhaustive over the header (which is small) and strided over the data.
    let bytes = Spec::gemma3(GgmlDType::Q4_0).layers(1).build().bytes();
    let lay = support::layout(&bytes, "token_embd.weight");
    let cuts = (0..lay.data_start + 64).chain((lay.data_start..lay.len).step_by(97));
    for at in cuts {
        let e = expect_err(&format!("cut at {at}"), load_bytes(&bytes[..at]));
        assert!(
            matches!(e, ModelError::NotGguf { .. } | ModelError::Malformed { .. } | ModelError::Truncated { .. }),
            "cut at {at}: {e:?}"
        );
        assert_eq!(matches!(e, ModelError::NotGguf { .. }), at < 4, "cut at {at}: {e:?}");
    }
}

#[test]
fn unknown_architecture() {
    let spec = Spec { arch_name: "mamba9".into(), ..Spec::llama(GgmlDType::F32) };
    let e = expect_err("mamba9", load_bytes(&spec.build().bytes()));
    assert!(matches!(&e, ModelError::UnknownArchitecture(a) if a == "mamba9"), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("mamba9") && msg.contains("llama") && msg.contains("gemma3"), "{msg}");
    // No architecture at all.
    let spec = Spec { meta_remove: vec!["general.architecture".into()], ..Spec::llama(GgmlDType::F32) };
    let e = expect_err("no arch", load_bytes(&spec.build().bytes()));
    assert!(matches!(&e, ModelError::Metadata { key, .. } if key == "general.architecture"), "{e:?}");
}

/// Whether candle errors carry a captured backtrace in this process (RUST_BACKTRACE or
/// RUST_LIB_BACKTRACE set).
fn candle_attaches_backtraces() -> bool {
    std::backtrace::Backtrace::capture().status() == std::backtrace::BacktraceStatus::Captured
}

#[test]
fn unsupported_tensor_type() {
    let bytes = Spec::llama(GgmlDType::F32).build().bytes();
    // (MXFP4, id 39, is read: gguf.rs's tests and tiny_parity's gpt_oss/mxfp4.gguf.)
    for (id, type_name) in [(16u32, "IQ2_XXS"), (20, "IQ4_NL"), (4, "GGML type id 4")] {
        let mut b = bytes.clone();
        let at = support::tensor_dtype_offset(&b, "blk.1.attn_q.weight");
        assert_eq!(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()), 0, "found the F32 type id");
        b[at..at + 4].copy_from_slice(&id.to_le_bytes());
        let e = expect_err(type_name, load_bytes(&b));
        assert!(matches!(e, ModelError::UnsupportedTensorType { .. }), "{type_name}: {e:?}");
        if candle_attaches_backtraces() {
            // Known bug (gguf.rs): with RUST_BACKTRACE set, candle appends a backtrace to
            // its message and lem fails to parse the type id ("GGML type id 4294967295").
            // `lem-cli/tests/cli.rs::errors_with_rust_backtrace_set` pins it down.
            eprintln!("RUST_BACKTRACE is set: not checking the type name ({e})");
            continue;
        }
        assert!(e.to_string().contains(type_name), "{e}");
    }
}

#[test]
fn missing_tensor() {
    for (spec, tensor) in [
        (Spec::llama(GgmlDType::F32), "blk.1.ffn_up.weight"),
        (Spec::llama(GgmlDType::F32), "output_norm.weight"),
        (Spec::llama(GgmlDType::F32), "token_embd.weight"),
        (Spec::gemma3(GgmlDType::F32), "blk.5.post_ffw_norm.weight"),
    ] {
        let spec = Spec { omit: vec![tensor.into()], ..spec };
        let e = expect_err(tensor, load_bytes(&spec.build().bytes()));
        assert!(matches!(&e, ModelError::MissingTensor(t) if t == tensor), "{e:?}");
        assert!(e.to_string().contains(tensor), "{e}");
    }
}

#[test]
fn absurd_metadata() {
    let llama = || Spec::llama(GgmlDType::F32);
    let cases: Vec<(Spec, &str)> = vec![
        (llama().with_meta("llama.block_count", Value::U32(0)), "llama.block_count"),
        (llama().with_meta("llama.block_count", Value::U64(1 << 40)), "llama.block_count"),
        (llama().with_meta("llama.embedding_length", Value::U32(0)), "llama.embedding_length"),
        (llama().with_meta("llama.attention.head_count", Value::I32(-4)), "llama.attention.head_count"),
        (llama().with_meta("llama.attention.head_count_kv", Value::U32(3)), "llama.attention.head_count_kv"),
        (llama().with_meta("llama.attention.head_count_kv", Value::U32(0)), "llama.attention.head_count_kv"),
        (llama().with_meta("llama.context_length", Value::String("big".into())), "llama.context_length"),
        (llama().with_meta("llama.rope.freq_base", Value::String("x".into())), "llama.rope.freq_base"),
        (
            Spec { meta_remove: vec!["llama.attention.layer_norm_rms_epsilon".into()], ..llama() },
            "llama.attention.layer_norm_rms_epsilon",
        ),
        (Spec { meta_remove: vec!["llama.feed_forward_length".into()], ..llama() }, "llama.feed_forward_length"),
        (
            Spec::gemma3(GgmlDType::F32).with_meta("gemma3.attention.sliding_window", Value::U32(0)),
            "gemma3.attention.sliding_window",
        ),
    ];
    for (spec, key) in cases {
        let e = expect_err(key, load_bytes(&spec.build().bytes()));
        assert!(matches!(&e, ModelError::Metadata { key: k, .. } if k == key), "{key}: {e:?}");
        assert!(e.to_string().contains(key), "{e}");
    }
    // Metadata that disagrees with the tensors is a shape error naming the tensor.
    let e =
        expect_err("ff", load_bytes(&llama().with_meta("llama.feed_forward_length", Value::U32(96)).build().bytes()));
    assert!(matches!(&e, ModelError::TensorShape { tensor, .. } if tensor == "blk.0.ffn_gate.weight"), "{e:?}");
}

/// A tensor whose dimensions multiply past 2^64 must not pass the bounds check by
/// wrapping around (it used to load, then panic in the forward pass).
#[test]
fn overflowing_tensor_dims_are_rejected() {
    let bytes = Spec { tied: true, ..Spec::llama(GgmlDType::F32).layers(1) }.build().bytes();
    // token_embd: ne0 = d = 64 (2^6), ne1 = vocab. 2^58 rows * 2^6 cols wraps to 0 elements.
    let at = support::tensor_info_offset(&bytes, "token_embd.weight") + 8 + "token_embd.weight".len();
    assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), 2);
    let ne1 = at + 4 + 8;
    for rows in [1u64 << 58, (1u64 << 58) + 1, u64::MAX / 64 + 2] {
        let mut b = bytes.clone();
        b[ne1..ne1 + 8].copy_from_slice(&rows.to_le_bytes());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let m = load_bytes(&b)?;
            let mut cache = m.new_cache();
            let mut b = [SeqInput { tokens: &[0], cache: &mut cache, logits: LogitsRequest::Last }];
            m.forward(&mut b, &mut Workspace::default(), threads(), None)?;
            Ok::<_, ModelError>(())
        }));
        match r {
            Err(_) => panic!("rows {rows}: panicked"),
            Ok(Ok(())) => panic!("rows {rows}: loaded and ran a file with impossible dimensions"),
            Ok(Err(e)) => assert!(matches!(e, ModelError::Malformed { .. } | ModelError::Truncated { .. }), "{e:?}"),
        }
    }
}

/// Loads `bytes` and runs three tokens through the model, catching panics.
fn load_and_run(bytes: &[u8]) -> std::thread::Result<Result<(), ModelError>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let m = load_bytes(bytes)?;
        let mut cache = m.new_cache();
        let toks: Vec<u32> = (0..3.min(m.vocab() as u32)).collect();
        let mut b = [SeqInput { tokens: &toks, cache: &mut cache, logits: LogitsRequest::Last }];
        m.forward(&mut b, &mut Workspace::default(), threads(), None)
    }))
}

/// Metadata values that candle's parser or lem's loader could trip on give an error or a
/// working model, never a panic.
#[test]
fn hostile_metadata_values_never_panic() {
    let llama = || Spec::llama(GgmlDType::F32);
    let cases: Vec<(&str, Spec)> = vec![
        // candle divides by the alignment: lem rejects 0 before candle parses.
        ("alignment 0", llama().with_meta("general.alignment", Value::U32(0))),
        ("alignment 0 (u8)", llama().with_meta("general.alignment", Value::U8(0))),
        ("alignment 7", llama().with_meta("general.alignment", Value::U32(7))),
        ("alignment -1", llama().with_meta("general.alignment", Value::I32(-1))),
        ("alignment 0 (u64, ignored by candle)", llama().with_meta("general.alignment", Value::U64(0))),
        ("odd rope dims", llama().with_meta("llama.rope.dimension_count", Value::U32(15))),
        ("context 1", llama().with_meta("llama.context_length", Value::U32(1))),
        ("eps NaN", llama().with_meta("llama.attention.layer_norm_rms_epsilon", Value::F32(f32::NAN))),
        ("huge window", Spec::gemma3(GgmlDType::F32).with_meta("gemma3.attention.sliding_window", Value::U32(1 << 24))),
        ("llama window 0", llama().with_meta("llama.attention.sliding_window", Value::U32(0))),
        ("rope scaling factor 0", llama().with_meta("llama.rope.scaling.factor", Value::F32(0.0))),
        ("rope scaling yarn", llama().with_meta("llama.rope.scaling.type", Value::String("yarn".into()))),
        ("metadata arrays", llama().with_meta("x.nested", Value::Array(vec![Value::Array(vec![Value::U8(1)])]))),
    ];
    for (what, spec) in cases {
        let r = load_and_run(&spec.build().bytes());
        assert!(r.is_ok(), "{what}: panicked");
        if what.starts_with("alignment 0") && !what.contains("u64") {
            let e = r.unwrap().unwrap_err();
            assert!(matches!(e, ModelError::Malformed { .. }) && e.to_string().contains("alignment"), "{what}: {e}");
        }
    }
    // A key padded with NULs (candle strips them).
    let mut tiny = llama().build();
    tiny.meta.push(("general.alignment\0\0\0".into(), Value::U32(0)));
    assert!(matches!(load_and_run(&tiny.bytes()), Ok(Err(ModelError::Malformed { .. }))));
    // A duplicate key: candle keeps the last value, so must the check.
    let mut tiny = llama().build();
    tiny.meta.insert(0, ("general.alignment".into(), Value::U32(32)));
    tiny.meta.push(("general.alignment".into(), Value::U32(0)));
    assert!(matches!(load_and_run(&tiny.bytes()), Ok(Err(ModelError::Malformed { .. }))));
}

/// BUG (arch/llama.rs, arch/gemma3.rs): `rope.dimension_count` larger than the head
/// dimension is accepted at load time and the first forward call panics indexing past
/// the head (lem-kernels ops.rs, `Rope::apply`). It should be a `Metadata` error.
#[test]
#[ignore = "known bug: rope.dimension_count > head_dim panics in the forward pass"]
fn rope_dimension_count_larger_than_head_is_an_error() {
    for spec in [
        Spec::llama(GgmlDType::F32).with_meta("llama.rope.dimension_count", Value::U32(32)),
        Spec::gemma3(GgmlDType::F32).with_meta("gemma3.rope.dimension_count", Value::U32(64)),
    ] {
        match load_and_run(&spec.build().bytes()) {
            Err(_) => panic!("{}: panicked", spec.arch.name()),
            Ok(r) => assert!(matches!(r, Err(ModelError::Metadata { .. })), "{}: {r:?}", spec.arch.name()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Fuzzing the loader
// ---------------------------------------------------------------------------------------

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Mutation {
        /// XOR a byte of the header region (everything before the tensor data).
        Flip { at: usize, xor: u8 },
        /// Overwrite 8 header bytes with a little-endian integer (lengths, counts, dims).
        Word { at: usize, value: u64 },
        /// Cut the file.
        Truncate { at: usize },
        /// Insert bytes.
        Insert { at: usize, bytes: Vec<u8> },
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let interesting = prop_oneof![
            Just(0u64),
            Just(1),
            Just(u64::MAX),
            Just(1 << 32),
            Just(1 << 58),
            Just(u32::MAX as u64),
            any::<u64>()
        ];
        prop_oneof![
            4 => (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, xor)| Mutation::Flip { at: i.index(usize::MAX), xor }),
            2 => (any::<prop::sample::Index>(), interesting).prop_map(|(i, value)| Mutation::Word { at: i.index(usize::MAX), value }),
            1 => any::<prop::sample::Index>().prop_map(|i| Mutation::Truncate { at: i.index(usize::MAX) }),
            1 => (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..16))
                .prop_map(|(i, bytes)| Mutation::Insert { at: i.index(usize::MAX), bytes }),
        ]
    }

    /// A small valid file with an explicit alignment key (so flips can reach it).
    fn base() -> &'static (Vec<u8>, usize) {
        static B: OnceLock<(Vec<u8>, usize)> = OnceLock::new();
        B.get_or_init(|| {
            let spec = Spec::gemma3(GgmlDType::Q8_0).layers(1).with_meta("general.alignment", Value::U32(32));
            let bytes = spec.build().bytes();
            let header = support::layout(&bytes, "token_embd.weight").data_start;
            (bytes, header)
        })
    }

    /// 200 by default; `TINY_FUZZ_CASES` for longer runs.
    fn fuzz_cases() -> u32 {
        std::env::var("TINY_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(200)
    }

    fn apply(bytes: &mut Vec<u8>, header: usize, m: &Mutation) {
        // Earlier mutations may have cut the file: stay inside what is left.
        let header = header.min(bytes.len());
        match m {
            Mutation::Flip { at, xor } if header > 0 => bytes[at % header] ^= xor,
            Mutation::Word { at, value } if header >= 8 => {
                let at = at % (header - 7);
                bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
            Mutation::Truncate { at } => bytes.truncate(at % (bytes.len() + 1)),
            Mutation::Insert { at, bytes: ins } => {
                let at = at % (header + 1);
                bytes.splice(at..at, ins.iter().copied());
            }
            _ => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: fuzz_cases(), failure_persistence: None, ..ProptestConfig::default() })]

        /// Mutated files load or fail with an error; neither loading nor a short forward
        /// pass on whatever loads panics.
        #[test]
        fn mutated_files_never_panic(muts in prop::collection::vec(mutation(), 1..4)) {
            let (base, header) = base();
            let mut bytes = base.clone();
            for m in &muts {
                apply(&mut bytes, *header, m);
            }
            prop_assert!(load_and_run(&bytes).is_ok(), "panicked on mutations {:?}", muts);
        }
    }
}
