//! The fuzz targets: one per parser of untrusted bytes, each with its seeds (real files
//! of the kind, made by the repository's fixture generators or by lem itself), its
//! mutator and the code that consumes an input the way lem does.
//!
//! A target's `run` returns normally for every input, accepted or refused; a panic is a
//! crash (the driver catches it and keeps the input).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use lem_engine::{Engine, EngineConfig};
use lem_state::{PrefixCache, PrefixCacheConfig, SessionStore, Snapshot, Transcript};
use lem_tokenizer::{Bos, ChatMessage, ChatTemplate, Tokenizer};
use rand_chacha::ChaCha8Rng;

use crate::mutate::{mutate_bytes, mutate_json};

/// How a target's inputs are mutated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// Byte-level; most offsets fall in the first `hot` bytes (a header).
    Bytes {
        /// Bytes where the structure lives.
        hot: usize,
    },
    /// The prefix of a safetensors file is its header: its JSON is mutated as JSON (and
    /// the length prefix rewritten), or the bytes are mutated.
    Safetensors,
    /// JSON-aware.
    Json,
    /// Template text: byte-level plus splices of hostile Jinja snippets.
    Template,
    /// `METHOD PATH` and a JSON body: the body mutated as JSON or bytes, or the route.
    Http,
}

/// One fuzz target.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Name on the command line and in reports.
    pub name: &'static str,
    /// What it parses.
    pub about: &'static str,
    /// How its inputs are mutated.
    pub mutation: Mutation,
    seeds: fn(&Fixtures) -> Result<Vec<Vec<u8>>, FuzzError>,
    run: fn(&Fixtures, &Path, &[u8]) -> bool,
}

impl Target {
    /// The seed inputs.
    pub fn seeds(&self, fx: &Fixtures) -> Result<Vec<Vec<u8>>, FuzzError> {
        (self.seeds)(fx)
    }

    /// Consumes one input (`scratch` is an empty directory the target may use); true
    /// when the parser accepted it (it went on to be used, not refused with an error).
    pub fn run(&self, fx: &Fixtures, scratch: &Path, input: &[u8]) -> bool {
        (self.run)(fx, scratch, input)
    }

    /// A byte-mutated target over the seed `abc` that runs `check` (the driver's tests).
    #[cfg(test)]
    pub(crate) fn for_test(check: fn(&[u8])) -> Target {
        type Check = Option<fn(&[u8])>;
        thread_local! { static CHECK: std::cell::Cell<Check> = const { std::cell::Cell::new(None) }; }
        CHECK.with(|c| c.set(Some(check)));
        Target {
            name: "test",
            about: "test",
            mutation: Mutation::Bytes { hot: 3 },
            seeds: |_| Ok(vec![b"abc".to_vec()]),
            run: |_, _, input| {
                CHECK.with(|c| c.get().expect("set"))(input);
                true
            },
        }
    }

    /// Mutates `data` once.
    pub fn mutate(&self, rng: &mut ChaCha8Rng, data: &mut Vec<u8>, other: &[u8]) {
        match self.mutation {
            Mutation::Bytes { hot } => mutate_bytes(rng, data, other, hot),
            Mutation::Json => mutate_json(rng, data, other),
            Mutation::Safetensors => mutate_safetensors(rng, data, other),
            Mutation::Template => mutate_template(rng, data, other),
            Mutation::Http => crate::http::mutate(rng, data, other),
        }
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum FuzzError {
    /// A fixture is missing.
    #[error("{0} is missing: run `python3 scripts/fixtures/tiny_models.py` (scripts/test.sh does)")]
    Missing(PathBuf),
    /// A seed could not be made.
    #[error("making the seeds of {target}: {message}")]
    Seed {
        /// The target.
        target: &'static str,
        /// What failed.
        message: String,
    },
    /// I/O on the scratch directory.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn seed_err(target: &'static str) -> impl Fn(String) -> FuzzError {
    move |message| FuzzError::Seed { target, message }
}

/// The inputs the targets start from: the tiny models of `scripts/fixtures/tiny_models.py`.
#[derive(Debug)]
pub struct Fixtures {
    tiny: PathBuf,
    engine: OnceLock<Result<Arc<Engine>, String>>,
}

/// The tiny architecture most targets use (a GGUF and a Hugging Face directory).
const ARCH: &str = "qwen3";

impl Fixtures {
    /// Fixtures under `tiny` (the tiny-models directory).
    pub fn new(tiny: impl Into<PathBuf>) -> Fixtures {
        Fixtures { tiny: tiny.into(), engine: OnceLock::new() }
    }

    /// `$LEM_TINY_MODELS` or `target/tiny-models` of this repository.
    pub fn default_dir() -> PathBuf {
        std::env::var_os("LEM_TINY_MODELS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tiny-models"))
    }

    /// A file of the tiny-models directory, which must exist.
    pub(crate) fn tiny_file(&self, rel: &str) -> Result<PathBuf, FuzzError> {
        self.file(rel)
    }

    fn file(&self, rel: &str) -> Result<PathBuf, FuzzError> {
        let p = self.tiny.join(rel);
        if p.exists() { Ok(p) } else { Err(FuzzError::Missing(p)) }
    }

    fn read(&self, rel: &str) -> Result<Vec<u8>, FuzzError> {
        Ok(std::fs::read(self.file(rel)?)?)
    }

    /// The tiny GGUF engine the state targets restore into.
    fn engine(&self) -> Result<Arc<Engine>, String> {
        self.engine
            .get_or_init(|| {
                let path = self.file(&format!("{ARCH}/f32.gguf")).map_err(|e| e.to_string())?;
                Engine::load(&path, EngineConfig { threads: 1, ctx_size: 256 }).map(Arc::new).map_err(|e| e.to_string())
            })
            .clone()
    }
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "gguf",
        about: "GGUF header, metadata, tensor infos and data (f32 and Q4_K files), loaded as an engine",
        mutation: Mutation::Bytes { hot: 16 * 1024 },
        seeds: |fx| Ok(vec![fx.read(&format!("{ARCH}/f32.gguf"))?, fx.read("llama/q4_k.gguf")?]),
        run: run_gguf,
    },
    Target {
        name: "safetensors",
        about: "model.safetensors of a Hugging Face directory (header JSON, offsets, data)",
        mutation: Mutation::Safetensors,
        seeds: |fx| Ok(vec![fx.read(&format!("{ARCH}/hf/model.safetensors"))?]),
        run: |fx, scratch, input| run_hf_file(fx, scratch, "hf", "model.safetensors", input),
    },
    Target {
        name: "hf-config",
        about: "config.json of a Hugging Face directory",
        mutation: Mutation::Json,
        seeds: |fx| Ok(vec![fx.read(&format!("{ARCH}/hf/config.json"))?]),
        run: |fx, scratch, input| run_hf_file(fx, scratch, "hf", "config.json", input),
    },
    Target {
        name: "shard-index",
        about: "model.safetensors.index.json of a sharded Hugging Face directory",
        mutation: Mutation::Json,
        seeds: |fx| Ok(vec![fx.read(&format!("{ARCH}/hf-sharded/model.safetensors.index.json"))?]),
        run: |fx, scratch, input| run_hf_file(fx, scratch, "hf-sharded", "model.safetensors.index.json", input),
    },
    Target {
        name: "tokenizer-json",
        about: "tokenizer.json (byte-level BPE and SentencePiece-style), then encode and decode",
        mutation: Mutation::Json,
        seeds: |fx| Ok(vec![fx.read(&format!("{ARCH}/hf/tokenizer.json"))?, fx.read("gemma2/hf/tokenizer.json")?]),
        run: |fx, scratch, input| run_tokenizer(fx, scratch, "tokenizer.json", input),
    },
    Target {
        name: "tokenizer-config",
        about: "tokenizer_config.json (special tokens, chat template), then encode and decode",
        mutation: Mutation::Json,
        seeds: |fx| {
            Ok(vec![fx.read(&format!("{ARCH}/hf/tokenizer_config.json"))?, fx.read("gemma2/hf/tokenizer_config.json")?])
        },
        run: |fx, scratch, input| run_tokenizer(fx, scratch, "tokenizer_config.json", input),
    },
    Target {
        name: "chat-template",
        about: "Jinja chat templates compiled and rendered (hostile loops, recursion, huge output)",
        mutation: Mutation::Template,
        seeds: template_seeds,
        run: run_template,
    },
    Target {
        name: "snapshot",
        about: "KV snapshot files (container header, metadata, layout, tensors), restored into an engine",
        mutation: Mutation::Safetensors,
        seeds: snapshot_seeds,
        run: run_snapshot,
    },
    Target {
        name: "prefix-block",
        about: "on-disk prefix-cache block files, looked up and restored",
        mutation: Mutation::Safetensors,
        seeds: block_seeds,
        run: run_block,
    },
    Target {
        name: "session-index",
        about: "a sessions directory's index.json, listed, inspected and woken",
        mutation: Mutation::Json,
        seeds: |_| {
            Ok(vec![
                br#"{"sessions":{"s0":{"name":"s0","tokens":12,"bytes":4096,"created":"2026-01-01T00:00:00Z","created_unix_ms":1,"updated":"2026-01-01T00:00:00Z","updated_unix_ms":2,"labels":{"k":"v"}}}}"#.to_vec(),
            ])
        },
        run: run_session_index,
    },
    Target {
        name: "http",
        about: "request bodies of every endpoint through the real router, middleware and worker",
        mutation: Mutation::Http,
        seeds: crate::http::seeds,
        run: crate::http::run,
    },
];

/// The target named `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

fn run_gguf(_: &Fixtures, scratch: &Path, input: &[u8]) -> bool {
    let path = scratch.join("model.gguf");
    if std::fs::write(&path, input).is_err() {
        return false;
    }
    let Ok(engine) = Engine::load(&path, EngineConfig { threads: 1, ctx_size: 64 }) else { return false };
    exercise(&engine);
    true
}

/// Copies the tiny Hugging Face directory `dir` into `scratch` with `file` replaced by
/// `input`, and loads it as an engine.
fn run_hf_file(fx: &Fixtures, scratch: &Path, dir: &str, file: &str, input: &[u8]) -> bool {
    let Ok(src) = fx.file(&format!("{ARCH}/{dir}")) else { return false };
    let dst = scratch.join(dir);
    if copy_dir(&src, &dst).is_err() || std::fs::write(dst.join(file), input).is_err() {
        return false;
    }
    let Ok(engine) = Engine::load(&dst, EngineConfig { threads: 1, ctx_size: 64 }) else { return false };
    exercise(&engine);
    true
}

fn run_tokenizer(fx: &Fixtures, scratch: &Path, file: &str, input: &[u8]) -> bool {
    let Ok(src) = fx.file(&format!("{ARCH}/hf")) else { return false };
    let dst = scratch.join("tok");
    if std::fs::create_dir_all(&dst).is_err() {
        return false;
    }
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        let data = if name == file { input.to_vec() } else { std::fs::read(src.join(name)).unwrap_or_default() };
        if std::fs::write(dst.join(name), data).is_err() {
            return false;
        }
    }
    let Ok(tok) = Tokenizer::from_tokenizer_json(&dst.join("tokenizer.json"), Some(&dst.join("tokenizer_config.json")))
    else {
        return false;
    };
    for text in ["Hello, world! 123", "<|im_start|>user\nünïcödé 🦀<|im_end|>", ""] {
        if let Ok(ids) = tok.encode(text, Bos::ModelDefault) {
            let _ = tok.decode(&ids);
        }
    }
    let every: Vec<u32> = (0..tok.vocab_size().min(4096) as u32).collect();
    let _ = tok.decode(&every);
    true
}

/// A forward over a few tokens and a chat render: what every loaded model goes through.
fn exercise(engine: &Engine) {
    let vocab = engine.tokenizer().vocab_size().max(1) as u32;
    let mut seq = engine.new_sequence();
    let _ = seq.feed(engine, &[1 % vocab, 2 % vocab, 3 % vocab]);
    let _ = engine.render_chat(&[ChatMessage::user("hi")]);
}

fn copy_dir(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        std::fs::copy(e.path(), dst.join(e.file_name()))?;
    }
    Ok(())
}

/// Snippets that make renders expensive or deep, spliced into real templates.
const HOSTILE: &[&str] = &[
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{{ 'x' * 1000000000 }}",
    // Not here: `{% set s.v = s.v ~ s.v %}` in a loop doubles a string each iteration;
    // minijinja bounds instructions (fuel) and repetition (`*`) but not concatenation,
    // so that template exhausts memory (docs/decisions.md, "Hostile chat templates").
    "{{ messages[0]['content'] * 100000 }}",
    "{% for m in messages %}{% for m2 in messages %}{{ m2.content }}{% endfor %}{% endfor %}",
    "{{ raise_exception('refused') }}",
    "{{ undefined_function(1) }}",
    "{% if %}",
    "{{ messages | tojson }}",
    "{% for i in range(10**9) %}{% endfor %}",
    "{{ ((((((((((((((((((((1)))))))))))))))))))) }}",
];

/// Real chat templates: the tool-calling families' (lem-tokenizer's fixtures) and the
/// tiny models' `tokenizer_config.json` ones.
fn template_seeds(fx: &Fixtures) -> Result<Vec<Vec<u8>>, FuzzError> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../lem-tokenizer/tests/fixtures/templates");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
        .collect();
    files.sort();
    let mut seeds = files.iter().map(std::fs::read).collect::<Result<Vec<_>, _>>()?;
    for arch in [ARCH, "gemma2"] {
        let config: serde_json::Value = serde_json::from_slice(&fx.read(&format!("{arch}/hf/tokenizer_config.json"))?)
            .map_err(|e| FuzzError::Seed { target: "chat-template", message: e.to_string() })?;
        if let Some(t) = config.get("chat_template").and_then(|t| t.as_str()) {
            seeds.push(t.as_bytes().to_vec());
        }
    }
    Ok(seeds)
}

fn mutate_template(rng: &mut ChaCha8Rng, data: &mut Vec<u8>, other: &[u8]) {
    use rand::Rng;
    if rng.random_bool(0.3) {
        let snippet = HOSTILE[rng.random_range(0..HOSTILE.len())].as_bytes();
        let at = rng.random_range(0..=data.len());
        data.splice(at..at, snippet.iter().copied());
    } else {
        mutate_bytes(rng, data, other, data.len());
    }
}

fn run_template(_: &Fixtures, _: &Path, input: &[u8]) -> bool {
    let Ok(src) = std::str::from_utf8(input) else { return false };
    let Ok(t) = ChatTemplate::from_source(src, "<s>", "</s>") else { return false };
    let msgs = [ChatMessage::system("Be brief."), ChatMessage::user("Hello"), ChatMessage::assistant("Hi")];
    let ok = t.render(&msgs, true).is_ok();
    let _ = t.render(&msgs[..1], false);
    ok
}

/// The safetensors header of `data` as (header JSON, rest), if it has one.
fn split_safetensors(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = u64::from_le_bytes(data.get(..8)?.try_into().ok()?) as usize;
    let header = data.get(8..8usize.checked_add(n)?)?;
    Some((header, &data[8 + n..]))
}

fn mutate_safetensors(rng: &mut ChaCha8Rng, data: &mut Vec<u8>, other: &[u8]) {
    use rand::Rng;
    match split_safetensors(data) {
        Some((header, rest)) if rng.random_bool(0.6) => {
            let mut h = header.to_vec();
            mutate_json(rng, &mut h, header);
            let mut out = (h.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(&h);
            out.extend_from_slice(rest);
            *data = out;
        }
        Some((header, _)) => {
            let hot = 8 + header.len();
            mutate_bytes(rng, data, other, hot)
        }
        None => mutate_bytes(rng, data, other, data.len()),
    }
}

/// A short sequence of the tiny engine: what the state targets store.
fn tiny_sequence(engine: &Engine) -> Result<lem_engine::Sequence, String> {
    let mut seq = engine.new_sequence();
    let ids: Vec<u32> = (0..130u32).map(|i| (i * 7 + 3) % engine.tokenizer().vocab_size() as u32).collect();
    seq.feed(engine, &ids).map_err(|e| e.to_string())?;
    Ok(seq)
}

fn snapshot_seeds(fx: &Fixtures) -> Result<Vec<Vec<u8>>, FuzzError> {
    let err = seed_err("snapshot");
    let engine = fx.engine().map_err(&err)?;
    let seq = tiny_sequence(&engine).map_err(&err)?;
    let labels = BTreeMap::from([("note".to_owned(), "seed".to_owned())]);
    let snap = Snapshot::capture(&engine, &seq, labels, BTreeMap::new()).map_err(|e| err(e.to_string()))?;
    Ok(vec![snap.to_bytes().map_err(|e| err(e.to_string()))?])
}

fn run_snapshot(fx: &Fixtures, _: &Path, input: &[u8]) -> bool {
    let Ok(engine) = fx.engine() else { return false };
    let path = Path::new("fuzz.lemkv");
    let Ok(snap) = Snapshot::from_bytes(path, input) else { return false };
    let Ok(mut seq) = snap.into_sequence(&engine, path) else { return false };
    seq.feed(&engine, &[1]).is_ok()
}

/// Block files of a prefix cache filled from the tiny engine, in the order written.
fn block_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "lemblk") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn fill_prefix_cache(engine: &Engine, dir: &Path) -> Result<lem_engine::Sequence, String> {
    let cache = PrefixCache::new(PrefixCacheConfig::with_disk(dir)).map_err(|e| e.to_string())?;
    // One whole block (and a few tokens): the input replaces that block's file.
    let mut seq = tiny_sequence(engine)?;
    seq.truncate(100).map_err(|e| e.to_string())?;
    cache.store(engine, &seq).map_err(|e| e.to_string())?;
    Ok(seq)
}

fn block_seeds(fx: &Fixtures) -> Result<Vec<Vec<u8>>, FuzzError> {
    let err = seed_err("prefix-block");
    let engine = fx.engine().map_err(&err)?;
    let dir = tempfile::tempdir()?;
    fill_prefix_cache(&engine, dir.path()).map_err(&err)?;
    let files = block_files(dir.path());
    if files.is_empty() {
        return Err(err("the prefix cache wrote no block".into()));
    }
    files.iter().map(|f| std::fs::read(f).map_err(FuzzError::from)).collect()
}

fn run_block(fx: &Fixtures, scratch: &Path, input: &[u8]) -> bool {
    let Ok(engine) = fx.engine() else { return false };
    let Ok(seq) = fill_prefix_cache(&engine, scratch) else { return false };
    // Replace the block with the input, then look the prefix up through a cache that has
    // nothing in memory.
    for f in block_files(scratch) {
        let _ = std::fs::write(f, input);
    }
    let Ok(cache) = PrefixCache::new(PrefixCacheConfig::with_disk(scratch)) else { return false };
    let mut fresh = engine.new_sequence();
    let Ok(n) = cache.restore(&engine, &mut fresh, seq.tokens()) else { return false };
    assert!(n <= seq.tokens().len(), "restored {n} tokens of {}", seq.tokens().len());
    let _ = fresh.feed(&engine, &[1]);
    n > 0
}

fn run_session_index(fx: &Fixtures, scratch: &Path, input: &[u8]) -> bool {
    let Ok(engine) = fx.engine() else { return false };
    let Ok(store) = SessionStore::open(scratch) else { return false };
    let Ok(seq) = tiny_sequence(&engine) else { return false };
    let transcript = Transcript::from_chat(&[ChatMessage::user("hi")]);
    if store.sleep("s0", &engine, &seq, &transcript).is_err() {
        return false;
    }
    if std::fs::write(scratch.join("index.json"), input).is_err() {
        return false;
    }
    let listed = store.list().is_ok();
    let _ = store.info("s0");
    let _ = store.show("s0");
    let _ = store.wake("s0", &engine);
    let _ = store.fork("s0", "s1");
    let _ = store.sleep("s2", &engine, &seq, &transcript);
    let _ = store.remove("s1");
    listed
}
