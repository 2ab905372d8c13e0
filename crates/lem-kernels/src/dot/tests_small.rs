//! The product of a few activation rows ([`RowDot::run_share`]: one kernel call for a
//! share of weight rows and a group of activation rows, as batched decode and draft
//! verification use) against the one-row product, bit for bit, at every ISA level this
//! CPU has, for every row count from 1 to 17 (around the 4- and 8-row groups of one body
//! call), with and without tail blocks after the 4-block groups.

use candle_core::quantized::k_quants::{
    BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0,
};
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Isa, RowDot, act_headers, header_floats, quantize_row_with};
use crate::qmatrix::GgmlType;

/// The ISA levels with kernels that this CPU can run, and the portable fallback.
fn levels() -> Vec<Isa> {
    [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(|&l| l <= Isa::detected()).collect()
}

/// Random floats with block-to-block magnitudes from 0.01 to 7.
fn random_f32(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|i| rng.random_range(-1.0f32..1.0) * [0.01f32, 0.3, 1.0, 7.0][(i / 32 + i / 97) % 4]).collect()
}

fn zeroed<T: GgmlType>(n: usize) -> Vec<T> {
    (0..n).map(|_| T::zeros()).collect()
}

/// Weight blocks quantized from random floats, or (with `half_offsets`) random bytes
/// whose half-float fields at those offsets are finite values of moderate size.
fn weights<T: GgmlType>(rng: &mut ChaCha8Rng, n: usize, half_offsets: Option<&[usize]>) -> Vec<T> {
    let mut v = zeroed::<T>(n / T::BLCK_SIZE);
    match half_offsets {
        None => T::from_float(&random_f32(rng, n), &mut v),
        Some(offsets) => {
            let size = std::mem::size_of::<T>();
            // SAFETY: block types are plain old data; the slice covers exactly their memory.
            let bytes = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), size * v.len()) };
            rng.fill(bytes);
            for block in bytes.chunks_exact_mut(size) {
                for &off in offsets {
                    let h = f16::from_f32(rng.random_range(-0.5f32..0.5));
                    block[off..off + 2].copy_from_slice(&h.to_le_bytes());
                }
            }
        }
    }
    v
}

/// `run_share` over `rows` weight rows and `n` activation rows equals `run` one weight
/// row and one activation row at a time, bit for bit, and writes nothing outside its
/// outputs (a padded output stride).
fn check<T: GgmlType>(seed: u64, block_counts: &[usize], half_offsets: Option<&[usize]>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for isa in levels() {
        for &nb in block_counts {
            let cols = nb * T::BLCK_SIZE;
            let dot = RowDot::<T>::with_isa(isa, cols);
            for rows in [1, 3, 7] {
                let w: Vec<T> = weights(&mut rng, rows * cols, half_offsets);
                for n in 1..=17 {
                    let xf = random_f32(&mut rng, n * cols);
                    let mut x = zeroed::<T::VecDotType>(n * nb);
                    for (src, dst) in xf.chunks_exact(cols).zip(x.chunks_exact_mut(nb)) {
                        quantize_row_with(isa, src, dst);
                    }
                    let mut xh = vec![0f32; header_floats::<T::VecDotType>() * x.len()];
                    act_headers(&x, &mut xh);
                    let stride = rows + 2;
                    let mut got = vec![f32::NAN; n * stride];
                    // SAFETY: `got` holds n * stride floats and t * stride + r < n * stride.
                    unsafe { dot.run_share(&w, rows, &x, n, &xh, got.as_mut_ptr(), stride) };
                    let per = header_floats::<T::VecDotType>() * nb;
                    for t in 0..n {
                        for r in 0..rows {
                            let mut one = [0f32];
                            let (xs, hs) = (&x[t * nb..(t + 1) * nb], &xh[t * per..(t + 1) * per]);
                            dot.run(&w[r * nb..(r + 1) * nb], xs, hs, &mut one);
                            let g = got[t * stride + r];
                            assert!(one[0].is_finite(), "{:?} {isa:?} nb={nb}: non-finite product", T::DTYPE);
                            assert_eq!(
                                g.to_bits(),
                                one[0].to_bits(),
                                "{:?} {isa:?} nb={nb} rows={rows} n={n}: out[{t}][{r}] = {g}, one row gives {}",
                                T::DTYPE,
                                one[0]
                            );
                        }
                        for pad in rows..stride {
                            assert!(got[t * stride + pad].is_nan(), "{:?} wrote outside its outputs", T::DTYPE);
                        }
                    }
                }
            }
        }
    }
}

/// Single blocks, tails of 1 to 3 blocks after the 4-block groups, and a 576-element row
/// (SmolLM2's width: 4 groups and a tail of 2).
const COUNTS_32: &[usize] = &[1, 3, 4, 5, 7, 18];

#[test]
fn few_rows_equal_one_row_at_a_time_q4_0() {
    check::<BlockQ4_0>(21, COUNTS_32, None);
    check::<BlockQ4_0>(22, COUNTS_32, Some(&[0]));
}

#[test]
fn few_rows_equal_one_row_at_a_time_q4_1() {
    check::<BlockQ4_1>(23, COUNTS_32, None);
    check::<BlockQ4_1>(24, COUNTS_32, Some(&[0, 2]));
}

#[test]
fn few_rows_equal_one_row_at_a_time_q5_0() {
    check::<BlockQ5_0>(25, COUNTS_32, None);
    check::<BlockQ5_0>(26, COUNTS_32, Some(&[0]));
}

#[test]
fn few_rows_equal_one_row_at_a_time_q5_1() {
    check::<BlockQ5_1>(27, COUNTS_32, None);
    check::<BlockQ5_1>(28, COUNTS_32, Some(&[0, 2]));
}

#[test]
fn few_rows_equal_one_row_at_a_time_q8_0() {
    check::<BlockQ8_0>(29, COUNTS_32, None);
    check::<BlockQ8_0>(30, COUNTS_32, Some(&[0]));
}

#[test]
fn few_rows_equal_one_row_at_a_time_k_quants() {
    check::<BlockQ4K>(31, &[1, 3], None);
    check::<BlockQ5K>(32, &[1, 3], None);
    check::<BlockQ6K>(33, &[1, 3], None);
}
