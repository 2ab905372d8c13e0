//! The speculative-decoding flags (`--draft`, `--draft-max`, `--draft-min`) shared by
//! `generate`, `chat`, `serve` and `bench`.

use anyhow::Context;
use lem_engine::{DraftConfig, DraftMethod, DraftModel, Engine};

use crate::common::resolve_model;

/// Speculative decoding: draft several tokens, verify them in one forward pass. The
/// output is exactly plain decoding's; only the number of forward passes changes.
#[derive(Debug, Clone, clap::Args)]
pub struct DraftArgs {
    /// The drafter: `ngram` (prompt lookup: what followed the longest recent n-gram),
    /// `early-exit[:L]` (the model's own first L layers; default three quarters), or a
    /// draft model (GGUF file, Hugging Face directory or packaged alias) with the same
    /// tokenizer.
    #[arg(long, value_name = "ngram|early-exit[:L]|MODEL", value_parser = parse_spec)]
    pub draft: Option<String>,
    /// Most tokens per draft.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub draft_max: u16,
    /// Fewest tokens per draft.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub draft_min: u16,
    /// Draft at every step, even while drafts are being rejected (by default drafting
    /// pauses while the measured acceptance says it does not pay).
    #[arg(long)]
    pub draft_always: bool,
}

impl DraftArgs {
    /// The speculation settings for `engine`, or `None` without `--draft` (a draft model
    /// is loaded here, and refused when its tokenizer is not the engine's).
    pub fn config(&self, engine: &Engine) -> anyhow::Result<Option<DraftConfig>> {
        let Some(spec) = self.draft.as_deref() else {
            return Ok(None);
        };
        let method = parse_method(spec, engine)?;
        let (min, max) = (usize::from(self.draft_min), usize::from(self.draft_max));
        anyhow::ensure!(min <= max, "--draft-min {min} is larger than --draft-max {max}");
        Ok(Some(DraftConfig { method, min_tokens: min, max_tokens: max, adaptive: !self.draft_always }))
    }
}

/// The default early exit: three quarters of the layers (at least one, and one short
/// of all). Earlier exits are cheaper but are almost never right on models not trained
/// for it (docs/speculative.md: SmolLM2 accepts 0% of drafts from layer 7 of 30, 32%
/// from layer 22).
pub fn default_exit_layers(engine: &Engine) -> usize {
    let n = engine.model().n_layers();
    (3 * n / 4).clamp(1, n.saturating_sub(1).max(1))
}

/// Checks a `--draft` value without loading anything, so that a typo is a usage error
/// (exit 2) naming the choices: `ngram`, `early-exit`, `early-exit:L`, an existing file
/// or directory, or a packaged model alias.
fn parse_spec(spec: &str) -> Result<String, String> {
    let layers_ok = |l: &str| l.parse::<usize>().is_ok_and(|l| l > 0);
    let valid = spec == "ngram"
        || spec == "early-exit"
        || spec.strip_prefix("early-exit:").is_some_and(layers_ok)
        || (!spec.is_empty() && std::path::Path::new(spec).exists())
        || lem_hub::find(spec).is_some();
    if valid {
        return Ok(spec.to_owned());
    }
    let aliases: Vec<&str> = lem_hub::registry().iter().map(|m| m.alias).collect();
    Err(format!(
        "expected ngram, early-exit, early-exit:L (L a number of layers), a GGUF file or model directory, or a packaged model ({})",
        aliases.join(", ")
    ))
}

fn parse_method(spec: &str, engine: &Engine) -> anyhow::Result<DraftMethod> {
    if spec == "ngram" {
        return Ok(DraftMethod::NGram { min_n: 1, max_n: 4 });
    }
    if spec == "early-exit" {
        return Ok(DraftMethod::EarlyExit { layers: default_exit_layers(engine) });
    }
    if let Some(l) = spec.strip_prefix("early-exit:") {
        let layers: usize = l.parse().with_context(|| format!("--draft {spec}: {l:?} is not a number of layers"))?;
        let n = engine.model().n_layers();
        anyhow::ensure!(
            (1..n).contains(&layers),
            "--draft {spec}: an early exit runs 1 to {} of the model's {n} layers",
            n - 1
        );
        return Ok(DraftMethod::EarlyExit { layers });
    }
    let path = resolve_model(spec).with_context(|| format!("--draft {spec}"))?;
    Ok(DraftMethod::Model(DraftModel::load(&path, engine)?))
}
