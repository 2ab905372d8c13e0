//! Model fingerprints: what they cover, and the cache keyed by path, size and mtime.
#![allow(missing_docs)]

mod common;

use std::time::{Duration, SystemTime};

use candle_core::quantized::gguf_file::Value;
use common::tiny;
use lem_model::fingerprint::{cached_fingerprint, fingerprint};

#[test]
fn fingerprint_covers_weights_and_hyperparameters_only() {
    let d = tempfile::tempdir().unwrap();
    let a = tiny::write(&tiny::llama(7), d.path(), "a.gguf");
    let fa = fingerprint(&a).unwrap();
    assert_eq!(fa.len(), 64);
    // A copy under another name, another description, another vocabulary: same model.
    let renamed = tiny::llama(7).with_meta("general.name", Value::String("renamed".into()));
    assert_eq!(fingerprint(&tiny::write(&renamed, d.path(), "b.gguf")).unwrap(), fa);
    let retok = tiny::with_tokenizer(common::support::Spec { seed: 7, ..tiny::llama(7) }, Some((9, "qq")));
    assert_eq!(fingerprint(&tiny::write(&retok, d.path(), "c.gguf")).unwrap(), fa);
    // Other weights, another hyper-parameter: another model.
    assert_ne!(fingerprint(&tiny::write(&tiny::llama(8), d.path(), "d.gguf")).unwrap(), fa);
    let eps = tiny::llama(7).with_meta("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-6));
    assert_ne!(fingerprint(&tiny::write(&eps, d.path(), "e.gguf")).unwrap(), fa);
    // Not a model.
    std::fs::write(d.path().join("x.gguf"), b"nope").unwrap();
    assert!(fingerprint(&d.path().join("x.gguf")).is_err());
}

#[test]
fn cache_is_keyed_by_path_size_and_mtime() {
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("fp.json");
    let m = tiny::write(&tiny::llama(7), d.path(), "m.gguf");
    let fp = cached_fingerprint(&m, Some(&cache)).unwrap();
    assert_eq!(fp, fingerprint(&m).unwrap());
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    let key = m.canonicalize().unwrap().to_string_lossy().into_owned();
    assert_eq!(json[&key]["fingerprint"], fp.as_str());
    // A remembered value is used while path, size and mtime match...
    let mut edited = json.clone();
    edited[&key]["fingerprint"] = serde_json::json!("f".repeat(64));
    std::fs::write(&cache, serde_json::to_vec(&edited).unwrap()).unwrap();
    assert_eq!(cached_fingerprint(&m, Some(&cache)).unwrap(), "f".repeat(64));
    // ...and recomputed when the file changes (here: its mtime).
    let f = std::fs::File::options().write(true).open(&m).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(5)).unwrap();
    assert_eq!(cached_fingerprint(&m, Some(&cache)).unwrap(), fp);
    // A corrupt cache file only costs the recomputation.
    std::fs::write(&cache, b"{not json").unwrap();
    assert_eq!(cached_fingerprint(&m, Some(&cache)).unwrap(), fp);
}
