//! f32 vector primitives for attention and softmax, with runtime dispatch.
//!
//! Each function has a portable version (plain Rust, written so the compiler can
//! vectorise it for the baseline target) and an AVX2/FMA/F16C version compiled with
//! `#[target_feature]`, chosen at run time from the same [`Isa`] level as the quantized
//! dot products. The tests check the SIMD versions against the portable ones.

use half::f16;

use crate::dot::Isa;

/// Whether the AVX2/FMA/F16C versions are used.
#[inline]
fn use_avx2() -> bool {
    Isa::current() >= Isa::Avx2
}

/// `sum(a[i] * b[i])`.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked by `Isa`).
        return unsafe { x86::dot(a, b) };
    }
    portable::dot(a, b)
}

/// `y[i] += a * x[i]`.
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    assert_eq!(y.len(), x.len(), "axpy: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: as in `dot`.
        return unsafe { x86::axpy(y, a, x) };
    }
    portable::axpy(y, a, x)
}

/// Widens f16 values to f32 (exact).
#[inline]
pub fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "f16_to_f32: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: as in `dot`.
        return unsafe { x86::f16_to_f32(src, dst) };
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// Replaces every `x` by `exp(x - max)` and returns their sum; `-inf` entries become 0.
/// `exp` is a polynomial approximation within a few ulp of `f32::exp` (as GGML's own
/// vectorised `expf`), the same in both versions up to FMA rounding.
#[inline]
pub fn exp_sub_sum(x: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: as in `dot`.
        return unsafe { x86::exp_sub_sum(x, max) };
    }
    portable::exp_sub_sum(x, max)
}

/// Multiplies every element by `s`.
#[inline]
pub fn scale(x: &mut [f32], s: f32) {
    x.iter_mut().for_each(|v| *v *= s);
}

/// The largest element (`-inf` for an empty slice).
#[inline]
pub fn max(x: &[f32]) -> f32 {
    x.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Rounds every value to the nearest f16 and back (round-to-nearest-even, as GGML does).
#[inline]
pub fn round_f16(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: as in `dot`.
        return unsafe { x86::round_f16(x) };
    }
    x.iter_mut().for_each(|v| *v = f16::from_f32(*v).to_f32());
}

/// Element types of cached rows the row kernels read (f32 and f16).
pub trait Element: Copy + Send + Sync + 'static + sealed::Sealed {
    /// Widens to f32 (exact).
    fn to_f32(self) -> f32;
    /// Loads eight elements as f32.
    #[cfg(target_arch = "x86_64")]
    #[doc(hidden)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
}

impl Element for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller guarantees 8 readable elements and AVX.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
}

impl Element for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees 8 readable elements and F16C.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>())) }
    }
}

/// Rows of a cache in its storage type: row `c` is `data[c * stride + offset..][..len]`.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a, E> {
    /// The storage.
    pub data: &'a [E],
    /// Elements from one row to the next.
    pub stride: usize,
    /// Start of row 0.
    pub offset: usize,
    /// Elements per row.
    pub len: usize,
}

impl<E> Rows<'_, E> {
    fn check(&self, cells: &std::ops::Range<usize>) {
        assert!(cells.start <= cells.end, "empty or reversed cell range");
        if cells.end > cells.start {
            assert!((cells.end - 1) * self.stride + self.offset + self.len <= self.data.len(), "rows out of range");
        }
    }
}

/// Scores of query rows against cached rows: for the `q.len() / k.len` query rows `r`
/// and cells `c` in `cells`, `out[r * ld + c - cells.start] = scale * (q_r . k_c)`
/// (`ld >= cells.len()`; the rest of each row is left as it is; `out` may end right after
/// the last row's scores, so a caller can pass a sub-slice that starts at a column).
pub fn qk<E: Element>(
    q: &[f32],
    k: Rows<'_, E>,
    cells: std::ops::Range<usize>,
    scale: f32,
    out: &mut [f32],
    ld: usize,
) {
    k.check(&cells);
    assert!(k.len > 0 && q.len().is_multiple_of(k.len), "query rows");
    let n = q.len() / k.len;
    assert!(ld >= cells.len() && (n == 0 || out.len() >= (n - 1) * ld + cells.len()), "score shape");
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: as in `dot`; shapes checked above.
        return unsafe { x86::qk(q, k, cells, scale, out, ld) };
    }
    portable::qk(q, k, cells, scale, out, ld)
}

/// Weighted sums of cached rows: for the `out.len() / v.len` output rows `r`,
/// `out_r += sum over c in cells, in order, of w[r * ld + c - cells.start] * v_c` (zero
/// weights are skipped; `w` may end right after the last row's weights).
pub fn pv<E: Element>(w: &[f32], ld: usize, v: Rows<'_, E>, cells: std::ops::Range<usize>, out: &mut [f32]) {
    v.check(&cells);
    assert!(v.len > 0 && out.len().is_multiple_of(v.len), "output rows");
    let n = out.len() / v.len;
    assert!(ld >= cells.len() && (n == 0 || w.len() >= (n - 1) * ld + cells.len()), "weight shape");
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: as in `dot`; shapes checked above.
        return unsafe { x86::pv(w, ld, v, cells, out) };
    }
    portable::pv(w, ld, v, cells, out)
}

/// Constants of the exponential: `exp(x) = 2^n * exp(r)`, `r = x - n ln 2` in two parts,
/// `exp(r)` by a degree-6 polynomial (Cephes `expf` coefficients) on `|r| <= ln2 / 2`.
mod expc {
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    pub const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5e-1];
    /// Below this, `exp` underflows to 0 (and `-inf` lands here too).
    pub const LO: f32 = -87.336_55;
    /// Inputs are `x - max <= 0`, so the upper clamp only guards against NaN-free garbage.
    pub const HI: f32 = 88.376_26;
}

pub(crate) mod portable {
    use std::ops::Range;

    use super::expc::*;
    use super::{Element, Rows};

    /// Portable `dot`: eight independent accumulators, summed in order.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for i in 0..8 {
                acc[i] += x[i] * y[i];
            }
        }
        let mut s: f32 = acc.iter().sum();
        for (x, y) in ra.iter().zip(rb) {
            s += x * y;
        }
        s
    }

    /// Portable `axpy`.
    pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        for (d, &s) in y.iter_mut().zip(x) {
            *d += a * s;
        }
    }

    /// Portable `qk`.
    pub fn qk<E: Element>(q: &[f32], k: Rows<'_, E>, cells: Range<usize>, scale: f32, out: &mut [f32], ld: usize) {
        let mut row = vec![0f32; k.len];
        for c in cells.clone() {
            for (d, s) in row.iter_mut().zip(&k.data[c * k.stride + k.offset..][..k.len]) {
                *d = s.to_f32();
            }
            for (r, qr) in q.chunks_exact(k.len).enumerate() {
                out[r * ld + c - cells.start] = dot(qr, &row) * scale;
            }
        }
    }

    /// Portable `pv`.
    pub fn pv<E: Element>(w: &[f32], ld: usize, v: Rows<'_, E>, cells: Range<usize>, out: &mut [f32]) {
        let mut row = vec![0f32; v.len];
        for c in cells.clone() {
            for (d, s) in row.iter_mut().zip(&v.data[c * v.stride + v.offset..][..v.len]) {
                *d = s.to_f32();
            }
            for (r, o) in out.chunks_exact_mut(v.len).enumerate() {
                let p = w[r * ld + c - cells.start];
                if p != 0.0 {
                    axpy(o, p, &row);
                }
            }
        }
    }

    /// The polynomial exponential of one value (the scalar twin of the SIMD version).
    pub fn exp(x: f32) -> f32 {
        let x = x.clamp(LO, HI);
        let n = (x * LOG2E).round();
        let r = x - n * LN2_HI - n * LN2_LO;
        let mut p = P[0];
        for &c in &P[1..] {
            p = p * r + c;
        }
        let e = p * r * r + r + 1.0;
        // 2^n by building the exponent bits; n is in -126..=127 after the clamp.
        let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
        if x <= LO { 0.0 } else { e * scale }
    }

    /// Portable `exp_sub_sum`.
    pub fn exp_sub_sum(x: &mut [f32], max: f32) -> f32 {
        let mut sum = 0f32;
        for v in x.iter_mut() {
            *v = exp(*v - max);
            sum += *v;
        }
        sum
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use half::f16;

    use super::expc::*;
    use super::{Element, Rows};

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: every pointer access stays within the slices (see the loop bounds).
        unsafe {
            let n = a.len();
            let (pa, pb) = (a.as_ptr(), b.as_ptr());
            let mut acc0 = _mm256_setzero_ps();
            let mut acc1 = _mm256_setzero_ps();
            let mut i = 0;
            while i + 16 <= n {
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), _mm256_loadu_ps(pb.add(i + 8)), acc1);
                i += 16;
            }
            if i + 8 <= n {
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
                i += 8;
            }
            let mut s = hsum(_mm256_add_ps(acc0, acc1));
            while i < n {
                s += *pa.add(i) * *pb.add(i);
                i += 1;
            }
            s
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        // SAFETY: every pointer access stays within the slices (see the loop bounds).
        unsafe {
            let n = y.len();
            let (py, px) = (y.as_mut_ptr(), x.as_ptr());
            let va = _mm256_set1_ps(a);
            let mut i = 0;
            while i + 8 <= n {
                let v = _mm256_fmadd_ps(va, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
                _mm256_storeu_ps(py.add(i), v);
                i += 8;
            }
            while i < n {
                *py.add(i) += a * *px.add(i);
                i += 1;
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
        // SAFETY: every pointer access stays within the slices (see the loop bounds).
        unsafe {
            let n = src.len();
            let (ps, pd) = (src.as_ptr().cast::<u16>(), dst.as_mut_ptr());
            let mut i = 0;
            while i + 8 <= n {
                let h = _mm_loadu_si128(ps.add(i).cast::<__m128i>());
                _mm256_storeu_ps(pd.add(i), _mm256_cvtph_ps(h));
                i += 8;
            }
            while i < n {
                *pd.add(i) = src[i].to_f32();
                i += 1;
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn round_f16(x: &mut [f32]) {
        let n = x.len();
        let p = x.as_mut_ptr();
        let mut i = 0;
        // SAFETY: i + 8 <= n.
        unsafe {
            while i + 8 <= n {
                let h = _mm256_cvtps_ph(_mm256_loadu_ps(p.add(i)), _MM_FROUND_TO_NEAREST_INT);
                _mm256_storeu_ps(p.add(i), _mm256_cvtph_ps(h));
                i += 8;
            }
        }
        for v in &mut x[i..] {
            *v = f16::from_f32(*v).to_f32();
        }
    }

    /// `q . k` over `len` elements, `k` read through `E::load8`.
    #[inline(always)]
    unsafe fn dot_row<E: Element>(q: *const f32, k: *const E, len: usize) -> f32 {
        // SAFETY: the caller guarantees `len` readable elements behind both pointers.
        unsafe {
            let mut a0 = _mm256_setzero_ps();
            let mut a1 = _mm256_setzero_ps();
            let mut j = 0;
            while j + 16 <= len {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(j)), E::load8(k.add(j)), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(j + 8)), E::load8(k.add(j + 8)), a1);
                j += 16;
            }
            if j + 8 <= len {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(j)), E::load8(k.add(j)), a0);
                j += 8;
            }
            let mut s = hsum(_mm256_add_ps(a0, a1));
            while j < len {
                s += *q.add(j) * (*k.add(j)).to_f32();
                j += 1;
            }
            s
        }
    }

    /// Rows up to this long are widened once per cell into a stack buffer when several
    /// query rows share them; longer ones are widened per use.
    const WIDEN_MAX: usize = 512;

    /// A pointer to row `c` as f32: the row itself, or widened into `buf` (when it fits
    /// and `rows > 1` makes widening once pay); `None` means read it through `load8`.
    #[inline(always)]
    unsafe fn widened<E: Element>(
        rows: &Rows<'_, E>,
        c: usize,
        n: usize,
        buf: &mut [f32; WIDEN_MAX],
    ) -> Option<*const f32> {
        // SAFETY: the caller checked that row `c` is within `rows.data`.
        unsafe {
            let src = rows.data.as_ptr().add(c * rows.stride + rows.offset);
            if std::mem::size_of::<E>() == 4 {
                return Some(src.cast::<f32>());
            }
            if n < 2 || rows.len > WIDEN_MAX {
                return None;
            }
            widen_row(src, buf.as_mut_ptr(), rows.len);
            Some(buf.as_ptr())
        }
    }

    /// Writes the `len` elements at `src` as f32 to `dst`.
    #[inline(always)]
    unsafe fn widen_row<E: Element>(src: *const E, dst: *mut f32, len: usize) {
        // SAFETY: the caller guarantees `len` elements behind both pointers.
        unsafe {
            let mut j = 0;
            while j + 8 <= len {
                _mm256_storeu_ps(dst.add(j), E::load8(src.add(j)));
                j += 8;
            }
            while j < len {
                *dst.add(j) = (*src.add(j)).to_f32();
                j += 1;
            }
        }
    }

    /// Cells ahead whose rows are prefetched: rows of one KV head are `stride` apart
    /// (the other heads' rows sit between them), a pattern the hardware prefetchers do not
    /// follow across pages, and a decode step's attention is otherwise bound by memory
    /// latency (measured: ~40% of a SmolLM2 decode step at 512 tokens of context).
    const PREFETCH_AHEAD: usize = 8;

    /// Prefetches row `c + PREFETCH_AHEAD` of `rows` if it exists.
    #[inline(always)]
    fn prefetch<E: Element>(rows: &Rows<'_, E>, c: usize, end: usize) {
        let ahead = c + PREFETCH_AHEAD;
        if ahead >= end {
            return;
        }
        let start = ahead * rows.stride + rows.offset;
        let bytes = rows.len * std::mem::size_of::<E>();
        // SAFETY: `ahead < end`, and the caller checked that rows below `end` are in
        // bounds; prefetching never faults anyway.
        let p = unsafe { rows.data.as_ptr().add(start).cast::<i8>() };
        let mut off = 0;
        while off < bytes {
            // SAFETY: within the row (see above).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(off)) };
            off += 64;
        }
    }

    /// Cells handled together by `qk` and `pv`.
    const GROUP: usize = 8;

    /// Rows up to this long are widened to f32 once per group when several query rows
    /// share them (8 rows of it live on the stack).
    const GROUP_LEN_MAX: usize = 256;

    /// Row pointers of cells `g0..g0 + m` (padded with the last one), widened into
    /// `buf` when `widen`; f32 storage is read in place.
    #[inline(always)]
    unsafe fn group_rows<E: Element>(
        rows: &Rows<'_, E>,
        g0: usize,
        m: usize,
        widen: bool,
        buf: &mut [f32; GROUP * GROUP_LEN_MAX],
    ) -> ([*const E; GROUP], Option<[*const f32; GROUP]>) {
        // SAFETY: cells `g0..g0 + m` are within `rows` (checked by the callers).
        unsafe {
            let raw: [*const E; GROUP] =
                std::array::from_fn(|i| rows.data.as_ptr().add((g0 + i.min(m - 1)) * rows.stride + rows.offset));
            if std::mem::size_of::<E>() == 4 {
                return (raw, Some(raw.map(|p| p.cast::<f32>())));
            }
            if !widen {
                return (raw, None);
            }
            let len = rows.len;
            for (i, &src) in raw.iter().enumerate().take(m) {
                widen_row(src, buf.as_mut_ptr().add(i * len), len);
            }
            (raw, Some(std::array::from_fn(|i| buf.as_ptr().add(i.min(m - 1) * len))))
        }
    }

    /// `a0 + a1` of [`dot_row`] for the query row at `q` against each of the 8 rows
    /// `rows` (`len`, a multiple of 8, elements each), computed 4 rows at a time: the
    /// same operations in the same order as [`dot_row`] up to its horizontal sum.
    #[inline(always)]
    unsafe fn sums8<T: Element>(q: *const f32, rows: &[*const T; GROUP], len: usize) -> [__m256; GROUP] {
        // SAFETY: the caller guarantees `len` readable elements behind every pointer.
        unsafe {
            let mut v = [_mm256_setzero_ps(); GROUP];
            for half in 0..2 {
                let rs = &rows[4 * half..4 * half + 4];
                let mut a0 = [_mm256_setzero_ps(); 4];
                let mut a1 = [_mm256_setzero_ps(); 4];
                let mut j = 0;
                while j + 16 <= len {
                    let (q0, q1) = (_mm256_loadu_ps(q.add(j)), _mm256_loadu_ps(q.add(j + 8)));
                    for i in 0..4 {
                        a0[i] = _mm256_fmadd_ps(q0, T::load8(rs[i].add(j)), a0[i]);
                        a1[i] = _mm256_fmadd_ps(q1, T::load8(rs[i].add(j + 8)), a1[i]);
                    }
                    j += 16;
                }
                if j + 8 <= len {
                    let q0 = _mm256_loadu_ps(q.add(j));
                    for i in 0..4 {
                        a0[i] = _mm256_fmadd_ps(q0, T::load8(rs[i].add(j)), a0[i]);
                    }
                }
                for i in 0..4 {
                    v[4 * half + i] = _mm256_add_ps(a0[i], a1[i]);
                }
            }
            v
        }
    }

    /// The horizontal sums of eight vectors, each summed in [`hsum`]'s order
    /// (`((x0 + x4) + (x2 + x6)) + ((x1 + x5) + (x3 + x7))`), as one vector.
    #[inline(always)]
    unsafe fn hsum8x8(v: [__m256; GROUP]) -> __m256 {
        // SAFETY: the caller runs with AVX2 (register operations only).
        unsafe {
            // Lanes i and i + 4 of two vectors at once: [a_lo + a_hi | b_lo + b_hi].
            let pair = |a: __m256, b: __m256| {
                _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(a, b), _mm256_permute2f128_ps::<0x31>(a, b))
            };
            let (t01, t23, t45, t67) = (pair(v[0], v[1]), pair(v[2], v[3]), pair(v[4], v[5]), pair(v[6], v[7]));
            // (s0 + s2, s1 + s3) of each: [c0 c0 c2 c2 | c1 c1 c3 c3] and [c4 c4 c6 c6 | c5 c5 c7 c7].
            let x0 = _mm256_add_ps(_mm256_shuffle_ps::<0x44>(t01, t23), _mm256_shuffle_ps::<0xEE>(t01, t23));
            let x1 = _mm256_add_ps(_mm256_shuffle_ps::<0x44>(t45, t67), _mm256_shuffle_ps::<0xEE>(t45, t67));
            // (s0 + s2) + (s1 + s3): [c0 c2 c4 c6 | c1 c3 c5 c7].
            let f = _mm256_add_ps(_mm256_shuffle_ps::<0x88>(x0, x1), _mm256_shuffle_ps::<0xDD>(x0, x1));
            _mm256_permutevar8x32_ps(f, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
        }
    }

    /// Scores, 8 cells at a time for rows of up to [`GROUP_LEN_MAX`] elements that are a
    /// whole number of vectors, else one cell at a time; every score is computed as
    /// [`dot_row`] computes it (same products, same sums in the same order), whichever
    /// way, so results do not depend on how cells fall into groups. (A version that also
    /// reordered the sums measured faster still but moved a Gemma 3 greedy token with a
    /// 0.63 logit margin away from llama.cpp's.)
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn qk<E: Element>(
        q: &[f32],
        k: Rows<'_, E>,
        cells: Range<usize>,
        scale: f32,
        out: &mut [f32],
        ld: usize,
    ) {
        let len = k.len;
        let n = q.len() / len;
        let mut buf = [0f32; WIDEN_MAX];
        let mut gbuf = [0f32; GROUP * GROUP_LEN_MAX];
        let grouped = len.is_multiple_of(8) && len <= GROUP_LEN_MAX;
        let mut c = cells.start;
        // SAFETY: shapes were checked by the caller (`super::qk`).
        unsafe {
            while grouped && c + GROUP <= cells.end {
                for i in 0..GROUP {
                    prefetch(&k, c + i, cells.end);
                }
                let (raw, wide) = group_rows(&k, c, GROUP, n >= 2, &mut gbuf);
                for r in 0..n {
                    let qp = q.as_ptr().add(r * len);
                    let v = match wide {
                        Some(f) => sums8::<f32>(qp, &f, len),
                        None => sums8::<E>(qp, &raw, len),
                    };
                    let s = _mm256_mul_ps(hsum8x8(v), _mm256_set1_ps(scale));
                    _mm256_storeu_ps(out.as_mut_ptr().add(r * ld + c - cells.start), s);
                }
                c += GROUP;
            }
            for c in c..cells.end {
                prefetch(&k, c, cells.end);
                let row = widened(&k, c, n, &mut buf);
                let raw = k.data.as_ptr().add(c * k.stride + k.offset);
                for r in 0..n {
                    let qp = q.as_ptr().add(r * len);
                    let s = match row {
                        Some(f) => dot_row::<f32>(qp, f, len),
                        None => dot_row::<E>(qp, raw, len),
                    };
                    *out.get_unchecked_mut(r * ld + c - cells.start) = s * scale;
                }
            }
        }
    }

    /// `o[..len] += sum over the group's cells i, in order, of w[i] * row_i` (zero
    /// weights skipped), in registers 32 values at a time.
    #[inline(always)]
    unsafe fn axpy_group<T: Element>(o: *mut f32, w: &[f32], rows: &[*const T; GROUP], len: usize) {
        // SAFETY: the caller guarantees `len` elements behind `o` and every row used.
        unsafe {
            let mut j = 0;
            while j + 32 <= len {
                let mut acc = [
                    _mm256_loadu_ps(o.add(j)),
                    _mm256_loadu_ps(o.add(j + 8)),
                    _mm256_loadu_ps(o.add(j + 16)),
                    _mm256_loadu_ps(o.add(j + 24)),
                ];
                for (i, &p) in w.iter().enumerate() {
                    if p == 0.0 {
                        continue;
                    }
                    let pv = _mm256_set1_ps(p);
                    for (t, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(pv, T::load8(rows[i].add(j + 8 * t)), *a);
                    }
                }
                for (t, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(o.add(j + 8 * t), *a);
                }
                j += 32;
            }
            while j + 8 <= len {
                let mut a = _mm256_loadu_ps(o.add(j));
                for (i, &p) in w.iter().enumerate() {
                    if p != 0.0 {
                        a = _mm256_fmadd_ps(_mm256_set1_ps(p), T::load8(rows[i].add(j)), a);
                    }
                }
                _mm256_storeu_ps(o.add(j), a);
                j += 8;
            }
            while j < len {
                for (i, &p) in w.iter().enumerate() {
                    if p != 0.0 {
                        *o.add(j) += p * (*rows[i].add(j)).to_f32();
                    }
                }
                j += 1;
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn pv<E: Element>(w: &[f32], ld: usize, v: Rows<'_, E>, cells: Range<usize>, out: &mut [f32]) {
        let len = v.len;
        let n = out.len() / len;
        let widen = n >= 2 && len <= GROUP_LEN_MAX;
        let mut buf = [0f32; GROUP * GROUP_LEN_MAX];
        // SAFETY: shapes were checked by the caller (`super::pv`).
        unsafe {
            let mut g0 = cells.start;
            while g0 < cells.end {
                let m = (cells.end - g0).min(GROUP);
                for i in 0..m {
                    prefetch(&v, g0 + i, cells.end);
                }
                let i0 = g0 - cells.start;
                // The group's rows, fetched (and widened) at the first row that needs them.
                let mut group = None;
                for r in 0..n {
                    let wr = &w[r * ld + i0..r * ld + i0 + m];
                    if wr.iter().all(|&p| p == 0.0) {
                        continue;
                    }
                    let (raw, wide) = *group.get_or_insert_with(|| group_rows(&v, g0, m, widen, &mut buf));
                    let o = out.as_mut_ptr().add(r * len);
                    match &wide {
                        Some(rows) => axpy_group::<f32>(o, wr, rows, len),
                        None => axpy_group::<E>(o, wr, &raw, len),
                    }
                }
                g0 += m;
            }
        }
    }

    /// The polynomial exponential of eight values (see `portable::exp`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn exp8(x: __m256) -> __m256 {
        let lo = _mm256_set1_ps(LO);
        let underflow = _mm256_cmp_ps(x, lo, _CMP_LE_OQ);
        let x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(HI));
        let n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let e = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
        let bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        let v = _mm256_mul_ps(e, _mm256_castsi256_ps(bits));
        _mm256_andnot_ps(underflow, v)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn exp_sub_sum(x: &mut [f32], max: f32) -> f32 {
        // SAFETY: every pointer access stays within the slices (see the loop bounds).
        unsafe {
            let n = x.len();
            let p = x.as_mut_ptr();
            let vm = _mm256_set1_ps(max);
            let mut acc = _mm256_setzero_ps();
            let mut i = 0;
            while i + 8 <= n {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), vm));
                _mm256_storeu_ps(p.add(i), e);
                acc = _mm256_add_ps(acc, e);
                i += 8;
            }
            let mut sum = hsum(acc);
            while i < n {
                let v = super::portable::exp(*p.add(i) - max);
                *p.add(i) = v;
                sum += v;
                i += 1;
            }
            sum
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 4.0 - 2.0
            })
            .collect()
    }

    fn check_close(got: f32, want: f32, rel: f32, what: &str) {
        let tol = rel * want.abs().max(1e-30);
        assert!((got - want).abs() <= tol, "{what}: got {got}, want {want}");
    }

    #[test]
    fn dot_and_axpy_match_portable_at_every_length() {
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 31, 64, 100, 256, 257] {
            let (a, b) = (data(n, 1), data(n, 2));
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let tol = 1e-5 * a.iter().zip(&b).map(|(x, y)| (x * y).abs() as f64).sum::<f64>() + 1e-6;
            assert!((dot(&a, &b) as f64 - want).abs() <= tol, "dot n={n}");
            assert!((portable::dot(&a, &b) as f64 - want).abs() <= tol, "portable dot n={n}");
            let mut y1 = data(n, 3);
            let mut y2 = y1.clone();
            axpy(&mut y1, 0.37, &a);
            portable::axpy(&mut y2, 0.37, &a);
            for (g, w) in y1.iter().zip(&y2) {
                assert!((g - w).abs() <= 1e-6 * (1.0 + w.abs()), "axpy n={n}");
            }
        }
    }

    #[test]
    fn qk_and_pv_match_portable() {
        // (query rows, row length, stride, offset, cells)
        for (n, len, stride, offset, cells) in
            [(1, 64, 192, 64, 0..40), (12, 64, 192, 128, 3..17), (4, 9, 20, 11, 0..5), (3, 600, 600, 0, 1..4)]
        {
            let q = data(n * len, 7);
            let kf = data(cells.end * stride, 8);
            let kh: Vec<f16> = kf.iter().map(|&x| f16::from_f32(x)).collect();
            let span = cells.len() + 3;
            let mut w = data(n * span, 9);
            w.iter_mut().step_by(3).for_each(|x| *x = 0.0);
            let (a, b) = (Rows { data: &kf[..], stride, offset, len }, Rows { data: &kh[..], stride, offset, len });
            let mut got = vec![0f32; n * span];
            let mut want = got.clone();
            qk(&q, a, cells.clone(), 0.5, &mut got, span);
            portable::qk(&q, a, cells.clone(), 0.5, &mut want, span);
            close_all(&got, &want, "qk f32");
            qk(&q, b, cells.clone(), 0.5, &mut got, span);
            portable::qk(&q, b, cells.clone(), 0.5, &mut want, span);
            close_all(&got, &want, "qk f16");
            let mut got = data(n * len, 10);
            let mut want = got.clone();
            pv(&w, span, a, cells.clone(), &mut got);
            portable::pv(&w, span, a, cells.clone(), &mut want);
            close_all(&got, &want, "pv f32");
            pv(&w, span, b, cells.clone(), &mut got);
            portable::pv(&w, span, b, cells.clone(), &mut want);
            close_all(&got, &want, "pv f16");
        }
        let mut x = data(37, 11);
        let want: Vec<f32> = x.iter().map(|v| f16::from_f32(*v).to_f32()).collect();
        round_f16(&mut x);
        assert_eq!(x, want);
    }

    #[test]
    fn scores_do_not_depend_on_how_cells_are_grouped() {
        // Scores of a range (8 cells at a time, then singles) equal scores of each cell
        // alone (the one-cell path), bit for bit, for both storage types and with one or
        // several query rows (the rows are widened or read in place).
        for (n, len, stride, offset) in [(1, 64, 192, 64), (3, 64, 192, 0), (16, 256, 256, 0), (2, 24, 40, 8)] {
            let cells = 3..30;
            let q = data(n * len, 12);
            let kf = data(cells.end * stride, 13);
            let kh: Vec<f16> = kf.iter().map(|&x| f16::from_f32(x)).collect();
            fn check<E: Element>(q: &[f32], k: Rows<'_, E>, cells: std::ops::Range<usize>, n: usize) {
                let span = cells.len();
                let mut all = vec![0f32; n * span];
                qk(q, k, cells.clone(), 0.3, &mut all, span);
                for c in cells.clone() {
                    let mut one = vec![0f32; n];
                    qk(q, k, c..c + 1, 0.3, &mut one, 1);
                    for r in 0..n {
                        assert_eq!(all[r * span + c - cells.start].to_bits(), one[r].to_bits(), "cell {c} row {r}");
                    }
                }
            }
            check(&q, Rows { data: &kf[..], stride, offset, len }, cells.clone(), n);
            check(&q, Rows { data: &kh[..], stride, offset, len }, cells.clone(), n);
        }
    }

    fn close_all(got: &[f32], want: &[f32], what: &str) {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{what}: {g} vs {w}");
        }
    }

    #[test]
    fn f16_widening_is_exact() {
        let vals: Vec<f16> = (0..=u16::MAX).step_by(7).map(f16::from_bits).filter(|h| !h.is_nan()).collect();
        let mut out = vec![0f32; vals.len()];
        f16_to_f32(&vals, &mut out);
        for (h, o) in vals.iter().zip(&out) {
            assert_eq!(h.to_f32().to_bits(), o.to_bits(), "{h:?}");
        }
    }

    #[test]
    fn exp_is_within_a_few_ulp() {
        let mut xs: Vec<f32> = (0..20_000).map(|i| -100.0 + i as f32 * 0.005_3).filter(|x| *x <= 0.0).collect();
        xs.extend([0.0, -0.0, -1e-30, -87.0, -87.3, -88.0, -1e6, f32::NEG_INFINITY]);
        let mut simd = xs.clone();
        let sum = exp_sub_sum(&mut simd, 0.0);
        let mut port = xs.clone();
        let psum = portable::exp_sub_sum(&mut port, 0.0);
        for ((&x, &s), &p) in xs.iter().zip(&simd).zip(&port) {
            let want = (x as f64).exp() as f32;
            if want < 1e-37 {
                assert!(s < 1e-37 && p < 1e-37, "exp({x}) should underflow: {s} {p}");
                continue;
            }
            check_close(s, want, 4e-7, "simd exp");
            check_close(p, want, 4e-7, "portable exp");
        }
        check_close(sum, psum, 1e-5, "sum");
        // -inf (masked scores) gives exactly 0, and a shifted max gives exp(x - max).
        let mut v = vec![f32::NEG_INFINITY, 3.0, 1.0];
        let s = exp_sub_sum(&mut v, 3.0);
        assert_eq!(v[0], 0.0);
        assert_eq!(v[1], 1.0);
        check_close(v[2], (-2f32).exp(), 4e-7, "shifted");
        check_close(s, 1.0 + (-2f32).exp(), 1e-6, "shifted sum");
    }
}
