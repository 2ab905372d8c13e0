//! Seeded, structure-aware mutation fuzzing of every lem parser of untrusted bytes
//! (docs/reliability.md).
//!
//! Each [`Target`] names a parser (GGUF files, Hugging Face directories, tokenizer files,
//! chat templates, snapshots, prefix-cache blocks, the session index), seeds it with real
//! files of its kind and consumes mutated inputs the way lem does. [`fuzz`] runs a fixed,
//! seeded number of inputs (deterministic: CI runs it) or runs for a time budget
//! (`scripts/fuzz.sh`); a panic is a crash, kept with the input that caused it.

mod http;
pub mod mutate;
pub mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

pub use targets::{Fixtures, FuzzError, Mutation, TARGETS, Target, target};

/// How long a run goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Exactly this many mutated inputs (deterministic for a seed).
    Inputs(u64),
    /// As many inputs as fit in this time.
    Time(Duration),
}

/// A crash: the panic message and where the input was saved.
#[derive(Debug, Clone)]
pub struct Crash {
    /// The panic message.
    pub message: String,
    /// The input's file (under the crash directory), named by its SHA-256.
    pub input: PathBuf,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The target.
    pub target: &'static str,
    /// Inputs consumed (seeds included).
    pub inputs: u64,
    /// Inputs the parser accepted (the rest it refused with an error).
    pub accepted: u64,
    /// Seeds the parser refused (a target whose seeds are refused tests nothing).
    pub refused_seeds: u64,
    /// Distinct crashing inputs.
    pub crashes: Vec<Crash>,
    /// The slowest input, in seconds.
    pub slowest_s: f64,
    /// Wall time of the run, in seconds.
    pub elapsed_s: f64,
}

impl std::fmt::Display for Report {
    /// One line: target, inputs, accepted, crashes, slowest input, elapsed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<18} inputs {:>8}  accepted {:>8}  crashes {:>3}  slowest {:>7.3} s  elapsed {:>7.1} s",
            self.target,
            self.inputs,
            self.accepted,
            self.crashes.len(),
            self.slowest_s,
            self.elapsed_s
        )
    }
}

/// Runs `target` from its seeds: each seed once, then mutated inputs (1 to 4 stacked
/// mutations of a random seed or of an earlier input kept because it was accepted past
/// the first check, up to `budget`). Crashing inputs are written to `crash_dir`.
pub fn fuzz(
    target: &Target,
    fixtures: &Fixtures,
    seed: u64,
    budget: Budget,
    crash_dir: &std::path::Path,
) -> Result<Report, FuzzError> {
    let seeds = target.seeds(fixtures)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv(target.name));
    let start = Instant::now();
    let mut report = Report {
        target: target.name,
        inputs: 0,
        accepted: 0,
        refused_seeds: 0,
        crashes: Vec::new(),
        slowest_s: 0.0,
        elapsed_s: 0.0,
    };
    let mut corpus = seeds.clone();
    // Panics are expected to be caught here; keep the default hook from printing each.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut i = 0u64;
    loop {
        let done = match budget {
            Budget::Inputs(n) => i >= n + seeds.len() as u64,
            Budget::Time(t) => start.elapsed() >= t && i >= seeds.len() as u64,
        };
        if done {
            break;
        }
        let input = if (i as usize) < seeds.len() {
            seeds[i as usize].clone()
        } else {
            let mut d = corpus[rng.random_range(0..corpus.len())].clone();
            let other = &seeds[rng.random_range(0..seeds.len())];
            for _ in 0..rng.random_range(1..=4) {
                target.mutate(&mut rng, &mut d, other);
            }
            d
        };
        i += 1;
        let scratch = tempfile::tempdir()?;
        let t0 = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| target.run(fixtures, scratch.path(), &input)));
        report.slowest_s = report.slowest_s.max(t0.elapsed().as_secs_f64());
        match outcome {
            Ok(accepted) => {
                report.accepted += u64::from(accepted);
                if !accepted && (i as usize) <= seeds.len() {
                    report.refused_seeds += 1;
                }
                // Keep a few mutated inputs to mutate further (small corpus, bounded).
                if accepted && corpus.len() < 64 && rng.random_bool(0.05) {
                    corpus.push(input);
                }
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "non-string panic".into());
                let name = hex::encode(Sha256::digest(&input));
                std::fs::create_dir_all(crash_dir)?;
                let path = crash_dir.join(format!("{}-{}.bin", target.name, &name[..16]));
                std::fs::write(&path, &input)?;
                if !report.crashes.iter().any(|c| c.input == path) {
                    report.crashes.push(Crash { message, input: path });
                }
            }
        }
    }
    std::panic::set_hook(hook);
    report.inputs = i;
    report.elapsed_s = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Replays one saved input; `Err` holds the panic message.
pub fn replay(target: &Target, fixtures: &Fixtures, input: &[u8]) -> Result<(), String> {
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    catch_unwind(AssertUnwindSafe(|| target.run(fixtures, scratch.path(), input))).map(|_| ()).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "non-string panic".into())
    })
}

/// FNV-1a of a name: each target gets its own stream from one seed.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target that crashes on inputs starting with `!`: the driver must find it from a
    /// seed that does not, keep the input, and report it once per distinct input.
    #[test]
    fn the_driver_catches_and_keeps_crashes() {
        let t = Target::for_test(|data| assert!(data.first() != Some(&b'!'), "bang"));
        let dir = tempfile::tempdir().unwrap();
        let fx = Fixtures::new(dir.path());
        let r = fuzz(&t, &fx, 1, Budget::Inputs(3000), dir.path()).unwrap();
        assert_eq!(r.inputs, 3001);
        assert!(!r.crashes.is_empty(), "no crash found in 3000 inputs");
        for c in &r.crashes {
            assert_eq!(c.message, "bang");
            let input = std::fs::read(&c.input).unwrap();
            assert_eq!(input.first(), Some(&b'!'));
            assert_eq!(replay(&t, &fx, &input), Err("bang".to_owned()));
        }
        let again = fuzz(&t, &fx, 1, Budget::Inputs(3000), dir.path()).unwrap();
        let names = |r: &Report| r.crashes.iter().map(|c| c.input.clone()).collect::<Vec<_>>();
        assert_eq!(names(&r), names(&again), "the same seed must find the same inputs");
    }
}
