//! Qwen 3 MoE (`qwen3moe`; Hugging Face `qwen3_moe`): Qwen 3's attention (per-head Q/K
//! norms, NeoX rotary) with every layer's feed-forward block routed: softmax router,
//! top-k experts of `moe_intermediate_size`. The top-k weights are renormalised as the
//! config's `norm_topk_prob` says; when the source says nothing (GGUF files never do),
//! as llama.cpp always does.

use lem_kernels::ops::RopeStyle;

use super::decoder::Recipe;
use crate::config::ModelConfig;

pub(crate) fn recipe(cfg: &mut ModelConfig) -> Recipe {
    let norm_topk = cfg.moe.and_then(|m| m.norm_topk).unwrap_or(true);
    Recipe::llama_like(cfg, RopeStyle::Neox).routed_where_declared(cfg, norm_topk)
}
