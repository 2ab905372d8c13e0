//! `lem kv`, `lem session`, `lem chat --session` and `--prefix-cache` on tiny models
//! built in the test (random weights, a 64-token SentencePiece vocabulary).
#![allow(missing_docs)]

#[path = "../../lem-model/tests/support/mod.rs"]
mod support;
#[path = "../../lem-state/tests/common/tiny.rs"]
mod tiny;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

struct Env {
    dir: tempfile::TempDir,
    model: String,
}

impl Env {
    fn new(spec: &support::Spec) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let model = tiny::write(spec, dir.path(), "tiny.gguf").to_str().unwrap().to_owned();
        Env { dir, model }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `lem` with an isolated environment: models, cache and sessions under the temp dir.
    fn lem(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_lem"));
        c.env_remove("LEM_MODEL")
            .env_remove("RUST_BACKTRACE")
            .env_remove("LEM_PREFIX_CACHE")
            .env("LEM_MODELS_DIR", self.path("models"))
            .env("LEM_CACHE_DIR", self.path("cache"))
            .env("LEM_SESSIONS_DIR", self.path("sessions"));
        c
    }

    /// Runs `lem args` (with `-m model -t 1` appended when `model`), expecting success.
    fn ok(&self, args: &[&str], model: bool) -> String {
        let mut c = self.lem();
        c.args(args);
        if model {
            c.args(["-m", &self.model, "-t", "1"]);
        }
        let out = c.output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{args:?} failed:\n{stderr}");
        stdout.into_owned()
    }

    fn json(&self, args: &[&str], model: bool) -> Value {
        serde_json::from_str(self.ok(args, model).trim()).unwrap()
    }

    /// Runs `lem args`, expecting exactly one `lem: error:` line; returns it.
    fn fails(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let mut c = self.lem();
        c.args(args).envs(env.iter().copied());
        let out = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(lines[0].starts_with("lem: error: "), "{stderr}");
        lines[0].to_owned()
    }

    /// `lem chat` fed `input` on stdin; returns (stdout, stderr).
    fn chat(&self, extra: &[&str], input: &str) -> (String, String) {
        let mut c = self.lem();
        c.args(["chat", "-m", &self.model, "-t", "1", "--temperature", "0", "-n", "6"]).args(extra);
        let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out: Output = child.wait_with_output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "chat {extra:?} failed:\n{stderr}");
        (stdout.into_owned(), stderr.into_owned())
    }
}

const PROMPT: &str = "the cat is on the mat, the dog is in the fog, is it not?";

#[test]
fn kv_save_inspect_load() {
    let env = Env::new(&tiny::gemma3(11));
    let snap = env.path("s.lemkv");
    let s = snap.to_str().unwrap();
    let saved =
        env.json(&["kv", "save", "-p", PROMPT, "-o", s, "--label", "who=test", "--label", "n=1", "--json"], true);
    let tokens = saved["tokens"].as_u64().unwrap();
    assert!(tokens > 20, "{saved}");
    let info = env.json(&["kv", "inspect", s, "--json"], false);
    assert_eq!(info["tokens"], tokens);
    assert_eq!(info["labels"]["who"], "test");
    assert_eq!(info["checksum_ok"], true);
    assert_eq!(info["format"], "lem-kv-snapshot");
    assert!(info["model_fingerprint"].as_str().unwrap().len() == 64);
    let text = env.ok(&["kv", "inspect", s], false);
    assert!(text.contains("checksum ok") && text.contains("window 4"), "{text}");
    // A bounded cache shows its sinks (the tiny Gemma's global layers take the bound).
    let bounded = env.path("b.lemkv");
    let b = bounded.to_str().unwrap();
    env.ok(&["kv", "save", "-p", PROMPT, "-o", b, "--kv-sinks", "2", "--kv-window", "8"], true);
    let text = env.ok(&["kv", "inspect", b], false);
    assert!(text.contains("2 sinks + 8") && text.contains("window 4"), "{text}");

    // Continuing the snapshot directly equals generating from the prompt.
    let gargs = ["--temperature", "0", "-n", "8", "--json"];
    let want = env.json(&[&["generate", "-p", PROMPT][..], &gargs].concat(), true);
    let got = env.json(&[&["kv", "load", "-s", s][..], &gargs].concat(), true);
    assert_eq!(got["ids"], want["ids"], "kv load vs generate");
    assert_eq!(got["text"], want["text"]);
    for k in ["model", "prompt_ids", "ids", "text", "finish_reason", "seed", "timings"] {
        assert!(got.get(k).is_some(), "kv load --json lacks {k}: {got}");
    }
    assert_eq!(got["snapshot"]["tokens"], tokens);
    let restore_ms = got["snapshot"]["restore_ms"].as_f64().unwrap();
    assert!(got["timings"]["ttft_ms"].as_f64().unwrap() >= restore_ms, "{got}");
    // With more text.
    let more = env.json(&[&["kv", "load", "-s", s, "-p", " and the fox"][..], &gargs].concat(), true);
    assert!(!more["prompt_ids"].as_array().unwrap().is_empty());
    // Streaming mode prints the text.
    env.ok(&["kv", "load", "-s", s, "--temperature", "0", "-n", "3"], true);
}

#[test]
fn kv_load_refusals() {
    let env = Env::new(&tiny::llama(7));
    let snap = env.path("s.lemkv");
    let s = snap.to_str().unwrap();
    env.ok(&["kv", "save", "-p", PROMPT, "-o", s], true);
    let bytes = std::fs::read(&snap).unwrap();
    let load = |file: &Path, model: &str, env_vars: &[(&str, &str)]| {
        env.fails(&["kv", "load", "-s", file.to_str().unwrap(), "-m", model, "-t", "1", "-n", "2"], env_vars)
    };
    // Another model.
    let other = tiny::write(&tiny::llama(8), env.dir.path(), "other.gguf");
    let line = load(&snap, other.to_str().unwrap(), &[]);
    assert!(line.contains("another model") && line.contains("other.gguf"), "{line}");
    // Another layout: a snapshot that says its K/V are stored as f32.
    let (from, to) = (r#"\"k_type\":\"f16\",\"v_type\":\"f16\""#, r#"\"k_type\":\"f32\",\"v_type\":\"f32\""#);
    let f32_file = env.path("f32.lemkv");
    let at = bytes.windows(from.len()).position(|w| w == from.as_bytes()).expect("layout dtype in the header");
    let mut edited = bytes.clone();
    edited[at..at + to.len()].copy_from_slice(to.as_bytes());
    std::fs::write(&f32_file, &edited).unwrap();
    let line = load(&f32_file, &env.model, &[]);
    assert!(line.contains("cache layout") && line.contains("K cache type f32 vs f16"), "{line}");
    // Corruptions.
    let bad = env.path("bad.lemkv");
    std::fs::write(&bad, &bytes[..bytes.len() - 100]).unwrap();
    assert!(load(&bad, &env.model, &[]).contains("truncated"));
    let mut flipped = bytes.clone();
    let at = flipped.len() - 50;
    flipped[at] ^= 0x40;
    std::fs::write(&bad, &flipped).unwrap();
    assert!(load(&bad, &env.model, &[]).contains("checksum mismatch"));
    let line = env.fails(&["kv", "inspect", bad.to_str().unwrap()], &[]);
    assert!(line.contains("checksum mismatch"), "{line}");
    std::fs::write(&bad, b"nope").unwrap();
    load(&bad, &env.model, &[]);
    load(&env.path("missing.lemkv"), &env.model, &[]);
    // Bad labels are usage errors.
    let out =
        env.lem().args(["kv", "save", "-p", "x", "-o", s, "--label", "novalue", "-m", &env.model]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn chat_sessions_sleep_and_wake() {
    let env = Env::new(&tiny::llama(7));
    // Two turns in one process...
    let (one, _) = env.chat(&[], "the cat\nis it on the mat?\n");
    // ...equal one turn per process through a session.
    let (a, err_a) = env.chat(&["--session", "s1"], "the cat\n");
    assert!(err_a.contains("new session s1"), "{err_a}");
    let (b, err_b) = env.chat(&["--session", "s1"], "is it on the mat?\n");
    assert!(err_b.contains("woke session s1"), "{err_b}");
    assert_eq!(format!("{a}{b}"), one, "session turns differ from one process");

    let list = env.json(&["session", "list", "--json"], false);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "s1");
    assert_eq!(list[0]["messages"], 4);
    assert!(list[0]["tokens"].as_u64().unwrap() > 10);
    let show = env.json(&["session", "show", "s1", "--json"], false);
    assert_eq!(show["transcript"]["messages"][2]["content"], "is it on the mat?");
    assert!(env.ok(&["session", "show", "s1"], false).contains("[user] the cat"));

    env.ok(&["session", "fork", "s1", "s2"], false);
    assert_eq!(env.json(&["session", "list", "--json"], false).as_array().unwrap().len(), 2);
    let (c, _) = env.chat(&["--session", "s2"], "/reset\nthe cat\n");
    assert_eq!(c, a, "after /reset a forked session starts over");
    env.ok(&["session", "rm", "s2"], false);
    assert!(env.ok(&["session", "list"], false).starts_with("s1 "));
    let line = env.fails(&["session", "rm", "s2"], &[]);
    assert!(line.contains("s2"), "{line}");
    let line = env.fails(&["session", "fork", "s1", "../escape"], &[]);
    assert!(line.contains("invalid session name"), "{line}");
    // Waking under another model is refused.
    let other = tiny::write(&tiny::llama(8), env.dir.path(), "other.gguf");
    let mut c = env.lem();
    c.args(["chat", "-m", other.to_str().unwrap(), "-t", "1", "--session", "s1"]).stdin(Stdio::null());
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another model"), "{stderr}");
}

#[test]
fn generate_with_prefix_cache() {
    let env = Env::new(&tiny::gemma3(11));
    let pc = env.path("pc");
    let prompt = PROMPT.repeat(4);
    let args =
        ["generate", "-p", &prompt, "--temperature", "0", "-n", "6", "--json", "--prefix-cache", pc.to_str().unwrap()];
    let plain = env.json(&args[..8], true);
    let cold = env.json(&args, true);
    assert_eq!(cold["ids"], plain["ids"]);
    assert_eq!(cold["prefix_cache"]["report"]["reused_tokens"], 0);
    assert!(cold["prefix_cache"]["report"]["stored_blocks"].as_u64().unwrap() >= 2, "{cold}");
    let warm = env.json(&args, true);
    assert_eq!(warm["ids"], plain["ids"]);
    assert_eq!(warm["prompt_ids"], plain["prompt_ids"]);
    let reused = warm["prefix_cache"]["report"]["reused_tokens"].as_u64().unwrap();
    assert!(reused >= 128 && reused / 64 * 64 == reused, "{warm}");
    assert_eq!(warm["prefix_cache"]["stats"]["hits"], 1);
    // Chat uses the same cache.
    let (first, _) = env.chat(&["--prefix-cache", pc.to_str().unwrap()], &format!("{prompt}\n"));
    let (again, _) = env.chat(&["--prefix-cache", pc.to_str().unwrap()], &format!("{prompt}\n"));
    assert_eq!(first, again);
}

#[test]
fn help_lists_the_commands() {
    let env = Env::new(&tiny::llama(7));
    let top = env.ok(&["--help"], false);
    assert!(top.contains("kv") && top.contains("session"), "{top}");
    for (cmd, flags) in [
        (&["kv", "save", "--help"][..], &["--prompt", "--out", "--label", "--chat"][..]),
        (&["kv", "load", "--help"], &["--snapshot", "--prompt", "--json", "--temperature"]),
        (&["generate", "--help"], &["--prefix-cache"]),
        (&["chat", "--help"], &["--session", "--prefix-cache", "--sessions-dir"]),
        (&["session", "--help"], &["list", "show", "fork", "rm"]),
    ] {
        let out = env.ok(cmd, false);
        for f in flags {
            assert!(out.contains(f), "{cmd:?} lacks {f}");
        }
    }
}
