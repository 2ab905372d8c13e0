//! temporary perf probe
mod common;
use common::{GEMMA3, SMOLLM2};
use lem_tokenizer::{Bos, Tokenizer};
use std::time::Instant;
#[test]
fn perf() {
    for m in [SMOLLM2, GEMMA3] {
        let t = Instant::now();
        let tok = Tokenizer::from_gguf(&common::model_path(m)).unwrap();
        println!("{}: load {:?}", m.fixture, t.elapsed());
        let corpus = common::corpus().strings.join("\n");
        let big = corpus.repeat(20);
        let t = Instant::now();
        let ids = tok.encode(&big, Bos::Omit).unwrap();
        let dt = t.elapsed();
        println!("{}: {} bytes -> {} ids in {:?} ({:.1} MB/s)", m.fixture, big.len(), ids.len(), dt, big.len() as f64 / dt.as_secs_f64() / 1e6);
        let spaces = " ".repeat(2_000_000) + &"\n".repeat(1_000_000) + &"<b>".repeat(100_000);
        let t = Instant::now();
        let ids = tok.encode(&spaces, Bos::Omit).unwrap();
        println!("{}: pathological {} bytes -> {} ids in {:?}", m.fixture, spaces.len(), ids.len(), t.elapsed());
        let t = Instant::now();
        let s = tok.decode(&ids).unwrap();
        println!("{}: decode {} in {:?}", m.fixture, s.len(), t.elapsed());
    }
}
