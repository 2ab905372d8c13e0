//! The snapshot file (§1): safetensors, one `[H, T, D]` f32 tensor `keys.{l}` per present
//! layer, identity and dimensions in the string metadata.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use safetensors::Dtype;
use safetensors::tensor::{Metadata, SafeTensors, TensorInfo};

use crate::{KeySnapshot, ScoreError, SnapshotMeta};

/// The value of the `format` metadata key.
pub const FORMAT_TAG: &str = "lem-keys";
/// The value of the `format_version` metadata key this crate writes and reads.
pub const FORMAT_VERSION: &str = "1";
/// The largest `n_layers` [`KeySnapshot::load`] accepts. Absent layers have no tensor, so
/// without a bound a corrupt header could ask for an absurd allocation.
pub const MAX_LAYERS: usize = 1 << 16;
/// The largest `n_kv_heads` [`KeySnapshot::load`] accepts, for the same reason (a
/// zero-size `[H, 0, D]` tensor costs no bytes in the file).
pub const MAX_KV_HEADS: usize = 1 << 16;

const K_FORMAT: &str = "format";
const K_VERSION: &str = "format_version";
const K_FINGERPRINT: &str = "model_fingerprint";
const K_NAME: &str = "model_name";
const K_TOKENS: &str = "token_ids";
const K_LAYERS: &str = "n_layers";
const K_HEADS: &str = "n_kv_heads";
const K_T: &str = "n_tokens";
const K_D: &str = "head_dim";
const K_ROTARY: &str = "post_rotary";

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ScoreError + '_ {
    move |source| ScoreError::Io { path: path.to_path_buf(), source }
}

/// The tensor name of layer `l`.
fn tensor_name(l: usize) -> String {
    format!("keys.{l}")
}

/// Parses a canonical `keys.{l}` name (decimal, no sign, no leading zeros).
fn parse_tensor_name(name: &str) -> Option<usize> {
    let l: usize = name.strip_prefix("keys.")?.parse().ok()?;
    (tensor_name(l) == name).then_some(l)
}

impl KeySnapshot {
    fn metadata_map(&self) -> Result<HashMap<String, String>, serde_json::Error> {
        let m = self.meta();
        let token_ids = serde_json::to_string(&m.token_ids)?;
        let map = [
            (K_FORMAT, FORMAT_TAG.to_string()),
            (K_VERSION, FORMAT_VERSION.to_string()),
            (K_FINGERPRINT, m.model_fingerprint.clone()),
            (K_NAME, m.model_name.clone()),
            (K_TOKENS, token_ids),
            (K_LAYERS, self.n_layers().to_string()),
            (K_HEADS, self.n_kv_heads().to_string()),
            (K_T, self.n_tokens().to_string()),
            (K_D, self.head_dim().to_string()),
            (K_ROTARY, m.post_rotary.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(map)
    }

    /// The safetensors header: 8-byte little-endian length, then the JSON, space-padded
    /// to a multiple of 8 bytes (as the reference writer does).
    fn header_bytes(&self, path: &Path) -> Result<Vec<u8>, ScoreError> {
        let encode = |source| ScoreError::Encode { path: path.to_path_buf(), source };
        // `new` checked that one layer's byte size fits in usize; the running offset over
        // all layers is checked here.
        let layer_bytes = self.n_kv_heads() * self.n_tokens() * self.head_dim() * 4;
        let shape = vec![self.n_kv_heads(), self.n_tokens(), self.head_dim()];
        let mut infos = Vec::new();
        let mut offset = 0usize;
        for l in (0..self.n_layers()).filter(|&l| self.has_layer(l)) {
            let end =
                offset.checked_add(layer_bytes).ok_or(encode(safetensors::SafeTensorError::ValidationOverflow))?;
            infos.push((
                tensor_name(l),
                TensorInfo { dtype: Dtype::F32, shape: shape.clone(), data_offsets: (offset, end) },
            ));
            offset = end;
        }
        let map = self.metadata_map().map_err(|e| encode(e.into()))?;
        let metadata = Metadata::new(Some(map), infos).map_err(encode)?;
        let mut json = serde_json::to_vec(&metadata).map_err(|e| encode(e.into()))?;
        json.resize(json.len().next_multiple_of(8), b' ');
        let mut out = Vec::with_capacity(8 + json.len());
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        Ok(out)
    }

    fn write_to(&self, header: &[u8], file: File) -> io::Result<File> {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(header)?;
        let mut buf = Vec::with_capacity(1 << 16);
        for l in 0..self.n_layers() {
            let Some(heads) = self.layer_keys(l) else {
                continue;
            };
            for head in heads {
                for chunk in head.chunks(1 << 14) {
                    buf.clear();
                    for x in chunk {
                        buf.extend_from_slice(&x.to_le_bytes());
                    }
                    w.write_all(&buf)?;
                }
            }
        }
        w.into_inner().map_err(io::IntoInnerError::into_error)
    }

    /// Writes the snapshot to `path` atomically: the bytes go to a temporary file in the
    /// same directory, which is fsynced, renamed over `path`, and the directory fsynced.
    /// A crash leaves either the old file or the new one, never a torn one.
    ///
    /// Layers are written in index order as tensors `keys.{l}`, shape `[H, T, D]`, f32
    /// little-endian; absent layers have no tensor. See the crate docs for the metadata.
    ///
    /// # Errors
    /// [`ScoreError::NotAFile`] if `path` names a directory or no file name;
    /// [`ScoreError::Io`] for operating-system errors; [`ScoreError::Encode`] if the header
    /// cannot be built.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ScoreError> {
        let path = path.as_ref();
        let not_a_file = || ScoreError::NotAFile { path: path.to_path_buf() };
        let file_name = path.file_name().ok_or_else(not_a_file)?;
        if path.is_dir() {
            return Err(not_a_file());
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let header = self.header_bytes(path)?;

        let (tmp, file) = create_temp(dir, file_name)?;
        let result = self
            .write_to(&header, file)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&tmp))
            .and_then(|()| fs::rename(&tmp, path).map_err(io_err(path)));
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(dir)
    }

    /// Reads a snapshot written by [`KeySnapshot::save`] (or any writer of the same
    /// format), validating everything; never panics on malformed input.
    ///
    /// Metadata keys this version does not know are ignored.
    ///
    /// # Errors
    /// - [`ScoreError::Io`]: the file cannot be read; [`ScoreError::NotAFile`]: it is a
    ///   directory or other non-regular file;
    /// - [`ScoreError::NotSafetensors`]: not safetensors, truncated, corrupt header;
    /// - [`ScoreError::WrongFormat`]: `format` is not `lem-keys`;
    /// - [`ScoreError::UnsupportedVersion`]: `format_version` is not `1`;
    /// - [`ScoreError::MissingMetadata`] / [`ScoreError::InvalidMetadata`]: a required
    ///   key is absent or unparsable, or `token_ids` disagrees with `n_tokens`;
    /// - [`ScoreError::UnexpectedTensor`]: a tensor other than `keys.{l}`, `l < L`;
    /// - [`ScoreError::WrongDtype`], [`ScoreError::ShapeMismatch`]: a key tensor that is
    ///   not f32 `[H, T, D]`;
    /// - [`ScoreError::NonFinite`], [`ScoreError::TooLarge`]: see [`KeySnapshot::new`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ScoreError> {
        let path = path.as_ref();
        let pb = || path.to_path_buf();
        let stat = fs::metadata(path).map_err(io_err(path))?;
        if !stat.is_file() {
            return Err(ScoreError::NotAFile { path: pb() });
        }
        let bytes = fs::read(path).map_err(io_err(path))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&bytes).map_err(|source| ScoreError::NotSafetensors { path: pb(), source })?;
        let empty = HashMap::new();
        let map = metadata.metadata().as_ref().unwrap_or(&empty);
        let get =
            |key: &'static str| map.get(key).map(String::as_str).ok_or(ScoreError::MissingMetadata { path: pb(), key });
        let invalid = |key: &'static str, value: &str, reason: String| {
            let mut value = value.to_string();
            if value.len() > 80 {
                let cut = (0..=80).rev().find(|&i| value.is_char_boundary(i)).unwrap_or(0);
                value.truncate(cut);
                value.push('…');
            }
            ScoreError::InvalidMetadata { path: pb(), key, value, reason }
        };
        let get_usize = |key: &'static str| -> Result<usize, ScoreError> {
            let v = get(key)?;
            v.parse::<usize>().map_err(|e| invalid(key, v, format!("not a non-negative integer: {e}")))
        };

        let format = get(K_FORMAT)?;
        if format != FORMAT_TAG {
            return Err(ScoreError::WrongFormat { path: pb(), found: format.to_string() });
        }
        let version = get(K_VERSION)?;
        if version != FORMAT_VERSION {
            return Err(ScoreError::UnsupportedVersion { path: pb(), found: version.to_string() });
        }
        let n_layers = get_usize(K_LAYERS)?;
        if n_layers > MAX_LAYERS {
            return Err(invalid(K_LAYERS, &n_layers.to_string(), format!("more than {MAX_LAYERS} layers")));
        }
        let h = get_usize(K_HEADS)?;
        if h > MAX_KV_HEADS {
            return Err(invalid(K_HEADS, &h.to_string(), format!("more than {MAX_KV_HEADS} KV heads")));
        }
        let t = get_usize(K_T)?;
        let d = get_usize(K_D)?;
        let post_rotary = match get(K_ROTARY)? {
            "true" => true,
            "false" => false,
            v => return Err(invalid(K_ROTARY, v, "expected \"true\" or \"false\"".into())),
        };
        let tokens = get(K_TOKENS)?;
        let token_ids: Vec<u32> = serde_json::from_str(tokens)
            .map_err(|e| invalid(K_TOKENS, tokens, format!("not a JSON array of u32: {e}")))?;
        if token_ids.len() != t {
            return Err(invalid(K_TOKENS, tokens, format!("{} ids, but n_tokens is {t}", token_ids.len())));
        }
        let meta = SnapshotMeta {
            model_fingerprint: get(K_FINGERPRINT)?.to_string(),
            model_name: get(K_NAME)?.to_string(),
            token_ids,
            post_rotary,
        };

        let expected_shape = vec![h, t, d];
        let head_len = t
            .checked_mul(d)
            .ok_or_else(|| ScoreError::TooLarge { what: format!("n_tokens ({t}) * head_dim ({d})") })?;
        let data = bytes.get(8 + header_len..).unwrap_or_default();
        let mut layers: Vec<Option<Vec<Vec<f32>>>> = vec![None; n_layers];
        for name in metadata.offset_keys() {
            let unexpected = || ScoreError::UnexpectedTensor { path: pb(), name: name.clone() };
            let l = parse_tensor_name(&name).filter(|&l| l < n_layers).ok_or_else(unexpected)?;
            let info = metadata.info(&name).ok_or_else(unexpected)?;
            if info.dtype != Dtype::F32 {
                return Err(ScoreError::WrongDtype { path: pb(), tensor: name, found: info.dtype.to_string() });
            }
            if info.shape != expected_shape {
                return Err(ScoreError::ShapeMismatch {
                    path: pb(),
                    tensor: name,
                    expected: expected_shape,
                    found: info.shape.clone(),
                });
            }
            // `read_metadata` checked that the offsets tile the data exactly and match
            // shape x dtype, so this slice exists and is H*T*D*4 bytes long.
            let raw = data.get(info.data_offsets.0..info.data_offsets.1).ok_or_else(unexpected)?;
            let heads = if h == 0 {
                Vec::new()
            } else if head_len == 0 {
                vec![Vec::new(); h]
            } else {
                // raw.len() == h * head_len * 4, checked by the safetensors parser.
                raw.chunks_exact(raw.len() / h)
                    .map(|head| head.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
                    .collect()
            };
            layers[l] = Some(heads);
        }
        KeySnapshot::new(meta, h, t, d, layers)
    }
}

/// Creates a fresh temporary file next to the destination.
fn create_temp(dir: &Path, file_name: &std::ffi::OsStr) -> Result<(PathBuf, File), ScoreError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut attempt = 0;
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut name = std::ffi::OsString::from(".");
        name.push(file_name);
        name.push(format!(".{}.{n}.tmp", std::process::id()));
        let tmp = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 16 => attempt += 1,
            Err(e) => return Err(io_err(&tmp)(e)),
        }
    }
}

/// Makes the rename durable. Filesystems that cannot sync a directory (`EINVAL`) are
/// tolerated: on them there is nothing more to do.
fn sync_dir(dir: &Path) -> Result<(), ScoreError> {
    #[cfg(unix)]
    {
        let r = File::open(dir).and_then(|d| d.sync_all());
        match r {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported) => {}
            Err(e) => return Err(io_err(dir)(e)),
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
