//! Shared test helpers: locating the real models and reading the llama.cpp fixtures.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use lem_tokenizer::Tokenizer;
use serde::Deserialize;

/// A model the fixtures were generated for.
#[derive(Debug, Clone, Copy)]
pub struct Model {
    /// File name under the models directory.
    pub file: &'static str,
    /// Fixture name under tests/fixtures/tokenizer/.
    pub fixture: &'static str,
}

pub const SMOLLM2: Model = Model { file: "SmolLM2-135M-Instruct.Q4_1.gguf", fixture: "smollm2-135m" };
pub const GEMMA3: Model = Model { file: "gemma-3-270m-q4_k_m.gguf", fixture: "gemma3-270m" };

/// `$LEM_MODELS_DIR`, else `$HOME/.cache/lem/models`.
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LEM_MODELS_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").expect("HOME is not set (or set LEM_MODELS_DIR)");
    PathBuf::from(home).join(".cache/lem/models")
}

/// Path of a model file; panics (never skips) when it is missing.
pub fn model_path(model: Model) -> PathBuf {
    let p = models_dir().join(model.file);
    assert!(
        p.is_file(),
        "model file {} is missing: run `lem models fetch all` (or point LEM_MODELS_DIR at the models)",
        p.display()
    );
    p
}

/// The tokenizer of a model, loaded once per test binary.
pub fn tokenizer(model: Model) -> Arc<Tokenizer> {
    static CACHE: OnceLock<Mutex<HashMap<&'static str, Arc<Tokenizer>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(model.file)
        .or_insert_with(|| {
            let path = model_path(model);
            Arc::new(Tokenizer::from_gguf(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display())))
        })
        .clone()
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[derive(Debug, Deserialize)]
pub struct Corpus {
    pub strings: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct Case {
    pub text: String,
    pub ids: Vec<u32>,
    pub detok: String,
    pub detok_valid_utf8: bool,
    pub roundtrip: bool,
}

#[derive(Debug, Deserialize)]
pub struct BosCase {
    pub text: String,
    pub ids: Vec<u32>,
}

/// llama.cpp's answers for one model (scripts/fixtures/tokenizer.py).
#[derive(Debug, Deserialize)]
pub struct ModelFixture {
    pub model: String,
    pub llama_cpp_python: String,
    pub vocab_size: usize,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub eot_id: Option<u32>,
    pub add_bos: bool,
    pub eog_ids: Vec<u32>,
    pub control_ranges: Vec<[u32; 2]>,
    pub pieces_sha256: String,
    pub bos_cases: Vec<BosCase>,
    pub cases: Vec<Case>,
}

fn read_json<T: for<'de> Deserialize<'de>>(rel: &str) -> T {
    let path = fixtures_dir().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

pub fn corpus() -> Corpus {
    read_json("tokenizer/corpus.json")
}

pub fn model_fixture(model: Model) -> ModelFixture {
    let fx: ModelFixture = read_json(&format!("tokenizer/{}.json", model.fixture));
    assert_eq!(fx.model, model.file, "fixture {} is for another model", model.fixture);
    fx
}
