//! gpt-oss (`gpt-oss`; Hugging Face `gpt_oss`): biases on Q/K/V/O, learned per-head
//! attention sinks (loaded where stored), sliding-window attention on even layers
//! (`i % 2 == 0`, llama.cpp's pattern 2 and transformers' `layer_types`) and full on odd
//! ones, YaRN NeoX rotary, and every layer routed: the router (with bias) picks the top-k
//! logits and softmaxes over those, experts (with biases) run the clamped SwiGLU
//! ([`Activation::SwigluOai`]). The pre-FFN norm is stored as `post_attention_norm`.

use lem_kernels::ops::RopeStyle;
use lem_kv::LayerKind;

use super::decoder::Recipe;
use crate::config::ModelConfig;
use crate::layers::{Activation, Gating};
use crate::names::Role;

/// Window when the source states none (gpt-oss's published value).
const DEFAULT_WINDOW: u32 = 128;

pub(crate) fn recipe(cfg: &mut ModelConfig) -> Recipe {
    let window = cfg.sliding_window.unwrap_or(DEFAULT_WINDOW);
    let mut r = Recipe {
        activation: Activation::SwigluOai,
        ffn_norm: Role::PostAttnNorm,
        ..Recipe::llama_like(cfg, RopeStyle::Neox)
    }
    .routed_where_declared(cfg, false)
    .map_routing(|r| r.gating = Gating::SoftmaxSelected);
    for (i, layer) in r.layers.iter_mut().enumerate() {
        if i % 2 == 0 {
            layer.kind = LayerKind::SlidingWindow { window };
        }
    }
    r
}
