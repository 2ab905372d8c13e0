//! x86_64 kernels for the 32-element block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), the
//! instruction-set abstraction they share with the K-quant kernels, and the dispatch
//! tables.
//!
//! Kernel bodies are `#[inline(always)]` generic functions over a [`Simd`] level and the
//! number of activation rows `K`; thin `#[target_feature]` entry points instantiate them,
//! so the same source compiles once for AVX2 and once for AVX-512 (where the 8-bit
//! products become `vpdpbusd` and the compiler may use the extra registers).
//!
//! Block scales are half floats; four blocks' worth are packed into one register and
//! converted with F16C at once, their products broadcast per block with `vpermps`.

use std::arch::x86_64::*;

use candle_core::quantized::GgmlDType;

use super::KernelFn;
use super::blocks::{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1};
use super::x86_k;

/// The operations whose best form differs between AVX2 and AVX-512.
pub(super) trait Simd {
    /// Products of unsigned bytes `a` with signed bytes `b`, summed in groups of four
    /// adjacent bytes into eight `i32` lanes. `a` must be below 128 where `b` is -128 (the
    /// AVX2 form goes through saturating 16-bit pair sums).
    unsafe fn dot_u8i8(a: __m256i, b: __m256i) -> __m256i;
    /// Signed 5-bit values: `nib - 16` where bit `i` of `bits` is clear, `nib` where set.
    unsafe fn q5_signed(nib: __m256i, bits: u32) -> __m256i;
    /// Unsigned 5-bit values: `nib + 16` where bit `i` of `bits` is set.
    unsafe fn q5_unsigned(nib: __m256i, bits: u32) -> __m256i;
    /// `acc + madd(a, b)`: 16-bit products summed in pairs into the 32-bit lanes of `acc`.
    unsafe fn madd_acc(acc: __m256i, a: __m256i, b: __m256i) -> __m256i;
}

/// The half-float headers of `G` (1..=4) consecutive blocks at `p`, as floats: with
/// `B::PAIRED`, lanes `2j` and `2j + 1` hold block `j`'s two halves, else lane `j` holds
/// its one half; unused lanes are zero. Scalar loads packed into one register for one
/// conversion.
///
/// The loads are volatile so that LLVM keeps them scalar: with AVX-512 enabled it likes
/// to merge them into a masked 512-bit load and `vpermd`, which is no faster on Zen 4 and
/// slower on Intel, where any 512-bit instruction takes a 256-bit vector port away.
#[inline(always)]
unsafe fn headers<B: Block32, const G: usize>(p: *const B) -> __m256 {
    unsafe {
        let half = |j: usize, w: usize| u64::from(p.add(j).cast::<u16>().add(w).read_volatile());
        if B::PAIRED {
            // Both halves of a block in one load.
            let h = |j: usize| u64::from(p.add(j).cast::<u32>().read_unaligned());
            let lo = if G > 1 { h(0) | (h(1) << 32) } else { h(0) };
            let hi = match G {
                4 => h(2) | (h(3) << 32),
                3 => h(2),
                _ => 0,
            };
            _mm256_cvtph_ps(_mm_set_epi64x(hi as i64, lo as i64))
        } else {
            let mut packed = 0u64;
            for j in 0..G {
                packed |= half(j, 0) << (16 * j);
            }
            _mm256_cvtph_ps(_mm_cvtsi64_si128(packed as i64))
        }
    }
}

/// AVX2 + FMA + F16C.
pub(super) struct Avx2;

/// AVX2 plus AVX-512 BW, VL and VNNI.
pub(super) struct Avx512;

/// One byte per bit of `bits`: 0xFF where the bit is set, else 0 (AVX2).
#[inline(always)]
unsafe fn bytes_from_bits(bits: u32) -> __m256i {
    unsafe {
        let shuf = _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0);
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuf);
        let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
        _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi64x(-1))
    }
}

impl Simd for Avx2 {
    #[inline(always)]
    unsafe fn dot_u8i8(a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)) }
    }

    #[inline(always)]
    unsafe fn q5_signed(nib: __m256i, bits: u32) -> __m256i {
        unsafe {
            let hi = _mm256_andnot_si256(bytes_from_bits(bits), _mm256_set1_epi8(0xF0u8 as i8));
            _mm256_or_si256(nib, hi)
        }
    }

    #[inline(always)]
    unsafe fn q5_unsigned(nib: __m256i, bits: u32) -> __m256i {
        unsafe {
            let hi = _mm256_and_si256(bytes_from_bits(bits), _mm256_set1_epi8(0x10));
            _mm256_or_si256(nib, hi)
        }
    }

    #[inline(always)]
    unsafe fn madd_acc(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)) }
    }
}

impl Simd for Avx512 {
    #[inline(always)]
    unsafe fn dot_u8i8(a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b) }
    }

    #[inline(always)]
    unsafe fn q5_signed(nib: __m256i, bits: u32) -> __m256i {
        unsafe { _mm256_mask_sub_epi8(nib, !bits, nib, _mm256_set1_epi8(16)) }
    }

    #[inline(always)]
    unsafe fn q5_unsigned(nib: __m256i, bits: u32) -> __m256i {
        unsafe { _mm256_mask_add_epi8(nib, bits, nib, _mm256_set1_epi8(16)) }
    }

    #[inline(always)]
    unsafe fn madd_acc(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        // Explicit `vpdpwssd`: written as madd + add, LLVM fuses it anyway but also
        // reassociates independent accumulators into one long dependency chain.
        unsafe { _mm256_dpwssd_epi32(acc, a, b) }
    }
}

/// Sum of the eight lanes.
#[inline(always)]
pub(super) unsafe fn hsum8(x: __m256) -> f32 {
    unsafe { hsum4(_mm_add_ps(_mm256_extractf128_ps::<1>(x), _mm256_castps256_ps128(x))) }
}

/// Sum of the four lanes.
#[inline(always)]
pub(super) unsafe fn hsum4(x: __m128) -> f32 {
    unsafe {
        let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
        let x = _mm_add_ss(x, _mm_movehdup_ps(x));
        _mm_cvtss_f32(x)
    }
}

/// The 32 nibbles of 16 bytes as bytes: low nibbles first, then high nibbles.
#[inline(always)]
unsafe fn nibbles(qs: *const u8) -> __m256i {
    unsafe {
        // Both halves from one broadcast load; the upper half shifted by a nibble.
        let both = _mm256_broadcastsi128_si256(_mm_loadu_si128(qs.cast()));
        let both = _mm256_srlv_epi64(both, _mm256_set_epi64x(4, 4, 0, 0));
        _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
    }
}

/// A 32-element block type whose header (one or two halves) starts the block.
pub(super) trait Block32 {
    /// Two halves (scale and minimum, or scale and sum) rather than one.
    const PAIRED: bool;
    /// Floats per block in the f32 headers `act_headers` writes (as `header_floats`).
    const HEADER_FLOATS: usize = if Self::PAIRED { 2 } else { 1 };
}

/// A weight block type of 32 elements.
pub(super) trait Weight32: Block32 {
    /// The activation block type it is dotted with (paired exactly when `Self` is).
    type Act: Act32;
    /// The 32 quants as bytes in element order: i8 without a minimum (products use the
    /// sign trick), u8 with one (met by the activation block's `s`).
    unsafe fn quants<S: Simd>(p: *const Self) -> __m256i;
}

/// An 8-bit activation block type of 32 elements.
pub(super) trait Act32: Block32 {
    /// The 32 quants.
    unsafe fn qs(p: *const Self) -> __m256i;
}

impl Block32 for Q8_0 {
    const PAIRED: bool = false;
}
impl Block32 for Q8_1 {
    const PAIRED: bool = true;
}
impl Block32 for Q4_0 {
    const PAIRED: bool = false;
}
impl Block32 for Q4_1 {
    const PAIRED: bool = true;
}
impl Block32 for Q5_0 {
    const PAIRED: bool = false;
}
impl Block32 for Q5_1 {
    const PAIRED: bool = true;
}

impl Act32 for Q8_0 {
    #[inline(always)]
    unsafe fn qs(p: *const Self) -> __m256i {
        unsafe { _mm256_loadu_si256((*p).qs.as_ptr().cast()) }
    }
}

impl Act32 for Q8_1 {
    #[inline(always)]
    unsafe fn qs(p: *const Self) -> __m256i {
        unsafe { _mm256_loadu_si256((*p).qs.as_ptr().cast()) }
    }
}

impl Weight32 for Q4_0 {
    type Act = Q8_0;
    #[inline(always)]
    unsafe fn quants<S: Simd>(p: *const Self) -> __m256i {
        unsafe { _mm256_sub_epi8(nibbles((*p).qs.as_ptr()), _mm256_set1_epi8(8)) }
    }
}

impl Weight32 for Q4_1 {
    type Act = Q8_1;
    #[inline(always)]
    unsafe fn quants<S: Simd>(p: *const Self) -> __m256i {
        unsafe { nibbles((*p).qs.as_ptr()) }
    }
}

impl Weight32 for Q5_0 {
    type Act = Q8_0;
    #[inline(always)]
    unsafe fn quants<S: Simd>(p: *const Self) -> __m256i {
        unsafe { S::q5_signed(nibbles((*p).qs.as_ptr()), u32::from_le_bytes((*p).qh)) }
    }
}

impl Weight32 for Q5_1 {
    type Act = Q8_1;
    #[inline(always)]
    unsafe fn quants<S: Simd>(p: *const Self) -> __m256i {
        unsafe { S::q5_unsigned(nibbles((*p).qs.as_ptr()), u32::from_le_bytes((*p).qh)) }
    }
}

impl Weight32 for Q8_0 {
    type Act = Q8_0;
    #[inline(always)]
    unsafe fn quants<S: Simd>(p: *const Self) -> __m256i {
        unsafe { _mm256_loadu_si256((*p).qs.as_ptr().cast()) }
    }
}

/// Independent float accumulators per activation row (blocks alternate between them),
/// to shorten the FMA dependency chain. The same for every row count, so that a row's
/// result does not depend on how many rows it was computed with.
const ACC_LANES: usize = 2;

/// The f32 headers (from `act_headers`) of `G` (1..=4) consecutive activation blocks at
/// `p`, laid out as [`headers`] lays out half headers; unused lanes are zero.
#[inline(always)]
unsafe fn act_headers<A: Block32, const G: usize>(p: *const f32) -> __m256 {
    unsafe {
        match (A::PAIRED, G) {
            (true, 4) => _mm256_loadu_ps(p),
            (false, 4) => _mm256_zextps128_ps256(_mm_loadu_ps(p)),
            (true, 1) => _mm256_zextps128_ps256(_mm_castpd_ps(_mm_load_sd(p.cast()))),
            (false, 1) => _mm256_zextps128_ps256(_mm_load_ss(p)),
            _ => {
                let mut v = [0f32; 8];
                let n = if A::PAIRED { 2 * G } else { G };
                std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), n);
                _mm256_loadu_ps(v.as_ptr())
            }
        }
    }
}

/// How far ahead of the current block a one-row product prefetches its weights.
const PREFETCH_BYTES: usize = 2048;

/// Prefetches the `count` blocks that lie [`PREFETCH_BYTES`] after `p`. A decode step
/// streams every weight once, and fetching ahead of the hardware prefetchers (which stop
/// at page boundaries and ramp up slowly) measured 20-45% faster one-row products on
/// matrices larger than the caches (`LEM_BENCH_ROWS=65536 LEM_BENCH_N=1 cargo bench
/// -p lem-kernels --bench matmul`).
#[inline(always)]
pub(super) fn prefetch_ahead<W>(p: *const W, count: usize) {
    let ahead = p.cast::<i8>().wrapping_add(PREFETCH_BYTES);
    let mut off = 0;
    while off < count * std::mem::size_of::<W>() {
        // SAFETY: prefetches never fault, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(off)) };
        off += 64;
    }
}

/// Accumulates `G` (1..=4) consecutive blocks starting at block `i` of the weight row
/// `w` against the `K` activation rows at `x` (row stride `nb` blocks, headers at `xh`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn group<W: Weight32, S: Simd, const K: usize, const G: usize>(
    nb: usize,
    w: *const W,
    x: *const W::Act,
    xh: *const f32,
    i: usize,
    acc: &mut [[__m256; ACC_LANES]; K],
    accm: &mut [__m256; K],
    spill: (*mut f32, *const f32),
) {
    unsafe {
        let wp = w.add(i);
        if K == 1 && G == 4 {
            prefetch_ahead(wp, 4);
        }
        let wh = headers::<W, G>(wp);
        let mut q = [_mm256_setzero_si256(); G];
        let mut qa = [_mm256_setzero_si256(); G];
        for j in 0..G {
            q[j] = W::quants::<S>(wp.add(j));
            qa[j] = if W::PAIRED { q[j] } else { _mm256_sign_epi8(q[j], q[j]) };
        }
        for k in 0..K {
            let xp = x.add(k * nb + i);
            let prod = _mm256_mul_ps(wh, act_headers::<W::Act, G>(xh.add((k * nb + i) * W::Act::HEADER_FLOATS)));
            if W::PAIRED {
                accm[k] = _mm256_add_ps(accm[k], prod);
            }
            // With a minimum, the products go through memory, so that each block's scale
            // is broadcast by a load (a load port) rather than by shuffles: LLVM's
            // two-instruction broadcasts of lanes 2, 4 and 6 saturated the shuffle port
            // (16-20% faster Q4_1 products at 1 to 16 rows; no gain for Q8_0, whose
            // sign operations keep the other ports busier, so it keeps the shuffles).
            let spilled = G > 1 && W::PAIRED;
            if spilled {
                _mm256_storeu_ps(spill.0.add(8 * k), prod);
            }
            let sp = spill.1.add(8 * k);
            for j in 0..G {
                let y = W::Act::qs(xp.add(j));
                let y = if W::PAIRED { y } else { _mm256_sign_epi8(y, q[j]) };
                let p = _mm256_cvtepi32_ps(S::dot_u8i8(qa[j], y));
                let lane = if W::PAIRED { 2 * j } else { j };
                let sj = if spilled {
                    _mm256_broadcast_ss(&*sp.add(lane))
                } else if lane == 0 {
                    _mm256_broadcastss_ps(_mm256_castps256_ps128(prod))
                } else {
                    _mm256_permutevar8x32_ps(prod, _mm256_set1_epi32(lane as i32))
                };
                let a = &mut acc[k][if G == 1 { 0 } else { j % ACC_LANES }];
                *a = _mm256_fmadd_ps(sj, p, *a);
            }
        }
    }
}

/// Dots the `nb`-block weight row `w` with `K` activation rows at `x`, into `out[..K]`.
#[inline(always)]
unsafe fn dot32<W: Weight32, S: Simd, const K: usize>(
    nb: usize,
    w: *const W,
    x: *const W::Act,
    xh: *const f32,
    out: *mut f32,
) {
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); ACC_LANES]; K];
        let mut accm = [_mm256_setzero_ps(); K];
        // Room for each activation row's scale products (types with a minimum, see
        // `group`), written and read through two pointers LLVM cannot tell are equal:
        // with one, it forwards the stored vector to the broadcasts as shuffles again.
        let mut room = std::mem::MaybeUninit::<[__m256; K]>::uninit();
        let p = room.as_mut_ptr().cast::<f32>();
        let spill = if W::PAIRED {
            (std::hint::black_box(p), std::hint::black_box(p).cast_const())
        } else {
            (p, p.cast_const())
        };
        let mut i = 0;
        while i + 4 <= nb {
            group::<W, S, K, 4>(nb, w, x, xh, i, &mut acc, &mut accm, spill);
            i += 4;
        }
        while i < nb {
            group::<W, S, K, 1>(nb, w, x, xh, i, &mut acc, &mut accm, spill);
            i += 1;
        }
        for k in 0..K {
            let mut sum = acc[k][0];
            for a in &acc[k][1..] {
                sum = _mm256_add_ps(sum, *a);
            }
            let mut total = hsum8(sum);
            if W::PAIRED {
                // The minimum's products sit in the odd lanes.
                total += hsum8(_mm256_blend_ps::<0b1010_1010>(_mm256_setzero_ps(), accm[k]));
            }
            *out.add(k) = total;
        }
    }
}

/// What an entry point needs to know about a weight block type beyond its kernel body:
/// the activation block it meets and how many activation rows one body call takes.
pub(super) trait Rows {
    /// The activation block type.
    type Act;
    /// Floats of f32 header per activation block (as `header_floats`).
    const HEADER_FLOATS: usize;
    /// The most activation rows one body call handles at AVX2 (16 vector registers) and
    /// at AVX-512 (32): as many as keep the accumulators in registers.
    const MAX_ROWS: [usize; 2];
}

macro_rules! rows_32 {
    ($($w:ty: $max:expr),*) => {$(
        impl Rows for $w {
            type Act = <$w as Weight32>::Act;
            const HEADER_FLOATS: usize = <<$w as Weight32>::Act as Block32>::HEADER_FLOATS;
            const MAX_ROWS: [usize; 2] = $max;
        }
    )*};
}
// The types with a minimum keep a second accumulator per row (8 rows would spill).
rows_32!(Q4_0: [4, 8], Q4_1: [4, 4], Q5_0: [4, 8], Q5_1: [4, 4], Q8_0: [4, 8]);

macro_rules! rows_k {
    ($($w:ty),*) => {$(
        impl Rows for $w {
            type Act = super::blocks::Q8K;
            const HEADER_FLOATS: usize = 0;
            const MAX_ROWS: [usize; 2] = [4, 4];
        }
    )*};
}
rows_k!(super::blocks::Q4K, super::blocks::Q5K, super::blocks::Q6K);

/// `k`, at most `max`: the row count of an entry point's match arm for `k` rows, which
/// types that take fewer rows per call never reach (and so never instantiate).
pub(super) const fn cap(k: usize, max: usize) -> usize {
    if k < max { k } else { max }
}

/// Defines a `KernelFn` entry point at one ISA level (`Avx2` or `Avx512`): the loops over
/// weight rows and groups of activation rows, calling the body once per weight row and
/// group.
macro_rules! entry {
    ($name:ident, $body:ident, $w:ty, Avx2) => {
        $crate::dot::x86::entry!(@ $name, $body, $w, $crate::dot::x86::Avx2, 0, "avx2,fma,f16c");
    };
    ($name:ident, $body:ident, $w:ty, Avx512) => {
        $crate::dot::x86::entry!(
            @ $name, $body, $w, $crate::dot::x86::Avx512, 1,
            "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"
        );
    };
    (@ $name:ident, $body:ident, $w:ty, $s:ty, $level:literal, $features:literal) => {
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(
            nb: usize,
            w: *const u8,
            x: *const u8,
            xh: *const f32,
            n: usize,
            rows: usize,
            out: *mut f32,
            stride: [usize; 2],
        ) {
            use $crate::dot::x86::Rows;
            // SAFETY: forwarded from the caller (see `KernelFn`).
            unsafe {
                let w = w.cast::<$w>();
                let max = <$w as Rows>::MAX_ROWS[$level];
                let act = nb * std::mem::size_of::<<$w as Rows>::Act>();
                let heads = nb * <$w as Rows>::HEADER_FLOATS;
                let [ts, rs] = stride;
                // The row loop sits inside the entry point, so that a product's many short
                // rows cost one indirect call per worker share, not one per row.
                for r in 0..rows {
                    let wr = w.add(r * nb);
                    if n == 1 {
                        // A decode step: the body prefetches the streamed weights itself.
                        $body::<$s, 1>(nb, wr, x.cast(), xh, out.add(r * rs));
                        continue;
                    }
                    // A few activation rows: this weight row meets them all while it is
                    // in L1 (they stay there across weight rows); fetch the weights
                    // ahead as the one-row product does.
                    $crate::dot::x86::prefetch_ahead(wr, nb);
                    let mut t = 0;
                    while t < n {
                        let k = (n - t).min(max);
                        let (xs, hs) = (x.add(t * act).cast(), xh.add(t * heads));
                        let mut o = [0f32; 8];
                        let op = o.as_mut_ptr();
                        match k {
                            1 => $body::<$s, 1>(nb, wr, xs, hs, op),
                            2 => $body::<$s, 2>(nb, wr, xs, hs, op),
                            3 => $body::<$s, 3>(nb, wr, xs, hs, op),
                            4 => $body::<$s, 4>(nb, wr, xs, hs, op),
                            5 => $body::<$s, { $crate::dot::x86::cap(5, <$w as Rows>::MAX_ROWS[$level]) }>(nb, wr, xs, hs, op),
                            6 => $body::<$s, { $crate::dot::x86::cap(6, <$w as Rows>::MAX_ROWS[$level]) }>(nb, wr, xs, hs, op),
                            7 => $body::<$s, { $crate::dot::x86::cap(7, <$w as Rows>::MAX_ROWS[$level]) }>(nb, wr, xs, hs, op),
                            _ => $body::<$s, { $crate::dot::x86::cap(8, <$w as Rows>::MAX_ROWS[$level]) }>(nb, wr, xs, hs, op),
                        }
                        for (j, &v) in o[..k].iter().enumerate() {
                            *out.add((t + j) * ts + r * rs) = v;
                        }
                        t += k;
                    }
                }
            }
        }
    };
}
pub(super) use entry;

entry!(q4_0_avx2, dot32_q4_0, Q4_0, Avx2);
entry!(q4_1_avx2, dot32_q4_1, Q4_1, Avx2);
entry!(q5_0_avx2, dot32_q5_0, Q5_0, Avx2);
entry!(q5_1_avx2, dot32_q5_1, Q5_1, Avx2);
entry!(q8_0_avx2, dot32_q8_0, Q8_0, Avx2);
entry!(q4_0_avx512, dot32_q4_0, Q4_0, Avx512);
entry!(q4_1_avx512, dot32_q4_1, Q4_1, Avx512);
entry!(q5_0_avx512, dot32_q5_0, Q5_0, Avx512);
entry!(q5_1_avx512, dot32_q5_1, Q5_1, Avx512);
entry!(q8_0_avx512, dot32_q8_0, Q8_0, Avx512);

/// Defines `dot32_<type>::<S, K>` wrappers of [`dot32`] with the weight type fixed.
macro_rules! dot32_for {
    ($($name:ident: $w:ty),*) => {$(
        #[inline(always)]
        unsafe fn $name<S: Simd, const K: usize>(
            nb: usize,
            w: *const $w,
            x: *const <$w as Weight32>::Act,
            xh: *const f32,
            out: *mut f32,
        ) {
            // SAFETY: forwarded from the caller.
            unsafe { dot32::<$w, S, K>(nb, w, x, xh, out) }
        }
    )*};
}
dot32_for!(dot32_q4_0: Q4_0, dot32_q4_1: Q4_1, dot32_q5_0: Q5_0, dot32_q5_1: Q5_1, dot32_q8_0: Q8_0);

/// The AVX2 kernel for weights of `dtype`, if any.
pub(super) fn kernel_avx2(dtype: GgmlDType) -> Option<KernelFn> {
    Some(match dtype {
        GgmlDType::Q4_0 => q4_0_avx2,
        GgmlDType::Q4_1 => q4_1_avx2,
        GgmlDType::Q5_0 => q5_0_avx2,
        GgmlDType::Q5_1 => q5_1_avx2,
        GgmlDType::Q8_0 => q8_0_avx2,
        _ => return x86_k::kernel_avx2(dtype),
    })
}

/// The AVX-512 kernel for weights of `dtype`, if any.
pub(super) fn kernel_avx512(dtype: GgmlDType) -> Option<KernelFn> {
    Some(match dtype {
        GgmlDType::Q4_0 => q4_0_avx512,
        GgmlDType::Q4_1 => q4_1_avx512,
        GgmlDType::Q5_0 => q5_0_avx512,
        GgmlDType::Q5_1 => q5_1_avx512,
        GgmlDType::Q8_0 => q8_0_avx512,
        _ => return x86_k::kernel_avx512(dtype),
    })
}
