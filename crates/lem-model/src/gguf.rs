//! Reading GGUF files: metadata with typed accessors, tensors into [`QMatrix`].
//!
//! Parsing is candle's (`candle_core::quantized::gguf_file`); this module adds the checks
//! lem promises users: a clear error for a file that is not GGUF, a truncated file, an
//! unknown tensor type, a missing key or tensor.
//!
//! candle does not know MXFP4 (GGML type 39) and refuses a header that lists one. lem
//! walks the tensor table itself first (as it walks the key/value table for the
//! alignment), notes the MXFP4 tensors, and hands candle the header with their type ids
//! replaced by a placeholder; those tensors are then sized and read by lem alone
//! ([`TensorType`]), re-encoded exactly as Q8_0 (see [`mxfp4_matrix`]).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use lem_kernels::{QMatrix, QuantError, mxfp4};

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
    /// Tensors stored as MXFP4 (candle saw them as [`PLACEHOLDER`]).
    mxfp4: HashSet<String>,
}

/// GGML's type id of MXFP4.
const MXFP4_ID: u32 = 39;
/// The type candle is told an MXFP4 tensor has while it parses the header.
const PLACEHOLDER: u32 = 8;

/// A stored tensor's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    /// A type candle knows.
    Ggml(GgmlDType),
    /// MXFP4: 32 weights in 17 bytes (E8M0 scale, 4-bit E2M1 values).
    Mxfp4,
}

impl TensorType {
    /// Bytes of `elems` elements (a whole number of blocks), `None` on overflow or a
    /// partial block.
    pub fn bytes(self, elems: u64) -> Option<u64> {
        let (block, size) = match self {
            TensorType::Ggml(t) => (t.block_size() as u64, t.type_size() as u64),
            TensorType::Mxfp4 => (mxfp4::BLOCK as u64, std::mem::size_of::<mxfp4::BlockMxfp4>() as u64),
        };
        elems.is_multiple_of(block).then(|| (elems / block).checked_mul(size)).flatten()
    }

    /// Elements per block.
    fn block(self) -> usize {
        match self {
            TensorType::Ggml(t) => t.block_size(),
            TensorType::Mxfp4 => mxfp4::BLOCK,
        }
    }
}

/// `rows` rows of MXFP4 blocks as a matrix: exactly as Q8_0 (each block's doubled E2M1
/// integers as the 8-bit values, half its E8M0 scale, a power of two, as the f16 scale)
/// when every scale fits an f16 (`2^-24..=2^15`), so products run on the Q8_0 kernels
/// with the integer sums llama.cpp's MXFP4 kernels form; otherwise as F32 (also exact).
pub(crate) fn mxfp4_matrix(raw: &[u8], rows: usize, cols: usize) -> Result<QMatrix, QuantError> {
    const SIZE: usize = std::mem::size_of::<mxfp4::BlockMxfp4>();
    let blocks: Vec<mxfp4::BlockMxfp4> = raw
        .chunks_exact(SIZE)
        .map(|b| mxfp4::BlockMxfp4 { e: b[0], qs: b[1..SIZE].try_into().expect("16 code bytes") })
        .collect();
    if blocks.iter().all(|b| (104..=143).contains(&b.e)) {
        let mut out = Vec::with_capacity(blocks.len() * 34);
        for b in &blocks {
            // f16 bits of 2^k, k = e - 128 in -24..=15 (subnormal below -14).
            let k = i32::from(b.e) - 128;
            let bits: u16 = if k >= -14 { ((k + 15) as u16) << 10 } else { 1 << (k + 24) };
            out.extend_from_slice(&bits.to_le_bytes());
            out.extend(b.qs.iter().map(|&q| mxfp4::KVALUES[usize::from(q & 0x0F)] as u8));
            out.extend(b.qs.iter().map(|&q| mxfp4::KVALUES[usize::from(q >> 4)] as u8));
        }
        return QMatrix::from_bytes(GgmlDType::Q8_0, rows, cols, &out);
    }
    let mut values = vec![0f32; blocks.len() * mxfp4::BLOCK];
    mxfp4::dequantize(&blocks, &mut values);
    QMatrix::quantize(GgmlDType::F32, rows, cols, &values)
}

/// Walks the header to the end of the tensor table; returns its length and, for every
/// MXFP4 tensor, the file offset of its type id and its name (as candle reads names:
/// trailing NULs dropped, lossy UTF-8). Any parse problem is an `Err`, left for candle to
/// report.
fn scan_tensor_types(r: &mut BufReader<File>, size: u64) -> std::io::Result<(u64, Vec<(u64, String)>)> {
    let _magic = read_u32(r)?;
    let wide = read_u32(r)? >= 2;
    let len = |r: &mut BufReader<File>| if wide { read_u64(r) } else { read_u32(r).map(u64::from) };
    let n_tensors = len(r)?;
    let n_kv = len(r)?;
    for _ in 0..n_kv {
        let key_len = len(r)?;
        if key_len > size {
            return Err(bad("key length"));
        }
        skip(r, key_len)?;
        let ty = read_u32(r)?;
        skip_value(r, ty, wide, 0)?;
    }
    let mut found = Vec::new();
    for _ in 0..n_tensors {
        let name_len = len(r)?;
        if name_len > size {
            return Err(bad("tensor name length"));
        }
        let mut name = vec![0u8; name_len as usize];
        r.read_exact(&mut name)?;
        while name.last() == Some(&0) {
            name.pop();
        }
        let n_dims = u64::from(read_u32(r)?);
        skip(r, n_dims.checked_mul(if wide { 8 } else { 4 }).ok_or_else(|| bad("dimensions"))?)?;
        let at = r.stream_position()?;
        if read_u32(r)? == MXFP4_ID {
            found.push((at, String::from_utf8_lossy(&name).into_owned()));
        }
        let _offset = read_u64(r)?;
    }
    Ok((r.stream_position()?, found))
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
        let (header_len, mxfp4_at) = scan_tensor_types(&mut file, size).unwrap_or((0, Vec::new()));
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let parsed = if mxfp4_at.is_empty() {
            Content::read(&mut file)
        } else {
            // The header with MXFP4 type ids replaced, for candle.
            let mut head = vec![0u8; header_len as usize];
            file.read_exact(&mut head).map_err(io)?;
            for (at, _) in &mxfp4_at {
                head[*at as usize..*at as usize + 4].copy_from_slice(&PLACEHOLDER.to_le_bytes());
            }
            Content::read(&mut Cursor::new(head))
        };
        let content = parsed.map_err(|e| {
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
        let mxfp4_names = mxfp4_at.into_iter().map(|(_, name)| name).collect();
        let g = GgufFile { path: path.to_owned(), file, content, size, mxfp4: mxfp4_names };
        g.check_bounds()?;
        Ok(g)
    }

    fn check_bounds(&self) -> Result<(), ModelError> {
        let mut infos: Vec<_> = self.content.tensor_infos.iter().collect();
        infos.sort_by_key(|(_, i)| i.offset);
        for (name, info) in infos {
            // Dimensions come from the file: multiply with overflow checks, or a crafted
            // shape could wrap to a small size, pass this check and break the forward.
            let ty = self.type_of(name, info);
            let bytes = info
                .shape
                .dims()
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
                .and_then(|elems| ty.bytes(elems))
                .ok_or_else(|| ModelError::Malformed {
                    path: self.path.clone(),
                    reason: format!("tensor '{name}' has impossible dimensions {:?} for {ty:?}", info.shape.dims()),
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

    fn type_of(&self, name: &str, info: &TensorInfo) -> TensorType {
        if self.mxfp4.contains(name) { TensorType::Mxfp4 } else { TensorType::Ggml(info.ggml_dtype) }
    }

    /// The stored type of tensor `name`.
    pub fn tensor_type(&self, name: &str) -> Option<TensorType> {
        self.content.tensor_infos.get(name).map(|i| self.type_of(name, i))
    }

    /// Every tensor: name, stored type, shape (row-major), and where its data starts in
    /// the file, in file order.
    pub fn tensors(&self) -> Vec<(&str, TensorType, Vec<usize>, u64)> {
        let mut v: Vec<_> = self
            .content
            .tensor_infos
            .iter()
            .map(|(n, i)| {
                (n.as_str(), self.type_of(n, i), i.shape.dims().to_vec(), self.content.tensor_data_offset + i.offset)
            })
            .collect();
        v.sort_by_key(|t| t.3);
        v
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
        let ty = self.type_of(name, info);
        if range.end > rows || !cols.is_multiple_of(ty.block()) {
            return Err(ModelError::TensorShape {
                tensor: name.to_owned(),
                got: vec![rows, cols],
                expected: vec![range.end, cols],
            });
        }
        let row_bytes = ty.bytes(cols as u64).expect("whole blocks, checked above");
        let start = self.content.tensor_data_offset + info.offset + range.start as u64 * row_bytes;
        let io = |source| ModelError::Io { path: self.path.clone(), source };
        self.file.seek(SeekFrom::Start(start)).map_err(io)?;
        let quant = |source| ModelError::Quant { tensor: name.to_owned(), source };
        match ty {
            TensorType::Ggml(dtype) => QMatrix::read(dtype, range.len(), cols, &mut self.file).map_err(quant),
            TensorType::Mxfp4 => {
                let mut raw = vec![0u8; range.len() * row_bytes as usize];
                self.file.read_exact(&mut raw).map_err(io)?;
                mxfp4_matrix(&raw, range.len(), cols).map_err(quant)
            }
        }
    }

    /// Loads a 1-D tensor of `len` elements as f32 (dequantizing if needed).
    pub fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let dims = self.tensor_shape(name).ok_or_else(|| ModelError::MissingTensor(name.to_owned()))?;
        if dims != [len] {
            return Err(ModelError::TensorShape { tensor: name.to_owned(), got: dims, expected: vec![len] });
        }
        let info = &self.content.tensor_infos[name];
        let (ty, start) = (self.type_of(name, info), self.content.tensor_data_offset + info.offset);
        let io = |source| ModelError::Io { path: self.path.clone(), source };
        self.file.seek(SeekFrom::Start(start)).map_err(io)?;
        let quant = |source| ModelError::Quant { tensor: name.to_owned(), source };
        let m = match ty {
            TensorType::Ggml(dtype) => QMatrix::read(dtype, 1, len, &mut self.file).map_err(quant)?,
            TensorType::Mxfp4 => {
                let bytes = ty.bytes(len as u64).ok_or_else(|| ModelError::TensorShape {
                    tensor: name.to_owned(),
                    got: vec![len],
                    expected: vec![len.next_multiple_of(mxfp4::BLOCK)],
                })?;
                let mut raw = vec![0u8; bytes as usize];
                self.file.read_exact(&mut raw).map_err(io)?;
                mxfp4_matrix(&raw, 1, len).map_err(quant)?
            }
        };
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

    fn per_layer(&self, key: Key) -> Result<Option<Vec<u64>>, ModelError> {
        let Some(k) = self.key(key) else { return Ok(None) };
        let Some(Value::Array(items)) = self.file.content.metadata.get(&k) else { return Ok(None) };
        items
            .iter()
            .map(|v| match v {
                Value::Bool(b) => Ok(u64::from(*b)),
                Value::U8(x) => Ok(u64::from(*x)),
                Value::U16(x) => Ok(u64::from(*x)),
                Value::U32(x) => Ok(u64::from(*x)),
                Value::U64(x) => Ok(*x),
                Value::I32(x) if *x >= 0 => Ok(*x as u64),
                other => Err(ModelError::Metadata {
                    key: k.clone(),
                    reason: format!("expected non-negative integers or flags, found {:?}", other.value_type()),
                }),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
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

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// Random MXFP4 blocks with scales drawn from `scales`, as raw bytes.
    fn raw_blocks(rng: &mut ChaCha8Rng, n: usize, scales: std::ops::RangeInclusive<u8>) -> Vec<u8> {
        let mut raw = vec![0u8; n * 17];
        rng.fill(&mut raw[..]);
        for b in raw.chunks_exact_mut(17) {
            b[0] = rng.random_range(scales.clone());
        }
        raw
    }

    fn dequantized(raw: &[u8]) -> Vec<f32> {
        let blocks: Vec<mxfp4::BlockMxfp4> =
            raw.chunks_exact(17).map(|b| mxfp4::BlockMxfp4 { e: b[0], qs: b[1..].try_into().unwrap() }).collect();
        let mut out = vec![0f32; blocks.len() * 32];
        mxfp4::dequantize(&blocks, &mut out);
        out
    }

    #[test]
    fn mxfp4_is_re_encoded_exactly() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        // Every scale an f16 holds (subnormal ones included): Q8_0, the same values.
        let raw = raw_blocks(&mut rng, 3 * 4, 104..=143);
        let m = mxfp4_matrix(&raw, 3, 128).unwrap();
        assert_eq!(m.dtype(), GgmlDType::Q8_0);
        assert_eq!(m.to_f32(), dequantized(&raw));
        // One block outside the f16 range: the whole matrix in F32, still exact.
        let mut raw = raw_blocks(&mut rng, 2 * 2, 120..=130);
        raw[17] = 90;
        let m = mxfp4_matrix(&raw, 2, 64).unwrap();
        assert_eq!(m.dtype(), GgmlDType::F32);
        assert_eq!(m.to_f32(), dequantized(&raw));
    }
}
