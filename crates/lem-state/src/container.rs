//! The file container every lem state file shares: safetensors with string metadata that
//! names the format and its version, and a SHA-256 over the tensors.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, TensorView};
use sha2::{Digest, Sha256};

use crate::error::StateError;

/// Metadata key of the format tag.
pub(crate) const FORMAT: &str = "format";
/// Metadata key of the format version.
pub(crate) const VERSION: &str = "format_version";
/// Metadata key of the tensor checksum.
pub(crate) const CHECKSUM: &str = "checksum";

/// One tensor to write.
pub(crate) struct Out<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

/// `sha256:<hex>` over every metadata entry but the checksum itself (in key order) and
/// the tensors in name order (each one's name, dtype, shape and bytes), all
/// length-prefixed.
fn checksum<'a>(
    meta: impl Iterator<Item = (&'a String, &'a String)>,
    tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>,
) -> String {
    let mut sorted: Vec<_> = tensors.collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut meta: Vec<_> = meta.filter(|(k, _)| k.as_str() != CHECKSUM).collect();
    meta.sort();
    let mut h = Sha256::new();
    let mut put = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    put(b"lem-state checksum v1");
    put(&(meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put(k.as_bytes());
        put(v.as_bytes());
    }
    for (name, dtype, shape, data) in sorted {
        put(name.as_bytes());
        put(format!("{dtype:?}").as_bytes());
        put(&(shape.len() as u64).to_le_bytes());
        shape.iter().for_each(|&d| put(&(d as u64).to_le_bytes()));
        put(data);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Serializes `tensors` with `meta` plus the format tag, version and checksum.
pub(crate) fn encode(
    format: &str,
    version: u32,
    mut meta: BTreeMap<String, String>,
    tensors: &[Out<'_>],
) -> Result<Vec<u8>, String> {
    meta.insert(FORMAT.into(), format.into());
    meta.insert(VERSION.into(), version.to_string());
    let sum = checksum(meta.iter(), tensors.iter().map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice(), t.data)));
    meta.insert(CHECKSUM.into(), sum);
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|t| Ok((t.name.clone(), TensorView::new(t.dtype, t.shape.clone(), t.data).map_err(|e| e.to_string())?)))
        .collect::<Result<_, String>>()?;
    safetensors::serialize(views, Some(meta.into_iter().collect())).map_err(|e| e.to_string())
}

/// A parsed, verified lem file.
pub(crate) struct Parsed<'a> {
    pub meta: HashMap<String, String>,
    pub tensors: SafeTensors<'a>,
}

impl Parsed<'_> {
    /// A required metadata value.
    pub(crate) fn meta(&self, path: &Path, key: &str) -> Result<&str, StateError> {
        self.meta
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| StateError::malformed(path, format!("no '{key}' metadata")))
    }

    /// A required tensor of `dtype`, with its shape and bytes.
    pub(crate) fn tensor(&self, path: &Path, name: &str, dtype: Dtype) -> Result<(Vec<usize>, &[u8]), StateError> {
        let t = self.tensors.tensor(name).map_err(|_| StateError::malformed(path, format!("no tensor '{name}'")))?;
        if t.dtype() != dtype {
            return Err(StateError::malformed(path, format!("tensor '{name}' is {:?}, expected {dtype:?}", t.dtype())));
        }
        Ok((t.shape().to_vec(), t.data()))
    }
}

/// The header of a safetensors file: its length prefix and JSON.
fn header_json(path: &Path, bytes: &[u8], file_len: u64) -> Result<serde_json::Value, StateError> {
    let Some(n) = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))) else {
        return Err(StateError::Truncated { path: path.to_owned(), expected: 8, actual: file_len });
    };
    if n > 100_000_000 {
        return Err(StateError::malformed(path, format!("header length {n} is implausible (not a safetensors file?)")));
    }
    let Some(json) = bytes.get(8..8 + n as usize) else {
        return Err(StateError::Truncated { path: path.to_owned(), expected: 8 + n, actual: file_len });
    };
    serde_json::from_slice(json).map_err(|e| StateError::malformed(path, format!("header is not JSON: {e}")))
}

/// The `__metadata__` strings of a header.
fn metadata_of(path: &Path, header: &serde_json::Value) -> Result<HashMap<String, String>, StateError> {
    let m = header.get("__metadata__").ok_or_else(|| StateError::malformed(path, "no __metadata__ in the header"))?;
    serde_json::from_value(m.clone()).map_err(|e| StateError::malformed(path, format!("__metadata__: {e}")))
}

/// Checks the format tag and version.
fn check_format(
    path: &Path,
    meta: &HashMap<String, String>,
    format: &'static str,
    version: u32,
) -> Result<(), StateError> {
    let found = meta.get(FORMAT).map_or("none", String::as_str);
    if found != format {
        return Err(StateError::WrongFormat { path: path.to_owned(), expected: format, found: found.to_owned() });
    }
    let v = meta.get(VERSION).map_or("none", String::as_str);
    if v != version.to_string() {
        return Err(StateError::UnsupportedVersion { path: path.to_owned(), found: v.to_owned(), supported: version });
    }
    Ok(())
}

/// Parses a whole file's `bytes`: truncation, structure, format tag and version, then the
/// tensor checksum, each with its own error.
pub(crate) fn parse<'a>(
    path: &Path,
    bytes: &'a [u8],
    format: &'static str,
    version: u32,
) -> Result<Parsed<'a>, StateError> {
    let len = bytes.len() as u64;
    let (meta, expected) = checked_header(path, bytes, format, version)?;
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| {
        let reason = match e {
            SafeTensorError::MetadataIncompleteBuffer => format!("{} bytes after the data", len - expected),
            other => other.to_string(),
        };
        StateError::malformed(path, reason)
    })?;
    let recorded = meta.get(CHECKSUM).cloned().unwrap_or_default();
    let views = tensors.tensors();
    let computed = checksum(meta.iter(), views.iter().map(|(n, t)| (n.as_str(), t.dtype(), t.shape(), t.data())));
    if recorded != computed {
        return Err(StateError::Checksum { path: path.to_owned(), recorded, computed });
    }
    Ok(Parsed { meta, tensors })
}

/// The metadata of a whole file's `bytes` after the truncation, structure, format and
/// version checks, without verifying the checksum (to compare identities first).
pub(crate) fn parse_header(
    path: &Path,
    bytes: &[u8],
    format: &'static str,
    version: u32,
) -> Result<HashMap<String, String>, StateError> {
    Ok(checked_header(path, bytes, format, version)?.0)
}

/// The metadata and the file length the header implies, after the truncation, structure,
/// format and version checks.
fn checked_header(
    path: &Path,
    bytes: &[u8],
    format: &'static str,
    version: u32,
) -> Result<(HashMap<String, String>, u64), StateError> {
    let len = bytes.len() as u64;
    let header = header_json(path, bytes, len)?;
    // Where the data ends according to the header, to tell truncation from corruption.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
    let expected = 8 + n + data_end(&header);
    if expected > len {
        return Err(StateError::Truncated { path: path.to_owned(), expected, actual: len });
    }
    let meta = metadata_of(path, &header)?;
    check_format(path, &meta, format, version)?;
    Ok((meta, expected))
}

/// Where the data ends according to a header (relative to the data start).
fn data_end(header: &serde_json::Value) -> u64 {
    header
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0)
}

/// Reads only the header of `path` and checks its format tag and version (no checksum:
/// for listings).
pub(crate) fn read_header(
    path: &Path,
    format: &'static str,
    version: u32,
) -> Result<HashMap<String, String>, StateError> {
    let mut f = std::fs::File::open(path).map_err(StateError::io(path))?;
    let len = f.metadata().map_err(StateError::io(path))?.len();
    let mut prefix = [0u8; 8];
    let got = f.read(&mut prefix).map_err(StateError::io(path))?;
    if got < 8 {
        return Err(StateError::Truncated { path: path.to_owned(), expected: 8, actual: len });
    }
    let n = u64::from_le_bytes(prefix);
    if n > 100_000_000 || 8 + n > len {
        return Err(StateError::Truncated { path: path.to_owned(), expected: 8 + n, actual: len });
    }
    let mut bytes = prefix.to_vec();
    bytes.resize(8 + n as usize, 0);
    f.read_exact(&mut bytes[8..]).map_err(StateError::io(path))?;
    let header = header_json(path, &bytes, len)?;
    let meta = metadata_of(path, &header)?;
    check_format(path, &meta, format, version)?;
    Ok(meta)
}

/// Little-endian bytes of `u32`s.
pub(crate) fn u32_bytes(xs: &[u32]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `u32`s from little-endian bytes (the length is a multiple of 4: safetensors checked it).
pub(crate) fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}
