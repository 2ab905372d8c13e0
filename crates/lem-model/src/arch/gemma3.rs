//! Gemma 3 (`general.architecture = "gemma3"`).
//!
//! Constants the GGUF omits follow llama.cpp's gemma3 code: local (sliding-window)
//! layers use a rotary base of 10,000 without scaling, and every sixth layer
//! (`i % 6 == 5`) is global. Embeddings are scaled by sqrt(n_embd); norm weights in GGUF
//! already include Gemma's `+1`.

use std::sync::Arc;

use lem_kernels::ops::{Rope, RopeStyle};
use lem_kv::LayerKind;

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::layers::{Activation, Attention, AttentionConfig, DecoderBlock, GatedMlp, Linear, RmsNorm};
use crate::model::{Embedding, Model};

/// Rotary base of Gemma 3's local layers (not stored in GGUF files).
const LOCAL_ROPE_BASE: f32 = 10_000.0;
/// One global layer in every this many (not stored in GGUF files).
const SWA_PATTERN: usize = 6;

/// `1 / factor` for linear rotary scaling declared by `{arch}.rope.scaling.*`, else 1.
pub(crate) fn linear_rope_scale(g: &GgufFile, arch: &str) -> Result<f32, ModelError> {
    let ty = g.str(&format!("{arch}.rope.scaling.type")).ok();
    let factor = g.opt_f32(&format!("{arch}.rope.scaling.factor"))?;
    match (ty, factor) {
        (Some("linear") | None, Some(f)) if f > 0.0 => Ok(1.0 / f),
        (Some("none") | None, _) => Ok(1.0),
        (Some("linear"), _) => Ok(1.0),
        (Some(other), _) => Err(ModelError::Unsupported(format!("rope scaling type '{other}'"))),
    }
}

pub(crate) fn load(g: &mut GgufFile) -> Result<Model, ModelError> {
    let mut cfg = ModelConfig::read_common(g, "gemma3")?;
    let window = g.uint("gemma3.attention.sliding_window", 1 << 24)? as u32;
    cfg.layer_kinds = (0..cfg.n_layer)
        .map(|i| if i % SWA_PATTERN < SWA_PATTERN - 1 { LayerKind::SlidingWindow { window } } else { LayerKind::Full })
        .collect();
    let n_rot = g.opt_uint("gemma3.rope.dimension_count")?.map_or(cfg.head_dim, |n| n as usize);
    let global_rope = Rope {
        base: g.opt_f32("gemma3.rope.freq_base")?.unwrap_or(1_000_000.0),
        freq_scale: linear_rope_scale(g, "gemma3")?,
        n_rot,
        style: RopeStyle::Neox,
    };
    let local_rope = Rope { base: LOCAL_ROPE_BASE, freq_scale: 1.0, ..global_rope };
    // llama.cpp: Gemma 3 27B scales queries by 1/sqrt(n_embd / n_head), others by 1/sqrt(head_dim).
    let scale = if cfg.n_layer == 62 {
        1.0 / ((cfg.n_embd / cfg.n_head) as f32).sqrt()
    } else {
        1.0 / (cfg.head_dim as f32).sqrt()
    };
    let (d, eps) = (cfg.n_embd, cfg.rms_eps);
    let table = Arc::new(g.matrix("token_embd.weight", cfg.vocab, d)?);
    let mut blocks = Vec::with_capacity(cfg.n_layer);
    for i in 0..cfg.n_layer {
        let kind = cfg.layer_kinds[i];
        let attn = AttentionConfig {
            n_head: cfg.n_head,
            n_kv: cfg.n_kv,
            head_dim: cfg.head_dim,
            scale,
            softcap: cfg.attn_logit_softcap,
            rope: if kind == LayerKind::Full { global_rope } else { local_rope },
            kind,
        };
        let p = |s: &str| format!("blk.{i}.{s}.weight");
        blocks.push(DecoderBlock {
            attn_norm: RmsNorm::load(g, &p("attn_norm"), d, eps)?,
            attn: Attention::load(g, i, d, eps, attn)?,
            post_attn_norm: Some(RmsNorm::load(g, &p("post_attention_norm"), d, eps)?),
            ffn_norm: RmsNorm::load(g, &p("ffn_norm"), d, eps)?,
            mlp: GatedMlp::load(g, i, d, cfg.n_ff, Activation::GeluTanh)?,
            post_ffn_norm: Some(RmsNorm::load(g, &p("post_ffw_norm"), d, eps)?),
        });
    }
    let final_norm = RmsNorm::load(g, "output_norm.weight", d, eps)?;
    let output = if g.has_tensor("output.weight") {
        Linear::load(g, "output", d, cfg.vocab)?
    } else {
        Linear::shared(table.clone())
    };
    let embed_scale = (d as f32).sqrt();
    Ok(Model::from_parts(cfg, Embedding::new(table, Some(embed_scale)), blocks, final_norm, output))
}
