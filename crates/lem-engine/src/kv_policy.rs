//! Per-layer KV policy: which full-attention layers a sink-window bound leaves full.
//!
//! `--kv-full-layers 0,9,19` names them; `--kv-full-layers auto[:N]` measures them. The
//! measurement runs the model with full attention on a calibration text and, with lem's
//! own attention capture, finds how much attention mass each layer puts on positions the
//! bound would evict (past the sinks and outside the window). The text is a retrieval
//! task (a [`crate::niah`] haystack from a seed of its own, [`CALIBRATION_SEED`], with the
//! question and the answer appended), as DuoAttention calibrates on passkey retrieval:
//! the layers that must reach far are those that look back at the needle when the answer
//! is due. The mass on the needle's tokens is averaged over the last [`ANSWER_QUERIES`]
//! positions (the question and answer) and taken at the head that puts the most there
//! (one retrieval head is enough to need the whole cache). The `N` layers with the most
//! such mass stay full. (All attention mass beyond the window is also reported, but it
//! picks the wrong layers: early layers attend broadly, spreading mass over everything,
//! and keeping them full recalled nothing on SmolLM2.)

use std::ops::Range;

use lem_kv::{KvBound, LayerKind, LayerSet};
use lem_model::{Capture, CaptureKind, Captured, Observer};
use lem_tokenizer::Bos;
use serde::Serialize;

use crate::Engine;
use crate::error::EngineError;
use crate::niah::{self, CaseSpec, Form, NeedleKind, Task};

/// Seed of the calibration haystack (not one `lem niah` uses by default).
pub const CALIBRATION_SEED: u64 = 0xCA1B;
/// Query positions at the end of the calibration text the mass is averaged over.
pub const ANSWER_QUERIES: usize = 32;

/// How far one layer's attention reaches beyond a bound.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LayerReach {
    /// Layer index.
    pub layer: usize,
    /// Attention mass beyond the bound at the head that reaches furthest (mean over the
    /// answer queries).
    pub max_head: f64,
    /// The same mass averaged over heads.
    pub mean_head: f64,
    /// Mass on the needle's tokens at the head that puts the most there (retrieval).
    pub needle: f64,
}

/// `--kv-full-layers` (`lem niah`'s `full=`): which full-attention layers a bound leaves
/// full. Indices are separated by commas or slashes (`0,9,19`, `0/9/19`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullLayers {
    /// These layers.
    Listed(LayerSet),
    /// Measured at load ([`bound_auto`]), keeping this many (default: [`default_keep`]).
    Auto(Option<usize>),
}

impl std::str::FromStr for FullLayers {
    type Err = String;

    fn from_str(s: &str) -> Result<FullLayers, String> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("auto") {
            return match rest.strip_prefix(':') {
                None if rest.is_empty() => Ok(FullLayers::Auto(None)),
                Some(n) => match n.parse::<usize>() {
                    Ok(n) if n > 0 => Ok(FullLayers::Auto(Some(n))),
                    _ => Err(format!("auto:{n}: expected a number of layers of at least 1")),
                },
                None => Err(format!("{s:?}: expected auto or auto:N")),
            };
        }
        let layers = s
            .split([',', '/'])
            .map(|p| p.trim().parse::<usize>().map_err(|_| format!("{p:?} is not a layer index (e.g. 0,9,19 or auto)")))
            .collect::<Result<Vec<_>, _>>()?;
        LayerSet::of(layers)
            .map(FullLayers::Listed)
            .ok_or_else(|| format!("layer indices must be below {}", LayerSet::CAPACITY))
    }
}

/// What `auto` chose.
#[derive(Debug, Clone, Serialize)]
pub struct AutoChoice {
    /// The layers kept full, ascending.
    pub full_layers: Vec<usize>,
    /// Every full-attention layer's reach, in layer order.
    pub reach: Vec<LayerReach>,
    /// Tokens of the calibration text.
    pub calibration_tokens: usize,
}

/// The default number of layers `auto` keeps full: a fifth of the full-attention layers,
/// at least one (measured: on SmolLM2 a tenth loses every needle, a fifth keeps them;
/// docs/bounded-memory.md).
pub fn default_keep(engine: &Engine) -> usize {
    let full = engine.model().cache_layout().layers.iter().filter(|s| s.kind == LayerKind::Full).count();
    full.div_ceil(5).max(1).min(full)
}

/// The calibration text for `bound`: a completion-form haystack of about
/// `max(4 * window, 1024)` tokens (capped at the context) with the needle a quarter of the
/// way in, then its answer; its token ids and the needle's token positions.
pub fn calibration(engine: &Engine, bound: KvBound) -> Result<(Vec<u32>, Range<u32>), EngineError> {
    let length = (4 * bound.window as usize).max(1024).min(engine.ctx_size().saturating_sub(16));
    let tok = engine.tokenizer();
    let count = |s: &str| tok.encode(s, Bos::Omit).map_or(0, |t| t.len());
    let overhead = niah::overhead(engine, Form::Completion, NeedleKind::Number, Task::Single)?;
    let spec = CaseSpec { length, depth: 25, seed: CALIBRATION_SEED, kind: NeedleKind::Number, task: Task::Single };
    let case = niah::build_case(&spec, overhead, &count).map_err(|e| EngineError::KvPolicy(e.to_string()))?;
    let (text, spans) = niah::prompt(engine, &case, Form::Completion)?;
    let needle = spans.first().cloned().unwrap_or_default();
    let before = |at: usize| tok.encode(&text[..at], Bos::ModelDefault).map(|t| t.len() as u32);
    let span = before(needle.start)?..before(needle.end)?;
    Ok((tok.encode(&format!("{text} {}.", case.asked().value), Bos::ModelDefault)?, span))
}

/// Sums, per layer and head, the attention mass the last queries put beyond `bound`.
struct Reach {
    bound: KvBound,
    /// First query position counted.
    from: u32,
    full: Vec<bool>,
    /// Token positions of the needle.
    needle: Range<u32>,
    /// `[layer][head]` summed mass beyond the bound, and on the needle.
    mass: Vec<Vec<f64>>,
    on_needle: Vec<Vec<f64>>,
    queries: Vec<usize>,
}

impl Observer for Reach {
    fn wants(&self, layer: usize) -> Capture {
        if self.full[layer] { Capture::ATTENTION } else { Capture::NONE }
    }

    fn on_capture(&mut self, c: Captured<'_>) {
        if c.kind != CaptureKind::Attention {
            return;
        }
        let evicted = |q: u32, p: u32| p <= q && p >= self.bound.sinks && q - p >= self.bound.window;
        let (mass, on_needle) = (&mut self.mass[c.layer], &mut self.on_needle[c.layer]);
        mass.resize(c.heads, 0.0);
        on_needle.resize(c.heads, 0.0);
        for (t, &q) in c.positions.iter().enumerate().filter(|(_, q)| **q >= self.from) {
            self.queries[c.layer] += 1;
            for h in 0..c.heads {
                let row = &c.data[(t * c.heads + h) * c.dim..][..c.dim];
                for (&w, &p) in row.iter().zip(c.key_positions).filter(|(_, p)| evicted(q, **p)) {
                    mass[h] += w as f64;
                    if self.needle.contains(&p) {
                        on_needle[h] += w as f64;
                    }
                }
            }
        }
    }
}

/// Measures every full-attention layer's reach beyond `bound` on `ids`, whose needle sits
/// at `needle` (the engine's layout must not be bounded yet).
pub fn measure(
    engine: &Engine,
    ids: &[u32],
    needle: Range<u32>,
    bound: KvBound,
) -> Result<Vec<LayerReach>, EngineError> {
    let layout = engine.model().cache_layout();
    let full: Vec<bool> = layout.layers.iter().map(|s| s.kind == LayerKind::Full).collect();
    let n = full.len();
    let from = ids.len().saturating_sub(ANSWER_QUERIES) as u32;
    let mut obs = Reach {
        bound,
        from,
        full: full.clone(),
        needle,
        mass: vec![Vec::new(); n],
        on_needle: vec![Vec::new(); n],
        queries: vec![0; n],
    };
    let mut seq = engine.new_sequence();
    seq.feed_observed(engine, ids, Some(&mut obs))?;
    Ok((0..n)
        .filter(|&l| full[l])
        .map(|l| {
            let q = obs.queries[l].max(1) as f64;
            let per_head: Vec<f64> = obs.mass[l].iter().map(|m| m / q).collect();
            let mean_head = per_head.iter().sum::<f64>() / per_head.len().max(1) as f64;
            let needle = obs.on_needle[l].iter().map(|m| m / q).fold(0.0, f64::max);
            LayerReach { layer: l, max_head: per_head.iter().copied().fold(0.0, f64::max), mean_head, needle }
        })
        .collect())
}

/// The `keep` layers of `reach` that put the most attention on the needle (by
/// [`LayerReach::needle`]; ties to the lower layer), ascending.
pub fn choose(reach: &[LayerReach], keep: usize) -> Vec<usize> {
    let mut order: Vec<&LayerReach> = reach.iter().collect();
    order.sort_by(|a, b| b.needle.total_cmp(&a.needle).then(a.layer.cmp(&b.layer)));
    let mut chosen: Vec<usize> = order.iter().take(keep).map(|r| r.layer).collect();
    chosen.sort_unstable();
    chosen
}

/// `--kv-full-layers auto[:keep]`: measures the reach of the (still unbounded) engine's
/// full-attention layers beyond `bound`, keeps the `keep` that retrieve the most full
/// ([`choose`]) and bounds the rest ([`Engine::bound_kv`]). `bound.keep_full` is replaced.
pub fn bound_auto(engine: &mut Engine, bound: KvBound, keep: usize) -> Result<AutoChoice, EngineError> {
    if engine.model().cache_layout().layers.iter().any(|s| matches!(s.kind, LayerKind::SinkWindow { .. })) {
        return Err(EngineError::KvPolicy("auto full layers need an unbounded cache to measure".into()));
    }
    let (ids, needle) = calibration(engine, bound)?;
    let reach = measure(engine, &ids, needle, bound)?;
    let full_layers = choose(&reach, keep);
    let keep_full = LayerSet::of(full_layers.iter().copied())
        .ok_or_else(|| EngineError::KvPolicy(format!("more than {} layers", LayerSet::CAPACITY)))?;
    engine.bound_kv(KvBound { keep_full, ..bound })?;
    Ok(AutoChoice { full_layers, reach, calibration_tokens: ids.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_layers_parse_lists_and_auto() {
        let listed = |v: &[usize]| FullLayers::Listed(LayerSet::of(v.iter().copied()).unwrap());
        assert_eq!("0,9,19".parse::<FullLayers>(), Ok(listed(&[0, 9, 19])));
        assert_eq!(" 19/0 / 9 ".parse::<FullLayers>(), Ok(listed(&[0, 9, 19])));
        assert_eq!("auto".parse::<FullLayers>(), Ok(FullLayers::Auto(None)));
        assert_eq!("auto:4".parse::<FullLayers>(), Ok(FullLayers::Auto(Some(4))));
        for bad in ["auto:0", "auto:x", "autox", "1,x", "", "300"] {
            assert!(bad.parse::<FullLayers>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn choose_keeps_the_layers_with_most_needle_mass() {
        let reach = |layer, needle| LayerReach { layer, max_head: 0.5, mean_head: 0.1, needle };
        let r = [reach(0, 0.01), reach(1, 0.30), reach(2, 0.02), reach(3, 0.30), reach(4, 0.25)];
        assert_eq!(choose(&r, 1), vec![1], "ties go to the lower layer");
        assert_eq!(choose(&r, 3), vec![1, 3, 4]);
        assert_eq!(choose(&r, 9), vec![0, 1, 2, 3, 4]);
    }
}
