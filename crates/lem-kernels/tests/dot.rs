//! `QMatrix::matmul` (SIMD dot products, activation quantization, row tiling, threads)
//! against a plain f32 matmul of the dequantized weights, for every weight type.

use candle_core::quantized::GgmlDType;
use lem_kernels::{QMatrix, Scratch, Threads};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TYPES: &[GgmlDType] = &[
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
    GgmlDType::F32,
    GgmlDType::F16,
];

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|i| rng.random_range(-1.0f32..1.0) * [0.05, 1.0, 3.0][i / 64 % 3]).collect()
}

/// Checks `m.matmul` for `n` random activation rows against f64 sums over `m.to_f32()`.
///
/// The only error beyond float rounding is the activations' 8-bit quantization (or f16
/// rounding for F16 weights): each activation moves by at most half a step, `amax / 254`
/// of its block, so `|err| <= sum_i |w_i| * max|x| / 254` (with a little slack).
fn check(m: &QMatrix, n: usize, threads: &Threads, rng: &mut ChaCha8Rng) {
    let (rows, cols) = (m.rows(), m.cols());
    let x = random(rng, n * cols);
    let mut out = vec![f32::NAN; n * rows];
    let mut scratch = Scratch::default();
    m.matmul(&x, n, &mut out, &mut scratch, threads);
    let w = m.to_f32();
    for t in 0..n {
        let xt = &x[t * cols..(t + 1) * cols];
        let xmax = xt.iter().fold(0f32, |a, v| a.max(v.abs()));
        for r in 0..rows {
            let wr = &w[r * cols..(r + 1) * cols];
            let want: f64 = wr.iter().zip(xt).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
            let wsum: f32 = wr.iter().map(|v| v.abs()).sum();
            let tol = wsum * xmax / 254.0 * 1.05 + 1e-3;
            let got = out[t * rows + r];
            assert!(
                (f64::from(got) - want).abs() <= f64::from(tol),
                "{:?} {rows}x{cols} n={n} threads={}: out[{t}][{r}] = {got}, want {want} (tol {tol})",
                m.dtype(),
                threads.count(),
            );
        }
    }
}

#[test]
fn matmul_matches_f32_reference_for_every_type() {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let pools = [Threads::new(1), Threads::new(2)];
    for &dtype in TYPES {
        let block = dtype.block_size();
        // One block per row, an odd number of blocks, and a longer row; 37 rows is not a
        // multiple of the row tile, the thread split or the 4-row kernel groups.
        let mut widths = vec![block, 3 * block, 2048];
        if block == 32 {
            widths.push(32 * 13);
        }
        for cols in widths {
            let rows = 37;
            let m = QMatrix::quantize(dtype, rows, cols, &random(&mut rng, rows * cols)).unwrap();
            for threads in &pools {
                for n in [1, 2, 4, 7] {
                    check(&m, n, threads, &mut rng);
                }
            }
        }
    }
}

#[test]
fn matmul_is_the_same_with_one_or_two_threads() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for &dtype in TYPES {
        let (rows, cols, n) = (64, 512, 7);
        let m = QMatrix::quantize(dtype, rows, cols, &random(&mut rng, rows * cols)).unwrap();
        let x = random(&mut rng, n * cols);
        let mut a = vec![0f32; n * rows];
        let mut b = vec![0f32; n * rows];
        m.matmul(&x, n, &mut a, &mut Scratch::default(), &Threads::new(1));
        m.matmul(&x, n, &mut b, &mut Scratch::default(), &Threads::new(2));
        assert_eq!(a, b, "{dtype:?}");
    }
}

#[test]
fn one_row_at_a_time_equals_a_batch() {
    // Decode (n = 1) and prompt processing (n > 1) take different kernels (row kernels
    // for a few rows, register-tiled ones for many); each output must not depend on which
    // rows it was computed with, bit for bit.
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for &dtype in TYPES {
        // 800 columns leave a tail after the 4-block groups of the 32-element types; for
        // the K-quants, one super-block, three, and a feed-forward's 2048 columns.
        let cols_list: &[usize] = if dtype.block_size() == 32 { &[768, 800] } else { &[256, 768, 2048] };
        for &cols in cols_list {
            // Every count of a few rows (batched decode, draft verification: one call
            // of the row kernels with groups of 4 or 8 rows), and around the tiled
            // kernels' thresholds (8 rows for the K-quants, 64 for the 32-element types)
            // and tiles (2 x 3 and 4 x 4), with tail groups of activation rows.
            for n in (1..=17).chain([21, 63, 64, 65]) {
                // Weight rows: tail rows after the kernels' row groups; 19 rows of 256 or
                // 768 columns span more than one unpacked tile of the K-quants.
                let rows = 19;
                let m = QMatrix::quantize(dtype, rows, cols, &random(&mut rng, rows * cols)).unwrap();
                let x = random(&mut rng, n * cols);
                let mut batch = vec![0f32; n * rows];
                let th = Threads::new(1);
                let mut scratch = Scratch::default();
                m.matmul(&x, n, &mut batch, &mut scratch, &th);
                for t in 0..n {
                    let mut one = vec![0f32; rows];
                    m.matmul(&x[t * cols..(t + 1) * cols], 1, &mut one, &mut scratch, &th);
                    let one: Vec<u32> = one.iter().map(|v| v.to_bits()).collect();
                    let got: Vec<u32> = batch[t * rows..(t + 1) * rows].iter().map(|v| v.to_bits()).collect();
                    assert_eq!(one, got, "{dtype:?} cols {cols} n {n} row {t}");
                }
            }
        }
    }
}

/// Several matrices in one pass give what each gives alone, bit for bit: same types
/// (one shared quantization), mixed types (one after another), and more matrices than
/// one pass takes.
#[test]
fn matmul_many_equals_separate_products() {
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let threads = Threads::new(2);
    let cols = 256;
    let sets: [&[(GgmlDType, usize)]; 3] = [
        &[(GgmlDType::Q4_1, 96), (GgmlDType::Q4_1, 32), (GgmlDType::Q4_1, 32)],
        &[(GgmlDType::Q5_0, 40), (GgmlDType::Q8_0, 24), (GgmlDType::Q4K, 17)],
        &[
            (GgmlDType::Q8_0, 8),
            (GgmlDType::Q8_0, 9),
            (GgmlDType::Q8_0, 10),
            (GgmlDType::Q8_0, 11),
            (GgmlDType::Q8_0, 12),
        ],
    ];
    for set in sets {
        let mats: Vec<QMatrix> = set
            .iter()
            .map(|&(dtype, rows)| QMatrix::quantize(dtype, rows, cols, &random(&mut rng, rows * cols)).unwrap())
            .collect();
        for n in [1, 3, 9] {
            let x = random(&mut rng, n * cols);
            let mut scratch = Scratch::default();
            let want: Vec<Vec<f32>> = mats
                .iter()
                .map(|m| {
                    let mut out = vec![0f32; n * m.rows()];
                    m.matmul(&x, n, &mut out, &mut scratch, &threads);
                    out
                })
                .collect();
            let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![f32::NAN; n * m.rows()]).collect();
            let mut parts: Vec<(&QMatrix, &mut [f32])> =
                mats.iter().zip(outs.iter_mut()).map(|(m, o)| (m, o.as_mut_slice())).collect();
            QMatrix::matmul_many(&mut parts, &x, n, &mut scratch, &threads);
            for (i, (g, w)) in outs.iter().zip(&want).enumerate() {
                let gb: Vec<u32> = g.iter().map(|v| v.to_bits()).collect();
                let wb: Vec<u32> = w.iter().map(|v| v.to_bits()).collect();
                assert_eq!(gb, wb, "{set:?}: matrix {i}, {n} rows");
            }
        }
    }
}

/// The same at the AVX2 level on a CPU with AVX-512: the test above again in a child
/// process with `LEM_KERNELS_ISA=avx2` (the level is chosen once per process), so that
/// both levels' tiled and row kernels are checked against each other's shapes.
#[test]
fn one_row_at_a_time_equals_a_batch_at_avx2() {
    if std::env::var_os("LEM_KERNELS_ISA").is_some() {
        return; // Already capped (this is the child, or the caller chose a level).
    }
    #[cfg(target_arch = "x86_64")]
    if !std::arch::is_x86_feature_detected!("avx512vnni") || !std::arch::is_x86_feature_detected!("avx2") {
        return; // One SIMD level at most: the test above covers it.
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args(["--exact", "one_row_at_a_time_equals_a_batch", "--test-threads", "1"])
        .env("LEM_KERNELS_ISA", "avx2")
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "AVX2 run failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1 passed"), "the AVX2 run did not run the test:\n{stdout}");
}
