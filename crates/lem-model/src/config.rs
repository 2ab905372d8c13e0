//! Typed hyper-parameters, read through one key table from either weights source.
//!
//! Every scalar hyper-parameter is a [`Key`]; [`KEYS`] spells its GGUF key (after the
//! `{arch}.` prefix) and its Hugging Face `config.json` key side by side. [`ModelConfig::read`]
//! is the one reader: it asks a [`WeightSource`] for keys and never sees a file format.
//! Rotary scaling is structured differently in the two formats (GGUF flattens it into
//! `rope.scaling.*` keys and tensors, Hugging Face nests it in `rope_scaling`), so each
//! source turns its own form into one [`RopeScaling`] value.

use lem_kv::LayerKind;

use crate::arch::Arch;
use crate::error::ModelError;
use crate::names::{Role, TensorId};
use crate::weights::WeightSource;

/// A scalar hyper-parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// Number of blocks.
    BlockCount,
    /// Hidden size.
    EmbeddingLength,
    /// Feed-forward inner size.
    FeedForwardLength,
    /// Query heads.
    HeadCount,
    /// Key/value heads (defaults to the query heads).
    HeadCountKv,
    /// Head dimension (defaults to hidden / heads).
    KeyLength,
    /// Training context length.
    ContextLength,
    /// RMSNorm epsilon.
    RmsEps,
    /// Rotary base.
    RopeBase,
    /// Rotating dimensions per head (defaults to the head dimension).
    RopeDims,
    /// Sliding-window width of windowed layers.
    SlidingWindow,
    /// Attention logit soft-cap.
    AttnSoftcap,
    /// Final logit soft-cap.
    FinalSoftcap,
    /// Vocabulary size (Hugging Face only; GGUF has the embedding's shape).
    VocabSize,
    /// Gemma 2's `query_pre_attn_scalar` (queries scale by its inverse square root).
    QueryPreAttnScalar,
    /// Experts of a routed feed-forward block (absent: dense).
    ExpertCount,
    /// Experts each token is routed to (top-k).
    ExpertUsedCount,
    /// Inner size of one expert (defaults to the feed-forward length: Mixtral).
    ExpertFeedForwardLength,
    /// Whether the top-k router weights are renormalised to sum to 1 (a flag).
    ExpertWeightsNorm,
    /// Inner size of the shared expert (Qwen 2 MoE; defaults to the feed-forward length).
    ExpertSharedFeedForwardLength,
    /// Multiplier on the top-k router weights (GGUF only).
    ExpertWeightsScale,
    /// Head dimension of sliding-window layers (Gemma 4; defaults to the key length).
    KeyLengthSwa,
    /// Rotating dimensions of sliding-window layers (Gemma 4).
    RopeDimsSwa,
    /// Rotary base of sliding-window layers (Gemma 4).
    RopeBaseSwa,
    /// Trailing layers that reuse an earlier layer's K/V (Gemma 4).
    SharedKvLayers,
    /// Width of each layer's per-layer token embedding (Gemma 4; 0: none).
    EmbeddingLengthPerLayer,
    /// Which layers are sliding-window, one flag per layer (Gemma 4).
    SlidingWindowPattern,
}

/// `(key, GGUF key after "{arch}.", Hugging Face config.json key)`; empty = not stored.
pub(crate) const KEYS: &[(Key, &str, &str)] = &[
    (Key::BlockCount, "block_count", "num_hidden_layers"),
    (Key::EmbeddingLength, "embedding_length", "hidden_size"),
    (Key::FeedForwardLength, "feed_forward_length", "intermediate_size"),
    (Key::HeadCount, "attention.head_count", "num_attention_heads"),
    (Key::HeadCountKv, "attention.head_count_kv", "num_key_value_heads"),
    (Key::KeyLength, "attention.key_length", "head_dim"),
    (Key::ContextLength, "context_length", "max_position_embeddings"),
    (Key::RmsEps, "attention.layer_norm_rms_epsilon", "rms_norm_eps"),
    (Key::RopeBase, "rope.freq_base", "rope_theta"),
    (Key::RopeDims, "rope.dimension_count", ""),
    (Key::SlidingWindow, "attention.sliding_window", "sliding_window"),
    (Key::AttnSoftcap, "attn_logit_softcapping", "attn_logit_softcapping"),
    (Key::FinalSoftcap, "final_logit_softcapping", "final_logit_softcapping"),
    (Key::VocabSize, "", "vocab_size"),
    (Key::QueryPreAttnScalar, "", "query_pre_attn_scalar"),
    // Qwen MoE configs say `num_experts`, Mixtral's `num_local_experts`.
    (Key::ExpertCount, "expert_count", "num_experts|num_local_experts"),
    (Key::ExpertUsedCount, "expert_used_count", "num_experts_per_tok"),
    (Key::ExpertFeedForwardLength, "expert_feed_forward_length", "moe_intermediate_size"),
    (Key::ExpertWeightsNorm, "expert_weights_norm", "norm_topk_prob"),
    (Key::ExpertSharedFeedForwardLength, "expert_shared_feed_forward_length", "shared_expert_intermediate_size"),
    (Key::ExpertWeightsScale, "expert_weights_scale", ""),
    (Key::KeyLengthSwa, "attention.key_length_swa", ""),
    (Key::RopeDimsSwa, "rope.dimension_count_swa", ""),
    (Key::RopeBaseSwa, "rope.freq_base_swa", ""),
    (Key::SharedKvLayers, "attention.shared_kv_layers", ""),
    (Key::EmbeddingLengthPerLayer, "embedding_length_per_layer_input", ""),
    (Key::SlidingWindowPattern, "attention.sliding_window_pattern", ""),
];

/// The GGUF (after `{arch}.`) and Hugging Face spellings of `key`; a Hugging Face
/// spelling may list alternatives separated by `|` (the first present applies).
pub(crate) fn key_names(key: Key) -> (&'static str, &'static str) {
    let (_, g, h) = KEYS.iter().find(|(k, _, _)| *k == key).expect("every key has a row in the key table");
    (g, h)
}

/// Where per-frequency rotary divisors come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Factors {
    /// Computed from the config (`n_rot / 2` values).
    Values(Vec<f32>),
    /// Stored as a tensor of `n_rot / 2` values (GGUF `rope_freqs`, `rope_factors_*`).
    Tensor(Role),
}

/// YaRN settings (Qwen 2.5/3 long-context variants).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YarnConfig {
    /// Context the model was trained at.
    pub orig_ctx: u32,
    /// Ramp's fast end (rotations).
    pub beta_fast: f32,
    /// Ramp's slow end (rotations).
    pub beta_slow: f32,
}

/// How the model stretches rotary positions, in GGML's terms: a linear scale, optional
/// per-frequency divisors (Llama 3.x, LongRoPE), optional YaRN blending, and a multiplier
/// on cos/sin. Each source turns its own form (GGUF `rope.scaling.*` keys and factor
/// tensors, Hugging Face `rope_scaling`) into this.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeScaling {
    /// `1 / factor` of linear or YaRN scaling; 1 for none.
    pub freq_scale: f32,
    /// Per-frequency divisors.
    pub factors: Option<Factors>,
    /// YaRN blending.
    pub yarn: Option<YarnConfig>,
    /// Multiplier on cos/sin (LongRoPE's attention factor; YaRN's extra factor); 1 for none.
    pub attn_factor: f32,
}

impl RopeScaling {
    /// No scaling.
    pub const NONE: RopeScaling = RopeScaling { freq_scale: 1.0, factors: None, yarn: None, attn_factor: 1.0 };
}

/// Rotary settings of the model's layers (architectures may override per layer).
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// Base frequency.
    pub base: f32,
    /// Rotating dimensions per head.
    pub n_rot: usize,
    /// Scaling.
    pub scaling: RopeScaling,
}

impl RopeConfig {
    /// The kernel's parameters for `style` (factors travel separately, see
    /// [`lem_kernels::ops::Rope::fill_table`]).
    pub fn kernel(&self, style: lem_kernels::ops::RopeStyle) -> lem_kernels::ops::Rope {
        let s = &self.scaling;
        lem_kernels::ops::Rope {
            base: self.base,
            freq_scale: s.freq_scale,
            n_rot: self.n_rot,
            style,
            attn_factor: s.attn_factor,
            yarn: s.yarn.map(|y| lem_kernels::ops::Yarn {
                ext_factor: 1.0,
                orig_ctx: y.orig_ctx,
                beta_fast: y.beta_fast,
                beta_slow: y.beta_slow,
            }),
        }
    }
}

/// A routed feed-forward block's shape, when the model has one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MoeConfig {
    /// Experts per layer.
    pub n_expert: usize,
    /// Experts each token uses (top-k).
    pub n_expert_used: usize,
    /// Inner size of one expert.
    pub n_ff_exp: usize,
    /// Whether the source states that the top-k weights are renormalised; `None` when
    /// it says nothing (the architecture decides).
    pub norm_topk: Option<bool>,
    /// Inner size of the shared expert, when the source states one.
    pub n_ff_shexp: Option<usize>,
    /// Multiplier on the top-k weights, when the source states one.
    pub weights_scale: Option<f32>,
}

/// A model's shape and constants, as the forward pass needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The architecture.
    pub arch: Arch,
    /// Architecture name as lem reports it (`general.architecture`'s spelling).
    pub architecture: String,
    /// `general.name` (GGUF) or the directory name (Hugging Face), when known.
    pub name: Option<String>,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Feed-forward inner size.
    pub n_ff: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_kv: usize,
    /// Dimension of each head.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab: usize,
    /// Training context length.
    pub context_length: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Rotary embedding.
    pub rope: RopeConfig,
    /// Width of windowed layers, when the model declares one.
    pub sliding_window: Option<u32>,
    /// Attention kind of each layer (the architecture fills it).
    pub layer_kinds: Vec<LayerKind>,
    /// Soft-cap applied to final logits, when the model uses one.
    pub final_logit_softcap: Option<f32>,
    /// Soft-cap applied to attention logits, when the model uses one.
    pub attn_logit_softcap: Option<f32>,
    /// Gemma 2's `query_pre_attn_scalar`, when the config states it.
    pub query_pre_attn_scalar: Option<f32>,
    /// The routed feed-forward block's shape, when the source declares experts.
    pub moe: Option<MoeConfig>,
    /// Per-layer query heads, KV heads and feed-forward lengths where the source stores
    /// them as one value per layer (Gemma 4); the scalar fields then hold the largest.
    pub per_layer: PerLayerDims,
}

/// Hyper-parameters a source may store once per layer (empty: the scalar applies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerLayerDims {
    /// Query heads of each layer.
    pub n_head: Vec<usize>,
    /// Key/value heads of each layer.
    pub n_kv: Vec<usize>,
    /// Feed-forward length of each layer.
    pub n_ff: Vec<usize>,
}

/// Reads `key` as one value per layer when the source stores an array of `n_layer`
/// values within `1..=max` (then the scalar is their largest); otherwise as a scalar.
fn per_layer_or_scalar(
    src: &dyn WeightSource,
    key: Key,
    n_layer: usize,
    max: u64,
) -> Result<(Option<usize>, Vec<usize>), ModelError> {
    match src.per_layer(key)? {
        None => Ok((optional(src, key, max)?, Vec::new())),
        Some(v) if v.len() != n_layer => Err(src.key_error(key, format!("{} values for {n_layer} layers", v.len()))),
        Some(v) => {
            let v = v.into_iter().map(|n| bounded(src, key, n, max)).collect::<Result<Vec<_>, _>>()?;
            Ok((v.iter().copied().max(), v))
        }
    }
}

/// Upper bound accepted for any dimension read from a file (guards absurd metadata).
const MAX_DIM: u64 = 1 << 24;

/// A required integer within `1..=max`.
fn required(src: &dyn WeightSource, key: Key, max: u64) -> Result<usize, ModelError> {
    let n = src.uint(key)?.ok_or_else(|| src.key_error(key, "missing".into()))?;
    bounded(src, key, n, max)
}

fn bounded(src: &dyn WeightSource, key: Key, n: u64, max: u64) -> Result<usize, ModelError> {
    if n == 0 || n > max {
        return Err(src.key_error(key, format!("value {n} is outside 1..={max}")));
    }
    Ok(n as usize)
}

fn optional(src: &dyn WeightSource, key: Key, max: u64) -> Result<Option<usize>, ModelError> {
    src.uint(key)?.map(|n| bounded(src, key, n, max)).transpose()
}

impl ModelConfig {
    /// Reads the hyper-parameters every decoder has; the architecture fills the rest
    /// (`layer_kinds` and what it overrides).
    pub fn read(src: &dyn WeightSource) -> Result<ModelConfig, ModelError> {
        let arch = src.arch();
        let n_layer = required(src, Key::BlockCount, 4096)?;
        let n_embd = required(src, Key::EmbeddingLength, MAX_DIM)?;
        let (n_ff, ff_layers) = per_layer_or_scalar(src, Key::FeedForwardLength, n_layer, MAX_DIM)?;
        let n_ff = n_ff.ok_or_else(|| src.key_error(Key::FeedForwardLength, "missing".into()))?;
        let (n_head, head_layers) = per_layer_or_scalar(src, Key::HeadCount, n_layer, 4096)?;
        let n_head = n_head.ok_or_else(|| src.key_error(Key::HeadCount, "missing".into()))?;
        let (n_kv, kv_layers) = per_layer_or_scalar(src, Key::HeadCountKv, n_layer, 4096)?;
        let n_kv = n_kv.unwrap_or(n_head);
        if !n_head.is_multiple_of(n_kv) && kv_layers.is_empty() {
            return Err(
                src.key_error(Key::HeadCountKv, format!("{n_head} query heads are not a multiple of {n_kv} KV heads"))
            );
        }
        let head_dim = optional(src, Key::KeyLength, MAX_DIM)?.unwrap_or(n_embd / n_head);
        let embd = TensorId::global(Role::TokenEmbd);
        let stored_vocab = src
            .shape(embd)
            .and_then(|s| s.first().copied())
            .ok_or_else(|| ModelError::MissingTensor(src.tensor_name(embd)))?;
        let vocab = match optional(src, Key::VocabSize, 1 << 26)? {
            Some(v) if v != stored_vocab => {
                return Err(
                    src.key_error(Key::VocabSize, format!("{v} does not match the embedding's {stored_vocab} rows"))
                );
            }
            _ => stored_vocab,
        };
        let context_length = required(src, Key::ContextLength, 1 << 26)?;
        let rms_eps = src.float(Key::RmsEps)?.ok_or_else(|| src.key_error(Key::RmsEps, "missing".into()))?;
        let n_rot = optional(src, Key::RopeDims, MAX_DIM)?.unwrap_or(head_dim);
        if n_rot > head_dim || !n_rot.is_multiple_of(2) {
            return Err(src.key_error(Key::RopeDims, format!("{n_rot} rotating dimensions for heads of {head_dim}")));
        }
        let scaling = src.rope_scaling(n_rot, context_length)?;
        let moe = match optional(src, Key::ExpertCount, 1 << 16)? {
            None => None,
            Some(n_expert) => {
                let n_expert_used = required(src, Key::ExpertUsedCount, n_expert as u64)?;
                let n_ff_exp = optional(src, Key::ExpertFeedForwardLength, MAX_DIM)?.unwrap_or(n_ff);
                Some(MoeConfig {
                    n_expert,
                    n_expert_used,
                    n_ff_exp,
                    norm_topk: src.flag(Key::ExpertWeightsNorm)?,
                    n_ff_shexp: optional(src, Key::ExpertSharedFeedForwardLength, MAX_DIM)?,
                    weights_scale: src.float(Key::ExpertWeightsScale)?.filter(|s| *s != 0.0),
                })
            }
        };
        let positive = |key: Key| -> Result<Option<f32>, ModelError> { Ok(src.float(key)?.filter(|c| *c > 0.0)) };
        Ok(ModelConfig {
            arch,
            architecture: arch.name().to_owned(),
            name: src.model_name(),
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_kv,
            head_dim,
            vocab,
            context_length,
            rms_eps,
            rope: RopeConfig { base: src.float(Key::RopeBase)?.unwrap_or(arch.default_rope_base()), n_rot, scaling },
            sliding_window: optional(src, Key::SlidingWindow, 1 << 26)?.map(|w| w as u32),
            layer_kinds: vec![LayerKind::Full; n_layer],
            final_logit_softcap: positive(Key::FinalSoftcap)?,
            attn_logit_softcap: positive(Key::AttnSoftcap)?,
            query_pre_attn_scalar: positive(Key::QueryPreAttnScalar)?,
            moe,
            per_layer: PerLayerDims { n_head: head_layers, n_kv: kv_layers, n_ff: ff_layers },
        })
    }
}
