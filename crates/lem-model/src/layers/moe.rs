//! Routed (mixture-of-experts) feed-forward block.
//!
//! A router scores every expert per token (softmax), each token keeps its top-k
//! experts (optionally renormalising their weights), and its output is the weighted sum
//! of those experts' gated MLPs. Tokens are grouped by expert: each active expert runs
//! one product over the rows routed to it, and each token's weighted sum runs in rank
//! order. Matrix rows are computed the same way whatever else is in the product (the
//! kernels' invariant), so the result does not depend on how many tokens travel together
//! or which other tokens picked the same expert: prefill, batched decode and verification
//! agree bit for bit. A one-token step reads only its selected experts' weights.

use lem_kernels::ops;

use super::mlp::MlpBuffers;
use super::{Activation, GatedMlp, Kernels, Linear, Loader, fit};
use crate::error::ModelError;
use crate::names::{Role, TensorId};

/// Shape of one routed block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routing {
    /// Experts.
    pub n_expert: usize,
    /// Experts per token (top-k).
    pub n_expert_used: usize,
    /// Inner size of one expert.
    pub n_ff_exp: usize,
    /// Renormalise the top-k weights to sum to 1.
    pub norm_topk: bool,
}

/// `sum_r w_r * expert_{e_r}(x)` over the token's top-k experts `e_r`.
#[derive(Debug, Clone)]
pub struct RoutedMlp {
    router: Linear,
    experts: Vec<GatedMlp>,
    routing: Routing,
}

/// Buffers the routed block reuses across calls.
#[derive(Debug, Default)]
pub struct MoeBuffers {
    /// Router probabilities, `n * n_expert`.
    probs: Vec<f32>,
    /// Selected experts, `n * k`, by rank.
    chosen: Vec<usize>,
    /// Their weights, `n * k`.
    weights: Vec<f32>,
    /// Slots (`token * k + rank`) routed to the expert being run.
    slots: Vec<usize>,
    /// Gathered input rows of one expert.
    xg: Vec<f32>,
    /// One expert's output rows.
    yg: Vec<f32>,
    /// Every slot's expert output, `n * k * n_embd`.
    ys: Vec<f32>,
    mlp: MlpBuffers,
}

impl RoutedMlp {
    /// Loads layer `i`'s router (`[n_expert, n_embd]`) and experts.
    pub fn load(
        l: &mut Loader<'_>,
        i: usize,
        n_embd: usize,
        routing: Routing,
        act: Activation,
    ) -> Result<RoutedMlp, ModelError> {
        let Routing { n_expert, n_ff_exp, .. } = routing;
        let router = Linear::load(l, TensorId::layer(Role::FfnGateInp, i), n_embd, n_expert)?;
        let mut experts = Vec::with_capacity(n_expert);
        for e in 0..n_expert {
            let mut m = |role: Role, rows: usize, cols: usize| {
                l.expert_matrix(TensorId::expert(role, i, e), n_expert, rows, cols).map(Linear::owned)
            };
            let gate = m(Role::FfnGateExps, n_ff_exp, n_embd)?;
            let up = m(Role::FfnUpExps, n_ff_exp, n_embd)?;
            let down = m(Role::FfnDownExps, n_embd, n_ff_exp)?;
            experts.push(GatedMlp::from_parts(gate, up, down, act));
        }
        Ok(RoutedMlp { router, experts, routing })
    }

    /// The block's routing shape.
    pub fn routing(&self) -> Routing {
        self.routing
    }

    /// Applies the block to `n` rows of `x`, writing `out`.
    pub fn forward(&self, x: &[f32], n: usize, out: &mut [f32], buf: &mut MoeBuffers, k: &mut Kernels<'_>) {
        let (ne, top) = (self.routing.n_expert, self.routing.n_expert_used);
        let d = x.len() / n.max(1);
        let probs = fit(&mut buf.probs, n * ne);
        self.router.forward(x, n, probs, k);
        buf.chosen.clear();
        let weights = fit(&mut buf.weights, n * top);
        for (t, p) in probs.chunks_exact_mut(ne).enumerate() {
            ops::softmax(p);
            // Top-k by probability, ties to the lower expert index.
            let start = buf.chosen.len();
            for r in 0..top {
                let mut best = usize::MAX;
                for e in 0..ne {
                    if buf.chosen[start..start + r].contains(&e) {
                        continue;
                    }
                    if best == usize::MAX || p[e] > p[best] {
                        best = e;
                    }
                }
                buf.chosen.push(best);
                weights[t * top + r] = p[best];
            }
            let w = &mut weights[t * top..(t + 1) * top];
            if self.routing.norm_topk {
                let sum: f32 = w.iter().sum();
                w.iter_mut().for_each(|v| *v /= sum);
            }
        }
        // One product per active expert over the rows routed to it, in ascending expert
        // order; each slot's output lands in its own row of `ys`.
        let ys = fit(&mut buf.ys, n * top * d);
        for (e, expert) in self.experts.iter().enumerate() {
            buf.slots.clear();
            buf.slots.extend(buf.chosen.iter().enumerate().filter(|(_, c)| **c == e).map(|(s, _)| s));
            let m = buf.slots.len();
            if m == 0 {
                continue;
            }
            let xg = fit(&mut buf.xg, m * d);
            for (row, &s) in xg.chunks_exact_mut(d).zip(&buf.slots) {
                let t = s / top;
                row.copy_from_slice(&x[t * d..(t + 1) * d]);
            }
            let yg = fit(&mut buf.yg, m * d);
            expert.forward(xg, m, yg, &mut buf.mlp, k);
            for (row, &s) in yg.chunks_exact(d).zip(&buf.slots) {
                ys[s * d..(s + 1) * d].copy_from_slice(row);
            }
        }
        // Each token's weighted sum, in rank order.
        for (t, o) in out.chunks_exact_mut(d).enumerate().take(n) {
            o.fill(0.0);
            for r in 0..top {
                let (s, w) = (t * top + r, weights[t * top + r]);
                for (a, &y) in o.iter_mut().zip(&ys[s * d..(s + 1) * d]) {
                    *a += w * y;
                }
            }
        }
    }
}
