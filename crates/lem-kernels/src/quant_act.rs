//! Activation quantization with GGML's x86 arithmetic, bit for bit.
//!
//! Activations are quantized once per row before every quantized matmul; tiny rounding
//! differences here (how the inverse scale is formed, round-half-even versus
//! half-away, how Q8_1's block sum is rounded) shift every logit, so lem reproduces the
//! reference's choices exactly: `d = amax / 127`, `id = 127 / amax`, round half to even,
//! and for Q8_1 `s = f16(d * sum(q))` with `d` in f32.

use candle_core::quantized::GgmlDType;
use candle_core::quantized::k_quants::GgmlType;
use half::f16;

/// Round half to even, as `_mm256_round_ps(_, _MM_ROUND_NEAREST)` and GGML's
/// `nearest_int` do.
#[inline]
fn round_even(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// Quantizes one row `x` into `out`, which holds the row's blocks of `T`.
/// Returns `false` (leaving `out` alone) for types this module does not handle.
pub(crate) fn quantize_row<T: GgmlType>(x: &[f32], out: &mut [T]) -> bool {
    let bytes = std::mem::size_of_val(out);
    // SAFETY: GGML block types are POD; the byte view covers exactly `out`.
    let raw = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), bytes) };
    match T::DTYPE {
        GgmlDType::Q8_0 => {
            q8_0(x, raw);
            true
        }
        GgmlDType::Q8_1 => {
            q8_1(x, raw);
            true
        }
        GgmlDType::Q8K => {
            q8_k(x, raw);
            true
        }
        _ => false,
    }
}

/// Shared part of Q8_0 and Q8_1: scale, quants, and the sum of the quants.
#[inline]
fn q8_block(x: &[f32], qs: &mut [u8]) -> (f32, i32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0;
    for (q, &v) in qs.iter_mut().zip(x) {
        let i = round_even(v * id);
        sum += i;
        *q = i as i8 as u8;
    }
    (d, sum)
}

/// Q8_0: `{ d: f16, qs: [i8; 32] }`, 34 bytes.
fn q8_0(x: &[f32], raw: &mut [u8]) {
    for (xb, b) in x.chunks_exact(32).zip(raw.chunks_exact_mut(34)) {
        let (d, _) = q8_block(xb, &mut b[2..34]);
        b[0..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    }
}

/// Q8_1: `{ d: f16, s: f16, qs: [i8; 32] }`, 36 bytes.
fn q8_1(x: &[f32], raw: &mut [u8]) {
    for (xb, b) in x.chunks_exact(32).zip(raw.chunks_exact_mut(36)) {
        let (d, sum) = q8_block(xb, &mut b[4..36]);
        b[0..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(d * sum as f32).to_le_bytes());
    }
}

/// Q8_K: `{ d: f32, qs: [i8; 256], bsums: [i16; 16] }`, 292 bytes.
fn q8_k(x: &[f32], raw: &mut [u8]) {
    for (xb, b) in x.chunks_exact(256).zip(raw.chunks_exact_mut(292)) {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            b.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        let qs = &mut b[4..260];
        for (q, &v) in qs.iter_mut().zip(xb) {
            *q = round_even(iscale * v).min(127) as i8 as u8;
        }
        let mut sums = [0i16; 16];
        for (j, s) in sums.iter_mut().enumerate() {
            *s = qs[j * 16..(j + 1) * 16].iter().map(|&q| i16::from(q as i8)).sum();
        }
        for (j, s) in sums.iter().enumerate() {
            b[260 + 2 * j..262 + 2 * j].copy_from_slice(&s.to_le_bytes());
        }
        b[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::{BlockQ8_0, BlockQ8_1, BlockQ8K};

    /// Our quantization dequantizes to the same values candle's does, up to rounding
    /// ties (checked on random data: at most a handful of quants may differ by one).
    fn check<T: GgmlType>(n: usize) {
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 / 37.0).sin() * 3.0).collect();
        let mut ours: Vec<T> = (0..n / T::BLCK_SIZE).map(|_| T::zeros()).collect();
        let mut theirs = ours.clone();
        assert!(quantize_row(&x, &mut ours));
        T::from_float(&x, &mut theirs);
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        T::to_float(&ours, &mut a);
        T::to_float(&theirs, &mut b);
        let step = x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert!((p - q).abs() <= step * 1.01, "{:?} element {i}: {p} vs {q}", T::DTYPE);
        }
        for (i, (p, v)) in a.iter().zip(&x).enumerate() {
            assert!((p - v).abs() <= step * 0.51 + 1e-3, "{:?} element {i}: {p} vs input {v}", T::DTYPE);
        }
    }

    #[test]
    fn q8_types_quantize_like_the_reference() {
        check::<BlockQ8_0>(32 * 9);
        check::<BlockQ8_1>(32 * 9);
        check::<BlockQ8K>(256 * 3);
    }

    #[test]
    fn q8_1_sum_is_rounded_once_from_f32() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 * 0.37 - 3.0).collect();
        let mut b = [BlockQ8_1::zeros()];
        assert!(quantize_row(&x, &mut b));
        let raw = unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<u8>(), 36) };
        let d = f16::from_le_bytes([raw[0], raw[1]]).to_f32();
        let s = f16::from_le_bytes([raw[2], raw[3]]).to_f32();
        let sum: i32 = raw[4..].iter().map(|&q| i32::from(q as i8)).sum();
        let amax = 3.0f32.max((31.0f32 * 0.37 - 3.0).abs());
        assert_eq!(d, f16::from_f32(amax / 127.0).to_f32());
        assert_eq!(s, f16::from_f32(amax / 127.0 * sum as f32).to_f32());
    }
}
