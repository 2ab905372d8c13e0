//! Sequence operations against a reference model of the cache.
//!
//! The reference keeps, per layer, a map from position to the K/V row appended there
//! (rounded to the storage type) and applies the cache's documented rules: a full layer
//! keeps every position; a sliding-window ring of `capacity` cells evicts position
//! `p - capacity` when `p` is appended; a sink-window layer keeps its first `sinks`
//! positions forever and evicts like a ring of `capacity` cells past them; truncation
//! drops positions `>= len` and fails, changing nothing, when a window layer no longer
//! holds what the next query needs.
//! Random programs of append / truncate / fork / export-import run on a pool of
//! sequences; after every step every sequence must match its reference exactly, and a
//! cache rebuilt from the reference contents must lay its cells out identically (so
//! attention over either is bit-identical).
//!
//! Every storage type runs, keys and values in different types too: the block types
//! (q8_0, q4_0, q4_1, q5_0, q5_1) with 32-value heads, their reference rows quantised and
//! dequantised once (as the model's forward rounds them before appending).
#![allow(missing_docs)]

use std::collections::BTreeMap;

use lem_kernels::ops::{KvData, KvRows, KvView};
use lem_kv::{CacheLayout, EMPTY_POS, KvDtype, KvError, LayerKind, LayerSpec, RawLayer, SeqCache};
use proptest::prelude::*;

const N_KV: usize = 2;
const MAX_BATCH: usize = 4;

/// Head size for a pair of types: 3 for the float types, 32 (one block) for block types.
fn head_dim(k: KvDtype, v: KvDtype) -> usize {
    if k.block_len() > 1 || v.block_len() > 1 { 32 } else { 3 }
}

fn layout_kv(k_type: KvDtype, v_type: KvDtype) -> CacheLayout {
    let spec = |kind| LayerSpec::new(kind, N_KV, head_dim(k_type, v_type));
    let layout = CacheLayout {
        layers: vec![
            spec(LayerKind::Full),
            spec(LayerKind::SlidingWindow { window: 3 }),
            spec(LayerKind::SlidingWindow { window: 6 }),
            spec(LayerKind::SinkWindow { sinks: 2, window: 3, positions: Default::default() }),
            spec(LayerKind::SinkWindow { sinks: 5, window: 2, positions: Default::default() }),
            spec(LayerKind::SinkWindow { sinks: 0, window: 4, positions: Default::default() }),
        ],
        k_type,
        v_type,
        max_batch: MAX_BATCH,
        recall_blocks: 0,
        recall_select: Default::default(),
    };
    layout.check().expect("test layout");
    layout
}

fn layout(dtype: KvDtype) -> CacheLayout {
    layout_kv(dtype, dtype)
}

/// Values per cell of `layout`.
fn row_len(layout: &CacheLayout) -> usize {
    N_KV * layout.layers[0].head_dim
}

/// K/V rows of one appended position: deterministic in (seed, position, layer).
fn row(seed: u64, p: u32, layer: usize, layout: &CacheLayout) -> (Vec<f32>, Vec<f32>) {
    let f = |i: usize, kv: u64| {
        let x =
            seed.wrapping_mul(6364136223846793005).wrapping_add(u64::from(p) * 1000 + (layer * 100 + i) as u64 + kv);
        ((x % 20011) as f32 - 10005.0) / 997.0
    };
    let n = row_len(layout);
    let mut k: Vec<f32> = (0..n).map(|i| f(i, 0)).collect();
    let mut v: Vec<f32> = (0..n).map(|i| f(i, 7)).collect();
    let hd = layout.layers[0].head_dim;
    layout.k_type.round_keys(&mut k, hd);
    layout.v_type.round_values(&mut v, hd);
    (k, v)
}

/// One layer of the reference: position -> (K row, V row).
type RefLayer = BTreeMap<u32, (Vec<f32>, Vec<f32>)>;

/// The reference model of one sequence.
#[derive(Debug, Clone)]
struct Reference {
    len: u32,
    layers: Vec<RefLayer>,
}

impl Reference {
    fn new(layout: &CacheLayout) -> Reference {
        Reference { len: 0, layers: vec![BTreeMap::new(); layout.layers.len()] }
    }

    /// `(sinks, ring cells past them)` of a bounded layer.
    fn ring(kind: LayerKind) -> Option<(u32, u32)> {
        match kind {
            LayerKind::Full => None,
            LayerKind::SlidingWindow { window } => Some((0, window + MAX_BATCH as u32)),
            LayerKind::SinkWindow { sinks, window, .. } => Some((sinks, window + MAX_BATCH as u32)),
        }
    }

    /// The first position of the window a query at `len` sees (past the sinks).
    fn window_start(kind: LayerKind, len: u32) -> Option<u32> {
        let (sinks, cap) = Self::ring(kind)?;
        let window = cap - MAX_BATCH as u32;
        Some((len + 1).saturating_sub(window).max(sinks.min(len)))
    }

    fn append(&mut self, layout: &CacheLayout, n: u32, seed: u64) {
        for p in self.len..self.len + n {
            for (i, spec) in layout.layers.iter().enumerate() {
                self.layers[i].insert(p, row(seed, p, i, layout));
                if let Some((sinks, cap)) = Self::ring(spec.kind)
                    && p >= sinks + cap
                {
                    self.layers[i].remove(&(p - cap));
                }
            }
        }
        self.len += n;
    }

    /// `Err(layer, oldest)` when truncation must fail.
    fn truncate(&mut self, layout: &CacheLayout, len: u32) -> Result<(), (usize, u32)> {
        if len >= self.len {
            return Ok(());
        }
        for (i, spec) in layout.layers.iter().enumerate() {
            let sinks = spec.kind.sinks();
            if let (Some(from), Some((&oldest, _))) =
                (Self::window_start(spec.kind, len), self.layers[i].range(sinks..).next())
                && from < len
                && oldest > from
            {
                return Err((i, oldest));
            }
        }
        for l in &mut self.layers {
            l.retain(|&p, _| p < len);
        }
        self.len = len;
        Ok(())
    }

    /// A cache built from scratch out of the reference contents (through the f32 import).
    fn rebuild(&self, layout: &CacheLayout) -> SeqCache {
        let hd = layout.layers[0].head_dim;
        let exports: Vec<lem_kv::LayerExport> = self
            .layers
            .iter()
            .map(|m| {
                let t = m.len();
                let (mut k, mut v) = (vec![0f32; N_KV * t * hd], vec![0f32; N_KV * t * hd]);
                for (i, (kr, vr)) in m.values().enumerate() {
                    for h in 0..N_KV {
                        let dst = (h * t + i) * hd;
                        k[dst..dst + hd].copy_from_slice(&kr[h * hd..(h + 1) * hd]);
                        v[dst..dst + hd].copy_from_slice(&vr[h * hd..(h + 1) * hd]);
                    }
                }
                lem_kv::LayerExport { k, v, positions: m.keys().copied().collect() }
            })
            .collect();
        let mut c = SeqCache::new(layout);
        c.import(&exports, self.len).expect("reference contents import");
        c
    }
}

/// Appends `n` positions to a cache the way the model's forward does.
fn append(cache: &mut SeqCache, n: u32, seed: u64) {
    let start = cache.len();
    let layout = cache.layout().clone();
    for i in 0..cache.n_layers() {
        let positions: Vec<u32> = (start..start + n).collect();
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for &p in &positions {
            let (kr, vr) = row(seed, p, i, &layout);
            k.extend(kr);
            v.extend(vr);
        }
        cache.layer_mut(i).append(&positions, &k, &v);
    }
    cache.advance(n);
}

/// Every observable property of `cache` against `reference`.
fn check(cache: &SeqCache, reference: &Reference, what: &str) {
    let layout = cache.layout().clone();
    let hd = layout.layers[0].head_dim;
    assert_eq!(cache.len(), reference.len, "{what}: len");
    let mut bytes = 0;
    for (i, spec) in layout.layers.iter().enumerate() {
        let layer = cache.layer(i);
        let want = &reference.layers[i];
        let e = layer.export();
        assert_eq!(e.positions, want.keys().copied().collect::<Vec<_>>(), "{what}: layer {i} positions");
        let t = e.positions.len();
        for (j, (kr, vr)) in want.values().enumerate() {
            for h in 0..N_KV {
                let src = (h * t + j) * hd;
                assert_eq!(&e.k[src..src + hd], &kr[h * hd..(h + 1) * hd], "{what}: layer {i} K");
                assert_eq!(&e.v[src..src + hd], &vr[h * hd..(h + 1) * hd], "{what}: layer {i} V");
            }
        }
        assert_eq!(layer.cells(), want.len(), "{what}: layer {i} cells");
        let cell = N_KV * (layout.k_type.row_bytes(hd) + layout.v_type.row_bytes(hd));
        assert_eq!(layer.cell_bytes(), cell, "{what}: layer {i} bytes per cell");
        bytes += want.len() * cell;
        // Placement: a sink p lives in cell p, any other position p in cell
        // sinks + (p - sinks) % capacity of the ring after them.
        let view = layer.view();
        if let Some((sinks, cap)) = Reference::ring(spec.kind) {
            assert_eq!(layer.ring_capacity(), Some((sinks + cap) as usize), "{what}: layer {i} cells");
            assert!(view.pos.len() <= (sinks + cap) as usize, "{what}: layer {i} ring grew past its capacity");
            for (c, &p) in view.pos.iter().enumerate() {
                let cell = if p < sinks { p } else { sinks + (p - sinks) % cap };
                assert!(p == EMPTY_POS || cell as usize == c, "{what}: layer {i} cell {c} holds {p}");
            }
        }
        // The next query sees every sink and every position its window covers.
        if let Some(from) = Reference::window_start(spec.kind, reference.len) {
            for p in (0..spec.kind.sinks().min(reference.len)).chain(from..reference.len) {
                assert!(want.contains_key(&p), "{what}: layer {i} lost position {p} of the window");
            }
        }
        // The raw export round-trips exactly.
        let raw = layer.export_raw();
        assert_eq!(raw.positions, e.positions);
        assert_eq!(raw.k.len(), t * N_KV * layout.k_type.row_bytes(hd));
        assert_eq!(raw.v.len(), t * N_KV * layout.v_type.row_bytes(hd));
        assert_eq!((raw.k_type, raw.v_type), (layout.k_type, layout.v_type));
    }
    assert_eq!(cache.bytes_used(), bytes, "{what}: bytes_used");
    let per_token: usize = (0..cache.n_layers()).map(|i| cache.layer(i).cell_bytes()).sum();
    assert_eq!(layout.bytes_per_token(), per_token, "{what}: bytes_per_token");

    // A cache rebuilt from the reference lays out every live cell identically.
    let rebuilt = reference.rebuild(&layout);
    assert_same_cells(cache, &rebuilt, what);
    // So does one restored from the raw export.
    let mut restored = SeqCache::new(&layout);
    restored.import_raw(&cache.export_raw(), cache.len()).expect("raw import");
    assert_same_cells(cache, &restored, what);
}

/// The stored bits of cell `c` of one side (`row` values per cell).
fn side_bits(rows: KvRows<'_>, c: usize, row: usize) -> Vec<u32> {
    match rows {
        KvRows::F32(d) => d[c * row..(c + 1) * row].iter().map(|x| x.to_bits()).collect(),
        KvRows::F16(d) => d[c * row..(c + 1) * row].iter().map(|x| u32::from(x.to_bits())).collect(),
        KvRows::Blocks { kind, data, .. } => {
            let n = kind.row_bytes(row);
            data[c * n..(c + 1) * n].iter().map(|&b| u32::from(b)).collect()
        }
    }
}

/// Live cells at the same indices with the same positions and bit-identical K/V.
fn assert_same_cells(a: &SeqCache, b: &SeqCache, what: &str) {
    let row = row_len(a.layout());
    for i in 0..a.n_layers() {
        let (va, vb) = (a.layer(i).view(), b.layer(i).view());
        let n = va.pos.len().max(vb.pos.len());
        let at = |pos: &[u32], c: usize| pos.get(c).copied().unwrap_or(EMPTY_POS);
        for c in 0..n {
            let (pa, pb) = (at(va.pos, c), at(vb.pos, c));
            assert_eq!(pa, pb, "{what}: layer {i} cell {c} position");
            if pa == EMPTY_POS {
                continue;
            }
            let bits = |v: &KvView<'_>| -> Vec<u32> {
                let (k, vv) = match v.data {
                    KvData::F32 { k, v } => (KvRows::F32(k), KvRows::F32(v)),
                    KvData::F16 { k, v } => (KvRows::F16(k), KvRows::F16(v)),
                    KvData::Split { k, v } => (k, v),
                };
                let mut b = side_bits(k, c, row);
                b.extend(side_bits(vv, c, row));
                b
            };
            assert_eq!(bits(&va), bits(&vb), "{what}: layer {i} cell {c} data");
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Append n positions to sequence s.
    Append { s: usize, n: u32, seed: u64 },
    /// Truncate sequence s to `frac` of its length (in 1/16ths, may exceed 1).
    Truncate { s: usize, sixteenths: u32 },
    /// Fork sequence s into a new one.
    Fork { s: usize },
    /// Replace sequence s by a restore of its raw export.
    Reimport { s: usize },
    /// Export positions a..b (fractions of the length) and check them against the reference.
    Range { s: usize, a: u32, b: u32 },
    /// Reserve room for `extra` more positions, then give back what is not held.
    Compact { s: usize, extra: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..4usize, 1..=MAX_BATCH as u32, any::<u64>()).prop_map(|(s, n, seed)| Op::Append { s, n, seed }),
        2 => (0..4usize, 0..20u32).prop_map(|(s, sixteenths)| Op::Truncate { s, sixteenths }),
        1 => (0..4usize).prop_map(|s| Op::Fork { s }),
        1 => (0..4usize).prop_map(|s| Op::Reimport { s }),
        1 => (0..4usize, 0..17u32, 0..17u32).prop_map(|(s, a, b)| Op::Range { s, a, b }),
        1 => (0..4usize, 0..64usize).prop_map(|(s, extra)| Op::Compact { s, extra }),
    ]
}

fn run(dtype: KvDtype, ops: &[Op]) {
    run_kv(dtype, dtype, ops)
}

fn run_kv(k_type: KvDtype, v_type: KvDtype, ops: &[Op]) {
    let layout = layout_kv(k_type, v_type);
    let mut pool: Vec<(SeqCache, Reference)> = vec![(SeqCache::new(&layout), Reference::new(&layout))];
    for (step, op) in ops.iter().enumerate() {
        let what = format!("step {step} {op:?}");
        let pool_len = pool.len();
        match *op {
            Op::Append { s, n, seed } => {
                let (c, r) = &mut pool[s % pool_len];
                append(c, n, seed);
                r.append(&layout, n, seed);
            }
            Op::Truncate { s, sixteenths } => {
                let (c, r) = &mut pool[s % pool_len];
                let len = r.len * sixteenths / 16;
                match (c.truncate(len), r.truncate(&layout, len)) {
                    (Ok(()), Ok(())) => {}
                    (Err(KvError::EvictedByWindow { layer, len: l, oldest }), Err((rl, ro))) => {
                        assert_eq!((layer, l, oldest), (rl, len, ro), "{what}");
                    }
                    (got, want) => panic!("{what}: cache {got:?}, reference {want:?}"),
                }
            }
            Op::Fork { s } => {
                let (c, r) = &pool[s % pool_len];
                let forked = (c.fork(), r.clone());
                pool.push(forked);
            }
            Op::Reimport { s } => {
                let (c, _) = &mut pool[s % pool_len];
                let mut fresh = SeqCache::new(&layout);
                fresh.import_raw(&c.export_raw(), c.len()).unwrap();
                *c = fresh;
            }
            Op::Compact { s, extra } => {
                let (c, r) = &mut pool[s % pool_len];
                let before = c.bytes_allocated();
                c.reserve(r.len as usize + extra);
                c.shrink_to_fit();
                // Whatever was reserved (now or by growth) is given back; what is held stays.
                assert!(
                    c.bytes_allocated() <= before,
                    "{what}: {} bytes after shrinking, {before} before",
                    c.bytes_allocated()
                );
                assert!(c.bytes_allocated() >= c.bytes_used(), "{what}: allocated below used");
            }
            Op::Range { s, a, b } => {
                let (c, r) = &pool[s % pool_len];
                let (a, b) = (r.len * a.min(b) / 16, r.len * a.max(b) / 16);
                let held = r.layers.iter().all(|m| (a..b).all(|p| m.contains_key(&p)));
                let got = c.export_raw_range(a, b);
                assert_eq!(got.is_some(), held, "{what}: range {a}..{b}");
                if let Some(layers) = got {
                    for (i, l) in layers.iter().enumerate() {
                        assert_eq!(l.positions, (a..b).collect::<Vec<_>>(), "{what}");
                        let whole = c.layer(i).export_raw();
                        let at = whole.positions.iter().position(|&p| p == a).unwrap_or(0);
                        let part = RawLayer::concat(&[(&whole, at..at + (b - a) as usize)], N_KV);
                        assert_eq!(&part, l, "{what}: layer {i} range bytes");
                    }
                }
            }
        }
        for (i, (c, r)) in pool.iter().enumerate() {
            check(c, r, &format!("{what}, sequence {i}"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_programs_f16(ops in proptest::collection::vec(op(), 1..60)) {
        run(KvDtype::F16, &ops);
    }

    #[test]
    fn random_programs_f32(ops in proptest::collection::vec(op(), 1..60)) {
        run(KvDtype::F32, &ops);
    }

    #[test]
    fn random_programs_q8_0(ops in proptest::collection::vec(op(), 1..60)) {
        run(KvDtype::Q8_0, &ops);
    }

    #[test]
    fn random_programs_q4_0(ops in proptest::collection::vec(op(), 1..60)) {
        run(KvDtype::Q4_0, &ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Every other pair of types, K and V apart (fewer cases each).
    #[test]
    fn random_programs_mixed_types(
        k in proptest::sample::select(KvDtype::ALL.to_vec()),
        v in proptest::sample::select(KvDtype::ALL.to_vec()),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        run_kv(k, v, &ops);
    }
}

/// A long program that wraps every ring several times, truncates inside the window and
/// forks a wrapped ring.
#[test]
fn wrapped_rings_truncate_and_fork() {
    let mut ops = Vec::new();
    for i in 0..12 {
        ops.push(Op::Append { s: 0, n: 4, seed: i });
    }
    ops.push(Op::Fork { s: 0 });
    ops.push(Op::Truncate { s: 0, sixteenths: 15 });
    ops.push(Op::Append { s: 0, n: 3, seed: 99 });
    ops.push(Op::Append { s: 1, n: 2, seed: 98 });
    ops.push(Op::Reimport { s: 1 });
    ops.push(Op::Truncate { s: 1, sixteenths: 1 });
    ops.push(Op::Truncate { s: 1, sixteenths: 0 });
    ops.push(Op::Append { s: 1, n: 4, seed: 5 });
    run(KvDtype::F16, &ops);
}

#[test]
fn import_raw_refuses_wrong_state() {
    let layout = layout(KvDtype::F16);
    let mut c = SeqCache::new(&layout);
    append(&mut c, 4, 1);
    append(&mut c, 4, 2);
    let good = c.export_raw();
    let mut target = SeqCache::new(&layout);
    // Wrong length for the full layer.
    let err = target.import_raw(&good, 9).unwrap_err();
    assert!(matches!(err, KvError::Shape { layer: 0, .. }), "{err}");
    // Missing layer.
    assert!(target.import_raw(&good[..2], 8).is_err());
    // Other storage type.
    let mut f32_target = SeqCache::new(&self::layout(KvDtype::F32));
    let err = f32_target.import_raw(&good, 8).unwrap_err();
    assert!(err.to_string().contains("f16/f16"), "{err}");
    // A window layer missing the positions the next query needs.
    let mut holed = good.clone();
    let l = &mut holed[1];
    let keep = l.positions.len() - 2..l.positions.len();
    *l = RawLayer::concat(&[(&good[1], keep)], N_KV);
    l.positions = vec![3, 4];
    let err = target.import_raw(&holed, 8).unwrap_err();
    assert!(matches!(err, KvError::Shape { layer: 1, .. }), "{err}");
    // Truncated bytes.
    let mut short = good.clone();
    short[2].k.pop();
    assert!(target.import_raw(&short, 8).is_err());
    assert!(target.is_empty(), "failed imports leave the cache unchanged");
    target.import_raw(&good, 8).unwrap();
    assert_same_cells(&c, &target, "good import");
}

#[test]
fn block_types_need_whole_blocks_per_head() {
    let mut l = layout(KvDtype::F16);
    for spec in &mut l.layers {
        spec.head_dim = 16;
    }
    assert!(l.with_types(KvDtype::F16, KvDtype::F32).is_ok());
    for t in [KvDtype::Q8_0, KvDtype::Q4_0, KvDtype::Q4_1, KvDtype::Q5_0, KvDtype::Q5_1] {
        let err = l.with_types(KvDtype::F16, t).unwrap_err();
        assert_eq!(err, KvError::BlockMisfit { side: "V", dtype: t, layer: 0, head_dim: 16 });
        assert!(err.to_string().contains("head_dim 16"), "{err}");
        let err = l.with_types(t, KvDtype::F16).unwrap_err();
        assert!(matches!(err, KvError::BlockMisfit { side: "K", .. }), "{err}");
    }
    l.layers[2].head_dim = 64;
    l.layers[0].head_dim = 64;
    let err = l.with_types(KvDtype::Q8_0, KvDtype::Q8_0).unwrap_err();
    assert!(matches!(err, KvError::BlockMisfit { layer: 1, .. }), "{err}");
}

#[test]
fn type_names_are_llama_cpp_s() {
    for t in KvDtype::ALL {
        assert_eq!(t.name().parse::<KvDtype>(), Ok(t));
        assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{}\"", t.name()));
    }
    assert_eq!("Q8_0".parse::<KvDtype>(), Ok(KvDtype::Q8_0));
    let err = "q3_k".parse::<KvDtype>().unwrap_err();
    assert!(err.to_string().contains("q4_1"), "{err}");
    // Bytes per 32 values: GGML's block sizes.
    let sizes: Vec<usize> = KvDtype::ALL.iter().map(|t| t.row_bytes(32)).collect();
    assert_eq!(sizes, [128, 64, 34, 18, 20, 22, 24]);
}

#[test]
fn layouts_serialise_both_types_and_read_the_single_dtype_of_older_files() {
    let l = layout_kv(KvDtype::Q8_0, KvDtype::Q4_0);
    let json = serde_json::to_string(&l).unwrap();
    assert!(json.contains("\"k_type\":\"q8_0\"") && json.contains("\"v_type\":\"q4_0\""), "{json}");
    assert_eq!(serde_json::from_str::<CacheLayout>(&json).unwrap(), l);
    let old = json.replace("\"k_type\":\"q8_0\",\"v_type\":\"q4_0\"", "\"dtype\":\"f32\"");
    assert!(old.contains("dtype"), "{old}");
    let read: CacheLayout = serde_json::from_str(&old).unwrap();
    assert_eq!((read.k_type, read.v_type), (KvDtype::F32, KvDtype::F32));
    assert_eq!(read.difference(&l).unwrap(), "K cache type f32 vs q8_0");
    let v_only = CacheLayout { k_type: KvDtype::Q8_0, ..read };
    assert_eq!(v_only.difference(&l).unwrap(), "V cache type f32 vs q4_0");
}

#[test]
fn quantised_cells_cost_their_block_bytes_and_restore_exactly() {
    // SmolLM2-like layer: 3 KV heads of 64; q8_0 K, q4_0 V.
    let spec = LayerSpec::new(LayerKind::Full, 3, 64);
    let l = CacheLayout {
        layers: vec![spec],
        k_type: KvDtype::F16,
        v_type: KvDtype::F16,
        max_batch: 8,
        recall_blocks: 0,
        recall_select: Default::default(),
    };
    let q = l.with_types(KvDtype::Q8_0, KvDtype::Q4_0).unwrap();
    assert_eq!(l.bytes_per_token(), 3 * 64 * 2 * 2);
    assert_eq!(q.bytes_per_token(), 3 * (2 * 34 + 2 * 18));
    let mut c = SeqCache::new(&q);
    let k: Vec<f32> = (0..5 * 192).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
    let v: Vec<f32> = k.iter().map(|x| x * -0.5 + 1.0).collect();
    c.layer_mut(0).append(&[0, 1, 2, 3, 4], &k, &v);
    c.advance(5);
    assert_eq!(c.bytes_used(), 5 * q.bytes_per_token());
    c.truncate(2).unwrap();
    let m = c.memory();
    assert_eq!(m.resident_bytes, 5 * q.bytes_per_token(), "peak survives truncation");
    assert_eq!((m.offloaded_bytes, m.cache_type_k, m.cache_type_v), (0, KvDtype::Q8_0, KvDtype::Q4_0));
    assert_eq!(c.bytes_used(), 2 * q.bytes_per_token());
    c.layer_mut(0).append(&[2, 3, 4], &k[2 * 192..], &v[2 * 192..]);
    c.advance(3);
    // The f32 export is the dequantised values, within the formats' error of the input.
    let e = &c.export()[0];
    let (mut kr, mut vr) = (k.clone(), v.clone());
    KvDtype::Q8_0.round_keys(&mut kr, 64);
    KvDtype::Q4_0.round_values(&mut vr, 64);
    for t in 0..5 {
        for h in 0..3 {
            let (src, dst) = (t * 192 + h * 64, (h * 5 + t) * 64);
            assert_eq!(&e.k[dst..dst + 64], &kr[src..src + 64]);
            assert_eq!(&e.v[dst..dst + 64], &vr[src..src + 64]);
        }
    }
    assert!(kr.iter().zip(&k).any(|(a, b)| a != b), "q8_0 changed nothing?");
    // Raw export / import: the blocks as they are.
    let raw = c.export_raw();
    assert_eq!(raw[0].k.len(), 5 * 3 * 2 * 34);
    assert_eq!(raw[0].v.len(), 5 * 3 * 2 * 18);
    let mut back = SeqCache::new(&q);
    back.import_raw(&raw, 5).unwrap();
    assert_eq!(back.export_raw(), raw);
    // Raw layers of another type pair are refused.
    let mut other = SeqCache::new(&l.with_types(KvDtype::Q8_0, KvDtype::Q8_0).unwrap());
    let err = other.import_raw(&raw, 5).unwrap_err();
    assert!(err.to_string().contains("q8_0/q4_0"), "{err}");
}

/// What a layer must still hold ([`LayerKind::needed`]) is exactly what its mask shows
/// the next query.
#[test]
fn needed_positions_are_what_the_mask_shows() {
    let kinds = [
        LayerKind::Full,
        LayerKind::SlidingWindow { window: 1 },
        LayerKind::SlidingWindow { window: 4 },
        LayerKind::SinkWindow { sinks: 0, window: 3, positions: Default::default() },
        LayerKind::SinkWindow { sinks: 3, window: 1, positions: Default::default() },
        LayerKind::SinkWindow { sinks: 4, window: 5, positions: Default::default() },
    ];
    for kind in kinds {
        for len in 0..20u32 {
            let [a, b] = kind.needed(len);
            assert!(a.end <= b.start || b.is_empty(), "{kind:?} {len}: ranges overlap");
            let needed: Vec<u32> = a.chain(b).collect();
            let shown: Vec<u32> = (0..len).filter(|&p| kind.mask().visible(len, p)).collect();
            assert_eq!(needed, shown, "{kind:?} at {len}");
        }
    }
}

/// `with_bound` turns full layers into sink windows and leaves native windows alone; the
/// layouts differ in words, and a window of 0 is refused.
#[test]
fn bounds_apply_to_full_layers_only() {
    let l = layout(KvDtype::F16);
    let b = l.with_bound(lem_kv::KvBound::new(4, 16)).unwrap();
    assert_eq!(b.layers[0].kind, LayerKind::SinkWindow { sinks: 4, window: 16, positions: Default::default() });
    assert_eq!(&b.layers[1..], &l.layers[1..]);
    assert_eq!(
        l.difference(&b).unwrap(),
        "layer 0: full attention, 2 KV heads x 3 vs 4 sinks + window 16, 2 KV heads x 3"
    );
    let other = l.with_bound(lem_kv::KvBound::new(0, 16)).unwrap();
    assert!(b.difference(&other).unwrap().contains("0 sinks + window 16"));
    assert_eq!(l.with_bound(lem_kv::KvBound::new(4, 0)).unwrap_err(), KvError::EmptyWindow);
    // The new kind serialises and reads back.
    let json = serde_json::to_string(&b).unwrap();
    assert!(json.contains("\"kind\":\"sink_window\",\"sinks\":4,\"window\":16"), "{json}");
    assert_eq!(serde_json::from_str::<CacheLayout>(&json).unwrap(), b);
}

/// A sink-window cache stops growing at sinks + window + max_batch cells however long the
/// sequence, keeps its sinks, and rolls back one batch.
#[test]
fn sink_window_cells_are_bounded_and_keep_the_sinks() {
    let spec = LayerSpec::new(LayerKind::SinkWindow { sinks: 2, window: 5, positions: Default::default() }, N_KV, 3);
    let l = CacheLayout {
        layers: vec![spec],
        k_type: KvDtype::F32,
        v_type: KvDtype::F32,
        max_batch: MAX_BATCH,
        recall_blocks: 0,
        recall_select: Default::default(),
    };
    let mut c = SeqCache::new(&l);
    for i in 0..20 {
        append(&mut c, 3, i);
        assert!(c.layer(0).cells() <= 2 + 5 + MAX_BATCH, "after {} positions", c.len());
    }
    let held = c.layer(0).export().positions;
    assert_eq!(held, [0, 1].into_iter().chain(60 - 9..60).collect::<Vec<_>>());
    assert_eq!(c.peak_bytes_used(), (2 + 5 + MAX_BATCH) * c.layer(0).cell_bytes());
    c.truncate(60 - MAX_BATCH as u32).unwrap();
    let err = c.truncate(40).unwrap_err();
    assert!(matches!(err, KvError::EvictedByWindow { layer: 0, len: 40, .. }), "{err}");
}
