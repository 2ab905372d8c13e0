//! Teacher-forced evaluation: argmax and negative log-likelihood at every position.

use lem_model::LogitsRequest;
use serde::Serialize;

use crate::engine::Engine;
use crate::error::EngineError;

/// Per-position predictions over a token sequence (the shape `ref.py eval` prints).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// The evaluated ids.
    pub ids: Vec<u32>,
    /// `argmax[i]`: the most likely token after `ids[..=i]` (predicts `ids[i + 1]`).
    pub argmax: Vec<u32>,
    /// `nll[i] = -log p(ids[i + 1] | ids[..=i])`.
    pub nll: Vec<f64>,
    /// `exp(mean(nll))`.
    pub ppl: f64,
}

/// Runs `ids` through a fresh sequence, keeping every position's logits.
pub fn eval(engine: &Engine, ids: &[u32]) -> Result<EvalReport, EngineError> {
    if ids.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    let mut seq = engine.new_sequence();
    let n = ids.len();
    let mut argmax = Vec::with_capacity(n - 1);
    let mut nll = Vec::with_capacity(n - 1);
    seq.feed_each(engine, ids, LogitsRequest::All, &mut |pos, row| {
        if pos + 1 >= n {
            return;
        }
        argmax.push(crate::sampling::argmax(row));
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        nll.push(lse - row[ids[pos + 1] as usize] as f64);
    })?;
    let ppl = (nll.iter().sum::<f64>() / nll.len().max(1) as f64).exp();
    Ok(EvalReport { ids: ids.to_vec(), argmax, nll, ppl })
}
