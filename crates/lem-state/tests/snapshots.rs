//! Snapshot files on tiny models: exact round trips (including a wrapped sliding window),
//! and every way a file can be wrong gets its own error: truncation, flipped bytes,
//! edited metadata, another model, another tokenizer, another layout, another format.
#![allow(missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::support::Spec;
use common::{gen_ids, load, tiny};
use lem_engine::Engine;
use lem_state::{Snapshot, StateError, inspect_snapshot, load_snapshot, save_snapshot};

/// Ids of a deterministic pseudo-random prompt within the tiny vocabulary (no specials).
fn prompt(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32).map(|i| 3 + (i.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 7) % 61).collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    engine: Engine,
    snap: PathBuf,
    bytes: Vec<u8>,
}

/// A tiny model, a sequence fed with `n` tokens, and its snapshot.
fn fixture(spec: &Spec, n: usize) -> Fixture {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_owned();
    let engine = load(&tiny::write(spec, &dir, "m.gguf"));
    let mut seq = engine.new_sequence();
    seq.feed(&engine, &prompt(n, 1)).unwrap();
    let snap = dir.join("s.lemkv");
    let labels = BTreeMap::from([("purpose".to_owned(), "test".to_owned())]);
    save_snapshot(&snap, &engine, &seq, labels).unwrap();
    let bytes = std::fs::read(&snap).unwrap();
    Fixture { _dir: d, dir, engine, snap, bytes }
}

/// Writes `bytes` next to the fixture and restores it.
fn restore(f: &Fixture, bytes: &[u8]) -> Result<lem_engine::Sequence, StateError> {
    let p = f.dir.join("edited.lemkv");
    std::fs::write(&p, bytes).unwrap();
    load_snapshot(&p, &f.engine)
}

/// The header JSON region of a safetensors file.
fn header(bytes: &[u8]) -> std::ops::Range<usize> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    8..8 + n
}

/// Replaces `from` by `to` (same length) in the header.
fn edit_header(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len(), "edits keep the header length");
    let h = header(bytes);
    let text = std::str::from_utf8(&bytes[h.clone()]).unwrap();
    assert!(text.contains(from), "{from} not in header: {text}");
    let mut out = bytes.to_vec();
    out[h].copy_from_slice(text.replacen(from, to, 1).as_bytes());
    out
}

/// The value of metadata `key` in the header.
fn meta_value(bytes: &[u8], key: &str) -> String {
    let v: serde_json::Value = serde_json::from_slice(&bytes[header(bytes)]).unwrap();
    v["__metadata__"][key].as_str().unwrap().to_owned()
}

#[test]
fn roundtrip_is_exact_with_a_wrapped_window() {
    // 600 tokens: gemma3's window layers (ring of 4 + 512 cells) have wrapped.
    let f = fixture(&tiny::gemma3(11), 600);
    let mut seq = load_snapshot(&f.snap, &f.engine).unwrap();
    let mut want = f.engine.new_sequence();
    let p = prompt(600, 1);
    let cont = prompt(5, 9);
    let full: Vec<u32> = p.iter().chain(&cont).copied().collect();
    let want_ids = gen_ids(&f.engine, &mut want, &full, 8);
    assert_eq!(seq.tokens(), p);
    assert_eq!(gen_ids(&f.engine, &mut seq, &cont, 8), want_ids);
    // The restored ring lays out its cells like the original one.
    let mut orig = f.engine.new_sequence();
    orig.feed(&f.engine, &p).unwrap();
    let restored = load_snapshot(&f.snap, &f.engine).unwrap();
    for l in 0..orig.cache().n_layers() {
        assert_eq!(orig.cache().layer(l).view().pos, restored.cache().layer(l).view().pos, "layer {l}");
    }
}

#[test]
fn inspect_reports_the_metadata() {
    let f = fixture(&tiny::llama(7), 20);
    let info = inspect_snapshot(&f.snap).unwrap();
    assert_eq!(info.tokens, 20);
    assert_eq!(info.format_version, lem_state::SNAPSHOT_VERSION);
    assert_eq!(info.labels["purpose"], "test");
    assert_eq!(info.identity.model_fingerprint, f.engine.model_fingerprint().unwrap());
    assert_eq!(info.identity.tokenizer_fingerprint, f.engine.tokenizer().fingerprint());
    assert!(info.checksum.starts_with("sha256:") && info.checksum.len() == 7 + 64);
    assert!(info.created.ends_with('Z'));
    assert_eq!(info.layers.len(), 3);
    assert!(info.layers.iter().all(|l| l.cells == 20 && l.first_position == Some(0)));
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!((&json["layout"]["k_type"], &json["layout"]["v_type"]), (&"f16".into(), &"f16".into()));
}

#[test]
fn truncated_files() {
    let f = fixture(&tiny::llama(7), 20);
    let h = header(&f.bytes);
    for (what, at) in [
        ("length prefix", 5),
        ("header", h.end / 2),
        ("data", (h.end + f.bytes.len()) / 2),
        ("last byte", f.bytes.len() - 1),
    ] {
        let err = restore(&f, &f.bytes[..at]).unwrap_err();
        assert!(matches!(err, StateError::Truncated { .. }), "{what}: {err}");
        assert!(err.to_string().contains("truncated"), "{what}: {err}");
    }
    let err = restore(&f, &[]).unwrap_err();
    assert!(matches!(err, StateError::Truncated { .. }), "empty: {err}");
}

#[test]
fn flipped_bytes_in_the_data_fail_the_checksum() {
    let f = fixture(&tiny::llama(7), 20);
    let h = header(&f.bytes);
    for at in [h.end, h.end + 100, f.bytes.len() / 2, f.bytes.len() - 1] {
        let mut b = f.bytes.clone();
        b[at] ^= 0x10;
        let err = restore(&f, &b).unwrap_err();
        assert!(matches!(err, StateError::Checksum { .. }), "byte {at}: {err}");
        assert!(err.to_string().contains("checksum"), "{err}");
    }
}

#[test]
fn flipped_bytes_in_the_header_are_errors() {
    let f = fixture(&tiny::llama(7), 20);
    let h = header(&f.bytes);
    for at in (0..h.end).step_by(7) {
        let mut b = f.bytes.clone();
        b[at] ^= 0x21;
        // Any error but never a panic and never a restore.
        assert!(restore(&f, &b).is_err(), "flipping byte {at} went unnoticed");
    }
}

#[test]
fn edited_metadata() {
    let f = fixture(&tiny::llama(7), 20);
    let fp = meta_value(&f.bytes, "model_fingerprint");
    let other = format!("{}{}", if fp.starts_with('0') { '1' } else { '0' }, &fp[1..]);
    let err = restore(&f, &edit_header(&f.bytes, &fp, &other)).unwrap_err();
    assert!(matches!(err, StateError::ModelMismatch { .. }), "{err}");

    let tfp = meta_value(&f.bytes, "tokenizer_fingerprint");
    let other = format!("{}{}", if tfp.starts_with('0') { '1' } else { '0' }, &tfp[1..]);
    let err = restore(&f, &edit_header(&f.bytes, &tfp, &other)).unwrap_err();
    assert!(matches!(err, StateError::TokenizerMismatch { .. }), "{err}");

    let err = restore(&f, &edit_header(&f.bytes, "\"format_version\":\"1\"", "\"format_version\":\"7\"")).unwrap_err();
    assert!(matches!(err, StateError::UnsupportedVersion { ref found, .. } if found == "7"), "{err}");

    let err = restore(&f, &edit_header(&f.bytes, "lem-kv-snapshot", "lem-kv-snapshoX")).unwrap_err();
    assert!(matches!(err, StateError::WrongFormat { .. }), "{err}");

    // Metadata that does not name an identity is covered by the checksum.
    for (from, to) in [("\"tokens\":\"20\"", "\"tokens\":\"21\""), ("\"purpose\\\":\\\"test", "\"purpose\\\":\\\"best")]
    {
        let err = restore(&f, &edit_header(&f.bytes, from, to)).unwrap_err();
        assert!(matches!(err, StateError::Checksum { .. }), "{from}: {err}");
    }

    // Cut positions out of the K/V: the checksum still holds (it covers tensors), the
    // import refuses an incomplete state.
    let err = restore(&f, &edit_header(&f.bytes, r#"\"n_kv\":2"#, r#"\"n_kv\":1"#)).unwrap_err();
    assert!(matches!(err, StateError::LayoutMismatch { .. } | StateError::Malformed { .. }), "{err}");
}

#[test]
fn other_layout_is_refused() {
    let f = fixture(&tiny::gemma3(11), 10);
    let err = restore(&f, &edit_header(&f.bytes, r#"\"window\":4"#, r#"\"window\":5"#)).unwrap_err();
    assert!(matches!(err, StateError::LayoutMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("layer 0: sliding window 5") && err.to_string().contains("vs sliding window 4"),
        "{err}"
    );
}

#[test]
fn other_model_and_other_tokenizer() {
    let f = fixture(&tiny::llama(7), 20);
    // Same architecture, other weights.
    let other = load(&tiny::write(&tiny::llama(8), &f.dir, "other.gguf"));
    let err = load_snapshot(&f.snap, &other).unwrap_err();
    assert!(matches!(err, StateError::ModelMismatch { .. }), "{err}");
    assert!(err.to_string().contains("other.gguf") && err.to_string().contains("m.gguf"), "{err}");
    // Another architecture.
    let gemma = load(&tiny::write(&tiny::gemma3(11), &f.dir, "g.gguf"));
    let err = load_snapshot(&f.snap, &gemma).unwrap_err();
    assert!(matches!(err, StateError::ModelMismatch { .. }), "{err}");
    // Same weights, another vocabulary.
    let spec = tiny::with_tokenizer(
        Spec { seed: 7, ..Spec::llama(candle_core::quantized::GgmlDType::Q8_0) },
        Some((40, "zz")),
    );
    let retok = load(&tiny::write(&spec, &f.dir, "retok.gguf"));
    assert_eq!(retok.model_fingerprint().unwrap(), f.engine.model_fingerprint().unwrap(), "weights are the same");
    let err = load_snapshot(&f.snap, &retok).unwrap_err();
    assert!(matches!(err, StateError::TokenizerMismatch { .. }), "{err}");
}

#[test]
fn not_a_snapshot() {
    let f = fixture(&tiny::llama(7), 5);
    let err = restore(&f, b"this is not a snapshot file at all").unwrap_err();
    assert!(matches!(err, StateError::Malformed { .. } | StateError::Truncated { .. }), "{err}");
    // A valid safetensors file without lem metadata.
    let st = safetensors::serialize(Vec::<(String, safetensors::tensor::TensorView<'_>)>::new(), None).unwrap();
    let err = restore(&f, &st).unwrap_err();
    assert!(matches!(err, StateError::Malformed { .. } | StateError::WrongFormat { .. }), "{err}");
    let err = load_snapshot(Path::new("/nonexistent/x.lemkv"), &f.engine).unwrap_err();
    assert!(matches!(err, StateError::Io { .. }), "{err}");
}

#[test]
fn empty_sequence_and_labels_roundtrip() {
    let d = tempfile::tempdir().unwrap();
    let engine = load(&tiny::write(&tiny::llama(7), d.path(), "m.gguf"));
    let seq = engine.new_sequence();
    let p = d.path().join("empty.lemkv");
    save_snapshot(&p, &engine, &seq, BTreeMap::new()).unwrap();
    let back = load_snapshot(&p, &engine).unwrap();
    assert!(back.is_empty());
    let s = Snapshot::read(&p).unwrap();
    assert_eq!(s.tokens.len(), 0);
    // Overwriting is atomic and leaves no temporary files.
    let mut seq = engine.new_sequence();
    seq.feed(&engine, &prompt(9, 3)).unwrap();
    save_snapshot(&p, &engine, &seq, BTreeMap::new()).unwrap();
    assert_eq!(load_snapshot(&p, &engine).unwrap().tokens(), seq.tokens());
    let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
