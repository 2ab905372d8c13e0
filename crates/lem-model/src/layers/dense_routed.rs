//! A dense MLP and routed experts side by side (Gemma 4's 26B-A4B): the dense MLP runs
//! on the pre-FFN-normalised stream and is normalised after (`post_ffw_norm_1`); the
//! experts run on the stream normalised by their own norm (`pre_ffw_norm_2`) and are
//! normalised after (`post_ffw_norm_2`); the block's output is the sum. The router sees
//! the stream RMS-normalised without weight, times `1/sqrt(n_embd)` and a per-channel
//! scale (`ffn_gate_inp.scale`), as llama.cpp's `gemma4` graph computes its logits.

use super::mlp::MlpBuffers;
use super::moe::MoeBuffers;
use super::{GatedMlp, Kernels, Loader, RmsNorm, RoutedMlp, fit};
use crate::error::ModelError;
use crate::names::{Role, TensorId};

/// The dense MLP plus routed experts, with their norms and the router's input scale.
#[derive(Debug, Clone)]
pub struct DenseAndRouted {
    dense: GatedMlp,
    post_dense: RmsNorm,
    pre_routed: RmsNorm,
    routed: RoutedMlp,
    post_routed: RmsNorm,
    /// The router input's norm: weight `scale / sqrt(n_embd)`.
    router_norm: RmsNorm,
}

/// Buffers the block reuses across calls.
#[derive(Debug, Default)]
pub struct DenseRoutedBuffers {
    xr: Vec<f32>,
    rx: Vec<f32>,
    y: Vec<f32>,
}

impl DenseAndRouted {
    /// Wraps layer `i`'s loaded dense MLP and routed experts with the block's norms and
    /// router scale.
    pub fn load(
        l: &mut Loader<'_>,
        i: usize,
        n_embd: usize,
        eps: f32,
        dense: GatedMlp,
        routed: RoutedMlp,
    ) -> Result<DenseAndRouted, ModelError> {
        let norm = |l: &mut Loader<'_>, r: Role| RmsNorm::load(l, TensorId::layer(r, i), n_embd, eps);
        let inv = 1.0 / (n_embd as f32).sqrt();
        let scale = l.vector(TensorId::layer(Role::FfnGateInpScale, i), n_embd)?;
        Ok(DenseAndRouted {
            dense,
            post_dense: norm(l, Role::FfnPostNorm1)?,
            pre_routed: norm(l, Role::FfnPreNorm2)?,
            routed,
            post_routed: norm(l, Role::FfnPostNorm2)?,
            router_norm: RmsNorm::new(scale.into_iter().map(|s| s * inv).collect(), eps),
        })
    }

    /// Parameters of the block: all of them, and those one token uses.
    pub fn param_counts(&self) -> (u64, u64) {
        let norms = [&self.post_dense, &self.pre_routed, &self.post_routed, &self.router_norm]
            .iter()
            .map(|n| n.param_count())
            .sum::<u64>();
        let fixed = norms + self.dense.param_count();
        let (all, active) = self.routed.param_counts();
        (fixed + all, fixed + active)
    }

    /// Applies the block to `n` rows: `xn` is the stream after the pre-FFN norm, `x` the
    /// stream itself (what the experts' norm and the router see); writes `out`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        x: &[f32],
        xn: &[f32],
        n: usize,
        out: &mut [f32],
        buf: &mut DenseRoutedBuffers,
        mlp: &mut MlpBuffers,
        moe: &mut MoeBuffers,
        k: &mut Kernels<'_>,
    ) {
        self.dense.forward(xn, n, out, mlp, k);
        self.post_dense.forward(out);
        let xr = fit(&mut buf.xr, x.len());
        self.pre_routed.forward_into(x, xr);
        let rx = fit(&mut buf.rx, x.len());
        self.router_norm.forward_into(x, rx);
        let y = fit(&mut buf.y, x.len());
        self.routed.forward_routed(xr, rx, n, y, moe, k);
        self.post_routed.forward(y);
        lem_kernels::ops::add_assign(out, y);
    }
}
