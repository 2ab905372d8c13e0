//! Qwen 2 MoE (`qwen2moe`; Hugging Face `qwen2_moe`): Qwen 2's attention (Q/K/V biases,
//! NeoX rotary) with every layer routed: softmax router, top-k experts of
//! `moe_intermediate_size`, plus a shared expert of `shared_expert_intermediate_size`
//! that every token runs, scaled by its own sigmoid gate (`shared_expert_gate`). The
//! top-k weights are renormalised only when the config says `norm_topk_prob` (GGUF
//! files never say; llama.cpp never renormalises for this architecture).

use lem_kernels::ops::RopeStyle;

use super::decoder::Recipe;
use crate::config::ModelConfig;

pub(crate) fn recipe(cfg: &mut ModelConfig) -> Recipe {
    let norm_topk = cfg.moe.and_then(|m| m.norm_topk).unwrap_or(false);
    let shared = cfg.moe.map(|m| m.n_ff_shexp.unwrap_or(cfg.n_ff));
    Recipe::llama_like(cfg, RopeStyle::Neox).routed_where_declared(cfg, norm_topk).map_routing(|r| r.shared_ff = shared)
}
