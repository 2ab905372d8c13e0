//! A pre-norm transformer decoder block, with optional post-norms (Gemma).

use super::attention::AttnBuffers;
use super::dense_routed::{DenseAndRouted, DenseRoutedBuffers};
use super::mlp::MlpBuffers;
use super::moe::MoeBuffers;
use super::{Attention, GatedMlp, Kernels, RmsNorm, RoutedMlp, fit};
use crate::model::{Segment, SeqInput};
use crate::observer::Observer;

/// A block's feed-forward part: one gated MLP, or experts behind a router.
#[derive(Debug, Clone)]
pub enum Ffn {
    /// Every token through the same gated MLP.
    Dense(GatedMlp),
    /// Each token through its top-k experts.
    Routed(RoutedMlp),
    /// A dense MLP and routed experts side by side, each with its own norms (Gemma 4).
    DenseAndRouted(Box<DenseAndRouted>),
}

/// `x += post_attn_norm(attn(attn_norm(x)))`, then `x += post_ffn_norm(mlp(ffn_norm(x)))`.
#[derive(Debug, Clone)]
pub struct DecoderBlock {
    /// Norm before attention.
    pub attn_norm: RmsNorm,
    /// Self-attention.
    pub attn: Attention,
    /// Norm of the attention output before the residual add (Gemma 2/3).
    pub post_attn_norm: Option<RmsNorm>,
    /// Norm before the feed-forward block.
    pub ffn_norm: RmsNorm,
    /// Feed-forward block.
    pub mlp: Ffn,
    /// Norm of the feed-forward output before the residual add (Gemma 2/3).
    pub post_ffn_norm: Option<RmsNorm>,
    /// Multiplier on the layer's output stream (Gemma 4's `layer_output_scale`), applied
    /// by the model after the layer's per-layer input, where stored.
    pub out_scale: Option<f32>,
}

/// Buffers a block reuses across calls.
#[derive(Debug, Default)]
pub struct BlockBuffers {
    xn: Vec<f32>,
    y: Vec<f32>,
    attn: AttnBuffers,
    mlp: MlpBuffers,
    moe: MoeBuffers,
    dense_routed: DenseRoutedBuffers,
}

impl Ffn {
    /// Parameters of the block: all of them, and those one token uses.
    pub fn param_counts(&self) -> (u64, u64) {
        match self {
            Ffn::Dense(m) => (m.param_count(), m.param_count()),
            Ffn::Routed(m) => m.param_counts(),
            Ffn::DenseAndRouted(m) => m.param_counts(),
        }
    }
}

impl DecoderBlock {
    /// Parameters of the block: all of them, and those one token uses (a routed block's
    /// router, shared expert and top-k experts).
    pub fn param_counts(&self) -> (u64, u64) {
        let norms =
            [Some(&self.attn_norm), self.post_attn_norm.as_ref(), Some(&self.ffn_norm), self.post_ffn_norm.as_ref()]
                .into_iter()
                .flatten()
                .map(RmsNorm::param_count)
                .sum::<u64>();
        let fixed = norms + self.attn.param_count() + u64::from(self.out_scale.is_some());
        let (all, active) = self.mlp.param_counts();
        (fixed + all, fixed + active)
    }

    /// Runs the block on the residual stream `x` (`n` rows) in place.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        layer: usize,
        x: &mut [f32],
        positions: &[u32],
        segments: &[Segment],
        batch: &mut [SeqInput<'_>],
        buf: &mut BlockBuffers,
        k: &mut Kernels<'_>,
        observer: Option<&mut dyn Observer>,
    ) {
        let n = positions.len();
        let xn = fit(&mut buf.xn, x.len());
        self.attn_norm.forward_into(x, xn);
        let y = fit(&mut buf.y, x.len());
        self.attn.forward(layer, xn, positions, segments, batch, y, &mut buf.attn, k, observer);
        if let Some(norm) = &self.post_attn_norm {
            norm.forward(y);
        }
        lem_kernels::ops::add_assign(x, y);
        self.ffn_norm.forward_into(x, xn);
        match &self.mlp {
            Ffn::Dense(mlp) => mlp.forward(xn, n, y, &mut buf.mlp, k),
            Ffn::Routed(moe) => moe.forward(xn, n, y, &mut buf.moe, k),
            Ffn::DenseAndRouted(b) => b.forward(x, xn, n, y, &mut buf.dense_routed, &mut buf.mlp, &mut buf.moe, k),
        }
        if let Some(norm) = &self.post_ffn_norm {
            norm.forward(y);
        }
        lem_kernels::ops::add_assign(x, y);
    }
}
