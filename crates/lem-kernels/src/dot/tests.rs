//! Every SIMD kernel, at every ISA level this CPU has, against candle's scalar
//! `vec_dot_unopt` (same integer arithmetic, so only float summation order differs) and
//! against an f32 dot product of the dequantized operands.

use candle_core::quantized::k_quants::{
    BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0,
};
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Isa, MAX_K, Panel, RowDot, act_headers, header_floats, quantize_row_with, vec_dot, vec_dot_multi_with};
use crate::qmatrix::GgmlType;

/// The ISA levels with kernels that this CPU can run.
fn levels() -> Vec<Isa> {
    [Isa::Avx2, Isa::Avx512].into_iter().filter(|&l| l <= Isa::detected()).collect()
}

fn zeroed<T: GgmlType>(n: usize) -> Vec<T> {
    (0..n).map(|_| T::zeros()).collect()
}

fn bytes_mut<T>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: block types are plain old data; the slice covers exactly their memory.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

fn random_f32(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    // A spread of magnitudes, so that block scales differ a lot between blocks.
    (0..n)
        .map(|i| {
            let scale = [0.01f32, 0.3, 1.0, 7.0][(i / 32 + i / 97) % 4];
            rng.random_range(-1.0f32..1.0) * scale
        })
        .collect()
}

fn quantized<T: GgmlType>(rng: &mut ChaCha8Rng, n: usize) -> Vec<T> {
    let mut v = zeroed::<T>(n / T::BLCK_SIZE);
    T::from_float(&random_f32(rng, n), &mut v);
    v
}

/// Blocks of random bytes, with the half-float fields (at `half_offsets` in each block)
/// replaced by finite values of moderate size.
fn raw<T: GgmlType>(rng: &mut ChaCha8Rng, n: usize, half_offsets: &[usize]) -> Vec<T> {
    let mut v = zeroed::<T>(n / T::BLCK_SIZE);
    let size = std::mem::size_of::<T>();
    let bytes = bytes_mut(&mut v);
    rng.fill(bytes);
    for block in bytes.chunks_exact_mut(size) {
        for &off in half_offsets {
            let h = f16::from_f32(rng.random_range(-0.5f32..0.5));
            block[off..off + 2].copy_from_slice(&h.to_le_bytes());
        }
    }
    v
}

fn dequantize<T: GgmlType>(v: &[T]) -> Vec<f32> {
    let mut out = vec![0f32; v.len() * T::BLCK_SIZE];
    T::to_float(v, &mut out);
    out
}

/// Compares the kernels for `T` at every level with candle's scalar reference, for
/// weights `w` and `k` activation rows made from random floats.
fn check<T: GgmlType>(rng: &mut ChaCha8Rng, w: &[T], k: usize, what: &str) {
    let nb = w.len();
    let n = nb * T::BLCK_SIZE;
    let x: Vec<T::VecDotType> = quantized(rng, k * n);
    let wf = dequantize(w);
    let xf = dequantize(&x);
    for isa in levels() {
        let mut got = vec![0f32; k];
        vec_dot_multi_with::<T>(isa, n, w, &x, &mut got);
        for (j, &g) in got.iter().enumerate() {
            let xj = &x[j * nb..(j + 1) * nb];
            let want = T::vec_dot_unopt(n, w, xj);
            let xfj = &xf[j * n..(j + 1) * n];
            let mag: f32 = wf.iter().zip(xfj).map(|(a, b)| (a * b).abs()).sum();
            let tol = 1e-5 * mag.max(want.abs()) + 1e-4;
            assert!(
                (g - want).abs() <= tol,
                "{:?} {what} {isa:?} nb={nb} k={k} row {j}: got {g}, scalar {want} (tol {tol})",
                T::DTYPE
            );
            // Against the dequantized operands; Q8_1's `s` is rounded to a half, so the
            // minimum's contribution is only good to ~1e-3.
            let exact: f32 = wf.iter().zip(xfj).map(|(a, b)| a * b).sum();
            let tol = 2e-3 * mag + 1e-4;
            assert!(
                (g - exact).abs() <= tol,
                "{:?} {what} {isa:?} nb={nb} k={k} row {j}: got {g}, f32 {exact} (tol {tol})",
                T::DTYPE
            );
        }
    }
}

/// Block counts per row: single blocks, odd counts around the 4-block grouping, and
/// 8192-element rows.
fn block_counts<T: GgmlType>() -> Vec<usize> {
    let mut v = vec![1, 2, 3, 4, 5, 7, 8, 9, 13];
    v.push(8192 / T::BLCK_SIZE);
    v.sort_unstable();
    v.dedup();
    v
}

fn run<T: GgmlType>(seed: u64, half_offsets: &[usize]) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for nb in block_counts::<T>() {
        for k in [1, 2, 3, 4, 5, 2 * MAX_K + 1] {
            let w: Vec<T> = quantized(&mut rng, nb * T::BLCK_SIZE);
            check(&mut rng, &w, k, "quantized");
            let w: Vec<T> = raw(&mut rng, nb * T::BLCK_SIZE, half_offsets);
            check(&mut rng, &w, k, "raw");
        }
    }
}

#[test]
fn q4_0() {
    run::<BlockQ4_0>(1, &[0]);
}

#[test]
fn q4_1() {
    run::<BlockQ4_1>(2, &[0, 2]);
}

#[test]
fn q5_0() {
    run::<BlockQ5_0>(3, &[0]);
}

#[test]
fn q5_1() {
    run::<BlockQ5_1>(4, &[0, 2]);
}

#[test]
fn q8_0() {
    run::<BlockQ8_0>(5, &[0]);
}

#[test]
fn q4k() {
    run::<BlockQ4K>(6, &[0, 2]);
}

#[test]
fn q5k() {
    run::<BlockQ5K>(7, &[0, 2]);
}

#[test]
fn q6k() {
    run::<BlockQ6K>(8, &[208]);
}

/// The SIMD activation quantizers produce `quant_act`'s bytes exactly.
fn check_quantizer<V: GgmlType>(seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut inputs: Vec<Vec<f32>> = Vec::new();
    for blocks in [1, 2, 3, 8192 / V::BLCK_SIZE] {
        inputs.push(random_f32(&mut rng, blocks * V::BLCK_SIZE));
    }
    // Zero blocks, ties after scaling (odd multiples of amax / 254), repeated maxima of
    // either sign, tiny and huge magnitudes.
    let b = V::BLCK_SIZE;
    inputs.push(vec![0.0; 2 * b]);
    inputs.push((0..2 * b).map(|i| (i as f32 - b as f32) * (1.0 / 254.0)).collect());
    inputs.push((0..b).map(|i| [-2.0, 2.0, 0.5][i % 3]).collect());
    inputs.push((0..b).map(|i| [2.0, -2.0, 0.5][i % 3]).collect());
    inputs.push((0..b).map(|i| (i as f32 - 7.0) * 1e-6).collect());
    inputs.push((0..b).map(|i| (i as f32 - 7.0) * 1e4).collect());
    // Exact ties (scale 1), and near-ties for many scales, where the way the inverse
    // scale is formed decides the rounding.
    inputs.push((0..b).map(|i| if i == 0 { 127.0 } else { (i as f32 - 16.0) + 0.5 }).collect());
    let mut near = Vec::new();
    for _ in 0..512 {
        let amax = rng.random_range(1e-3f32..1e3);
        for i in 0..b {
            let k = rng.random_range(-127i32..127) as f32 + 0.5;
            near.push(if i == 0 { amax } else { k * amax / 127.0 });
        }
    }
    inputs.push(near);
    for x in &inputs {
        let mut want: Vec<V> = zeroed(x.len() / b);
        assert!(crate::quant_act::quantize_row(x, &mut want));
        for isa in levels() {
            let mut got: Vec<V> = zeroed(x.len() / b);
            quantize_row_with(isa, x, &mut got);
            assert!(bytes_mut(&mut got) == bytes_mut(&mut want), "{:?} {isa:?} differs for {x:?}", V::DTYPE);
        }
    }
}

#[test]
fn quantize_q8_0() {
    check_quantizer::<BlockQ8_0>(10);
}

#[test]
fn quantize_q8_1() {
    check_quantizer::<BlockQ4_1VecDot>(11);
}

#[test]
fn quantize_q8k() {
    check_quantizer::<<BlockQ4K as GgmlType>::VecDotType>(12);
}

#[test]
fn single_row_form_matches_multi() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let w: Vec<BlockQ4_1> = quantized(&mut rng, 512);
    let x: Vec<BlockQ4_1VecDot> = quantized(&mut rng, 512);
    let mut multi = [0f32];
    vec_dot_multi_with::<BlockQ4_1>(Isa::current(), 512, &w, &x, &mut multi);
    assert_eq!(vec_dot::<BlockQ4_1>(512, &w, &x), multi[0]);
}

type BlockQ4_1VecDot = <BlockQ4_1 as GgmlType>::VecDotType;

#[test]
fn detection_is_consistent() {
    assert!(Isa::current() <= Isa::detected());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        assert!(Isa::detected() >= Isa::Avx2);
    }
}

/// Kernel-only timing on L1-resident operands (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn kernel_timing() {
    fn time<T: GgmlType>(isa: Isa, k: usize) -> f64 {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = 1536;
        let w: Vec<T> = quantized(&mut rng, n);
        let x: Vec<T::VecDotType> = quantized(&mut rng, k * n);
        let mut out = vec![0f32; k];
        let reps = 20000;
        let mut best = f64::MAX;
        for _ in 0..7 {
            let t = std::time::Instant::now();
            for _ in 0..reps {
                vec_dot_multi_with::<T>(isa, n, std::hint::black_box(&w), &x, &mut out);
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        2.0 * (n * k * reps) as f64 / best / 1e9
    }
    fn all<T: GgmlType>() {
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
            if isa > Isa::detected() {
                continue;
            }
            let g1 = time::<T>(isa, 1);
            let g4 = time::<T>(isa, 4);
            println!("{:?} {isa:?}: k=1 {g1:.1} GFLOP/s, k=4 {g4:.1} GFLOP/s", T::DTYPE);
        }
    }
    all::<BlockQ4_0>();
    all::<BlockQ4_1>();
    all::<BlockQ5_0>();
    all::<BlockQ5_1>();
    all::<BlockQ8_0>();
    all::<BlockQ4K>();
    all::<BlockQ5K>();
    all::<BlockQ6K>();
}

/// Where a decode-sized matmul spends its time (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn matmul_breakdown() {
    use crate::{QMatrix, Scratch, Threads};
    use candle_core::quantized::GgmlDType;
    fn best(reps: usize, mut f: impl FnMut()) -> f64 {
        let mut b = f64::MAX;
        for _ in 0..7 {
            let t = std::time::Instant::now();
            for _ in 0..reps {
                f();
            }
            b = b.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        b
    }
    let (rows, cols) = (576, 1536);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let wv = random_f32(&mut rng, rows * cols);
    let th = Threads::new(1);
    for n in [1usize, 128] {
        let x = random_f32(&mut rng, n * cols);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
            let m = QMatrix::quantize(dtype, rows, cols, &wv).unwrap();
            let mut out = vec![0f32; n * rows];
            let mut sc = Scratch::default();
            let t_all = best(if n == 1 { 2000 } else { 20 }, || m.matmul(&x, n, &mut out, &mut sc, &th));
            let t_q = match dtype {
                GgmlDType::Q4_1 => {
                    let mut q: Vec<BlockQ4_1VecDot> = zeroed(n * cols / 32);
                    best(if n == 1 { 2000 } else { 20 }, || GgmlType::from_float(&x, &mut q))
                }
                GgmlDType::Q4K | GgmlDType::Q6K => {
                    let mut q: Vec<<BlockQ4K as GgmlType>::VecDotType> = zeroed(n * cols / 256);
                    best(if n == 1 { 2000 } else { 20 }, || GgmlType::from_float(&x, &mut q))
                }
                _ => {
                    let mut q: Vec<BlockQ8_0> = zeroed(n * cols / 32);
                    best(if n == 1 { 2000 } else { 20 }, || GgmlType::from_float(&x, &mut q))
                }
            };
            let gf = 2.0 * (rows * cols * n) as f64 / 1e9;
            println!(
                "{dtype:?} n={n}: matmul {:.1} us ({:.1} GFLOP/s), quantize {:.1} us",
                t_all * 1e6,
                gf / t_all,
                t_q * 1e6
            );
        }
    }
}

/// Random activation blocks for [`check_panel`]: as [`raw`], except that Q8_K's f32
/// scale (the first four bytes) is set to a finite value of moderate size.
fn raw_act<V: GgmlType>(rng: &mut ChaCha8Rng, n: usize, half_offsets: &[usize]) -> Vec<V> {
    let mut v: Vec<V> = raw(rng, n, half_offsets);
    if V::DTYPE == candle_core::quantized::GgmlDType::Q8K {
        let size = std::mem::size_of::<V>();
        for block in bytes_mut(&mut v).chunks_exact_mut(size) {
            block[..4].copy_from_slice(&rng.random_range(-0.05f32..0.05).to_le_bytes());
        }
    }
    v
}

/// The register-tiled product equals the row kernel bit for bit, for every shape around
/// its tile sizes and block grouping, on random bytes (any quants, scales of both signs),
/// at every ISA level this CPU has. `shapes` are (weight rows, activation rows).
fn check_panel<T: GgmlType>(
    seed: u64,
    half_offsets: &[usize],
    act_half_offsets: &[usize],
    block_counts: &[usize],
    shapes: &[(usize, usize)],
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for isa in levels() {
        for &nb in block_counts {
            let cols = nb * T::BLCK_SIZE;
            let panel = Panel::<T>::with_isa(isa, cols).expect("a tiled kernel at every SIMD level");
            let row = RowDot::<T>::with_isa(isa, cols);
            for &(rows, n) in shapes {
                let w: Vec<T> = raw(&mut rng, rows * cols, half_offsets);
                let x: Vec<T::VecDotType> = raw_act(&mut rng, n * cols, act_half_offsets);
                let mut xh = vec![0f32; header_floats::<T::VecDotType>() * x.len()];
                act_headers(&x, &mut xh);
                let mut got = vec![f32::NAN; rows * n];
                panel.run(&w, rows, &x, n, &xh, |r, t, v| got[t * rows + r] = v);
                for r in 0..rows {
                    let mut want = vec![0f32; n];
                    row.run(&w[r * nb..(r + 1) * nb], &x, &xh, &mut want);
                    for t in 0..n {
                        assert_eq!(
                            got[t * rows + r].to_bits(),
                            want[t].to_bits(),
                            "{:?} {isa:?} nb={nb} rows={rows} n={n} ({r}, {t}): {} vs {}",
                            T::DTYPE,
                            got[t * rows + r],
                            want[t]
                        );
                    }
                }
            }
        }
    }
}

/// Shapes (weight rows, activation rows) of the 32-element types' tests, around their
/// 2 x 3 tile.
const SHAPES_32: &[(usize, usize)] = &[(1, 1), (2, 4), (3, 5), (5, 9), (6, 8), (7, 13)];

/// Shapes of the K-quants' tests: every row count around the AVX2 (2 x 3) and AVX-512
/// (4 x 4) tiles, with tail rows on both sides, and 45 weight rows of one super-block,
/// more than one unpacked tile holds (42 rows).
const SHAPES_K: &[(usize, usize)] =
    &[(1, 1), (1, 8), (2, 3), (2, 4), (3, 5), (4, 4), (4, 9), (5, 7), (6, 8), (7, 13), (8, 12), (9, 17), (45, 5)];

#[test]
fn panel_matches_the_row_kernels_bit_for_bit() {
    let nb = [1, 2, 3, 4, 5, 7, 8, 9, 13, 20];
    check_panel::<BlockQ4_0>(41, &[0], &[0], &nb, SHAPES_32);
    check_panel::<BlockQ4_1>(42, &[0, 2], &[0, 2], &nb, SHAPES_32);
    check_panel::<BlockQ5_0>(43, &[0], &[0], &nb, SHAPES_32);
    check_panel::<BlockQ5_1>(44, &[0, 2], &[0, 2], &nb, SHAPES_32);
    check_panel::<BlockQ8_0>(45, &[0], &[0], &nb, SHAPES_32);
}

#[test]
fn k_quant_panel_matches_the_row_kernels_bit_for_bit() {
    // Super-blocks per row: one, a few, 2048 and 8192 columns (20 rows of 8192 columns
    // leave two rows per unpacked tile).
    let nb = [1, 2, 3, 5, 8, 32];
    check_panel::<BlockQ4K>(46, &[0, 2], &[], &nb, SHAPES_K);
    check_panel::<BlockQ5K>(47, &[0, 2], &[], &nb, SHAPES_K);
    check_panel::<BlockQ6K>(48, &[208], &[], &nb, SHAPES_K);
}

/// On quantized (not random) operands too: real scale and minimum patterns, activation
/// sums that match their quants. (The row kernels themselves are checked against
/// candle's scalar products above.)
#[test]
fn k_quant_panel_matches_the_row_kernels_on_quantized_data() {
    fn check<T: GgmlType>(seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for isa in levels() {
            for nb in [1, 3, 8] {
                let cols = nb * T::BLCK_SIZE;
                let panel = Panel::<T>::with_isa(isa, cols).expect("tiled kernel");
                let row = RowDot::<T>::with_isa(isa, cols);
                let (rows, n) = (7, 11);
                let w: Vec<T> = quantized(&mut rng, rows * cols);
                let x: Vec<T::VecDotType> = quantized(&mut rng, n * cols);
                let mut got = vec![f32::NAN; rows * n];
                panel.run(&w, rows, &x, n, &[], |r, t, v| got[t * rows + r] = v);
                for r in 0..rows {
                    let mut want = vec![0f32; n];
                    row.run(&w[r * nb..(r + 1) * nb], &x, &[], &mut want);
                    for t in 0..n {
                        assert_eq!(got[t * rows + r].to_bits(), want[t].to_bits(), "{:?} {isa:?} ({r}, {t})", T::DTYPE);
                    }
                }
            }
        }
    }
    check::<BlockQ4K>(49);
    check::<BlockQ5K>(50);
    check::<BlockQ6K>(51);
}

#[test]
fn panel_exists_for_the_32_element_types_and_the_k_quants() {
    for isa in levels() {
        assert!(Panel::<BlockQ4_0>::with_isa(isa, 64).is_some(), "Q4_0 {isa:?}");
        assert!(Panel::<BlockQ4_1>::with_isa(isa, 64).is_some(), "Q4_1 {isa:?}");
        assert!(Panel::<BlockQ5_0>::with_isa(isa, 64).is_some(), "Q5_0 {isa:?}");
        assert!(Panel::<BlockQ5_1>::with_isa(isa, 64).is_some(), "Q5_1 {isa:?}");
        assert!(Panel::<BlockQ8_0>::with_isa(isa, 64).is_some(), "Q8_0 {isa:?}");
        assert!(Panel::<BlockQ4K>::with_isa(isa, 256).is_some(), "Q4_K {isa:?}");
        assert!(Panel::<BlockQ5K>::with_isa(isa, 256).is_some(), "Q5_K {isa:?}");
        assert!(Panel::<BlockQ6K>::with_isa(isa, 256).is_some(), "Q6_K {isa:?}");
    }
    assert!(Panel::<BlockQ4_0>::with_isa(Isa::Portable, 64).is_none(), "no tiled kernel without SIMD");
}
