//! Qwen 2 / 2.5 (`qwen2`): Llama-like with Q/K/V biases (loaded where stored) and NeoX
//! rotary; YaRN scaling where the config declares it. Qwen 2 declares a sliding window it
//! does not use, so every layer is full attention, as in llama.cpp.

use lem_kernels::ops::RopeStyle;

use super::decoder::Recipe;
use crate::config::ModelConfig;

pub(crate) fn recipe(cfg: &mut ModelConfig) -> Recipe {
    Recipe::llama_like(cfg, RopeStyle::Neox)
}
