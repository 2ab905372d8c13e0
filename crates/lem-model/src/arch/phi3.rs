//! Phi-3 / Phi-3.5 (`phi3`): fused QKV and gate/up tensors (split at load), NeoX rotary
//! with LongRoPE factors (the config's short or long set), a declared sliding window.

use lem_kernels::ops::RopeStyle;

use super::decoder::{Packing, Recipe};
use crate::config::ModelConfig;

pub(crate) fn recipe(cfg: &mut ModelConfig) -> Recipe {
    Recipe { qkv: Packing::Fused, gate_up: Packing::Fused, ..Recipe::llama_like(cfg, RopeStyle::Neox) }.window_all(cfg)
}
