//! Activation quantization (f32 rows to Q8_0, Q8_1 or Q8_K blocks) with AVX2.
//!
//! Bit for bit the arithmetic of `crate::quant_act` (GGML's x86 choices: `d = amax / 127`,
//! `id = 127 / amax`, round half to even, Q8_1's `s = f16(d * sum)` with `d` in f32, Q8_K
//! scaled by its first element of largest magnitude), eight lanes at a time. Scalar
//! quantization cost about a fifth of a whole matrix product.

use std::arch::x86_64::*;

use super::blocks::{Q8_0, Q8_1, Q8K};

/// Largest absolute value of the eight lanes, in every lane.
#[inline(always)]
unsafe fn max_all(v: __m256) -> __m256 {
    unsafe {
        let v = _mm256_max_ps(v, _mm256_permute2f128_ps::<1>(v, v));
        let v = _mm256_max_ps(v, _mm256_permute_ps::<0b0100_1110>(v));
        _mm256_max_ps(v, _mm256_permute_ps::<0b1011_0001>(v))
    }
}

/// `|x|` for the 32 floats at `x`, reduced to their maximum (in every lane), and the
/// four loaded vectors.
#[inline(always)]
unsafe fn load32_amax(x: *const f32) -> ([__m256; 4], __m256) {
    unsafe {
        let abs = _mm256_set1_ps(-0.0);
        let v = [_mm256_loadu_ps(x), _mm256_loadu_ps(x.add(8)), _mm256_loadu_ps(x.add(16)), _mm256_loadu_ps(x.add(24))];
        let m01 = _mm256_max_ps(_mm256_andnot_ps(abs, v[0]), _mm256_andnot_ps(abs, v[1]));
        let m23 = _mm256_max_ps(_mm256_andnot_ps(abs, v[2]), _mm256_andnot_ps(abs, v[3]));
        (v, max_all(_mm256_max_ps(m01, m23)))
    }
}

/// `v * id` rounded half to even (the default rounding mode) for four vectors, packed to
/// 32 bytes in element order (saturating to the i8 range).
#[inline(always)]
unsafe fn quantize32(v: [__m256; 4], id: __m256) -> __m256i {
    unsafe {
        let q = |v: __m256| _mm256_cvtps_epi32(_mm256_mul_ps(v, id));
        let a = _mm256_packs_epi32(q(v[0]), q(v[1]));
        let b = _mm256_packs_epi32(q(v[2]), q(v[3]));
        let bytes = _mm256_packs_epi16(a, b);
        _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }
}

/// The half-float bits of `x` (round to nearest even, as `half::f16::from_f32`).
#[inline(always)]
unsafe fn to_half(x: f32) -> u16 {
    unsafe {
        let h = _mm_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(_mm_set_ss(x));
        _mm_extract_epi16::<0>(h) as u16
    }
}

/// The scale `amax / 127` and the inverse `127 / amax` (0 for an all-zero block).
#[inline(always)]
unsafe fn scale(amax: __m256) -> (f32, __m256) {
    unsafe {
        let amax = _mm256_cvtss_f32(amax);
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        (amax / 127.0, _mm256_set1_ps(id))
    }
}

/// Quantizes `n` floats at `x` (a multiple of 32) into `n / 32` Q8_0 blocks at `y`.
///
/// # Safety
/// AVX2, FMA and F16C are available; `x` has `n` readable floats and `y` room for the
/// blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q8_0(x: *const f32, n: usize, y: *mut Q8_0) {
    for b in 0..n / 32 {
        unsafe {
            let (v, amax) = load32_amax(x.add(32 * b));
            let (d, id) = scale(amax);
            let out = &mut *y.add(b);
            out.d = to_half(d);
            _mm256_storeu_si256(out.qs.as_mut_ptr().cast(), quantize32(v, id));
        }
    }
}

/// Quantizes `n` floats at `x` (a multiple of 32) into `n / 32` Q8_1 blocks at `y`.
///
/// # Safety
/// As [`q8_0`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q8_1(x: *const f32, n: usize, y: *mut Q8_1) {
    for b in 0..n / 32 {
        unsafe {
            let (v, amax) = load32_amax(x.add(32 * b));
            let (d, id) = scale(amax);
            let q = quantize32(v, id);
            let out = &mut *y.add(b);
            out.d = to_half(d);
            _mm256_storeu_si256(out.qs.as_mut_ptr().cast(), q);
            out.s = to_half(d * hsum_i8(q) as f32);
        }
    }
}

/// Sum of the 32 signed bytes.
#[inline(always)]
unsafe fn hsum_i8(q: __m256i) -> i32 {
    unsafe {
        let w = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q), _mm256_set1_epi16(1));
        let s = _mm_add_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b0100_1110>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b1011_0001>(s));
        _mm_cvtsi128_si32(s)
    }
}

/// Quantizes `n` floats at `x` (a multiple of 256) into `n / 256` Q8_K blocks at `y`.
///
/// # Safety
/// As [`q8_0`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q8k(x: *const f32, n: usize, y: *mut Q8K) {
    for b in 0..n / 256 {
        unsafe {
            let xb = x.add(256 * b);
            let out = &mut *y.add(b);
            let mut amax = _mm256_setzero_ps();
            for c in 0..8 {
                amax = _mm256_max_ps(amax, load32_amax(xb.add(32 * c)).1);
            }
            let amax_s = _mm256_cvtss_f32(amax);
            if amax_s == 0.0 {
                out.d = 0.0;
                out.qs.fill(0);
                out.bsums.fill(0);
                continue;
            }
            // The first element of largest magnitude, with its sign.
            let abs = _mm256_set1_ps(-0.0);
            let mut max = amax_s;
            for c in 0..32 {
                let v = _mm256_loadu_ps(xb.add(8 * c));
                let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_andnot_ps(abs, v), amax));
                if hit != 0 {
                    max = *xb.add(8 * c + hit.trailing_zeros() as usize);
                    break;
                }
            }
            let iscale = -127.0 / max;
            let is = _mm256_set1_ps(iscale);
            for c in 0..8 {
                let v = [
                    _mm256_loadu_ps(xb.add(32 * c)),
                    _mm256_loadu_ps(xb.add(32 * c + 8)),
                    _mm256_loadu_ps(xb.add(32 * c + 16)),
                    _mm256_loadu_ps(xb.add(32 * c + 24)),
                ];
                // |iscale * x| <= 127 up to rounding, and the saturating packs clamp.
                let q = quantize32(v, is);
                _mm256_storeu_si256(out.qs.as_mut_ptr().add(32 * c).cast(), q);
                // Sums of each run of 16: pairs, then quads, then two more rounds.
                let w = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q), _mm256_set1_epi16(1));
                let h = _mm256_hadd_epi32(w, w);
                let h = _mm256_hadd_epi32(h, h);
                out.bsums[2 * c] = _mm256_extract_epi32::<0>(h) as i16;
                out.bsums[2 * c + 1] = _mm256_extract_epi32::<4>(h) as i16;
            }
            out.d = 1.0 / iscale;
        }
    }
}
