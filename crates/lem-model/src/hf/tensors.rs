//! The weights of a Hugging Face directory: `model.safetensors`, or the shards that
//! `model.safetensors.index.json` names, memory-mapped, with every header parsed and
//! checked (by the `safetensors` crate) when the directory is opened.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors};

use crate::error::ModelError;

/// The single-file weights.
pub(crate) const SINGLE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
pub(crate) const INDEX: &str = "model.safetensors.index.json";

/// One memory-mapped safetensors file.
struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// Where one tensor lives.
#[derive(Debug, Clone)]
pub(crate) struct TensorEntry {
    shard: usize,
    /// Stored element type.
    pub dtype: Dtype,
    /// Shape, row-major.
    pub shape: Vec<usize>,
    /// Byte range in the shard's file.
    start: usize,
    end: usize,
}

/// Every tensor of the checkpoint, by name.
pub(crate) struct Tensors {
    shards: Vec<Shard>,
    entries: BTreeMap<String, TensorEntry>,
}

impl std::fmt::Debug for Tensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensors")
            .field("files", &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>())
            .field("tensors", &self.entries.len())
            .finish()
    }
}

fn hf_err(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::HfDir { path: path.to_owned(), reason: reason.into() }
}

/// The weight files of `dir` (the index first when sharded), as the loader would read
/// them; `Err` when there are none or the index is unreadable.
pub(crate) fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join(SINGLE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(INDEX);
    if index.is_file() {
        let map = read_index(&index)?;
        let mut files: Vec<PathBuf> = vec![index];
        let mut shards: Vec<&String> = map.values().collect();
        shards.sort();
        shards.dedup();
        files.extend(shards.into_iter().map(|f| dir.join(f)));
        return Ok(files);
    }
    let shards = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors")).count()
        })
        .unwrap_or(0);
    let hint = if shards > 0 { format!(" ({shards} .safetensors files but no index)") } else { String::new() };
    Err(hf_err(dir, format!("no {SINGLE} or {INDEX}{hint}")))
}

/// `weight_map` of an index: tensor name -> shard file name.
fn read_index(index: &Path) -> Result<BTreeMap<String, String>, ModelError> {
    let text = std::fs::read_to_string(index).map_err(|source| ModelError::Io { path: index.to_owned(), source })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| hf_err(index, format!("invalid JSON: {e}")))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| hf_err(index, "no 'weight_map' object"))?;
    let mut out = BTreeMap::new();
    for (tensor, file) in map {
        let file =
            file.as_str().ok_or_else(|| hf_err(index, format!("weight_map entry '{tensor}' is not a file name")))?;
        // Shards live beside the index: refuse paths that would leave the directory.
        if file.is_empty() || file.contains('/') || file.contains('\\') || file == ".." {
            return Err(hf_err(
                index,
                format!("weight_map entry '{tensor}' names '{file}', not a file in the directory"),
            ));
        }
        out.insert(tensor.clone(), file.to_owned());
    }
    Ok(out)
}

/// A one-line description of a safetensors parse failure.
fn describe(e: &SafeTensorError) -> String {
    match e {
        SafeTensorError::MetadataIncompleteBuffer => {
            "the file's size does not match its header (truncated or padded)".to_owned()
        }
        SafeTensorError::InvalidHeaderLength => {
            "the header length runs past the end of the file (truncated?)".to_owned()
        }
        other => other.to_string().replace('\n', " "),
    }
}

impl Shard {
    fn open(path: &Path) -> Result<Shard, ModelError> {
        let io = |source| ModelError::Io { path: path.to_owned(), source };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 8 {
            return Err(hf_err(
                path,
                format!("malformed safetensors file: {len} bytes, shorter than the header length"),
            ));
        }
        // SAFETY: the map is read-only and lives as long as this value. Like every
        // memory-mapped loader, it relies on nobody truncating the file while it is open.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Ok(Shard { path: path.to_owned(), map })
    }

    /// Every tensor in the header, with absolute byte ranges.
    fn entries(&self, index: usize) -> Result<Vec<(String, TensorEntry)>, ModelError> {
        let (n, meta) = SafeTensors::read_metadata(&self.map)
            .map_err(|e| hf_err(&self.path, format!("malformed safetensors header: {}", describe(&e))))?;
        let base = 8 + n;
        Ok(meta
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let (s, e) = info.data_offsets;
                let entry = TensorEntry {
                    shard: index,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: base + s,
                    end: base + e,
                };
                (name, entry)
            })
            .collect())
    }
}

impl Tensors {
    /// Opens the checkpoint's weights in `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Tensors, ModelError> {
        let single = dir.join(SINGLE);
        if single.is_file() {
            let shard = Shard::open(&single)?;
            let entries = shard.entries(0)?.into_iter().collect();
            return Ok(Tensors { shards: vec![shard], entries });
        }
        let index = dir.join(INDEX);
        if !index.is_file() {
            return Err(weight_files(dir).err().unwrap_or_else(|| hf_err(dir, format!("no {SINGLE}"))));
        }
        let map = read_index(&index)?;
        let mut files: Vec<&String> = map.values().collect();
        files.sort();
        files.dedup();
        let mut shards = Vec::with_capacity(files.len());
        let mut by_file: BTreeMap<&str, (usize, BTreeMap<String, TensorEntry>)> = BTreeMap::new();
        for (i, file) in files.into_iter().enumerate() {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(hf_err(&index, format!("weight_map names shard '{file}', which is not in the directory")));
            }
            let shard = Shard::open(&path)?;
            by_file.insert(file, (i, shard.entries(i)?.into_iter().collect()));
            shards.push(shard);
        }
        let mut entries = BTreeMap::new();
        for (tensor, file) in &map {
            let (i, found) = &by_file[file.as_str()];
            let e = found.get(tensor).ok_or_else(|| {
                hf_err(
                    &shards[*i].path,
                    format!("tensor '{tensor}' is listed for this shard in {INDEX} but not stored in it"),
                )
            })?;
            entries.insert(tensor.clone(), e.clone());
        }
        Ok(Tensors { shards, entries })
    }

    /// The tensor called `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.entries.get(name)
    }

    /// Every tensor, in name order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &TensorEntry)> {
        self.entries.iter()
    }

    /// The tensor's stored bytes.
    pub(crate) fn bytes(&self, e: &TensorEntry) -> &[u8] {
        &self.shards[e.shard].map[e.start..e.end]
    }
}

/// The GGML type a stored dtype loads as, or the error naming the tensor.
pub(crate) fn ggml_type(name: &str, dtype: Dtype) -> Result<GgmlDType, ModelError> {
    match dtype {
        Dtype::F32 => Ok(GgmlDType::F32),
        Dtype::F16 => Ok(GgmlDType::F16),
        Dtype::BF16 => Ok(GgmlDType::BF16),
        other => Err(ModelError::UnsupportedTensorType {
            tensor: name.to_owned(),
            type_name: format!("{other:?} (lem reads F32, F16 and BF16 safetensors)"),
        }),
    }
}
