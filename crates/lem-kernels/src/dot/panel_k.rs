//! Register-tiled products for prompt processing on the K-quants (Q4_K, Q5_K, Q6_K
//! against Q8_K activations).
//!
//! The row kernels in [`super::x86_k`] unpack a weight super-block (nibbles, fifth or
//! sixth bits, 6-bit scales and mins) for every group of up to four activation rows.
//! Here a tile of weight rows is unpacked once into [`Unpacked`] super-blocks (256
//! unsigned quant bytes in element order, the 16-bit scale operand of every 32-byte run
//! ready for `madd`, the minimums or the `-32` offsets, the float scales), and a kernel
//! dots `TM` of those rows with `TN` activation rows at a time: every quant load serves
//! `TN` products, every activation load `TM`.
//!
//! **Bit-identical to the row kernels.** A K-quant product has two parts:
//!
//! - per super-block, eight 32-bit integer lanes: lane `l` is the sum over the eight
//!   32-byte runs `j` of `scale_j * (q y)` over bytes `4l..4l+4` of the run (the row
//!   kernel's `madd(scale, maddubs(q, y))`), plus for Q6_K `-32 * madd(scales, bsums)`.
//!   Integer sums are exact (the quants are below 64, so `maddubs` never saturates, and
//!   `vpdpwssd` wraps exactly as `madd` + `add`), so any grouping gives the same lanes:
//!   the AVX-512 kernels run two runs per 512-bit register and add the halves at the
//!   end of the super-block;
//! - the float part, done exactly as the row kernel does it: `acc = fma(d_w * d_x,
//!   float(lanes), acc)` once per super-block in block order (and for Q4_K/Q5_K `accm =
//!   fma(dmin_w * d_x, float(madd(mins, pair sums of bsums)), accm)` in four lanes),
//!   then `hsum8(acc)` (minus `hsum4(accm)`).
//!
//! Which kernel serves a product therefore never changes a result (tested in
//! `dot::tests::panel_*` and `tests/dot.rs`).

use std::arch::x86_64::*;
use std::cell::RefCell;

use candle_core::quantized::GgmlDType;

use super::blocks::{Q4K, Q5K, Q6K, Q8K};
use super::x86::{hsum4, hsum8};
use super::x86_k::{half, scales_and_mins, splat_scale};

/// The most activation rows one kernel call takes.
const MAX_TN: usize = 8;
/// The most products one kernel call computes.
const MAX_TILE: usize = 32;

/// One weight super-block unpacked for the tiled kernels.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(crate) struct Unpacked {
    /// The 256 quants as unsigned bytes in element order (run `j` of 32 bytes holds
    /// elements `32j..32j+32`, the ones activation bytes `32j..32j+32` meet).
    q: [u8; 256],
    /// The 16-bit scale operand of each run's `madd`, 16 lanes per run.
    sc: [i16; 128],
    /// Q4_K/Q5_K: the eight minimums (lanes 0..8, the rest zero); Q6_K: `-32` times
    /// each of the sixteen sub-block scales.
    bias: [i16; 16],
    /// The super-block scale as f32.
    d: f32,
    /// The scale of the minimums as f32 (Q4_K/Q5_K).
    dmin: f32,
}

const ZERO: Unpacked = Unpacked { q: [0; 256], sc: [0; 128], bias: [0; 16], d: 0.0, dmin: 0.0 };

/// A K-quant weight block type that can be unpacked into [`Unpacked`].
trait KWeight {
    /// Unpacks the block at `b` into `u`.
    unsafe fn unpack(b: *const Self, u: *mut Unpacked);
}

/// Unpacks the 6-bit scales and minimums of Q4_K/Q5_K into `u` (`sc` and `bias`).
#[inline(always)]
unsafe fn unpack_scales_mins(scales: &[u8; 12], u: *mut Unpacked) {
    unsafe {
        let sm = scales_and_mins(scales);
        let sc = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sm));
        for j in 0..8 {
            _mm256_storeu_si256((*u).sc.as_mut_ptr().add(16 * j).cast(), splat_scale(sc, j));
        }
        let mins = _mm256_extracti128_si256::<1>(sm);
        _mm256_storeu_si256((*u).bias.as_mut_ptr().cast(), _mm256_zextsi128_si256(mins));
    }
}

impl KWeight for Q4K {
    #[inline(always)]
    unsafe fn unpack(b: *const Self, u: *mut Unpacked) {
        unsafe {
            let b = &*b;
            let m4 = _mm256_set1_epi8(0x0F);
            for j in 0..4 {
                let bits = _mm256_loadu_si256(b.qs.as_ptr().add(32 * j).cast());
                let q = (*u).q.as_mut_ptr().add(64 * j);
                _mm256_storeu_si256(q.cast(), _mm256_and_si256(bits, m4));
                _mm256_storeu_si256(q.add(32).cast(), _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4));
            }
            unpack_scales_mins(&b.scales, u);
            (*u).d = half(b.d);
            (*u).dmin = half(b.dmin);
        }
    }
}

impl KWeight for Q5K {
    #[inline(always)]
    unsafe fn unpack(b: *const Self, u: *mut Unpacked) {
        unsafe {
            let b = &*b;
            let m4 = _mm256_set1_epi8(0x0F);
            let m1 = _mm256_set1_epi8(0x01);
            let hbits = _mm256_loadu_si256(b.qh.as_ptr().cast());
            for j in 0..4 {
                let bits = _mm256_loadu_si256(b.qs.as_ptr().add(32 * j).cast());
                let h = _mm256_srl_epi16(hbits, _mm_cvtsi32_si128((2 * j) as i32));
                let hl = _mm256_slli_epi16::<4>(_mm256_and_si256(h, m1));
                let hh = _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<1>(h), m1));
                let q = (*u).q.as_mut_ptr().add(64 * j);
                _mm256_storeu_si256(q.cast(), _mm256_or_si256(_mm256_and_si256(bits, m4), hl));
                let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4), hh);
                _mm256_storeu_si256(q.add(32).cast(), hi);
            }
            unpack_scales_mins(&b.scales, u);
            (*u).d = half(b.d);
            (*u).dmin = half(b.dmin);
        }
    }
}

impl KWeight for Q6K {
    #[inline(always)]
    unsafe fn unpack(b: *const Self, u: *mut Unpacked) {
        unsafe {
            let b = &*b;
            let m4 = _mm256_set1_epi8(0x0F);
            let m3 = _mm256_set1_epi8(0x03);
            let sc8 = _mm_loadu_si128(b.scales.as_ptr().cast());
            for h in 0..2 {
                let b1 = _mm256_loadu_si256(b.ql.as_ptr().add(64 * h).cast());
                let b2 = _mm256_loadu_si256(b.ql.as_ptr().add(64 * h + 32).cast());
                let hb = _mm256_loadu_si256(b.qh.as_ptr().add(32 * h).cast());
                for m in 0..4 {
                    let lo = match m {
                        0 => _mm256_and_si256(b1, m4),
                        1 => _mm256_and_si256(b2, m4),
                        2 => _mm256_and_si256(_mm256_srli_epi16::<4>(b1), m4),
                        _ => _mm256_and_si256(_mm256_srli_epi16::<4>(b2), m4),
                    };
                    let hi = _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * m as i32)), m3);
                    let q = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi));
                    let run = 4 * h + m;
                    _mm256_storeu_si256((*u).q.as_mut_ptr().add(32 * run).cast(), q);
                    // Sub-blocks 2 run and 2 run + 1 (16 elements each).
                    let a = (2 * run) as u64;
                    let pick =
                        _mm_set_epi64x(((a + 1) * 0x0101_0101_0101_0101) as i64, (a * 0x0101_0101_0101_0101) as i64);
                    let scale = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, pick));
                    _mm256_storeu_si256((*u).sc.as_mut_ptr().add(16 * run).cast(), scale);
                }
            }
            // The -32 offset of every quant, met by the activations' sums of 16.
            let minus32 = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(sc8), _mm256_set1_epi16(-32));
            _mm256_storeu_si256((*u).bias.as_mut_ptr().cast(), minus32);
            (*u).d = half(b.d);
            (*u).dmin = 0.0;
        }
    }
}

/// The operands of one kernel call.
pub(crate) struct TileK {
    /// Super-blocks per row.
    pub nb: usize,
    /// The kernel's first weight row (AVX2: an [`Unpacked`] row, row `r` at `r * nb`
    /// blocks; AVX-512: a [`Pair`] row, pair `p` at `p * nb` blocks).
    pub w: *const u8,
    /// The activation rows (`nb` blocks each).
    pub x: [*const Q8K; MAX_TN],
}

/// Unpacks `rows` weight rows of `nb` super-blocks at `w` into `buf` (the kernel's layout).
///
/// # Safety
/// The ISA is supported; `w` holds `rows * nb` blocks of the function's type; `buf` has
/// room for `rows.next_multiple_of(2) * nb * row_bytes` bytes (see [`KFns`]), 64-aligned.
type RepackFn = unsafe fn(nb: usize, rows: usize, w: *const u8, buf: *mut u8);

/// Dots the tile's weight rows with its activation rows into `out` (`tm x tn`,
/// row-major).
///
/// # Safety
/// The ISA is supported; `op` is as [`TileK`] describes, with `tm` weight rows and `tn`
/// activation rows.
type TileFn = unsafe fn(op: &TileK, out: &mut [f32; MAX_TILE]);

/// AVX2: `out[r][c]` for `TM` [`Unpacked`] weight rows and `TN` activation rows, one
/// 256-bit accumulator per product.
#[inline(always)]
unsafe fn tile_avx2<const MINS: bool, const TM: usize, const TN: usize>(op: &TileK, out: &mut [f32; MAX_TILE]) {
    unsafe {
        let nb = op.nb;
        let wp = op.w.cast::<Unpacked>();
        let mut acc = [[_mm256_setzero_ps(); TN]; TM];
        let mut accm = [[_mm_setzero_ps(); TN]; TM];
        for i in 0..nb {
            let w: [*const Unpacked; TM] = std::array::from_fn(|r| wp.add(r * nb + i));
            let x: [*const Q8K; TN] = std::array::from_fn(|c| op.x[c].add(i));
            let mut s = [[_mm256_setzero_si256(); TN]; TM];
            for j in 0..8 {
                let y: [__m256i; TN] =
                    std::array::from_fn(|c| _mm256_loadu_si256((*x[c]).qs.as_ptr().add(32 * j).cast()));
                for (r, s_r) in s.iter_mut().enumerate() {
                    let q = _mm256_loadu_si256((*w[r]).q.as_ptr().add(32 * j).cast());
                    let sc = _mm256_loadu_si256((*w[r]).sc.as_ptr().add(16 * j).cast());
                    for (a, &yc) in s_r.iter_mut().zip(&y) {
                        *a = _mm256_add_epi32(*a, _mm256_madd_epi16(sc, _mm256_maddubs_epi16(q, yc)));
                    }
                }
            }
            for c in 0..TN {
                let yd = _mm256_broadcast_ss(&(*x[c]).d);
                let bsums = _mm256_loadu_si256((*x[c]).bsums.as_ptr().cast());
                let pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256::<1>(bsums));
                for r in 0..TM {
                    let wr = &*w[r];
                    let mut sumi = s[r][c];
                    if !MINS {
                        let bias = _mm256_loadu_si256(wr.bias.as_ptr().cast());
                        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(bias, bsums));
                    }
                    let dd = _mm256_mul_ps(_mm256_broadcast_ss(&wr.d), yd);
                    acc[r][c] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(sumi), acc[r][c]);
                    if MINS {
                        let mins = _mm_loadu_si128(wr.bias.as_ptr().cast());
                        let m = _mm_cvtepi32_ps(_mm_madd_epi16(mins, pairs));
                        let dm = _mm_mul_ps(_mm_broadcast_ss(&wr.dmin), _mm256_castps256_ps128(yd));
                        accm[r][c] = _mm_fmadd_ps(dm, m, accm[r][c]);
                    }
                }
            }
        }
        for r in 0..TM {
            for c in 0..TN {
                let total = hsum8(acc[r][c]);
                out[r * TN + c] = if MINS { total - hsum4(accm[r][c]) } else { total };
            }
        }
    }
}

/// Two weight rows' super-block unpacked for the AVX-512 kernels, interleaved so that one
/// 512-bit register holds the same run of both rows: each product's eight integer lanes
/// and eight float lanes sit in one half of a register, with no fold at the end of the
/// super-block.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(crate) struct Pair {
    /// Run `j`: the first row's 32 quants, then the second row's.
    q: [u8; 512],
    /// Run `j`: the first row's 16 scale lanes, then the second row's.
    sc: [i16; 256],
    /// The rows' `bias` (see [`Unpacked`]), one after the other.
    bias: [i16; 32],
    /// Q4_K/Q5_K: the first row's eight minimums, then the second row's.
    mins: [i16; 16],
    /// `d` of the first row 8 times, then of the second.
    d: [f32; 16],
    /// `dmin` of the first row 4 times, then of the second.
    dmin: [f32; 8],
}

/// Unpacks rows `2p` and `2p + 1` (the second only when `both`) of super-block `i` into
/// `dst`.
#[inline(always)]
unsafe fn pair_from<W: KWeight>(a: *const W, b: Option<*const W>, dst: *mut Pair) {
    unsafe {
        let mut u = ZERO;
        for (h, src) in [Some(a), b].into_iter().enumerate() {
            let Some(src) = src else { continue };
            W::unpack(src, &mut u);
            for j in 0..8 {
                let q = _mm256_loadu_si256(u.q.as_ptr().add(32 * j).cast());
                _mm256_storeu_si256((*dst).q.as_mut_ptr().add(64 * j + 32 * h).cast(), q);
                let sc = _mm256_loadu_si256(u.sc.as_ptr().add(16 * j).cast());
                _mm256_storeu_si256((*dst).sc.as_mut_ptr().add(32 * j + 16 * h).cast(), sc);
            }
            let bias = _mm256_loadu_si256(u.bias.as_ptr().cast());
            _mm256_storeu_si256((*dst).bias.as_mut_ptr().add(16 * h).cast(), bias);
            _mm_storeu_si128((*dst).mins.as_mut_ptr().add(8 * h).cast(), _mm256_castsi256_si128(bias));
            _mm256_storeu_ps((*dst).d.as_mut_ptr().add(8 * h), _mm256_set1_ps(u.d));
            _mm_storeu_ps((*dst).dmin.as_mut_ptr().add(4 * h), _mm_set1_ps(u.dmin));
        }
    }
}

/// The 32 bytes at `p` in both halves of a 512-bit register.
#[inline(always)]
unsafe fn both_halves(p: *const u8) -> __m512i {
    unsafe { _mm512_broadcast_i64x4(_mm256_loadu_si256(p.cast())) }
}

/// AVX-512: `out[r][c]` for `2 * P` weight rows ([`Pair`]s) and `TN` activation rows,
/// one 512-bit accumulator per two products (`vpdpwssd` for the scale products).
#[inline(always)]
unsafe fn tile_avx512<const MINS: bool, const P: usize, const TN: usize>(op: &TileK, out: &mut [f32; MAX_TILE]) {
    unsafe {
        let nb = op.nb;
        let wp = op.w.cast::<Pair>();
        let mut acc = [[_mm512_setzero_ps(); TN]; P];
        // Q4_K/Q5_K: four rows' minimum terms per register (row 4g + k in lanes 4k..4k+4).
        let mut accm = [[_mm512_setzero_ps(); TN]; P];
        for i in 0..nb {
            let w: [*const Pair; P] = std::array::from_fn(|p| wp.add(p * nb + i));
            let x: [*const Q8K; TN] = std::array::from_fn(|c| op.x[c].add(i));
            let mut s = [[_mm512_setzero_si512(); TN]; P];
            if !MINS {
                for c in 0..TN {
                    let bsums = both_halves((*x[c]).bsums.as_ptr().cast());
                    for p in 0..P {
                        let bias = _mm512_loadu_si512((*w[p]).bias.as_ptr().cast());
                        s[p][c] = _mm512_madd_epi16(bias, bsums);
                    }
                }
            }
            for j in 0..8 {
                let y: [__m512i; TN] = std::array::from_fn(|c| both_halves((*x[c]).qs.as_ptr().add(32 * j).cast()));
                for (p, s_p) in s.iter_mut().enumerate() {
                    let q = _mm512_loadu_si512((*w[p]).q.as_ptr().add(64 * j).cast());
                    let sc = _mm512_loadu_si512((*w[p]).sc.as_ptr().add(32 * j).cast());
                    for (a, &yc) in s_p.iter_mut().zip(&y) {
                        *a = _mm512_dpwssd_epi32(*a, sc, _mm512_maddubs_epi16(q, yc));
                    }
                }
            }
            for c in 0..TN {
                let yd = _mm512_set1_ps((*x[c]).d);
                for p in 0..P {
                    let dd = _mm512_mul_ps(_mm512_loadu_ps((*w[p]).d.as_ptr()), yd);
                    acc[p][c] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(s[p][c]), acc[p][c]);
                }
                if MINS {
                    let bsums = _mm256_loadu_si256((*x[c]).bsums.as_ptr().cast());
                    let pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256::<1>(bsums));
                    let pairs = _mm512_broadcast_i32x4(pairs);
                    for g in 0..P / 2 {
                        let (a, b) = (&*w[2 * g], &*w[2 * g + 1]);
                        let mins = _mm512_inserti64x4::<1>(
                            _mm512_castsi256_si512(_mm256_loadu_si256(a.mins.as_ptr().cast())),
                            _mm256_loadu_si256(b.mins.as_ptr().cast()),
                        );
                        let dmin = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                            _mm512_castpd256_pd512(_mm256_loadu_pd(a.dmin.as_ptr().cast())),
                            _mm256_loadu_pd(b.dmin.as_ptr().cast()),
                        ));
                        let m = _mm512_cvtepi32_ps(_mm512_madd_epi16(mins, pairs));
                        accm[g][c] = _mm512_fmadd_ps(_mm512_mul_ps(dmin, yd), m, accm[g][c]);
                    }
                }
            }
        }
        for (p, acc_p) in acc.iter().enumerate() {
            for (c, &a) in acc_p.iter().enumerate() {
                for h in 0..2 {
                    let r = 2 * p + h;
                    let half = if h == 0 {
                        _mm512_castps512_ps256(a)
                    } else {
                        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a)))
                    };
                    let mut total = hsum8(half);
                    if MINS {
                        let m = accm[r / 4][c];
                        let lane = match r % 4 {
                            0 => _mm512_castps512_ps128(m),
                            1 => _mm512_extractf32x4_ps::<1>(m),
                            2 => _mm512_extractf32x4_ps::<2>(m),
                            _ => _mm512_extractf32x4_ps::<3>(m),
                        };
                        total -= hsum4(lane);
                    }
                    out[r * TN + c] = total;
                }
            }
        }
    }
}

/// The tiled product for one weight type at one ISA level.
#[derive(Clone, Copy)]
pub(crate) struct KFns {
    repack: RepackFn,
    tile: TileFn,
    /// Weight rows per kernel call.
    tm: usize,
    /// Activation rows per kernel call.
    tn: usize,
    /// Bytes of unpacked buffer per weight row and super-block.
    row_bytes: usize,
}

/// Defines the AVX2 entry points of one weight type (tile 2 x 3: six 256-bit
/// accumulators, three activation runs, a quant run and a scale run in the sixteen
/// registers).
macro_rules! avx2 {
    ($($repack:ident, $tile:ident: $w:ty, $mins:literal;)*) => {$(
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $repack(nb: usize, rows: usize, w: *const u8, buf: *mut u8) {
            // SAFETY: forwarded from the caller (see `RepackFn`).
            unsafe {
                let (w, u) = (w.cast::<$w>(), buf.cast::<Unpacked>());
                for i in 0..rows * nb {
                    <$w as KWeight>::unpack(w.add(i), u.add(i));
                }
            }
        }
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $tile(op: &TileK, out: &mut [f32; MAX_TILE]) {
            // SAFETY: forwarded from the caller (see `TileFn`).
            unsafe { tile_avx2::<$mins, 2, 3>(op, out) }
        }
    )*};
}
/// Defines the AVX-512 entry points of one weight type (tile 4 x 4: eight 512-bit
/// accumulators of two products each).
macro_rules! avx512 {
    ($($repack:ident, $tile:ident: $w:ty, $mins:literal;)*) => {$(
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $repack(nb: usize, rows: usize, w: *const u8, buf: *mut u8) {
            // SAFETY: forwarded from the caller (see `RepackFn`).
            unsafe {
                let (w, dst) = (w.cast::<$w>(), buf.cast::<Pair>());
                for p in 0..rows.div_ceil(2) {
                    for i in 0..nb {
                        let a = w.add(2 * p * nb + i);
                        let b = (2 * p + 1 < rows).then(|| w.add((2 * p + 1) * nb + i));
                        pair_from::<$w>(a, b, dst.add(p * nb + i));
                    }
                }
            }
        }
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $tile(op: &TileK, out: &mut [f32; MAX_TILE]) {
            // SAFETY: forwarded from the caller (see `TileFn`).
            unsafe { tile_avx512::<$mins, 2, 4>(op, out) }
        }
    )*};
}
avx2! {
    rp_q4k_avx2, tl_q4k_avx2: Q4K, true;
    rp_q5k_avx2, tl_q5k_avx2: Q5K, true;
    rp_q6k_avx2, tl_q6k_avx2: Q6K, false;
}
avx512! {
    rp_q4k_avx512, tl_q4k_avx512: Q4K, true;
    rp_q5k_avx512, tl_q5k_avx512: Q5K, true;
    rp_q6k_avx512, tl_q6k_avx512: Q6K, false;
}

/// The tiled K-quant product for weights of `dtype` at `isa`, if there is one.
pub(crate) fn kfns(dtype: GgmlDType, isa: super::Isa) -> Option<KFns> {
    use super::Isa;
    let (repack, tile): (RepackFn, TileFn) = match (isa, dtype) {
        (Isa::Avx2, GgmlDType::Q4K) => (rp_q4k_avx2, tl_q4k_avx2),
        (Isa::Avx2, GgmlDType::Q5K) => (rp_q5k_avx2, tl_q5k_avx2),
        (Isa::Avx2, GgmlDType::Q6K) => (rp_q6k_avx2, tl_q6k_avx2),
        (Isa::Avx512, GgmlDType::Q4K) => (rp_q4k_avx512, tl_q4k_avx512),
        (Isa::Avx512, GgmlDType::Q5K) => (rp_q5k_avx512, tl_q5k_avx512),
        (Isa::Avx512, GgmlDType::Q6K) => (rp_q6k_avx512, tl_q6k_avx512),
        _ => return None,
    };
    Some(match isa {
        Isa::Avx512 => KFns { repack, tile, tm: 4, tn: 4, row_bytes: size_of::<Pair>() / 2 },
        _ => KFns { repack, tile, tm: 2, tn: 3, row_bytes: size_of::<Unpacked>() },
    })
}

/// Bytes of unpacked weight rows per tile (they stay in L1 while every activation row
/// passes over them).
const TILE_BYTES: usize = 24 * 1024;

/// 64 bytes of unpacked weights (the buffer's unit: cache-line aligned).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

// The buffer is counted in lines, and a tile holds an even number of rows.
const _: () = assert!(size_of::<Unpacked>().is_multiple_of(64) && size_of::<Pair>().is_multiple_of(64));

thread_local! {
    /// Each thread's buffer of unpacked weight rows, reused across products.
    static KPANEL_BUF: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
}

impl KFns {
    /// `store(r, t, dot(W[r], x[t]))` for the `rows` weight rows at `w` (`nb` blocks each,
    /// of `w_block` bytes) and the `n` Q8_K activation rows at `x` (`nb` blocks each).
    ///
    /// # Safety
    /// The ISA is supported; `w` and `x` hold that many blocks of this product's types.
    pub(crate) unsafe fn run(
        &self,
        nb: usize,
        (w, w_block, rows): (*const u8, usize, usize),
        (x, n): (*const u8, usize),
        mut store: impl FnMut(usize, usize, f32),
    ) {
        if rows == 0 || n == 0 {
            return;
        }
        let (tm, tn) = (self.tm, self.tn);
        let x = x.cast::<Q8K>();
        let tile_rows = (TILE_BYTES / (nb * self.row_bytes)).clamp(tm, 64) / tm * tm;
        KPANEL_BUF.with_borrow_mut(|buf| {
            let lines = tile_rows * nb * self.row_bytes / 64;
            if buf.len() < lines {
                buf.resize(lines, Line([0; 64]));
            }
            let base = buf.as_mut_ptr().cast::<u8>();
            let mut out = [0f32; MAX_TILE];
            let mut r0 = 0;
            while r0 < rows {
                let m = (rows - r0).min(tile_rows);
                // SAFETY: rows r0..r0+m of `w` exist; the buffer holds `tile_rows` rows
                // (an even number).
                unsafe { (self.repack)(nb, m, w.add(r0 * nb * w_block), base) };
                let mut t0 = 0;
                while t0 < n {
                    let cols = (n - t0).min(tn);
                    // Missing activation rows of the last group repeat its last row.
                    let mut op = TileK {
                        nb,
                        w: base,
                        // SAFETY: the row index is below n.
                        x: std::array::from_fn(|c| unsafe { x.add((t0 + c.min(cols - 1)) * nb) }),
                    };
                    let mut g = 0;
                    while g < m {
                        // Rows past `m` in the last group read stale (but initialised)
                        // buffer rows, within `tile_rows`; their results are dropped.
                        // SAFETY: g + tm <= tile_rows; g is even.
                        op.w = unsafe { base.add(g * nb * self.row_bytes) };
                        // SAFETY: the operands are as `TileK` describes.
                        unsafe { (self.tile)(&op, &mut out) };
                        for r in 0..(m - g).min(tm) {
                            for c in 0..cols {
                                store(r0 + g + r, t0 + c, out[r * tn + c]);
                            }
                        }
                        g += tm;
                    }
                    t0 += tn;
                }
                r0 += m;
            }
        });
    }
}
