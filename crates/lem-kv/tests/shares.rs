//! Layers that share an earlier layer's K/V (`LayerSpec::shares`): they store nothing,
//! `SeqCache::kv_layer` resolves them to their source, exports and imports carry them
//! as empty layers, and a layout without sharing serialises exactly as before.
#![allow(missing_docs)]

use lem_kv::{CacheLayout, KvDtype, LayerKind, LayerSpec, SeqCache};

fn layout() -> CacheLayout {
    let full = LayerSpec::new(LayerKind::Full, 1, 4);
    CacheLayout {
        layers: vec![full, LayerSpec { shares: Some(0), ..full }],
        k_type: KvDtype::F32,
        v_type: KvDtype::F32,
        max_batch: 8,
        recall_blocks: 0,
        recall_select: Default::default(),
    }
}

fn filled(n: u32) -> SeqCache {
    let mut c = SeqCache::new(&layout());
    let pos: Vec<u32> = (0..n).collect();
    let k: Vec<f32> = (0..n * 4).map(|i| i as f32).collect();
    c.layer_mut(0).append(&pos, &k, &k);
    c.advance(n);
    c
}

#[test]
fn a_sharing_layer_resolves_to_its_source_and_holds_nothing() {
    let c = filled(5);
    assert_eq!(c.layer(1).cells(), 0);
    assert_eq!(c.kv_layer(1).cells(), 5);
    assert_eq!(c.kv_layer(0).cells(), 5);
    assert_eq!(c.layout().bytes_per_token(), 2 * 4 * 4, "the sharing layer costs nothing per token");
    let raw = c.export_raw();
    assert_eq!(raw[1].tokens(), 0);
    let range = c.export_raw_range(1, 3).expect("a sharing layer holds every range (as nothing)");
    assert_eq!((range[0].tokens(), range[1].tokens()), (2, 0));
    let mut back = SeqCache::new(&layout());
    back.import_raw(&raw, 5).unwrap();
    assert!(back.export_raw() == raw);
    // Positions in a sharing layer are refused.
    let mut bad = raw.clone();
    bad[1] = raw[0].clone();
    assert!(back.import_raw(&bad, 5).is_err());
}

#[test]
fn sharing_is_serialised_only_when_set() {
    let plain = LayerSpec::new(LayerKind::Full, 2, 16);
    let json = serde_json::to_string(&plain).unwrap();
    assert!(!json.contains("shares"), "{json}");
    assert_eq!(serde_json::from_str::<LayerSpec>(&json).unwrap(), plain);
    let sharing = LayerSpec { shares: Some(3), ..plain };
    let json = serde_json::to_string(&sharing).unwrap();
    assert!(json.contains("\"shares\":3"), "{json}");
    assert_eq!(serde_json::from_str::<LayerSpec>(&json).unwrap(), sharing);
    let l = layout();
    assert!(l.difference(&CacheLayout { layers: vec![l.layers[0]; 2], ..l.clone() }).unwrap().contains("sharing"));
}
