//! Snapshot files: one sequence's tokens and K/V, with the identity they were made under.
//!
//! A snapshot is a safetensors file (format `lem-kv-snapshot`, version
//! [`SNAPSHOT_VERSION`]); docs/kv-state.md describes every tensor and metadata key.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use lem_engine::{Engine, Sequence};
use lem_kv::{CacheLayout, LayerKind, RawLayer, SeqCache};
use safetensors::tensor::Dtype;
use serde::Serialize;

use crate::container::{self, Out};
use crate::error::StateError;
use crate::fsutil::{atomic_write, now_ms, rfc3339};
use crate::identity::Identity;
use crate::kvtensor;

/// Format tag of snapshot files.
pub const SNAPSHOT_FORMAT: &str = "lem-kv-snapshot";
/// The snapshot format version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;
/// Metadata key prefix of caller-defined extra entries (sessions keep the transcript there).
const EXTRA: &str = "extra.";

/// One layer as a snapshot holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerInfo {
    /// Attention kind.
    pub kind: LayerKind,
    /// Cells stored.
    pub cells: usize,
    /// Lowest stored position.
    pub first_position: Option<u32>,
    /// Highest stored position.
    pub last_position: Option<u32>,
}

/// Everything a snapshot says about itself (what `lem kv inspect` prints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// Format tag ([`SNAPSHOT_FORMAT`]).
    pub format: String,
    /// Format version.
    pub format_version: u32,
    /// Model, tokenizer and layout the state was made under.
    #[serde(flatten)]
    pub identity: Identity,
    /// Number of tokens.
    pub tokens: usize,
    /// Creation time, RFC 3339 UTC.
    pub created: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// User labels.
    pub labels: BTreeMap<String, String>,
    /// `sha256:<hex>` over the tensors (verified when read).
    pub checksum: String,
    /// Bytes of K/V data.
    pub kv_bytes: usize,
    /// Version of lem that wrote the file.
    pub lem_version: String,
    /// Per-layer contents.
    pub layers: Vec<LayerInfo>,
    /// Caller-defined entries (e.g. a session's transcript).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

/// A snapshot in memory: tokens, raw K/V per layer, and what it says about itself.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Metadata.
    pub info: SnapshotInfo,
    /// Token ids the state is for.
    pub tokens: Vec<u32>,
    /// Each layer's K/V exactly as the cache stored it.
    pub layers: Vec<RawLayer>,
}

fn layer_infos(layout: &CacheLayout, layers: &[RawLayer]) -> Vec<LayerInfo> {
    layout
        .layers
        .iter()
        .zip(layers)
        .map(|(s, l)| LayerInfo {
            kind: s.kind,
            cells: l.tokens(),
            first_position: l.positions.first().copied(),
            last_position: l.positions.last().copied(),
        })
        .collect()
}

impl Snapshot {
    /// Captures `seq`'s state under `engine`'s identity.
    pub fn capture(
        engine: &Engine,
        seq: &Sequence,
        labels: BTreeMap<String, String>,
        extra: BTreeMap<String, String>,
    ) -> Result<Snapshot, StateError> {
        let identity = Identity::of(engine)?;
        let layers = seq.cache().export_raw();
        let created_unix_ms = now_ms();
        let info = SnapshotInfo {
            format: SNAPSHOT_FORMAT.into(),
            format_version: SNAPSHOT_VERSION,
            layers: layer_infos(&identity.layout, &layers),
            identity,
            tokens: seq.len(),
            created: rfc3339(created_unix_ms),
            created_unix_ms,
            labels,
            checksum: String::new(),
            kv_bytes: layers.iter().map(RawLayer::bytes).sum(),
            lem_version: env!("CARGO_PKG_VERSION").into(),
            extra,
        };
        Ok(Snapshot { info, tokens: seq.tokens().to_vec(), layers })
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, StateError> {
        let i = &self.info;
        let layout = &i.identity.layout;
        let mut meta = BTreeMap::new();
        meta.insert("model_fingerprint".into(), i.identity.model_fingerprint.clone());
        meta.insert("model_file".into(), i.identity.model_file.clone());
        meta.insert("tokenizer_fingerprint".into(), i.identity.tokenizer_fingerprint.clone());
        meta.insert("layout".into(), json(layout));
        meta.insert("tokens".into(), self.tokens.len().to_string());
        meta.insert("created".into(), i.created.clone());
        meta.insert("created_unix_ms".into(), i.created_unix_ms.to_string());
        meta.insert("labels".into(), json(&i.labels));
        meta.insert("lem_version".into(), i.lem_version.clone());
        for (k, v) in &i.extra {
            meta.insert(format!("{EXTRA}{k}"), v.clone());
        }
        let tokens = container::u32_bytes(&self.tokens);
        let positions: Vec<Vec<u8>> = self.layers.iter().map(|l| container::u32_bytes(&l.positions)).collect();
        let mut tensors =
            vec![Out { name: "tokens".into(), dtype: Dtype::U32, shape: vec![self.tokens.len()], data: &tokens }];
        for (idx, (l, spec)) in self.layers.iter().zip(&layout.layers).enumerate() {
            let (kt, kshape) = kvtensor::form(layout.k_type, spec.n_kv, l.tokens(), spec.head_dim);
            let (vt, vshape) = kvtensor::form(layout.v_type, spec.n_kv, l.tokens(), spec.head_dim);
            tensors.push(Out {
                name: format!("layer.{idx}.positions"),
                dtype: Dtype::U32,
                shape: vec![l.tokens()],
                data: &positions[idx],
            });
            tensors.push(Out { name: format!("layer.{idx}.k"), dtype: kt, shape: kshape, data: &l.k });
            tensors.push(Out { name: format!("layer.{idx}.v"), dtype: vt, shape: vshape, data: &l.v });
        }
        container::encode(SNAPSHOT_FORMAT, SNAPSHOT_VERSION, meta, &tensors)
            .map_err(|e| StateError::malformed(Path::new("<snapshot>"), e))
    }

    /// Writes the snapshot to `path` atomically (temporary file, fsync, rename, directory
    /// fsync): a crash leaves the previous file, if any, intact. Returns the info with
    /// the checksum filled in.
    pub fn write(&mut self, path: &Path) -> Result<&SnapshotInfo, StateError> {
        let bytes = self.to_bytes()?;
        atomic_write(path, &bytes)?;
        // The checksum is what the file records; read it back from the encoded header.
        let parsed = container::parse(path, &bytes, SNAPSHOT_FORMAT, SNAPSHOT_VERSION)?;
        self.info.checksum = parsed.meta(path, container::CHECKSUM)?.to_owned();
        Ok(&self.info)
    }

    /// Reads and verifies the snapshot at `path` (see [`Snapshot::from_bytes`]).
    pub fn read(path: &Path) -> Result<Snapshot, StateError> {
        let bytes = std::fs::read(path).map_err(StateError::io(path))?;
        Snapshot::from_bytes(path, &bytes)
    }

    /// Parses a snapshot file's bytes (`path` names it in errors). Refuses, each with its
    /// own error: a truncated file, a malformed one, another format, another version, a
    /// checksum that does not match, and contents that contradict the metadata.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Snapshot, StateError> {
        let p = container::parse(path, bytes, SNAPSHOT_FORMAT, SNAPSHOT_VERSION)?;
        let bad = |r: String| StateError::malformed(path, r);
        let identity = identity_of(path, &p.meta)?;
        let layout = identity.layout.clone();
        let labels: BTreeMap<String, String> =
            serde_json::from_str(p.meta(path, "labels")?).map_err(|e| bad(format!("labels metadata: {e}")))?;
        let n_tokens: usize = p.meta(path, "tokens")?.parse().map_err(|e| bad(format!("tokens metadata: {e}")))?;
        let created_unix_ms: u64 =
            p.meta(path, "created_unix_ms")?.parse().map_err(|e| bad(format!("created_unix_ms metadata: {e}")))?;
        let (shape, data) = p.tensor(path, "tokens", Dtype::U32)?;
        if shape != [n_tokens] {
            return Err(bad(format!("metadata says {n_tokens} tokens, the tokens tensor has shape {shape:?}")));
        }
        let tokens = container::u32s(data);
        let mut layers = Vec::with_capacity(layout.layers.len());
        for (idx, spec) in layout.layers.iter().enumerate() {
            let (pshape, pdata) = p.tensor(path, &format!("layer.{idx}.positions"), Dtype::U32)?;
            let t = pshape.first().copied().unwrap_or(0);
            let (kt, kwant) = kvtensor::form(layout.k_type, spec.n_kv, t, spec.head_dim);
            let (vt, vwant) = kvtensor::form(layout.v_type, spec.n_kv, t, spec.head_dim);
            let (kshape, k) = p.tensor(path, &format!("layer.{idx}.k"), kt)?;
            let (vshape, v) = p.tensor(path, &format!("layer.{idx}.v"), vt)?;
            if pshape.len() != 1 || kshape != kwant || vshape != vwant {
                return Err(bad(format!(
                    "layer {idx}: positions {pshape:?}, K {kshape:?}, V {vshape:?} do not match the layout's \
                     {kwant:?} / {vwant:?}"
                )));
            }
            layers.push(RawLayer {
                k_type: layout.k_type,
                v_type: layout.v_type,
                positions: container::u32s(pdata),
                k: k.to_vec(),
                v: v.to_vec(),
            });
        }
        let expected_tensors = 1 + 3 * layout.layers.len();
        if p.tensors.len() != expected_tensors {
            return Err(bad(format!("{} tensors, the layout needs {expected_tensors}", p.tensors.len())));
        }
        let extra = p.meta.iter().filter_map(|(k, v)| Some((k.strip_prefix(EXTRA)?.to_owned(), v.clone()))).collect();
        let info = SnapshotInfo {
            format: SNAPSHOT_FORMAT.into(),
            format_version: SNAPSHOT_VERSION,
            layers: layer_infos(&identity.layout, &layers),
            identity,
            tokens: n_tokens,
            created: p.meta.get("created").cloned().unwrap_or_else(|| rfc3339(created_unix_ms)),
            created_unix_ms,
            labels,
            checksum: p.meta(path, container::CHECKSUM)?.to_owned(),
            kv_bytes: layers.iter().map(RawLayer::bytes).sum(),
            lem_version: p.meta.get("lem_version").cloned().unwrap_or_default(),
            extra,
        };
        Ok(Snapshot { info, tokens, layers })
    }

    /// Rebuilds the sequence under `engine`, refusing another model, tokenizer or layout
    /// (`path` names the file in errors), and K/V that do not form a complete state for
    /// the tokens.
    pub fn into_sequence(self, engine: &Engine, path: &Path) -> Result<Sequence, StateError> {
        Identity::of(engine)?.check(path, &self.info.identity)?;
        let mut cache = SeqCache::new(engine.model().cache_layout());
        cache
            .import_raw(&self.layers, self.tokens.len() as u32)
            .map_err(|e| StateError::malformed(path, format!("K/V do not form a state for the tokens: {e}")))?;
        Ok(Sequence::from_cache(engine, self.tokens, cache)?)
    }
}

/// The identity a snapshot header records.
fn identity_of(path: &Path, meta: &HashMap<String, String>) -> Result<Identity, StateError> {
    let get = |k: &str| meta.get(k).cloned().ok_or_else(|| StateError::malformed(path, format!("no '{k}' metadata")));
    let layout: CacheLayout = serde_json::from_str(&get("layout")?)
        .map_err(|e| StateError::malformed(path, format!("layout metadata: {e}")))?;
    Ok(Identity {
        model_fingerprint: get("model_fingerprint")?,
        model_file: meta.get("model_file").cloned().unwrap_or_default(),
        tokenizer_fingerprint: get("tokenizer_fingerprint")?,
        layout,
    })
}

/// Restores a snapshot file's `bytes` under `engine`. The identity in the header is
/// compared first, so state of another model, tokenizer or layout is named as such
/// (even if the file was also edited); then the whole file is verified (checksum over
/// metadata and tensors, structure) and imported.
pub(crate) fn restore_bytes(path: &Path, bytes: &[u8], engine: &Engine) -> Result<(Snapshot, Sequence), StateError> {
    let meta = container::parse_header(path, bytes, SNAPSHOT_FORMAT, SNAPSHOT_VERSION)?;
    Identity::of(engine)?.check(path, &identity_of(path, &meta)?)?;
    let snap = Snapshot::from_bytes(path, bytes)?;
    let info = Snapshot { info: snap.info.clone(), tokens: Vec::new(), layers: Vec::new() };
    let seq = snap.into_sequence(engine, path)?;
    Ok((info, seq))
}

/// Saves `seq` to `path` (atomically) with `labels`; returns what was written.
pub fn save_snapshot(
    path: &Path,
    engine: &Engine,
    seq: &Sequence,
    labels: BTreeMap<String, String>,
) -> Result<SnapshotInfo, StateError> {
    let mut s = Snapshot::capture(engine, seq, labels, BTreeMap::new())?;
    Ok(s.write(path)?.clone())
}

/// Restores the sequence saved at `path` under `engine`, or says exactly why not.
pub fn load_snapshot(path: &Path, engine: &Engine) -> Result<Sequence, StateError> {
    let bytes = std::fs::read(path).map_err(StateError::io(path))?;
    Ok(restore_bytes(path, &bytes, engine)?.1)
}

/// Reads and verifies the snapshot at `path` without a model (checksum included).
pub fn inspect_snapshot(path: &Path) -> Result<SnapshotInfo, StateError> {
    Ok(Snapshot::read(path)?.info)
}

/// A metadata value as JSON.
fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
