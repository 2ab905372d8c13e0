//! A model's identity covers how it was loaded: weights converted by `--dtype` compute
//! something else, so state made under one load must not restore under another.

mod common;

use std::path::PathBuf;

use lem_engine::{Engine, EngineConfig};
use lem_model::{GgmlDType, LoadOptions};

fn tiny(rel: &str) -> PathBuf {
    common::tiny_models_dir().join(rel)
}

#[test]
fn converted_weights_have_their_own_fingerprint() {
    let cfg = EngineConfig { threads: 1, ctx_size: 512 };
    let path = tiny("qwen3/f32.gguf");
    let plain = Engine::load(&path, cfg).unwrap();
    let file_fp = lem_model::fingerprint::fingerprint(&path).unwrap();
    assert_eq!(plain.model_fingerprint().unwrap(), file_fp, "a plain load is identified by its file");
    let q8 =
        Engine::load_with(&path, cfg, LoadOptions { dtype: Some(GgmlDType::Q8_0), ..LoadOptions::default() }).unwrap();
    let f16 =
        Engine::load_with(&path, cfg, LoadOptions { dtype: Some(GgmlDType::F16), ..LoadOptions::default() }).unwrap();
    let (a, b, c) =
        (plain.model_fingerprint().unwrap(), q8.model_fingerprint().unwrap(), f16.model_fingerprint().unwrap());
    assert_ne!(a, b);
    assert_ne!(b, c);
    assert_ne!(a, c);
    // Stable: the same load gives the same identity.
    let again =
        Engine::load_with(&path, cfg, LoadOptions { dtype: Some(GgmlDType::Q8_0), ..LoadOptions::default() }).unwrap();
    assert_eq!(again.model_fingerprint().unwrap(), b);
}
