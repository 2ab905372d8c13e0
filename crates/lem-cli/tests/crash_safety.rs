//! Crash safety, proven with `kill -9`: a `lem` process killed while it writes a KV
//! snapshot, puts a session to sleep, or writes prefix-cache blocks (with a second
//! writer on the same directory) leaves the previous state intact or the new one
//! complete, never a torn file and never a wrong state loaded; the next process neither
//! waits on a lock the dead one held nor keeps its temporary files.
//!
//! Kills are aimed at the write itself: the test watches the directory and kills the
//! child a few milliseconds after its temporary file appears (at delays spread from 0),
//! so the aim holds on fast and slow machines alike. Runs on SmolLM2 (skipped with a note
//! when it is not fetched).
#![allow(missing_docs)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{packaged, s};
use serde_json::Value;

/// Delays between seeing the temporary file and the kill.
const DELAYS_MS: [u64; 4] = [0, 1, 4, 16];

struct Env {
    dir: tempfile::TempDir,
    model: PathBuf,
}

impl Env {
    fn new() -> Option<Env> {
        Some(Env { dir: tempfile::tempdir().unwrap(), model: packaged("smollm2-135m")? })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `lem ARGS -m SmolLM2 -t 1` in the test's environment.
    fn lem(&self, args: &[&str]) -> Command {
        let mut c = lem_plain(self);
        c.args(args).args(["-m", s(&self.model), "-t", "1"]);
        c
    }

    fn json(&self, cmd: &mut Command) -> Value {
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cmd:?} failed:\n{stderr}");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
    }
}

/// `lem` in the test's environment, without model arguments.
fn lem_plain(env: &Env) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lem"));
    c.env_remove("LEM_MODEL")
        .env_remove("RUST_BACKTRACE")
        .env_remove("LEM_PREFIX_CACHE")
        .env("LEM_SESSIONS_DIR", env.path("sessions"));
    c
}

/// Temporary files (`.NAME.PID.*.tmp`) anywhere under `dir`, of process `pid` if given.
fn temporaries(dir: &Path, pid: Option<u32>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with('.') && n.ends_with(".tmp") && pid.is_none_or(|pid| n.contains(&format!(".{pid}.")))
            }) {
                out.push(p);
            }
        }
    }
    out
}

/// How a kill landed.
#[derive(Debug, PartialEq, Eq)]
enum Kill {
    /// The child was killed after its temporary file appeared.
    MidWrite,
    /// The child finished before any temporary file was seen or before the kill.
    Finished,
}

/// Waits until a temporary file of the child appears under `dir` (or the child exits),
/// then after `delay` kills the child with SIGKILL.
fn kill_during_write(child: &mut Child, dir: &Path, delay: Duration) -> Kill {
    let pid = child.id();
    loop {
        if child.try_wait().unwrap().is_some() {
            return Kill::Finished;
        }
        if !temporaries(dir, Some(pid)).is_empty() {
            std::thread::sleep(delay);
            let _ = child.kill();
            let status = child.wait().unwrap();
            return if status.success() { Kill::Finished } else { Kill::MidWrite };
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A prompt of about `n` words that the tokenizer turns into roughly as many tokens.
fn long_prompt(tag: &str, n: usize) -> String {
    (0..n).map(|i| format!("{tag}{}", i % 97)).collect::<Vec<_>>().join(" ")
}

#[test]
fn kill_during_kv_save_leaves_the_old_or_the_new_snapshot() {
    let Some(env) = Env::new() else { return };
    let snap = env.path("snaps/s.lemkv");
    std::fs::create_dir_all(snap.parent().unwrap()).unwrap();
    let (pa, pb) = (long_prompt("a", 100), long_prompt("b", 250));
    let save = |prompt: &str| env.lem(&["kv", "save", "-p", prompt, "-o", s(&snap), "--json"]);
    let inspect = || env.json(lem_plain(&env).args(["kv", "inspect", s(&snap), "--json"]));
    let tokens_a = env.json(&mut save(&pa))["tokens"].as_u64().unwrap();
    let mut mid_write = 0;
    let mut tokens_b = None;
    for delay in DELAYS_MS {
        let mut child = save(&pb).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let kill = kill_during_write(&mut child, snap.parent().unwrap(), Duration::from_millis(delay));
        let info = inspect();
        assert_eq!(info["checksum_ok"], true, "{info}");
        let t = info["tokens"].as_u64().unwrap();
        if t == tokens_a {
            mid_write += usize::from(kill == Kill::MidWrite);
        } else {
            // The new snapshot, complete: the same token count every time.
            assert_eq!(*tokens_b.get_or_insert(t), t, "{info}");
            assert!(t > tokens_a, "{info}");
            // Back to the old state for the next kill.
            env.json(&mut save(&pa));
        }
    }
    eprintln!("kv save: {mid_write} of {} kills landed mid-write", DELAYS_MS.len());
    assert!(mid_write > 0, "no kill landed during a write; the test did not test anything");
    // The snapshot loads and continues; the dead writers' temporaries are gone after the
    // next write to the same file.
    env.json(&mut save(&pa));
    let got = env.json(&mut env.lem(&["kv", "load", "-s", s(&snap), "--temperature", "0", "-n", "4", "--json"]));
    assert_eq!(got["snapshot"]["tokens"], tokens_a);
    assert_eq!(temporaries(snap.parent().unwrap(), None), Vec::<PathBuf>::new());
}

#[test]
fn kill_during_session_sleep_leaves_a_wakeable_session() {
    let Some(env) = Env::new() else { return };
    let sessions = env.path("sessions");
    let chat = |input: &str| {
        let mut c = env.lem(&["chat", "--session", "s", "--temperature", "0", "-n", "4"]);
        c.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child
    };
    let show = || env.json(lem_plain(&env).args(["session", "show", "s", "--json"]));
    let first = chat(&format!("{}\n", long_prompt("a", 100))).wait_with_output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let messages = |v: &Value| v["transcript"]["messages"].as_array().unwrap().len();
    let before = messages(&show());
    let mut mid_write = 0;
    for delay in DELAYS_MS {
        let mut child = chat(&format!("{}\n", long_prompt("b", 200)));
        let kill = kill_during_write(&mut child, &sessions, Duration::from_millis(delay));
        // The session is the old one or the new one, whole; it wakes at once (no lock
        // left behind) and the transcript and KV state agree.
        let info = show();
        let n = messages(&info);
        assert!(n == before || n == before + 2, "{n} messages: {info}");
        mid_write += usize::from(kill == Kill::MidWrite && n == before);
        if n != before {
            // Put it back: a fresh session with the first turn.
            let mut rm = lem_plain(&env);
            assert!(rm.args(["session", "rm", "s"]).status().unwrap().success());
            let again = chat(&format!("{}\n", long_prompt("a", 100))).wait_with_output().unwrap();
            assert!(again.status.success());
        }
    }
    eprintln!("session sleep: {mid_write} of {} kills landed mid-write", DELAYS_MS.len());
    assert!(mid_write > 0, "no kill landed during a sleep; the test did not test anything");
    // No lock outlives the killed writers: the index lock is free right away.
    let lock = std::fs::OpenOptions::new().read(true).write(true).open(sessions.join("index.lock")).unwrap();
    lock.try_lock().expect("a killed writer left the session index locked");
    drop(lock);
    let woke = chat("and then?\n").wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&woke.stderr);
    assert!(woke.status.success() && stderr.contains("woke session s"), "{stderr}");
}

#[test]
fn kill_one_of_two_prefix_cache_writers() {
    let Some(env) = Env::new() else { return };
    let pc = env.path("pc");
    let prompt = long_prompt("c", 200);
    let generate = |cache: bool| {
        let mut c = env.lem(&["generate", "-p", &prompt, "--temperature", "0", "-n", "6", "--json"]);
        if cache {
            c.args(["--prefix-cache", s(&pc)]);
        }
        c
    };
    let plain = env.json(&mut generate(false));
    let mut mid_write = 0;
    for delay in DELAYS_MS {
        // Two writers on one directory; one is killed while it writes blocks.
        let survivor = generate(true).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let mut victim = generate(true).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        mid_write += usize::from(kill_during_write(&mut victim, &pc, Duration::from_millis(delay)) == Kill::MidWrite);
        let out = survivor.wait_with_output().unwrap();
        assert!(out.status.success());
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got["ids"], plain["ids"]);
        // A reader after the crash reuses what is there and generates the same tokens.
        let warm = env.json(&mut generate(true));
        assert_eq!(warm["ids"], plain["ids"], "{warm}");
        assert!(warm["prefix_cache"]["report"]["reused_tokens"].as_u64().unwrap() >= 256, "{warm}");
        std::fs::remove_dir_all(&pc).unwrap();
    }
    eprintln!("prefix cache: {mid_write} of {} kills landed mid-write", DELAYS_MS.len());
    assert!(mid_write > 0, "no kill landed during a block write; the test did not test anything");
}
