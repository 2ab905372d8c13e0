//! GGML's 32-element block formats for a quantised KV cache: quantising one row of keys
//! or values as it is appended, and dequantising rows (scalar, AVX2 and AVX-512, all bit
//! for bit the same) for attention, which widens one cached row at a time into a small
//! per-thread buffer and never a whole cache (see `attention`).
//!
//! Layouts are GGML's (`block_q8_0`, `block_q4_0`, `block_q4_1`, `block_q5_0`,
//! `block_q5_1`; f16 scales little-endian), so a quantised cache is what llama.cpp would
//! hold for the same values; the tests check quantisation and dequantisation against
//! candle's scalar GGML ports byte for byte.

use half::f16;

use crate::dot::Isa;

/// Elements per block of every KV block format.
pub const BLOCK: usize = 32;

/// A GGML block format a KV cache row can be stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvQuant {
    /// 8-bit integers with one f16 scale per block (34 bytes per 32 values).
    Q8_0,
    /// 4-bit integers offset by 8, one f16 scale (18 bytes).
    Q4_0,
    /// 4-bit integers with an f16 scale and an f16 minimum (20 bytes).
    Q4_1,
    /// 5-bit integers offset by 16, one f16 scale (22 bytes).
    Q5_0,
    /// 5-bit integers with an f16 scale and an f16 minimum (24 bytes).
    Q5_1,
}

impl KvQuant {
    /// Every format, in llama.cpp's order.
    pub const ALL: [KvQuant; 5] = [KvQuant::Q8_0, KvQuant::Q4_0, KvQuant::Q4_1, KvQuant::Q5_0, KvQuant::Q5_1];

    /// Bytes of one block of [`BLOCK`] values.
    pub const fn block_bytes(self) -> usize {
        match self {
            KvQuant::Q8_0 => 34,
            KvQuant::Q4_0 => 18,
            KvQuant::Q4_1 => 20,
            KvQuant::Q5_0 => 22,
            KvQuant::Q5_1 => 24,
        }
    }

    /// Bytes of `n` values (`n` a multiple of [`BLOCK`]).
    pub const fn row_bytes(self, n: usize) -> usize {
        n / BLOCK * self.block_bytes()
    }

    /// Quantises `src` (a multiple of [`BLOCK`] values) into `dst`
    /// ([`KvQuant::row_bytes`] of it), as GGML's reference quantisers do.
    pub fn quantize(self, src: &[f32], dst: &mut [u8]) {
        assert!(src.len().is_multiple_of(BLOCK), "quantize: {} values is not whole blocks", src.len());
        assert_eq!(dst.len(), self.row_bytes(src.len()), "quantize: output size");
        let bb = self.block_bytes();
        for (x, b) in src.chunks_exact(BLOCK).zip(dst.chunks_exact_mut(bb)) {
            let x: &[f32; BLOCK] = x.try_into().expect("block");
            match self {
                KvQuant::Q8_0 => q8_0(x, b),
                KvQuant::Q4_0 | KvQuant::Q5_0 => symmetric(self, x, b),
                KvQuant::Q4_1 | KvQuant::Q5_1 => affine(self, x, b),
            }
        }
    }

    /// Dequantises `src` (whole blocks) into `dst` (32 values per block); the SIMD
    /// versions give the same bits as the scalar one (same products, no fused rounding).
    #[inline]
    pub fn dequantize(self, src: &[u8], dst: &mut [f32]) {
        assert_eq!(src.len(), self.row_bytes(dst.len()), "dequantize: input size");
        assert!(dst.len().is_multiple_of(BLOCK), "dequantize: {} values is not whole blocks", dst.len());
        #[cfg(target_arch = "x86_64")]
        {
            let isa = Isa::current();
            if isa >= Isa::Avx512 {
                // SAFETY: the CPU has AVX-512 F/BW/VL and AVX2 (checked by `Isa`); sizes checked above.
                return unsafe { x86::dequantize_avx512(self, src, dst) };
            }
            if isa >= Isa::Avx2 {
                // SAFETY: the CPU has AVX2, FMA and F16C (checked by `Isa`); sizes checked above.
                return unsafe { x86::dequantize_avx2(self, src, dst) };
            }
        }
        self.dequantize_scalar(src, dst)
    }

    /// The scalar dequantiser (the reference of the SIMD versions).
    pub fn dequantize_scalar(self, src: &[u8], dst: &mut [f32]) {
        assert_eq!(src.len(), self.row_bytes(dst.len()), "dequantize: input size");
        for (b, y) in src.chunks_exact(self.block_bytes()).zip(dst.chunks_exact_mut(BLOCK)) {
            let d = f16_at(b, 0);
            match self {
                KvQuant::Q8_0 => {
                    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
                        *y = f32::from(q as i8) * d;
                    }
                }
                KvQuant::Q4_0 => {
                    for j in 0..16 {
                        y[j] = f32::from((b[2 + j] & 0x0f) as i8 - 8) * d;
                        y[j + 16] = f32::from((b[2 + j] >> 4) as i8 - 8) * d;
                    }
                }
                KvQuant::Q4_1 => {
                    let m = f16_at(b, 2);
                    for j in 0..16 {
                        y[j] = f32::from(b[4 + j] & 0x0f) * d + m;
                        y[j + 16] = f32::from(b[4 + j] >> 4) * d + m;
                    }
                }
                KvQuant::Q5_0 | KvQuant::Q5_1 => {
                    let (m, off) = if self == KvQuant::Q5_1 { (Some(f16_at(b, 2)), 4) } else { (None, 2) };
                    let qh = u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]);
                    let qs = &b[off + 4..off + 20];
                    for j in 0..16 {
                        let h0 = (((qh >> j) & 1) << 4) as u8;
                        let h1 = (((qh >> (j + 16)) & 1) << 4) as u8;
                        let (q0, q1) = ((qs[j] & 0x0f) | h0, (qs[j] >> 4) | h1);
                        match m {
                            Some(m) => {
                                y[j] = f32::from(q0) * d + m;
                                y[j + 16] = f32::from(q1) * d + m;
                            }
                            None => {
                                y[j] = f32::from(q0 as i8 - 16) * d;
                                y[j + 16] = f32::from(q1 as i8 - 16) * d;
                            }
                        }
                    }
                }
            }
        }
    }

    /// A bound on the error quantising `block` (32 values) and dequantising it can make
    /// at any element: half a grid step (a whole step for the symmetric 4/5-bit formats,
    /// whose positive side is one step shorter), plus the f16 rounding of the scale and
    /// minimum. Tests derive their tolerances from it.
    pub fn max_error(self, block: &[f32]) -> f32 {
        let (lo, hi) = block.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let amax = lo.abs().max(hi.abs());
        let grid = match self {
            KvQuant::Q8_0 => 0.5 / 127.0 * amax,
            KvQuant::Q4_0 => amax / 8.0,
            KvQuant::Q5_0 => amax / 16.0,
            KvQuant::Q4_1 => 0.5 / 15.0 * (hi - lo),
            KvQuant::Q5_1 => 0.5 / 31.0 * (hi - lo),
        };
        grid * 1.001 + amax / 1024.0
    }
}

/// Chunk size of the rotation applied to keys before they are quantised, for heads of
/// `head_dim` values: the largest power of two of at least 64 dividing `head_dim`, or
/// `None` (no rotation) when 64 does not divide it. llama.cpp's rule (`attn_rot_k`).
pub fn key_rotation(head_dim: usize) -> Option<usize> {
    if head_dim == 0 || !head_dim.is_multiple_of(64) {
        return None;
    }
    let mut n = 64;
    while head_dim.is_multiple_of(n * 2) {
        n *= 2;
    }
    Some(n)
}

/// Chunk size of the rotation applied to values before they are quantised: 64 when it
/// divides `head_dim` (llama.cpp's `attn_rot_v`), else `None`.
pub fn value_rotation(head_dim: usize) -> Option<usize> {
    (head_dim > 0 && head_dim.is_multiple_of(64)).then_some(64)
}

/// Applies the orthonormal Walsh-Hadamard transform of size `n` (a power of two) to every
/// `n`-value chunk of `x`, in place: the fast butterfly form of Sylvester's matrix scaled
/// by `1/sqrt(n)`. The transform is its own inverse (up to rounding), preserves dot
/// products, and spreads an outlier over the whole chunk, so quantising rotated keys and
/// values loses far less than quantising them as they are; attention rotates queries the
/// same way and rotates its output back.
pub fn hadamard(x: &mut [f32], n: usize) {
    assert!(n.is_power_of_two() && x.len().is_multiple_of(n), "hadamard: {} values in chunks of {n}", x.len());
    let scale = 1.0 / (n as f32).sqrt();
    for c in x.chunks_exact_mut(n) {
        let mut h = 1;
        while h < n {
            for i in (0..n).step_by(2 * h) {
                for j in i..i + h {
                    let (a, b) = (c[j], c[j + h]);
                    c[j] = a + b;
                    c[j + h] = a - b;
                }
            }
            h *= 2;
        }
        c.iter_mut().for_each(|v| *v *= scale);
    }
}

/// The f16 at byte `at` of a block, as f32.
#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

fn put_f16(b: &mut [u8], at: usize, x: f32) {
    b[at..at + 2].copy_from_slice(&f16::from_f32(x).to_bits().to_le_bytes());
}

/// `block_q8_0`: `d = max|x| / 127`, `q = round(x / d)`.
fn q8_0(x: &[f32; BLOCK], b: &mut [u8]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(b, 0, d);
    for (q, &v) in b[2..34].iter_mut().zip(x) {
        *q = ((v * id).round() as i8) as u8;
    }
}

/// `block_q4_0` / `block_q5_0`: the value of largest magnitude maps to -8 (-16).
fn symmetric(kind: KvQuant, x: &[f32; BLOCK], b: &mut [u8]) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let (half, top, qs_at) = if kind == KvQuant::Q4_0 { (8.0f32, 15u8, 2) } else { (16.0, 31u8, 6) };
    let d = max / -half;
    // GGML adds `half + 0.5` as one constant (8.5, 16.5): one rounding, not two.
    let offset = half + 0.5;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(b, 0, d);
    let mut qh = 0u32;
    for j in 0..16 {
        let q0 = ((x[j] * id + offset) as u8).min(top);
        let q1 = ((x[j + 16] * id + offset) as u8).min(top);
        b[qs_at + j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
        qh |= u32::from(q0 >> 4) << j | u32::from(q1 >> 4) << (j + 16);
    }
    if kind == KvQuant::Q5_0 {
        b[2..6].copy_from_slice(&qh.to_le_bytes());
    }
}

/// `block_q4_1` / `block_q5_1`: `x = q * d + min`.
fn affine(kind: KvQuant, x: &[f32; BLOCK], b: &mut [u8]) {
    let (min, max) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (top, qs_at) = if kind == KvQuant::Q4_1 { (15u8, 4) } else { (31u8, 8) };
    let d = (max - min) / f32::from(top);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(b, 0, d);
    put_f16(b, 2, min);
    let mut qh = 0u32;
    for j in 0..16 {
        let q0 = (((x[j] - min) * id + 0.5) as u8).min(top);
        let q1 = (((x[j + 16] - min) * id + 0.5) as u8).min(top);
        b[qs_at + j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
        qh |= u32::from(q0 >> 4) << j | u32::from(q1 >> 4) << (j + 16);
    }
    if kind == KvQuant::Q5_1 {
        b[4..8].copy_from_slice(&qh.to_le_bytes());
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BLOCK, KvQuant, f16_at};

    /// The block's 32 quants as bytes (`q` values before the offset, high bit included for
    /// the 5-bit formats), low 16 values in the low lane.
    #[inline(always)]
    unsafe fn quants(kind: KvQuant, b: *const u8) -> __m256i {
        // SAFETY: the caller guarantees a whole block behind `b` and AVX2.
        unsafe {
            let nibbles = |qs: *const u8| {
                let raw = _mm_loadu_si128(qs.cast::<__m128i>());
                let m = _mm_set1_epi8(0x0f);
                let lo = _mm_and_si128(raw, m);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(raw), m);
                _mm256_set_m128i(hi, lo)
            };
            // Byte j = 0x10 if bit j of `qh` is set, else 0.
            let high_bits = |qh: *const u8| {
                let bits = _mm256_set1_epi32(std::ptr::read_unaligned(qh.cast::<i32>()));
                let spread = _mm256_shuffle_epi8(
                    bits,
                    _mm256_setr_epi8(
                        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
                    ),
                );
                let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
                let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, mask), mask);
                _mm256_and_si256(set, _mm256_set1_epi8(0x10))
            };
            match kind {
                KvQuant::Q8_0 => _mm256_loadu_si256(b.add(2).cast::<__m256i>()),
                KvQuant::Q4_0 => _mm256_sub_epi8(nibbles(b.add(2)), _mm256_set1_epi8(8)),
                KvQuant::Q4_1 => nibbles(b.add(4)),
                KvQuant::Q5_0 => {
                    let q = _mm256_or_si256(nibbles(b.add(6)), high_bits(b.add(2)));
                    _mm256_sub_epi8(q, _mm256_set1_epi8(16))
                }
                KvQuant::Q5_1 => _mm256_or_si256(nibbles(b.add(8)), high_bits(b.add(4))),
            }
        }
    }

    /// Scale and minimum of a block (minimum 0 for the symmetric formats, unused).
    #[inline(always)]
    fn scale_min(kind: KvQuant, b: &[u8]) -> (f32, Option<f32>) {
        let m = matches!(kind, KvQuant::Q4_1 | KvQuant::Q5_1).then(|| f16_at(b, 2));
        (f16_at(b, 0), m)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dequantize_avx2(kind: KvQuant, src: &[u8], dst: &mut [f32]) {
        let bb = kind.block_bytes();
        for (b, y) in src.chunks_exact(bb).zip(dst.chunks_exact_mut(BLOCK)) {
            let (d, m) = scale_min(kind, b);
            // SAFETY: `b` is one whole block and `y` 32 values.
            unsafe {
                let q = quants(kind, b.as_ptr());
                // Signed formats hold i8 quants; unsigned ones are below 32, so the same
                // sign extension reads them right.
                let lanes = [_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q)];
                let vd = _mm256_set1_ps(d);
                for (h, lane) in lanes.into_iter().enumerate() {
                    for part in 0..2 {
                        let bytes = if part == 0 { lane } else { _mm_srli_si128::<8>(lane) };
                        let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
                        let mut x = _mm256_mul_ps(f, vd);
                        if let Some(m) = m {
                            x = _mm256_add_ps(x, _mm256_set1_ps(m));
                        }
                        _mm256_storeu_ps(y.as_mut_ptr().add(16 * h + 8 * part), x);
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn dequantize_avx512(kind: KvQuant, src: &[u8], dst: &mut [f32]) {
        let bb = kind.block_bytes();
        for (b, y) in src.chunks_exact(bb).zip(dst.chunks_exact_mut(BLOCK)) {
            let (d, m) = scale_min(kind, b);
            // SAFETY: `b` is one whole block and `y` 32 values.
            unsafe {
                let q = quants(kind, b.as_ptr());
                let vd = _mm512_set1_ps(d);
                let lanes = [_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q)];
                for (h, lane) in lanes.into_iter().enumerate() {
                    let f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lane));
                    let mut x = _mm512_mul_ps(f, vd);
                    if let Some(m) = m {
                        x = _mm512_add_ps(x, _mm512_set1_ps(m));
                    }
                    _mm512_storeu_ps(y.as_mut_ptr().add(16 * h), x);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::GgmlType;
    use candle_core::quantized::k_quants::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};

    use super::*;

    /// Values with a varied range per block (some blocks constant, one with a large
    /// outlier, one all negative).
    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        (0..n)
            .map(|i| match (i / BLOCK) % 5 {
                0 => 0.75,
                1 => next() * 40.0 - 20.0,
                2 => -next() * 3.0,
                3 if i % BLOCK == 7 => 90.0,
                _ => next() * 4.0 - 2.0,
            })
            .collect()
    }

    /// candle's scalar GGML port: quantised bytes and dequantised values.
    fn candle<B: GgmlType>(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
        let mut blocks = vec![B::zeros(); x.len() / BLOCK];
        B::from_float(x, &mut blocks);
        // SAFETY: the GGML block structs are plain `repr(C)` bytes; reading them as u8 is sound.
        let bytes =
            unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(&blocks[..])) };
        let mut y = vec![0f32; x.len()];
        B::to_float(&blocks, &mut y);
        (bytes.to_vec(), y)
    }

    fn reference(kind: KvQuant, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
        match kind {
            KvQuant::Q8_0 => candle::<BlockQ8_0>(x),
            KvQuant::Q4_0 => candle::<BlockQ4_0>(x),
            KvQuant::Q4_1 => candle::<BlockQ4_1>(x),
            KvQuant::Q5_0 => candle::<BlockQ5_0>(x),
            KvQuant::Q5_1 => candle::<BlockQ5_1>(x),
        }
    }

    #[test]
    fn quantize_and_dequantize_match_ggml_layouts() {
        let x = data(BLOCK * 40, 3);
        for kind in KvQuant::ALL {
            let (want_bytes, want) = reference(kind, &x);
            assert_eq!(want_bytes.len(), kind.row_bytes(x.len()), "{kind:?} block size");
            let mut bytes = vec![0u8; kind.row_bytes(x.len())];
            kind.quantize(&x, &mut bytes);
            assert_eq!(bytes, want_bytes, "{kind:?} bytes");
            let mut y = vec![0f32; x.len()];
            kind.dequantize_scalar(&bytes, &mut y);
            assert_eq!(y, want, "{kind:?} scalar dequantize");
            let mut z = vec![f32::NAN; x.len()];
            kind.dequantize(&bytes, &mut z);
            let same = y.iter().zip(&z).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{kind:?}: dispatched dequantize ({:?}) differs from scalar", Isa::current());
        }
    }

    #[test]
    fn every_simd_level_dequantizes_bit_for_bit() {
        // Random bytes (every quant and high-bit pattern), finite scales.
        let mut s = 0x1234_5678_9abc_def1u64;
        for kind in KvQuant::ALL {
            let mut bytes: Vec<u8> = (0..kind.row_bytes(BLOCK * 64))
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    s as u8
                })
                .collect();
            for b in bytes.chunks_exact_mut(kind.block_bytes()) {
                b[1] &= 0x3b; // keep the scale (and minimum) finite
                b[3] &= 0x3b;
            }
            let mut want = vec![0f32; BLOCK * 64];
            kind.dequantize_scalar(&bytes, &mut want);
            #[cfg(target_arch = "x86_64")]
            {
                let isa = Isa::detected();
                let mut got = vec![0f32; want.len()];
                if isa >= Isa::Avx2 {
                    // SAFETY: the CPU has AVX2 (detected above).
                    unsafe { x86::dequantize_avx2(kind, &bytes, &mut got) };
                    assert!(want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "{kind:?} avx2");
                }
                if isa >= Isa::Avx512 {
                    // SAFETY: the CPU has AVX-512 (detected above).
                    unsafe { x86::dequantize_avx512(kind, &bytes, &mut got) };
                    assert!(want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "{kind:?} avx512");
                }
            }
        }
    }

    #[test]
    fn hadamard_is_orthonormal_and_its_own_inverse() {
        assert_eq!(
            (key_rotation(64), key_rotation(256), key_rotation(96), key_rotation(32)),
            (Some(64), Some(256), None, None)
        );
        assert_eq!((key_rotation(192), value_rotation(256), value_rotation(48)), (Some(64), Some(64), None));
        for n in [64, 128, 256] {
            let x = data(2 * n, n as u64);
            let mut y = x.clone();
            hadamard(&mut y, n);
            // Against the matrix definition: H[i][j] = (-1)^popcount(i & j) / sqrt(n).
            for (c, (xc, yc)) in x.chunks_exact(n).zip(y.chunks_exact(n)).enumerate() {
                for (i, &got) in yc.iter().enumerate() {
                    let want: f64 = (0..n)
                        .map(|j| if (i & j).count_ones() % 2 == 0 { xc[j] as f64 } else { -xc[j] as f64 })
                        .sum::<f64>()
                        / (n as f64).sqrt();
                    assert!((got as f64 - want).abs() < 1e-4, "n {n} chunk {c} row {i}");
                }
            }
            let norm = |v: &[f32]| v.iter().map(|a| *a as f64 * *a as f64).sum::<f64>();
            assert!((norm(&x) - norm(&y)).abs() < 1e-3 * norm(&x));
            hadamard(&mut y, n);
            assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-4), "n {n}: not its own inverse");
        }
    }

    #[test]
    fn error_is_within_half_a_step() {
        let x = data(BLOCK * 40, 9);
        for kind in KvQuant::ALL {
            let mut bytes = vec![0u8; kind.row_bytes(x.len())];
            kind.quantize(&x, &mut bytes);
            let mut y = vec![0f32; x.len()];
            kind.dequantize(&bytes, &mut y);
            for (xb, yb) in x.chunks_exact(BLOCK).zip(y.chunks_exact(BLOCK)) {
                let tol = kind.max_error(xb);
                for (a, b) in xb.iter().zip(yb) {
                    assert!((a - b).abs() <= tol, "{kind:?}: {a} -> {b} (tolerance {tol})");
                }
            }
        }
    }
}
