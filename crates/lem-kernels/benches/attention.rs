//! Attention throughput over an f16 cache.
//!
//! `cargo bench -p lem-kernels --bench attention` runs [`ops::attention`] for SmolLM2's
//! shape (9 query heads over 3 KV heads of 64) and Gemma 3 270M's (4 over 1 of 256), for a
//! decode step (1 query token) at 512 and 2,048 cached positions and a 128-token prompt
//! chunk at 512, on `LEM_BENCH_THREADS` threads (default 1). Throughput is in
//! floating-point operations (`4 * heads * head_dim` per visible query-key pair), so
//! `Gelem/s` reads as GFLOP/s.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use half::f16;
use lem_kernels::Threads;
use lem_kernels::ops::{self, AttnShape, KvData, KvView, Mask};
use rand::{Rng, SeedableRng};

fn bench_attention(c: &mut Criterion) {
    let threads = Threads::new(std::env::var("LEM_BENCH_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(1));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut group = c.benchmark_group("attention_f16");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(1));
    // (name, query heads, KV heads, head size)
    for (model, n_head, n_kv, hd) in [("smollm2", 9, 3, 64), ("gemma3", 4, 1, 256)] {
        // (cached cells, query tokens at the end)
        for (cells, n_tok) in [(512usize, 1usize), (2048, 1), (512, 128)] {
            let k: Vec<f16> = (0..cells * n_kv * hd).map(|_| f16::from_f32(rng.random_range(-1.0f32..1.0))).collect();
            let v: Vec<f16> = (0..cells * n_kv * hd).map(|_| f16::from_f32(rng.random_range(-1.0f32..1.0))).collect();
            let q: Vec<f32> = (0..n_tok * n_head * hd).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let pos: Vec<u32> = (0..cells as u32).collect();
            let q_pos: Vec<u32> = ((cells - n_tok) as u32..cells as u32).collect();
            let shape = AttnShape { n_head, n_kv, head_dim: hd, scale: 0.125, softcap: None, mask: Mask::Causal };
            let mut out = vec![0f32; q.len()];
            let pairs: usize = q_pos.iter().map(|&p| p as usize + 1).sum();
            group.throughput(Throughput::Elements((4 * n_head * hd * pairs) as u64));
            let id = BenchmarkId::new(model, format!("{cells}cells_{n_tok}tok"));
            group.bench_function(id, |b| {
                b.iter(|| {
                    let view = KvView { data: KvData::F16 { k: &k, v: &v }, pos: &pos };
                    ops::attention(&q, &q_pos, view, &shape, &mut out, None, &threads);
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_attention);
criterion_main!(benches);
