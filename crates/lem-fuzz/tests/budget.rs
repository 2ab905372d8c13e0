//! CI's fuzzing budget: every target, a fixed number of seeded mutated inputs
//! (deterministic), no crash. `LEM_FUZZ_INPUTS` changes the count; `scripts/fuzz.sh`
//! runs one target for minutes instead.

use lem_fuzz::{Budget, Fixtures, TARGETS, fuzz};

fn inputs() -> u64 {
    std::env::var("LEM_FUZZ_INPUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(300)
}

#[test]
fn every_target_survives_its_budget() {
    let fixtures = Fixtures::new(Fixtures::default_dir());
    let crash_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes");
    let mut failures = Vec::new();
    for t in TARGETS {
        let r = fuzz(t, &fixtures, 20261202, Budget::Inputs(inputs()), &crash_dir)
            .unwrap_or_else(|e| panic!("{}: {e}", t.name));
        eprintln!("{r}");
        assert!(r.inputs > inputs(), "{}: ran {} inputs", t.name, r.inputs);
        assert_eq!(r.refused_seeds, 0, "{}: its seeds are refused, so the target tests nothing", t.name);
        for c in r.crashes {
            failures.push(format!("{}: {} (input kept in {})", t.name, c.message, c.input.display()));
        }
    }
    assert!(failures.is_empty(), "crashes:\n{}", failures.join("\n"));
}
