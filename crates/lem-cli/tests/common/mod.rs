//! Helpers shared by the tests that run the real `lem` binary.
#![allow(dead_code)] // Each test file uses its own subset.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `lem` with a clean environment: no model default, no backtraces, the model cache at
/// `cache` (an empty one means nothing is ever downloaded).
pub fn lem(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lem"));
    c.env_remove("LEM_MODEL")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env("LEM_MODELS_DIR", cache);
    c
}

/// Runs `cmd`; returns its output and its stdout and stderr as text.
pub fn run_cmd(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("run lem");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// Runs `lem args` with an empty model cache.
pub fn run(args: &[&str]) -> (Output, String, String) {
    let dir = tempfile::tempdir().unwrap();
    run_cmd(lem(dir.path()).args(args))
}

/// Runs `lem args`, expecting exit status 1 with exactly one stderr line
/// `lem: error: ...` (no panic, nothing on stdout); returns that line.
#[track_caller]
pub fn fails_with_one_line(args: &[&str]) -> String {
    let (out, stdout, stderr) = run(args);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {:?}\nstdout: {stdout}\nstderr: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{args:?}: panicked\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one stderr line, got:\n{stderr}");
    assert!(lines[0].starts_with("lem: error: "), "{args:?}: {}", lines[0]);
    assert!(stdout.is_empty(), "{args:?}: stdout: {stdout}");
    lines[0].to_owned()
}

/// Runs `lem args`, which must succeed; returns stdout and stderr.
#[track_caller]
pub fn succeeds(args: &[&str]) -> (String, String) {
    let (out, stdout, stderr) = run(args);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    (stdout, stderr)
}

/// The path as `&str` (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The cached file of a packaged model, or `None` (with a note) when it is absent.
pub fn packaged(alias: &str) -> Option<PathBuf> {
    let spec = lem_hub::find(alias).expect("known alias");
    let path = lem_hub::models_dir().ok()?.join(spec.file_name);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("skipping: {alias} is not at {} (run `lem models fetch all`)", path.display());
        None
    }
}

/// `lem args -m MODEL -t 2`, which must succeed; returns stdout.
#[track_caller]
pub fn ok_on(model: &Path, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.extend(["-m", s(model), "-t", "2"]);
    succeeds(&all).0
}
