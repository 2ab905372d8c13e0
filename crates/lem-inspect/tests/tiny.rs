//! Capture on tiny random-weight GGUF models built in the test (no downloads): captured
//! tensors against the KV cache, attention weights, chunked prefills, capture files,
//! plots. Milliseconds per model.
#![allow(missing_docs)]

#[path = "../../lem-model/tests/support/mod.rs"]
mod support;

use candle_core::quantized::GgmlDType;
use lem_inspect::{
    CaptureFileMeta, CaptureSpec, Kind, ModelIdentity, capture_prefill, parse_kinds, parse_layers, plot_scores,
    write_capture_file,
};
use lem_kernels::Threads;
use lem_kv::{KvDtype, LayerKind};
use lem_model::{LogitsRequest, Model, SeqInput, Workspace};
use lem_score::{SnapshotMeta, score};
use support::Spec;

struct Loaded {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    model: Model,
}

fn load(spec: &Spec) -> Loaded {
    let dir = tempfile::tempdir().unwrap();
    let path = spec.build().write(dir.path(), "tiny.gguf");
    let model = Model::load(&path).unwrap();
    Loaded { _dir: dir, path, model }
}

fn tokens(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7 + 3) % vocab) as u32).collect()
}

fn specs() -> Vec<Spec> {
    vec![Spec::llama(GgmlDType::F32), Spec::llama(GgmlDType::Q4_0), Spec::gemma3(GgmlDType::Q8_0)]
}

/// Every captured key and value row equals the cache's row bit for bit, in every layer.
#[test]
fn keys_and_values_equal_the_cache() {
    let threads = Threads::new(2);
    for spec in specs() {
        let m = load(&spec);
        let ids = tokens(11, spec.vocab);
        let n = m.model.config().n_layer;
        let all: Vec<usize> = (0..n).collect();
        let mut cache = m.model.new_cache();
        let spec_all = CaptureSpec::new(n, &Kind::ALL, &all);
        let caps = capture_prefill(&m.model, &threads, &mut cache, &mut Workspace::default(), &ids, spec_all).unwrap();
        for l in 0..n {
            let e = cache.layer(l).export();
            assert_eq!(e.positions, (0..ids.len() as u32).collect::<Vec<_>>());
            let (k, v) = (caps.get(l, Kind::Keys).unwrap(), caps.get(l, Kind::Values).unwrap());
            assert_eq!(k.shape(), [spec.n_kv, ids.len(), spec.head_dim]);
            let flat_k: Vec<f32> = k.data.concat();
            let flat_v: Vec<f32> = v.data.concat();
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&flat_k), bits(&e.k), "{}: layer {l} keys differ from the cache", spec.arch_name);
            assert_eq!(bits(&flat_v), bits(&e.v), "{}: layer {l} values differ from the cache", spec.arch_name);
            let q = caps.get(l, Kind::Queries).unwrap();
            assert_eq!(q.shape(), [spec.n_head, ids.len(), spec.head_dim]);
            let pre = caps.get(l, Kind::KeysPreRope).unwrap();
            // Position 0 has rotation angle 0: pre- and post-rotary keys agree there (up
            // to the cache's f16 rounding of the post-rotary ones).
            for h in 0..spec.n_kv {
                for (a, b) in pre.row(h, 0).iter().zip(k.row(h, 0)) {
                    assert!((a - b).abs() <= 1e-3 * a.abs().max(1.0), "{a} vs {b}");
                }
            }
        }
    }
}

/// Attention rows are distributions over visible keys: they sum to 1, are 0 for future
/// positions and, on sliding-window layers, outside the window.
#[test]
fn attention_weights_are_masked_distributions() {
    let threads = Threads::new(2);
    for spec in specs() {
        let m = load(&spec);
        let ids = tokens(9, spec.vocab);
        let n = m.model.config().n_layer;
        let mut cache = m.model.new_cache();
        let layers = [0, n - 1];
        let s = CaptureSpec::new(n, &[Kind::Attention], &layers);
        let caps = capture_prefill(&m.model, &threads, &mut cache, &mut Workspace::default(), &ids, s).unwrap();
        for l in layers {
            let a = caps.get(l, Kind::Attention).unwrap();
            assert_eq!(a.shape(), [spec.n_head, ids.len(), ids.len()]);
            let kind = m.model.config().layer_kinds[l];
            for h in 0..spec.n_head {
                for q in 0..ids.len() {
                    let row = a.row(h, q);
                    let sum: f32 = row.iter().sum();
                    assert!((sum - 1.0).abs() < 1e-4, "layer {l} head {h} row {q} sums to {sum}");
                    for (p, &w) in row.iter().enumerate() {
                        let visible = match kind {
                            LayerKind::Full => p <= q,
                            LayerKind::SlidingWindow { window } => p <= q && q - p < window as usize,
                            LayerKind::SinkWindow { sinks, window, .. } => {
                                p <= q && (p < sinks as usize || q - p < window as usize)
                            }
                        };
                        assert!(visible || w == 0.0, "layer {l} head {h}: query {q} sees key {p} ({w})");
                    }
                }
            }
        }
        assert!(caps.get(1, Kind::Attention).is_none(), "an unrequested layer was captured");
    }
}

/// A prompt longer than one forward call (the batch limit) is captured whole, and a
/// capture leaves the cache exactly as a plain prefill does.
#[test]
fn chunked_prefill_and_no_side_effects() {
    let threads = Threads::new(2);
    let spec = Spec::llama(GgmlDType::Q8_0);
    let m = load(&spec);
    let ids = tokens(m.model.max_batch() + 37, spec.vocab);
    let n = m.model.config().n_layer;
    let mut plain = m.model.new_cache();
    let mut ws = Workspace::default();
    for chunk in ids.chunks(m.model.max_batch()) {
        let mut input = [SeqInput { tokens: chunk, cache: &mut plain, logits: LogitsRequest::None }];
        m.model.forward(&mut input, &mut ws, &threads, None).unwrap();
    }
    let mut cache = m.model.new_cache();
    let caps = capture_prefill(&m.model, &threads, &mut cache, &mut ws, &ids, CaptureSpec::keys(n)).unwrap();
    assert!(plain.export() == cache.export(), "capturing changed the cache");
    let snap = caps.into_key_snapshot(SnapshotMeta { token_ids: ids.clone(), ..Default::default() }).unwrap();
    assert_eq!((snap.n_layers(), snap.n_kv_heads(), snap.n_tokens()), (n, spec.n_kv, ids.len()));
    assert!(snap.meta().post_rotary);
    for l in 0..n {
        let e = cache.layer(l).export();
        assert!(snap.layer_keys(l).unwrap().concat() == e.k, "layer {l}");
    }
    let s = score(&snap);
    assert!(s.few_heads && s.composite <= 10_000);
}

/// Capture after earlier tokens: rows are placed by absolute position and attention
/// columns cover every earlier position.
#[test]
fn capture_after_a_prefix() {
    let threads = Threads::new(2);
    let spec = Spec::gemma3(GgmlDType::F32);
    let m = load(&spec);
    let ids = tokens(10, spec.vocab);
    let n = m.model.config().n_layer;
    let mut cache = m.model.new_cache();
    let mut ws = Workspace::default();
    capture_prefill(&m.model, &threads, &mut cache, &mut ws, &ids[..6], CaptureSpec::keys(n)).unwrap();
    let s = CaptureSpec::new(n, &[Kind::Keys, Kind::Attention], &[5]);
    let caps = capture_prefill(&m.model, &threads, &mut cache, &mut ws, &ids[6..], s).unwrap();
    assert_eq!(caps.first_position(), 6);
    let k = caps.get(5, Kind::Keys).unwrap();
    let e = cache.layer(5).export();
    for h in 0..spec.n_kv {
        for r in 0..4 {
            let cached = &e.k[(h * 10 + 6 + r) * spec.head_dim..(h * 10 + 7 + r) * spec.head_dim];
            assert_eq!(k.row(h, r), cached);
        }
    }
    let a = caps.get(5, Kind::Attention).unwrap();
    assert_eq!(a.shape(), [spec.n_head, 4, 10]);
    assert!(a.row(0, 0)[..7].iter().all(|&w| w > 0.0) && a.row(0, 0)[7..].iter().all(|&w| w == 0.0));
}

#[test]
fn kind_and_layer_lists() {
    assert_eq!(
        parse_kinds("keys,values,queries,attn").unwrap(),
        [Kind::Keys, Kind::Values, Kind::Queries, Kind::Attention]
    );
    assert_eq!(
        parse_kinds("attention, keys_pre_rope,keys,keys").unwrap(),
        [Kind::Keys, Kind::KeysPreRope, Kind::Attention]
    );
    let e = parse_kinds("keys,logits").unwrap_err().to_string();
    assert!(e.contains("'logits'"), "{e}");
    assert_eq!(parse_layers("0,5,-1", 30).unwrap(), [0, 5, 29]);
    assert_eq!(parse_layers("-30, 29,0", 30).unwrap(), [0, 29]);
    for bad in ["30", "-31", "x", "", "1,,2"] {
        assert!(parse_layers(bad, 30).is_err(), "{bad:?} accepted");
    }
    let e = parse_layers("0,30", 30).unwrap_err().to_string();
    assert!(e.contains("30 layers"), "{e}");
}

/// The capture file holds every tensor with the documented names, shapes and metadata.
#[test]
fn capture_file_round_trip() {
    let threads = Threads::new(2);
    let spec = Spec::gemma3(GgmlDType::Q8_0);
    let m = load(&spec);
    let ids = tokens(5, spec.vocab);
    let n = m.model.config().n_layer;
    let mut cache = m.model.new_cache();
    let s = CaptureSpec::new(n, &Kind::ALL, &[0, n - 1]);
    let caps = capture_prefill(&m.model, &threads, &mut cache, &mut Workspace::default(), &ids, s).unwrap();
    let identity = ModelIdentity::new(&m.path, &m.model, "f".repeat(64));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cap.safetensors");
    let meta = CaptureFileMeta { identity: &identity, prompt: "hi", token_ids: &ids, kv_dtype: KvDtype::F16 };
    let listing = write_capture_file(&out, &caps, &meta).unwrap();
    assert_eq!(listing.len(), 10);
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let md = header.metadata().as_ref().unwrap();
    assert_eq!(md["format"], "lem-capture");
    assert_eq!(md["format_version"], "1");
    assert_eq!(md["token_ids"], serde_json::to_string(&ids).unwrap());
    assert_eq!(md["layers"], format!("[0,{}]", n - 1));
    assert_eq!(md["captured"], r#"["keys","keys_pre_rope","values","queries","attn"]"#);
    assert_eq!(md["kv_dtype"], "f16");
    assert_eq!(md["model_fingerprint"], "f".repeat(64));
    let t = ids.len();
    for (name, shape) in [
        ("keys.0".to_owned(), vec![spec.n_kv, t, spec.head_dim]),
        (format!("values.{}", n - 1), vec![spec.n_kv, t, spec.head_dim]),
        ("keys_pre_rope.0".to_owned(), vec![spec.n_kv, t, spec.head_dim]),
        ("queries.0".to_owned(), vec![spec.n_head, t, spec.head_dim]),
        ("attn.0".to_owned(), vec![spec.n_head, t, t]),
    ] {
        let v = st.tensor(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(v.shape(), shape, "{name}");
        assert_eq!(v.dtype(), safetensors::Dtype::F32);
    }
    let k0: Vec<f32> = st
        .tensor("keys.0")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert!(k0 == cache.layer(0).export().k);
}

/// The plot is a PNG of the requested size, in both regimes and for degenerate scores.
#[test]
fn plot_writes_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = lem_score::Scores::missing(true, 6);
    s.layer_coherence = vec![0.2, 0.4, 0.35, 0.5, 0.45, 0.3];
    s.layer_cross_alignment = vec![0.8, 0.95, 0.85, 0.95, 0.85];
    s.composite = 5123;
    for (i, sc) in
        [s.clone(), lem_score::Scores::missing(false, 1), lem_score::Scores::missing(false, 0)].iter().enumerate()
    {
        let p = dir.path().join(format!("p{i}.png"));
        plot_scores(sc, "tiny · 6 tokens", &p, (640, 400)).unwrap();
        let b = std::fs::read(&p).unwrap();
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n");
        let (w, h) =
            (u32::from_be_bytes(b[16..20].try_into().unwrap()), u32::from_be_bytes(b[20..24].try_into().unwrap()));
        assert_eq!((w, h), (640, 400));
    }
    let e = plot_scores(&s, "x", &dir.path().join("no/such/dir/p.png"), (640, 400)).unwrap_err();
    assert!(e.to_string().contains("p.png"), "{e}");
}
