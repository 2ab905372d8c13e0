//! Gemma 3 (`gemma3`; Hugging Face `gemma3_text`): Gemma 2's block without soft-capped
//! attention but with per-head Q/K norms; five sliding-window layers for every global one
//! (`i % 6 == 5` is global). Local layers use a rotary base of 10,000 without scaling
//! (not stored in GGUF files); global layers use the config's base and scaling.

use lem_kernels::ops::{Rope, RopeStyle};
use lem_kv::LayerKind;

use super::decoder::{LayerRope, Norms, Recipe};
use super::gemma2::query_scale;
use crate::config::ModelConfig;
use crate::layers::Activation;

/// Rotary base of Gemma 3's local layers (not stored in GGUF files).
const LOCAL_ROPE_BASE: f32 = 10_000.0;
/// One global layer in every this many (not stored in GGUF files).
const SWA_PATTERN: usize = 6;
/// Window when the source states none.
const DEFAULT_WINDOW: u32 = 1 << 24;

pub(crate) fn recipe(cfg: &mut ModelConfig) -> Recipe {
    let window = cfg.sliding_window.unwrap_or(DEFAULT_WINDOW);
    let local = Rope::new(LOCAL_ROPE_BASE, cfg.rope.n_rot, RopeStyle::Neox);
    let mut r = Recipe {
        activation: Activation::GeluTanh,
        embed_scaled: true,
        norms: Norms::PreAndPost,
        attn_scale: query_scale(cfg, 62),
        ..Recipe::llama_like(cfg, RopeStyle::Neox)
    };
    for (i, layer) in r.layers.iter_mut().enumerate() {
        if i % SWA_PATTERN < SWA_PATTERN - 1 {
            layer.kind = LayerKind::SlidingWindow { window };
            layer.rope = LayerRope::Own(local);
        }
    }
    r
}
