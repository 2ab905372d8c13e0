//! Crash-safe file writes, a cross-process lock file, and time stamps.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::StateError;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `ms` since the epoch as an RFC 3339 UTC time stamp (`2025-01-31T12:00:00.000Z`).
pub fn rfc3339(ms: u64) -> String {
    let (secs, milli) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A unique temporary sibling of `path` (hidden, same directory, so rename is atomic).
fn temp_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map_or_else(|| "state".into(), |f| f.to_string_lossy());
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{nanos:x}.{n}.tmp", std::process::id()))
}

/// Flushes a directory entry change (a rename) to disk.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Writes a file atomically: `write` fills a temporary file in the same directory, which
/// is flushed to disk, renamed over `path`, and the directory is synced. Readers see the
/// old file or the new one, never a mixture; a crash (or an error from `write`) at any
/// point leaves the old file intact. Creates the parent directory.
pub fn atomic_write_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), StateError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(StateError::io(dir))?;
    sweep_stale_temps(path);
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut f);
            write(&mut w)?;
            w.flush()?;
        }
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(StateError::Io { path: path.to_owned(), source: e });
    }
    Ok(())
}

/// [`atomic_write_with`] for bytes in memory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    atomic_write_with(path, |w| w.write_all(bytes))
}

/// An exclusive lock between processes: an advisory lock (`flock`) on a lock file, which
/// the operating system releases when its holder exits, however it exits, so a holder
/// killed with `kill -9` never leaves a stale lock behind. The file itself stays.
pub(crate) struct LockFile {
    _file: File,
}

/// How long [`LockFile::acquire`] waits for another holder.
const WAIT: Duration = Duration::from_secs(20);

impl LockFile {
    /// Takes the lock at `path` (creating the file), waiting for another holder up to a
    /// limit.
    pub(crate) fn acquire(path: &Path) -> Result<LockFile, StateError> {
        let io = |e| StateError::Io { path: path.to_owned(), source: e };
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
        let start = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(LockFile { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < WAIT => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(std::fs::TryLockError::WouldBlock) => return Err(StateError::LockTimeout(path.to_owned())),
                Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
            }
        }
    }
}

/// Whether process `pid` is running, where the system can tell (Linux: `/proc`).
fn pid_alive(pid: u32) -> Option<bool> {
    if cfg!(target_os = "linux") { Some(Path::new("/proc").join(pid.to_string()).exists()) } else { None }
}

/// Temporary files older than this are removed even where liveness cannot be checked.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// Removes the temporary siblings of `path` that writers which died mid-write left
/// behind (`.{name}.{pid}.*.tmp` of a process that no longer runs, or older than an
/// hour), so crashes do not accumulate garbage. Best effort: errors are ignored.
pub(crate) fn sweep_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { return };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let file = e.file_name();
        let file = file.to_string_lossy();
        let Some(rest) = file.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".tmp")) else { continue };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > STALE_TEMP);
        if pid_alive(pid) == Some(false) || old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_735_689_599_000), "2024-12-31T23:59:59.000Z");
    }

    #[test]
    fn failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        atomic_write(&p, b"old").unwrap();
        let err = atomic_write_with(&p, |w| {
            w.write_all(b"partial new cont")?;
            Err(std::io::Error::other("killed"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "temporary file left behind: {names:?}");
        atomic_write(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }

    /// A full disk (ENOSPC) or a file-size limit (EFBIG) in the middle of a write: the
    /// error names the file and the reason in words, the old file stays, no temporary.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_disk_is_a_clear_error_that_keeps_the_old_file() {
        const ENOSPC: i32 = 28;
        const EFBIG: i32 = 27;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.lemkv");
        atomic_write(&p, b"old").unwrap();
        for (code, words) in [(ENOSPC, "No space left on device"), (EFBIG, "File too large")] {
            let err = atomic_write_with(&p, |w| {
                w.write_all(b"partial")?;
                Err(std::io::Error::from_raw_os_error(code))
            })
            .unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(&p.display().to_string()) && msg.contains(words), "{msg}");
            assert_eq!(std::fs::read(&p).unwrap(), b"old");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temporary left behind");
        }
    }

    #[test]
    fn a_lock_excludes_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index.lock");
        let held = LockFile::acquire(&p).unwrap();
        // Another open file description of the same file cannot take it meanwhile.
        let other = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        assert!(matches!(other.try_lock(), Err(std::fs::TryLockError::WouldBlock)));
        drop(held);
        other.try_lock().unwrap();
        other.unlock().unwrap();
        drop(LockFile::acquire(&p).unwrap());
    }

    #[test]
    fn temporaries_of_dead_writers_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.lemkv");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let dead_tmp = dir.path().join(format!(".s.lemkv.{dead}.1f.0.tmp"));
        let live_tmp = dir.path().join(format!(".s.lemkv.{}.2f.0.tmp", std::process::id()));
        let other_file = dir.path().join(format!(".t.lemkv.{dead}.1f.0.tmp"));
        for f in [&dead_tmp, &live_tmp, &other_file] {
            std::fs::write(f, b"partial").unwrap();
        }
        atomic_write(&p, b"new").unwrap();
        assert_eq!(pid_alive(dead) == Some(false), !dead_tmp.exists(), "a dead writer's temporary is removed");
        assert!(live_tmp.exists(), "a running writer's temporary is kept");
        assert!(other_file.exists(), "another file's temporaries are not touched");
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }
}
