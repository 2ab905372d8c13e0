//! Gemma 2 (`gemma2`): GeGLU, norms before and after both sub-blocks, embeddings scaled
//! by sqrt(n_embd), attention and final logit soft-capping, sliding-window attention on
//! even layers (`i % 2 == 0`) and full attention on odd ones, NeoX rotary.

use lem_kernels::ops::RopeStyle;
use lem_kv::LayerKind;

use super::decoder::{Norms, Recipe};
use crate::config::ModelConfig;
use crate::layers::Activation;

/// Window when the source states none (Gemma 2's published value).
const DEFAULT_WINDOW: u32 = 4096;

/// Query scale: `query_pre_attn_scalar^-1/2` when stated; otherwise llama.cpp's rule
/// (`n_embd / n_head` for the 46-layer 27B model, the head size for the others).
pub(crate) fn query_scale(cfg: &ModelConfig, big_layers: usize) -> f32 {
    let scalar = cfg.query_pre_attn_scalar.unwrap_or(if cfg.n_layer == big_layers {
        (cfg.n_embd / cfg.n_head) as f32
    } else {
        cfg.head_dim as f32
    });
    1.0 / scalar.sqrt()
}

pub(crate) fn recipe(cfg: &mut ModelConfig) -> Recipe {
    let window = cfg.sliding_window.unwrap_or(DEFAULT_WINDOW);
    let mut r = Recipe {
        activation: Activation::GeluTanh,
        embed_scaled: true,
        norms: Norms::PreAndPost,
        attn_scale: query_scale(cfg, 46),
        ..Recipe::llama_like(cfg, RopeStyle::Neox)
    };
    for (i, layer) in r.layers.iter_mut().enumerate() {
        if i % 2 == 0 {
            layer.kind = LayerKind::SlidingWindow { window };
        }
    }
    r
}
