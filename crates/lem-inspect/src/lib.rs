//! lem's inspection layer: the model's internals as first-class output.
//!
//! - **Capture** ([`capture`]): a [`Recorder`] is a [`lem_model::Observer`] that collects,
//!   per layer, the post-rotary keys exactly as written to the KV cache and, on request,
//!   pre-rotary keys, values, queries and attention weights ([`Kind`]). The model computes
//!   and copies only what was asked for; with no observer it does nothing extra, and an
//!   observer never changes the forward's results.
//! - **Scoring** ([`score_prompt`]): one prefill with every layer's keys captured, the
//!   key snapshot of `specs/attention-scoring.md` §1 ([`lem_score::KeySnapshot`], with
//!   the model's [`ModelIdentity`] and the token ids), and its [`lem_score::Scores`].
//! - **Raw capture files** ([`write_capture_file`]): every captured tensor in one
//!   safetensors file, for analysis elsewhere.
//! - **Probe** ([`Probe`]): a [`lem_engine::GenerateHook`] writing one JSON event per
//!   generation step, plus a prefill summary with the prompt's scores.
//! - **Plot** ([`plot_scores`]): per-layer coherence and cross-layer alignment as a PNG.
//!
//! `docs/attention.md` documents the file formats and the command-line tools built on
//! this crate (`lem score attention`, `lem inspect`, `lem generate --probe`).

pub mod capture;
mod error;
mod identity;
mod plot;
mod probe;
mod rawfile;
mod scoring;

pub use capture::{CaptureSpec, Captures, Kind, Recorder, Tensor, capture_prefill, parse_kinds, parse_layers};
pub use error::InspectError;
pub use identity::ModelIdentity;
pub use plot::{HeatPanel, plot_heatmaps, plot_scores};
pub use probe::Probe;
pub use rawfile::{CaptureFileMeta, FORMAT_TAG, FORMAT_VERSION, write_capture_file};
pub use scoring::{PromptScore, ScoreTimings, plain_prefill_ms, score_prompt, snapshot_meta};

use lem_score::Scores;
use serde_json::{Map, Value};

/// The name of the regime `scores` were computed in: `"few_heads"` or `"many_heads"`.
pub fn regime(scores: &Scores) -> &'static str {
    if scores.few_heads { "few_heads" } else { "many_heads" }
}

/// Every field of `scores` (the JSON names of the spec, §6) plus `"regime"`, as a JSON
/// object to merge into a larger one.
pub fn scores_json(scores: &Scores) -> Map<String, Value> {
    let mut m = match serde_json::to_value(scores) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(), // `Scores` always serialises to an object.
    };
    m.insert("regime".into(), Value::String(regime(scores).into()));
    m
}
