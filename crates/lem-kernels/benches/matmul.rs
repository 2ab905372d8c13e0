//! Quantized matmul throughput per weight type.
//!
//! `cargo bench -p lem-kernels --bench matmul` multiplies a 576x1536 weight matrix (the
//! shape of a small model's projections) by `n` activation rows on one thread and reports
//! throughput as elements per second, where one element is one floating-point operation
//! (`2 * rows * cols * n` per product), so `Gelem/s` reads as GFLOP/s.
//!
//! Environment: `LEM_BENCH_N` (comma-separated row counts, default `1,64`),
//! `LEM_BENCH_TYPES` (comma-separated GGML type names such as `q4_1,q5_0`, default all),
//! `LEM_BENCH_THREADS` (default 1), `LEM_BENCH_ROWS` (default 576; e.g. 65536 for a
//! matrix far larger than the caches, as a decode step streams its weights),
//! `LEM_BENCH_COLS` (default 1536; the row length, a multiple of 256 for the K-quants).

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::time::Duration;

use candle_core::quantized::GgmlDType;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lem_kernels::{QMatrix, Scratch, Threads};
use rand::{Rng, SeedableRng};

/// The default row length (`LEM_BENCH_COLS` overrides it).
const COLS: usize = 1536;

const TYPES: &[(&str, GgmlDType)] = &[
    ("q4_0", GgmlDType::Q4_0),
    ("q4_1", GgmlDType::Q4_1),
    ("q5_0", GgmlDType::Q5_0),
    ("q5_1", GgmlDType::Q5_1),
    ("q8_0", GgmlDType::Q8_0),
    ("q2k", GgmlDType::Q2K),
    ("q3k", GgmlDType::Q3K),
    ("q4k", GgmlDType::Q4K),
    ("q5k", GgmlDType::Q5K),
    ("q6k", GgmlDType::Q6K),
    ("f32", GgmlDType::F32),
];

fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name).ok().map(|v| v.split(',').map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty()).collect())
}

fn bench_matmul(c: &mut Criterion) {
    let ns: Vec<usize> = env_list("LEM_BENCH_N")
        .map(|v| v.iter().filter_map(|s| s.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 64]);
    let types = env_list("LEM_BENCH_TYPES");
    let rows: usize = std::env::var("LEM_BENCH_ROWS").ok().and_then(|s| s.parse().ok()).unwrap_or(576);
    let cols: usize = std::env::var("LEM_BENCH_COLS").ok().and_then(|s| s.parse().ok()).unwrap_or(COLS);
    let threads = Threads::new(std::env::var("LEM_BENCH_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(1));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let max_n = ns.iter().copied().max().unwrap_or(1);
    let x: Vec<f32> = (0..max_n * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();

    let mut group = c.benchmark_group(format!("matmul_{rows}x{cols}"));
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(1));
    for &(name, dtype) in TYPES {
        if types.as_ref().is_some_and(|t| !t.iter().any(|t| t == name)) {
            continue;
        }
        let m = QMatrix::quantize(dtype, rows, cols, &w).expect("quantize");
        for &n in &ns {
            let mut out = vec![0f32; n * rows];
            let mut scratch = Scratch::default();
            group.throughput(Throughput::Elements((2 * rows * cols * n) as u64));
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, &n| {
                b.iter(|| {
                    m.matmul(&x[..n * cols], n, &mut out, &mut scratch, &threads);
                    std::hint::black_box(&out);
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_matmul);
criterion_main!(benches);
