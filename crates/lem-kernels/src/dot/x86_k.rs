//! x86_64 kernels for the K-quant weight types (Q4_K, Q5_K, Q6_K) against Q8_K
//! activations.
//!
//! Super-blocks hold 256 weights with per-sub-block integer scales, so the products stay
//! in 32-bit integers for a whole super-block (`maddubs` for the 8-bit products, `madd`
//! against the 16-bit sub-block scales) and meet the float scales once. The weights of a
//! super-block are unpacked once per group of activation rows. Constant offsets (Q6_K's
//! `-32`, the mins of Q4_K and Q5_K) are applied through the activation blocks' `bsums`.

use std::arch::x86_64::*;

use candle_core::quantized::GgmlDType;

use super::KernelFn;
use super::blocks::{Q4K, Q5K, Q6K, Q8K};
use super::x86::{Simd, entry, hsum4, hsum8, prefetch_ahead};

/// `acc +` the `u8 x i8` products of `q` and `y` summed in pairs, then against 16-bit
/// scales in pairs again.
#[inline(always)]
unsafe fn scaled_dot<S: Simd>(acc: __m256i, q: __m256i, y: __m256i, scale: __m256i) -> __m256i {
    unsafe { S::madd_acc(acc, scale, _mm256_maddubs_epi16(q, y)) }
}

/// Independent integer accumulators per activation row, so that the `vpdpwssd` of the
/// VNNI level (4-5 cycles of latency) do not form one long dependency chain; rows in
/// flight together need fewer chains each. (Integer sums are exact: the split does not
/// change results.)
const fn chains(k: usize) -> usize {
    if k == 1 { 4 } else { 2 }
}

/// The sum of four integer accumulators.
#[inline(always)]
unsafe fn sum4(s: [__m256i; 4]) -> __m256i {
    unsafe { _mm256_add_epi32(_mm256_add_epi32(s[0], s[1]), _mm256_add_epi32(s[2], s[3])) }
}

/// The 32-byte run `j` (0..8) of activation row `k`'s block `i`.
#[inline(always)]
unsafe fn act_run(x: *const Q8K, j: usize) -> __m256i {
    unsafe { _mm256_loadu_si256((*x).qs.as_ptr().add(32 * j).cast()) }
}

/// The single half at `bits` as a float.
#[inline(always)]
pub(super) unsafe fn half(bits: u16) -> f32 {
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits)))) }
}

/// Unpacks the 12 bytes of 6-bit scales and mins of Q4_K/Q5_K into sixteen 16-bit lanes:
/// the eight scales, then the eight mins.
#[inline(always)]
pub(super) unsafe fn scales_and_mins(scales: &[u8; 12]) -> __m256i {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let u0 = u32::from_le_bytes([scales[0], scales[1], scales[2], scales[3]]);
    let u1 = u32::from_le_bytes([scales[4], scales[5], scales[6], scales[7]]);
    let u2 = u32::from_le_bytes([scales[8], scales[9], scales[10], scales[11]]);
    let t3 = ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4);
    let t2 = u1 & KMASK1;
    let t1 = (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4);
    let t0 = u0 & KMASK1;
    unsafe { _mm256_cvtepu8_epi16(_mm_set_epi32(t3 as i32, t2 as i32, t1 as i32, t0 as i32)) }
}

/// Sixteen lanes of the 16-bit scale in lane `j` (0..8) of `scales` (both halves of
/// `scales` holding the same eight scales).
#[inline(always)]
pub(super) unsafe fn splat_scale(scales: __m256i, j: usize) -> __m256i {
    let lo = (2 * j) as i16;
    unsafe { _mm256_shuffle_epi8(scales, _mm256_set1_epi16(((lo + 1) << 8) | lo)) }
}

/// `sum_j mins[j] * (bsums[2j] + bsums[2j+1])` in four 32-bit lanes.
#[inline(always)]
unsafe fn mins_dot(mins: __m128i, y: *const Q8K) -> __m128i {
    unsafe {
        let bsums = _mm256_loadu_si256((*y).bsums.as_ptr().cast());
        let pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256::<1>(bsums));
        _mm_madd_epi16(mins, pairs)
    }
}

#[allow(clippy::too_many_arguments)]
/// Shared shape of the Q4_K and Q5_K kernels; `quants(j)` gives the unsigned quants of the
/// two 32-element sub-blocks of 64-element run `j` (0..4).
#[inline(always)]
unsafe fn dot_q45k<S: Simd, const K: usize>(
    nb: usize,
    x: *const Q8K,
    i: usize,
    d_bits: (u16, u16),
    scales: &[u8; 12],
    quants: impl Fn(usize) -> (__m256i, __m256i),
    acc: &mut [__m256; K],
    accm: &mut [__m128; K],
) {
    unsafe {
        let d = half(d_bits.0);
        let dmin = half(d_bits.1);
        let sm = scales_and_mins(scales);
        let sc = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sm));
        let mins = _mm256_extracti128_si256::<1>(sm);
        let mut sumi = [[_mm256_setzero_si256(); 4]; K];
        for j in 0..4 {
            let (lo, hi) = quants(j);
            let (sl, sh) = (splat_scale(sc, 2 * j), splat_scale(sc, 2 * j + 1));
            for (k, s) in sumi.iter_mut().enumerate() {
                let y = x.add(k * nb + i);
                let (a, b) = ((2 * j) % chains(K), (2 * j + 1) % chains(K));
                s[a] = scaled_dot::<S>(s[a], lo, act_run(y, 2 * j), sl);
                s[b] = scaled_dot::<S>(s[b], hi, act_run(y, 2 * j + 1), sh);
            }
        }
        for k in 0..K {
            let y = x.add(k * nb + i);
            let yd = (*y).d;
            let m = _mm_cvtepi32_ps(mins_dot(mins, y));
            accm[k] = _mm_fmadd_ps(_mm_set1_ps(dmin * yd), m, accm[k]);
            let sumi = sum4(sumi[k]);
            acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * yd), _mm256_cvtepi32_ps(sumi), acc[k]);
        }
    }
}

/// Q4_K weights against `K` Q8_K activation rows.
#[inline(always)]
unsafe fn dot_q4k<S: Simd, const K: usize>(nb: usize, w: *const Q4K, x: *const Q8K, _xh: *const f32, out: *mut f32) {
    unsafe {
        let m4 = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); K];
        let mut accm = [_mm_setzero_ps(); K];
        for i in 0..nb {
            if K == 1 {
                prefetch_ahead(w.add(i), 1);
            }
            let b = &*w.add(i);
            let quants = |j: usize| {
                let bits = _mm256_loadu_si256(b.qs.as_ptr().add(32 * j).cast());
                (_mm256_and_si256(bits, m4), _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4))
            };
            dot_q45k::<S, K>(nb, x, i, (b.d, b.dmin), &b.scales, quants, &mut acc, &mut accm);
        }
        for k in 0..K {
            *out.add(k) = hsum8(acc[k]) - hsum4(accm[k]);
        }
    }
}

/// Q5_K weights against `K` Q8_K activation rows.
#[inline(always)]
unsafe fn dot_q5k<S: Simd, const K: usize>(nb: usize, w: *const Q5K, x: *const Q8K, _xh: *const f32, out: *mut f32) {
    unsafe {
        let m4 = _mm256_set1_epi8(0x0F);
        let m1 = _mm256_set1_epi8(0x01);
        let mut acc = [_mm256_setzero_ps(); K];
        let mut accm = [_mm_setzero_ps(); K];
        for i in 0..nb {
            if K == 1 {
                prefetch_ahead(w.add(i), 1);
            }
            let b = &*w.add(i);
            let hbits = _mm256_loadu_si256(b.qh.as_ptr().cast());
            let quants = |j: usize| {
                let bits = _mm256_loadu_si256(b.qs.as_ptr().add(32 * j).cast());
                let sh = _mm_cvtsi32_si128((2 * j) as i32);
                let h = _mm256_srl_epi16(hbits, sh);
                let hl = _mm256_slli_epi16::<4>(_mm256_and_si256(h, m1));
                let hh = _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<1>(h), m1));
                let lo = _mm256_or_si256(_mm256_and_si256(bits, m4), hl);
                let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4), hh);
                (lo, hi)
            };
            dot_q45k::<S, K>(nb, x, i, (b.d, b.dmin), &b.scales, quants, &mut acc, &mut accm);
        }
        for k in 0..K {
            *out.add(k) = hsum8(acc[k]) - hsum4(accm[k]);
        }
    }
}

/// Q6_K weights against `K` Q8_K activation rows.
#[inline(always)]
unsafe fn dot_q6k<S: Simd, const K: usize>(nb: usize, w: *const Q6K, x: *const Q8K, _xh: *const f32, out: *mut f32) {
    unsafe {
        let m4 = _mm256_set1_epi8(0x0F);
        let m3 = _mm256_set1_epi8(0x03);
        let mut acc = [_mm256_setzero_ps(); K];
        for i in 0..nb {
            if K == 1 {
                prefetch_ahead(w.add(i), 1);
            }
            let b = &*w.add(i);
            let d = half(b.d);
            let sc8 = _mm_loadu_si128(b.scales.as_ptr().cast());
            // The -32 offset of every quant, through the activation sums of each run of 16.
            let sc16 = _mm256_cvtepi8_epi16(sc8);
            let mut sumi = [[_mm256_setzero_si256(); 4]; K];
            for (k, s) in sumi.iter_mut().enumerate() {
                let y = x.add(k * nb + i);
                let bsums = _mm256_loadu_si256((*y).bsums.as_ptr().cast());
                s[0] = _mm256_sub_epi32(s[0], _mm256_slli_epi32::<5>(_mm256_madd_epi16(sc16, bsums)));
            }
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
                    // Sub-blocks 8h + 2m and 8h + 2m + 1 (16 elements each).
                    let a = (8 * h + 2 * m) as u64;
                    let pick =
                        _mm_set_epi64x(((a + 1) * 0x0101_0101_0101_0101) as i64, (a * 0x0101_0101_0101_0101) as i64);
                    let scale = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, pick));
                    let c = (4 * h + m) % chains(K);
                    for (k, s) in sumi.iter_mut().enumerate() {
                        let y = act_run(x.add(k * nb + i), 4 * h + m);
                        s[c] = scaled_dot::<S>(s[c], q, y, scale);
                    }
                }
            }
            for k in 0..K {
                let yd = (*x.add(k * nb + i)).d;
                acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * yd), _mm256_cvtepi32_ps(sum4(sumi[k])), acc[k]);
            }
        }
        for (k, a) in acc.iter().enumerate() {
            *out.add(k) = hsum8(*a);
        }
    }
}

entry!(q4k_avx2, dot_q4k, Q4K, Avx2);
entry!(q5k_avx2, dot_q5k, Q5K, Avx2);
entry!(q6k_avx2, dot_q6k, Q6K, Avx2);
entry!(q4k_avx512, dot_q4k, Q4K, Avx512);
entry!(q5k_avx512, dot_q5k, Q5K, Avx512);
entry!(q6k_avx512, dot_q6k, Q6K, Avx512);

/// The AVX2 K-quant kernel for weights of `dtype`, if any.
pub(super) fn kernel_avx2(dtype: GgmlDType) -> Option<KernelFn> {
    Some(match dtype {
        GgmlDType::Q4K => q4k_avx2,
        GgmlDType::Q5K => q5k_avx2,
        GgmlDType::Q6K => q6k_avx2,
        _ => return None,
    })
}

/// The AVX-512 K-quant kernel for weights of `dtype`, if any.
pub(super) fn kernel_avx512(dtype: GgmlDType) -> Option<KernelFn> {
    Some(match dtype {
        GgmlDType::Q4K => q4k_avx512,
        GgmlDType::Q5K => q5k_avx512,
        GgmlDType::Q6K => q6k_avx512,
        _ => return None,
    })
}
