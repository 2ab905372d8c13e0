//! Shared helpers for tests on the real packaged models.
#![allow(dead_code, missing_docs)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use lem_engine::{Engine, EngineConfig};

/// Path of a packaged model in the cache; panics with instructions when missing.
pub fn model_path(alias: &str) -> PathBuf {
    let spec = lem_hub::find(alias).expect("known alias");
    let dir = lem_hub::models_dir().expect("models dir");
    let path = dir.join(spec.file_name);
    assert!(
        path.is_file(),
        "model {alias} is not at {}: run `lem models fetch all` (or scripts/test.sh) first",
        path.display()
    );
    path
}

/// Engines are loaded once per test binary and shared (tests run in parallel threads).
pub fn engine(alias: &str) -> Arc<Engine> {
    type Loaded = Vec<(String, Arc<Engine>)>;
    static CACHE: OnceLock<Mutex<Loaded>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut guard = cache.lock().unwrap();
    if let Some((_, e)) = guard.iter().find(|(a, _)| a == alias) {
        return e.clone();
    }
    let e = Arc::new(Engine::load(&model_path(alias), EngineConfig { threads: 2, ctx_size: 4096 }).unwrap());
    guard.push((alias.to_owned(), e.clone()));
    e
}

/// Path of a fixture file under the repository's tests/fixtures.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(rel)
}

/// Parses a JSON fixture.
pub fn load_json(rel: &str) -> serde_json::Value {
    let p = fixture(rel);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// A JSON array of integers as token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// The models every parity test runs on.
pub const MODELS: &[&str] = &["smollm2-135m", "gemma3-270m"];

/// Where `scripts/fixtures/tiny_models.py` put the tiny models (`$LEM_TINY_MODELS` or
/// `target/tiny-models`); panics with instructions when they are missing.
pub fn tiny_models_dir() -> PathBuf {
    let dir = std::env::var_os("LEM_TINY_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tiny-models"));
    assert!(
        dir.join("llama/f32.gguf").is_file(),
        "tiny models are missing from {}: run `python3 scripts/fixtures/tiny_models.py` (scripts/test.sh does)",
        dir.display()
    );
    dir
}
