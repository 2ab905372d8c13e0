//! Quantized dot products with runtime CPU dispatch.
//!
//! candle's `GgmlType::vec_dot` is scalar for several block types (Q4_1, Q5_0, Q5_1) on a
//! default x86_64 build, and its AVX2 paths for the others convert halves and reduce per
//! block. The kernels here are lem's own: AVX2 (`avx2,fma,f16c`) and AVX-512
//! (`avx512bw,avx512vl,avx512vnni` on top) versions compiled with `#[target_feature]`,
//! chosen once at run time, so one binary runs everywhere and no build flags are needed.
//! On other CPUs and architectures, candle's own `vec_dot` is used.
//!
//! Each kernel dots one weight row with up to [`MAX_K`] activation rows at once
//! ([`vec_dot_multi`]): the weights are unpacked once and reused for every activation row,
//! which is what makes prompt processing (many rows) faster than decoding row by row.
//!
//! The ISA can be capped for benchmarking with the `LEM_KERNELS_ISA` environment variable
//! (`portable`, `avx2` or `avx512`), read once at the first product.

use std::marker::PhantomData;
use std::sync::OnceLock;

use candle_core::quantized::GgmlDType;

use crate::qmatrix::GgmlType;

mod blocks;
pub mod mxfp4;
#[cfg(target_arch = "x86_64")]
mod panel;
#[cfg(target_arch = "x86_64")]
mod panel_k;
#[cfg(target_arch = "x86_64")]
mod quant;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_k;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_small;

/// The most activation rows one kernel call handles; [`vec_dot_multi`] splits longer runs.
pub(crate) const MAX_K: usize = 4;

/// Instruction-set level of the dot-product kernels, in increasing order of capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Isa {
    /// No lem kernels: candle's `vec_dot` (scalar, or candle's own SIMD where it has it).
    Portable,
    /// x86_64 with AVX2, FMA and F16C.
    Avx2,
    /// AVX2 plus AVX-512 BW/VL and VNNI (`vpdpbusd` for the 8-bit products).
    Avx512,
}

impl Isa {
    /// The best level this CPU supports.
    pub(crate) fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni");
            if avx2 && avx512 {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// The level in use: [`Isa::detected`], capped by `LEM_KERNELS_ISA` when it is set.
    pub(crate) fn current() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Isa::detected();
            let cap = match std::env::var("LEM_KERNELS_ISA").ok().as_deref().map(str::trim) {
                Some("portable") | Some("scalar") | Some("none") => Isa::Portable,
                Some("avx2") => Isa::Avx2,
                _ => Isa::Avx512,
            };
            best.min(cap)
        })
    }
}

/// A kernel: `rows` weight rows of `nb` blocks each, back to back at `w`, against `n`
/// activation rows of `nb` blocks each, stored back to back at `x`, whose block headers
/// [`act_headers`] wrote to `xh`; writes the dot product of weight row `r` and activation
/// row `t` to `out[t * stride[0] + r * stride[1]]`.
///
/// # Safety
/// The CPU supports the kernel's ISA; `w` and `x` point to that many valid, aligned
/// blocks of the kernel's types; `xh` to their headers (see [`act_headers`]); `out` to
/// writable floats at every such offset.
type KernelFn = unsafe fn(
    nb: usize,
    w: *const u8,
    x: *const u8,
    xh: *const f32,
    n: usize,
    rows: usize,
    out: *mut f32,
    stride: [usize; 2],
);

/// Floats of header per activation block of type `V` in [`act_headers`]' output: the
/// scale of Q8_0; the scale and sum of Q8_1; none for the others (Q8_K's scale is
/// already an f32).
pub(crate) fn header_floats<V: GgmlType>() -> usize {
    match V::DTYPE {
        GgmlDType::Q8_0 => 1,
        GgmlDType::Q8_1 => 2,
        _ => 0,
    }
}

/// The half-float headers of the activation blocks `x` as f32, block after block
/// ([`header_floats`] each) into `out`: converted once per product instead of once per
/// weight row (they are what every weight row's dot product multiplies by).
pub(crate) fn act_headers<V: GgmlType>(x: &[V], out: &mut [f32]) {
    let per = header_floats::<V>();
    assert!(out.len() >= per * x.len(), "activation headers");
    if per == 0 {
        return;
    }
    let size = std::mem::size_of::<V>();
    // SAFETY: block types are plain old data; the slice covers exactly their memory.
    let bytes = unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<u8>(), std::mem::size_of_val(x)) };
    for (block, o) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(per)) {
        // Q8_0 and Q8_1 start with their halves (see `blocks`).
        for (j, o) in o.iter_mut().enumerate() {
            *o = half::f16::from_le_bytes([block[2 * j], block[2 * j + 1]]).to_f32();
        }
    }
}

/// The lem kernel for weights of `dtype` at `isa`, if there is one.
fn kernel(dtype: GgmlDType, isa: Isa) -> Option<KernelFn> {
    #[cfg(target_arch = "x86_64")]
    {
        match isa {
            Isa::Portable => None,
            Isa::Avx2 => x86::kernel_avx2(dtype),
            Isa::Avx512 => x86::kernel_avx512(dtype),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (dtype, isa);
        None
    }
}

/// Whether a lem SIMD kernel (rather than candle's `vec_dot`) serves weights of `dtype`
/// on this CPU.
#[allow(dead_code)] // Used by tests and kept for diagnostics.
pub(crate) fn has_fast_kernel(dtype: GgmlDType) -> bool {
    kernel(dtype, Isa::current()).is_some()
}

/// `dot(w, x)` over `n` elements: one weight row against one quantized activation row.
///
/// Same contract as candle's `T::vec_dot` (which it falls back to), but served by a SIMD
/// kernel when one exists for `T` on this CPU.
#[inline]
#[allow(dead_code)] // The matmul uses the multi-row form; this is the one-row convenience.
pub(crate) fn vec_dot<T: GgmlType>(n: usize, w: &[T], x: &[T::VecDotType]) -> f32 {
    let mut out = [0f32];
    vec_dot_multi::<T>(n, w, x, &mut out);
    out[0]
}

/// `out[j] = dot(w, x_j)` for `out.len()` activation rows `x_j` of `n` elements each,
/// stored back to back in `x` (`n / T::VecDotType::BLCK_SIZE` blocks per row).
#[inline]
pub(crate) fn vec_dot_multi<T: GgmlType>(n: usize, w: &[T], x: &[T::VecDotType], out: &mut [f32]) {
    vec_dot_multi_with::<T>(Isa::current(), n, w, x, out);
}

/// Quantizes the activations `x` into `y` (`x.len() / V::BLCK_SIZE` blocks) with the
/// arithmetic of `crate::quant_act` (SIMD for Q8_0, Q8_1 and Q8_K on AVX2 CPUs), or
/// `V::from_float` for other types. Returns the bytes `quant_act::quantize_row` would.
pub(crate) fn quantize_row<V: GgmlType>(x: &[f32], y: &mut [V]) {
    quantize_row_with(Isa::current(), x, y);
}

/// [`quantize_row`] at a given ISA level (which must not exceed [`Isa::detected`]).
pub(crate) fn quantize_row_with<V: GgmlType>(isa: Isa, x: &[f32], y: &mut [V]) {
    assert_eq!(x.len(), y.len() * V::BLCK_SIZE, "quantize_row: size mismatch");
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        assert!(isa <= Isa::detected(), "{isa:?} kernels need a CPU that supports them");
        let (xp, n, yp) = (x.as_ptr(), x.len(), y.as_mut_ptr());
        // SAFETY: AVX2/FMA/F16C are available (Avx2 or better, checked above); `y` holds
        // `n / BLCK_SIZE` blocks of the type matched by `V::DTYPE`, whose layout our
        // mirror shares (see `blocks`).
        unsafe {
            match V::DTYPE {
                GgmlDType::Q8_0 => return quant::q8_0(xp, n, yp.cast()),
                GgmlDType::Q8_1 => return quant::q8_1(xp, n, yp.cast()),
                GgmlDType::Q8K => return quant::q8k(xp, n, yp.cast()),
                _ => {}
            }
        }
    }
    let _ = isa;
    if !crate::quant_act::quantize_row(x, y) {
        V::from_float(x, y);
    }
}

/// [`vec_dot_multi`] at a given ISA level (which must not exceed [`Isa::detected`]).
pub(crate) fn vec_dot_multi_with<T: GgmlType>(isa: Isa, n: usize, w: &[T], x: &[T::VecDotType], out: &mut [f32]) {
    let mut xh = vec![0f32; header_floats::<T::VecDotType>() * x.len()];
    act_headers(x, &mut xh);
    RowDot::<T>::with_isa(isa, n).run(w, x, &xh, out);
}

/// The dot product of `n`-element rows of weight type `T`, with the kernel chosen once
/// (CPU level and type), to be applied to many rows.
pub(crate) struct RowDot<T: GgmlType> {
    n: usize,
    nb: usize,
    kernel: Option<KernelFn>,
    _blocks: PhantomData<fn(&[T])>,
}

impl<T: GgmlType> RowDot<T> {
    /// The product for `n`-element rows at the current ISA level ([`Isa::current`]).
    pub(crate) fn new(n: usize) -> RowDot<T> {
        RowDot::with_isa(Isa::current(), n)
    }

    /// The product for `n`-element rows at `isa` (at most [`Isa::detected`]).
    pub(crate) fn with_isa(isa: Isa, n: usize) -> RowDot<T> {
        assert_eq!(T::BLCK_SIZE, T::VecDotType::BLCK_SIZE, "weight and activation blocks differ");
        assert!(n.is_multiple_of(T::BLCK_SIZE), "{n} is not a whole number of blocks");
        let kernel = kernel(T::DTYPE, isa);
        if kernel.is_some() {
            assert!(isa <= Isa::detected(), "{isa:?} kernels need a CPU that supports them");
        }
        RowDot { n, nb: n / T::BLCK_SIZE, kernel, _blocks: PhantomData }
    }

    /// `out[j] = dot(w, x_j)` for the `out.len()` activation rows stored back to back in
    /// `x`, with headers `xh` from [`act_headers`], against the weight row `w`.
    #[inline]
    pub(crate) fn run(&self, w: &[T], x: &[T::VecDotType], xh: &[f32], out: &mut [f32]) {
        let nb = self.nb;
        let per = header_floats::<T::VecDotType>();
        assert!(w.len() >= nb && x.len() >= out.len() * nb, "dot product operands too short");
        assert!(xh.len() >= out.len() * nb * per, "activation headers too short");
        match self.kernel {
            Some(f) => {
                for (c, chunk) in out.chunks_mut(MAX_K).enumerate() {
                    // SAFETY: the ISA is supported (checked in `with_isa`); `T` is the
                    // block type the kernel was chosen for (by `T::DTYPE`), and our
                    // mirrors share its layout (see `blocks`); the operands hold `nb` and
                    // `out.len() * nb` blocks (checked above); `chunk` has `chunk.len()`
                    // floats.
                    unsafe {
                        let xs = x.as_ptr().add(c * MAX_K * nb);
                        let hs = xh.as_ptr().add(c * MAX_K * nb * per);
                        f(nb, w.as_ptr().cast(), xs.cast(), hs, chunk.len(), 1, chunk.as_mut_ptr(), [1, 0]);
                    }
                }
            }
            None => {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = T::vec_dot(self.n, &w[..nb], &x[j * nb..(j + 1) * nb]);
                }
            }
        }
    }

    /// `out[r] = dot(w_r, x)` for the `out.len()` weight rows stored back to back in `w`
    /// and the one activation row `x` with headers `xh`: a decode step's product, with
    /// one kernel call for the whole run of rows.
    #[inline]
    pub(crate) fn run_rows(&self, w: &[T], x: &[T::VecDotType], xh: &[f32], out: &mut [f32]) {
        let (nb, rows) = (self.nb, out.len());
        let per = header_floats::<T::VecDotType>();
        assert!(w.len() >= rows * nb && x.len() >= nb && xh.len() >= nb * per, "dot product operands too short");
        match self.kernel {
            // SAFETY: as in `run`; `w` holds `rows` rows and `out` has `rows` floats.
            Some(f) => unsafe {
                f(nb, w.as_ptr().cast(), x.as_ptr().cast(), xh.as_ptr(), 1, rows, out.as_mut_ptr(), [0, 1])
            },
            None => {
                for (r, o) in out.iter_mut().enumerate() {
                    *o = T::vec_dot(self.n, &w[r * nb..(r + 1) * nb], &x[..nb]);
                }
            }
        }
    }

    /// `out[t * stride + r] = dot(w_r, x_t)` for the `rows` weight rows stored back to
    /// back in `w` and the `n` activation rows stored back to back in `x` (headers `xh`):
    /// a product of a few activation rows (a batched decode step, a draft's verification),
    /// with one kernel call for the whole share, so that each weight row is read once for
    /// all `n` rows.
    ///
    /// # Safety
    /// `out` points to writable floats at `t * stride + r` for every `t < n`, `r < rows`,
    /// that nothing else accesses during the call.
    #[inline]
    #[allow(clippy::too_many_arguments)] // The operands of `Panel::run`, and the output.
    pub(crate) unsafe fn run_share(
        &self,
        w: &[T],
        rows: usize,
        x: &[T::VecDotType],
        n: usize,
        xh: &[f32],
        out: *mut f32,
        stride: usize,
    ) {
        let nb = self.nb;
        let per = header_floats::<T::VecDotType>();
        assert!(w.len() >= rows * nb && x.len() >= n * nb && xh.len() >= n * nb * per, "operands too short");
        match self.kernel {
            // SAFETY: as in `run`; `w` holds `rows` rows and `x` `n`; the output offsets
            // are the caller's to guarantee.
            Some(f) => unsafe {
                f(nb, w.as_ptr().cast(), x.as_ptr().cast(), xh.as_ptr(), n, rows, out, [stride, 1]);
            },
            None => {
                for r in 0..rows {
                    for t in 0..n {
                        let v = T::vec_dot(self.n, &w[r * nb..(r + 1) * nb], &x[t * nb..(t + 1) * nb]);
                        // SAFETY: the caller's guarantee.
                        unsafe { *out.add(t * stride + r) = v };
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
type PanelFns = panel::PanelFns;
#[cfg(not(target_arch = "x86_64"))]
type PanelFns = std::convert::Infallible;

/// The register-tiled product of many activation rows with weights of type `T` (see
/// `panel`), where this CPU has one. Bit-identical to [`RowDot`].
pub(crate) struct Panel<T: GgmlType> {
    fns: PanelFns,
    nb: usize,
    _blocks: PhantomData<fn(&[T])>,
}

impl<T: GgmlType> Panel<T> {
    /// The product for `n`-element rows at the current ISA level, if there is one.
    pub(crate) fn new(n: usize) -> Option<Panel<T>> {
        Panel::with_isa(Isa::current(), n)
    }

    /// The product for `n`-element rows at `isa` (at most [`Isa::detected`]), if any.
    pub(crate) fn with_isa(isa: Isa, n: usize) -> Option<Panel<T>> {
        assert!(isa <= Isa::detected(), "{isa:?} kernels need a CPU that supports them");
        assert!(n.is_multiple_of(T::BLCK_SIZE), "{n} is not a whole number of blocks");
        #[cfg(target_arch = "x86_64")]
        let fns = panel::panel_fns(T::DTYPE, isa)?;
        #[cfg(not(target_arch = "x86_64"))]
        let fns: PanelFns = return None;
        Some(Panel { fns, nb: n / T::BLCK_SIZE, _blocks: PhantomData })
    }

    /// `store(r, t, dot(w_r, x_t))` for every weight row `r` of `w` (`rows` of them) and
    /// activation row `t` of `x` (`n` of them), whose headers [`act_headers`] wrote to
    /// `xh`.
    pub(crate) fn run(
        &self,
        w: &[T],
        rows: usize,
        x: &[T::VecDotType],
        n: usize,
        xh: &[f32],
        store: impl FnMut(usize, usize, f32),
    ) {
        let nb = self.nb;
        let per = header_floats::<T::VecDotType>();
        assert!(w.len() >= rows * nb && x.len() >= n * nb && xh.len() >= n * nb * per, "operands too short");
        #[cfg(target_arch = "x86_64")]
        {
            let wb = std::mem::size_of::<T>();
            let xb = std::mem::size_of::<T::VecDotType>();
            // SAFETY: the ISA was checked in `with_isa`; the operand lengths above; the
            // block types are the ones the functions were chosen for (by `T::DTYPE`).
            unsafe { self.fns.run(nb, (w.as_ptr().cast(), wb, rows), (x.as_ptr().cast(), xb, n), (xh, per), store) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = store;
            match self.fns {}
        }
    }
}
