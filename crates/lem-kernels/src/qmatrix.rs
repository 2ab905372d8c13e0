//! Quantized weight matrices in GGML block layouts, and their products with f32 activations.

use std::io::Read;

use candle_core::quantized::GgmlDType;
pub use candle_core::quantized::k_quants::GgmlType;
use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0, BlockQ8_1,
    BlockQ8K,
};
use half::{bf16, f16};

use crate::dot::{Panel, RowDot};
use crate::threads::{SharedMut, Threads};

/// Errors building or using a [`QMatrix`].
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// The row length is not a multiple of the block size of the type.
    #[error("a row of {cols} elements is not a whole number of {dtype:?} blocks of {block}")]
    RaggedRow {
        /// The tensor type.
        dtype: GgmlDType,
        /// Row length.
        cols: usize,
        /// Block size of the type.
        block: usize,
    },
    /// The byte buffer has the wrong length for the shape.
    #[error("{dtype:?} matrix {rows}x{cols} needs {expected} bytes, got {got}")]
    WrongSize {
        /// The tensor type.
        dtype: GgmlDType,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// Bytes the shape needs.
        expected: usize,
        /// Bytes supplied.
        got: usize,
    },
    /// Reading the tensor bytes failed (for instance, the file ends early).
    #[error("reading tensor data: {0}")]
    Io(#[from] std::io::Error),
    /// The tensor type cannot be used as a weight matrix.
    #[error("tensor type {0:?} is not supported for weights")]
    Unsupported(GgmlDType),
}

/// Typed block storage, one variant per supported GGML type.
#[derive(Clone)]
enum Data {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    Q4_0(Vec<BlockQ4_0>),
    Q4_1(Vec<BlockQ4_1>),
    Q5_0(Vec<BlockQ5_0>),
    Q5_1(Vec<BlockQ5_1>),
    Q8_0(Vec<BlockQ8_0>),
    Q8_1(Vec<BlockQ8_1>),
    Q2K(Vec<BlockQ2K>),
    Q3K(Vec<BlockQ3K>),
    Q4K(Vec<BlockQ4K>),
    Q5K(Vec<BlockQ5K>),
    Q6K(Vec<BlockQ6K>),
    Q8K(Vec<BlockQ8K>),
}

/// Calls `$body` with `$v` bound to the typed block vector, whatever the variant.
macro_rules! with_blocks {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            Data::F32($v) => $body,
            Data::F16($v) => $body,
            Data::BF16($v) => $body,
            Data::Q4_0($v) => $body,
            Data::Q4_1($v) => $body,
            Data::Q5_0($v) => $body,
            Data::Q5_1($v) => $body,
            Data::Q8_0($v) => $body,
            Data::Q8_1($v) => $body,
            Data::Q2K($v) => $body,
            Data::Q3K($v) => $body,
            Data::Q4K($v) => $body,
            Data::Q5K($v) => $body,
            Data::Q6K($v) => $body,
            Data::Q8K($v) => $body,
        }
    };
}

/// Builds a `Data` of the variant matching `$dtype`, calling the generic `$f::<T>($args)`.
macro_rules! for_dtype {
    ($dtype:expr, $f:ident($($arg:expr),*)) => {
        match $dtype {
            GgmlDType::F32 => Data::F32($f::<f32>($($arg),*)?),
            GgmlDType::F16 => Data::F16($f::<f16>($($arg),*)?),
            GgmlDType::BF16 => Data::BF16($f::<bf16>($($arg),*)?),
            GgmlDType::Q4_0 => Data::Q4_0($f::<BlockQ4_0>($($arg),*)?),
            GgmlDType::Q4_1 => Data::Q4_1($f::<BlockQ4_1>($($arg),*)?),
            GgmlDType::Q5_0 => Data::Q5_0($f::<BlockQ5_0>($($arg),*)?),
            GgmlDType::Q5_1 => Data::Q5_1($f::<BlockQ5_1>($($arg),*)?),
            GgmlDType::Q8_0 => Data::Q8_0($f::<BlockQ8_0>($($arg),*)?),
            GgmlDType::Q8_1 => Data::Q8_1($f::<BlockQ8_1>($($arg),*)?),
            GgmlDType::Q2K => Data::Q2K($f::<BlockQ2K>($($arg),*)?),
            GgmlDType::Q3K => Data::Q3K($f::<BlockQ3K>($($arg),*)?),
            GgmlDType::Q4K => Data::Q4K($f::<BlockQ4K>($($arg),*)?),
            GgmlDType::Q5K => Data::Q5K($f::<BlockQ5K>($($arg),*)?),
            GgmlDType::Q6K => Data::Q6K($f::<BlockQ6K>($($arg),*)?),
            GgmlDType::Q8K => Data::Q8K($f::<BlockQ8K>($($arg),*)?),
        }
    };
}

/// A `rows x cols` weight matrix stored row-major in GGML blocks (a GGUF tensor with
/// `ne0 = cols`, `ne1 = rows`). Products compute `y = x W^T` for activation rows `x`.
#[derive(Clone)]
pub struct QMatrix {
    rows: usize,
    cols: usize,
    dtype: GgmlDType,
    data: Data,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QMatrix({:?}, {}x{})", self.dtype, self.rows, self.cols)
    }
}

fn check_shape(dtype: GgmlDType, rows: usize, cols: usize) -> Result<usize, QuantError> {
    let block = dtype.block_size();
    if cols == 0 || !cols.is_multiple_of(block) {
        return Err(QuantError::RaggedRow { dtype, cols, block });
    }
    Ok(rows * cols / block * dtype.type_size())
}

fn zeroed_blocks<T: GgmlType>(n: usize) -> Vec<T> {
    (0..n).map(|_| T::zeros()).collect()
}

/// The bytes of a block vector. Block types are plain old data (`repr(C)`, only integer
/// and float fields), so every byte pattern is a valid value.
fn as_bytes_mut<T: GgmlType>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: T is a POD block type; the slice covers exactly the vector's memory.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

fn read_blocks<T: GgmlType>(n_blocks: usize, reader: &mut dyn Read) -> Result<Vec<T>, QuantError> {
    let mut v = zeroed_blocks::<T>(n_blocks);
    reader.read_exact(as_bytes_mut(&mut v))?;
    Ok(v)
}

fn quantize_blocks<T: GgmlType>(values: &[f32]) -> Result<Vec<T>, QuantError> {
    let mut v = zeroed_blocks::<T>(values.len() / T::BLCK_SIZE);
    T::from_float(values, &mut v);
    Ok(v)
}

impl QMatrix {
    /// Reads `rows x cols` elements of `dtype` in GGML layout from `reader`.
    pub fn read(dtype: GgmlDType, rows: usize, cols: usize, reader: &mut dyn Read) -> Result<QMatrix, QuantError> {
        check_shape(dtype, rows, cols)?;
        let n_blocks = rows * cols / dtype.block_size();
        let data = for_dtype!(dtype, read_blocks(n_blocks, reader));
        Ok(QMatrix { rows, cols, dtype, data })
    }

    /// Wraps raw GGML bytes (exactly the size the shape needs).
    pub fn from_bytes(dtype: GgmlDType, rows: usize, cols: usize, bytes: &[u8]) -> Result<QMatrix, QuantError> {
        let expected = check_shape(dtype, rows, cols)?;
        if bytes.len() != expected {
            return Err(QuantError::WrongSize { dtype, rows, cols, expected, got: bytes.len() });
        }
        QMatrix::read(dtype, rows, cols, &mut &bytes[..])
    }

    /// Quantizes row-major f32 values (`rows * cols` of them) into `dtype`.
    pub fn quantize(dtype: GgmlDType, rows: usize, cols: usize, values: &[f32]) -> Result<QMatrix, QuantError> {
        let expected = check_shape(dtype, rows, cols)?;
        if values.len() != rows * cols {
            return Err(QuantError::WrongSize { dtype, rows, cols, expected, got: values.len() * 4 });
        }
        let data = for_dtype!(dtype, quantize_blocks(values));
        Ok(QMatrix { rows, cols, dtype, data })
    }

    /// Number of rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The GGML type of the blocks.
    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    /// Bytes of weight data.
    pub fn size_in_bytes(&self) -> usize {
        self.rows * self.cols / self.dtype.block_size() * self.dtype.type_size()
    }

    /// Dequantizes row `row` into `out` (`cols` values).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert!(row < self.rows && out.len() == self.cols, "row out of range");
        with_blocks!(&self.data, v => dequantize_row_impl(v, self.cols, row, out))
    }

    /// Dequantizes the whole matrix (row-major), for references and tests.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, chunk) in out.chunks_exact_mut(self.cols).enumerate() {
            self.dequantize_row(r, chunk);
        }
        out
    }

    /// `out[t][r] = dot(W[r], x[t])` for the `n` activation rows in `x` (`n * cols`
    /// values); `out` holds `n * rows` values. Activations are quantized once per row to
    /// the type's dot-product partner (Q8_0, Q8_1, Q8_K or the float type itself), as
    /// llama.cpp does, into `scratch`, and reused for every weight row.
    pub fn matmul(&self, x: &[f32], n: usize, out: &mut [f32], scratch: &mut Scratch, threads: &Threads) {
        QMatrix::matmul_many(&mut [(self, out)], x, n, scratch, threads);
    }

    /// Products of several matrices with the same activations (Q, K and V of one layer;
    /// gate and up of a feed-forward): `out_i = x W_i^T` for every `(W_i, out_i)`. When
    /// the matrices share a GGML type and row length, `x` is quantized once and all their
    /// rows are spread over the threads in one parallel pass (one dispatch per layer
    /// step instead of one per matrix, which is what a single-token decode step pays);
    /// otherwise they are computed one after another. Results equal [`QMatrix::matmul`]'s
    /// bit for bit.
    pub fn matmul_many(
        parts: &mut [(&QMatrix, &mut [f32])],
        x: &[f32],
        n: usize,
        scratch: &mut Scratch,
        threads: &Threads,
    ) {
        let Some((first, _)) = parts.first() else { return };
        let (dtype, cols) = (first.dtype, first.cols);
        assert_eq!(x.len(), n * cols, "activation shape");
        for (m, out) in parts.iter() {
            assert_eq!(out.len(), n * m.rows, "output shape");
        }
        if parts.len() > MAX_PARTS {
            let (a, b) = parts.split_at_mut(MAX_PARTS);
            QMatrix::matmul_many(a, x, n, scratch, threads);
            QMatrix::matmul_many(b, x, n, scratch, threads);
            return;
        }
        if parts.iter().any(|(m, _)| m.dtype != dtype || m.cols != cols) {
            for (m, out) in parts.iter_mut() {
                m.matmul(x, n, out, scratch, threads);
            }
            return;
        }
        with_blocks!(&first.data, v => matmul_impl(v, parts, x, n, scratch, threads))
    }

    /// The blocks of this matrix as `T`, which must be its block type.
    fn blocks_of<T: GgmlType>(&self, _witness: &[T]) -> &[T] {
        let (ptr, len): (*const u8, usize) = with_blocks!(&self.data, v => (v.as_ptr().cast::<u8>(), v.len()));
        assert_eq!(std::mem::size_of::<T>() * len, self.size_in_bytes(), "block type");
        // SAFETY: callers pass a witness slice taken from a matrix of the same GGML type
        // (checked by `matmul_many`), so the storage holds `len` values of `T`.
        unsafe { std::slice::from_raw_parts(ptr.cast::<T>(), len) }
    }
}

fn dequantize_row_impl<T: GgmlType>(blocks: &[T], cols: usize, row: usize, out: &mut [f32]) {
    let bpr = cols / T::BLCK_SIZE;
    T::to_float(&blocks[row * bpr..(row + 1) * bpr], out);
}

fn matmul_impl<T: GgmlType>(
    witness: &[T],
    parts: &mut [(&QMatrix, &mut [f32])],
    x: &[f32],
    n: usize,
    scratch: &mut Scratch,
    threads: &Threads,
) {
    let cols = parts[0].0.cols;
    let bpr = cols / T::BLCK_SIZE;
    let vbpr = cols / T::VecDotType::BLCK_SIZE;
    // Many activation rows: the register-tiled product, which unpacks each weight row
    // once (bit-identical to the row kernel, so the choice never changes a result).
    let panel = if n >= panel_min_rows(T::DTYPE) { Panel::<T>::new(cols) } else { None };
    let per = crate::dot::header_floats::<T::VecDotType>();
    let (xq, xh) = scratch.parts::<T::VecDotType>(n * vbpr, n * vbpr * per);
    {
        let xq_ptr = SharedMut(xq.as_mut_ptr());
        let xh_ptr = SharedMut(xh.as_mut_ptr());
        threads.for_ranges(n, 4, |ts| {
            for t in ts {
                // SAFETY: each t owns the disjoint block range [t*vbpr, (t+1)*vbpr) and
                // header range [t*vbpr*per, (t+1)*vbpr*per).
                let (dst, hdst) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(xq_ptr.ptr().add(t * vbpr), vbpr),
                        std::slice::from_raw_parts_mut(xh_ptr.ptr().add(t * vbpr * per), vbpr * per),
                    )
                };
                let row = &x[t * cols..(t + 1) * cols];
                // quant_act's arithmetic, with SIMD where the CPU has it.
                crate::dot::quantize_row(row, dst);
                crate::dot::act_headers(dst, hdst);
            }
        });
    }
    let xq: &[T::VecDotType] = xq;
    let xh: &[f32] = xh;
    // (weights, rows, output, first global row) of every matrix; global rows number the
    // matrices' rows one after another.
    // (On the stack: the decode step allocates nothing.)
    let mut mats: [(&[T], usize, SharedMut<f32>, usize); MAX_PARTS] =
        std::array::from_fn(|_| (&[][..], 0, SharedMut(std::ptr::null_mut()), 0));
    let mut start = 0;
    for (slot, (m, out)) in mats.iter_mut().zip(parts.iter_mut()) {
        *slot = (m.blocks_of(witness), m.rows, SharedMut(out.as_mut_ptr()), start);
        start += m.rows;
    }
    let mats = &mats[..parts.len()];
    let total = start;
    let dot = RowDot::<T>::new(cols);
    let row_tile = (ROW_TILE_BYTES / (bpr * std::mem::size_of::<T>())).clamp(1, 16);
    let min_chunk = if panel.is_some() { 16 } else { 8 };
    threads.for_ranges(total, min_chunk, |rs| {
        for &(w, rows, out_ptr, first) in mats {
            // This worker's share of this matrix, in its own row numbers.
            let (lo, hi) = (rs.start.max(first), rs.end.min(first + rows));
            if lo >= hi {
                continue;
            }
            let (lo, hi) = (lo - first, hi - first);
            if let Some(panel) = &panel {
                panel.run(&w[lo * bpr..hi * bpr], hi - lo, xq, n, xh, |r, t, v| {
                    // SAFETY: (matrix, t, r) triples are disjoint across workers (global
                    // rows are partitioned); r + lo < rows and t < n.
                    unsafe { *out_ptr.ptr().add(t * rows + lo + r) = v };
                });
                continue;
            }
            if n == 1 {
                // A decode step: the whole share in one kernel call.
                // SAFETY: rows lo..hi of this matrix's output belong to this worker alone
                // (global rows are partitioned); with one activation row, output row r is
                // element r.
                let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.ptr().add(lo), hi - lo) };
                dot.run_rows(&w[lo * bpr..hi * bpr], xq, xh, o);
                continue;
            }
            // Tiles of weight rows meet groups of up to `SHARE_ROWS` activation rows (hot
            // in L1) in one kernel call, which reads each weight row once for the group;
            // a few rows (a batched decode step, a draft's verification) are one group,
            // so each weight is read once per product, as in the one-row case.
            let mut r0 = lo;
            while r0 < hi {
                let r1 = (r0 + row_tile).min(hi);
                let mut t = 0;
                while t < n {
                    let k = (n - t).min(SHARE_ROWS);
                    // SAFETY: (matrix, t, r) triples are disjoint across workers (global
                    // rows are partitioned); the kernel writes rows r0..r1 of output rows
                    // t..t + k, all inside this matrix's `n * rows` outputs.
                    unsafe {
                        dot.run_share(
                            &w[r0 * bpr..r1 * bpr],
                            r1 - r0,
                            &xq[t * vbpr..(t + k) * vbpr],
                            k,
                            &xh[t * vbpr * per..(t + k) * vbpr * per],
                            out_ptr.ptr().add(t * rows + r0),
                            rows,
                        );
                    }
                    t += k;
                }
                r0 = r1;
            }
        }
    });
}

/// Activation rows one small-product kernel call takes (more are split into groups).
const SHARE_ROWS: usize = 16;

/// Activation rows from which products of weights of `dtype` use the register-tiled
/// kernel. Below it the row kernels, one call per worker share and group of activation
/// rows, are faster: for the 32-element types up to about 64 rows (measured with
/// `benches/matmul.rs`, see docs/performance-batched.md), for the K-quants up to 8.
fn panel_min_rows(dtype: GgmlDType) -> usize {
    match dtype {
        GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q8_0 => 64,
        _ => 8,
    }
}

/// Matrices one [`QMatrix::matmul_many`] pass handles (more are split into passes).
const MAX_PARTS: usize = 4;

/// Bytes of weight rows per row tile of [`matmul_impl`] (about half an L1 data cache).
const ROW_TILE_BYTES: usize = 16 * 1024;

/// Reusable buffer for quantized activations, so that the steady-state decode step does
/// not allocate.
#[derive(Default)]
pub struct Scratch {
    buf: Vec<u64>,
    scales: Vec<f32>,
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scratch({} bytes)", self.buf.len() * 8)
    }
}

impl Scratch {
    /// Views of `n` blocks of `T` and of `floats` floats, growing the buffers when needed
    /// (contents unspecified).
    fn parts<T: GgmlType>(&mut self, n: usize, floats: usize) -> (&mut [T], &mut [f32]) {
        if self.scales.len() < floats {
            self.scales.resize(floats, 0.0);
        }
        let Scratch { buf, scales } = self;
        (Scratch::blocks_in(buf, n), &mut scales[..floats])
    }

    /// A view of `n` blocks of `T` in `buf`, growing it when needed.
    fn blocks_in<T: GgmlType>(buf: &mut Vec<u64>, n: usize) -> &mut [T] {
        assert!(std::mem::align_of::<T>() <= 8);
        let bytes = n * std::mem::size_of::<T>();
        let words = bytes.div_ceil(8);
        if buf.len() < words {
            buf.resize(words, 0);
        }
        // SAFETY: the buffer is initialised, aligned to 8 and large enough; T is POD.
        unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<T>(), n) }
    }
}
