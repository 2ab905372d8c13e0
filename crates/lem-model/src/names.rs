//! Tensor names: every role a decoder's tensors play, with its GGUF name and its Hugging
//! Face name side by side. This is the only place tensor names are spelled.
//!
//! Hugging Face checkpoints name the same role differently in two families: Llama-style
//! models call the norm before the feed-forward block `post_attention_layernorm`, while
//! Gemma 2/3 use that name for the norm *after* attention and call the pre-FFN norm
//! `pre_feedforward_layernorm`. [`HfNaming`] says which table applies.

/// What a tensor is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Token embedding table `[vocab, n_embd]`.
    TokenEmbd,
    /// Final norm before the output projection.
    OutputNorm,
    /// Output projection `[vocab, n_embd]` (absent when tied to the embedding).
    Output,
    /// Llama 3 rotary frequency factors (GGUF only; Hugging Face computes them from
    /// `rope_scaling`).
    RopeFreqs,
    /// LongRoPE factors for contexts beyond the original (GGUF only).
    RopeFactorsLong,
    /// LongRoPE factors within the original context (GGUF only).
    RopeFactorsShort,
    /// Norm before attention.
    AttnNorm,
    /// Query projection.
    AttnQ,
    /// Key projection.
    AttnK,
    /// Value projection.
    AttnV,
    /// Fused query/key/value projection (Phi-3), split at load.
    AttnQkv,
    /// Attention output projection.
    AttnOut,
    /// Per-head query RMSNorm (Qwen 3, Gemma 3).
    AttnQNorm,
    /// Per-head key RMSNorm.
    AttnKNorm,
    /// Norm of the attention output before the residual add (Gemma 2/3).
    PostAttnNorm,
    /// Norm before the feed-forward block.
    FfnNorm,
    /// Feed-forward gate projection.
    FfnGate,
    /// Feed-forward up projection.
    FfnUp,
    /// Fused gate/up projection (Phi-3: gate rows first), split at load.
    FfnGateUp,
    /// Feed-forward down projection.
    FfnDown,
    /// Norm of the feed-forward output before the residual add (Gemma 2/3).
    PostFfnNorm,
    /// Router of a routed feed-forward block `[n_expert, n_embd]`.
    FfnGateInp,
    /// Experts' gate projections: GGUF one `[n_expert, n_ff, n_embd]` tensor, Hugging
    /// Face one `[n_ff, n_embd]` tensor per expert.
    FfnGateExps,
    /// Experts' up projections (laid out as [`Role::FfnGateExps`]).
    FfnUpExps,
    /// Experts' down projections: GGUF `[n_expert, n_embd, n_ff]`, Hugging Face
    /// `[n_embd, n_ff]` per expert.
    FfnDownExps,
    /// Sigmoid gate of the shared expert `[1, n_embd]` (Qwen 2 MoE).
    FfnGateInpShexp,
    /// Shared expert's gate projection.
    FfnGateShexp,
    /// Shared expert's up projection.
    FfnUpShexp,
    /// Shared expert's down projection.
    FfnDownShexp,
    /// Learned per-head attention sink logits `[n_head]` (gpt-oss).
    AttnSinks,
    /// Per-layer token embeddings, `[vocab, n_layer * n_embd_per_layer]` (Gemma 4).
    PerLayerTokenEmbd,
    /// Projection of the embedded token to every layer's per-layer input (Gemma 4).
    PerLayerModelProj,
    /// Norm of each layer's slice of that projection (Gemma 4).
    PerLayerProjNorm,
    /// Gate of the per-layer input, `[n_embd_per_layer, n_embd]` (Gemma 4).
    PerLayerInpGate,
    /// Projection of the gated per-layer input back to the residual (Gemma 4).
    PerLayerProj,
    /// Norm of that projection before it is added (Gemma 4).
    PerLayerPostNorm,
    /// One scalar multiplying the layer's output residual (Gemma 4).
    LayerOutScale,
    /// Per-channel scale of the router's input (Gemma 4).
    FfnGateInpScale,
    /// Norm before the routed experts beside a dense MLP (Gemma 4).
    FfnPreNorm2,
    /// Norm after the dense MLP of a dense-and-routed block (Gemma 4).
    FfnPostNorm1,
    /// Norm after the routed experts of a dense-and-routed block (Gemma 4).
    FfnPostNorm2,
    /// Per-expert multiplier on each expert's output, `[n_expert]` (Gemma 4).
    FfnDownExpsScale,
}

/// Weight or bias of a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// `.weight`.
    Weight,
    /// `.bias`.
    Bias,
}

/// A tensor a model asks its weights source for: a role, the layer for per-layer roles,
/// the expert for one expert of an expert role, and the part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TensorId {
    /// The role.
    pub role: Role,
    /// Block index for per-layer roles, `None` for global ones.
    pub layer: Option<usize>,
    /// Expert index of an expert role (`{e}` in a name): Hugging Face stores one tensor
    /// per expert; GGUF stores all experts in one 3-D tensor, whose name has no `{e}`.
    pub expert: Option<usize>,
    /// Weight or bias.
    pub part: Part,
}

impl TensorId {
    /// A global tensor's weight.
    pub fn global(role: Role) -> TensorId {
        TensorId { role, layer: None, expert: None, part: Part::Weight }
    }

    /// Layer `i`'s weight of `role`.
    pub fn layer(role: Role, i: usize) -> TensorId {
        TensorId { role, layer: Some(i), expert: None, part: Part::Weight }
    }

    /// Expert `e`'s part of layer `i`'s expert role.
    pub fn expert(role: Role, i: usize, e: usize) -> TensorId {
        TensorId { role, layer: Some(i), expert: Some(e), part: Part::Weight }
    }

    /// The bias beside this weight.
    pub fn bias(self) -> TensorId {
        TensorId { part: Part::Bias, ..self }
    }
}

/// Which Hugging Face naming a checkpoint follows (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfNaming {
    /// Llama, Mistral, Qwen, Phi, SmolLM.
    Llama,
    /// Gemma 2 and 3: pre and post norms around both sub-blocks.
    Gemma,
    /// Mixtral: the routed feed-forward block is `block_sparse_moe` with experts' `w1`
    /// (gate), `w2` (down), `w3` (up).
    Mixtral,
    /// gpt-oss: router `mlp.router`, experts stacked in `mlp.experts.gate_up_proj`
    /// (`[n_expert, n_embd, 2 n_ff]`, gate and up columns interleaved) and
    /// `mlp.experts.down_proj` (`[n_expert, n_ff, n_embd]`), biases `..._bias`, sinks
    /// `self_attn.sinks`; the pre-FFN norm is `post_attention_layernorm`, which lem reads
    /// as [`Role::PostAttnNorm`] as the GGUF conversion names it.
    GptOss,
}

/// `(role, GGUF name, Hugging Face name (Llama naming))`; `{i}` is the layer index, `{e}`
/// the expert index; an empty Hugging Face name means the role has no tensor there.
const TABLE: &[(Role, &str, &str)] = &[
    (Role::TokenEmbd, "token_embd", "model.embed_tokens"),
    (Role::OutputNorm, "output_norm", "model.norm"),
    (Role::Output, "output", "lm_head"),
    (Role::RopeFreqs, "rope_freqs", ""),
    (Role::RopeFactorsLong, "rope_factors_long", ""),
    (Role::RopeFactorsShort, "rope_factors_short", ""),
    (Role::AttnNorm, "blk.{i}.attn_norm", "model.layers.{i}.input_layernorm"),
    (Role::AttnQ, "blk.{i}.attn_q", "model.layers.{i}.self_attn.q_proj"),
    (Role::AttnK, "blk.{i}.attn_k", "model.layers.{i}.self_attn.k_proj"),
    (Role::AttnV, "blk.{i}.attn_v", "model.layers.{i}.self_attn.v_proj"),
    (Role::AttnQkv, "blk.{i}.attn_qkv", "model.layers.{i}.self_attn.qkv_proj"),
    (Role::AttnOut, "blk.{i}.attn_output", "model.layers.{i}.self_attn.o_proj"),
    (Role::AttnQNorm, "blk.{i}.attn_q_norm", "model.layers.{i}.self_attn.q_norm"),
    (Role::AttnKNorm, "blk.{i}.attn_k_norm", "model.layers.{i}.self_attn.k_norm"),
    (Role::PostAttnNorm, "blk.{i}.post_attention_norm", ""),
    (Role::FfnNorm, "blk.{i}.ffn_norm", "model.layers.{i}.post_attention_layernorm"),
    (Role::FfnGate, "blk.{i}.ffn_gate", "model.layers.{i}.mlp.gate_proj"),
    (Role::FfnUp, "blk.{i}.ffn_up", "model.layers.{i}.mlp.up_proj"),
    // llama.cpp's converter writes Phi-3's fused gate/up under the up projection's name.
    (Role::FfnGateUp, "blk.{i}.ffn_up", "model.layers.{i}.mlp.gate_up_proj"),
    (Role::FfnDown, "blk.{i}.ffn_down", "model.layers.{i}.mlp.down_proj"),
    (Role::PostFfnNorm, "blk.{i}.post_ffw_norm", ""),
    (Role::FfnGateInp, "blk.{i}.ffn_gate_inp", "model.layers.{i}.mlp.gate"),
    (Role::FfnGateExps, "blk.{i}.ffn_gate_exps", "model.layers.{i}.mlp.experts.{e}.gate_proj"),
    (Role::FfnUpExps, "blk.{i}.ffn_up_exps", "model.layers.{i}.mlp.experts.{e}.up_proj"),
    (Role::FfnDownExps, "blk.{i}.ffn_down_exps", "model.layers.{i}.mlp.experts.{e}.down_proj"),
    (Role::FfnGateInpShexp, "blk.{i}.ffn_gate_inp_shexp", "model.layers.{i}.mlp.shared_expert_gate"),
    (Role::FfnGateShexp, "blk.{i}.ffn_gate_shexp", "model.layers.{i}.mlp.shared_expert.gate_proj"),
    (Role::FfnUpShexp, "blk.{i}.ffn_up_shexp", "model.layers.{i}.mlp.shared_expert.up_proj"),
    (Role::FfnDownShexp, "blk.{i}.ffn_down_shexp", "model.layers.{i}.mlp.shared_expert.down_proj"),
    (Role::AttnSinks, "blk.{i}.attn_sinks", ""),
    (Role::PerLayerTokenEmbd, "per_layer_token_embd", ""),
    (Role::PerLayerModelProj, "per_layer_model_proj", ""),
    (Role::PerLayerProjNorm, "per_layer_proj_norm", ""),
    (Role::PerLayerInpGate, "blk.{i}.inp_gate", ""),
    (Role::PerLayerProj, "blk.{i}.proj", ""),
    (Role::PerLayerPostNorm, "blk.{i}.post_norm", ""),
    (Role::LayerOutScale, "blk.{i}.layer_output_scale", ""),
    (Role::FfnGateInpScale, "blk.{i}.ffn_gate_inp.scale{p}", ""),
    (Role::FfnPreNorm2, "blk.{i}.pre_ffw_norm_2", ""),
    (Role::FfnPostNorm1, "blk.{i}.post_ffw_norm_1", ""),
    (Role::FfnPostNorm2, "blk.{i}.post_ffw_norm_2", ""),
    (Role::FfnDownExpsScale, "blk.{i}.ffn_down_exps.scale{p}", ""),
];

/// Hugging Face names that differ under [`HfNaming::GptOss`]; `{p}` stands for the part
/// (nothing for the weight, `_bias` for the bias) where the name has no `.weight`.
const HF_GPT_OSS: &[(Role, &str)] = &[
    (Role::PostAttnNorm, "model.layers.{i}.post_attention_layernorm"),
    (Role::FfnGateInp, "model.layers.{i}.mlp.router"),
    (Role::FfnGateExps, "model.layers.{i}.mlp.experts.gate_up_proj{p}"),
    (Role::FfnUpExps, "model.layers.{i}.mlp.experts.gate_up_proj{p}"),
    (Role::FfnDownExps, "model.layers.{i}.mlp.experts.down_proj{p}"),
    (Role::AttnSinks, "model.layers.{i}.self_attn.sinks{p}"),
];

/// Hugging Face names that differ under [`HfNaming::Gemma`].
const HF_GEMMA: &[(Role, &str)] = &[
    (Role::PostAttnNorm, "model.layers.{i}.post_attention_layernorm"),
    (Role::FfnNorm, "model.layers.{i}.pre_feedforward_layernorm"),
    (Role::PostFfnNorm, "model.layers.{i}.post_feedforward_layernorm"),
];

/// Hugging Face names that differ under [`HfNaming::Mixtral`].
const HF_MIXTRAL: &[(Role, &str)] = &[
    (Role::FfnGateInp, "model.layers.{i}.block_sparse_moe.gate"),
    (Role::FfnGateExps, "model.layers.{i}.block_sparse_moe.experts.{e}.w1"),
    (Role::FfnUpExps, "model.layers.{i}.block_sparse_moe.experts.{e}.w3"),
    (Role::FfnDownExps, "model.layers.{i}.block_sparse_moe.experts.{e}.w2"),
];

fn row(role: Role) -> &'static (Role, &'static str, &'static str) {
    TABLE.iter().find(|(r, _, _)| *r == role).expect("every role has a row in the name table")
}

fn render(pattern: &str, id: TensorId) -> String {
    let mut base = match id.layer {
        Some(i) => pattern.replace("{i}", &i.to_string()),
        None => pattern.to_owned(),
    };
    if let Some(e) = id.expert {
        base = base.replace("{e}", &e.to_string());
    }
    if base.contains("{p}") {
        return base.replace("{p}", if id.part == Part::Bias { "_bias" } else { "" });
    }
    match id.part {
        Part::Weight => format!("{base}.weight"),
        Part::Bias => format!("{base}.bias"),
    }
}

/// The tensor's name in a GGUF file (an expert role names the 3-D tensor of all experts).
pub fn gguf_name(id: TensorId) -> String {
    render(row(id.role).1, id)
}

/// The tensor's name in a Hugging Face checkpoint, `None` for roles it does not store.
pub fn hf_name(id: TensorId, naming: HfNaming) -> Option<String> {
    let over = match naming {
        HfNaming::Gemma => HF_GEMMA.iter().find(|(r, _)| *r == id.role).map(|(_, n)| *n),
        HfNaming::Mixtral => HF_MIXTRAL.iter().find(|(r, _)| *r == id.role).map(|(_, n)| *n),
        HfNaming::GptOss => HF_GPT_OSS.iter().find(|(r, _)| *r == id.role).map(|(_, n)| *n),
        HfNaming::Llama => None,
    };
    let pattern = over.unwrap_or(row(id.role).2);
    (!pattern.is_empty()).then(|| render(pattern, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_table() {
        let q = TensorId::layer(Role::AttnQ, 3);
        assert_eq!(gguf_name(q), "blk.3.attn_q.weight");
        assert_eq!(gguf_name(q.bias()), "blk.3.attn_q.bias");
        assert_eq!(hf_name(q, HfNaming::Llama).unwrap(), "model.layers.3.self_attn.q_proj.weight");
        let ffn_norm = TensorId::layer(Role::FfnNorm, 0);
        assert_eq!(hf_name(ffn_norm, HfNaming::Llama).unwrap(), "model.layers.0.post_attention_layernorm.weight");
        assert_eq!(hf_name(ffn_norm, HfNaming::Gemma).unwrap(), "model.layers.0.pre_feedforward_layernorm.weight");
        assert_eq!(hf_name(TensorId::global(Role::RopeFreqs), HfNaming::Llama), None);
        assert_eq!(gguf_name(TensorId::global(Role::Output)), "output.weight");
        let up = TensorId::expert(Role::FfnUpExps, 1, 5);
        assert_eq!(gguf_name(up), "blk.1.ffn_up_exps.weight");
        assert_eq!(hf_name(up, HfNaming::Llama).unwrap(), "model.layers.1.mlp.experts.5.up_proj.weight");
        assert_eq!(hf_name(up, HfNaming::Mixtral).unwrap(), "model.layers.1.block_sparse_moe.experts.5.w3.weight");
        let router = TensorId::layer(Role::FfnGateInp, 0);
        assert_eq!(hf_name(router, HfNaming::Mixtral).unwrap(), "model.layers.0.block_sparse_moe.gate.weight");
        let shexp_gate = TensorId::layer(Role::FfnGateInpShexp, 2);
        assert_eq!(gguf_name(shexp_gate), "blk.2.ffn_gate_inp_shexp.weight");
        assert_eq!(hf_name(shexp_gate, HfNaming::Llama).unwrap(), "model.layers.2.mlp.shared_expert_gate.weight");
        let gate = TensorId::expert(Role::FfnGateExps, 1, 3);
        assert_eq!(hf_name(gate, HfNaming::GptOss).unwrap(), "model.layers.1.mlp.experts.gate_up_proj");
        assert_eq!(hf_name(gate.bias(), HfNaming::GptOss).unwrap(), "model.layers.1.mlp.experts.gate_up_proj_bias");
        assert_eq!(gguf_name(gate.bias()), "blk.1.ffn_gate_exps.bias");
        let sinks = TensorId::layer(Role::AttnSinks, 0);
        assert_eq!(gguf_name(sinks), "blk.0.attn_sinks.weight");
        assert_eq!(hf_name(sinks, HfNaming::GptOss).unwrap(), "model.layers.0.self_attn.sinks");
        assert_eq!(hf_name(sinks, HfNaming::Llama), None);
    }
}
