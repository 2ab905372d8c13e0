//! The prompt kernels (many activation rows: the register-tiled products of `dot/panel.rs`
//! and `dot/panel_k.rs`) at each SIMD level this CPU has, side by side.
//!
//! `cargo bench -p lem-kernels --bench prompt_isa` runs itself once per level (AVX2, and
//! AVX-512 where the CPU has AVX-512 BW/VL/VNNI) with `LEM_KERNELS_ISA` set, since the
//! level is chosen once per process; each run is a Criterion group `prompt_<level>_<rows>x
//! <cols>`, and at the end a table gives both levels' GFLOP/s and their ratio. The
//! default shape is Gemma 3 270M's feed-forward down projection (640 x 2048, Q4_K or Q6_K
//! in its Q4_K_M file) against a 512-token prompt on one thread.
//!
//! Environment: `LEM_BENCH_N` (activation rows, comma-separated, default `512`),
//! `LEM_BENCH_TYPES` (default `q4k,q5k,q6k,q4_1,q5_0,q8_0`), `LEM_BENCH_ROWS` (default
//! 640), `LEM_BENCH_COLS` (default 2048, a multiple of 256), `LEM_BENCH_THREADS`
//! (default 1).

#![allow(missing_docs)] // Criterion's macros generate undocumented items.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::quantized::GgmlDType;
use criterion::{BenchmarkId, Criterion, Throughput};
use lem_kernels::{QMatrix, Scratch, Threads};
use rand::{Rng, SeedableRng};

const TYPES: &[(&str, GgmlDType)] = &[
    ("q4k", GgmlDType::Q4K),
    ("q5k", GgmlDType::Q5K),
    ("q6k", GgmlDType::Q6K),
    ("q4_0", GgmlDType::Q4_0),
    ("q4_1", GgmlDType::Q4_1),
    ("q5_0", GgmlDType::Q5_0),
    ("q5_1", GgmlDType::Q5_1),
    ("q8_0", GgmlDType::Q8_0),
];

/// The environment variable that marks a child run (its value is the level).
const CHILD: &str = "LEM_BENCH_ISA_CHILD";
/// The prefix of a child's result lines.
const TAG: &str = "prompt_isa:";

fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name).ok().map(|v| v.split(',').map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty()).collect())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// The SIMD levels of lem's kernels this CPU runs, as `LEM_KERNELS_ISA` names them.
fn levels() -> Vec<&'static str> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            v.push("avx2");
            if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
                v.push("avx512");
            }
        }
    }
    v
}

/// One child run: the Criterion group at this process's level, then one result line per
/// case (best time per product over Criterion's samples).
fn child(level: &str) {
    let ns: Vec<usize> =
        env_list("LEM_BENCH_N").map(|v| v.iter().filter_map(|s| s.parse().ok()).collect()).unwrap_or_else(|| vec![512]);
    let types = env_list("LEM_BENCH_TYPES")
        .unwrap_or_else(|| ["q4k", "q5k", "q6k", "q4_1", "q5_0", "q8_0"].iter().map(|s| s.to_string()).collect());
    let rows = env_usize("LEM_BENCH_ROWS", 640);
    let cols = env_usize("LEM_BENCH_COLS", 2048);
    let threads = Threads::new(env_usize("LEM_BENCH_THREADS", 1));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let max_n = ns.iter().copied().max().unwrap_or(1);
    let x: Vec<f32> = (0..max_n * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group(format!("prompt_{level}_{rows}x{cols}"));
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(2));
    let mut best = Vec::new();
    for &(name, dtype) in TYPES {
        if !types.iter().any(|t| t == name) {
            continue;
        }
        let m = QMatrix::quantize(dtype, rows, cols, &w).expect("quantize");
        for &n in &ns {
            let mut out = vec![0f32; n * rows];
            let mut scratch = Scratch::default();
            let mut fastest = f64::MAX;
            group.throughput(Throughput::Elements((2 * rows * cols * n) as u64));
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, &n| {
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        m.matmul(&x[..n * cols], n, &mut out, &mut scratch, &threads);
                        std::hint::black_box(&out);
                    }
                    let e = t.elapsed();
                    fastest = fastest.min(e.as_secs_f64() / iters as f64);
                    e
                })
            });
            best.push((name, n, 2.0 * (rows * cols * n) as f64 / fastest / 1e9));
        }
    }
    group.finish();
    for (name, n, gflops) in best {
        println!("{TAG} {level} {name} {n} {gflops:.2}");
    }
}

fn main() {
    if let Ok(level) = std::env::var(CHILD) {
        child(&level);
        return;
    }
    let exe = std::env::current_exe().expect("bench binary");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut results: Vec<(String, String, String, f64)> = Vec::new();
    let levels = levels();
    if levels.is_empty() {
        println!("prompt_isa: no SIMD level with lem kernels on this CPU");
        return;
    }
    for level in &levels {
        let mut proc = Command::new(&exe)
            .args(&args)
            .env(CHILD, level)
            .env("LEM_KERNELS_ISA", level)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run the bench binary");
        let stdout = proc.stdout.take().expect("child stdout");
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("child output");
            match line.strip_prefix(TAG).map(|r| r.split_whitespace().collect::<Vec<_>>()) {
                Some(f) if f.len() == 4 => {
                    let gflops = f[3].parse().unwrap_or(f64::NAN);
                    results.push((f[0].to_string(), f[1].to_string(), f[2].to_string(), gflops));
                }
                _ => println!("{line}"),
            }
        }
        assert!(proc.wait().expect("child").success(), "the {level} run failed");
    }
    let rows = env_usize("LEM_BENCH_ROWS", 640);
    let cols = env_usize("LEM_BENCH_COLS", 2048);
    println!("\nprompt kernels, {rows}x{cols} weights, best GFLOP/s per level (one product = 2*rows*cols*n)");
    println!("| type | n | {} | ratio |", levels.join(" | "));
    println!("|---|---|{}---|", "---|".repeat(levels.len()));
    let first = levels[0];
    for (_, name, n, base) in results.iter().filter(|r| r.0 == first) {
        let mut line = format!("| {name} | {n} | {base:.1} |");
        let mut last = *base;
        for other in &levels[1..] {
            let v = results.iter().find(|r| r.0 == *other && &r.1 == name && &r.2 == n).map_or(f64::NAN, |r| r.3);
            line.push_str(&format!(" {v:.1} |"));
            last = v;
        }
        line.push_str(&format!(" {:.2} |", last / base));
        println!("{line}");
    }
}
