//! MXFP4 (GGML type 39, gpt-oss's expert weights): blocks of 32 weights, one shared
//! E8M0 scale byte (a power of two, `2^(e - 127)`) and 16 bytes of 4-bit E2M1 values
//! (sign, 2 exponent bits, 1 mantissa bit: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives),
//! weight `i < 16` in the low nibble of byte `i`, weight `i + 16` in its high nibble.
//!
//! Dot products run against Q8_0 activation blocks as in GGML: the E2M1 values are
//! doubled to the integers of [`KVALUES`] so every block's sum is exact in integers, and
//! the scale is halved to compensate ([`e8m0_half`]); each block then adds
//! `f16(x.d) * e8m0_half(w.e) * sum` to the result. [`dot_q8_0`] dispatches at run time
//! to AVX2 or AVX-512 (VNNI) kernels, which sum blocks in eight interleaved lanes and may
//! differ from [`dot_q8_0_scalar`] in the last bits; each is deterministic for its rows.
//!
//! The type is not yet one of [`crate::QMatrix`]'s storage types: candle, which lem's
//! `GgmlDType` comes from, has no MXFP4 (its GGUF reader refuses type 39), so these
//! kernels are the tested building block that storage will use.

use candle_core::quantized::k_quants::BlockQ8_0;

use super::Isa;

/// Weights per block.
pub const BLOCK: usize = 32;

/// One MXFP4 block (17 bytes, GGML's `block_mxfp4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct BlockMxfp4 {
    /// E8M0 scale: the block's weights are multiplied by `2^(e - 127)`.
    pub e: u8,
    /// Two 4-bit E2M1 codes per byte (low nibbles first half, high nibbles second).
    pub qs: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<BlockMxfp4>() == 17 && std::mem::align_of::<BlockMxfp4>() == 1);

/// The E2M1 values times two, by 4-bit code (code 8 is negative zero).
pub const KVALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Half the E8M0 scale, `2^(e - 128)`, exactly (subnormal for `e < 2`), to go with the
/// doubled [`KVALUES`].
pub fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 { 0x0020_0000u32 << e } else { u32::from(e - 1) << 23 };
    f32::from_bits(bits)
}

/// The 32 weights of every block of `w`, block after block, into `out`.
pub fn dequantize(w: &[BlockMxfp4], out: &mut [f32]) {
    assert_eq!(out.len(), w.len() * BLOCK, "MXFP4 dequantize: size mismatch");
    for (b, o) in w.iter().zip(out.chunks_exact_mut(BLOCK)) {
        let d = e8m0_half(b.e);
        for (j, &q) in b.qs.iter().enumerate() {
            o[j] = d * f32::from(KVALUES[usize::from(q & 0x0F)]);
            o[j + 16] = d * f32::from(KVALUES[usize::from(q >> 4)]);
        }
    }
}

/// The scale of a Q8_0 block as f32 (its first two bytes are an f16).
fn q8_scale(x: &BlockQ8_0) -> f32 {
    // SAFETY: BlockQ8_0 is `#[repr(C)] { d: f16, qs: [i8; 32] }` (pinned by `blocks`).
    let raw = unsafe { std::slice::from_raw_parts((x as *const BlockQ8_0).cast::<u8>(), 2) };
    half::f16::from_le_bytes([raw[0], raw[1]]).to_f32()
}

/// The 32 quantized values of a Q8_0 block.
fn q8_values(x: &BlockQ8_0) -> &[i8; 32] {
    // SAFETY: as in `q8_scale`; the values follow the 2-byte scale.
    unsafe { &*(x as *const BlockQ8_0).cast::<u8>().add(2).cast::<[i8; 32]>() }
}

/// `dot(w, x)` block by block in scalar arithmetic: the reference for the SIMD kernels.
pub fn dot_q8_0_scalar(w: &[BlockMxfp4], x: &[BlockQ8_0]) -> f32 {
    assert_eq!(w.len(), x.len(), "MXFP4 dot: block counts differ");
    let mut sum = 0f32;
    for (b, y) in w.iter().zip(x) {
        let d = q8_scale(y) * e8m0_half(b.e);
        let qy = q8_values(y);
        let mut s = 0i32;
        for (j, &q) in b.qs.iter().enumerate() {
            s += i32::from(qy[j]) * i32::from(KVALUES[usize::from(q & 0x0F)]);
            s += i32::from(qy[j + 16]) * i32::from(KVALUES[usize::from(q >> 4)]);
        }
        sum += d * s as f32;
    }
    sum
}

/// `dot(w, x)` at the current ISA level ([`Isa::current`]).
pub fn dot_q8_0(w: &[BlockMxfp4], x: &[BlockQ8_0]) -> f32 {
    dot_q8_0_with(Isa::current(), w, x)
}

/// `dot(w, x)` at `isa` (which must not exceed [`Isa::detected`]).
pub(crate) fn dot_q8_0_with(isa: Isa, w: &[BlockMxfp4], x: &[BlockQ8_0]) -> f32 {
    assert_eq!(w.len(), x.len(), "MXFP4 dot: block counts differ");
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        assert!(isa <= Isa::detected(), "{isa:?} kernels need a CPU that supports them");
        // SAFETY: the ISA is supported (checked above); both slices hold `w.len()` blocks.
        return unsafe {
            if isa == Isa::Avx512 {
                simd::dot_avx512(w.as_ptr(), x.as_ptr(), w.len())
            } else {
                simd::dot_avx2(w.as_ptr(), x.as_ptr(), w.len())
            }
        };
    }
    let _ = isa;
    dot_q8_0_scalar(w, x)
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use candle_core::quantized::k_quants::BlockQ8_0;

    use super::{BlockMxfp4, KVALUES, e8m0_half, q8_scale};

    /// The block's 32 weights as doubled E2M1 integers, in element order.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn weights(b: *const BlockMxfp4, table: __m256i) -> __m256i {
        // SAFETY: `b` points to a block; its 16 code bytes follow the scale byte.
        let q = unsafe { _mm_loadu_si128((b as *const u8).add(1).cast()) };
        let mask = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(q, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
        _mm256_shuffle_epi8(table, _mm256_set_m128i(hi, lo))
    }

    /// The 32 activation values of a Q8_0 block.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn acts(y: *const BlockQ8_0) -> __m256i {
        // SAFETY: the values follow the block's 2-byte scale.
        unsafe { _mm256_loadu_si256((y as *const u8).add(2).cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn table() -> __m256i {
        // SAFETY: KVALUES holds 16 bytes.
        let t = unsafe { _mm_loadu_si128(KVALUES.as_ptr().cast()) };
        _mm256_set_m128i(t, t)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(x: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// AVX2: `|w| * sign(x, w)` through `maddubs`, pairs summed by `madd`.
    ///
    /// # Safety
    /// AVX2 and FMA are available; `w` and `x` point to `nb` blocks each.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_avx2(w: *const BlockMxfp4, x: *const BlockQ8_0, nb: usize) -> f32 {
        let (t, ones) = (table(), _mm256_set1_epi16(1));
        let mut acc = _mm256_setzero_ps();
        for i in 0..nb {
            // SAFETY: block `i < nb` of both operands (the caller's guarantee).
            let (b, y) = unsafe { (w.add(i), x.add(i)) };
            let (qw, qy) = unsafe { (weights(b, t), acts(y)) };
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qy, qw));
            let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
            // SAFETY: as above.
            let d = unsafe { q8_scale(&*y) * e8m0_half((*b).e) };
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc);
        }
        hsum(acc)
    }

    /// AVX-512 VL/VNNI: the same products with `vpdpbusd`.
    ///
    /// # Safety
    /// AVX2, FMA, AVX-512 BW/VL and VNNI are available; `w` and `x` point to `nb` blocks
    /// each.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn dot_avx512(w: *const BlockMxfp4, x: *const BlockQ8_0, nb: usize) -> f32 {
        let t = table();
        let mut acc = _mm256_setzero_ps();
        for i in 0..nb {
            // SAFETY: block `i < nb` of both operands (the caller's guarantee).
            let (b, y) = unsafe { (w.add(i), x.add(i)) };
            let (qw, qy) = unsafe { (weights(b, t), acts(y)) };
            let p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qy, qw));
            // SAFETY: as above.
            let d = unsafe { q8_scale(&*y) * e8m0_half((*b).e) };
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(p), acc);
        }
        hsum(acc)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::k_quants::GgmlType;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// E2M1 as the OCP MX spec defines it: sign bit, 2 exponent bits (bias 1), 1 mantissa
    /// bit; exponent 0 is subnormal (`m * 0.5`).
    fn e2m1(code: u8) -> f64 {
        let sign = if code & 8 != 0 { -1.0 } else { 1.0 };
        let (exp, man) = ((code >> 1) & 3, code & 1);
        let mag =
            if exp == 0 { f64::from(man) * 0.5 } else { (1.0 + f64::from(man) * 0.5) * 2f64.powi(i32::from(exp) - 1) };
        sign * mag
    }

    fn random_blocks(rng: &mut ChaCha8Rng, n: usize) -> Vec<BlockMxfp4> {
        (0..n)
            .map(|i| {
                let mut b = BlockMxfp4 { e: rng.random_range(117..137), qs: [0; 16] };
                rng.fill(&mut b.qs[..]);
                // A few extreme scales (subnormal included; 2^120 * 6 still fits an f32).
                if i % 7 == 3 {
                    b.e = [0, 1, 2, 247][i % 4];
                }
                b
            })
            .collect()
    }

    fn random_acts(rng: &mut ChaCha8Rng, nb: usize) -> Vec<BlockQ8_0> {
        let x: Vec<f32> = (0..nb * BLOCK).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let mut y = vec![BlockQ8_0::zeros(); nb];
        BlockQ8_0::from_float(&x, &mut y);
        y
    }

    #[test]
    fn dequantize_follows_the_e2m1_and_e8m0_definitions() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let w = random_blocks(&mut rng, 64);
        let mut got = vec![0f32; w.len() * BLOCK];
        dequantize(&w, &mut got);
        for (b, vals) in w.iter().zip(got.chunks_exact(BLOCK)) {
            let scale = 2f64.powi(i32::from(b.e) - 127);
            for j in 0..16 {
                assert_eq!(f64::from(vals[j]), e2m1(b.qs[j] & 0xF) * scale, "block {b:?} weight {j}");
                assert_eq!(f64::from(vals[j + 16]), e2m1(b.qs[j] >> 4) * scale, "block {b:?} weight {}", j + 16);
            }
        }
    }

    #[test]
    fn scalar_dot_matches_an_f64_reference() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for nb in [1, 2, 5, 32, 90] {
            let w: Vec<BlockMxfp4> = random_blocks(&mut rng, nb)
                .into_iter()
                .map(|mut b| {
                    b.e = b.e.clamp(110, 140);
                    b
                })
                .collect();
            let x = random_acts(&mut rng, nb);
            let mut wf = vec![0f32; nb * BLOCK];
            dequantize(&w, &mut wf);
            let mut xf = vec![0f32; nb * BLOCK];
            BlockQ8_0::to_float(&x, &mut xf);
            let want: f64 = wf.iter().zip(&xf).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
            let mag: f64 = wf.iter().zip(&xf).map(|(a, b)| (f64::from(*a) * f64::from(*b)).abs()).sum();
            let got = f64::from(dot_q8_0_scalar(&w, &x));
            assert!((got - want).abs() <= 1e-5 * mag.max(1e-30), "{nb} blocks: {got} vs {want}");
        }
    }

    #[test]
    fn simd_dots_match_the_scalar_reference() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let levels: Vec<Isa> = [Isa::Avx2, Isa::Avx512].into_iter().filter(|&i| i <= Isa::detected()).collect();
        for nb in [1, 3, 8, 17, 64, 90] {
            for _ in 0..20 {
                let w = random_blocks(&mut rng, nb);
                let x = random_acts(&mut rng, nb);
                let want = dot_q8_0_scalar(&w, &x);
                let mag: f32 = w
                    .iter()
                    .zip(&x)
                    .map(|(b, y)| (dot_q8_0_scalar(std::slice::from_ref(b), std::slice::from_ref(y))).abs())
                    .sum();
                for &isa in &levels {
                    let got = dot_q8_0_with(isa, &w, &x);
                    assert!(
                        (got - want).abs() <= 1e-5 * mag.max(f32::MIN_POSITIVE),
                        "{isa:?}, {nb} blocks: {got} vs scalar {want}"
                    );
                    // Deterministic: the same call gives the same bits.
                    assert_eq!(got.to_bits(), dot_q8_0_with(isa, &w, &x).to_bits());
                }
            }
        }
        assert_eq!(dot_q8_0_with(Isa::Portable, &[], &[]), 0.0);
    }
}
