//! Shared helpers: real packaged models (loaded once per test binary) and tiny models.
#![allow(dead_code, missing_docs)]

pub mod bounded;
#[path = "../../../lem-model/tests/support/mod.rs"]
pub mod support;
pub mod tiny;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use lem_engine::sampling::SamplingParams;
use lem_engine::{Engine, EngineConfig, GenerateRequest, Sequence, generate};

/// Keeps the fingerprint cache of tests out of the user's cache directory: every entry
/// point calls this before loading an engine; the variable is set once, while every
/// other caller waits.
pub fn isolate_cache() {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        // SAFETY: set once, before any test thread reads it (they all wait on this OnceLock).
        unsafe { std::env::set_var("LEM_CACHE_DIR", d.path()) };
        d
    });
}

/// Path of a packaged model in the cache; panics with instructions when missing.
pub fn model_path(alias: &str) -> PathBuf {
    let spec = lem_hub::find(alias).expect("known alias");
    let path = lem_hub::models_dir().expect("models dir").join(spec.file_name);
    assert!(path.is_file(), "model {alias} is not at {}: run `lem models fetch all` first", path.display());
    path
}

/// Loaded engines by alias.
type Engines = Mutex<Vec<(String, Arc<Engine>)>>;

/// Engines are loaded once per test binary and shared.
pub fn engine(alias: &str) -> Arc<Engine> {
    static CACHE: OnceLock<Engines> = OnceLock::new();
    isolate_cache();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut guard = cache.lock().unwrap();
    if let Some((_, e)) = guard.iter().find(|(a, _)| a == alias) {
        return e.clone();
    }
    let e = Arc::new(Engine::load(&model_path(alias), EngineConfig { threads: 2, ctx_size: 4096 }).unwrap());
    guard.push((alias.to_owned(), e.clone()));
    e
}

/// An engine over a GGUF file.
pub fn load(path: &Path) -> Engine {
    isolate_cache();
    Engine::load(path, EngineConfig { threads: 2, ctx_size: 1024 }).unwrap()
}

/// The packaged models.
pub const MODELS: &[&str] = &["smollm2-135m", "gemma3-270m"];

/// A greedy request for `n` tokens.
pub fn greedy(n: usize) -> GenerateRequest {
    GenerateRequest {
        max_tokens: n,
        sampling: SamplingParams { temperature: 0.0, ..SamplingParams::default() },
        stop: Vec::new(),
        ..Default::default()
    }
}

/// Greedy ids generated after feeding `prompt` to `seq`.
pub fn gen_ids(engine: &Engine, seq: &mut Sequence, prompt: &[u32], n: usize) -> Vec<u32> {
    generate(engine, seq, prompt, &greedy(n), &mut |_| ControlFlow::Continue(())).unwrap().ids
}

/// Tokens of `text` (with the model's BOS rule).
pub fn tokens(engine: &Engine, text: &str) -> Vec<u32> {
    engine.tokenizer().encode(text, lem_tokenizer::Bos::ModelDefault).unwrap()
}

/// Tokens of `text` as a continuation (no BOS).
pub fn more(engine: &Engine, text: &str) -> Vec<u32> {
    engine.tokenizer().encode(text, lem_tokenizer::Bos::Omit).unwrap()
}

/// A long, varied English text of roughly `words` words.
pub fn long_text(words: usize) -> String {
    let parts = [
        "The river bends past the old mill,",
        "where the miller kept his accounts in a green ledger,",
        "and every spring the water rose to the third step.",
        "Children counted boats from the bridge;",
        "some days there were seven, on market days nineteen.",
        "In the archive a clerk copied letters about grain prices,",
        "weather, a dispute over a fence, and a wedding in June.",
    ];
    let mut out = String::new();
    let mut i = 0;
    while out.split_whitespace().count() < words {
        out.push_str(parts[i % parts.len()]);
        out.push_str(&format!(" ({i}) "));
        i += 1;
    }
    out
}
