//! Llama family (`llama`; Hugging Face `llama`, `mistral`, `mixtral`): Llama 1/2/3.x,
//! Mistral, SmolLM/SmolLM2, Mixtral. SwiGLU, pre-norms, adjacent-pair rotary (the
//! converter permutes Q/K); Llama 3.x frequency factors and a declared sliding window
//! (Mistral) come from the config; experts (Mixtral) where the source declares them,
//! with renormalised top-k weights (llama.cpp and transformers always renormalise).

use lem_kernels::ops::RopeStyle;

use super::decoder::Recipe;
use crate::config::ModelConfig;

pub(crate) fn recipe(cfg: &mut ModelConfig) -> Recipe {
    Recipe::llama_like(cfg, RopeStyle::Interleaved).window_all(cfg).routed_where_declared(cfg, true)
}
