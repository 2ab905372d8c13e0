//! A full disk during a session save, proven on a real `lem serve`: the test lowers the
//! running server's file-size limit (`RLIMIT_FSIZE`, with `prlimit`) below a session
//! file's size, so the save after a turn fails the way a full disk fails (EFBIG, "File
//! too large"; the server ignores SIGXFSZ) while the model, read through mmap, and the
//! small session index still work. Then: the turn's reply arrives, the failure is logged
//! with the session file's path and the OS reason, the session keeps its previous turn
//! byte for byte and wakes from it, no temporary is left, the server goes on serving, and
//! once the limit is lifted the next turn saves again.
//!
//! Runs on SmolLM2 (skipped with a note when it is not fetched). Linux only (`prlimit`).
#![cfg(target_os = "linux")]
#![allow(missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{packaged, s};
use serde_json::{Value, json};

/// How long to wait for the server to start or log a line before giving up (a guard
/// against hanging, not a speed requirement).
const PATIENCE: Duration = Duration::from_secs(300);

/// The file-size limit while the "disk" is full: above the session index, below any
/// session file (SmolLM2 keeps about 23 KB of KV state per token).
const FULL_DISK_LIMIT: u64 = 48 << 10;

struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(model: &Path, sessions: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lem"))
            .args(["serve", "-m", s(model), "-t", "1", "--port", "0", "--sessions-dir", s(sessions)])
            .env_remove("LEM_MODEL")
            .env_remove("LEM_API_KEY")
            .env_remove("LEM_PREFIX_CACHE")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut server = Server { child, addr: String::new(), log };
        let line = server.wait_for_log("serving", 1);
        let at = line.split("http://").nth(1).expect("address in the serving line");
        server.addr = at.split_whitespace().next().unwrap().to_owned();
        server
    }

    /// Waits until `count` log lines contain `needle`; returns the last of them.
    fn wait_for_log(&mut self, needle: &str, count: usize) -> String {
        let start = Instant::now();
        loop {
            {
                let log = self.log.lock().unwrap();
                let hits: Vec<&String> = log.iter().filter(|l| l.contains(needle)).collect();
                if hits.len() >= count {
                    return hits[count - 1].clone();
                }
            }
            let exited = self.child.try_wait().unwrap();
            assert!(
                exited.is_none() && start.elapsed() < PATIENCE,
                "no {count} log lines with {needle:?} (server exit: {exited:?}); log:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn count_log(&self, needle: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }

    /// One HTTP/1.1 request (`Connection: close`); the status and the body.
    fn http(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, rest) = text.split_once("\r\n\r\n").expect("an HTTP response");
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
        (status, if chunked { dechunk(rest) } else { rest.to_owned() })
    }

    fn json(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, text) = self.http(method, path, body);
        assert_eq!(status, 200, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    }

    /// A counter from `/metrics`.
    fn metric(&self, name: &str) -> u64 {
        let (status, text) = self.http("GET", "/metrics", None);
        assert_eq!(status, 200);
        let line = text.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("{name}"));
        line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() as u64
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of a `Transfer-Encoding: chunked` response.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// Sets process `pid`'s soft file-size limit (keeping its hard limit); returns the old
/// soft limit.
fn set_file_size_limit(pid: u32, soft: u64) -> u64 {
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit reads and writes only the two rlimit values passed by pointer.
    let got = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_FSIZE, std::ptr::null(), &mut old) };
    assert_eq!(got, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit { rlim_cur: soft.min(old.rlim_max), rlim_max: old.rlim_max };
    // SAFETY: as above.
    let set = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_FSIZE, &new, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

/// Temporary files (`.*.tmp`) anywhere under `dir`.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p);
            } else if name.starts_with('.') && name.ends_with(".tmp") {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_full_disk_during_a_session_save_keeps_the_previous_turn_and_the_server() {
    let Some(model) = packaged("smollm2-135m") else { return };
    let dir = tempfile::tempdir().unwrap();
    let sessions = dir.path().join("sessions");
    let mut server = Server::start(&model, &sessions);
    let models = server.json("GET", "/v1/models", None);
    let name = models["data"][0]["id"].as_str().unwrap().to_owned();
    let turn = |content: &str, session: Option<&str>| {
        let mut body = json!({
            "model": name,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 4,
            "temperature": 0,
        });
        if let Some(s) = session {
            body["session"] = json!(s);
        }
        body
    };
    let file = sessions.join("sessions").join("s.lemkv");

    // Turn 1 saves normally.
    let first = server.json("POST", "/v1/chat/completions", Some(&turn("Name a colour.", Some("s"))));
    assert!(first["choices"][0]["message"]["content"].is_string(), "{first}");
    server.wait_for_log("session saved", 1);
    let before = server.json("GET", "/v1/sessions/s", None);
    assert_eq!(before["messages"], 2, "{before}");
    let bytes_before = std::fs::read(&file).unwrap();
    assert!(
        bytes_before.len() as u64 > FULL_DISK_LIMIT,
        "a session file of {} bytes fits the limit",
        bytes_before.len()
    );

    // The disk is full: the reply of turn 2 arrives, its save fails and says why.
    let unlimited = set_file_size_limit(server.child.id(), FULL_DISK_LIMIT);
    let second = server.json("POST", "/v1/chat/completions", Some(&turn("And another?", Some("s"))));
    assert!(second["choices"][0]["message"]["content"].is_string(), "{second}");
    let failure = server.wait_for_log("session save failed", 1);
    assert!(failure.contains("File too large") && failure.contains(s(&file)), "unclear failure: {failure}");
    assert!(server.child.try_wait().unwrap().is_none(), "the server died of the failed save");

    // The session keeps its previous turn, byte for byte; the failed write left nothing.
    assert_eq!(std::fs::read(&file).unwrap(), bytes_before, "the failed save changed the session file");
    let after = server.json("GET", "/v1/sessions/s", None);
    assert_eq!(after["transcript"], before["transcript"], "{after}");
    assert_eq!(temporaries(&sessions), Vec::<PathBuf>::new());

    // It still wakes (from turn 1) while the disk is full, and sessionless requests work.
    let wakes = server.metric("lem_session_wakes_total");
    let third = server.json("POST", "/v1/chat/completions", Some(&turn("One more?", Some("s"))));
    assert!(third["choices"][0]["message"]["content"].is_string(), "{third}");
    assert_eq!(server.metric("lem_session_wakes_total"), wakes + 1);
    server.wait_for_log("session save failed", 2);
    let plain = server.json("POST", "/v1/chat/completions", Some(&turn("Say hello.", None)));
    assert!(plain["choices"][0]["message"]["content"].is_string(), "{plain}");
    assert_eq!(server.count_log("session saved"), 1);

    // Space again: the next turn continues from turn 1 and saves.
    set_file_size_limit(server.child.id(), unlimited);
    server.json("POST", "/v1/chat/completions", Some(&turn("Last one?", Some("s"))));
    server.wait_for_log("session saved", 2);
    let healed = server.json("GET", "/v1/sessions/s", None);
    assert_eq!(healed["messages"], 4, "{healed}");
    let (old, new) = (before["transcript"].as_array().unwrap(), healed["transcript"].as_array().unwrap());
    assert_eq!(new[..2], old[..], "{healed}");
    assert!(!server.log.lock().unwrap().iter().any(|l| l.contains("panicked")));
}
