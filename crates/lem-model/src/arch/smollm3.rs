//! SmolLM3 (`smollm3`): Llama-like, but every fourth layer (`(i + 1) % 4 == 0`) has no
//! rotary embedding (llama.cpp's `n_no_rope_layer_step`, Hugging Face's
//! `no_rope_layer_interval`).

use lem_kernels::ops::RopeStyle;

use super::decoder::{LayerRope, Recipe};
use crate::config::ModelConfig;

/// One layer in every this many has no rotary embedding.
const NO_ROPE_STEP: usize = 4;

pub(crate) fn recipe(cfg: &mut ModelConfig) -> Recipe {
    let mut r = Recipe::llama_like(cfg, RopeStyle::Interleaved);
    for (i, layer) in r.layers.iter_mut().enumerate() {
        if (i + 1) % NO_ROPE_STEP == 0 {
            layer.rope = LayerRope::None;
        }
    }
    r
}
