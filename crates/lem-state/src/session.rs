//! Named sessions that sleep (KV state and transcript to disk) and wake (back into a
//! [`Sequence`]), in a store directory:
//!
//! ```text
//! <dir>/index.json            name -> SessionInfo (rewritten atomically, under index.lock)
//! <dir>/sessions/<name>.lemkv a snapshot file; the transcript is in its metadata
//! ```
//!
//! The snapshot file is the truth: it is replaced atomically on every sleep, so a process
//! killed mid-save leaves the previous state, and KV state and transcript can never come
//! from different turns. The index is a summary for listings; [`SessionStore::list`]
//! repairs it from the files when they disagree (a crash between the two writes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use lem_engine::{Engine, Sequence};
use lem_tokenizer::{ChatMessage, Role};
use serde::{Deserialize, Serialize};

use crate::container;
use crate::error::StateError;
use crate::fsutil::{LockFile, atomic_write, now_ms};
use crate::snapshot::{SNAPSHOT_FORMAT, SNAPSHOT_VERSION, Snapshot};

/// Extension of session files.
const EXT: &str = "lemkv";
/// Snapshot extra keys a session uses.
const TRANSCRIPT: &str = "transcript";
const CREATED: &str = "session_created_unix_ms";

/// One message of a session's conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscriptMessage {
    /// `"system"`, `"user"` or `"assistant"`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A session's conversation so far (what the chat template renders; the KV state holds
/// the rendered tokens).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Transcript {
    /// Messages in order.
    pub messages: Vec<TranscriptMessage>,
}

impl Transcript {
    /// From chat messages.
    pub fn from_chat(messages: &[ChatMessage]) -> Transcript {
        Transcript {
            messages: messages
                .iter()
                .map(|m| TranscriptMessage { role: m.role.as_str().to_owned(), content: m.content.clone() })
                .collect(),
        }
    }

    /// As chat messages (unknown roles become user messages).
    pub fn to_chat(&self) -> Vec<ChatMessage> {
        self.messages
            .iter()
            .map(|m| {
                let role = match m.role.as_str() {
                    "system" => Role::System,
                    "assistant" => Role::Assistant,
                    _ => Role::User,
                };
                ChatMessage::new(role, m.content.clone())
            })
            .collect()
    }
}

/// What the index records about a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Session name.
    pub name: String,
    /// Fingerprint of the model the state belongs to.
    pub model_fingerprint: String,
    /// That model's file name.
    pub model_file: String,
    /// Tokens of KV state.
    pub tokens: usize,
    /// Messages in the transcript.
    pub messages: usize,
    /// Size of the session file in bytes.
    pub bytes: u64,
    /// When the session first slept (ms since the Unix epoch).
    pub created_unix_ms: u64,
    /// When it last slept or woke (ms since the Unix epoch).
    pub last_used_unix_ms: u64,
    /// User labels.
    pub labels: BTreeMap<String, String>,
}

/// `index.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    format: String,
    version: u32,
    sessions: BTreeMap<String, SessionInfo>,
}

/// Whether `name` is usable as a session (and file) name.
pub fn valid_session_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// A directory of named sessions. `Send + Sync`; every method may be called from any
/// thread, and several processes may share the directory.
#[derive(Debug)]
pub struct SessionStore {
    dir: PathBuf,
    lock: Mutex<()>,
}

impl SessionStore {
    /// The default store: `$LEM_SESSIONS_DIR`, else `sessions` in the lem cache directory.
    pub fn default_dir() -> Option<PathBuf> {
        match std::env::var_os("LEM_SESSIONS_DIR") {
            Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
            _ => lem_model::fingerprint::cache_dir().map(|d| d.join("sessions")),
        }
    }

    /// Opens (creating if needed) the store at `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<SessionStore, StateError> {
        let dir = dir.into();
        let files = dir.join("sessions");
        std::fs::create_dir_all(&files).map_err(StateError::io(&files))?;
        Ok(SessionStore { dir, lock: Mutex::new(()) })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of session `name` (which must be valid).
    pub fn file(&self, name: &str) -> Result<PathBuf, StateError> {
        if !valid_session_name(name) {
            return Err(StateError::InvalidName(name.to_owned()));
        }
        Ok(self.dir.join("sessions").join(format!("{name}.{EXT}")))
    }

    /// Wakes session `name` under `engine`: its sequence (KV state and tokens) and
    /// transcript, or `None` when there is no such session. Refuses state of another
    /// model, tokenizer or layout, and corrupt files, exactly like a snapshot restore.
    pub fn wake(&self, name: &str, engine: &Engine) -> Result<Option<(Sequence, Transcript)>, StateError> {
        let path = self.file(name)?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError::Io { path, source: e }),
        };
        let (snap, seq) = crate::snapshot::restore_bytes(&path, &bytes, engine)?;
        let transcript = transcript_of(&path, &snap.info.extra)?;
        self.update_index(|ix| {
            if let Some(e) = ix.sessions.get_mut(name) {
                e.last_used_unix_ms = now_ms();
            }
        })?;
        Ok(Some((seq, transcript)))
    }

    /// Puts session `name` to sleep: writes `seq` and `transcript` atomically (a crash
    /// leaves the previous state), keeping the session's labels and creation time.
    pub fn sleep(
        &self,
        name: &str,
        engine: &Engine,
        seq: &Sequence,
        transcript: &Transcript,
    ) -> Result<SessionInfo, StateError> {
        self.sleep_with_labels(name, engine, seq, transcript, None)
    }

    /// [`SessionStore::sleep`], replacing the labels when `labels` is given.
    pub fn sleep_with_labels(
        &self,
        name: &str,
        engine: &Engine,
        seq: &Sequence,
        transcript: &Transcript,
        labels: Option<BTreeMap<String, String>>,
    ) -> Result<SessionInfo, StateError> {
        let path = self.file(name)?;
        let previous = self.info(name)?;
        let created = previous.as_ref().map_or_else(now_ms, |p| p.created_unix_ms);
        let labels = labels.or_else(|| previous.map(|p| p.labels)).unwrap_or_default();
        let mut extra = BTreeMap::new();
        extra.insert(TRANSCRIPT.to_owned(), serde_json::to_string(transcript).unwrap_or_default());
        extra.insert(CREATED.to_owned(), created.to_string());
        let mut snap = Snapshot::capture(engine, seq, labels, extra)?;
        snap.write(&path)?;
        let info = info_from_file(name, &path)?;
        let entry = info.clone();
        self.update_index(move |ix| {
            ix.sessions.insert(entry.name.clone(), entry);
        })?;
        Ok(info)
    }

    /// Session `name`'s index entry, or `None`.
    pub fn info(&self, name: &str) -> Result<Option<SessionInfo>, StateError> {
        let path = self.file(name)?;
        Ok(self.list()?.into_iter().find(|s| s.name == name).filter(|_| path.is_file()))
    }

    /// Session `name`'s entry and transcript, read from its file header (no model needed).
    pub fn show(&self, name: &str) -> Result<(SessionInfo, Transcript), StateError> {
        let path = self.file(name)?;
        if !path.is_file() {
            return Err(StateError::NoSuchSession(name.to_owned()));
        }
        let meta = container::read_header(&path, SNAPSHOT_FORMAT, SNAPSHOT_VERSION)?;
        let extra: BTreeMap<String, String> =
            meta.iter().filter_map(|(k, v)| Some((k.strip_prefix("extra.")?.to_owned(), v.clone()))).collect();
        let mut info = info_from_header(name, &path, &meta)?;
        if let Some(known) = self.read_index().sessions.get(name) {
            info.last_used_unix_ms = info.last_used_unix_ms.max(known.last_used_unix_ms);
        }
        Ok((info, transcript_of(&path, &extra)?))
    }

    /// Every session, by name; the index is repaired from the files where they disagree.
    pub fn list(&self) -> Result<Vec<SessionInfo>, StateError> {
        let files = self.dir.join("sessions");
        let mut on_disk = BTreeMap::new();
        for e in std::fs::read_dir(&files).map_err(StateError::io(&files))?.flatten() {
            let p = e.path();
            let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            if p.extension().is_some_and(|x| x == EXT) && valid_session_name(&name) {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                on_disk.insert(name, (p, len));
            }
        }
        let index = self.read_index();
        let stale = index.sessions.len() != on_disk.len()
            || on_disk.iter().any(|(n, (_, len))| index.sessions.get(n).is_none_or(|s| s.bytes != *len));
        if !stale {
            return Ok(index.sessions.into_values().collect());
        }
        let mut fixed = BTreeMap::new();
        for (name, (path, len)) in on_disk {
            match index.sessions.get(&name) {
                Some(s) if s.bytes == len => {
                    fixed.insert(name, s.clone());
                }
                // Unreadable files are left out of listings (wake reports why).
                _ => {
                    if let Ok(info) = info_from_file(&name, &path) {
                        fixed.insert(name, info);
                    }
                }
            }
        }
        let out = fixed.values().cloned().collect();
        self.update_index(move |ix| ix.sessions = fixed)?;
        Ok(out)
    }

    /// Copies session `src` to a new session `dst` (atomically; `dst` must not exist).
    pub fn fork(&self, src: &str, dst: &str) -> Result<SessionInfo, StateError> {
        let (from, to) = (self.file(src)?, self.file(dst)?);
        if !from.is_file() {
            return Err(StateError::NoSuchSession(src.to_owned()));
        }
        if to.exists() {
            return Err(StateError::SessionExists(dst.to_owned()));
        }
        let bytes = std::fs::read(&from).map_err(StateError::io(&from))?;
        atomic_write(&to, &bytes)?;
        let mut info = info_from_file(dst, &to)?;
        info.created_unix_ms = now_ms();
        info.last_used_unix_ms = info.created_unix_ms;
        let entry = info.clone();
        self.update_index(move |ix| {
            ix.sessions.insert(entry.name.clone(), entry);
        })?;
        Ok(info)
    }

    /// Deletes session `name`; `false` when there was none.
    pub fn remove(&self, name: &str) -> Result<bool, StateError> {
        let path = self.file(name)?;
        let existed = match std::fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(StateError::Io { path, source: e }),
        };
        self.update_index(|ix| {
            ix.sessions.remove(name);
        })?;
        Ok(existed)
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    fn read_index(&self) -> Index {
        std::fs::read(self.index_path()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// Read-modify-write of the index under the in-process and cross-process locks.
    fn update_index(&self, f: impl FnOnce(&mut Index)) -> Result<(), StateError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let _file = LockFile::acquire(&self.dir.join("index.lock"))?;
        let mut ix = self.read_index();
        f(&mut ix);
        ix.format = "lem-session-index".into();
        ix.version = 1;
        let bytes = serde_json::to_vec_pretty(&ix).unwrap_or_default();
        atomic_write(&self.index_path(), &bytes)
    }
}

/// The transcript a session file carries.
fn transcript_of(path: &Path, extra: &BTreeMap<String, String>) -> Result<Transcript, StateError> {
    match extra.get(TRANSCRIPT) {
        None => Ok(Transcript::default()),
        Some(t) => serde_json::from_str(t).map_err(|e| StateError::malformed(path, format!("transcript: {e}"))),
    }
}

/// A session's entry from its file's header.
fn info_from_file(name: &str, path: &Path) -> Result<SessionInfo, StateError> {
    let meta = container::read_header(path, SNAPSHOT_FORMAT, SNAPSHOT_VERSION)?;
    info_from_header(name, path, &meta)
}

/// The entry described by a session file's header `meta` (read once, so that a file
/// replaced meanwhile by a newer turn cannot mix two turns' fields).
fn info_from_header(
    name: &str,
    path: &Path,
    meta: &std::collections::HashMap<String, String>,
) -> Result<SessionInfo, StateError> {
    let fs_meta = std::fs::metadata(path).map_err(StateError::io(path))?;
    let get = |k: &str| meta.get(k).cloned().unwrap_or_default();
    let messages = meta
        .get(&format!("extra.{TRANSCRIPT}"))
        .and_then(|t| serde_json::from_str::<Transcript>(t).ok())
        .map_or(0, |t| t.messages.len());
    let modified = fs_meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    Ok(SessionInfo {
        name: name.to_owned(),
        model_fingerprint: get("model_fingerprint"),
        model_file: get("model_file"),
        tokens: get("tokens").parse().unwrap_or(0),
        messages,
        bytes: fs_meta.len(),
        created_unix_ms: meta.get(&format!("extra.{CREATED}")).and_then(|c| c.parse().ok()).unwrap_or(modified),
        last_used_unix_ms: modified,
        labels: serde_json::from_str(&get("labels")).unwrap_or_default(),
    })
}
