//! Scoring a prompt: one prefill with the keys captured, the key snapshot, the scores.

use std::time::Instant;

use lem_engine::Engine;
use lem_model::Workspace;
use lem_score::{KeySnapshot, Scores, SnapshotMeta, score};
use serde::Serialize;

use crate::capture::prefill;
use crate::{CaptureSpec, InspectError, ModelIdentity, Recorder};

/// Where the time of [`score_prompt`] went, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct ScoreTimings {
    /// The prefill, with the keys of every layer captured.
    pub prefill_ms: f64,
    /// The part of `prefill_ms` spent copying the captured keys: all that capturing adds
    /// to a prefill.
    pub capture_ms: f64,
    /// Turning the captured keys into a validated [`KeySnapshot`].
    pub snapshot_ms: f64,
    /// [`lem_score::score`].
    pub score_ms: f64,
}

impl ScoreTimings {
    /// What scoring adds to a plain prefill: `capture_ms + snapshot_ms + score_ms`.
    pub fn overhead_ms(&self) -> f64 {
        self.capture_ms + self.snapshot_ms + self.score_ms
    }
}

/// The result of [`score_prompt`].
#[derive(Debug, Clone)]
pub struct PromptScore {
    /// The post-rotary keys of every layer, with the model identity and token ids.
    pub snapshot: KeySnapshot,
    /// The metrics.
    pub scores: Scores,
    /// Where the time went.
    pub timings: ScoreTimings,
}

/// The snapshot metadata for `ids` run through the model `identity` describes.
pub fn snapshot_meta(identity: &ModelIdentity, ids: &[u32]) -> SnapshotMeta {
    SnapshotMeta {
        model_fingerprint: identity.fingerprint.clone(),
        model_name: identity.file.clone(),
        token_ids: ids.to_vec(),
        post_rotary: true,
    }
}

fn check_fits(engine: &Engine, ids: &[u32]) -> Result<(), InspectError> {
    if ids.is_empty() {
        return Err(InspectError::EmptyPrompt);
    }
    if ids.len() > engine.ctx_size() {
        return Err(lem_engine::EngineError::PromptTooLong { tokens: ids.len(), ctx: engine.ctx_size() }.into());
    }
    Ok(())
}

/// Prefills `ids` into a fresh cache with the post-rotary keys of every layer captured,
/// builds the key snapshot (spec §1) and scores it.
///
/// # Errors
/// An empty prompt, one longer than the engine's context, a failing forward pass.
pub fn score_prompt(engine: &Engine, ids: &[u32], identity: &ModelIdentity) -> Result<PromptScore, InspectError> {
    check_fits(engine, ids)?;
    let model = engine.model();
    let t0 = Instant::now();
    let mut cache = model.new_cache();
    let mut rec = Recorder::new(CaptureSpec::keys(model.config().n_layer), 0, ids.len());
    prefill(model, engine.threads(), &mut cache, &mut Workspace::default(), ids, Some(&mut rec))?;
    let capture_ms = rec.busy().as_secs_f64() * 1e3;
    let captures = rec.finish()?;
    let t1 = Instant::now();
    let snapshot = captures.into_key_snapshot(snapshot_meta(identity, ids))?;
    let t2 = Instant::now();
    let scores = score(&snapshot);
    let t3 = Instant::now();
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    let timings = ScoreTimings { prefill_ms: ms(t0, t1), capture_ms, snapshot_ms: ms(t1, t2), score_ms: ms(t2, t3) };
    Ok(PromptScore { snapshot, scores, timings })
}

/// The same prefill as [`score_prompt`] without any observer, in milliseconds: the
/// baseline that scoring's overhead is measured against.
///
/// # Errors
/// As [`score_prompt`].
pub fn plain_prefill_ms(engine: &Engine, ids: &[u32]) -> Result<f64, InspectError> {
    check_fits(engine, ids)?;
    let model = engine.model();
    let t0 = Instant::now();
    let mut cache = model.new_cache();
    prefill(model, engine.threads(), &mut cache, &mut Workspace::default(), ids, None)?;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}
