//! The generation probe: JSON lines describing a generation from inside, written while it
//! runs (`lem generate --probe FILE.jsonl`).
//!
//! Events, one JSON object per line, in order:
//!
//! 1. `{"event": "prefill", ...}` once, after the prompt is fed: the model identity,
//!    `n_tokens`, `first_position`, `kv_bytes`, `prefill_ms` (with the keys captured),
//!    `score_ms`, `regime` and every metric of the attention score of the prompt (the
//!    fields of [`lem_score::Scores`], flattened), or `"error"` when it could not be
//!    scored.
//! 2. `{"event": "token", ...}` per generated token: `index` (0-based), `id`, `piece`
//!    (the text the stream decoder produced for it, possibly empty), `position`,
//!    `kv_bytes` (KV state held after the step) and `key_norms`: for each layer, the L2
//!    norm of the token's post-rotary key (all KV heads together, as cached), or `null`
//!    for the last token, which generation ends on without feeding it to the model.
//! 3. `{"event": "finish", ...}` from [`Probe::finish`]: `finish_reason`, `n_generated`,
//!    `timings`.

use std::io::{self, Write};
use std::time::Instant;

use lem_engine::{GenerateHook, Generation, Sequence, TokenStep};
use lem_model::{Capture, Captured, Observer};
use lem_score::score;
use serde_json::{Value, json};

use crate::scoring::snapshot_meta;
use crate::{CaptureSpec, ModelIdentity, Recorder, scores_json};

/// What the probe's observer is doing.
#[derive(Debug)]
enum Phase {
    /// Collecting the prompt's keys.
    Prefill(Recorder),
    /// Measuring each fed token's keys.
    Decode,
}

/// A [`GenerateHook`] that writes probe events (see the module docs) to `out`.
///
/// Write errors do not stop the generation; the first one is returned by
/// [`Probe::finish`].
#[derive(Debug)]
pub struct Probe<W: Write> {
    out: W,
    identity: ModelIdentity,
    phase: Phase,
    first: u32,
    norms: Vec<Option<f64>>,
    started: Option<Instant>,
    error: Option<io::Error>,
}

impl<W: Write> Probe<W> {
    /// A probe for a generation whose prompt of `prompt_len` tokens starts at position
    /// `first` (the sequence's length before the call).
    pub fn new(out: W, identity: ModelIdentity, first: u32, prompt_len: usize) -> Probe<W> {
        let n = identity.n_layers;
        Probe {
            out,
            phase: Phase::Prefill(Recorder::new(CaptureSpec::keys(n), first, prompt_len)),
            identity,
            first,
            norms: vec![None; n],
            started: None,
            error: None,
        }
    }

    fn write(&mut self, v: &Value) {
        if self.error.is_none()
            && let Err(e) = serde_json::to_writer(&mut self.out, v).map_err(io::Error::from).and_then(|()| {
                self.out.write_all(b"\n")?;
                self.out.flush()
            })
        {
            self.error = Some(e);
        }
    }

    /// Writes the `finish` event and returns the writer.
    ///
    /// # Errors
    /// The first error any write of this probe met.
    pub fn finish(mut self, g: &Generation) -> io::Result<W> {
        self.write(&json!({
            "event": "finish",
            "finish_reason": g.finish_reason,
            "n_generated": g.ids.len(),
            "timings": g.timings,
        }));
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.out),
        }
    }
}

impl<W: Write> Observer for Probe<W> {
    fn wants(&self, _layer: usize) -> Capture {
        Capture::KEYS
    }

    fn on_capture(&mut self, c: Captured<'_>) {
        match &mut self.phase {
            Phase::Prefill(rec) => rec.on_capture(c),
            Phase::Decode => {
                let row = c.heads * c.dim;
                if let (Some(slot), Some(last)) = (self.norms.get_mut(c.layer), c.data.rchunks_exact(row).next()) {
                    *slot = Some(last.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt());
                }
            }
        }
    }
}

impl<W: Write> GenerateHook for Probe<W> {
    fn observer(&mut self) -> Option<&mut dyn Observer> {
        self.started.get_or_insert_with(Instant::now);
        Some(self)
    }

    fn on_prefill(&mut self, seq: &Sequence, prompt_ids: &[u32]) {
        let prefill_ms = self.started.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
        let Phase::Prefill(rec) = std::mem::replace(&mut self.phase, Phase::Decode) else { return };
        let t = Instant::now();
        let scored = rec
            .finish()
            .and_then(|c| c.into_key_snapshot(snapshot_meta(&self.identity, prompt_ids)))
            .map(|s| score(&s));
        let score_ms = t.elapsed().as_secs_f64() * 1e3;
        let mut ev = json!({
            "event": "prefill",
            "model": self.identity,
            "n_tokens": prompt_ids.len(),
            "first_position": self.first,
            "kv_bytes": seq.kv_bytes(),
            "prefill_ms": prefill_ms,
            "score_ms": score_ms,
        });
        if let Value::Object(m) = &mut ev {
            match scored {
                Ok(s) => m.extend(scores_json(&s)),
                Err(e) => {
                    m.insert("error".into(), Value::String(e.to_string()));
                }
            }
        }
        self.write(&ev);
    }

    fn on_token(&mut self, step: &TokenStep<'_>) {
        let norms = if step.fed { json!(self.norms) } else { Value::Null };
        self.norms.iter_mut().for_each(|n| *n = None);
        self.write(&json!({
            "event": "token",
            "index": step.index,
            "id": step.id,
            "piece": step.piece,
            "position": step.position,
            "kv_bytes": step.kv_bytes,
            "key_norms": norms,
        }));
    }
}
