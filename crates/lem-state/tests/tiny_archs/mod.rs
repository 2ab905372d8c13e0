//! The tiny random-weight models that `scripts/fixtures/tiny_models.py` writes (seeded)
//! into `target/tiny-models/<arch>/` (or `$LEM_TINY_MODELS`): the same weights as GGUF
//! and as a Hugging Face directory. Engines are loaded once per test binary. Also used by
//! `crates/lem-inspect/tests/architectures.rs` through `#[path]`.
#![allow(dead_code, missing_docs)]

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use lem_engine::sampling::SamplingParams;
use lem_engine::{Engine, EngineConfig, GenerateRequest, Sequence, generate};
use lem_tokenizer::Bos;

/// The architectures checked here: qwen3 (head_dim 32, per-head q/k norms) and gemma2
/// (layer 0 a sliding window of 32, layer 1 full; soft-capping).
pub const ARCHS: &[&str] = &["qwen3", "gemma2"];

/// The sources of each architecture's weights: an F32 GGUF file and the HF directory.
pub const SOURCES: &[&str] = &["f32.gguf", "hf"];

/// Where the generator put the models; panics with the command that makes them.
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("LEM_TINY_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tiny-models"));
    for arch in ARCHS {
        for source in SOURCES {
            let p = dir.join(arch).join(source);
            assert!(
                p.exists(),
                "tiny model {} is missing: run python3 scripts/fixtures/tiny_models.py (scripts/test.sh does)",
                p.display()
            );
        }
    }
    dir
}

/// Keeps the fingerprint cache of tests out of the user's cache directory: set once,
/// before any engine is loaded; every other caller waits.
pub fn isolate_cache() {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        // SAFETY: set once, before any test thread reads it (they all wait on this OnceLock).
        unsafe { std::env::set_var("LEM_CACHE_DIR", d.path()) };
        d
    });
}

/// One model: an architecture from one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    pub arch: &'static str,
    pub source: &'static str,
}

impl Case {
    /// `arch/source`, for messages.
    pub fn name(&self) -> String {
        format!("{}/{}", self.arch, self.source)
    }

    /// The file or directory.
    pub fn path(&self) -> PathBuf {
        models_dir().join(self.arch).join(self.source)
    }

    /// The engine (loaded once per test binary).
    pub fn engine(&self) -> Arc<Engine> {
        engine(*self)
    }
}

/// Every architecture from every source.
pub fn cases() -> Vec<Case> {
    ARCHS.iter().flat_map(|&arch| SOURCES.iter().map(move |&source| Case { arch, source })).collect()
}

/// Loaded engines.
type Engines = Mutex<Vec<(Case, Arc<Engine>)>>;

/// The engine of `case`: 2 threads, a context of 4096, the default (f16) KV cache.
pub fn engine(case: Case) -> Arc<Engine> {
    static CACHE: OnceLock<Engines> = OnceLock::new();
    isolate_cache();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut guard = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, e)) = guard.iter().find(|(c, _)| *c == case) {
        return e.clone();
    }
    let path = case.path();
    let e = Arc::new(
        Engine::load(&path, EngineConfig { threads: 2, ctx_size: 4096 })
            .unwrap_or_else(|e| panic!("loading {}: {e}", path.display())),
    );
    guard.push((case, e.clone()));
    e
}

/// `tests/fixtures/tiny/text.txt` (819 characters, 296 tokens with BOS).
pub fn text() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/text.txt");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The text's tokens, with BOS.
pub fn text_ids(e: &Engine) -> Vec<u32> {
    e.tokenizer().encode(&text(), Bos::ModelDefault).unwrap()
}

/// Tokens of `s` as a continuation (no BOS).
pub fn more(e: &Engine, s: &str) -> Vec<u32> {
    e.tokenizer().encode(s, Bos::Omit).unwrap()
}

/// The largest sliding-window ring of the engine's cache (`window + max_batch` cells),
/// or `None` when every layer is full attention.
pub fn ring(e: &Engine) -> Option<usize> {
    let c = e.model().new_cache();
    (0..c.n_layers()).filter_map(|l| c.layer(l).ring_capacity()).max()
}

/// `n` prompt tokens: the text with BOS, then the text again (without BOS) as often as
/// needed.
pub fn long_ids(e: &Engine, n: usize) -> Vec<u32> {
    let mut ids = text_ids(e);
    let again = more(e, &format!(" {}", text()));
    while ids.len() < n {
        ids.extend_from_slice(&again);
    }
    ids.truncate(n);
    ids
}

/// A prompt long enough that every sliding-window ring has wrapped (64 tokens past the
/// largest ring), and at least 300 tokens.
pub fn wrapping_ids(e: &Engine) -> Vec<u32> {
    long_ids(e, ring(e).map_or(300, |r| (r + 64).max(300)))
}

/// A greedy request for `n` tokens.
pub fn greedy(n: usize) -> GenerateRequest {
    GenerateRequest { max_tokens: n, sampling: SamplingParams::greedy(), ..GenerateRequest::default() }
}

/// Greedy ids generated after feeding `prompt` to `seq`.
pub fn gen_ids(e: &Engine, seq: &mut Sequence, prompt: &[u32], n: usize) -> Vec<u32> {
    generate(e, seq, prompt, &greedy(n), &mut |_| ControlFlow::Continue(())).unwrap().ids
}

/// `a` followed by `b`.
pub fn cat(a: &[u32], b: &[u32]) -> Vec<u32> {
    a.iter().chain(b).copied().collect()
}
