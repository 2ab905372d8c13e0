//! The snapshot file: round trips, the on-disk layout, atomic saves, and a typed error for
//! every kind of bad file.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::meta;
use lem_score::{KeySnapshot, ScoreError, SnapshotMeta, score};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// L = 3 (layer 1 absent), H = 2, T = 3, D = 2, distinct values everywhere.
fn sample() -> KeySnapshot {
    let layer = |base: f32| -> Vec<Vec<f32>> {
        (0..2).map(|h| (0..6).map(|i| base + h as f32 * 10.0 + i as f32 * 0.25 - 1.0).collect()).collect()
    };
    let mut m = meta(3);
    m.model_name = "tiny \"llama\" ✓".into();
    m.token_ids = vec![1, 15043, 4_000_000_000];
    KeySnapshot::new(m, 2, 3, 2, vec![Some(layer(0.5)), None, Some(layer(-3.0))]).unwrap()
}

fn saved(dir: &Path, s: &KeySnapshot) -> std::path::PathBuf {
    let p = dir.join("keys.safetensors");
    s.save(&p).unwrap();
    p
}

#[test]
fn round_trip_preserves_everything() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample();
    let p = saved(dir.path(), &s);
    let back = KeySnapshot::load(&p).unwrap();
    assert_eq!(back, s);
    assert_eq!(score(&back), score(&s));
    assert!(back.layer_keys(1).is_none());

    // Empty snapshot too.
    let empty = KeySnapshot::new(SnapshotMeta::default(), 0, 0, 0, vec![]).unwrap();
    empty.save(&p).unwrap();
    assert_eq!(KeySnapshot::load(&p).unwrap(), empty);
}

#[test]
fn file_layout_is_the_documented_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample();
    let bytes = std::fs::read(saved(dir.path(), &s)).unwrap();
    let (n, header) = SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(n % 8, 0, "header padded to 8 bytes");
    let md = header.metadata().clone().unwrap();
    let want: HashMap<&str, &str> = [
        ("format", "lem-keys"),
        ("format_version", "1"),
        ("model_fingerprint", "sha256:test"),
        ("model_name", "tiny \"llama\" ✓"),
        ("token_ids", "[1,15043,4000000000]"),
        ("n_layers", "3"),
        ("n_kv_heads", "2"),
        ("n_tokens", "3"),
        ("head_dim", "2"),
        ("post_rotary", "true"),
    ]
    .into();
    assert_eq!(md.len(), want.len());
    for (k, v) in want {
        assert_eq!(md.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert_eq!(header.offset_keys(), vec!["keys.0", "keys.2"]);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("keys.2").unwrap();
    assert_eq!(t.dtype(), Dtype::F32);
    assert_eq!(t.shape(), &[2, 3, 2]);
    // [H, T, D] C order: element (h=1, p=2, d=1) is head 1's flat index 2*2+1.
    let at = |i: usize| f32::from_le_bytes(t.data()[i * 4..i * 4 + 4].try_into().unwrap());
    assert_eq!(at(6 + 5), s.layer_keys(2).unwrap()[1][5]);
}

#[test]
fn save_replaces_atomically_and_leaves_no_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.safetensors");
    std::fs::write(&p, b"old contents").unwrap();
    let s = sample();
    s.save(&p).unwrap();
    s.save(&p).unwrap();
    assert_eq!(KeySnapshot::load(&p).unwrap(), s);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("k.safetensors")]);
}

#[test]
fn save_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample();
    let e = s.save(dir.path()).unwrap_err();
    assert!(matches!(e, ScoreError::NotAFile { .. }), "{e:?}");
    let e = s.save(dir.path().join("no/such/dir/k.safetensors")).unwrap_err();
    assert!(matches!(e, ScoreError::Io { .. }), "{e:?}");
}

// ---- bad files --------------------------------------------------------------------------

/// Metadata of a valid file for `sample()`-like dims, as editable pairs.
fn good_meta() -> Vec<(&'static str, String)> {
    [
        ("format", "lem-keys"),
        ("format_version", "1"),
        ("model_fingerprint", "fp"),
        ("model_name", "m"),
        ("token_ids", "[5,6]"),
        ("n_layers", "2"),
        ("n_kv_heads", "1"),
        ("n_tokens", "2"),
        ("head_dim", "3"),
        ("post_rotary", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_string()))
    .collect()
}

struct RawTensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn f32_tensor(name: &str, shape: &[usize], values: &[f32]) -> RawTensor {
    RawTensor {
        name: name.into(),
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        bytes: values.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn good_tensors() -> Vec<RawTensor> {
    vec![f32_tensor("keys.1", &[1, 2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])]
}

/// Serialises arbitrary metadata and tensors with the reference writer.
fn raw_file(meta: &[(&str, String)], tensors: &[RawTensor]) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|t| (t.name.clone(), TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap()))
        .collect();
    let md: HashMap<String, String> = meta.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    safetensors::serialize(views, Some(md)).unwrap()
}

/// The good file with `key` replaced by `value`, or removed when `value` is `None`.
fn with_meta(key: &str, value: Option<&str>) -> Vec<u8> {
    let m: Vec<(&str, String)> = good_meta()
        .into_iter()
        .filter_map(|(k, v)| match (k == key, value) {
            (false, _) => Some((k, v)),
            (true, Some(new)) => Some((k, new.to_string())),
            (true, None) => None,
        })
        .collect();
    raw_file(&m, &good_tensors())
}

/// Writes `bytes` to a file, loads it, and checks the error with `want`.
fn check_load(name: &str, bytes: &[u8], want: impl Fn(&ScoreError) -> bool) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.safetensors");
    std::fs::write(&p, bytes).unwrap();
    match KeySnapshot::load(&p) {
        Ok(s) => panic!("{name}: loaded {s:?}"),
        Err(e) => {
            assert!(want(&e), "{name}: wrong error: {e:?}");
            let msg = e.to_string();
            if !matches!(e, ScoreError::NonFinite { .. }) {
                assert!(msg.contains("bad.safetensors"), "{name}: message without the path: {msg}");
            }
        }
    }
}

#[test]
fn the_good_raw_file_loads() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("good.safetensors");
    std::fs::write(&p, raw_file(&good_meta(), &good_tensors())).unwrap();
    let s = KeySnapshot::load(&p).unwrap();
    assert_eq!((s.n_layers(), s.n_kv_heads(), s.n_tokens(), s.head_dim()), (2, 1, 2, 3));
    assert!(s.layer_keys(0).is_none());
    assert_eq!(s.layer_keys(1).unwrap(), &[vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]);
    assert_eq!(s.meta().token_ids, vec![5, 6]);
}

#[test]
fn missing_path_is_io() {
    let dir = tempfile::tempdir().unwrap();
    let e = KeySnapshot::load(dir.path().join("nope.safetensors")).unwrap_err();
    assert!(matches!(&e, ScoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound), "{e:?}");
}

#[test]
fn directory_is_not_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = KeySnapshot::load(dir.path()).unwrap_err();
    assert!(matches!(e, ScoreError::NotAFile { .. }), "{e:?}");
}

#[test]
fn not_safetensors() {
    let not_st = |e: &ScoreError| matches!(e, ScoreError::NotSafetensors { .. });
    check_load("empty file", b"", not_st);
    check_load("text", b"hello, this is not a safetensors file at all", not_st);
    check_load("json only", b"{\"a\": 1}", not_st);
}

#[test]
fn truncated_files_are_not_safetensors() {
    let good = {
        let dir = tempfile::tempdir().unwrap();
        std::fs::read(saved(dir.path(), &sample())).unwrap()
    };
    for cut in [1, 4, 7, 8, 20, good.len() / 2, good.len() - 4, good.len() - 1] {
        check_load(&format!("truncated to {cut}"), &good[..cut], |e| matches!(e, ScoreError::NotSafetensors { .. }));
    }
    // Trailing garbage is just as wrong.
    let mut longer = good.clone();
    longer.extend_from_slice(&[0, 0, 0, 0]);
    check_load("trailing bytes", &longer, |e| matches!(e, ScoreError::NotSafetensors { .. }));
}

#[test]
fn flipped_header_bytes_are_not_safetensors() {
    let good = raw_file(&good_meta(), &good_tensors());
    // (what, byte index) — the length prefix, the JSON's opening brace, a quote.
    for (what, i) in [("length prefix", 0), ("length high byte", 6), ("open brace", 8), ("first quote", 9)] {
        let mut bad = good.clone();
        bad[i] ^= 0xFF;
        check_load(what, &bad, |e| matches!(e, ScoreError::NotSafetensors { .. }));
    }
}

#[test]
fn wrong_format_tag() {
    check_load(
        "format",
        &with_meta("format", Some("gguf-keys")),
        |e| matches!(e, ScoreError::WrongFormat { found, .. } if found == "gguf-keys"),
    );
    // A safetensors file with no metadata at all (e.g. model weights).
    check_load("no metadata", &raw_file(&[], &good_tensors()), |e| {
        matches!(e, ScoreError::MissingMetadata { key: "format", .. })
    });
}

#[test]
fn unsupported_version() {
    for v in ["2", "0", "1.0", ""] {
        check_load(
            v,
            &with_meta("format_version", Some(v)),
            |e| matches!(e, ScoreError::UnsupportedVersion { found, .. } if found == v),
        );
    }
}

#[test]
fn missing_metadata_keys() {
    for (key, _) in good_meta() {
        check_load(
            key,
            &with_meta(key, None),
            |e| matches!(e, ScoreError::MissingMetadata { key: k, .. } if *k == key),
        );
    }
}

#[test]
fn invalid_metadata_values() {
    let cases: &[(&str, &str)] = &[
        ("n_layers", "two"),
        ("n_layers", "-1"),
        ("n_layers", "100000000"),
        ("n_kv_heads", "1e3"),
        ("n_kv_heads", "4294967296"),
        ("n_tokens", ""),
        ("head_dim", "3.0"),
        ("post_rotary", "yes"),
        ("token_ids", "5,6"),
        ("token_ids", "[5,-6]"),
        ("token_ids", "[5,6,7]"),
        ("token_ids", "[5, 4294967296]"),
    ];
    for &(key, value) in cases {
        check_load(
            &format!("{key}={value}"),
            &with_meta(key, Some(value)),
            |e| matches!(e, ScoreError::InvalidMetadata { key: k, .. } if *k == key),
        );
    }
}

#[test]
fn shape_mismatch_with_metadata() {
    let v: Vec<f32> = (0..6).map(|i| i as f32).collect();
    let cases =
        [("[2,1,3]", vec![2, 1, 3]), ("[1,3,2]", vec![1, 3, 2]), ("[6]", vec![6]), ("[1,2,3,1]", vec![1, 2, 3, 1])];
    for (name, shape) in cases {
        let bytes = raw_file(&good_meta(), &[f32_tensor("keys.0", &shape, &v)]);
        check_load(name, &bytes, |e| {
            matches!(e, ScoreError::ShapeMismatch { expected, found, .. }
                if expected == &[1, 2, 3] && found == &shape)
        });
    }
    // Metadata disagreeing with a correct tensor is the same error.
    check_load("head_dim", &with_meta("head_dim", Some("2")), |e| matches!(e, ScoreError::ShapeMismatch { .. }));
}

#[test]
fn wrong_dtype() {
    for (dtype, size) in [(Dtype::F16, 2), (Dtype::F64, 8), (Dtype::BF16, 2), (Dtype::I32, 4)] {
        let t = RawTensor { name: "keys.0".into(), dtype, shape: vec![1, 2, 3], bytes: vec![0; 6 * size] };
        check_load(
            &format!("{dtype:?}"),
            &raw_file(&good_meta(), &[t]),
            |e| matches!(e, ScoreError::WrongDtype { tensor, .. } if tensor == "keys.0"),
        );
    }
}

#[test]
fn unexpected_tensors() {
    let v = [0.0f32; 6];
    for name in ["keys.2", "keys.01", "keys.-1", "keys.", "keys", "values.0", "keys.0.extra"] {
        let mut ts = good_tensors();
        ts.push(f32_tensor(name, &[1, 2, 3], &v));
        check_load(
            name,
            &raw_file(&good_meta(), &ts),
            |e| matches!(e, ScoreError::UnexpectedTensor { name: n, .. } if n == name),
        );
    }
}

#[test]
fn non_finite_values_in_file() {
    let t = f32_tensor("keys.0", &[1, 2, 3], &[0.0, 1.0, 2.0, f32::INFINITY, 4.0, 5.0]);
    check_load("inf", &raw_file(&good_meta(), &[t]), |e| {
        matches!(e, ScoreError::NonFinite { layer: 0, head: 0, index: 3, .. })
    });
}
