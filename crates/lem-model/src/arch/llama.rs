//! Llama family (`llama`; Hugging Face `llama`, `mistral`): Llama 1/2/3.x, Mistral,
//! SmolLM/SmolLM2. SwiGLU, pre-norms, adjacent-pair rotary (the converter permutes Q/K);
//! Llama 3.x frequency factors and a declared sliding window (Mistral) come from the
//! config.

use lem_kernels::ops::RopeStyle;

use super::decoder::Recipe;
use crate::config::ModelConfig;

pub(crate) fn recipe(cfg: &mut ModelConfig) -> Recipe {
    Recipe::llama_like(cfg, RopeStyle::Interleaved).window_all(cfg)
}
