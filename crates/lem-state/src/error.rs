//! Errors of persisted state: every way a file can fail to be the state it claims.

use std::path::PathBuf;

/// Errors of snapshots, the prefix cache and the session store. Each refusal to restore
/// names what differs; none of them is ever a panic.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file ends before the data its header describes.
    #[error("{path} is truncated: its header describes {expected} bytes, the file has {actual}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the header promises.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The file is not a readable safetensors file, or its contents contradict each other.
    #[error("{path} is malformed: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A safetensors file of some other kind (no lem format tag, or another one).
    #[error("{path} is not a {expected} file (format: {found})")]
    WrongFormat {
        /// The file.
        path: PathBuf,
        /// The format lem expected.
        expected: &'static str,
        /// The format the file declares.
        found: String,
    },
    /// A lem file of a format version this build does not read.
    #[error("{path} has format version {found}; this lem reads version {supported}")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version in the file.
        found: String,
        /// Version this build reads.
        supported: u32,
    },
    /// The tensor bytes do not hash to the recorded checksum.
    #[error("{path}: checksum mismatch (recorded {recorded}, computed {computed}): the K/V data is corrupt")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Checksum in the header.
        recorded: String,
        /// Checksum of the bytes.
        computed: String,
    },
    /// The state was made by another model.
    #[error(
        "{path} was made with another model: fingerprint {found} ({found_file}), this engine runs {expected} ({expected_file})"
    )]
    ModelMismatch {
        /// The file.
        path: PathBuf,
        /// Fingerprint of the engine's model.
        expected: String,
        /// File name of the engine's model.
        expected_file: String,
        /// Fingerprint recorded in the file.
        found: String,
        /// Model file name recorded in the file.
        found_file: String,
    },
    /// The state was made with another tokenizer (so its token ids mean other text).
    #[error("{path} was made with another tokenizer: fingerprint {found}, this engine's is {expected}")]
    TokenizerMismatch {
        /// The file.
        path: PathBuf,
        /// Fingerprint of the engine's tokenizer.
        expected: String,
        /// Fingerprint recorded in the file.
        found: String,
    },
    /// The state was made with another cache layout (storage type, layer kinds, windows).
    #[error("{path} has another cache layout: {what} (file vs engine)")]
    LayoutMismatch {
        /// The file.
        path: PathBuf,
        /// What differs.
        what: String,
    },
    /// No session of that name.
    #[error("no session named '{0}'")]
    NoSuchSession(String),
    /// A session of that name exists already.
    #[error("a session named '{0}' exists already")]
    SessionExists(String),
    /// A session name lem cannot use as a file name.
    #[error("invalid session name '{0}': use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")]
    InvalidName(String),
    /// Another process held the session index lock for too long.
    #[error("timed out waiting for the lock {0}")]
    LockTimeout(PathBuf),
    /// Building the sequence failed.
    #[error(transparent)]
    Engine(#[from] lem_engine::EngineError),
    /// The cache refused the K/V.
    #[error(transparent)]
    Kv(#[from] lem_kv::KvError),
}

impl StateError {
    /// An I/O error on `path`.
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
        move |source| StateError::Io { path: path.to_owned(), source }
    }

    /// A malformed-file error on `path`.
    pub(crate) fn malformed(path: &std::path::Path, reason: impl Into<String>) -> StateError {
        StateError::Malformed { path: path.to_owned(), reason: reason.into() }
    }
}
