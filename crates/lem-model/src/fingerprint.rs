//! Model identity: a SHA-256 over what determines the model's outputs, computed once per
//! file and remembered.
//!
//! The fingerprint covers `general.architecture`, every `<architecture>.*` metadata key
//! (hyper-parameters, in key order, values canonically encoded) and every tensor's name,
//! GGML type, shape and data bytes. It leaves out the file name, `general.*` descriptions
//! and the tokenizer (which has its own fingerprint), so a renamed or re-described file
//! keeps its identity and any change to the weights or hyper-parameters changes it.
//!
//! A Hugging Face model directory is fingerprinted under its own domain tag: the
//! architecture, the canonical `config.json` (keys sorted, without transformers'
//! bookkeeping: `transformers_version` and every top-level key starting with `_`, such as
//! `_name_or_path`) and every tensor's name, stored type, shape and bytes in name order
//! (across shards, so sharding does not change the identity). The directory's name, its
//! tokenizer files and `generation_config.json` are not covered.
//!
//! Hashing a few hundred megabytes takes about a second, so [`cached_fingerprint`] keeps
//! results in `fingerprints.json` under the lem cache directory ([`cache_dir`]), keyed by
//! canonical path, size and modification time (for a directory: of `config.json` and
//! every weight file).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use candle_core::quantized::gguf_file::Value;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::hf::HfDir;
use crate::weights::{LoadOptions, WeightSource};

/// Version tag mixed into every fingerprint; bump when what is hashed changes.
const DOMAIN: &[u8] = b"lem-model fingerprint v1";
/// The same for Hugging Face directories.
const DOMAIN_HF: &[u8] = b"lem-model fingerprint hf-dir v1";

/// The lem cache directory: `$LEM_CACHE_DIR` if set and non-empty, else
/// `$HOME/.cache/lem` (`None` when neither is known). Not created here.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("LEM_CACHE_DIR") {
        Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
        _ => std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".cache").join("lem")),
    }
}

/// Feeds length-prefixed byte strings to a hash, so that concatenations cannot collide.
struct Hasher(Sha256);

impl Hasher {
    fn put(&mut self, b: &[u8]) {
        self.0.update((b.len() as u64).to_le_bytes());
        self.0.update(b);
    }

    fn value(&mut self, v: &Value) {
        let tag = |h: &mut Hasher, t: &str, b: &[u8]| {
            h.put(t.as_bytes());
            h.put(b);
        };
        match v {
            Value::U8(x) => tag(self, "u8", &x.to_le_bytes()),
            Value::I8(x) => tag(self, "i8", &x.to_le_bytes()),
            Value::U16(x) => tag(self, "u16", &x.to_le_bytes()),
            Value::I16(x) => tag(self, "i16", &x.to_le_bytes()),
            Value::U32(x) => tag(self, "u32", &x.to_le_bytes()),
            Value::I32(x) => tag(self, "i32", &x.to_le_bytes()),
            Value::U64(x) => tag(self, "u64", &x.to_le_bytes()),
            Value::I64(x) => tag(self, "i64", &x.to_le_bytes()),
            Value::F32(x) => tag(self, "f32", &x.to_bits().to_le_bytes()),
            Value::F64(x) => tag(self, "f64", &x.to_bits().to_le_bytes()),
            Value::Bool(x) => tag(self, "bool", &[u8::from(*x)]),
            Value::String(s) => tag(self, "str", s.as_bytes()),
            Value::Array(items) => {
                tag(self, "array", &(items.len() as u64).to_le_bytes());
                items.iter().for_each(|i| self.value(i));
            }
        }
    }
}

/// `value` as canonical JSON text: object keys sorted at every level, no whitespace.
fn canonical_json(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push(':');
                canonical_json(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
    }
}

/// Whether a top-level `config.json` key is transformers' bookkeeping, not the model.
fn is_bookkeeping(key: &str) -> bool {
    key == "transformers_version" || key.starts_with('_')
}

/// The fingerprint of a Hugging Face model directory (see the module docs).
fn fingerprint_dir(dir: &Path) -> Result<String, ModelError> {
    let hf = HfDir::open(dir, LoadOptions::default())?;
    let mut h = Hasher(Sha256::new());
    h.put(DOMAIN_HF);
    h.put(hf.arch().name().as_bytes());
    let config: serde_json::Map<String, serde_json::Value> =
        hf.config().map.iter().filter(|(k, _)| !is_bookkeeping(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut text = String::new();
    canonical_json(&serde_json::Value::Object(config), &mut text);
    h.put(text.as_bytes());
    let tensors = hf.tensors();
    h.put(&(tensors.iter().count() as u64).to_le_bytes());
    for (name, e) in tensors.iter() {
        h.put(name.as_bytes());
        h.put(format!("{:?}", e.dtype).as_bytes());
        h.put(&(e.shape.len() as u64).to_le_bytes());
        e.shape.iter().for_each(|&d| h.put(&(d as u64).to_le_bytes()));
        h.put(tensors.bytes(e));
    }
    Ok(hex::encode(h.0.finalize()))
}

/// Computes the fingerprint of the GGUF file or Hugging Face model directory at `path`
/// (hex SHA-256), reading every tensor's bytes. Prefer [`cached_fingerprint`].
pub fn fingerprint(path: &Path) -> Result<String, ModelError> {
    if path.is_dir() {
        return fingerprint_dir(path);
    }
    let g = GgufFile::open(path)?;
    let content = g.content();
    let io = |source| ModelError::Io { path: path.to_owned(), source };
    let mut h = Hasher(Sha256::new());
    h.put(DOMAIN);
    let arch = g.str("general.architecture")?.to_owned();
    h.put(arch.as_bytes());
    let prefix = format!("{arch}.");
    let arch_meta: BTreeMap<&String, &Value> =
        content.metadata.iter().filter(|(k, _)| k.starts_with(&prefix)).collect();
    h.put(&(arch_meta.len() as u64).to_le_bytes());
    for (k, v) in arch_meta {
        h.put(k.as_bytes());
        h.value(v);
    }
    let mut infos: Vec<_> = content.tensor_infos.iter().collect();
    infos.sort_by_key(|(_, i)| i.offset);
    h.put(&(infos.len() as u64).to_le_bytes());
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut buf = vec![0u8; 1 << 20];
    for (name, info) in infos {
        h.put(name.as_bytes());
        // The type as stored (candle's name, or MXFP4, which candle does not know).
        let ty = g.tensor_type(name).expect("a listed tensor");
        match ty {
            crate::gguf::TensorType::Ggml(t) => h.put(format!("{t:?}").as_bytes()),
            crate::gguf::TensorType::Mxfp4 => h.put(b"MXFP4"),
        }
        let dims = info.shape.dims();
        h.put(&(dims.len() as u64).to_le_bytes());
        dims.iter().for_each(|&d| h.put(&(d as u64).to_le_bytes()));
        // Bounds were checked when the file was opened.
        let elems: u64 = dims.iter().map(|&d| d as u64).product();
        let bytes = ty.bytes(elems).expect("checked when the file was opened");
        h.put(&bytes.to_le_bytes());
        file.seek(SeekFrom::Start(content.tensor_data_offset + info.offset)).map_err(io)?;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            file.read_exact(&mut buf[..n]).map_err(io)?;
            h.0.update(&buf[..n]);
            left -= n as u64;
        }
    }
    Ok(hex::encode(h.0.finalize()))
}

/// One remembered fingerprint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    size: u64,
    mtime_ns: u128,
    /// For a directory: every file the fingerprint depends on (name, size, mtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    files: Option<Vec<(String, u64, u128)>>,
    fingerprint: String,
}

/// `fingerprints.json`: canonical path -> entry.
type CacheFile = BTreeMap<String, Entry>;

/// Size and modification time of one file.
fn file_stamp(path: &Path) -> Result<(u64, u128), ModelError> {
    let meta = std::fs::metadata(path).map_err(|source| ModelError::Io { path: path.to_owned(), source })?;
    let mtime_ns = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    Ok((meta.len(), mtime_ns))
}

/// A remembered fingerprint's key (canonical path) and stamp: size and mtime of a file;
/// for a directory, those of `config.json` and every weight file (sizes summed, latest
/// mtime, and the list itself).
type Stamp = (String, u64, u128, Option<Vec<(String, u64, u128)>>);

/// The key and stamp that decide whether a remembered fingerprint still holds.
fn stamp(path: &Path) -> Result<Stamp, ModelError> {
    let io = |source| ModelError::Io { path: path.to_owned(), source };
    let canonical = path.canonicalize().map_err(io)?;
    let key = canonical.to_string_lossy().into_owned();
    if !canonical.is_dir() {
        let (size, mtime_ns) = file_stamp(&canonical)?;
        return Ok((key, size, mtime_ns, None));
    }
    let mut files = vec![canonical.join("config.json")];
    files.extend(crate::hf::weight_files(&canonical)?);
    let mut list = Vec::with_capacity(files.len());
    for f in &files {
        let (size, mtime_ns) = file_stamp(f)?;
        let name = f.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        list.push((name, size, mtime_ns));
    }
    let size = list.iter().map(|f| f.1).sum();
    let mtime_ns = list.iter().map(|f| f.2).max().unwrap_or(0);
    Ok((key, size, mtime_ns, Some(list)))
}

/// [`fingerprint`], remembered in `cache_file` (default: `fingerprints.json` in
/// [`cache_dir`]) keyed by canonical path, size and modification time (of every file a
/// directory's fingerprint covers). A missing,
/// unreadable or unwritable cache file only costs the recomputation; the cache is
/// rewritten atomically (temporary file, rename), so concurrent processes never see a
/// torn file (the last writer wins, which loses at most another process's new entry).
pub fn cached_fingerprint(path: &Path, cache_file: Option<&Path>) -> Result<String, ModelError> {
    let (key, size, mtime_ns, files) = stamp(path)?;
    let default = cache_dir().map(|d| d.join("fingerprints.json"));
    let Some(cache_file) = cache_file.map(Path::to_owned).or(default) else { return fingerprint(path) };
    let mut entries: CacheFile =
        std::fs::read(&cache_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    if let Some(e) = entries.get(&key)
        && e.size == size
        && e.mtime_ns == mtime_ns
        && e.files == files
        && e.fingerprint.len() == 64
    {
        return Ok(e.fingerprint.clone());
    }
    let fp = fingerprint(path)?;
    entries.insert(key, Entry { size, mtime_ns, files, fingerprint: fp.clone() });
    let _ = write_atomic(&cache_file, &serde_json::to_vec_pretty(&entries).unwrap_or_default());
    Ok(fp)
}

/// Writes `bytes` to a temporary sibling of `path` and renames it into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.{:x}.tmp",
        path.file_name().map_or_else(|| "fingerprints".into(), |f| f.to_string_lossy()),
        std::process::id(),
        std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    ));
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
