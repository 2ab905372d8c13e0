//! The shared decoder skeleton: every architecture is a [`Recipe`] (what differs) applied
//! to the same builder (what is common: embedding, blocks of attention and a dense or
//! routed gated MLP, final norm, output head tied or not, rotary factors).

use std::sync::Arc;

use lem_kernels::ops::{Rope, RopeStyle};
use lem_kv::LayerKind;

use crate::config::{Factors, ModelConfig};
use crate::error::ModelError;
use crate::layers::{
    Activation, Attention, AttentionConfig, DecoderBlock, DenseAndRouted, Ffn, GatedMlp, Linear, Loader,
    PerLayerEmbedding, RmsNorm, RoutedMlp, Routing,
};
use crate::model::{Embedding, Model};
use crate::names::{Role, TensorId};
use crate::weights::{LoadOptions, WeightSource};

/// Whether projections that run over the same input are stored as one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Packing {
    /// One tensor per projection.
    Separate,
    /// One tensor holding them all, split at load (Phi-3).
    Fused,
}

/// Which norms surround a block's two sub-blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Norms {
    /// A norm before attention and before the MLP (Llama).
    Pre,
    /// Norms before and after each (Gemma 2/3).
    PreAndPost,
}

/// The rotary embedding a layer applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum LayerRope {
    /// The model's rotary settings, with its frequency factors.
    Model,
    /// Other settings, without factors (Gemma 3's local layers).
    Own(Rope),
    /// No rotary embedding (SmolLM3's every fourth layer).
    None,
}

/// A layer's feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum FfnPlan {
    /// One gated MLP of the model's feed-forward length.
    Dense,
    /// Routed experts.
    Routed(Routing),
    /// A dense MLP and routed experts side by side, each with its own norms (Gemma 4).
    DenseAndRouted(Routing),
}

/// What one layer does differently.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LayerPlan {
    /// Full or sliding-window attention.
    pub kind: LayerKind,
    /// Its rotary embedding.
    pub rope: LayerRope,
    /// Its feed-forward block.
    pub ffn: FfnPlan,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_kv: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Inner size of its dense MLP.
    pub n_ff: usize,
    /// The earlier layer whose K/V it attends to, when it has none of its own.
    pub shares: Option<usize>,
}

/// Everything an architecture states; the builder does the rest.
#[derive(Debug, Clone)]
pub(crate) struct Recipe {
    /// Pairing of rotary dimensions in the GGUF layout.
    pub rope_style: RopeStyle,
    /// The MLP's gate activation.
    pub activation: Activation,
    /// Embeddings scaled by sqrt(n_embd) (Gemma).
    pub embed_scaled: bool,
    /// Q/K/V storage.
    pub qkv: Packing,
    /// Gate/up storage.
    pub gate_up: Packing,
    /// Norm placement.
    pub norms: Norms,
    /// The role of the norm before the feed-forward block (gpt-oss stores it as
    /// `post_attention_norm`).
    pub ffn_norm: Role,
    /// Multiplier on `q . k`.
    pub attn_scale: f32,
    /// One plan per layer.
    pub layers: Vec<LayerPlan>,
    /// A missing V projection means V is K (Gemma 4); otherwise it is an error.
    pub v_from_k: bool,
    /// Values RMS-normalised per head without weight (Gemma 4).
    pub v_norm: bool,
    /// Width of every layer's per-layer token embedding, when the model has them.
    pub per_layer_embd: Option<usize>,
}

impl Recipe {
    /// A Llama-style recipe: SwiGLU, pre-norms only, separate tensors, `1/sqrt(head_dim)`,
    /// every layer full attention with the model's rotary embedding.
    pub(crate) fn llama_like(cfg: &ModelConfig, rope_style: RopeStyle) -> Recipe {
        Recipe {
            rope_style,
            activation: Activation::Silu,
            embed_scaled: false,
            qkv: Packing::Separate,
            gate_up: Packing::Separate,
            norms: Norms::Pre,
            ffn_norm: Role::FfnNorm,
            attn_scale: 1.0 / (cfg.head_dim as f32).sqrt(),
            layers: (0..cfg.n_layer)
                .map(|i| {
                    let pick = |v: &[usize], d: usize| v.get(i).copied().unwrap_or(d);
                    let p = &cfg.per_layer;
                    LayerPlan {
                        kind: LayerKind::Full,
                        rope: LayerRope::Model,
                        ffn: FfnPlan::Dense,
                        n_head: pick(&p.n_head, cfg.n_head),
                        n_kv: pick(&p.n_kv, cfg.n_kv),
                        head_dim: cfg.head_dim,
                        n_ff: pick(&p.n_ff, cfg.n_ff),
                        shares: None,
                    }
                })
                .collect(),
            v_from_k: false,
            v_norm: false,
            per_layer_embd: None,
        }
    }

    /// Every layer's feed-forward block routed when the source declares experts
    /// (`norm_topk`: whether the top-k weights are renormalised).
    pub(crate) fn routed_where_declared(mut self, cfg: &ModelConfig, norm_topk: bool) -> Recipe {
        if let Some(m) = cfg.moe {
            let routing = Routing {
                weights_scale: m.weights_scale.unwrap_or(1.0),
                ..Routing::softmax(m.n_expert, m.n_expert_used, m.n_ff_exp, norm_topk)
            };
            self.layers.iter_mut().for_each(|l| l.ffn = FfnPlan::Routed(routing));
        }
        self
    }

    /// Changes every routed layer's routing.
    pub(crate) fn map_routing(mut self, f: impl Fn(&mut Routing)) -> Recipe {
        for l in &mut self.layers {
            if let FfnPlan::Routed(r) = &mut l.ffn {
                f(r);
            }
        }
        self
    }

    /// Every layer windowed to the config's sliding window, when it declares one.
    pub(crate) fn window_all(mut self, cfg: &ModelConfig) -> Recipe {
        if let Some(window) = cfg.sliding_window.filter(|&w| (w as usize) < cfg.context_length) {
            self.layers.iter_mut().for_each(|l| l.kind = LayerKind::SlidingWindow { window });
        }
        self
    }
}

/// Builds the model a recipe describes from the source's tensors.
pub(crate) fn build(
    src: &mut dyn WeightSource,
    mut cfg: ModelConfig,
    recipe: Recipe,
    opts: &LoadOptions,
) -> Result<Model, ModelError> {
    let mut l = Loader { src, dtype: opts.dtype };
    let (d, eps, half) = (cfg.n_embd, cfg.rms_eps, cfg.rope.n_rot / 2);
    let factors: Option<Arc<[f32]>> = match &cfg.rope.scaling.factors {
        None => None,
        Some(Factors::Values(v)) if v.len() == half => Some(v.clone().into()),
        Some(Factors::Values(v)) => {
            return Err(ModelError::Unsupported(format!(
                "{} rotary factors for {} rotating dimension pairs",
                v.len(),
                half
            )));
        }
        Some(Factors::Tensor(role)) => Some(l.vector(TensorId::global(*role), half)?.into()),
    };
    let model_rope = cfg.rope.kernel(recipe.rope_style);
    cfg.layer_kinds = recipe.layers.iter().map(|p| p.kind).collect();
    let table = Arc::new(l.matrix_rows(TensorId::global(Role::TokenEmbd), cfg.vocab, d, 0..cfg.vocab)?);
    let mut blocks = Vec::with_capacity(cfg.n_layer);
    for (i, plan) in recipe.layers.iter().enumerate() {
        let (rope, rope_factors) = match plan.rope {
            LayerRope::Model => (Some(model_rope), factors.clone()),
            LayerRope::Own(r) => (Some(r), None),
            LayerRope::None => (None, None),
        };
        if let Some(j) = plan.shares.filter(|&j| j >= i) {
            return Err(ModelError::Unsupported(format!("layer {i} cannot share the K/V of later layer {j}")));
        }
        let attn = AttentionConfig {
            n_head: plan.n_head,
            n_kv: plan.n_kv,
            head_dim: plan.head_dim,
            scale: recipe.attn_scale,
            softcap: cfg.attn_logit_softcap,
            rope,
            rope_factors,
            kind: plan.kind,
            shares: plan.shares,
            v_from_k: recipe.v_from_k,
            v_norm: recipe.v_norm,
        };
        let norm = |l: &mut Loader<'_>, role: Role| RmsNorm::load(l, TensorId::layer(role, i), d, eps);
        let post = |l: &mut Loader<'_>, role: Role| match recipe.norms {
            Norms::Pre => Ok(None),
            Norms::PreAndPost => norm(l, role).map(Some),
        };
        blocks.push(DecoderBlock {
            attn_norm: norm(&mut l, Role::AttnNorm)?,
            attn: Attention::load(&mut l, i, d, eps, attn, recipe.qkv == Packing::Fused)?,
            post_attn_norm: post(&mut l, Role::PostAttnNorm)?,
            ffn_norm: norm(&mut l, recipe.ffn_norm)?,
            mlp: match plan.ffn {
                FfnPlan::Dense => Ffn::Dense(GatedMlp::load(
                    &mut l,
                    i,
                    d,
                    plan.n_ff,
                    recipe.activation,
                    recipe.gate_up == Packing::Fused,
                )?),
                FfnPlan::Routed(r) => Ffn::Routed(RoutedMlp::load(&mut l, i, d, r, recipe.activation)?),
                FfnPlan::DenseAndRouted(r) => {
                    let dense = GatedMlp::load(&mut l, i, d, plan.n_ff, recipe.activation, false)?;
                    let routed = RoutedMlp::load(&mut l, i, d, r, recipe.activation)?;
                    Ffn::DenseAndRouted(Box::new(DenseAndRouted::load(&mut l, i, d, eps, dense, routed)?))
                }
            },
            post_ffn_norm: post(&mut l, Role::PostFfnNorm)?,
            out_scale: match TensorId::layer(Role::LayerOutScale, i) {
                id if l.has(id) => Some(l.vector(id, 1)?[0]),
                _ => None,
            },
        });
    }
    let final_norm = RmsNorm::load(&mut l, TensorId::global(Role::OutputNorm), d, eps)?;
    let output = if l.has(TensorId::global(Role::Output)) {
        Linear::load(&mut l, TensorId::global(Role::Output), d, cfg.vocab)?
    } else {
        Linear::shared(table.clone())
    };
    let per_layer = match recipe.per_layer_embd {
        Some(dim) => Some(PerLayerEmbedding::load(&mut l, cfg.vocab, d, cfg.n_layer, dim, eps)?),
        None => None,
    };
    let scale = recipe.embed_scaled.then(|| (d as f32).sqrt());
    Ok(Model::from_parts(cfg, Embedding::new(table, scale), blocks, final_norm, output).with_per_layer(per_layer))
}
