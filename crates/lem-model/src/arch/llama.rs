//! Llama family (`general.architecture = "llama"`): SmolLM, Llama 2/3, Mistral-style GGUFs.

use std::sync::Arc;

use lem_kernels::ops::{Rope, RopeStyle};
use lem_kv::LayerKind;

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::layers::{Activation, Attention, AttentionConfig, DecoderBlock, GatedMlp, Linear, RmsNorm};
use crate::model::{Embedding, Model};

pub(crate) fn load(g: &mut GgufFile) -> Result<Model, ModelError> {
    let mut cfg = ModelConfig::read_common(g, "llama")?;
    if g.has_tensor("rope_freqs.weight") {
        return Err(ModelError::Unsupported("rotary frequency factors (rope_freqs.weight, Llama 3.1 style)".into()));
    }
    if let Some(w) = g.opt_uint("llama.attention.sliding_window")? {
        cfg.layer_kinds = vec![LayerKind::SlidingWindow { window: w as u32 }; cfg.n_layer];
    }
    let rope = Rope {
        base: g.opt_f32("llama.rope.freq_base")?.unwrap_or(10_000.0),
        freq_scale: super::gemma3::linear_rope_scale(g, "llama")?,
        n_rot: g.opt_uint("llama.rope.dimension_count")?.map_or(cfg.head_dim, |n| n as usize),
        style: RopeStyle::Interleaved,
    };
    let (d, eps) = (cfg.n_embd, cfg.rms_eps);
    let table = Arc::new(g.matrix("token_embd.weight", cfg.vocab, d)?);
    let mut blocks = Vec::with_capacity(cfg.n_layer);
    for i in 0..cfg.n_layer {
        let attn = AttentionConfig {
            n_head: cfg.n_head,
            n_kv: cfg.n_kv,
            head_dim: cfg.head_dim,
            scale: 1.0 / (cfg.head_dim as f32).sqrt(),
            softcap: None,
            rope,
            kind: cfg.layer_kinds[i],
        };
        blocks.push(DecoderBlock {
            attn_norm: RmsNorm::load(g, &format!("blk.{i}.attn_norm.weight"), d, eps)?,
            attn: Attention::load(g, i, d, eps, attn)?,
            post_attn_norm: None,
            ffn_norm: RmsNorm::load(g, &format!("blk.{i}.ffn_norm.weight"), d, eps)?,
            mlp: GatedMlp::load(g, i, d, cfg.n_ff, Activation::Silu)?,
            post_ffn_norm: None,
        });
    }
    let final_norm = RmsNorm::load(g, "output_norm.weight", d, eps)?;
    let output = if g.has_tensor("output.weight") {
        Linear::load(g, "output", d, cfg.vocab)?
    } else {
        Linear::shared(table.clone())
    };
    Ok(Model::from_parts(cfg, Embedding::new(table, None), blocks, final_norm, output))
}
