//! The storage of one side (keys or values) of a layer: cell-major rows of
//! `n_kv * head_dim` values in the side's [`KvDtype`]: f32, f16, or GGML blocks (each
//! head's `head_dim` values quantised into `head_dim / 32` whole blocks, so a head's bytes
//! are contiguous and can be exported and imported as they are).

use half::f16;
use lem_kernels::kvq::{KvQuant, hadamard};
use lem_kernels::ops::KvRows;

use crate::KvDtype;

/// An element type float cells can be stored in: only `f32` and `f16`, plain data without
/// padding for which every bit pattern is a valid value (the byte views below rely on it).
pub(crate) trait Elem: Copy + Default {
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    /// Appends the little-endian bytes (big-endian targets; little-endian ones copy views).
    #[cfg_attr(target_endian = "little", allow(dead_code))]
    fn put_le(self, out: &mut Vec<u8>);
    /// Reads one element from little-endian bytes.
    #[cfg_attr(target_endian = "little", allow(dead_code))]
    fn get_le(b: &[u8]) -> Self;
}

impl Elem for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn put_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get_le(b: &[u8]) -> Self {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

impl Elem for f16 {
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn put_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bits().to_le_bytes());
    }
    fn get_le(b: &[u8]) -> Self {
        f16::from_bits(u16::from_le_bytes([b[0], b[1]]))
    }
}

/// `s` as its little-endian bytes, without copying.
#[cfg(target_endian = "little")]
fn le_bytes<E: Elem>(s: &[E]) -> &[u8] {
    // SAFETY: `E` is f32 or f16 (see `Elem`): no padding, so every byte is initialized;
    // u8 has alignment 1; the length covers exactly the slice's memory.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

/// `s` as its little-endian bytes, writable, without copying.
#[cfg(target_endian = "little")]
fn le_bytes_mut<E: Elem>(s: &mut [E]) -> &mut [u8] {
    // SAFETY: as `le_bytes`, and every bit pattern is a valid f32 or f16, so any bytes
    // written leave valid values.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

/// Float rows.
fn read_floats<E: Elem>(src: &[E], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

fn write_floats<E: Elem>(src: &[f32], dst: &mut [E]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = E::from_f32(s);
    }
}

fn raw_out<E: Elem>(src: &[E], out: &mut Vec<u8>) {
    #[cfg(target_endian = "little")]
    out.extend_from_slice(le_bytes(src));
    #[cfg(not(target_endian = "little"))]
    src.iter().for_each(|x| x.put_le(out));
}

fn raw_in<E: Elem>(src: &[u8], dst: &mut [E]) {
    #[cfg(target_endian = "little")]
    le_bytes_mut(dst).copy_from_slice(src);
    #[cfg(not(target_endian = "little"))]
    for (d, b) in dst.iter_mut().zip(src.chunks_exact(std::mem::size_of::<E>())) {
        *d = E::get_le(b);
    }
}

/// Quantises `src` (whole heads) into `dst`, rotating each `rot`-value chunk first.
pub(crate) fn encode(kind: KvQuant, rot: Option<usize>, src: &[f32], dst: &mut [u8]) {
    match rot {
        None => kind.quantize(src, dst),
        Some(n) => {
            let mut x = src.to_vec();
            hadamard(&mut x, n);
            kind.quantize(&x, dst);
        }
    }
}

/// Dequantises `src` into `dst` (whole heads), rotating each chunk back.
pub(crate) fn decode(kind: KvQuant, rot: Option<usize>, src: &[u8], dst: &mut [f32]) {
    kind.dequantize(src, dst);
    if let Some(n) = rot {
        hadamard(dst, n);
    }
}

/// One side's cells.
#[derive(Debug, Clone)]
pub(crate) enum Store {
    F32(Vec<f32>),
    F16(Vec<f16>),
    /// Bytes of GGML blocks, `[cell][n_kv][head_dim / 32]` blocks, of heads rotated in
    /// chunks of the given size before quantising (see [`crate::KvDtype::rotation`]).
    Blocks(KvQuant, Option<usize>, Vec<u8>),
}

impl Store {
    /// Storage of `dtype` for one side (`keys` or values) of heads of `head_dim` values.
    pub(crate) fn new(dtype: KvDtype, keys: bool, head_dim: usize) -> Store {
        match dtype {
            KvDtype::F32 => Store::F32(Vec::new()),
            KvDtype::F16 => Store::F16(Vec::new()),
            q => Store::Blocks(q.quant().expect("block type"), q.rotation(keys, head_dim), Vec::new()),
        }
    }

    /// Storage units (elements or bytes) of `values` values.
    fn units(&self, values: usize) -> usize {
        match self {
            Store::F32(_) | Store::F16(_) => values,
            Store::Blocks(q, _, _) => q.row_bytes(values),
        }
    }

    /// Bytes of `values` values.
    pub(crate) fn bytes_of(&self, values: usize) -> usize {
        match self {
            Store::F32(_) => values * 4,
            Store::F16(_) => values * 2,
            Store::Blocks(q, _, _) => q.row_bytes(values),
        }
    }

    pub(crate) fn reserve(&mut self, values: usize) {
        let n = self.units(values);
        match self {
            Store::F32(v) => v.reserve(n),
            Store::F16(v) => v.reserve(n),
            Store::Blocks(_, _, v) => v.reserve(n),
        }
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        match self {
            Store::F32(v) => v.shrink_to_fit(),
            Store::F16(v) => v.shrink_to_fit(),
            Store::Blocks(_, _, v) => v.shrink_to_fit(),
        }
    }

    /// Bytes allocated.
    pub(crate) fn capacity_bytes(&self) -> usize {
        match self {
            Store::F32(v) => v.capacity() * 4,
            Store::F16(v) => v.capacity() * 2,
            Store::Blocks(_, _, v) => v.capacity(),
        }
    }

    /// Appends one cell (`src`: one row).
    pub(crate) fn push(&mut self, src: &[f32]) {
        match self {
            Store::F32(v) => v.extend_from_slice(src),
            Store::F16(v) => v.extend(src.iter().map(|&x| f16::from_f32(x))),
            Store::Blocks(q, rot, v) => {
                let at = v.len();
                v.resize(at + q.row_bytes(src.len()), 0);
                encode(*q, *rot, src, &mut v[at..]);
            }
        }
    }

    /// Grows or shrinks to `cells` cells of `row` values (new cells are zero).
    pub(crate) fn resize(&mut self, cells: usize, row: usize) {
        let n = cells * self.units(row);
        match self {
            Store::F32(v) => v.resize(n, 0.0),
            Store::F16(v) => v.resize(n, f16::ZERO),
            Store::Blocks(_, _, v) => v.resize(n, 0),
        }
    }

    /// Overwrites cell `c` (rows of `src.len()` values).
    pub(crate) fn set(&mut self, c: usize, src: &[f32]) {
        let n = self.units(src.len());
        match self {
            Store::F32(v) => v[c * n..(c + 1) * n].copy_from_slice(src),
            Store::F16(v) => write_floats(src, &mut v[c * n..(c + 1) * n]),
            Store::Blocks(q, rot, v) => encode(*q, *rot, src, &mut v[c * n..(c + 1) * n]),
        }
    }

    /// Head `h` of cell `c` (rows of `row` values, heads of `dst.len()`) as f32.
    pub(crate) fn read_head(&self, c: usize, h: usize, row: usize, dst: &mut [f32]) {
        let (r, hd) = (self.units(row), self.units(dst.len()));
        let at = c * r + h * hd;
        match self {
            Store::F32(v) => dst.copy_from_slice(&v[at..at + hd]),
            Store::F16(v) => read_floats(&v[at..at + hd], dst),
            Store::Blocks(q, rot, v) => decode(*q, *rot, &v[at..at + hd], dst),
        }
    }

    /// Appends head `h` of cell `c` exactly as stored, as little-endian bytes.
    pub(crate) fn read_head_raw(&self, c: usize, h: usize, row: usize, hd: usize, out: &mut Vec<u8>) {
        let (r, n) = (self.units(row), self.units(hd));
        let at = c * r + h * n;
        match self {
            Store::F32(v) => raw_out(&v[at..at + n], out),
            Store::F16(v) => raw_out(&v[at..at + n], out),
            Store::Blocks(_, _, v) => out.extend_from_slice(&v[at..at + n]),
        }
    }

    /// Overwrites head `h` of cell `c` from little-endian bytes
    /// ([`Store::bytes_of`]`(hd)` of them).
    pub(crate) fn write_head_raw(&mut self, c: usize, h: usize, row: usize, hd: usize, src: &[u8]) {
        let (r, n) = (self.units(row), self.units(hd));
        let at = c * r + h * n;
        match self {
            Store::F32(v) => raw_in(src, &mut v[at..at + n]),
            Store::F16(v) => raw_in(src, &mut v[at..at + n]),
            Store::Blocks(_, _, v) => v[at..at + n].copy_from_slice(src),
        }
    }

    /// The rows, for attention.
    pub(crate) fn rows(&self) -> KvRows<'_> {
        match self {
            Store::F32(v) => KvRows::F32(v),
            Store::F16(v) => KvRows::F16(v),
            Store::Blocks(kind, rotation, data) => KvRows::Blocks { kind: *kind, data, rotation: *rotation },
        }
    }
}
