//! Qwen 3 (`qwen3`): Llama-like with per-head Q/K RMSNorm (loaded where stored), an
//! explicit head size and NeoX rotary.

use lem_kernels::ops::RopeStyle;

use super::decoder::Recipe;
use crate::config::ModelConfig;

pub(crate) fn recipe(cfg: &mut ModelConfig) -> Recipe {
    Recipe::llama_like(cfg, RopeStyle::Neox)
}
