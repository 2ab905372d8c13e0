//! Register-tiled products for prompt processing on the 32-element block types (Q4_0,
//! Q4_1, Q5_0, Q5_1, Q8_0), and the dispatch to the K-quants' ([`super::panel_k`]).
//!
//! The row kernels in [`super::x86`] unpack one weight row (nibbles, fifth bits, half
//! scales) for every group of up to four activation rows; with hundreds of prompt rows
//! that unpacking is most of the work. Here a tile of weight rows is unpacked once into
//! 32 bytes of quants and an f32 scale per block ([`repack`]), and a kernel dots
//! [`TM`] of those rows with [`TN`] activation rows at a time, so every quant load and
//! every unpacked block serves several products.
//!
//! **Bit-identical to the row kernels.** Each product performs the row kernel's float
//! operations in the same order: per block the same exact integer lanes (`madd` of
//! `maddubs`, or `vpdpbusd`), the scale `d_w * d_x` rounded once, one FMA into one of
//! two accumulators (even blocks of the 4-block groups and the tail blocks into the first,
//! odd ones into the second), then `hsum8(acc0 + acc1)` plus, for types with a minimum,
//! the row kernel's lane sums of the minimum products. Which kernel serves a product
//! therefore never changes a result: prompt processing, decoding and batching agree
//! (tested in `dot::tests::panel_*`).

use std::arch::x86_64::*;
use std::cell::RefCell;

use candle_core::quantized::GgmlDType;

use super::blocks::{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
use super::panel_k::{KFns, kfns};
use super::x86::{Act32, Avx2, Avx512, Block32, Simd, Weight32, hsum8};

/// Weight rows per kernel call.
pub(crate) const TM: usize = 2;
/// Activation rows per kernel call.
pub(crate) const TN: usize = 3;

/// Repacks `rows` weight rows of `nb` blocks at `w` into `q` (32 quant bytes per block,
/// `rows * nb` blocks row-major), `d` (the scale of each block as f32, 8 times) and, for types
/// with a minimum, `m` (each block's minimum as f32).
///
/// # Safety
/// The ISA is supported; `w` holds `rows * nb` blocks of the function's type; `q` has
/// room for `32 * rows * nb` bytes, `d` for `8 * rows * nb` floats and (with a minimum)
/// `m` for `rows * nb` floats.
type RepackFn = unsafe fn(nb: usize, rows: usize, w: *const u8, q: *mut u8, d: *mut f32, m: *mut f32);

/// Dots [`TM`] repacked weight rows with [`TN`] activation rows into `out` (`TM x TN`,
/// row-major).
///
/// # Safety
/// The ISA is supported; the operands are as described on [`Tile`].
type TileFn = unsafe fn(op: &Tile, out: &mut [[f32; TN]; TM]);

/// The operands of one kernel call.
pub(crate) struct Tile {
    /// Blocks per row.
    pub nb: usize,
    /// Repacked quants of the first weight row (row `i` at `wq + i * nb * 32`).
    pub wq: *const u8,
    /// Scales of the first weight row, each repeated 8 times (row `i` at
    /// `wd + i * nb * 8`).
    pub wd: *const f32,
    /// Minimums of the first weight row, for types with one.
    pub wm: *const f32,
    /// The activation rows' blocks (`nb` each).
    pub x: [*const u8; TN],
    /// The activation rows' headers from `act_headers` (scale, or scale and sum, per
    /// block).
    pub xh: [*const f32; TN],
}

/// The tiled product for one weight type at one ISA level: a 32-element type's (here)
/// or a K-quant's ([`super::panel_k`]).
#[derive(Clone, Copy)]
pub(crate) enum PanelFns {
    /// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
    Block32(Fns32),
    /// Q4_K, Q5_K, Q6_K.
    KQuant(KFns),
}

/// The tiled product for one 32-element weight type at one ISA level.
#[derive(Clone, Copy)]
pub(crate) struct Fns32 {
    repack: RepackFn,
    tile: TileFn,
}

impl Fns32 {
    /// See [`RepackFn`].
    ///
    /// # Safety
    /// As for [`RepackFn`].
    #[inline]
    pub unsafe fn repack(&self, nb: usize, rows: usize, w: *const u8, q: *mut u8, d: *mut f32, m: *mut f32) {
        unsafe { (self.repack)(nb, rows, w, q, d, m) }
    }

    /// See [`TileFn`].
    ///
    /// # Safety
    /// As for [`TileFn`].
    #[inline]
    pub unsafe fn tile(&self, op: &Tile, out: &mut [[f32; TN]; TM]) {
        unsafe { (self.tile)(op, out) }
    }
}

#[inline(always)]
unsafe fn half(p: *const u8, offset: usize) -> f32 {
    unsafe { half::f16::from_bits(p.add(offset).cast::<u16>().read_unaligned()).to_f32() }
}

#[inline(always)]
unsafe fn repack_impl<W: Weight32, S: Simd>(
    nb: usize,
    rows: usize,
    w: *const u8,
    q: *mut u8,
    d: *mut f32,
    m: *mut f32,
) {
    unsafe {
        let w = w.cast::<W>();
        for i in 0..rows * nb {
            let b = w.add(i);
            _mm256_storeu_si256(q.add(i * 32).cast(), W::quants::<S>(b));
            // Stored as a full vector: the kernel's `d_w * d_x` then is one vector
            // multiply (two broadcast scalars would be multiplied as scalars and the
            // product broadcast: two instructions per product).
            _mm256_storeu_ps(d.add(8 * i), _mm256_set1_ps(half(b.cast(), 0)));
            if W::PAIRED {
                *m.add(i) = half(b.cast(), 2);
            }
        }
    }
}

/// One block `b` of every product of the tile into `acc`.
#[inline(always)]
unsafe fn block<W: Weight32, S: Simd>(op: &Tile, b: usize, acc: &mut [[__m256; TN]; TM]) {
    unsafe {
        let nb = op.nb;
        let xv: [__m256i; TN] = std::array::from_fn(|c| W::Act::qs(op.x[c].cast::<W::Act>().add(b)));
        let hw = W::Act::HEADER_FLOATS;
        let dx: [__m256; TN] = std::array::from_fn(|c| _mm256_broadcast_ss(&*op.xh[c].add(b * hw)));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let w = _mm256_loadu_si256(op.wq.add((r * nb + b) * 32).cast());
            let qa = if W::PAIRED { w } else { _mm256_sign_epi8(w, w) };
            let dw = _mm256_loadu_ps(op.wd.add((r * nb + b) * 8));
            for ((a, &xc), &dxc) in acc_r.iter_mut().zip(&xv).zip(&dx) {
                let y = if W::PAIRED { xc } else { _mm256_sign_epi8(xc, w) };
                let p = _mm256_cvtepi32_ps(S::dot_u8i8(qa, y));
                *a = _mm256_fmadd_ps(_mm256_mul_ps(dw, dxc), p, *a);
            }
        }
    }
}

#[inline(always)]
unsafe fn tile_impl<W: Weight32, S: Simd>(op: &Tile, out: &mut [[f32; TN]; TM]) {
    unsafe {
        let nb = op.nb;
        let main = nb / 4 * 4;
        // The row kernel's first accumulator: even blocks of the groups, then the tail.
        let mut acc0 = [[_mm256_setzero_ps(); TN]; TM];
        let mut b = 0;
        while b < main {
            block::<W, S>(op, b, &mut acc0);
            b += 2;
        }
        for b in main..nb {
            block::<W, S>(op, b, &mut acc0);
        }
        // Its second: odd blocks of the groups.
        let mut acc1 = [[_mm256_setzero_ps(); TN]; TM];
        let mut b = 1;
        while b < main {
            block::<W, S>(op, b, &mut acc1);
            b += 2;
        }
        for r in 0..TM {
            for c in 0..TN {
                let mut total = hsum8(_mm256_add_ps(acc0[r][c], acc1[r][c]));
                if W::PAIRED {
                    total += min_term(op, r, c, main);
                }
                out[r][c] = total;
            }
        }
    }
}

/// AVX-512: blocks `b` and `b + 1` of every product of the tile into `acc`, block `b`
/// in the low half of each register (the row kernel's first accumulator) and `b + 1` in
/// the high half (its second). Per block the same operations as [`block`] at the
/// AVX-512 level: `vpdpbusd` of `|w|` and the activations negated where `w` is negative
/// (the sign trick; where `w` is zero the product is zero either way), the scale product
/// rounded once, one FMA.
#[inline(always)]
unsafe fn block_pair<W: Weight32>(op: &Tile, b: usize, acc: &mut [[__m512; TN]; TM]) {
    unsafe {
        let nb = op.nb;
        let hw = W::Act::HEADER_FLOATS;
        let xv: [__m512i; TN] = std::array::from_fn(|c| {
            let p = op.x[c].cast::<W::Act>();
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(W::Act::qs(p.add(b))), W::Act::qs(p.add(b + 1)))
        });
        let dx: [__m512; TN] = std::array::from_fn(|c| {
            let lo = _mm256_castps_pd(_mm256_broadcast_ss(&*op.xh[c].add(b * hw)));
            let hi = _mm256_castps_pd(_mm256_broadcast_ss(&*op.xh[c].add((b + 1) * hw)));
            _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castpd256_pd512(lo), hi))
        });
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let w = _mm512_loadu_si512(op.wq.add((r * nb + b) * 32).cast());
            let (qa, neg) = if W::PAIRED { (w, 0) } else { (_mm512_abs_epi8(w), _mm512_movepi8_mask(w)) };
            let dw = _mm512_loadu_ps(op.wd.add((r * nb + b) * 8));
            for ((a, &xc), &dxc) in acc_r.iter_mut().zip(&xv).zip(&dx) {
                let y = if W::PAIRED { xc } else { _mm512_mask_sub_epi8(xc, neg, _mm512_setzero_si512(), xc) };
                let p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), qa, y));
                *a = _mm512_fmadd_ps(_mm512_mul_ps(dw, dxc), p, *a);
            }
        }
    }
}

/// [`tile_impl`] at the AVX-512 level with 512-bit registers: the 4-block groups two
/// blocks at a time ([`block_pair`]), the tail blocks as the row kernel sums them.
#[inline(always)]
unsafe fn tile_impl_512<W: Weight32>(op: &Tile, out: &mut [[f32; TN]; TM]) {
    unsafe {
        let nb = op.nb;
        let main = nb / 4 * 4;
        let mut acc = [[_mm512_setzero_ps(); TN]; TM];
        let mut b = 0;
        while b < main {
            block_pair::<W>(op, b, &mut acc);
            b += 2;
        }
        let mut acc0: [[__m256; TN]; TM] =
            std::array::from_fn(|r| std::array::from_fn(|c| _mm512_castps512_ps256(acc[r][c])));
        for b in main..nb {
            block::<W, Avx512>(op, b, &mut acc0);
        }
        for r in 0..TM {
            for c in 0..TN {
                let acc1 = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[r][c])));
                let mut total = hsum8(_mm256_add_ps(acc0[r][c], acc1));
                if W::PAIRED {
                    total += min_term(op, r, c, main);
                }
                out[r][c] = total;
            }
        }
    }
}

/// The minimums' contribution to product `(r, c)`, summed as the row kernel sums it:
/// four lanes (block `j` of each 4-block group in lane `j`, tail blocks in lane 0), then
/// `0 + ((l0 + l2) + (l1 + l3))`.
#[inline(always)]
unsafe fn min_term(op: &Tile, r: usize, c: usize, main: usize) -> f32 {
    unsafe {
        let nb = op.nb;
        let wm = op.wm.add(r * nb);
        // Sums sit at the odd places of the (scale, sum) headers.
        let xh = op.xh[c];
        let odd = _mm256_set_epi32(7, 5, 3, 1, 7, 5, 3, 1);
        let mut lanes = _mm_setzero_ps();
        let mut b = 0;
        while b < main {
            let xs = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(_mm256_loadu_ps(xh.add(2 * b)), odd));
            lanes = _mm_add_ps(lanes, _mm_mul_ps(_mm_loadu_ps(wm.add(b)), xs));
            b += 4;
        }
        for b in main..nb {
            lanes = _mm_add_ps(lanes, _mm_set_ss(*wm.add(b) * *xh.add(2 * b + 1)));
        }
        let mut l = [0f32; 4];
        _mm_storeu_ps(l.as_mut_ptr(), lanes);
        0.0 + ((l[0] + l[2]) + (l[1] + l[3]))
    }
}

/// [`tile_impl`] at the AVX2 level.
#[inline(always)]
unsafe fn tile_avx2<W: Weight32>(op: &Tile, out: &mut [[f32; TN]; TM]) {
    // SAFETY: forwarded from the caller.
    unsafe { tile_impl::<W, Avx2>(op, out) }
}

/// Defines the two entry points of one weight type at one ISA level.
macro_rules! panel {
    ($repack:ident, $tile:ident, $w:ty, $s:ty, $tile_impl:ident, $features:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn $repack(nb: usize, rows: usize, w: *const u8, q: *mut u8, d: *mut f32, m: *mut f32) {
            // SAFETY: forwarded from the caller (see `RepackFn`).
            unsafe { repack_impl::<$w, $s>(nb, rows, w, q, d, m) }
        }
        #[target_feature(enable = $features)]
        unsafe fn $tile(op: &Tile, out: &mut [[f32; TN]; TM]) {
            // SAFETY: forwarded from the caller (see `TileFn`).
            unsafe { $tile_impl::<$w>(op, out) }
        }
    };
}

macro_rules! avx2 {
    ($($repack:ident, $tile:ident: $w:ty;)*) => {$(
        panel!($repack, $tile, $w, Avx2, tile_avx2, "avx2,fma,f16c");
    )*};
}
macro_rules! avx512 {
    ($($repack:ident, $tile:ident: $w:ty;)*) => {$(
        panel!($repack, $tile, $w, Avx512, tile_impl_512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");
    )*};
}
avx2! {
    rp_q4_0_avx2, tl_q4_0_avx2: Q4_0;
    rp_q4_1_avx2, tl_q4_1_avx2: Q4_1;
    rp_q5_0_avx2, tl_q5_0_avx2: Q5_0;
    rp_q5_1_avx2, tl_q5_1_avx2: Q5_1;
    rp_q8_0_avx2, tl_q8_0_avx2: Q8_0;
}
avx512! {
    rp_q4_0_avx512, tl_q4_0_avx512: Q4_0;
    rp_q4_1_avx512, tl_q4_1_avx512: Q4_1;
    rp_q5_0_avx512, tl_q5_0_avx512: Q5_0;
    rp_q5_1_avx512, tl_q5_1_avx512: Q5_1;
    rp_q8_0_avx512, tl_q8_0_avx512: Q8_0;
}

macro_rules! fns {
    ($repack:ident, $tile:ident) => {
        PanelFns::Block32(Fns32 { repack: $repack, tile: $tile })
    };
}

/// The tiled product for weights of `dtype` at `isa`, if there is one.
pub(crate) fn panel_fns(dtype: GgmlDType, isa: super::Isa) -> Option<PanelFns> {
    use super::Isa;
    Some(match (isa, dtype) {
        (Isa::Avx2, GgmlDType::Q4_0) => fns!(rp_q4_0_avx2, tl_q4_0_avx2),
        (Isa::Avx2, GgmlDType::Q4_1) => fns!(rp_q4_1_avx2, tl_q4_1_avx2),
        (Isa::Avx2, GgmlDType::Q5_0) => fns!(rp_q5_0_avx2, tl_q5_0_avx2),
        (Isa::Avx2, GgmlDType::Q5_1) => fns!(rp_q5_1_avx2, tl_q5_1_avx2),
        (Isa::Avx2, GgmlDType::Q8_0) => fns!(rp_q8_0_avx2, tl_q8_0_avx2),
        (Isa::Avx512, GgmlDType::Q4_0) => fns!(rp_q4_0_avx512, tl_q4_0_avx512),
        (Isa::Avx512, GgmlDType::Q4_1) => fns!(rp_q4_1_avx512, tl_q4_1_avx512),
        (Isa::Avx512, GgmlDType::Q5_0) => fns!(rp_q5_0_avx512, tl_q5_0_avx512),
        (Isa::Avx512, GgmlDType::Q5_1) => fns!(rp_q5_1_avx512, tl_q5_1_avx512),
        (Isa::Avx512, GgmlDType::Q8_0) => fns!(rp_q8_0_avx512, tl_q8_0_avx512),
        _ => return kfns(dtype, isa).map(PanelFns::KQuant),
    })
}

/// Bytes of repacked weight rows per tile (weights stay in L1/L2 while every activation
/// row passes over them).
const TILE_BYTES: usize = 24 * 1024;

/// A thread's buffers for repacked weight rows.
#[derive(Default)]
struct PanelBuf {
    /// Quants, 32 bytes per block.
    q: Vec<u8>,
    /// Scales.
    d: Vec<f32>,
    /// Minimums.
    m: Vec<f32>,
}

impl PanelBuf {
    /// Grows the buffers to hold `blocks` blocks.
    fn reserve(&mut self, blocks: usize) {
        if self.m.len() < blocks {
            self.q.resize(blocks * 32, 0);
            self.d.resize(8 * blocks, 0.0);
            self.m.resize(blocks, 0.0);
        }
    }
}

thread_local! {
    /// Each thread's repack buffers, reused across products.
    static PANEL_BUF: RefCell<PanelBuf> = RefCell::new(PanelBuf::default());
}

impl PanelFns {
    /// `store(r, t, dot(W[r], x[t]))` for the `rows` weight rows at `w` (`nb` blocks each,
    /// of `w_block` bytes) and the `n` activation rows at `x` (`nb` blocks each, of
    /// `x_block` bytes), whose headers `act_headers` wrote to `xh` (`hw` floats per
    /// block; none for the K-quants' Q8_K).
    ///
    /// # Safety
    /// The ISA is supported; `w` and `x` hold that many blocks of this product's types.
    pub(crate) unsafe fn run(
        &self,
        nb: usize,
        w: (*const u8, usize, usize),
        (x, x_block, n): (*const u8, usize, usize),
        xh: (&[f32], usize),
        store: impl FnMut(usize, usize, f32),
    ) {
        // SAFETY: forwarded from the caller.
        unsafe {
            match self {
                PanelFns::Block32(f) => f.run(nb, w, (x, x_block, n), xh, store),
                PanelFns::KQuant(f) => f.run(nb, w, (x, n), store),
            }
        }
    }
}

impl Fns32 {
    /// `store(r, t, dot(W[r], x[t]))` for the `rows` weight rows at `w` (`nb` blocks each,
    /// of `w_block` bytes) and the `n` activation rows at `x` (`nb` blocks each, of
    /// `x_block` bytes), whose headers `act_headers` wrote to `xh` (`hw` floats per
    /// block).
    ///
    /// # Safety
    /// The ISA is supported; `w` and `x` hold that many blocks of this product's types.
    pub(crate) unsafe fn run(
        &self,
        nb: usize,
        (w, w_block, rows): (*const u8, usize, usize),
        (x, x_block, n): (*const u8, usize, usize),
        (xh, hw): (&[f32], usize),
        mut store: impl FnMut(usize, usize, f32),
    ) {
        if rows == 0 || n == 0 {
            return;
        }
        assert!(xh.len() >= n * nb * hw, "activation headers");
        let tile_rows = (TILE_BYTES / (nb * 68)).clamp(TM, 64) / TM * TM;
        PANEL_BUF.with_borrow_mut(|buf| {
            buf.reserve(tile_rows * nb);
            let mut out = [[0f32; TN]; TM];
            let mut r0 = 0;
            while r0 < rows {
                let m = (rows - r0).min(tile_rows);
                // SAFETY: rows r0..r0+m of `w` exist; the buffers hold `tile_rows * nb`
                // blocks.
                unsafe {
                    self.repack(
                        nb,
                        m,
                        w.add(r0 * nb * w_block),
                        buf.q.as_mut_ptr(),
                        buf.d.as_mut_ptr(),
                        buf.m.as_mut_ptr(),
                    )
                };
                let mut t0 = 0;
                while t0 < n {
                    let cols = (n - t0).min(TN);
                    // Missing activation rows of the last group repeat its last row.
                    let row = |c: usize| (t0 + c.min(cols - 1)) * nb;
                    let mut op = Tile {
                        nb,
                        wq: buf.q.as_ptr(),
                        wd: buf.d.as_ptr(),
                        wm: buf.m.as_ptr(),
                        // SAFETY (for the three): row(c) < n * nb.
                        x: std::array::from_fn(|c| unsafe { x.add(row(c) * x_block) }),
                        xh: std::array::from_fn(|c| unsafe { xh.as_ptr().add(row(c) * hw) }),
                    };
                    let mut g = 0;
                    while g < m {
                        // Rows past `m` in the last group read stale (but initialised)
                        // buffer rows, within `tile_rows`; their results are dropped.
                        // SAFETY: (for the three) g + TM <= tile_rows.
                        op.wq = unsafe { buf.q.as_ptr().add(g * nb * 32) };
                        op.wd = unsafe { buf.d.as_ptr().add(g * nb * 8) };
                        op.wm = unsafe { buf.m.as_ptr().add(g * nb) };
                        // SAFETY: the operands are as `Tile` describes.
                        unsafe { self.tile(&op, &mut out) };
                        for (r, row_out) in out.iter().enumerate().take((m - g).min(TM)) {
                            for (c, &v) in row_out.iter().enumerate().take(cols) {
                                store(r0 + g + r, t0 + c, v);
                            }
                        }
                        g += TM;
                    }
                    t0 += TN;
                }
                r0 += m;
            }
        });
    }
}
