//! Reading GGUF files: metadata with typed accessors, tensors into [`QMatrix`].
//!
//! Parsing is candle's (`candle_core::quantized::gguf_file`); this module adds the checks
//! lem promises users: a clear error for a file that is not GGUF, a truncated file, an
//! unknown tensor type, a missing key or tensor.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use lem_kernels::QMatrix;

use crate::arch::Arch;
use crate::config::{Factors, Key, RopeScaling, YarnConfig, key_names};
use crate::error::ModelError;
use crate::names::{Role, TensorId, gguf_name};
use crate::weights::{LoadOptions, WeightSource, check_shape};

/// An open GGUF file with its parsed header.
pub struct GgufFile {
    path: PathBuf,
    file: BufReader<File>,
    content: Content,
    size: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile").field("path", &self.path).finish()
    }
}

/// Name of a GGML tensor type id, for error messages.
fn ggml_type_name(id: u32) -> String {
    let name = match id {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return format!("GGML type id {id}"),
    };
    format!("{name} (GGML type id {id})")
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// Skips `n` bytes (checked: a corrupt length must not wrap the seek).
fn skip(r: &mut BufReader<File>, n: u64) -> std::io::Result<()> {
    r.seek_relative(i64::try_from(n).map_err(|_| bad("length"))?)
}

/// Skips one metadata value of GGUF type `ty` without allocating.
fn skip_value(r: &mut BufReader<File>, ty: u32, wide: bool, depth: usize) -> std::io::Result<()> {
    let fixed = |ty: u32| match ty {
        0 | 1 | 7 => Some(1u64),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    };
    let len = |r: &mut BufReader<File>| if wide { read_u64(r) } else { read_u32(r).map(u64::from) };
    match ty {
        8 => {
            let n = len(r)?;
            skip(r, n)
        }
        9 if depth < 64 => {
            let elem = read_u32(r)?;
            let count = len(r)?;
            match fixed(elem) {
                Some(size) => skip(r, count.checked_mul(size).ok_or_else(|| bad("array length"))?),
                None => (0..count).try_for_each(|_| skip_value(r, elem, wide, depth + 1)),
            }
        }
        _ => skip(r, fixed(ty).ok_or_else(|| bad("value type"))?),
    }
}

/// The `general.alignment` candle will use, when the file sets one it honours (an
/// integer of up to 32 bits, non-negative; the last of duplicate keys wins, as in
/// candle's map), found by walking the key/value table. Any parse problem is an `Err`,
/// left for candle to report.
fn scan_alignment(r: &mut BufReader<File>, size: u64) -> std::io::Result<Option<u64>> {
    let _magic = read_u32(r)?;
    let wide = read_u32(r)? >= 2;
    let len = |r: &mut BufReader<File>| if wide { read_u64(r) } else { read_u32(r).map(u64::from) };
    let _tensors = len(r)?;
    let n_kv = len(r)?;
    let mut found = None;
    const KEY: &[u8] = b"general.alignment";
    for _ in 0..n_kv {
        let key_len = len(r)?;
        if key_len > size {
            return Err(bad("key length"));
        }
        // Streamed in chunks: is it KEY followed only by NULs (which candle drops)?
        let (mut is_key, mut at, mut buf) = (key_len >= KEY.len() as u64, 0u64, [0u8; 4096]);
        while at < key_len {
            let n = (key_len - at).min(buf.len() as u64) as usize;
            r.read_exact(&mut buf[..n])?;
            for (i, &c) in buf[..n].iter().enumerate() {
                let p = at as usize + i;
                is_key &= if p < KEY.len() { c == KEY[p] } else { c == 0 };
            }
            at += n as u64;
        }
        let ty = read_u32(r)?;
        if !is_key {
            skip_value(r, ty, wide, 0)?;
            continue;
        }
        let mut b = [0u8; 4];
        found = match ty {
            0 | 1 => {
                r.read_exact(&mut b[..1])?;
                (ty == 0 || b[0] < 0x80).then_some(u64::from(b[0]))
            }
            2 | 3 => {
                r.read_exact(&mut b[..2])?;
                let v = u16::from_le_bytes([b[0], b[1]]);
                (ty == 2 || v < 0x8000).then_some(u64::from(v))
            }
            4 | 5 => {
                r.read_exact(&mut b)?;
                let v = u32::from_le_bytes(b);
                (ty == 4 || v < 0x8000_0000).then_some(u64::from(v))
            }
            _ => {
                skip_value(r, ty, wide, 0)?;
                None
            }
        };
    }
    Ok(found)
}

impl GgufFile {
    /// Opens and parses `path`, verifying that every tensor lies inside the file.
    pub fn open(path: &Path) -> Result<GgufFile, ModelError> {
        let io = |source| ModelError::Io { path: path.to_owned(), source };
        let mut f = File::open(path).map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        let mut magic = [0u8; 4];
        let got = f.read(&mut magic).map_err(io)?;
        if got < 4 || &magic != b"GGUF" {
            return Err(ModelError::NotGguf { path: path.to_owned(), magic: magic[..got].to_vec() });
        }
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut file = BufReader::new(f);
        // candle divides by `general.alignment` without checking it (a zero panics).
        if let Ok(Some(0)) = scan_alignment(&mut file, size) {
            return Err(ModelError::Malformed { path: path.to_owned(), reason: "general.alignment is 0".into() });
        }
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let content = Content::read(&mut file).map_err(|e| {
            let reason = e.to_string();
            if let Some(id) = reason.strip_prefix("unknown dtype for tensor ") {
                let id = id.trim().parse::<u32>().unwrap_or(u32::MAX);
                return ModelError::UnsupportedTensorType { tensor: "?".into(), type_name: ggml_type_name(id) };
            }
            if reason.contains("failed to fill whole buffer") || reason.contains("remaining") {
                return ModelError::Malformed {
                    path: path.to_owned(),
                    reason: format!("file ends inside the header ({reason})"),
                };
            }
            ModelError::Malformed { path: path.to_owned(), reason }
        })?;
        let g = GgufFile { path: path.to_owned(), file, content, size };
        g.check_bounds()?;
        Ok(g)
    }

    fn check_bounds(&self) -> Result<(), ModelError> {
        let mut infos: Vec<_> = self.content.tensor_infos.iter().collect();
        infos.sort_by_key(|(_, i)| i.offset);
        for (name, info) in infos {
            // Dimensions come from the file: multiply with overflow checks, or a crafted
            // shape could wrap to a small size, pass this check and break the forward.
            let block = info.ggml_dtype.block_size() as u64;
            let bytes = info
                .shape
                .dims()
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
                .filter(|elems| elems % block == 0)
                .and_then(|elems| (elems / block).checked_mul(info.ggml_dtype.type_size() as u64))
                .ok_or_else(|| ModelError::Malformed {
                    path: self.path.clone(),
                    reason: format!(
                        "tensor '{name}' has impossible dimensions {:?} for {:?}",
                        info.shape.dims(),
                        info.ggml_dtype
                    ),
                })?;
            let end = self.content.tensor_data_offset.saturating_add(info.offset).saturating_add(bytes);
            if end > self.size {
                return Err(ModelError::Truncated {
                    path: self.path.clone(),
                    tensor: name.clone(),
                    needed: end,
                    size: self.size,
                });
            }
        }
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The parsed header (metadata and tensor table), for the fingerprint.
    pub(crate) fn content(&self) -> &Content {
        &self.content
    }

    /// All metadata.
    pub fn metadata(&self) -> &std::collections::HashMap<String, Value> {
        &self.content.metadata
    }

    fn meta_err(key: &str, reason: impl Into<String>) -> ModelError {
        ModelError::Metadata { key: key.to_owned(), reason: reason.into() }
    }

    /// A string value.
    pub fn str(&self, key: &str) -> Result<&str, ModelError> {
        match self.content.metadata.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(Self::meta_err(key, format!("expected a string, found {:?}", other.value_type()))),
            None => Err(Self::meta_err(key, "missing")),
        }
    }

    /// An integer value of any width, as u64; `None` when absent.
    pub fn opt_uint(&self, key: &str) -> Result<Option<u64>, ModelError> {
        let v = match self.content.metadata.get(key) {
            None => return Ok(None),
            Some(v) => v,
        };
        let n = match v {
            Value::U8(x) => u64::from(*x),
            Value::U16(x) => u64::from(*x),
            Value::U32(x) => u64::from(*x),
            Value::U64(x) => *x,
            Value::I8(x) if *x >= 0 => *x as u64,
            Value::I16(x) if *x >= 0 => *x as u64,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            other => {
                return Err(Self::meta_err(
                    key,
                    format!("expected a non-negative integer, found {:?}", other.value_type()),
                ));
            }
        };
        Ok(Some(n))
    }

    /// An optional boolean metadata value.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, ModelError> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(Self::meta_err(key, format!("expected a boolean, found {:?}", other.value_type()))),
        }
    }

    /// A required integer, checked to fit `usize` and be within `1..=max`.
    pub fn uint(&self, key: &str, max: u64) -> Result<usize, ModelError> {
        let n = self.opt_uint(key)?.ok_or_else(|| Self::meta_err(key, "missing"))?;
        if n == 0 || n > max {
            return Err(Self::meta_err(key, format!("value {n} is outside 1..={max}")));
        }
        Ok(n as usize)
    }

    /// A float value; `None` when absent.
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>, ModelError> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x)),
            Some(Value::F64(x)) => Ok(Some(*x as f32)),
            Some(other) => Err(Self::meta_err(key, format!("expected a float, found {:?}", other.value_type()))),
        }
    }

    /// Whether the file has a tensor called `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Shape of tensor `name` in row-major order (`[.., rows, cols]`).
    pub fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.content.tensor_infos.get(name).map(|i| i.shape.dims().to_vec())
    }

    /// Loads a 2-D tensor as a `[rows, cols]` matrix, checking the shape.
    pub fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<QMatrix, ModelError> {
        self.matrix_rows(name, rows, cols, 0..rows)
    }

    /// Loads rows `range` of a 2-D `[rows, cols]` tensor, checking the shape.
    pub fn matrix_rows(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        range: Range<usize>,
    ) -> Result<QMatrix, ModelError> {
        self.read_rows(name, &[rows, cols], range)
    }

    /// Loads rows `range` of expert `e`'s `[rows, cols]` slice of a 3-D
    /// `[n_expert, rows, cols]` tensor, checking the shape.
    pub fn expert_rows(
        &mut self,
        name: &str,
        e: usize,
        n_expert: usize,
        rows: usize,
        cols: usize,
    ) -> Result<QMatrix, ModelError> {
        if e >= n_expert {
            return Err(ModelError::TensorShape {
                tensor: name.to_owned(),
                got: vec![n_expert],
                expected: vec![e + 1],
            });
        }
        self.read_rows(name, &[n_expert, rows, cols], e * rows..(e + 1) * rows)
    }

    /// Rows `range` of a tensor of shape `expected` viewed as `[rows, cols]` (every
    /// dimension but the last flattened into rows).
    fn read_rows(&mut self, name: &str, expected: &[usize], range: Range<usize>) -> Result<QMatrix, ModelError> {
        let info = self.content.tensor_infos.get(name).ok_or_else(|| ModelError::MissingTensor(name.to_owned()))?;
        check_shape(name, Some(info.shape.dims().to_vec()), expected)?;
        let (cols, rows) = (expected[expected.len() - 1], expected[..expected.len() - 1].iter().product::<usize>());
        let dtype = info.ggml_dtype;
        if range.end > rows || !cols.is_multiple_of(dtype.block_size()) {
            return Err(ModelError::TensorShape {
                tensor: name.to_owned(),
                got: vec![rows, cols],
                expected: vec![range.end, cols],
            });
        }
        let row_bytes = (cols / dtype.block_size() * dtype.type_size()) as u64;
        let start = self.content.tensor_data_offset + info.offset + range.start as u64 * row_bytes;
        let io = |source| ModelError::Io { path: self.path.clone(), source };
        self.file.seek(SeekFrom::Start(start)).map_err(io)?;
        QMatrix::read(dtype, range.len(), cols, &mut self.file)
            .map_err(|source| ModelError::Quant { tensor: name.to_owned(), source })
    }

    /// Loads a 1-D tensor of `len` elements as f32 (dequantizing if needed).
    pub fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let dims = self.tensor_shape(name).ok_or_else(|| ModelError::MissingTensor(name.to_owned()))?;
        if dims != [len] {
            return Err(ModelError::TensorShape { tensor: name.to_owned(), got: dims, expected: vec![len] });
        }
        let info = &self.content.tensor_infos[name];
        let (dtype, start) = (info.ggml_dtype, self.content.tensor_data_offset + info.offset);
        let io = |source| ModelError::Io { path: self.path.clone(), source };
        self.file.seek(SeekFrom::Start(start)).map_err(io)?;
        let m = QMatrix::read(dtype, 1, len, &mut self.file)
            .map_err(|source| ModelError::Quant { tensor: name.to_owned(), source })?;
        Ok(m.to_f32())
    }
}

/// A GGUF file as a [`WeightSource`]: keys under `{arch}.`, tensors by their GGUF names.
#[derive(Debug)]
pub struct GgufWeights {
    file: GgufFile,
    arch: Arch,
    prefix: String,
    opts: LoadOptions,
}

impl GgufWeights {
    /// Wraps an open file whose `general.architecture` lem supports.
    pub fn new(file: GgufFile, opts: LoadOptions) -> Result<GgufWeights, ModelError> {
        let name = file.str("general.architecture")?.to_owned();
        let arch = Arch::from_gguf(&name)?;
        Ok(GgufWeights { file, arch, prefix: format!("{name}."), opts })
    }

    fn key(&self, key: Key) -> Option<String> {
        let (g, _) = key_names(key);
        (!g.is_empty()).then(|| format!("{}{g}", self.prefix))
    }

    fn scaling_key(&self, s: &str) -> String {
        format!("{}rope.scaling.{s}", self.prefix)
    }
}

impl WeightSource for GgufWeights {
    fn path(&self) -> &Path {
        &self.file.path
    }

    fn arch(&self) -> Arch {
        self.arch
    }

    fn model_name(&self) -> Option<String> {
        self.file.str("general.name").ok().map(str::to_owned)
    }

    fn uint(&self, key: Key) -> Result<Option<u64>, ModelError> {
        self.key(key).map_or(Ok(None), |k| self.file.opt_uint(&k))
    }

    fn float(&self, key: Key) -> Result<Option<f32>, ModelError> {
        self.key(key).map_or(Ok(None), |k| self.file.opt_f32(&k))
    }

    fn flag(&self, key: Key) -> Result<Option<bool>, ModelError> {
        self.key(key).map_or(Ok(None), |k| self.file.opt_bool(&k))
    }

    fn key_error(&self, key: Key, reason: String) -> ModelError {
        let name = self.key(key).unwrap_or_else(|| format!("{key:?}"));
        ModelError::Metadata { key: name, reason }
    }

    fn rope_scaling(&self, n_rot: usize, context_length: usize) -> Result<RopeScaling, ModelError> {
        let ty = self.file.str(&self.scaling_key("type")).ok();
        let factor = self.file.opt_f32(&self.scaling_key("factor"))?.filter(|f| *f > 0.0);
        let orig = self.file.opt_uint(&self.scaling_key("original_context_length"))?.unwrap_or(context_length as u64);
        let attn_factor = self.file.opt_f32(&self.scaling_key("attn_factor"))?.filter(|f| *f > 0.0).unwrap_or(1.0);
        let mut s = RopeScaling { attn_factor, ..RopeScaling::NONE };
        match ty {
            None | Some("none") => {}
            Some("linear") => s.freq_scale = factor.map_or(1.0, |f| 1.0 / f),
            Some("yarn") => {
                s.freq_scale = factor.map_or(1.0, |f| 1.0 / f);
                s.yarn = Some(YarnConfig {
                    orig_ctx: orig as u32,
                    beta_fast: self.file.opt_f32(&self.scaling_key("yarn_beta_fast"))?.unwrap_or(32.0),
                    beta_slow: self.file.opt_f32(&self.scaling_key("yarn_beta_slow"))?.unwrap_or(1.0),
                });
            }
            Some(other) => return Err(ModelError::Unsupported(format!("rope scaling type '{other}'"))),
        }
        let has = |r: Role| self.has(TensorId::global(r));
        if has(Role::RopeFreqs) {
            s.factors = Some(Factors::Tensor(Role::RopeFreqs));
        } else if has(Role::RopeFactorsShort) || has(Role::RopeFactorsLong) {
            // llama.cpp: the long factors once the context exceeds the original one.
            let long = self.opts.context.is_some_and(|c| c as u64 > orig);
            let role = if long && has(Role::RopeFactorsLong) || !has(Role::RopeFactorsShort) {
                Role::RopeFactorsLong
            } else {
                Role::RopeFactorsShort
            };
            s.factors = Some(Factors::Tensor(role));
        }
        let _ = n_rot;
        Ok(s)
    }

    fn tensor_name(&self, id: TensorId) -> String {
        gguf_name(id)
    }

    fn has(&self, id: TensorId) -> bool {
        self.file.has_tensor(&gguf_name(id))
    }

    fn shape(&self, id: TensorId) -> Option<Vec<usize>> {
        self.file.tensor_shape(&gguf_name(id))
    }

    fn matrix_rows(
        &mut self,
        id: TensorId,
        total_rows: usize,
        cols: usize,
        rows: Range<usize>,
    ) -> Result<QMatrix, ModelError> {
        self.file.matrix_rows(&gguf_name(id), total_rows, cols, rows)
    }

    fn expert_matrix(
        &mut self,
        id: TensorId,
        n_expert: usize,
        rows: usize,
        cols: usize,
    ) -> Result<QMatrix, ModelError> {
        let e = id.expert.ok_or_else(|| ModelError::Unsupported(format!("{:?} without an expert index", id.role)))?;
        self.file.expert_rows(&gguf_name(id), e, n_expert, rows, cols)
    }

    fn vector(&mut self, id: TensorId, len: usize) -> Result<Vec<f32>, ModelError> {
        self.file.vector(&gguf_name(id), len)
    }

    fn expert_vector(&mut self, id: TensorId, n_expert: usize, len: usize) -> Result<Vec<f32>, ModelError> {
        let e = id.expert.ok_or_else(|| ModelError::Unsupported(format!("{:?} without an expert index", id.role)))?;
        let name = gguf_name(id);
        if e >= n_expert {
            return Err(ModelError::TensorShape { tensor: name, got: vec![n_expert], expected: vec![e + 1] });
        }
        Ok(self.file.read_rows(&name, &[n_expert, len], e..e + 1)?.to_f32())
    }
}
