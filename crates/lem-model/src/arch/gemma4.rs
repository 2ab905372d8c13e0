//! Gemma 4 (`gemma4`; GGUF only): Gemma 3's block (GeGLU, pre and post norms, scaled
//! embeddings, per-head Q/K norms) with attention scale 1, values RMS-normalised per head
//! without weight, and a V projection that may be absent (V is then K). Which layers are
//! sliding-window comes from `attention.sliding_window_pattern`; sliding layers have
//! their own head size (`key_length_swa`), KV heads (per-layer `head_count_kv`), rotary
//! base (`rope.freq_base_swa`) and dimensions, global layers the model's rotary with the
//! `rope_freqs` factors (proportional rotary: pairs past the rotated fraction get a
//! factor of 1e30, so they do not turn). The last `attention.shared_kv_layers` layers
//! have no K/V of their own: a sliding one attends to the cache of the last sliding layer
//! with K/V, a global one to the last global layer's, as llama.cpp does. E2B/E4B add
//! per-layer token embeddings (`layers/per_layer.rs`); 26B-A4B's layers run a dense MLP
//! and routed experts side by side (`layers/dense_routed.rs`). A layer output scale and
//! the final soft-cap load where stored.

use lem_kernels::ops::{Rope, RopeStyle};
use lem_kv::LayerKind;

use super::decoder::{FfnPlan, LayerRope, Norms, Recipe};
use crate::config::{Key, ModelConfig};
use crate::error::ModelError;
use crate::layers::{Activation, Routing};
use crate::names::{Role, TensorId};
use crate::weights::WeightSource;

/// Rotary base of sliding layers when the source states none.
const DEFAULT_SWA_BASE: f32 = 10_000.0;
/// Window when the source states none.
const DEFAULT_WINDOW: u32 = 512;

pub(crate) fn recipe(cfg: &mut ModelConfig, src: &dyn WeightSource) -> Result<Recipe, ModelError> {
    let n = cfg.n_layer;
    let pattern = src
        .per_layer(Key::SlidingWindowPattern)?
        .ok_or_else(|| src.key_error(Key::SlidingWindowPattern, "missing".into()))?;
    if pattern.len() != n {
        return Err(src.key_error(Key::SlidingWindowPattern, format!("{} flags for {n} layers", pattern.len())));
    }
    let dim = |key: Key, default: usize| -> Result<usize, ModelError> {
        match src.uint(key)? {
            None => Ok(default),
            Some(v) if v == 0 || v > 1 << 16 => Err(src.key_error(key, format!("value {v} is outside 1..=65536"))),
            Some(v) => Ok(v as usize),
        }
    };
    let head_swa = dim(Key::KeyLengthSwa, cfg.head_dim)?;
    let rot_swa = dim(Key::RopeDimsSwa, head_swa)?;
    if rot_swa > head_swa || !rot_swa.is_multiple_of(2) {
        return Err(src.key_error(Key::RopeDimsSwa, format!("{rot_swa} rotating dimensions for heads of {head_swa}")));
    }
    let shared = src.uint(Key::SharedKvLayers)?.unwrap_or(0) as usize;
    let kv_from = n.checked_sub(shared).filter(|&k| shared == 0 || k >= 2).ok_or_else(|| {
        src.key_error(Key::SharedKvLayers, format!("{shared} shared-KV layers leave fewer than 2 of {n} with K/V"))
    })?;
    let per_layer = src.uint(Key::EmbeddingLengthPerLayer)?.unwrap_or(0) as usize;
    let window = cfg.sliding_window.unwrap_or(DEFAULT_WINDOW);
    let local = Rope::new(src.float(Key::RopeBaseSwa)?.unwrap_or(DEFAULT_SWA_BASE), rot_swa, RopeStyle::Neox);
    let routing = cfg.moe.map(|m| Routing::softmax(m.n_expert, m.n_expert_used, m.n_ff_exp, true));
    let mut r = Recipe {
        activation: Activation::GeluTanh,
        embed_scaled: true,
        norms: Norms::PreAndPost,
        attn_scale: 1.0,
        v_from_k: true,
        v_norm: true,
        per_layer_embd: (per_layer > 0).then_some(per_layer),
        ..Recipe::llama_like(cfg, RopeStyle::Neox)
    };
    for (i, layer) in r.layers.iter_mut().enumerate() {
        let swa = pattern[i] != 0;
        if swa {
            layer.kind = LayerKind::SlidingWindow { window };
            layer.rope = LayerRope::Own(local);
            layer.head_dim = head_swa;
        }
        if i >= kv_from {
            layer.shares = Some(kv_from - if swa { 2 } else { 1 });
        }
        if !layer.n_head.is_multiple_of(layer.n_kv) {
            return Err(src.key_error(
                Key::HeadCountKv,
                format!("layer {i}: {} query heads are not a multiple of {} KV heads", layer.n_head, layer.n_kv),
            ));
        }
        if let Some(m) = routing.filter(|_| src.has(TensorId::layer(Role::FfnGateInp, i))) {
            layer.ffn = FfnPlan::DenseAndRouted(m);
        }
    }
    for i in kv_from..n {
        let j = r.layers[i].shares.unwrap_or(i);
        let (a, b) = (&r.layers[i], &r.layers[j]);
        if a.kind != b.kind || a.head_dim != b.head_dim || a.n_kv != b.n_kv {
            return Err(ModelError::Unsupported(format!(
                "layer {i} shares layer {j}'s K/V but attends differently (window, head size or KV heads)"
            )));
        }
    }
    Ok(r)
}
